//! The engine's side of `--cache-from` / `--cache-to` (`crate::cache` does
//! the rest): a remote lookup after the local store misses, fetching the
//! remote layers a step is about to read, the inline map, and the exports
//! after the build.

use std::sync::Arc;

use crate::cache::{Location, MapRecord};
use crate::image::ImageConfig;
use crate::plan::{Base, Step};
use crate::progress::{Event, StepHandle};
use crate::store::{CacheLookup, CacheRecord};

use super::build::{BuildCtx, StageResult};
use crate::oci::LayerRef;

/// The step-id prefixes of the stages the result's layers come from: the
/// target and the stages it is built FROM, in turn.
fn result_stages(ctx: &BuildCtx<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = ctx.plan.target;
    // The plan has no cycles; the bound keeps a bad one from looping.
    for _ in 0..ctx.plan.stages.len() {
        let stage = &ctx.plan.stages[i];
        out.push(format!(
            "{}/{}/",
            ctx.cache_scope,
            super::build::stage_label(stage)
        ));
        match stage.base {
            Base::Stage(b) => i = b,
            _ => break,
        }
    }
    out
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
    // A step run or found here knows its instruction; a remote hit brings
    // its slot and chunk index along (`remote_lookup`).
    let field = |name: &str| rec.inputs.get(name).and_then(|v| v.as_str());
    let slot = match field("instruction") {
        Some(instruction) => Some(slot(ctx, step_id, instruction)),
        None => field("slot").map(str::to_string),
    };
    let chunks = rec
        .inputs
        .get("chunks")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    ctx.used_records.note(
        step_id,
        MapRecord {
            key: rec.key.clone(),
            parent: rec.parent.clone(),
            layer: rec.layer.clone(),
            created,
            slot,
            chunks,
        },
    );
}

/// A step's slot: its place without its inputs (stage and position, not
/// the Dockerfile's path, which differs between CI checkouts; the
/// instruction; the target platform). A key that misses finds "the same
/// step last time" in a remote cache by it.
pub(crate) fn slot(ctx: &BuildCtx<'_>, step_id: &str, instruction: &str) -> String {
    let place = step_id.split_once('/').map_or(step_id, |(_, rest)| rest);
    let platform = ctx
        .req
        .extra
        .platform
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let text = format!("rbuild-slot-v1\0{place}\0{instruction}\0{platform}");
    crate::oci::digest::sha256_hex(text.as_bytes())
}

/// A missed step's chunk seeding, running on a thread of its own while the
/// step does its work (`start_seed`).
pub(crate) struct Seeding {
    thread: Option<std::thread::JoinHandle<anyhow::Result<String>>>,
    /// Its verified chunks, handed to the layer write as they come.
    feed: Option<Arc<crate::layer::SeedFeed>>,
    /// The earlier blob is not stored: the feed is the only way its chunks
    /// reach the write.
    in_memory: bool,
}

/// On a miss of a step that writes a layer: when a `--cache-from` cache
/// has the same step's earlier layer (same slot) with a chunk index, start
/// fetching them and seeding the store's chunk cache, so the layer write
/// copies the unchanged chunks instead of compressing them.
/// A COPY from the context: its layer write knows the files by digest
/// (so chunks are looked up by description key).
/// A COPY or ADD (not a RUN, whose command may run for minutes): its
/// layer write starts as soon as its files are gathered, so the earlier
/// blob need not be stored: its chunks go to the write through the feed
/// alone, the download waiting for the write when the feed is full
/// (`layer::SeedFeed`).
pub(crate) fn start_seed(
    ctx: &BuildCtx<'_>,
    step_id: &str,
    instruction: &str,
    kind: &crate::plan::StepKind,
) -> Seeding {
    use crate::plan::StepKind;
    let context_copy = matches!(kind, StepKind::Copy(c) if c.from.is_none());
    let write_follows = !matches!(kind, StepKind::Run(_));
    let none = Seeding {
        thread: None,
        feed: None,
        in_memory: false,
    };
    if ctx.req.no_cache || ctx.req.compression == crate::oci::Compression::None {
        return none;
    }
    let Some(source) = ctx
        .remote_caches
        .seed_source(&slot(ctx, step_id, instruction))
    else {
        return none;
    };
    let (store, compression) = (ctx.store.clone(), ctx.req.compression);
    let feed = Arc::new(crate::layer::SeedFeed::new());
    let fed = feed.clone();
    let thread = std::thread::Builder::new()
        .name("chunk-seed".into())
        .spawn(move || {
            // Whatever happens, no lookup waits past the seeding's end.
            let _ended = crate::layer::FeedGuard(&fed);
            let how = SeedHow {
                compression,
                context_copy,
                in_memory: write_follows,
            };
            seed(&store, &source, how, &fed)
        });
    match thread {
        Ok(t) => Seeding {
            thread: Some(t),
            feed: Some(feed),
            in_memory: write_follows,
        },
        Err(_) => none,
    }
}

