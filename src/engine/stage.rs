//! The stage driver: one stage's steps in order, each through the same
//! protocol — its key (a pure function of the step and its resolved
//! inputs, `stepkeys`), one cache lookup ([`StageState::lookup`]), and on a
//! miss the executor of its kind (`exec/`), the layer written and the
//! record committed. Metadata steps only edit the config and chain keys.

use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::image::ImageConfig;
use crate::layer::{KnownFiles, LayerEntry, PreparedEntries, Timespec};
use crate::oci::LayerRef;
use crate::plan::{Base, PlannedStage, Step, StepKind};
use crate::progress::StepHandle;
use crate::store::CacheRecord;

use super::build::{history, BuildCtx, StageResult};
use super::cache_io::Lookup;
use super::cachekey::{explain_miss, KeyInputs};
use super::config::{self, StageMeta};
use super::exec::KeepAlive;
use super::resolver::{image_layers, Sources};
use super::rootfs::Rootfs;
use super::stageview::StageView;
use super::stepkeys;
use super::users::UserDb;

/// A stage being built.
pub(crate) struct StageState {
    pub config: ImageConfig,
    pub layers: Vec<LayerRef>,
    /// Key of the last step (or the base's identity).
    pub key: String,
    meta: StageMeta,
    rootfs: Option<Rootfs>,
    /// History entries this build added whose `created` is filled at the end.
    undated: Vec<usize>,
    /// What a step's entries read from, kept until its layer is written.
    pub(super) keepalive: KeepAlive,
    /// The key-only pass missed a step of this stage (or of its base): its
    /// keys are right, its layers are not all there.
    pub incomplete: bool,
    /// Per step: whether a later step reads this stage's files (a RUN after
    /// it, or another stage built from or copying from this one), so a
    /// fresh COPY layer's snapshot is worth filling while it is written.
    files_read_after: Vec<bool>,
    /// The index of the step `run` is on.
    next_index: usize,
    /// The index of the stage's last RUN step, if it has one.
    last_run: Option<usize>,
    /// A sandbox setup process started for the next RUN step
    /// (`exec::run`), killed with the stage when unused.
    pub(super) spare: Option<crate::sandbox::Prestarted>,
}

/// What a step produced, to record and apply.
struct Outcome {
    layer: Option<LayerRef>,
    created: String,
}

impl StageState {
    pub fn start(
        ctx: &BuildCtx<'_>,
        stage: &PlannedStage,
        done: &[Option<Arc<StageResult>>],
    ) -> anyhow::Result<StageState> {
        let src = Sources::new(ctx, done);
        let mut incomplete = false;
        let (mut config, layers, key) = match &stage.base {
            // BuildKit's empty image has WorkingDir "/" (and the default PATH).
            Base::Scratch => {
                let mut cfg = ImageConfig::for_host();
                cfg.config.working_dir = Some("/".to_string());
                if let Some(p) = &ctx.req.extra.platform {
                    cfg.os = p.os.clone();
                    cfg.architecture = p.arch.clone();
                    cfg.variant = (!p.variant.is_empty()).then(|| p.variant.clone());
                }
                (cfg, Vec::new(), "scratch".to_string())
            }
            Base::Stage(i) => {
                let base = src.stage(*i)?;
                incomplete = base.incomplete;
                (base.config.clone(), base.layers.clone(), base.key.clone())
            }
            Base::Image(name) => {
                let img = src.image(name)?;
                let mut config = img.config.clone();
                config.fill_missing_history();
                (
                    config,
                    image_layers(img)?,
                    img.manifest_desc.digest().to_string(),
                )
            }
        };
        config::start_stage(&mut config);
        Ok(StageState {
            config,
            layers,
            key,
            meta: StageMeta::default(),
            rootfs: None,
            undated: Vec::new(),
            keepalive: KeepAlive::default(),
            incomplete,
            files_read_after: files_read_after(ctx, stage),
            next_index: 0,
            last_run: (stage.steps.iter()).rposition(|s| matches!(s.kind, StepKind::Run(_))),
            spare: None,
        })
    }

