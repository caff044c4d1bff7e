//! One build: plan the Dockerfile, run the stages the target needs (in
//! waves: stages whose dependencies are done run in parallel), and commit
//! the target stage's image to the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::context::{self, ContextIndex};
use crate::image::{self, HistoryEntry, ImageConfig, ImageFormat};
use crate::oci::{Compression, LayerRef, Reference};
use crate::plan::{self, Base, Plan, PlanOptions};
use crate::progress::{Event, Reporter, StepHandle};
use crate::registry::local;
use crate::store::Store;

use super::options::OutputSpec;
use super::rootfs::Rootfs;
use super::stage::StageState;

/// Everything a build is asked to do.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub context: PathBuf,
    /// Default: `CONTEXT/Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub tags: Vec<String>,
    pub no_cache: bool,
    pub outputs: Vec<OutputSpec>,
    pub iidfile: Option<PathBuf>,
    pub compression: Compression,
    pub format: ImageFormat,
    /// Seconds since the epoch: clamps file times and fixes `created`.
    pub source_date_epoch: Option<i64>,
    /// Default network of RUN steps (`--network`).
    pub network: crate::sandbox::NetworkMode,
    /// `--secret` values by id (never logged, never in a layer or cache key).
    pub secrets: BTreeMap<String, super::run::SecretSource>,
    /// `--ssh default`: the agent socket to forward.
    pub ssh: BTreeMap<String, PathBuf>,
    /// When FROM images are fetched from their registry.
    pub pull: PullPolicy,
    /// Push every tag to its registry after the build.
    pub push: bool,
    /// Registry settings (insecure registries, mirrors, credentials).
    pub registry: crate::registry::Settings,
    /// Resource limits of every RUN step (`--memory`, `--pids-limit`, …).
    pub limits: crate::sandbox::Limits,
    /// Labels and the other CI-facing options.
    pub extra: super::options::ExtraOptions,
}

/// `--pull`: when a FROM image is fetched from its registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Only when the store lacks it (the default).
    #[default]
    Missing,
    /// Every build (a digest reference already stored is never fetched again).
    Always,
    /// Never: the store must have it.
    Never,
}

/// What a successful build produced.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// The manifest digest (what a registry calls the image).
    pub manifest_digest: String,
    /// The config digest (docker's image ID).
    pub image_id: String,
    pub tags: Vec<String>,
    /// The manifest's descriptor (media type, digest, size).
    pub manifest: oci_spec::image::Descriptor,
    /// `--push`: each pushed reference with the digest the registry holds.
    pub pushed: Vec<(String, String)>,
    /// Every step that could write a layer, in the order they finished.
    pub steps: Vec<StepRecord>,
}

/// What one layer step did, for `--metadata-file`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepRecord {
    pub name: String,
    pub cached: bool,
    pub seconds: f64,
    /// The layer's digest; `None` when the step changed no files.
    pub layer: Option<String>,
    /// The `--cache-from` cache a cached step came from (`None`: the
    /// local store, or executed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_from: Option<String>,
}

/// The finished state of one stage, shared with the stages that use it.
pub(crate) struct StageResult {
    pub config: ImageConfig,
    pub layers: Vec<LayerRef>,
    pub key: String,
    /// Materialized on first `COPY --from` of this stage.
    pub rootfs: Mutex<Option<Rootfs>>,
    /// Built by the key-only pass with misses: only its key may be used.
    pub incomplete: bool,
}