impl Seeding {
    /// The feed a layer write takes the seeded chunks from while the
    /// seeding runs (`layer::SeedFeed`).
    pub(crate) fn feed(&self) -> Option<Arc<crate::layer::SeedFeed>> {
        self.feed.clone()
    }

    /// Wait for the seeding (after the layer is written) and say in the
    /// step's log what it did. A failure is only a note: the chunks are
    /// compressed instead. Returns whether a layer written with chunks the
    /// feed served may be kept: only if the whole earlier blob then
    /// matched its digest (true when nothing was served).
    pub(crate) fn finish(mut self, handle: &StepHandle) -> bool {
        let Some(thread) = self.thread.take() else {
            return true;
        };
        // The write is done: a seeding waiting for room must not wait.
        if let Some(f) = &self.feed {
            f.close();
        }
        let joined = thread.join();
        let keep = self
            .feed
            .as_ref()
            .is_none_or(|f| f.served() == 0 || f.trusted());
        let text = match joined {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => format!("not seeding the chunk cache: {e:#}"),
            Err(_) => "not seeding the chunk cache: the seeding thread panicked".into(),
        };
        let fed = self
            .feed
            .as_ref()
            .map(|f| fed_note(f.stats(), self.in_memory))
            .unwrap_or_default();
        handle.log(
            crate::progress::Stream::Stderr,
            format!("{text}{fed}\n").as_bytes(),
        );
        keep
    }
}

/// What the feed did, for the seeding's log line.
fn fed_note(s: crate::layer::FeedStats, in_memory: bool) -> String {
    let served = format!(
        "{} handed to the layer write as they were verified",
        s.served
    );
    if !in_memory {
        return match s.served {
            0 => String::new(),
            _ => format!(" ({served})"),
        };
    }
    if s.published == 0 {
        return String::new();
    }
    let dropped = match s.dropped {
        0 => String::new(),
        n => format!(
            ", {n} of them dropped to keep at most {} MiB in memory",
            crate::layer::FEED_BYTES_MAX >> 20
        ),
    };
    let unused = s.published.saturating_sub(s.served);
    let peak = (s.peak + (1 << 20) - 1) >> 20;
    format!(" ({served}, {unused} not taken{dropped}; at most {peak} MiB held)")
}

impl Drop for Seeding {
    /// A step that failed first still waits: no fetch outlives the build.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Some(f) = &self.feed {
                f.close();
            }
            let _ = thread.join();
        }
    }
}

/// How a seeding goes about it.
#[derive(Clone, Copy)]
struct SeedHow {
    compression: crate::oci::Compression,
    context_copy: bool,
    /// Do not store the earlier blob (`start_seed`'s `write_follows`).
    in_memory: bool,
}

