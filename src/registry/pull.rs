//! Pull: resolve a reference (through Docker Hub mirrors when configured),
//! pick the platform from an index, verify every digest and size, and store
//! each blob once, layers in parallel, skipping blobs already present.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::api_host;
use super::blobs::{BlobStore, MAX_SMALL_BLOB};
use super::body::transfer_error;
use super::client::{scope, Registry};
use super::known::BlobLocations;
use super::manifest::{self, choose_platform, Descriptor, Parsed};
use super::run_parallel;
use super::settings::{strip_scheme, Settings};
use crate::oci::digest::sha256_digest;
use crate::oci::media;
use crate::oci::reference::{Reference, DOCKER_HUB};
use crate::oci::Platform;
use crate::progress::{BlobState, Transfer};

/// What a pull asks for besides the reference.
#[derive(Default)]
pub struct PullOptions<'a> {
    /// Platform to choose from an index; default: the host's.
    pub platform: Option<Platform>,
    /// Where blob bytes arriving and each blob's outcome are reported.
    pub progress: Option<Transfer>,
    /// Where to record "blob known in repo R of registry H" for later mounts.
    pub locations: Option<&'a BlobLocations>,
}

/// The result of a pull; every blob it names is in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: Reference,
    /// Digest of the image manifest (the platform's, when the tag named an index).
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest: Vec<u8>,
    /// Digest of the index the tag pointed at, if it was one.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<Descriptor>,
    /// Blobs downloaded by this pull (the rest were already stored).
    pub fetched: Vec<String>,
    /// The host the image came from (a mirror or the registry itself).
    pub source_host: String,
}

/// A fetched manifest: bytes, media type, digest.
struct Fetched {
    bytes: Vec<u8>,
    media_type: String,
    digest: String,
}

/// Pull `reference` into `store`.
pub fn pull(
    reference: &Reference,
    store: &dyn BlobStore,
    settings: &Settings,
    opts: &PullOptions,
) -> Result<PulledImage> {
    let mut errors = Vec::new();
    for host in endpoints(reference, settings) {
        let reg = Registry::new(&host, settings)?;
        match resolve(&reg, reference, opts) {
            Ok(found) => return finish(&reg, reference, store, settings, opts, found),
            Err(e) if host != api_host(&reference.registry) => {
                errors.push(format!("mirror {host}: {e:#}"));
            }
            Err(e) => {
                if errors.is_empty() {
                    return Err(e);
                }
                return Err(e.context(format!("mirrors failed too: {}", errors.join("; "))));
            }
        }
    }
    bail!("pulling {reference}: no registry endpoint to try")
}

/// Mirrors first (Docker Hub only), then the registry itself.
fn endpoints(reference: &Reference, settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if reference.registry == DOCKER_HUB {
        for m in &settings.registry_mirrors {
            out.push(strip_scheme(m).trim_end_matches('/').to_string());
        }
    }
    out.push(api_host(&reference.registry).to_string());
    out
}