/// Read-only state every stage of a build shares.
pub(crate) struct BuildCtx<'a> {
    pub store: &'a Store,
    pub req: &'a BuildRequest,
    pub reporter: Arc<dyn Reporter>,
    pub plan: Plan,
    /// The Dockerfile's name as the user gave it, for error locations.
    pub dockerfile_name: String,
    dockerfile_rel: String,
    context_index: OnceLock<Result<Arc<ContextIndex>, super::error::ContextFailure>>,
    /// Shared by the attempts of one build (see [`build`]): ids never repeat.
    next_step: &'a AtomicU64,
    /// Set once the no-overlay fallback has been announced.
    pub overlay_warned: std::sync::atomic::AtomicBool,
    /// Limit warnings already given (each once per build).
    pub limit_warnings: Mutex<std::collections::BTreeSet<String>>,
    /// ADD URLs fetched in this build (url → file, digest), in `download_dir`:
    /// the cache key and the copy share one download.
    downloads: Mutex<BTreeMap<String, (PathBuf, String)>>,
    download_dir: crate::store::LockedTempDir,
    /// External images (bases and `--from` sources) by normalized reference.
    pub images: BTreeMap<String, image::Image>,
    /// Which Dockerfile this is (a digest of its absolute path): cache-miss
    /// reasons compare only with earlier builds of the same one.
    pub cache_scope: String,
    /// Layer steps as they finish (for the build's metadata).
    pub records: Mutex<Vec<StepRecord>>,
    /// `--cache-from`: consulted after the local store.
    pub remote_caches: &'a crate::cache::RemoteCaches,
    /// Every layer step's cache record, for `--cache-to`.
    pub used_records: crate::cache::UsedRecords,
    /// The key-only pass is running, and the hits it found.
    pub probe: super::cache_io::Probe,
    /// Where each layer step's layer came from, for the build record.
    pub origins: super::buildrecord::Origins,
    /// `--push`: the image's layers uploaded as they are written.
    pub early_push: super::early_push::EarlyPush,
}

