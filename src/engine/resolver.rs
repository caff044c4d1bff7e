//! The sources resolver: what the plan's `Base`s (a stage, an image,
//! scratch) are while a stage runs. It owns the view of finished stages and
//! loaded images, so the driver and the executors ask it instead of
//! threading the build context and the finished-stage table through every
//! call.

use std::sync::Arc;

use anyhow::Context;

use crate::plan::Base;

use super::build::{BuildCtx, StageResult};
use super::rootfs::Rootfs;
use crate::oci::LayerRef;

/// Finished stages and loaded images, as one stage sees them.
pub(crate) struct Sources<'c, 'a> {
    pub ctx: &'c BuildCtx<'a>,
    done: &'c [Option<Arc<StageResult>>],
}

/// A `--from` source's files, indexed like a context; holds the
/// materialized image view (if it owns one) while the index is in use.
pub(crate) struct SourceView {
    pub index: crate::context::ContextIndex,
    /// Device nodes the view lacks (rootless), to name when copied.
    pub skipped_nodes: Vec<String>,
    _root: Option<Rootfs>,
}

impl<'c, 'a> Sources<'c, 'a> {
    pub fn new(ctx: &'c BuildCtx<'a>, done: &'c [Option<Arc<StageResult>>]) -> Self {
        Sources { ctx, done }
    }

    /// A finished stage.
    pub fn stage(&self, i: usize) -> anyhow::Result<&'c StageResult> {
        self.done
            .get(i)
            .and_then(Option::as_deref)
            .with_context(|| format!("stage {i} has not been built"))
    }

    /// A loaded image, by normalized reference.
    pub fn image(&self, name: &str) -> anyhow::Result<&'c crate::image::Image> {
        self.ctx
            .images
            .get(name)
            .with_context(|| format!("image {name} was not loaded"))
    }

    /// What identifies a source in cache keys: a stage's last key, an
    /// image's manifest digest — never anything a build produced.
    pub fn identity(&self, src: &Base) -> anyhow::Result<String> {
        Ok(match src {
            Base::Scratch => "scratch".into(),
            Base::Stage(i) => self.stage(*i)?.key.clone(),
            Base::Image(name) => self.image(name)?.manifest_desc.digest().to_string(),
        })
    }

    /// A source's filesystem, indexed like a context (no ignore file).
    pub fn index(&self, src: &Base) -> anyhow::Result<SourceView> {
        let ctx = self.ctx;
        let ignore = crate::context::IgnoreRules::default();
        let scan_root = |root: &std::path::Path| {
            crate::context::scan(root, "", &ignore, None)
                .with_context(|| format!("reading the files of {}", root.display()))
        };
        let max = ctx.req.registry.max_layer_size;
        if let Base::Stage(i) = src {
            // A stage's materialized root is kept with its result, shared by
            // every later step that reads it.
            let stage = self.stage(*i)?;
            let mut guard = stage
                .rootfs
                .lock()
                .map_err(|_| anyhow::anyhow!("stage rootfs lock poisoned"))?;
            if guard.is_none() {
                *guard = Some(Rootfs::new(ctx.store)?);
            }
            let r = guard.as_mut().context("rootfs view")?;
            let root = r.sync(ctx.store, &stage.layers, max)?.to_path_buf();
            return Ok(SourceView {
                index: scan_root(&root)?,
                skipped_nodes: r.skipped_nodes().to_vec(),
                _root: None,
            });
        }
        let layers = match src {
            Base::Image(name) => image_layers(self.image(name)?)?,
            _ => Vec::new(),
        };
        let mut r = Rootfs::new(ctx.store)?;
        let root = r.sync(ctx.store, &layers, max)?.to_path_buf();
        Ok(SourceView {
            index: scan_root(&root)?,
            skipped_nodes: r.skipped_nodes().to_vec(),
            _root: Some(r),
        })
    }
}

/// An image's layers as the engine tracks them; a config whose diff_ids
/// do not pair up with the manifest's layers is refused.
pub(crate) fn image_layers(img: &crate::image::Image) -> anyhow::Result<Vec<LayerRef>> {
    let (layers, ids) = (
        img.manifest.layers().len(),
        img.config.rootfs.diff_ids.len(),
    );
    if layers != ids {
        anyhow::bail!(
            "image {} is broken: its manifest has {layers} layers but its config lists {ids} diff_ids",
            img.manifest_desc.digest()
        );
    }
    Ok(img
        .manifest
        .layers()
        .iter()
        .zip(&img.config.rootfs.diff_ids)
        .map(|(d, diff_id)| LayerRef {
            digest: d.digest().to_string(),
            diff_id: diff_id.clone(),
            size: d.size(),
            media_type: d.media_type().to_string(),
        })
        .collect())
}