/// The image manifest for the platform, plus the index it came from.
fn resolve(
    reg: &Registry,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<(Fetched, Option<Fetched>)> {
    let top = fetch_manifest(reg, reference, reference.manifest_ref())?;
    if let Some(want) = &reference.digest {
        if &top.digest != want {
            bail!(
                "pulling {reference}: the registry sent a manifest with digest {}",
                top.digest
            );
        }
    }
    let parsed = Parsed::parse(&top.bytes, &format!("pulling {reference}"))?;
    let Some(entries) = &parsed.manifests else {
        return Ok((top, None));
    };
    let want = opts.platform.clone().unwrap_or_else(Platform::host);
    let entry = choose_platform(entries, &want).ok_or_else(|| {
        let have: Vec<String> = entries
            .iter()
            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
            .collect();
        anyhow!(
            "pulling {reference}: no image for platform {want} (available: {})",
            have.join(", ")
        )
    })?;
    let child = fetch_manifest(reg, reference, &entry.digest)?;
    if child.digest != entry.digest || child.bytes.len() as u64 != entry.size {
        bail!(
            "pulling {reference}: manifest {} does not match its index entry (got {} with {} bytes, expected {} bytes)",
            entry.digest, child.digest, child.bytes.len(), entry.size
        );
    }
    Ok((child, Some(top)))
}

fn fetch_manifest(reg: &Registry, reference: &Reference, r: &str) -> Result<Fetched> {
    let repo = &reference.repository;
    let what = format!("fetching manifest {r} of {reference} from {}", reg.host());
    let scopes = [scope(repo, "pull")];
    let resp = reg.send(&scopes, &what, true, &|c, base| {
        c.get(format!("{base}/v2/{repo}/manifests/{r}"))
            .header(ACCEPT, media::MANIFEST_TYPES.join(", "))
    })?;
    let resp = reg.check(resp, &what)?;
    let media_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
        .unwrap_or_default();
    let bytes = reg.read_body(resp, &what, MAX_SMALL_BLOB)?;
    let digest = sha256_digest(&bytes);
    if r.starts_with("sha256:") && digest != r {
        bail!("{what}: content digest is {digest}, not the digest asked for");
    }
    Ok(Fetched {
        bytes,
        media_type,
        digest,
    })
}

fn finish(
    reg: &Registry,
    reference: &Reference,
    store: &dyn BlobStore,
    settings: &Settings,
    opts: &PullOptions,
    (image, index): (Fetched, Option<Fetched>),
) -> Result<PulledImage> {
    let parsed = Parsed::parse(&image.bytes, &format!("pulling {reference}"))?;
    let config = parsed
        .config
        .clone()
        .context("image manifest has no config")?;
    manifest::check_limits(&parsed, settings, &format!("pulling {reference}"))?;
    let mut blobs = vec![config.clone()];
    blobs.extend(parsed.layers.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    blobs.retain(|d| seen.insert(d.digest.clone()));
    let results = run_parallel(&blobs, settings.parallelism, |d| {
        let res = fetch_blob(reg, reference, store, d, opts.progress.as_ref());
        let state = match &res {
            Ok(true) => BlobState::Transferred,
            Ok(false) => BlobState::Exists,
            Err(_) => BlobState::Failed,
        };
        report(opts.progress.as_ref(), d, state);
        res
    });
    let mut fetched = Vec::new();
    let mut failures = Vec::new();
    for (d, r) in blobs.iter().zip(results) {
        match r {
            Ok(true) => fetched.push(d.digest.clone()),
            Ok(false) => {}
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("pulling {reference}: {}", failures.join("; "));
    }
    // Manifests go in the store too, so the image can be found by digest.
    for m in std::iter::once(&image).chain(index.as_ref()) {
        if !store.has_blob(&m.digest) {
            store.write_blob(&m.digest, Some(m.bytes.len() as u64), &mut &m.bytes[..])?;
        }
    }
    if let Some(loc) = opts.locations {
        for d in &blobs {
            loc.record(&d.digest, &reference.registry, &reference.repository);
        }
    }
    let config_bytes = super::blobs::read_small_blob(store, &config.digest)?;
    manifest::check_diff_ids(&config_bytes, parsed.layers.len())
        .with_context(|| format!("pulling {reference}: image config {}", config.digest))?;
    let known = [media::OCI_MANIFEST, media::DOCKER_MANIFEST];
    let media_type = if known.contains(&image.media_type.as_str()) {
        image.media_type.clone()
    } else {
        parsed.content_type().to_string()
    };
    Ok(PulledImage {
        reference: reference.clone(),
        manifest_digest: image.digest.clone(),
        manifest_media_type: media_type,
        manifest: image.bytes,
        index_digest: index.map(|i| i.digest),
        config_digest: config.digest,
        config: config_bytes,
        layers: parsed.layers,
        fetched,
        source_host: reg.host().to_string(),
    })
}

/// Download one blob unless stored; true when it was downloaded.
fn fetch_blob(
    reg: &Registry,
    reference: &Reference,
    store: &dyn BlobStore,
    d: &Descriptor,
    progress: Option<&Transfer>,
) -> Result<bool> {
    if store.has_blob(&d.digest) {
        return Ok(false);
    }
    let repo = &reference.repository;
    let digest = &d.digest;
    let what = format!("fetching blob {digest} of {reference}");
    let scopes = [scope(repo, "pull")];
    let mut attempt = 0;
    loop {
        let result = reg
            // Every retry happens in this loop (5xx, connection, body), so
            // each attempt is counted and reported once.
            .send(&scopes, &what, false, &|c, base| {
                c.get(format!("{base}/v2/{repo}/blobs/{digest}"))
            })
            .and_then(|r| reg.check(r, &what))
            .and_then(|resp| {
                let mut reader = Counting {
                    inner: reg.guard(resp, &what, d.size),
                    done: 0,
                    total: d.size,
                    digest,
                    progress,
                };
                store
                    .write_blob(digest, Some(d.size), &mut reader)
                    .with_context(|| what.clone())
            });
        match result {
            Ok(()) => return Ok(true),
            Err(e) if attempt < reg.retries() && retryable(&e) => {
                attempt += 1;
                reg.retrying(attempt, &format!("{e:#}"));
            }
            Err(e) if attempt == 0 => return Err(e),
            Err(e) => return Err(e.context(format!("after {} attempts", attempt + 1))),
        }
    }
}

/// 4xx answers (but 429), certificate errors and a body longer than
/// declared are final; the rest may pass.
fn retryable(e: &anyhow::Error) -> bool {
    let client_error = e
        .downcast_ref::<super::client::ApiError>()
        .is_some_and(|a| (400..500).contains(&a.status) && a.status != 429);
    !client_error
        && !super::client::is_cert_error(&format!("{e:#}"))
        && transfer_error(e).is_none_or(|t| t.retryable())
}

/// The one final report of a blob (the caller saw its bytes move, if any).
fn report(progress: Option<&Transfer>, d: &Descriptor, state: BlobState) {
    if let Some(t) = progress {
        let done = if state == BlobState::Failed {
            0
        } else {
            d.size
        };
        t.blob(&d.digest, done, d.size, state);
    }
}

/// Reports progress as bytes are read.
struct Counting<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    digest: &'a str,
    progress: Option<&'a Transfer>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        // End of stream (n == 0) is no progress: reporting it again would
        // show a finished blob twice.
        if let (Some(t), true) = (self.progress, n > 0) {
            t.blob(self.digest, self.done, self.total, BlobState::Moving);
        }
        Ok(n)
    }
}
