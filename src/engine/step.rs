//! One stage's steps: each step's cache key, a cache lookup, and on a miss
//! its execution — COPY/ADD and WORKDIR write a layer, metadata
//! instructions change the config.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};

use crate::image::ImageConfig;
use crate::layer::{write_layer, LayerEntry, Timespec, WriteOptions};
use crate::plan::{Base, Kind, PlannedStage, Step};
use crate::progress::StepHandle;
use crate::store::{CacheRecord, CachedLayer, LockedTempDir};

use super::build::{history, BuildCtx, StageResult};
use super::cachekey::{explain_miss, KeyInputs};
use super::config::{self, StageMeta};
use super::copy::{copy_entries, heredoc_tree, CopyOptions, SourceItem, SourceKind, SourceTree};
use super::copydest::{clean, resolve_dest};
use super::rootfs::{self, LayerRef, Rootfs};
use super::sources;
use super::stageview::StageView;
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
    keepalive: KeepAlive,
    /// The key-only pass missed a step of this stage (or of its base): its
    /// keys are right, its layers are not all there.
    pub incomplete: bool,
}

/// Temp dirs and source views a step's layer entries name files in.
#[derive(Default)]
struct KeepAlive {
    temps: Vec<LockedTempDir>,
    views: Vec<SourceView>,
}