impl BuildCtx<'_> {
    pub fn step_id(&self) -> u64 {
        self.next_step.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `--no-cache`, or `--no-cache-filter` naming the stage of `step_id`
    /// (`SCOPE/STAGE/N`; unnamed stages are `stage-N`, so an index also
    /// matches).
    pub fn no_cache_for(&self, step_id: &str) -> bool {
        let mut parts = step_id.rsplit('/');
        let stage = parts.nth(1).unwrap_or(step_id);
        self.req.no_cache
            || self.req.extra.no_cache_filter.iter().any(|f| {
                f.eq_ignore_ascii_case(stage) || stage.strip_prefix("stage-") == Some(f.as_str())
            })
    }

    /// Note a finished layer step for [`BuildOutcome::steps`].
    pub fn record_step(
        &self,
        name: &str,
        cached: bool,
        started: std::time::Instant,
        layer: Option<&LayerRef>,
    ) {
        if let Ok(mut r) = self.records.lock() {
            r.push(StepRecord {
                name: name.to_string(),
                cached,
                seconds: started.elapsed().as_secs_f64(),
                layer: layer.map(|l| l.digest.clone()),
                cache_from: None,
            });
        }
    }

    /// `url`, downloaded once per build; `checksum` (when given) must match.
    pub fn download(&self, url: &str, checksum: Option<&str>) -> anyhow::Result<(PathBuf, String)> {
        let mut downloads = self
            .downloads
            .lock()
            .map_err(|_| anyhow::anyhow!("download table lock poisoned"))?;
        if let Some((file, digest)) = downloads.get(url) {
            if let Some(want) = checksum.filter(|w| *w != digest) {
                bail!("checksum mismatch for {url}: expected {want}, got {digest}");
            }
            return Ok((file.clone(), digest.clone()));
        }
        let dir = self.download_dir.path().join(downloads.len().to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (name, digest) = super::sources::download(url, checksum, &dir)?;
        let entry = (dir.join(name), digest);
        downloads.insert(url.to_string(), entry.clone());
        Ok(entry)
    }

    /// The build context, scanned once per build on first use.
    pub fn context(&self) -> anyhow::Result<&ContextIndex> {
        self.context_shared_ref().map(|c| &**c)
    }

    /// The scan, shared (a layer writer's digest lookup keeps it).
    pub(crate) fn context_shared(&self) -> anyhow::Result<Arc<ContextIndex>> {
        self.context_shared_ref().cloned()
    }

    fn context_shared_ref(&self) -> anyhow::Result<&Arc<ContextIndex>> {
        let res = self.context_index.get_or_init(|| {
            let handle = StepHandle::start(
                self.reporter.clone(),
                self.step_id(),
                "[internal] load build context",
            );
            let progress = |done: u64, total: u64| {
                handle.progress(done, Some(total), crate::progress::Unit::Bytes)
            };
            let res = scan_context(
                self.store,
                &self.req.context,
                &self.dockerfile_rel,
                &progress,
            )
            .map(Arc::new)
            .map_err(|e| super::error::ContextFailure(Arc::new(e)));
            match &res {
                Ok(_) => handle.done(),
                Err(e) => handle.failed(format!("{:#}", e.0)),
            }
            res
        });
        res.as_ref().map_err(|e| anyhow::Error::new(e.clone()))
    }
}

fn scan_context(
    store: &Store,
    root: &Path,
    dockerfile_rel: &str,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> anyhow::Result<ContextIndex> {
    let dockerfile = root.join(dockerfile_rel);
    let ignore = context::load_ignore(root, Some(&dockerfile))
        .with_context(|| format!("reading .dockerignore of {}", root.display()))?;
    let abs = std::fs::canonicalize(root)
        .with_context(|| format!("resolving build context {}", root.display()))?;
    let cache = store.statcache_file(&abs);
    context::scan_with_progress(root, dockerfile_rel, &ignore, Some(&cache), Some(progress))
        .with_context(|| format!("scanning build context {}", root.display()))
}

/// Run a build to completion.
pub fn build(
    store: &Store,
    req: &BuildRequest,
    reporter: Arc<dyn Reporter>,
) -> anyhow::Result<BuildOutcome> {
    let next_step = AtomicU64::new(0);
    let caches = super::cache_io::load_caches(req, &reporter, &next_step);
    // A remote layer that fails its check refuses its records: the build
    // runs again without them (what it executed since hits the local
    // store), at most once per record.
    let mut attempts = caches.record_count() + 1;
    loop {
        match build_once(store, req, reporter.clone(), &caches, &next_step) {
            Err(e) if attempts > 0 && crate::cache::RemoteCaches::is_refusal(&e) => {
                attempts -= 1;
                reporter.event(Event::Warning {
                    id: None,
                    message: format!("{e:#}"),
                });
            }
            other => return other,
        }
    }
}

fn build_once(
    store: &Store,
    req: &BuildRequest,
    reporter: Arc<dyn Reporter>,
    caches: &crate::cache::RemoteCaches,
    next_step: &AtomicU64,
) -> anyhow::Result<BuildOutcome> {
    let (dockerfile, dockerfile_name) = dockerfile_path(req);
    let text = std::fs::read_to_string(&dockerfile).map_err(|e| {
        let hint = match (e.kind(), &req.dockerfile) {
            (std::io::ErrorKind::NotFound, None) => {
                "\nhint: the Dockerfile is CONTEXT/Dockerfile unless -f names another"
            }
            (std::io::ErrorKind::NotFound, Some(_)) => {
                "\nhint: a relative -f path starts at the current directory, not the context"
            }
            _ => "",
        };
        // The name the user knows: a fetched context's path is a temp dir.
        let what = format!("reading Dockerfile {dockerfile_name}{hint}");
        super::error::ContextFailure::wrap(anyhow::Error::new(e).context(what))
    })?;
    let dockerfile_rel = dockerfile
        .strip_prefix(&req.context)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "Dockerfile".to_string());

    let mut opts = PlanOptions {
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        target_platform: req.extra.platform.clone(),
        replaced_stages: req.extra.context_names.clone(),
        ..PlanOptions::default()
    };
    let first = plan_or_render(&text, &opts, &dockerfile_name)?;
    let platforms: BTreeMap<String, String> = first
        .stages
        .iter()
        // FROM --platform wins; else --platform; else whatever the store has
        // (or the registry picks for the host).
        .filter_map(
            |s| match (&s.base, s.platform.as_ref().or(req.extra.platform.as_ref())) {
                (Base::Image(name), Some(p)) => Some((name.clone(), p.to_string())),
                _ => None,
            },
        )
        .collect();
    // Pull steps take the first ids, so every step of the build has a real one.
    let images =
        super::bases::load_images(store, req, &reporter, next_step, &first.images, &platforms)?;
    for (name, img) in &images {
        opts.base_configs
            .insert(name.clone(), base_config(&img.config));
    }
    let plan = if images.is_empty() {
        first
    } else {
        plan_or_render(&text, &opts, &dockerfile_name)?
    };
    for f in &plan.findings {
        reporter.event(Event::Warning {
            id: None,
            message: format!("{}: {} (line {})", f.rule, f.message, f.span.start_line),
        });
    }

    let cache_scope = cache_scope(&dockerfile);
    let early_push = super::early_push::EarlyPush::new(req, &plan, &cache_scope);
    let ctx = BuildCtx {
        store,
        req,
        reporter: reporter.clone(),
        plan,
        dockerfile_name,
        dockerfile_rel,
        context_index: OnceLock::new(),
        next_step,
        overlay_warned: std::sync::atomic::AtomicBool::new(false),
        limit_warnings: Mutex::new(Default::default()),
        downloads: Mutex::new(BTreeMap::new()),
        download_dir: store
            .temp_dir("downloads-")
            .context("creating the download dir in the store")?,
        images,
        cache_scope,
        records: Mutex::new(Vec::new()),
        remote_caches: caches,
        used_records: Default::default(),
        probe: Default::default(),
        origins: Default::default(),
        early_push,
    };
    // The overlay probe, started early (`run::probe_early`).
    let target = std::thread::scope(|s| {
        super::run::probe_early(s, &ctx.plan);
        match super::cache_io::probe(&ctx, run_stages) {
            Some(t) => Ok(t),
            None => run_stages(&ctx),
        }
    })?;
    // Interrupted during the last step: nothing is tagged or exported.
    super::cancel::check()?;
    caches
        .save_locations(store)
        .context("recording where the remote cache's layers are")?;
    let outcome = commit(&ctx, &target)?;
    super::cache_io::export_caches(&ctx)?;
    Ok(outcome)
}

/// A short digest of the Dockerfile's absolute path.
fn cache_scope(dockerfile: &std::path::Path) -> String {
    let abs = std::fs::canonicalize(dockerfile).unwrap_or_else(|_| dockerfile.to_path_buf());
    let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..8])
}