/// Fetch the chunk index, then (unless the local chunk cache already has
/// most of its chunks) the layer, and seed the chunk cache from them — or,
/// `in_memory`, only the layer write's feed.
fn seed(
    store: &crate::store::Store,
    source: &crate::cache::SeedSource,
    how: SeedHow,
    feed: &crate::layer::SeedFeed,
) -> anyhow::Result<String> {
    let digest = &source.layer.digest;
    let compression = how.compression;
    let index = source.fetch_index(store)?;
    // Which chunks the write may wait for: only a hint (keys claimed by
    // another store; a lie costs a wait, never a wrong chunk).
    feed.set_hints(crate::layer::claimed_keys(&index, digest)?);
    // Records go through a locked temp dir of the store, as a layer
    // write's do.
    let tmp = store.temp_dir("chunks")?;
    let cache = crate::cache::store_chunk_cache(store, tmp.path())?;
    let (listed, unseeded) = crate::layer::unseeded(&cache, &index, digest, compression)?;
    // Fetching a layer to gain less than half its chunks is not worth it
    // (a warm store, or an index of another compression).
    if unseeded * 2 < listed {
        feed.finish(false);
        return Ok(format!(
            "chunk cache: {unseeded} of the {listed} chunks of the earlier layer in remote \
             cache {} are new here; not fetching it",
            source.label
        ));
    }
    if store.has_blob(digest) {
        let s = crate::layer::seed_chunks(
            &cache,
            &index,
            digest,
            &store.blob_path(digest)?,
            compression,
        )?;
        feed.finish(true);
        return Ok(seed_note(&s, None, source, ""));
    }
    let keys = crate::layer::SeedKeys {
        bytes: !how.context_copy,
        described: how.context_copy,
    };
    let size = source.layer.size;
    if how.in_memory {
        // Only the write needs the chunks, and it takes them from the
        // feed: the blob is checked against its digest as it streams
        // through, never written, and no record names it (the new
        // layer's own records serve a later rebuild).
        feed.hold_back();
        let seeded = source.stream_layer(&|body| {
            feed.begin_attempt();
            let mut none = std::io::sink();
            let fed = Some(feed);
            Ok(crate::layer::seed_reader_fed(
                &index,
                digest,
                size,
                body,
                &mut none,
                compression,
                keys,
                fed,
            )?)
        })?;
        feed.finish(true);
        let s = seeded.stats;
        let resumable = Some(seeded.resumable);
        return Ok(seed_note(
            &s,
            resumable,
            source,
            ", checked against its digest, not stored",
        ));
    }
    // Verified while it downloads (each chunk handed to the write as soon
    // as it is); recorded once it is stored.
    let seeded = source.stream_layer(&|body| {
        feed.begin_attempt();
        let mut w = store.blob_writer_unhashed()?;
        let s = crate::layer::seed_reader_fed(
            &index,
            digest,
            size,
            body,
            &mut w,
            compression,
            keys,
            Some(feed),
        )?;
        w.commit_verified(digest, Some(size))?;
        Ok(s)
    })?;
    let resumable = seeded.resumable;
    let s = seeded.record(&cache, digest)?;
    feed.finish(true);
    Ok(seed_note(&s, Some(resumable), source, ""))
}

/// The seeding's log line: `seeded 282/282 chunks, 55 resumable from
/// remote cache REF (layer sha256:…)`; `how` says what became of the blob.
fn seed_note(
    s: &crate::layer::SeedStats,
    resumable: Option<usize>,
    source: &crate::cache::SeedSource,
    how: &str,
) -> String {
    let resumable = match resumable {
        Some(n) => format!(", {n} resumable"),
        None => String::new(),
    };
    let refused = match s.refused {
        0 => String::new(),
        n => format!(" ({n} refused: their bytes do not match the index)"),
    };
    format!(
        "seeded {}/{} chunks{resumable} from remote cache {} (layer {}{how}){refused}",
        s.seeded, s.listed, source.label, source.layer.digest
    )
}

/// Read every `--cache-from` cache's manifest and map, as a step of its
/// own (an unreadable cache is a warning).
pub(crate) fn load_caches(
    req: &super::BuildRequest,
    reporter: &Arc<dyn crate::progress::Reporter>,
    next_step: &std::sync::atomic::AtomicU64,
) -> crate::cache::RemoteCaches {
    if req.extra.cache_from.is_empty() {
        return crate::cache::RemoteCaches::default();
    }
    let id = next_step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let handle = StepHandle::start(reporter.clone(), id, "[internal] load cache maps");
    let caches = crate::cache::RemoteCaches::load(&req.extra.cache_from, &req.registry, &|m| {
        reporter.event(Event::Warning {
            id: None,
            message: m,
        })
    });
    let text = format!("{} records\n", caches.record_count());
    handle.log(crate::progress::Stream::Stdout, text.as_bytes());
    handle.done();
    caches
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
    // Carried to `note_used` for `--cache-to` (there are no key inputs).
    rec.inputs = serde_json::json!({
        "slot": hit.record.slot,
        "chunks": hit.record.chunks,
    });
    ctx.remote_caches.file_when_checked(ctx.store, rec.clone());
    Some((rec, hit.source))
}

