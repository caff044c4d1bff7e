//! RUN on a cache miss: the step's mounts lowered to host paths (other
//! stages and images materialized, context binds filtered by
//! `.dockerignore`), then the command in the sandbox over the stage's files;
//! its changes are the layer's entries.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::layer::LayerEntry;
use crate::plan::{MountType, Network, RunStep};
use crate::progress::StepHandle;

use super::super::resolver::{SourceView, Sources};
use super::super::rootfs;
use super::super::sources;
use super::super::stage::StageState;
use super::super::stageview::StageView;
use super::super::users::UserDb;

/// Where each bind mount's files are on the host.
#[derive(Default)]
struct BindRoots {
    /// Mount index → a `from=` source's root and how to name it.
    sources: Vec<(usize, PathBuf, String)>,
    /// Mount index → a context path (filtered when there are ignore rules).
    context: Vec<(usize, PathBuf)>,
}

impl StageState {
    /// RUN on a cache miss: the command in the sandbox, its changes as entries.
    pub(in crate::engine) fn run_cmd(
        &mut self,
        src: &Sources<'_, '_>,
        r: &RunStep,
        handle: &StepHandle,
    ) -> anyhow::Result<Vec<LayerEntry>> {
        let ctx = src.ctx;
        // The setup process was started when the step missed (or by the
        // step before): its exec and cgroup move overlap what follows (the
        // stage's view, whose snapshot of the last layer may need
        // unpacking, the mounts, the RUN dirs). Killed on an error before
        // it runs.
        self.prestart_spare(ctx);
        let spare = self.spare.take();
        let network = match r.network {
            None | Some(Network::Default) => ctx.req.network,
            Some(Network::Host) => crate::sandbox::NetworkMode::Host,
            Some(Network::None) => crate::sandbox::NetworkMode::None,
        };
        let parsed: Vec<_> = r.mounts.iter().map(|m| m.mount.clone()).collect();
        let mounts = super::super::run::mounts(&parsed, &self.cwd());
        let (argv, scripts) = super::super::run::argv(&self.config, &r.cmd, &r.heredocs);
        if !super::super::run::overlay_usable()
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
            &view.read_text("/etc/passwd")?,
            &view.read_text("/etc/group")?,
        );
        let (root, lowers) = match view {
            StageView::Layers(lowers) => (None, lowers),
            StageView::Dir(dir) => (Some(dir), Vec::new()),
        };
        let mut views: Vec<SourceView> = Vec::new();
        let binds = self.bind_roots(src, r, &mounts, &mut views)?;
        // `i`: the mount's place in `mounts` (the sandbox gets a clone, so
        // its mounts are not these: found by address, every bind got the
        // first mount's source).
        let bind_source = |i: usize, m: &crate::plan::Mount| -> anyhow::Result<PathBuf> {
            if let Some((_, p)) = binds.context.iter().find(|(j, _)| *j == i) {
                return Ok(p.clone());
            }
            let (_, base, place) = binds
                .sources
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
        let inputs = super::super::run::RunInputs {
            store: ctx.store,
            argv,
            config: &self.config,
            arg_env: &r.arg_env,
            proxy_env: &r.proxy_env,
            root: match &root {
                Some(dir) => super::super::run::StageFiles::Dir(dir),
                None => super::super::run::StageFiles::Snapshots(lowers.clone()),
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
        let area = match &mut self.keepalive.run_area {
            Some(area) => area,
            none => none.insert(super::super::run::RunArea::new(ctx.store)?),
        };
        let (entries, step) = super::super::run::run(&inputs, spare, &mut on_output, area)?;
        // A later RUN of the stage gets its setup process (exec'd, in its
        // cgroup) while this step's layer is written. After a miss the
        // next RUN misses too (its parent key is new), so it is rarely
        // wasted; when it is, it is killed with the stage.
        if self.runs_later() {
            self.prestart_spare(ctx);
        }
        self.keepalive.views.extend(views);
        self.keepalive.upper_adoptable = root.is_none();
        self.keepalive.run_step = Some(step);
        Ok(entries)
    }

    /// Once the RUN's layer is written: its overlay upper dir becomes the
    /// layer's snapshot when it is exactly the tree the layer unpacks to
    /// (`snapshot::adopt_run_upper`), so the next RUN does not unpack the
    /// layer again. A refusal only costs that unpack: it is logged, not an
    /// error.
    pub(in crate::engine) fn adopt_run_upper(
        &mut self,
        ctx: &crate::engine::build::BuildCtx<'_>,
        entries: &[LayerEntry],
        layer: &crate::oci::LayerRef,
        handle: &StepHandle,
    ) {
        let keep = &mut self.keepalive;
        let adoptable = std::mem::take(&mut keep.upper_adoptable);
        let (Some(step), Some(area), true) = (&keep.run_step, &keep.run_area, adoptable) else {
            return;
        };
        use super::super::snapshot::{adopt_run_upper, Adoption};
        let holder = area.holder();
        if let Adoption::Refused(why) =
            adopt_run_upper(ctx.store, holder, &step.upper, entries, layer)
        {
            let line = format!("snapshot: the layer is unpacked again for the next RUN: {why}\n");
            handle.log(crate::progress::Stream::Stderr, line.as_bytes());
        }
    }

    /// The host roots of the step's bind mounts: `from=` stages and images
    /// indexed (their views kept in `views`), context paths filtered
    /// through `.dockerignore` when it has rules.
    fn bind_roots(
        &mut self,
        src: &Sources<'_, '_>,
        r: &RunStep,
        mounts: &[crate::plan::Mount],
        views: &mut Vec<SourceView>,
    ) -> anyhow::Result<BindRoots> {
        let ctx = src.ctx;
        let mut out = BindRoots::default();
        for (i, (m, planned)) in mounts.iter().zip(&r.mounts).enumerate() {
            if let Some(from) = &planned.from {
                let view = src.index(from)?;
                let place = sources::source_place(from, &ctx.plan);
                out.sources
                    .push((i, view.index.root().to_path_buf(), place));
                views.push(view);
                continue;
            }
            if m.from.is_some() || m.kind != MountType::Bind {
                continue;
            }
            let index = ctx.context()?;
            let source = m
                .source
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| ".".into());
            // Context bind mounts show only what .dockerignore lets through:
            // with ignore rules, a filtered tree is bound instead of the context.
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
            out.context.push((i, path));
        }
        Ok(out)
    }
}