fn dockerfile_path(req: &BuildRequest) -> (PathBuf, String) {
    if let (Some(f), Some(name)) = (&req.dockerfile, &req.extra.dockerfile_name) {
        return (f.clone(), name.clone());
    }
    match &req.dockerfile {
        Some(f) => (f.clone(), f.display().to_string()),
        None => {
            let p = req.context.join("Dockerfile");
            let shown = p.display().to_string();
            (p, shown)
        }
    }
}

/// Plan; problems come back typed with the text they point into (the CLI
/// renders them with carets).
fn plan_or_render(text: &str, opts: &PlanOptions, file: &str) -> anyhow::Result<Plan> {
    plan::plan_text(text, opts).map_err(|e| {
        anyhow::Error::new(super::error::DockerfileErrors {
            file: file.to_string(),
            lines: text.lines().map(str::to_string).collect(),
            problems: e.problems,
        })
    })
}

fn base_config(cfg: &ImageConfig) -> plan::BaseConfig {
    plan::BaseConfig {
        env: super::config::env_map(cfg).into_iter().collect(),
        shell: cfg.config.shell.clone().unwrap_or_default(),
        workdir: cfg.config.working_dir.clone().unwrap_or_default(),
        onbuild: cfg.config.on_build.clone().unwrap_or_default(),
    }
}

