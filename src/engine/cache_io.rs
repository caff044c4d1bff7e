//! The engine's side of `--cache-from` / `--cache-to` (`crate::cache` does
//! the rest): a remote lookup after the local store misses, fetching the
//! remote layers a step is about to read, the inline map, and the exports
//! after the build.

use std::sync::Arc;

use crate::cache::{Location, MapRecord};
use crate::image::ImageConfig;
use crate::plan::{Base, Step};
use crate::progress::{Event, StepHandle};
use crate::store::{CacheRecord, CachedLayer};

use super::build::{BuildCtx, StageResult};
use super::rootfs::LayerRef;

/// The step ids of the target stage start with this.
fn target_prefix(ctx: &BuildCtx<'_>) -> String {
    let stage = &ctx.plan.stages[ctx.plan.target];
    format!("{}/{}/", ctx.cache_scope, super::build::stage_label(stage))
}

fn cached(l: &LayerRef) -> CachedLayer {
    CachedLayer {
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        size: l.size,
        media_type: l.media_type.clone(),
    }
}

/// Note a step's record (from the local store, a remote cache, or just
/// written) for `--cache-to`.
pub(crate) fn note_used(ctx: &BuildCtx<'_>, step_id: &str, rec: &CacheRecord) {
    if ctx.req.extra.cache_to.is_empty() {
        return;
    }
    let created = rec
        .config_changes
        .get("created")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| crate::image::time::format_rfc3339(rec.created as i64));
    ctx.used_records.note(
        step_id,
        MapRecord {
            key: rec.key.clone(),
            parent: rec.parent.clone(),
            layer: rec.layer.clone(),
            created,
        },
    );
}

/// The record `--cache-from` holds for `key`, as a local record, and the
/// cache it came from. Its layer stays remote for now.
pub(crate) fn remote_lookup(
    ctx: &BuildCtx<'_>,
    key: &str,
    step_id: &str,
) -> Option<(CacheRecord, String)> {
    let hit = ctx.remote_caches.lookup(key)?;
    let mut rec = CacheRecord::new(
        key,
        hit.record.parent.as_deref(),
        step_id,
        serde_json::Value::Null,
    );
    rec.layer = hit.record.layer.clone();
    rec.config_changes = serde_json::json!({ "created": hit.record.created });
    Some((rec, hit.source))
}

/// Before a step runs: the layers it reads (its stage's, and those of the
/// stages it copies or mounts from) must be in the store. Only layers a
/// remote hit brought can be missing; they are fetched and checked now.
pub(crate) fn materialize(
    ctx: &BuildCtx<'_>,
    layers: &[LayerRef],
    step: &Step,
    done: &[Option<Arc<StageResult>>],
) -> anyhow::Result<()> {
    let mut all: Vec<CachedLayer> = layers.iter().map(cached).collect();
    for src in &step.sources {
        if let Base::Stage(i) = src {
            if let Some(Some(r)) = done.get(*i) {
                all.extend(r.layers.iter().map(cached));
            }
        }
    }
    ctx.remote_caches.ensure_local(ctx.store, &all)
}

/// Before the image is committed: the inline map, if asked for, and the
/// result's layers in the store, unless the result only goes to a
/// registry (where `--push` mounts them from the cache's repository).
pub(crate) fn prepare_commit(
    ctx: &BuildCtx<'_>,
    target: &StageResult,
    config: &mut ImageConfig,
) -> anyhow::Result<()> {
    // A base image's inline cache is not this image's.
    config.inline_cache = None;
    if ctx
        .req
        .extra
        .cache_to
        .iter()
        .any(|c| c.location == Location::Inline)
    {
        let digests: Vec<String> = target.layers.iter().map(|l| l.digest.clone()).collect();
        config.inline_cache = Some(crate::cache::inline_map(
            &ctx.used_records,
            &target_prefix(ctx),
            &digests,
        ));
    }
    if !ctx.req.push || !ctx.req.outputs.is_empty() {
        let layers: Vec<CachedLayer> = target.layers.iter().map(cached).collect();
        ctx.remote_caches.ensure_local(ctx.store, &layers)?;
    }
    Ok(())
}

/// After the build: each `--cache-to` but inline, as a step of its own.
/// A failure fails the build unless `ignore-error=true`.
pub(crate) fn export_caches(ctx: &BuildCtx<'_>) -> anyhow::Result<()> {
    for to in &ctx.req.extra.cache_to {
        if to.location == Location::Inline {
            continue;
        }
        let name = format!("exporting cache to {}", to.location);
        let handle = StepHandle::start(ctx.reporter.clone(), ctx.step_id(), &name);
        let res = export_mounts(ctx, to, &handle).and_then(|mounts| {
            crate::cache::export(
                ctx.store,
                ctx.remote_caches,
                to,
                &ctx.used_records,
                &target_prefix(ctx),
                &ctx.req.registry,
                &mounts,
            )
        });
        match res {
            Ok(done) => {
                handle.log(
                    crate::progress::Stream::Stdout,
                    format!("{} records, {} layers\n", done.records, done.layers).as_bytes(),
                );
                handle.done();
            }
            Err(e) if to.ignore_error => {
                handle.done();
                ctx.reporter.event(Event::Warning {
                    id: None,
                    message: format!(
                        "--cache-to {} failed (ignore-error=true): {e:#}",
                        to.location
                    ),
                });
            }
            Err(e) => {
                handle.failed(format!("{e:#}"));
                return Err(e.context(format!("--cache-to {}", to.location)));
            }
        }
    }
    Ok(())
}

/// `cache-mounts=true`: the cache mounts' entries for this export, each
/// one's size (or why it was left out) in the step's log.
fn export_mounts(
    ctx: &BuildCtx<'_>,
    to: &crate::cache::CacheTo,
    handle: &StepHandle,
) -> anyhow::Result<Vec<crate::cache::mounts::PackedMount>> {
    let Some(max_size) = to.mounts else {
        return Ok(Vec::new());
    };
    let opts = crate::cache::mounts::PackOptions {
        max_size,
        compression: ctx.req.compression,
    };
    let mut notes = Vec::new();
    let mounts = crate::cache::mounts::for_export(
        ctx.store,
        ctx.remote_caches,
        &to.location,
        &opts,
        &mut notes,
    );
    for n in notes {
        handle.log(crate::progress::Stream::Stdout, format!("{n}\n").as_bytes());
    }
    mounts
}