    /// Run one step: its key, a cache lookup, else its executor; apply.
    pub fn run(
        &mut self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        step_id: &str,
        done: &[Option<Arc<StageResult>>],
    ) -> anyhow::Result<()> {
        let src = Sources::new(ctx, done);
        self.next_index += 1;
        match &step.kind {
            StepKind::Copy(c) => {
                let inputs = self.copy_key(&src, step, c)?;
                self.layer_step(&src, step, step_id, inputs, |st, handle| {
                    st.copy(&src, c, handle)
                })
            }
            StepKind::Workdir(p) => {
                let wd = self.workdir_after(p);
                self.config.config.working_dir = Some(wd.clone());
                if step.empty_layer {
                    self.add_history(&step.created_by.clone().unwrap_or_default(), None, None);
                    return Ok(());
                }
                // The key's `workdir` input has always been the path joined
                // onto the working dir *after* the step (`/a/rel/rel` for
                // `WORKDIR rel` in `/a`); the history text in the key already
                // names the real directory. Kept so keys stay identical:
                // changing it needs a `cachekey::SCHEMA` bump.
                let keyed = self.workdir_after(p);
                let inputs = stepkeys::workdir_key(&self.key, step, &keyed);
                self.layer_step(&src, step, step_id, inputs, |st, _| st.mkdir(ctx, &wd))
            }
            StepKind::Run(r) => {
                let inputs = self.run_key(&src, step, r)?;
                self.layer_step(&src, step, step_id, inputs, |st, handle| {
                    st.run_cmd(&src, r, handle)
                })
            }
            StepKind::Config(edit) => {
                config::apply(&mut self.config, &mut self.meta, edit);
                self.key = stepkeys::config_key(&self.key, step).key();
                if let Some(cb) = &step.created_by {
                    self.add_history(cb, None, None);
                }
                Ok(())
            }
        }
    }

    /// Whether a RUN step of the stage comes after the current step.
    pub(super) fn runs_later(&self) -> bool {
        self.last_run.is_some_and(|last| last + 1 > self.next_index)
    }

    /// Starts the setup process of this stage's next RUN sandbox unless one
    /// is waiting (`sandbox::prestart`); a failure to start one only means
    /// the RUN starts its own.
    pub(super) fn prestart_spare(&mut self, ctx: &BuildCtx<'_>) {
        if self.spare.is_none() {
            self.spare = crate::sandbox::prestart(&Default::default(), &ctx.req.limits).ok();
        }
    }