/// The stages each stage waits for: its base and its `--from` sources.
fn stage_deps(plan: &Plan) -> Vec<Vec<usize>> {
    plan.stages
        .iter()
        .map(|s| {
            let mut deps: Vec<usize> = s
                .steps
                .iter()
                .flat_map(|st| st.sources())
                .chain(std::iter::once(&s.base))
                .filter_map(|b| match b {
                    Base::Stage(i) => Some(*i),
                    _ => None,
                })
                .collect();
            deps.sort_unstable();
            deps.dedup();
            deps
        })
        .collect()
}

/// Run every planned stage, independent ones in parallel; returns the target's result.
fn run_stages(ctx: &BuildCtx<'_>) -> anyhow::Result<Arc<StageResult>> {
    let deps = stage_deps(&ctx.plan);
    let n = ctx.plan.stages.len();
    let mut done: Vec<Option<Arc<StageResult>>> = vec![None; n];
    while done.iter().any(Option::is_none) {
        let ready: Vec<usize> = (0..n)
            .filter(|&i| done[i].is_none() && deps[i].iter().all(|d| done[*d].is_some()))
            .collect();
        if ready.is_empty() {
            bail!("the stages depend on each other in a cycle");
        }
        let results: Vec<(usize, anyhow::Result<StageResult>)> = std::thread::scope(|s| {
            let handles: Vec<_> = ready
                .iter()
                .map(|&i| {
                    let done = &done;
                    (i, s.spawn(move || run_stage(ctx, i, done)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    let r = h
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("stage {i} panicked")));
                    (i, r)
                })
                .collect()
        });
        for (i, r) in results {
            done[i] = Some(Arc::new(r?));
        }
    }
    let target = ctx.plan.target;
    done[target]
        .take()
        .context("the target stage produced no result")
}

fn run_stage(
    ctx: &BuildCtx<'_>,
    index: usize,
    done: &[Option<Arc<StageResult>>],
) -> anyhow::Result<StageResult> {
    let stage = &ctx.plan.stages[index];
    let mut st = StageState::start(ctx, stage, done)?;
    for (i, step) in stage.steps.iter().enumerate() {
        let step_id = format!("{}/{}/{}", ctx.cache_scope, stage_label(stage), i);
        super::cancel::check()?;
        st.run(ctx, step, &step_id, done).map_err(|e| {
            // Kept as it is: the build runs again without the record.
            if crate::cache::RemoteCaches::is_refusal(&e) {
                return e;
            }
            let text = format!("{} {}", step.name(), step.original.trim());
            // A step that failed because the build was interrupted (its
            // process got the Ctrl-C) says so, not how the process ended.
            let e = match super::cancel::check() {
                Err(i) => anyhow::Error::new(i),
                Ok(()) => e,
            };
            anyhow::Error::new(super::error::StepError::new(
                &ctx.dockerfile_name,
                step.span.start_line,
                text,
                e,
            ))
        })?;
    }
    Ok(st.finish(ctx))
}

pub(super) fn stage_label(stage: &plan::PlannedStage) -> String {
    stage
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{}", stage.index))
}