/// Before a step runs: the layers it reads (its stage's, and those of the
/// stages it copies or mounts from) must be in the store. Only layers a
/// remote hit brought can be missing; they are fetched and checked now.
pub(crate) fn materialize(
    ctx: &BuildCtx<'_>,
    layers: &[LayerRef],
    step: &Step,
    src: &super::resolver::Sources<'_, '_>,
    handle: &StepHandle,
) -> anyhow::Result<()> {
    let mut all: Vec<LayerRef> = layers.to_vec();
    for base in step.sources() {
        if let Base::Stage(i) = base {
            if let Ok(r) = src.stage(*i) {
                all.extend(r.layers.iter().cloned());
            }
        }
    }
    ctx.remote_caches
        .ensure_local_noting(ctx.store, &all, &|m| {
            handle.log(crate::progress::Stream::Stderr, format!("{m}\n").as_bytes())
        })
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
            &result_stages(ctx),
            &digests,
        ));
    }
    // Registries the result goes to (none: it stays here, or --output
    // needs its files).
    let push_to: Vec<String> = match ctx.req.push && ctx.req.outputs.is_empty() {
        true => ctx
            .req
            .tags
            .iter()
            .filter_map(|t| crate::oci::Reference::parse(t).ok())
            .map(|r| r.registry)
            .collect(),
        false => Vec::new(),
    };
    // A layer a push can mount from the cache's repository stays remote.
    let mountable = |l: &LayerRef| {
        !push_to.is_empty()
            && ctx
                .remote_caches
                .registry_of(&l.digest)
                .is_some_and(|(reg, _)| push_to.iter().all(|p| *p == reg))
    };
    let layers: Vec<LayerRef> = target
        .layers
        .iter()
        .filter(|l| !mountable(l))
        .cloned()
        .collect();
    ctx.remote_caches.ensure_local(ctx.store, &layers)
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
                &result_stages(ctx),
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
                // A refused remote layer keeps its type: the build runs again.
                if crate::cache::RemoteCaches::is_refusal(&e) {
                    return Err(e);
                }
                return Err(anyhow::anyhow!(
                    "--cache-to {}: {e:#}\nhint: with ignore-error=true a failed cache export is only a warning",
                    to.location
                ));
            }
        }
    }
    Ok(())
}

/// The key-only pass: with `--cache-from`, every stage is first walked
/// computing keys and looking them up, running nothing. When the target
/// stage and its bases all hit, that is the build: the stages the target
/// only copies or mounts from are never built (their keys come from their
/// definitions, so a miss there changes no key). Otherwise the pass is
/// discarded and the stages run as usual.
#[derive(Default)]
pub(crate) struct Probe {
    on: std::sync::atomic::AtomicBool,
    hits: std::sync::Mutex<Vec<ProbeHit>>,
}

struct ProbeHit {
    step_id: String,
    name: String,
    /// The `--cache-from` cache it came from (None: the local store).
    from: Option<String>,
    record: CacheRecord,
}

impl BuildCtx<'_> {
    /// [`BuildCtx::record_step`] for a hit of a `--cache-from` cache.
    pub(crate) fn record_remote_step(
        &self,
        name: &str,
        started: std::time::Instant,
        layer: Option<&LayerRef>,
        from: &str,
    ) {
        self.record_step(name, true, started, layer);
        if let Ok(mut r) = self.records.lock() {
            if let Some(last) = r.iter_mut().rev().find(|s| s.name == name) {
                last.cache_from = Some(from.to_string());
            }
        }
    }

    pub(crate) fn probing(&self) -> bool {
        self.probe.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A hit of the key-only pass, reported only if the pass is kept.
    pub(crate) fn probe_hit(
        &self,
        step_id: &str,
        name: &str,
        from: Option<String>,
        rec: &CacheRecord,
    ) {
        if let Ok(mut h) = self.probe.hits.lock() {
            h.push(ProbeHit {
                step_id: step_id.to_string(),
                name: name.to_string(),
                from,
                record: rec.clone(),
            });
        }
    }
}