    /// The absolute WORKDIR after a `WORKDIR p` step (relative paths join
    /// the current one; an absolute one is kept as written, as the plan does).
    fn workdir_after(&self, p: &str) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            let cur = self.config.config.working_dir.as_deref().unwrap_or("/");
            super::copydest::clean(&format!("{cur}/{p}"))
        }
    }

    /// The stage's working directory.
    pub(super) fn cwd(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into())
    }

    fn add_history(&mut self, created_by: &str, created: Option<String>, layer: Option<&LayerRef>) {
        let entry = history(created_by, created.clone());
        match layer {
            Some(l) => {
                self.config.add_layer(&l.diff_id, entry);
                self.layers.push(l.clone());
            }
            None => self.config.add_empty_layer(entry),
        }
        if created.is_none() {
            self.undated.push(self.config.history.len() - 1);
        }
    }

    /// The protocol of steps that may write a layer: cache lookup (hit →
    /// reuse), else execute, store the blob and commit the record.
    fn layer_step(
        &mut self,
        src: &Sources<'_, '_>,
        step: &Step,
        step_id: &str,
        mut inputs: KeyInputs,
        exec: impl FnOnce(&mut Self, &StepHandle) -> anyhow::Result<Vec<LayerEntry>>,
    ) -> anyhow::Result<()> {
        let ctx = src.ctx;
        // New layers' file times are clamped to it: a layer made without
        // it is not the one made with it.
        if let Some(epoch) = ctx.req.source_date_epoch {
            inputs
                .extra
                .insert("source-date-epoch".into(), epoch.to_string());
        }
        let key = inputs.key();
        // What the steps after chain onto (see `stepkeys::link_chain`).
        let chain = match &step.kind {
            StepKind::Copy(c) if stepkeys::is_link(c) => stepkeys::link_chain(&self.key, &key),
            _ => key.clone(),
        };
        let created_by = step.created_by.clone().unwrap_or_default();
        let name = step
            .display_name
            .clone()
            .unwrap_or_else(|| created_by.clone());
        if ctx.probing() {
            return self.probe_step(ctx, (key, chain), step_id, &name, &created_by);
        }
        let handle = StepHandle::start(ctx.reporter.clone(), ctx.step_id(), &name);
        let started = std::time::Instant::now();
        let no_cache = ctx.no_cache_for(step_id);
        // The one place the driver looks a key up: the local store, then
        // each `--cache-from` cache (`cache_io::lookup`).
        let mut corrupt = None;
        match super::cache_io::lookup(ctx, &key, step_id)? {
            Lookup::Hit(rec, from) => {
                let outcome = outcome_from_record(&rec);
                super::cache_io::report_hit(ctx, handle, &name, started, &rec, step_id, from);
                self.apply_outcome(&created_by, outcome, ctx);
                self.key = chain;
                return Ok(());
            }
            Lookup::Corrupt(e) => corrupt = Some(corrupt_record(ctx, &e)),
            Lookup::Miss => {}
        }
        // A RUN that misses starts its sandbox's setup process at once (or
        // the step before did): its exec and cgroup move overlap the miss
        // explanation and the step's preparation (`exec::run`).
        if matches!(step.kind, StepKind::Run(_)) {
            self.prestart_spare(ctx);
        }
        // Started before anything else: it fetches while the step works.
        let seeding = super::cache_io::start_seed(ctx, step_id, &inputs.instruction, &step.kind);
        let (reason, link_from) = match corrupt {
            Some(why) => (why, None),
            None => self.miss_reason(ctx, step, step_id, &inputs, no_cache)?,
        };
        let read_later = self
            .files_read_after
            .get(self.next_index - 1)
            .copied()
            .unwrap_or(false);
        let fresh_copy = read_later && matches!(&step.kind, StepKind::Copy(c) if c.from.is_none());
        let link_from = match link_from {
            None if fresh_copy => super::snapfill::fresh_source(ctx, &inputs),
            other => other,
        };
        handle.cache_miss(&reason);
        let result = super::cache_io::materialize(ctx, &self.layers, step, src, &handle)
            .and_then(|()| exec(self, &handle))
            .and_then(|entries| {
                let context_copy = matches!(&step.kind, StepKind::Copy(c) if c.from.is_none());
                let known = context_copy.then(|| known_context_files(ctx)).flatten();
                let entries = PreparedEntries::new(entries, ctx.req.source_date_epoch)
                    .context("preparing layer entries")?;
                match &link_from {
                    // The snapshot fill starts beside the seeding's end.
                    Some(from) => {
                        super::snapfill::write_with_snapshot(ctx, &entries, from, &handle, |e| {
                            // Uploaded (--push) while the snapshot fills.
                            self.write_seeded(ctx, e, &handle, known, seeding, step_id)
                                .inspect(|l| ctx.early_push.layer_written(ctx.store, step_id, l))
                        })
                    }
                    None => {
                        let layer =
                            self.write_seeded(ctx, &entries, &handle, known, seeding, step_id)?;
                        // A RUN's upper dir as the snapshot a later step reads.
                        if read_later {
                            self.adopt_run_upper(ctx, &entries, &layer, &handle);
                        }
                        Ok(layer)
                    }
                }
            });
        self.keepalive.clear();
        let layer = match result {
            Ok(l) => l,
            Err(e) => {
                let e = super::limits::with_disk_full_hint(e, ctx.store.root());
                super::cache_io::end_failed_step(handle, &e);
                return Err(e);
            }
        };
        let created = crate::image::time::format_rfc3339(
            ctx.req
                .source_date_epoch
                .unwrap_or_else(crate::image::time::now_epoch),
        );
        self.commit(ctx, &key, step_id, inputs, &layer, &created)?;
        // (Once per layer: a layer already sent beside its snapshot is not.)
        ctx.early_push.layer_written(ctx.store, step_id, &layer);
        handle.done();
        ctx.record_step(&name, false, started, Some(&layer));
        let executed = crate::store::LayerOrigin::Executed { reason };
        ctx.origins.note(step_id, Some(&layer), executed);
        let outcome = Outcome {
            layer: Some(layer),
            created,
        };
        self.apply_outcome(&created_by, outcome, ctx);
        self.key = chain;
        Ok(())
    }

    /// Why the step missed, against the closest earlier record, and the
    /// snapshot a context COPY's new layer can be linked from.
    fn miss_reason<'i>(
        &self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        step_id: &str,
        inputs: &'i KeyInputs,
        no_cache: bool,
    ) -> anyhow::Result<(String, Option<super::snapfill::LinkSource<'i>>)> {
        if ctx.req.no_cache {
            return Ok(("--no-cache".to_string(), None));
        }
        if no_cache {
            return Ok(("--no-cache-filter".to_string(), None));
        }
        // Only this stage in earlier builds of this Dockerfile holds
        // earlier versions of the step (step ids are `scope/stage/i`);
        // at another parent, only the same instruction (an earlier step
        // changed).
        let stage = step_id.rsplit_once('/').map(|(s, _)| s);
        let comparable = |r: &CacheRecord| {
            r.step_id.rsplit_once('/').map(|(s, _)| s) == stage
                && (r.parent.as_deref() == Some(self.key.as_str())
                    || r.inputs.get("instruction").and_then(|v| v.as_str())
                        == Some(inputs.instruction.as_str()))
        };
        let closest = ctx
            .store
            .cache_closest_where(Some(&self.key), step_id, &comparable)?;
        let old_layer = closest.as_ref().and_then(|r| r.layer.clone());
        let old = closest.and_then(|r| stored_inputs(ctx, r.inputs));
        let reason = explain_miss(inputs, old.as_ref());
        let link = super::snapfill::link_source(ctx, step, inputs, old, old_layer);
        Ok((reason, link))
    }

    /// Record the step in the cache. The per-file digests (tens of
    /// thousands for `COPY .`) only explain misses: they go to a blob of
    /// their own, so a hit parses a small record.
    fn commit(
        &self,
        ctx: &BuildCtx<'_>,
        key: &str,
        step_id: &str,
        mut inputs: KeyInputs,
        layer: &LayerRef,
        created: &str,
    ) -> anyhow::Result<()> {
        let files = std::mem::take(&mut inputs.files);
        let mut inputs_json = serde_json::to_value(&inputs).context("encoding cache inputs")?;
        let mut kept = Vec::new();
        if !files.is_empty() {
            let blob = ctx
                .store
                .put_blob(&serde_json::to_vec(&files).context("encoding file digests")?)
                .context("storing the step's file digests")?;
            inputs_json["files_blob"] = serde_json::Value::String(blob.digest.clone());
            kept.push(blob.digest);
        }
        let mut rec = CacheRecord::new(key, Some(&self.key), step_id, inputs_json);
        rec.blobs = kept;
        rec.layer = Some(LayerRef {
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            size: layer.size,
            media_type: layer.media_type.clone(),
        });
        rec.config_changes = serde_json::json!({ "created": created });
        ctx.store
            .cache_put(&rec)
            .context("recording the step in the cache")?;
        super::cache_io::note_used(ctx, step_id, &rec);
        Ok(())
    }

    /// A layer step in the key-only pass (`cache_io::probe`): nothing
    /// runs; a miss only marks the stage incomplete, and its key chains on.
    fn probe_step(
        &mut self,
        ctx: &BuildCtx<'_>,
        (key, chain): (String, String),
        step_id: &str,
        name: &str,
        created_by: &str,
    ) -> anyhow::Result<()> {
        match super::cache_io::lookup(ctx, &key, step_id)? {
            Lookup::Hit(rec, from) => {
                ctx.probe_hit(step_id, name, from, &rec);
                self.apply_outcome(created_by, outcome_from_record(&rec), ctx);
            }
            Lookup::Miss | Lookup::Corrupt(_) => self.incomplete = true,
        }
        self.key = chain;
        Ok(())
    }

    fn apply_outcome(&mut self, created_by: &str, outcome: Outcome, ctx: &BuildCtx<'_>) {
        let created = match ctx.req.source_date_epoch {
            Some(e) => crate::image::time::format_rfc3339(e),
            None => outcome.created,
        };
        self.add_history(created_by, Some(created), outcome.layer.as_ref());
    }

    /// COPY/ADD key: what the sources are (a `--from` identity, URL
    /// checksums or fetched digests, the context selection), then the pure
    /// key function.
    fn copy_key(
        &self,
        src: &Sources<'_, '_>,
        step: &Step,
        c: &crate::plan::CopyStep,
    ) -> anyhow::Result<KeyInputs> {
        let ctx = src.ctx;
        let mut reads = stepkeys::CopyReads::default();
        if let Some(from) = &c.from {
            reads.from = Some(src.identity(from)?);
        } else {
            let (urls, local): (Vec<String>, Vec<String>) = c
                .sources
                .iter()
                .cloned()
                .partition(|s| c.is_add && super::exec::is_url(s));
            for u in urls {
                // Without a checksum the content can only be known by
                // fetching it (once: the copy on a miss reuses the file).
                let identity = match &c.checksum {
                    Some(sum) => sum.clone(),
                    None => ctx.download(&u, None)?.1,
                };
                reads.urls.push((u, identity));
            }
            if !local.is_empty() {
                let key = super::sources::context_key(
                    ctx.context()?,
                    &local,
                    &c.excludes,
                    c.chmod.is_some(),
                )?;
                reads.context = Some((key.files, key.digest));
            }
        }
        Ok(stepkeys::copy_key(&self.key, step, c, &self.cwd(), reads))
    }

    /// RUN key: the identity of what each bind mount brings in, then the
    /// pure key function.
    fn run_key(
        &self,
        src: &Sources<'_, '_>,
        step: &Step,
        r: &crate::plan::RunStep,
    ) -> anyhow::Result<KeyInputs> {
        let ctx = src.ctx;
        let mut mount_content = Vec::new();
        for m in &r.mounts {
            let what = match (&m.from, m.mount.kind) {
                (_, k) if k != crate::plan::MountType::Bind => None,
                (Some(from), _) => Some(src.identity(from)?),
                (None, _) => {
                    let source = m
                        .mount
                        .source
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| ".".into());
                    let key = super::sources::context_key(ctx.context()?, &[source], &[], false)?;
                    Some(key.digest)
                }
            };
            mount_content.push(what);
        }
        let reads = stepkeys::RunReads {
            build_network: format!("{:?}", ctx.req.network).to_lowercase(),
            add_hosts: ctx.req.extra.add_hosts.clone(),
            workdir: self.cwd(),
            mount_content,
        };
        Ok(stepkeys::run_key(&self.key, step, r, reads))
    }

    /// This stage's filesystem so far, materialized.
    fn root(&mut self, ctx: &BuildCtx<'_>) -> anyhow::Result<std::path::PathBuf> {
        if self.rootfs.is_none() {
            self.rootfs = Some(Rootfs::new(ctx.store)?);
        }
        let layers = self.layers.clone();
        let r = self.rootfs.as_mut().context("rootfs view")?;
        Ok(r.sync(ctx.store, &layers, ctx.req.registry.max_layer_size)?
            .to_path_buf())
    }

    /// This stage's files for lookups: its layer snapshots when RUN uses
    /// them (nothing materialized), else the materialized root.
    pub(super) fn view(&mut self, ctx: &BuildCtx<'_>) -> anyhow::Result<StageView> {
        if super::run::overlay_usable() {
            let max = ctx.req.registry.max_layer_size;
            return Ok(StageView::Layers(super::snapshot::lowers(
                ctx.store,
                &self.layers,
                max,
            )?));
        }
        Ok(StageView::Dir(self.root(ctx)?))
    }

    pub(super) fn user_db(&mut self, ctx: &BuildCtx<'_>) -> anyhow::Result<UserDb> {
        if self.layers.is_empty() {
            return Ok(UserDb::default());
        }
        let view = self.view(ctx)?;
        Ok(UserDb::parse(
            &view.read_text("/etc/passwd")?,
            &view.read_text("/etc/group")?,
        ))
    }

    pub(super) fn created_time(ctx: &BuildCtx<'_>) -> Timespec {
        let secs = ctx
            .req
            .source_date_epoch
            .unwrap_or_else(crate::image::time::now_epoch);
        Timespec::new(secs, 0)
    }

    pub fn finish(mut self, ctx: &BuildCtx<'_>) -> StageResult {
        self.date_history(ctx);
        StageResult {
            config: self.config,
            layers: self.layers,
            key: self.key,
            rootfs: Mutex::new(self.rootfs),
            incomplete: self.incomplete,
        }
    }

    /// Metadata entries get the time of the newest dated entry (a layer
    /// step's time, kept in its cache record), so a no-op rebuild yields
    /// the same image.
    fn date_history(&mut self, ctx: &BuildCtx<'_>) {
        if let Some(e) = ctx.req.source_date_epoch {
            let t = crate::image::time::format_rfc3339(e);
            for i in std::mem::take(&mut self.undated) {
                self.config.history[i].created = Some(t.clone());
            }
            return;
        }
        let newest = self
            .config
            .history
            .iter()
            .enumerate()
            .rev()
            .filter(|(i, _)| !self.undated.contains(i))
            .find_map(|(_, h)| h.created.clone());
        let fallback = newest
            .unwrap_or_else(|| crate::image::time::format_rfc3339(crate::image::time::now_epoch()));
        for i in std::mem::take(&mut self.undated) {
            self.config.history[i].created = Some(fallback.clone());
        }
    }
}