/// Write the target's config and manifest, tag, export, write the iidfile.
fn commit(ctx: &BuildCtx<'_>, target: &StageResult) -> anyhow::Result<BuildOutcome> {
    let store = ctx.store;
    let mut config = target.config.clone();
    config.created = Some(match ctx.req.source_date_epoch {
        Some(e) => image::time::format_rfc3339(e),
        None => config
            .history
            .iter()
            .rev()
            .find_map(|h| h.created.clone())
            .unwrap_or_else(|| image::time::format_rfc3339(image::time::now_epoch())),
    });
    for (k, v) in &ctx.req.extra.labels {
        config.config.labels.insert(k.clone(), v.clone());
    }
    super::cache_io::prepare_commit(ctx, target, &mut config)?;
    let layers: Vec<oci_spec::image::Descriptor> = target
        .layers
        .iter()
        .map(|l| {
            let blob = crate::store::BlobInfo {
                digest: l.digest.clone(),
                size: l.size,
            };
            image::descriptor(&l.media_type, &blob)
        })
        .collect::<anyhow::Result<_>>()?;
    let manifest = image::commit_image(store, ctx.req.format, &config, &layers)
        .context("writing the image config and manifest")?;
    let manifest = image::annotate_manifest(store, &manifest, &ctx.req.extra.annotations)?;
    // Before the tags name it: `history` of a tag finds its record.
    super::buildrecord::write(ctx, target, &config, manifest.digest().as_ref());
    let image_id = format!("sha256:{}", hex::encode(Sha256::digest(config.to_json()?)));
    let mut tags = Vec::new();
    for tag in &ctx.req.tags {
        let name =
            crate::store::normalize_tag(tag).with_context(|| format!("invalid tag {tag:?}"))?;
        // `Store::tag` names the tag in its errors already.
        store.tag(&name, &manifest)?;
        tags.push(name);
    }
    for out in &ctx.req.outputs {
        super::outputs::export(ctx, out, &manifest, &tags, &target.layers)?;
    }
    if let Some(path) = &ctx.req.iidfile {
        std::fs::write(path, &image_id)
            .with_context(|| format!("writing --iidfile {}", path.display()))?;
    }
    let pushed = if ctx.req.push {
        push_tags(ctx, &tags)?
    } else {
        Vec::new()
    };
    let manifest_digest = manifest.digest().to_string();
    ctx.reporter.event(Event::BuildDone {
        digest: manifest_digest.clone(),
        tags: tags.clone(),
    });
    let steps = ctx
        .records
        .lock()
        .map(|r| r.clone())
        .map_err(|_| anyhow::anyhow!("step records lock poisoned"))?;
    Ok(BuildOutcome {
        manifest_digest,
        image_id,
        tags,
        manifest,
        pushed,
        steps,
    })
}

/// `--push`: every tag to its registry; blobs of base images from the same
/// registry are mounted instead of uploaded.
fn push_tags(ctx: &BuildCtx<'_>, tags: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut pushed = Vec::new();
    anyhow::ensure!(
        !tags.is_empty(),
        "--push needs at least one -t REGISTRY/NAME:TAG"
    );
    // The layers already on their way are there before the HEADs ask.
    let mut early = ctx.early_push.wait();
    for tag in tags {
        let dest =
            Reference::parse(tag).with_context(|| format!("invalid push destination {tag}"))?;
        let mount_from: Vec<String> = ctx
            .images
            .keys()
            .filter_map(|n| Reference::parse(n).ok())
            .filter(|r| r.registry == dest.registry)
            .map(|r| r.repository)
            .collect();
        let id = ctx.step_id();
        let handle = StepHandle::start(ctx.reporter.clone(), id, format!("pushing {dest}"));
        if early > 0 {
            let text = match ctx.early_push.streamed_count() {
                0 => format!("{early} layer(s) uploaded while the build ran\n"),
                n => format!(
                    "{early} layer(s) uploaded while the build ran ({n} streamed as written)\n"
                ),
            };
            handle.log(crate::progress::Stream::Stdout, text.as_bytes());
            early = 0;
        }
        let settings = super::bases::logging_retries(&ctx.req.registry, &handle);
        match local::push_from_store(
            ctx.store,
            tag,
            &dest,
            &settings,
            ctx.req.format,
            mount_from,
            None,
        ) {
            Ok(report) => {
                handle.log(
                    crate::progress::Stream::Stdout,
                    format!("pushed {dest}@{}\n", report.manifest_digest).as_bytes(),
                );
                handle.done();
                pushed.push((dest.to_string(), report.manifest_digest.to_string()));
            }
            Err(e) => {
                handle.failed(format!("{e:#}"));
                return Err(e.context(format!("pushing {dest}")));
            }
        }
    }
    Ok(pushed)
}

/// History entry for a step.
pub(crate) fn history(created_by: &str, created: Option<String>) -> HistoryEntry {
    HistoryEntry {
        created,
        created_by: Some(created_by.to_string()),
        comment: Some("buildkit.dockerfile.v0".to_string()),
        ..HistoryEntry::default()
    }
}