impl KeepAlive {
    fn clear(&mut self) {
        self.temps.clear();
        self.views.clear();
    }
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
                let base = done[*i]
                    .as_ref()
                    .with_context(|| format!("stage {i} has not been built"))?;
                incomplete = base.incomplete;
                (base.config.clone(), base.layers.clone(), base.key.clone())
            }
            Base::Image(name) => {
                let img = ctx
                    .images
                    .get(name)
                    .with_context(|| format!("image {name} was not loaded"))?;
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
        })
    }

    /// Run one step: look up its key, reuse or execute, apply.
    pub fn run(
        &mut self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        step_id: &str,
        done: &[Option<Arc<StageResult>>],
    ) -> anyhow::Result<()> {
        let inst = &step.instruction;
        let created_by = step.created_by.clone().unwrap_or_default();
        match &inst.kind {
            Kind::Copy { .. } | Kind::Add { .. } => {
                self.layer_step(ctx, step, step_id, done, |st, handle| {
                    st.copy(ctx, step, done, handle)
                })
            }
            Kind::Workdir(_) => {
                let wd = self.workdir_after(step);
                self.config.config.working_dir = Some(wd.clone());
                if step.empty_layer {
                    self.add_history(&created_by, None, None);
                    return Ok(());
                }
                self.layer_step(ctx, step, step_id, done, |st, _| st.mkdir(ctx, &wd))
            }
            Kind::Run { .. } => self.layer_step(ctx, step, step_id, done, |st, handle| {
                st.run_cmd(ctx, step, done, handle)
            }),
            Kind::From { .. } => bail!("unexpected FROM inside a stage"),
            _ => {
                config::apply(&mut self.config, &mut self.meta, inst)?;
                self.key = KeyInputs {
                    parent: std::mem::take(&mut self.key),
                    instruction: format!("{} {}", inst.name(), created_by),
                    build_args: step.build_args.clone(),
                    ..KeyInputs::default()
                }
                .key();
                if let Some(cb) = &step.created_by {
                    self.add_history(cb, None, None);
                }
                Ok(())
            }
        }
    }

    /// The absolute WORKDIR after this step (relative paths join the current one).
    fn workdir_after(&self, step: &Step) -> String {
        let Kind::Workdir(p) = &step.instruction.kind else {
            return "/".into();
        };
        // As the plan does: an absolute WORKDIR is kept as written.
        if p.starts_with('/') {
            p.clone()
        } else {
            let cur = self.config.config.working_dir.as_deref().unwrap_or("/");
            clean(&format!("{cur}/{p}"))
        }
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

    /// The common protocol of steps that may write a layer: key, cache
    /// lookup (hit → reuse), else execute, store the blob and the record.
    fn layer_step(
        &mut self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        step_id: &str,
        done: &[Option<Arc<StageResult>>],
        exec: impl FnOnce(&mut Self, &StepHandle) -> anyhow::Result<Vec<LayerEntry>>,
    ) -> anyhow::Result<()> {
        let inputs = self.key_inputs(ctx, step, done)?;
        let key = inputs.key();
        let created_by = step.created_by.clone().unwrap_or_default();
        let name = step
            .display_name
            .clone()
            .unwrap_or_else(|| created_by.clone());
        if ctx.probing() {
            return self.probe_step(ctx, key, step_id, &name, &created_by);
        }
        let handle = StepHandle::start(ctx.reporter.clone(), ctx.step_id(), &name);
        let started = std::time::Instant::now();
        let no_cache = ctx.no_cache_for(step_id);
        // The local store, then each `--cache-from` cache.
        if let Some((rec, from)) = super::cache_io::lookup(ctx, &key, step_id)? {
            let outcome = outcome_from_record(&rec);
            super::cache_io::report_hit(ctx, handle, &name, started, &rec, step_id, from);
            self.apply_outcome(&created_by, outcome, ctx);
            self.key = key;
            return Ok(());
        }
        let mut link_from = None;
        let reason = if ctx.req.no_cache {
            "--no-cache".to_string()
        } else if no_cache {
            "--no-cache-filter".to_string()
        } else {
            // Only this stage in earlier builds of this Dockerfile holds
            // earlier versions of the step (step ids are `scope/stage/i`);
            // at another parent, only the same instruction (an earlier
            // step changed).
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
            let reason = explain_miss(&inputs, old.as_ref());
            link_from = super::snapfill::link_source(ctx, step, &inputs, old, old_layer);
            reason
        };
        handle.cache_miss(&reason);
        let result = super::cache_io::materialize(ctx, &self.layers, step, done, &handle)
            .and_then(|()| exec(self, &handle))
            .and_then(|entries| {
                let kept = link_from.as_ref().map(|_| entries.clone());
                let layer = self.write(ctx, entries, &handle)?;
                if let (Some(from), Some(entries), Some(layer)) = (&link_from, kept, &layer) {
                    super::snapfill::snapshot_from_entries(ctx, layer, &entries, from, &handle);
                }
                Ok(layer)
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
        let created = match ctx.req.source_date_epoch {
            Some(e) => crate::image::time::format_rfc3339(e),
            None => crate::image::time::format_rfc3339(crate::image::time::now_epoch()),
        };
        // The per-file digests (tens of thousands for `COPY .`) only explain
        // misses: they go to a blob of their own, so a hit parses a small record.
        let mut record_inputs = inputs.clone();
        let files = std::mem::take(&mut record_inputs.files);
        let mut inputs_json =
            serde_json::to_value(&record_inputs).context("encoding cache inputs")?;
        let mut kept = Vec::new();
        if !files.is_empty() {
            let blob = ctx
                .store
                .put_blob(&serde_json::to_vec(&files).context("encoding file digests")?)
                .context("storing the step's file digests")?;
            inputs_json["files_blob"] = serde_json::Value::String(blob.digest.clone());
            kept.push(blob.digest);
        }
        let mut rec = CacheRecord::new(&key, Some(&self.key), step_id, inputs_json);
        rec.blobs = kept;
        rec.layer = layer.as_ref().map(|l| CachedLayer {
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
        });
        rec.config_changes = serde_json::json!({ "created": created });
        ctx.store
            .cache_put(&rec)
            .context("recording the step in the cache")?;
        super::cache_io::note_used(ctx, step_id, &rec);
        handle.done();
        ctx.record_step(&name, false, started, layer.as_ref());
        self.apply_outcome(&created_by, Outcome { layer, created }, ctx);
        self.key = key;
        Ok(())
    }

    /// A layer step in the key-only pass (`cache_io::probe`): nothing
    /// runs; a miss only marks the stage incomplete, and its key chains on.
    fn probe_step(
        &mut self,
        ctx: &BuildCtx<'_>,
        key: String,
        step_id: &str,
        name: &str,
        created_by: &str,
    ) -> anyhow::Result<()> {
        match super::cache_io::lookup(ctx, &key, step_id)? {
            Some((rec, from)) => {
                ctx.probe_hit(step_id, name, from, &rec);
                self.apply_outcome(created_by, outcome_from_record(&rec), ctx);
            }
            None => self.incomplete = true,
        }
        self.key = key;
        Ok(())
    }

    fn apply_outcome(&mut self, created_by: &str, outcome: Outcome, ctx: &BuildCtx<'_>) {
        let created = match ctx.req.source_date_epoch {
            Some(e) => crate::image::time::format_rfc3339(e),
            None => outcome.created,
        };
        self.add_history(created_by, Some(created), outcome.layer.as_ref());
    }

    /// Write `entries` as a layer blob. An empty change set is still a
    /// layer: BuildKit commits every COPY, ADD, RUN and WORKDIR (other than
    /// `/`) with a layer, empty or not.
    fn write(
        &self,
        ctx: &BuildCtx<'_>,
        entries: Vec<LayerEntry>,
        handle: &StepHandle,
    ) -> anyhow::Result<Option<LayerRef>> {
        let mut blob = ctx.store.blob_writer()?;
        // Chunk records are written through this temp dir (locked, removed
        // on drop) so a crash leaves no half-written record behind.
        let chunk_tmp = ctx.store.temp_dir("chunks")?;
        let opts = WriteOptions {
            compression: ctx.req.compression,
            source_date_epoch: ctx.req.source_date_epoch,
            threads: 0,
            chunk_cache: Some(chunk_cache(ctx.store, chunk_tmp.path())?),
        };
        let info = {
            // Bytes and throughput while a big layer is compressed and stored.
            let mut counted = ProgressWriter {
                inner: &mut blob,
                handle,
                written: 0,
                reported: 0,
            };
            write_layer(entries, &mut counted, &opts).context("writing the layer")?
        };
        let stored = blob
            .commit_verified(&info.digest, Some(info.size))
            .context("storing the layer blob")?;
        handle.progress(stored.size, Some(stored.size), crate::progress::Unit::Bytes);
        Ok(Some(LayerRef {
            digest: stored.digest,
            diff_id: info.diff_id,
            size: stored.size,
            media_type: info.media_type.to_string(),
        }))
    }

    /// The inputs of a layer step's key.
    fn key_inputs(
        &self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        done: &[Option<Arc<StageResult>>],
    ) -> anyhow::Result<KeyInputs> {
        let inst = &step.instruction;
        // The history text already starts with the instruction's name
        // (`RUN /bin/sh -c …`); only a step without one gets the bare name.
        let created_by = step.created_by.clone().unwrap_or_default();
        let instruction = if created_by.is_empty() {
            inst.name()
        } else {
            created_by
        };
        let mut inputs = KeyInputs {
            parent: self.key.clone(),
            instruction,
            build_args: step.build_args.clone(),
            ..KeyInputs::default()
        };
        if let Some(parts) = CopyParts::of(&inst.kind) {
            return self.copy_key_inputs(ctx, step, done, inputs, parts);
        }
        match &inst.kind {
            Kind::Workdir(_) => {
                inputs
                    .extra
                    .insert("workdir".into(), self.workdir_after(step));
                Ok(inputs)
            }
            Kind::Run { .. } => self.run_key_inputs(ctx, step, done, inputs),
            _ => Ok(inputs),
        }
    }

    /// COPY/ADD key inputs: destination, heredoc bodies, and the content of
    /// the sources (context selection digest, `--from` source key, URLs).
    fn copy_key_inputs(
        &self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        done: &[Option<Arc<StageResult>>],
        mut inputs: KeyInputs,
        parts: CopyParts<'_>,
    ) -> anyhow::Result<KeyInputs> {
        let inst = &step.instruction;
        let CopyParts {
            sources,
            dest,
            heredocs,
            is_add,
        } = parts;
        let cwd = self.config.config.working_dir.as_deref().unwrap_or("/");
        inputs.extra.insert("dest".into(), resolve_dest(cwd, dest));
        if inst.flag("link").is_some() {
            inputs.parent = "link".into();
        }
        for h in heredocs {
            inputs
                .extra
                .insert(format!("heredoc {}", h.name), sha256_hex(h.body.as_bytes()));
        }
        if let Some(src) = step.sources.first() {
            inputs
                .extra
                .insert("from".into(), source_identity(ctx, src, done)?);
            return Ok(inputs);
        }
        let (urls, local): (Vec<String>, Vec<String>) =
            sources.iter().cloned().partition(|s| is_add && is_url(s));
        for u in urls {
            let checksum = inst.flag("checksum").and_then(|f| f.value.clone());
            // Without a checksum the content can only be known by fetching it
            // (once: the copy on a miss reuses the file).
            let identity = match checksum {
                Some(c) => c,
                None => ctx.download(&u, None)?.1,
            };
            inputs.extra.insert(format!("url {u}"), identity);
        }
        if !local.is_empty() {
            let excludes = inst.flag_values("exclude");
            let key = sources::context_key(
                ctx.context()?,
                &local,
                &excludes,
                inst.flag("chmod").is_some(),
            )?;
            inputs.files = key.files;
            inputs.extra.insert("sources".into(), key.digest);
        }
        Ok(inputs)
    }

    /// RUN's key: the instruction (with its build args) plus the settings
    /// that change what it sees: network, mounts, and the content of what
    /// bind mounts bring in. Secrets and the SSH agent never enter it.
    fn run_key_inputs(
        &self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        done: &[Option<Arc<StageResult>>],
        mut inputs: KeyInputs,
    ) -> anyhow::Result<KeyInputs> {
        let inst = &step.instruction;
        let network = inst
            .flag("network")
            .and_then(|f| f.value.clone())
            .unwrap_or_else(|| format!("{:?}", ctx.req.network).to_lowercase());
        inputs.extra.insert("network".into(), network);
        if !ctx.req.extra.add_hosts.is_empty() {
            let hosts: Vec<String> = ctx
                .req
                .extra
                .add_hosts
                .iter()
                .map(|(h, ip)| format!("{h}={ip}"))
                .collect();
            inputs.extra.insert("add-host".into(), hosts.join(","));
        }
        let workdir = self
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        inputs.extra.insert("workdir".into(), workdir.clone());
        let values = inst.flag_values("mount");
        let mounts = super::run::mounts(&step.mounts, &workdir);
        for (i, (m, raw)) in mounts.iter().zip(&values).enumerate() {
            inputs.extra.insert(format!("mount {i}"), raw.clone());
            if m.kind != crate::dockerfile::mount::MountType::Bind {
                continue;
            }
            let what = match step
                .sources
                .get(bind_source_index(&mounts, i))
                .filter(|_| m.from.is_some())
            {
                Some(src) => source_identity(ctx, src, done)?,
                None => {
                    let src = m
                        .source
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| ".".into());
                    sources::context_key(ctx.context()?, &[src], &[], false)?.digest
                }
            };
            inputs.extra.insert(format!("mount {i} content"), what);
        }
        Ok(inputs)
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
    fn view(&mut self, ctx: &BuildCtx<'_>) -> anyhow::Result<StageView> {
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

    fn user_db(&mut self, ctx: &BuildCtx<'_>) -> anyhow::Result<UserDb> {
        if self.layers.is_empty() {
            return Ok(UserDb::default());
        }
        let view = self.view(ctx)?;
        Ok(UserDb::parse(
            &view.read_text("/etc/passwd"),
            &view.read_text("/etc/group"),
        ))
    }

    fn created_time(ctx: &BuildCtx<'_>) -> Timespec {
        let secs = ctx
            .req
            .source_date_epoch
            .unwrap_or_else(crate::image::time::now_epoch);
        Timespec::new(secs, 0)
    }

    /// COPY / ADD on a cache miss.
    fn copy(
        &mut self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        done: &[Option<Arc<StageResult>>],
        handle: &StepHandle,
    ) -> anyhow::Result<Vec<LayerEntry>> {
        let inst = &step.instruction;
        let CopyParts {
            sources: srcs,
            dest,
            heredocs,
            is_add,
        } = CopyParts::of(&inst.kind).context("not a COPY or ADD")?;
        let link = inst.flag("link").is_some();
        let parents = inst.flag("parents").is_some();
        let excludes = inst.flag_values("exclude");
        let chown = match inst.flag("chown").and_then(|f| f.value.clone()) {
            Some(spec) => Some(self.user_db(ctx)?.resolve_chown(&spec)?),
            None => None,
        };
        let chmod = match inst.flag("chmod").and_then(|f| f.value.clone()) {
            Some(m) => Some(u32::from_str_radix(&m, 8).with_context(|| {
                format!("invalid chmod parameter: '{m}'. it should be octal string and between 0 and 07777")
            })?),
            None => None,
        };
        let created = Self::created_time(ctx);
        let tmp = ctx.store.temp_dir("copy-").context("creating a temp dir")?;
        let mut trees: Vec<SourceTree> = Vec::new();
        match step.sources.first() {
            Some(src) => {
                let view = source_index(ctx, src, done)?;
                for s in srcs {
                    let selected = sources::select_trees(&view.index, s, &excludes, true, parents)
                        .map_err(|e| sources::not_in_source(e, src, &ctx.plan, s))?;
                    trees.extend(selected);
                    for node in sources::skipped_under(&view.skipped_nodes, s) {
                        handle.warn(format!(
                            "COPY --from: device node {node} could not be created without privilege; the layer lacks it"
                        ));
                    }
                }
                self.keepalive.views.push(view);
            }
            None => {
                for s in srcs {
                    if is_add && is_url(s) {
                        let checksum = inst.flag("checksum").and_then(|f| f.value.clone());
                        let (file, _) = ctx.download(s, checksum.as_deref())?;
                        trees.push(url_tree(file));
                        continue;
                    }
                    let index = ctx.context()?;
                    let selected = sources::select_trees(index, s, &excludes, false, parents)?;
                    for tree in selected {
                        match archive_of(is_add, inst, &tree) {
                            Some(path) => trees.push(extract_tree(&path, &tmp, handle)?),
                            None => trees.push(tree),
                        }
                    }
                }
            }
        }
        for h in heredocs {
            trees.push(heredoc_tree(&h.name, h.body.as_bytes(), created));
        }
        let _ = handle;
        self.keepalive.temps.push(tmp);
        let cwd = self
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let mut dest_abs = resolve_dest(&cwd, dest);
        if parents {
            // --parents always copies into the destination as a directory.
            if !dest_abs.ends_with('/') {
                dest_abs.push('/');
            }
        }
        let opts = CopyOptions {
            chown,
            chmod,
            created,
        };
        // Extracted archives always go *into* the destination.
        let force_dir = trees.iter().any(|t| t.name.is_empty() && t.is_dir);
        if force_dir && !dest_abs.ends_with('/') {
            dest_abs.push('/');
        }
        if link || self.layers.is_empty() {
            return Ok(copy_entries(&trees, &dest_abs, false, &opts, &|_| None));
        }
        let view = self.view(ctx)?;
        let trailing = dest_abs.ends_with('/');
        let mut resolved = view.image_path(&dest_abs)?;
        if trailing && !resolved.ends_with('/') {
            resolved.push('/');
        }
        if let Some(p) = view.non_dir_parent(&resolved) {
            bail!("cannot copy to {dest}: {p} exists in the image and is not a directory");
        }
        let exists_dir = view.existing_dir(&resolved).is_some();
        let existing = |p: &str| view.existing_dir(p);
        Ok(copy_entries(
            &trees, &resolved, exists_dir, &opts, &existing,
        ))
    }

    /// RUN on a cache miss: the command in the sandbox, its changes as entries.
    fn run_cmd(
        &mut self,
        ctx: &BuildCtx<'_>,
        step: &Step,
        done: &[Option<Arc<StageResult>>],
        handle: &StepHandle,
    ) -> anyhow::Result<Vec<LayerEntry>> {
        let inst = &step.instruction;
        let Kind::Run { cmd, heredocs } = &inst.kind else {
            bail!("not a RUN");
        };
        let network = match inst.flag("network").and_then(|f| f.value.as_deref()) {
            None | Some("default") => ctx.req.network,
            Some("host") => crate::sandbox::NetworkMode::Host,
            Some("none") => crate::sandbox::NetworkMode::None,
            Some(other) => bail!("unsupported --network={other} (default, none, host)"),
        };
        if let Some(sec) = inst.flag("security").and_then(|f| f.value.as_deref()) {
            if sec != "sandbox" {
                bail!("--security={sec} is not supported: RUN always runs sandboxed");
            }
        }
        let workdir = self
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let mounts = super::run::mounts(&step.mounts, &workdir);
        let (argv, scripts) = super::run::argv(&self.config, cmd, heredocs);
        if !super::run::overlay_usable()
            && !ctx
                .overlay_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            ctx.reporter.event(crate::progress::Event::Warning {
                id: None,
                message: "overlayfs is not available: RUN steps run on a copy of the \
                          stage's files and are diffed afterwards (slower)"
                    .to_string(),
            });
        }
        // With overlay the view is the layer snapshots, the RUN's root:
        // the stage's files are neither copied nor unpacked for this step.
        let view = self.view(ctx)?;
        let users = UserDb::parse(
            &view.read_text("/etc/passwd"),
            &view.read_text("/etc/group"),
        );
        let (root, lowers) = match view {
            StageView::Layers(lowers) => (None, lowers),
            StageView::Dir(dir) => (Some(dir), Vec::new()),
        };
        let mut views: Vec<SourceView> = Vec::new();
        let mut bind_roots: Vec<(usize, std::path::PathBuf, String)> = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            if let Some(src) = step
                .sources
                .get(bind_source_index(&mounts, i))
                .filter(|_| m.from.is_some())
            {
                let view = source_index(ctx, src, done)?;
                let place = sources::source_place(src, &ctx.plan);
                bind_roots.push((i, view.index.root().to_path_buf(), place));
                views.push(view);
            }
        }
        // Context bind mounts show only what .dockerignore lets through:
        // with ignore rules, a filtered tree is bound instead of the context.
        let mut context_binds: Vec<(usize, std::path::PathBuf)> = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            if m.from.is_some() || m.kind != crate::dockerfile::mount::MountType::Bind {
                continue;
            }
            let index = ctx.context()?;
            let source = m
                .source
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| ".".into());
            let path = if index.has_ignore_rules() {
                let tmp = ctx
                    .store
                    .temp_dir("bind-")
                    .context("creating a bind-mount tree")?;
                let p = sources::materialize(index, &source, tmp.path())
                    .with_context(|| format!("preparing --mount source {source}"))?;
                self.keepalive.temps.push(tmp);
                p
            } else {
                rootfs::host_path(index.root(), &source)?
            };
            context_binds.push((i, path));
        }
        let bind_source =
            |m: &crate::dockerfile::mount::Mount| -> anyhow::Result<std::path::PathBuf> {
                let i = mounts.iter().position(|x| std::ptr::eq(x, m)).unwrap_or(0);
                if let Some((_, p)) = context_binds.iter().find(|(j, _)| *j == i) {
                    return Ok(p.clone());
                }
                let (_, base, place) = bind_roots
                    .iter()
                    .find(|(j, _, _)| *j == i)
                    .context("no source for the bind mount")?;
                let source = m.source.clone().unwrap_or_default();
                let path = rootfs::host_path(base, &source)?;
                // Said in image terms: the host path is a private temp dir.
                if path.symlink_metadata().is_err() {
                    bail!("--mount source {source} not found in {place}");
                }
                Ok(path)
            };
        let inputs = super::run::RunInputs {
            store: ctx.store,
            argv,
            config: &self.config,
            arg_env: &step.arg_env,
            proxy_env: &step.proxy_env,
            root: match &root {
                Some(dir) => super::run::StageFiles::Dir(dir),
                None => super::run::StageFiles::Snapshots(lowers.clone()),
            },
            users: &users,
            network,
            mounts: mounts.clone(),
            bind_source: &bind_source,
            secrets: &ctx.req.secrets,
            ssh: &ctx.req.ssh,
            scripts,
            created: Self::created_time(ctx),
            limits: &ctx.req.limits,
            on_warning: &|message: &str| {
                let mut seen = ctx.limit_warnings.lock().unwrap_or_else(|e| e.into_inner());
                if seen.insert(message.to_string()) {
                    ctx.reporter.event(crate::progress::Event::Warning {
                        id: None,
                        message: message.to_string(),
                    });
                }
            },
            extra_hosts: &ctx.req.extra.add_hosts,
            mount_restorer: Some(ctx.remote_caches.mounts()),
        };
        let mut on_output = |stream: crate::sandbox::Stream, bytes: &[u8]| {
            let s = match stream {
                crate::sandbox::Stream::Stdout => crate::progress::Stream::Stdout,
                crate::sandbox::Stream::Stderr => crate::progress::Stream::Stderr,
            };
            handle.log(s, bytes);
        };
        let (entries, work) = super::run::run(&inputs, &mut on_output)?;
        self.keepalive.views.extend(views);
        self.keepalive.temps.push(work);
        Ok(entries)
    }

    /// WORKDIR on a cache miss: the directory and missing parents, owned by
    /// the stage's USER like BuildKit's mkdir; nothing when it exists.
    fn mkdir(&mut self, ctx: &BuildCtx<'_>, wd: &str) -> anyhow::Result<Vec<LayerEntry>> {
        let owner = match self.config.config.user.clone().filter(|u| !u.is_empty()) {
            Some(u) => {
                let db = self.user_db(ctx)?;
                let r = db.resolve_user(&u)?;
                Some((r.uid, r.gid))
            }
            None => None,
        };
        let opts = CopyOptions {
            chown: owner,
            chmod: None,
            created: Self::created_time(ctx),
        };
        let tree = SourceTree {
            name: String::new(),
            is_dir: true,
            items: Vec::new(),
        };
        if self.layers.is_empty() {
            return Ok(copy_entries(
                &[tree],
                &format!("{wd}/"),
                false,
                &opts,
                &|_| None,
            ));
        }
        let view = self.view(ctx)?;
        let resolved = view.image_path(wd)?;
        if view.existing_dir(&resolved).is_some() {
            return Ok(Vec::new());
        }
        let existing = |p: &str| view.existing_dir(p);
        Ok(copy_entries(
            &[tree],
            &format!("{resolved}/"),
            false,
            &opts,
            &existing,
        ))
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

/// Whether the step is a COPY or ADD.
pub(super) fn is_copy(step: &Step) -> bool {
    CopyParts::of(&step.instruction.kind).is_some()
}

/// The operands of a COPY or ADD.
struct CopyParts<'a> {
    sources: &'a [String],
    dest: &'a str,
    heredocs: &'a [crate::plan::Heredoc],
    is_add: bool,
}