/// A cache record's inputs, with the file digests read back from their blob.
fn stored_inputs(ctx: &BuildCtx<'_>, json: serde_json::Value) -> Option<KeyInputs> {
    let blob = json
        .get("files_blob")
        .and_then(|b| b.as_str())
        .map(str::to_string);
    let mut inputs: KeyInputs = serde_json::from_value(json).ok()?;
    if let Some(digest) = blob {
        let bytes = ctx.store.read_blob(&digest).ok()?;
        inputs.files = serde_json::from_slice(&bytes).ok()?;
    }
    Some(inputs)
}

/// A corrupt cache record is a miss whose reason says so, and a warning.
fn corrupt_record(ctx: &BuildCtx<'_>, e: &crate::store::StoreError) -> String {
    let why = e.to_string().replace("\nhint: ", "; ");
    ctx.reporter.event(crate::progress::Event::Warning {
        id: None,
        message: why.clone(),
    });
    why
}

fn outcome_from_record(rec: &CacheRecord) -> Outcome {
    Outcome {
        layer: rec.layer.as_ref().map(|l| LayerRef {
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
        }),
        created: rec
            .config_changes
            .get("created")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| crate::image::time::format_rfc3339(rec.created as i64)),
    }
}

/// The context files among a context COPY's `entries`, with the digests
/// and stats of this build's context scan: the layer writer keys their
/// chunks from the digests and, at the start of the stream, resumes an
/// earlier layer's chunks without reading the files (`layer::KnownFiles`
/// checks each opened file's stat against the scan's).
///
/// A lookup into the scan itself (a binary search by path), not a map of
/// its own: a map keyed by every file's path cost ~40 MB of peak memory
/// at 200,000 files.
fn known_context_files(ctx: &BuildCtx<'_>) -> Option<std::sync::Arc<KnownFiles>> {
    use crate::layer::KnownFile;
    let index = ctx.context_shared().ok()?;
    let lookup = move |p: &std::path::Path| {
        let rel = p.strip_prefix(index.root()).ok()?.to_str()?;
        let ent = index.get(rel)?;
        Some(KnownFile {
            dev: ent.dev,
            ino: ent.ino,
            size: ent.size,
            mtime_ns: ent.mtime_ns,
            ctime_ns: ent.ctime_ns,
            sha256: ent.digest?.0,
        })
    };
    Some(std::sync::Arc::new(KnownFiles::from_lookup(lookup)))
}

/// Per step of `stage`: whether a later step reads the stage's files — a
/// RUN later in the stage, or (for every step) another stage built FROM
/// this one or copying/mounting from it.
fn files_read_after(ctx: &BuildCtx<'_>, stage: &PlannedStage) -> Vec<bool> {
    let me = ctx.plan.stages.iter().position(|s| std::ptr::eq(s, stage));
    let used_elsewhere = me.is_some_and(|i| {
        ctx.plan.stages.iter().any(|s| {
            s.base == Base::Stage(i)
                || s.steps
                    .iter()
                    .any(|st| st.sources().contains(&&Base::Stage(i)))
        })
    });
    let mut run_after = false;
    let mut out: Vec<bool> = stage
        .steps
        .iter()
        .rev()
        .map(|st| {
            let v = run_after || used_elsewhere;
            run_after |= matches!(st.kind, StepKind::Run(_));
            v
        })
        .collect();
    out.reverse();
    out
}
