//! The external images a build names (`FROM`, `COPY --from`, named
//! contexts): found in the store or pulled as `--pull` says, each pull a
//! progress step of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::image;
use crate::oci::{Platform, Reference};
use crate::progress::{Reporter, StepHandle};
use crate::registry::local;
use crate::store::Store;

use super::build::BuildRequest;
use super::build::PullPolicy;

/// External images the plan names: from the store, pulled as `--pull` says.
pub(super) fn load_images(
    store: &Store,
    req: &BuildRequest,
    reporter: &Arc<dyn Reporter>,
    next_step: &AtomicU64,
    names: &[String],
    platforms: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, image::Image>> {
    let mut out = BTreeMap::new();
    for name in names {
        super::cancel::check()?;
        // `--build-context NAME=docker-image://REF`: REF stands in for NAME
        // (the result is still filed under NAME for the plan).
        let source = req.extra.image_contexts.get(name).unwrap_or(name);
        if let Some(dir) = source.strip_prefix(super::options::LOCAL_DIR) {
            let img = super::named_context::image_from_dir(store, req, Path::new(dir))?;
            out.insert(name.clone(), img);
            continue;
        }
        if let Some(layout) = source.strip_prefix("oci-layout://") {
            let desc = image::import::import_layout(store, layout)
                .with_context(|| format!("--build-context {source}"))?;
            out.insert(name.clone(), image::load_image(store, &desc)?);
            continue;
        }
        let reference = Reference::parse(source)
            .with_context(|| format!("invalid image reference {source}"))?;
        // A stored image of another platform than the one asked for is
        // not the image this build needs.
        let want = platforms.get(name).and_then(|p| Platform::parse(p).ok());
        let local = find_local_image(store, &reference, source)?.filter(|img| {
            want.as_ref()
                .is_none_or(|w| img.config.os == w.os && img.config.architecture == w.arch)
        });
        // An image a cached build only pushed may lack its layers here
        // (they stayed in the cache's registry): pulled like a missing one.
        let local = local.filter(|img| {
            img.manifest
                .layers()
                .iter()
                .all(|d| store.has_blob(d.digest().as_ref()))
        });
        let pull = match (req.pull, &local, reference.digest.is_some()) {
            (_, Some(_), true) => false,
            (PullPolicy::Always, _, _) => true,
            (PullPolicy::Missing, found, _) => found.is_none(),
            (PullPolicy::Never, None, _) => bail!(
                "image {name} is not in the local store ({}) and --pull=never forbids fetching it",
                store.root().display()
            ),
            (PullPolicy::Never, Some(_), _) => false,
        };
        let img = if pull {
            // FROM --platform picks the image for that platform from an index.
            let platform = platforms
                .get(name)
                .map(|p| Platform::parse(p))
                .transpose()?;
            pull_image(
                store,
                req,
                reporter,
                next_step.fetch_add(1, Ordering::Relaxed) + 1,
                &reference,
                platform,
            )?
        } else {
            local.context("image was found locally")?
        };
        out.insert(name.clone(), img);
    }
    Ok(out)
}

/// Pull one image as a progress step; its blobs (downloaded in parallel)
/// and retried attempts are reported as events of the step.
fn pull_image(
    store: &Store,
    req: &BuildRequest,
    reporter: &Arc<dyn Reporter>,
    id: u64,
    reference: &Reference,
    platform: Option<Platform>,
) -> anyhow::Result<image::Image> {
    let handle = StepHandle::start(reporter.clone(), id, format!("[internal] pull {reference}"));
    let settings = logging_retries(&req.registry, &handle);
    let progress = Some(handle.transfer());
    match local::pull_into_store(store, reference, &settings, platform, progress) {
        Ok(img) => {
            handle.done();
            Ok(img)
        }
        Err(e) => {
            let text = format!("{e:#}");
            handle.failed(text.clone());
            // Most registry errors name the reference already.
            if text.contains(&reference.to_string()) {
                return Err(e);
            }
            Err(e.context(format!("pulling {reference}")))
        }
    }
}

/// `settings` whose retried attempts are reported as they happen, as
/// events of `step` (a slow registry is not silent until it fails).
pub(super) fn logging_retries(
    settings: &crate::registry::Settings,
    step: &StepHandle,
) -> crate::registry::Settings {
    let mut settings = settings.clone();
    settings.on_retry = Some(step.transfer());
    settings
}

/// A stored image by its normalized reference, or by the short name a local
/// build tagged it with (`app:v1` for `docker.io/library/app:v1`).
fn find_local_image(
    store: &Store,
    reference: &Reference,
    name: &str,
) -> anyhow::Result<Option<image::Image>> {
    if let Some(img) = local::find_local(store, reference)? {
        return Ok(Some(img));
    }
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    // A short name the index cannot hold is simply not there; a corrupt
    // index is an error (not a reason to pull).
    if crate::store::lookup_name(short).is_err() {
        return Ok(None);
    }
    match store.resolve(short)? {
        Some(desc) => image::load_image(store, &desc).map(Some),
        None => Ok(None),
    }
}