impl<'a> CopyParts<'a> {
    fn of(kind: &'a Kind) -> Option<CopyParts<'a>> {
        let (sources, dest, heredocs, is_add) = match kind {
            Kind::Copy {
                sources,
                dest,
                heredocs,
            } => (sources, dest, heredocs, false),
            Kind::Add {
                sources,
                dest,
                heredocs,
            } => (sources, dest, heredocs, true),
            _ => return None,
        };
        Some(CopyParts {
            sources,
            dest,
            heredocs,
            is_add,
        })
    }
}

/// Passes bytes through, reporting the running total every MiB.
struct ProgressWriter<'a, W: std::io::Write> {
    inner: &'a mut W,
    handle: &'a StepHandle,
    written: u64,
    reported: u64,
}

impl<W: std::io::Write> std::io::Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.written - self.reported >= 1 << 20 {
            self.reported = self.written;
            self.handle
                .progress(self.written, None, crate::progress::Unit::Bytes);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An image's layers as the engine tracks them; a config whose diff_ids
/// do not pair up with the manifest's layers is refused.
fn image_layers(img: &crate::image::Image) -> anyhow::Result<Vec<LayerRef>> {
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// What identifies a `--from` source in cache keys.
fn source_identity(
    ctx: &BuildCtx<'_>,
    src: &Base,
    done: &[Option<Arc<StageResult>>],
) -> anyhow::Result<String> {
    Ok(match src {
        Base::Scratch => "scratch".into(),
        Base::Stage(i) => done[*i]
            .as_ref()
            .with_context(|| format!("stage {i} has not been built"))?
            .key
            .clone(),
        Base::Image(name) => ctx
            .images
            .get(name)
            .with_context(|| format!("image {name} was not loaded"))?
            .manifest_desc
            .digest()
            .to_string(),
    })
}

/// A `--from` source's files, indexed like a context; holds the
/// materialized image view (if it owns one) while the index is in use.
struct SourceView {
    index: crate::context::ContextIndex,
    /// Device nodes the view lacks (rootless), to name when copied.
    skipped_nodes: Vec<String>,
    _root: Option<Rootfs>,
}

/// A `--from` source's filesystem, indexed like a context (no ignore file).
fn source_index(
    ctx: &BuildCtx<'_>,
    src: &Base,
    done: &[Option<Arc<StageResult>>],
) -> anyhow::Result<SourceView> {
    let (layers, holder): (Vec<LayerRef>, Option<&StageResult>) = match src {
        Base::Scratch => (Vec::new(), None),
        Base::Stage(i) => {
            let s = done[*i]
                .as_ref()
                .with_context(|| format!("stage {i} has not been built"))?;
            (s.layers.clone(), Some(s))
        }
        Base::Image(name) => {
            let img = ctx
                .images
                .get(name)
                .with_context(|| format!("image {name} was not loaded"))?;
            (image_layers(img)?, None)
        }
    };
    let ignore = crate::context::IgnoreRules::default();
    let scan_root = |root: &std::path::Path| {
        crate::context::scan(root, "", &ignore, None)
            .with_context(|| format!("reading the files of {}", root.display()))
    };
    match holder {
        Some(stage) => {
            let mut guard = stage
                .rootfs
                .lock()
                .map_err(|_| anyhow::anyhow!("stage rootfs lock poisoned"))?;
            if guard.is_none() {
                *guard = Some(Rootfs::new(ctx.store)?);
            }
            let r = guard.as_mut().context("rootfs view")?;
            let root = r
                .sync(ctx.store, &layers, ctx.req.registry.max_layer_size)?
                .to_path_buf();
            Ok(SourceView {
                index: scan_root(&root)?,
                skipped_nodes: r.skipped_nodes().to_vec(),
                _root: None,
            })
        }
        None => {
            let mut r = Rootfs::new(ctx.store)?;
            let root = r
                .sync(ctx.store, &layers, ctx.req.registry.max_layer_size)?
                .to_path_buf();
            Ok(SourceView {
                index: scan_root(&root)?,
                skipped_nodes: r.skipped_nodes().to_vec(),
                _root: Some(r),
            })
        }
    }
}

/// Which of a step's `sources` belongs to mount `i`: the plan lists one
/// source per `--mount` that has `from=`, in order.
fn bind_source_index(mounts: &[crate::dockerfile::mount::Mount], i: usize) -> usize {
    mounts[..i].iter().filter(|m| m.from.is_some()).count()
}

/// The local archive ADD should extract, if `tree` is one.
fn archive_of(
    is_add: bool,
    inst: &crate::plan::Instruction,
    tree: &SourceTree,
) -> Option<std::path::PathBuf> {
    let unpack = inst
        .flag("unpack")
        .map(|f| f.value.as_deref() != Some("false"))
        .unwrap_or(true);
    if !is_add || !unpack || tree.is_dir || tree.items.len() != 1 {
        return None;
    }
    match &tree.items[0].kind {
        SourceKind::File(crate::layer::FileSource::Path(p)) if sources::is_archive(p) => {
            Some(p.clone())
        }
        _ => None,
    }
}

/// An archive extracted into a temp dir, as a tree copied into the destination.
fn extract_tree(
    archive: &std::path::Path,
    tmp: &LockedTempDir,
    handle: &StepHandle,
) -> anyhow::Result<SourceTree> {
    // Inside `tmp`, which the caller keeps until the layer is written.
    let dir = tempfile::tempdir_in(tmp.path())?.keep();
    // What could not be created (device nodes, rootless) is missing from
    // the layer: say so rather than drop it silently.
    for note in sources::extract_archive(archive, &dir)? {
        let name = archive.file_name().unwrap_or_default().to_string_lossy();
        handle.warn(format!("ADD {name}: {note}; the layer lacks it"));
    }
    let ignore = crate::context::IgnoreRules::default();
    let index = crate::context::scan(&dir, "", &ignore, None)
        .with_context(|| format!("reading extracted {}", archive.display()))?;
    let mut trees = sources::select_trees(&index, ".", &[], true, false)?;
    let mut tree = trees.pop().context("empty archive selection")?;
    tree.name = String::new();
    tree.is_dir = true;
    Ok(tree)
}

/// A downloaded file (ADD URL): mode 0600 as docker gives it.
fn url_tree(file: std::path::PathBuf) -> SourceTree {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    SourceTree {
        name,
        is_dir: false,
        items: vec![SourceItem {
            rel: String::new(),
            kind: SourceKind::File(crate::layer::FileSource::Path(file)),
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: Timespec::default(),
            xattrs: Vec::new(),
            link_id: None,
        }],
    }
}

/// The store's layer chunk cache: records in its private dir, pointing into
/// its blobs.
fn chunk_cache(
    store: &crate::store::Store,
    tmp: &std::path::Path,
) -> anyhow::Result<crate::layer::ChunkCache> {
    let blobs = store.clone();
    Ok(crate::layer::ChunkCache::new(
        store.chunk_cache_dir()?,
        tmp.to_path_buf(),
        std::sync::Arc::new(move |digest: &str| blobs.blob_path(digest).ok()),
    ))
}