/// The key's record in the local store, else in a `--cache-from` cache,
/// with the cache it came from (None: the local store).
pub(crate) fn lookup(ctx: &BuildCtx<'_>, key: &str, step_id: &str) -> anyhow::Result<Lookup> {
    if ctx.no_cache_for(step_id) {
        return Ok(Lookup::Miss);
    }
    let local = match ctx.store.cache_lookup(key)? {
        CacheLookup::Hit(rec) => return Ok(Lookup::Hit(rec, None)),
        CacheLookup::Miss => Lookup::Miss,
        CacheLookup::Corrupt(e) => Lookup::Corrupt(e),
    };
    Ok(match remote_lookup(ctx, key, step_id) {
        Some((rec, from)) => Lookup::Hit(Box::new(rec), Some(from)),
        None => local,
    })
}

/// What [`lookup`] found for a key.
pub(crate) enum Lookup {
    /// A record, with the `--cache-from` cache it came from (None: the
    /// local store).
    Hit(Box<CacheRecord>, Option<String>),
    Miss,
    /// The local record is corrupt and no remote cache has the key: a
    /// miss whose reason says so.
    Corrupt(crate::store::StoreError),
}

/// End a step whose work failed. A refused remote layer is not the step's
/// failure: the build runs again without the record, so the step says
/// why and ends without an error of its own.
pub(crate) fn end_failed_step(handle: StepHandle, e: &anyhow::Error) {
    if crate::cache::RemoteCaches::is_refusal(e) {
        handle.log(
            crate::progress::Stream::Stderr,
            format!("{e:#}\n").as_bytes(),
        );
        handle.done();
    } else {
        handle.failed(format!("{e:#}"));
    }
}

/// Report a hit ([`lookup`]): the step is cached, from the local store
/// (`from` None) or the named cache.
pub(crate) fn report_hit(
    ctx: &BuildCtx<'_>,
    handle: StepHandle,
    name: &str,
    started: std::time::Instant,
    rec: &CacheRecord,
    step_id: &str,
    from: Option<String>,
) {
    note_used(ctx, step_id, rec);
    ctx.origins.note_hit(step_id, rec, from.as_deref());
    let layer = rec.layer.as_ref().cloned();
    match from {
        None => {
            handle.cached(None);
            ctx.record_step(name, true, started, layer.as_ref());
        }
        Some(from) => {
            handle.cached(Some(format!("remote cache {from}")));
            ctx.record_remote_step(name, started, layer.as_ref(), &from);
        }
    }
}

/// Run the key-only pass with `run_stages`; the target's result when
/// everything it is made of hit, else None (and nothing was reported).
pub(crate) fn probe(
    ctx: &BuildCtx<'_>,
    run_stages: impl Fn(&BuildCtx<'_>) -> anyhow::Result<Arc<StageResult>>,
) -> Option<Arc<StageResult>> {
    use std::sync::atomic::Ordering;
    if ctx.req.extra.cache_from.is_empty() || ctx.req.no_cache {
        return None;
    }
    ctx.probe.on.store(true, Ordering::Relaxed);
    let result = run_stages(ctx);
    ctx.probe.on.store(false, Ordering::Relaxed);
    let hits = ctx
        .probe
        .hits
        .lock()
        .map(|mut h| std::mem::take(&mut *h))
        .unwrap_or_default();
    // An error here is the real run's to report, with its step.
    let target = result.ok().filter(|t| !t.incomplete)?;
    for hit in hits {
        let handle = StepHandle::start(ctx.reporter.clone(), ctx.step_id(), &hit.name);
        let started = std::time::Instant::now();
        report_hit(
            ctx,
            handle,
            &hit.name,
            started,
            &hit.record,
            &hit.step_id,
            hit.from,
        );
    }
    Some(target)
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
