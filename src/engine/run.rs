//! RUN: the sandbox over an overlay of the stage's filesystem, then the
//! overlay's upper dir as the step's layer.
//!
//! With overlayfs the lower dirs are the stage's layer snapshots (see
//! `snapshot`), topmost first, and each RUN gets a fresh upper dir: nothing
//! is copied or unpacked per build. Without overlayfs the step runs on a
//! copy of the stage's materialized files (see `rootfs`) and is diffed.
//! `RUN --mount` types are lowered here into what the sandbox knows (binds
//! of prepared host paths, tmpfs and files): cache dirs live in the store,
//! secrets and heredoc scripts are handed over as bytes that the sandbox
//! writes to a tmpfs of its own mount namespace (never to a host path), the
//! SSH agent socket is bound from `SSH_AUTH_SOCK`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::image::ImageConfig;
use crate::layer::{changeset_from_overlay_upper, diff_trees, LayerEntry};
use crate::plan::{CacheSharing, Mount, MountType};
use crate::sandbox::{
    self, ExtraFiles, FileBytes, MountSpec, NetworkMode, RootfsSpec, RunSpec, UserSpec,
};
use crate::store::Store;

pub use super::runarea::{RunArea, StepDirs};

use super::users::UserDb;

/// The hostname RUN steps see, as in BuildKit.
pub const HOSTNAME: &str = "buildkitsandbox";

/// Where a secret's value comes from (`--secret id=ID,src=FILE|env=VAR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// Parse `--secret id=ID[,src=FILE|,env=VAR]` (default: env var named ID).
pub fn parse_secret(spec: &str) -> anyhow::Result<(String, SecretSource)> {
    let mut id = None;
    let mut src = None;
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .with_context(|| format!("invalid --secret {spec:?}: {field:?} is not KEY=VALUE"))?;
        match k {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(SecretSource::File(PathBuf::from(v))),
            "env" => src = Some(SecretSource::Env(v.to_string())),
            "type" if v == "file" || v == "env" => {}
            other => bail!("invalid --secret {spec:?}: unknown key {other:?}"),
        }
    }
    let id = id.with_context(|| format!("invalid --secret {spec:?}: id=ID is required"))?;
    let src = src.unwrap_or_else(|| SecretSource::Env(id.clone()));
    // As buildx does: a secret file that is not there fails the build up
    // front, whether or not a step mounts it, so a typo in a path is never
    // silently a build without the secret.
    if let SecretSource::File(p) = &src {
        if let Err(e) = std::fs::metadata(p) {
            bail!(
                "--secret id={id}: failed to stat the secret file {}: {e}\n\
                 hint: give src= an existing file, or env=VAR to read it from the environment",
                p.display()
            );
        }
    }
    Ok((id, src))
}

/// A stage's files as a RUN sees them.
pub enum StageFiles<'a> {
    /// Layer snapshots, topmost first: the overlay's lower dirs.
    Snapshots(Vec<PathBuf>),
    /// One materialized dir: an overlay lower, or the source of the
    /// no-overlay fallback's copy.
    Dir(&'a Path),
}

impl StageFiles<'_> {
    fn lowers(&self) -> Vec<PathBuf> {
        match self {
            StageFiles::Snapshots(dirs) => dirs.clone(),
            StageFiles::Dir(dir) => vec![dir.to_path_buf()],
        }
    }
}

/// Inputs of one RUN that are not in the instruction.
pub struct RunInputs<'a> {
    pub store: &'a Store,
    pub argv: Vec<String>,
    pub config: &'a ImageConfig,
    /// ARG values in scope (not in the image, but in the process env).
    pub arg_env: &'a [(String, String)],
    pub proxy_env: &'a BTreeMap<String, String>,
    /// The stage's filesystem.
    pub root: StageFiles<'a>,
    pub users: &'a UserDb,
    pub network: NetworkMode,
    pub mounts: Vec<Mount>,
    /// Host paths for `--mount` sources (context root, other stages'
    /// roots), by the mount's place in `mounts`.
    pub bind_source: &'a dyn Fn(usize, &Mount) -> anyhow::Result<PathBuf>,
    pub secrets: &'a BTreeMap<String, SecretSource>,
    pub ssh: &'a BTreeMap<String, PathBuf>,
    /// Heredoc scripts (`RUN <<EOF` with a `#!` line) to put at `/dev/pipes/NAME`.
    pub scripts: Vec<(String, String)>,
    /// mtime of files the step's layer gets from outside the upper dir.
    pub created: crate::layer::Timespec,
    /// cgroup limits, ulimits, `/dev/shm` size.
    pub limits: &'a sandbox::Limits,
    /// Reports a limit that could not be applied (the build goes on).
    pub on_warning: &'a dyn Fn(&str),
    /// `--add-host`: (name, address) lines added to `/etc/hosts`.
    pub extra_hosts: &'a [(String, String)],
    /// Fills a cache mount this store has never had from an imported cache.
    pub mount_restorer: Option<&'a dyn crate::cache::mounts::MountRestorer>,
}

/// The argv of a RUN and the heredoc scripts it needs, as BuildKit's
/// `dispatchRun` builds them: one heredoc that is the whole command runs its
/// body through the shell, or, with a `#!` line, as a script mounted at
/// `/dev/pipes/NAME`; other heredocs are appended to the shell command line.
pub fn argv(
    config: &ImageConfig,
    cmd: &crate::plan::Form,
    heredocs: &[crate::plan::Heredoc],
) -> (Vec<String>, Vec<(String, String)>) {
    use crate::plan::Form;
    let shell = |line: String| super::config::with_shell(config, &Form::Shell(line));
    let Form::Shell(line) = cmd else {
        return (super::config::with_shell(config, cmd), Vec::new());
    };
    let Some(first) = heredocs.first() else {
        return (shell(line.clone()), Vec::new());
    };
    let word = line.trim().trim_start_matches(|c: char| c.is_ascii_digit());
    if heredocs.len() == 1 && word.starts_with("<<") && !word.contains(char::is_whitespace) {
        let body = first.chomped();
        if body.starts_with("#!") {
            let path = format!("/dev/pipes/{}", first.name);
            return (shell(path), vec![(first.name.clone(), body)]);
        }
        return (shell(body), Vec::new());
    }
    let mut full = line.clone();
    for d in heredocs {
        full.push('\n');
        full.push_str(&d.chomped());
        full.push_str(&d.name);
    }
    (shell(full), Vec::new())
}

/// The plan's parsed `--mount`s with relative targets resolved against
/// WORKDIR, as BuildKit does.
pub fn mounts(parsed: &[Mount], workdir: &str) -> Vec<Mount> {
    parsed
        .iter()
        .cloned()
        .map(|mut m| {
            if let Some(t) = &m.target {
                if !t.starts_with('/') {
                    m.target = Some(super::copydest::clean(&format!("{workdir}/{t}")));
                }
            }
            m
        })
        .collect()
}

/// Run the command in a step of `area`; returns the layer entries (empty
/// when nothing changed) and the step's dirs holding the files they name,
/// to keep until the layer is written (the caller removes them).
/// `spare` is a setup process the stage started for this step while the
/// previous one wrote its layer (`sandbox::prestart`).
pub fn run(
    inputs: &RunInputs<'_>,
    spare: Option<sandbox::Prestarted>,
    on_output: &mut dyn FnMut(sandbox::Stream, &[u8]),
    area: &mut RunArea,
) -> anyhow::Result<(Vec<LayerEntry>, StepDirs)> {
    let step = area.next_step();
    // On an error the step's dirs go when `step` is dropped.
    let entries = run_in(inputs, spare, on_output, area, &step)?;
    Ok((entries, step))
}

/// [`run`] in the step dirs `step` of `area`, which the caller removes.
fn run_in(
    inputs: &RunInputs<'_>,
    spare: Option<sandbox::Prestarted>,
    on_output: &mut dyn FnMut(sandbox::Stream, &[u8]),
    area: &RunArea,
    step: &StepDirs,
) -> anyhow::Result<Vec<LayerEntry>> {
    let user = resolve_user(inputs)?;
    let mut env = process_env(inputs, &user.1);
    let mut specs = Vec::new();
    let mut locks = Vec::new();
    for (i, m) in inputs.mounts.iter().enumerate() {
        let place = (i, m);
        lower_mount(
            inputs,
            place,
            &step.scratch,
            &mut specs,
            &mut env,
            &mut locks,
        )?;
    }
    let mount_dirs = super::mountpoints::needed(&specs);
    for (name, body) in &inputs.scripts {
        specs.push(MountSpec::File {
            target: format!("/dev/pipes/{name}"),
            content: FileBytes(body.as_bytes().to_vec()),
            uid: 0,
            gid: 0,
            mode: 0o755,
        });
    }
    let (rootfs, fallback_root) = prepare_root(inputs, step)?;
    let spec = RunSpec {
        rootfs,
        argv: inputs.argv.clone(),
        env,
        cwd: inputs
            .config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: user.0,
        hostname: HOSTNAME.to_string(),
        network: inputs.network,
        mounts: specs,
        extra_files: managed_files(inputs.extra_hosts),
        limits: inputs.limits.clone(),
    };
    let opts = sandbox::SandboxOptions {
        // The empty mount point of the sandbox's tmpfs, the stage's for
        // every step, goes with the RUN dir, which the store sweeps after
        // a crash.
        state_dir: Some(area.state_dir()),
        ..Default::default()
    };
    let outcome = sandbox::run_prestarted(&opts, &spec, spare, on_output)
        .context("running the RUN sandbox")?;
    drop(locks);
    for w in &outcome.limit_warnings {
        (inputs.on_warning)(w);
    }
    if outcome.exit_code != 0 && outcome.oom_kills > 0 {
        bail!(
            "{}: process {:?} ended with exit code {}\nhint: raise --memory \
             (or make the step use less memory)",
            sandbox::oom_message(outcome.memory_limit),
            inputs.argv.join(" "),
            outcome.exit_code
        );
    }
    if outcome.exit_code != 0 {
        // A step that filled the store's disk usually fails with its own
        // "No space left on device": name the filesystem so the cause is
        // plain. The upper dir is removed when `run` returns.
        let full = super::limits::full_filesystem_note(inputs.store.root(), &step.upper)
            .map(|note| format!("\n{note}"))
            .unwrap_or_default();
        return Err(super::error::RunFailed {
            argv: inputs.argv.join(" "),
            exit_code: outcome.exit_code,
            note: full,
        }
        .into());
    }
    let mut entries = match (&spec.rootfs, fallback_root, &inputs.root) {
        (RootfsSpec::Overlay { upper, lowers, .. }, _, _) => {
            changeset_from_overlay_upper(upper, lowers).context("reading the RUN step's changes")?
        }
        (_, Some(copy), StageFiles::Dir(root)) => {
            remove_empty_stubs(&copy, &outcome.mount_stubs);
            diff_trees(root, &copy).context("diffing the RUN step's changes")?
        }
        _ => Vec::new(),
    };
    let stubs: Vec<String> = outcome
        .mount_stubs
        .iter()
        .map(|s| s.trim_start_matches('/').to_string())
        .collect();
    entries.retain(|e| !stubs.contains(&e.path));
    if let Some(maps) = &outcome.id_maps {
        to_container_owners(&mut entries, maps)?;
    }
    let dirs = super::mountpoints::missing_entries(
        &inputs.root.lowers(),
        &mount_dirs,
        &entries,
        inputs.created,
    );
    entries.extend(dirs);
    Ok(entries)
}

/// The RUN's root: an overlay over the stage's snapshots with the step's
/// fresh upper dir and the area's work dir, or (without overlayfs) a copy
/// of the stage's files in the step's scratch dir, whose path is returned
/// too so the changes can be diffed.
fn prepare_root(
    inputs: &RunInputs<'_>,
    step: &StepDirs,
) -> anyhow::Result<(RootfsSpec, Option<PathBuf>)> {
    // The engine passes snapshots only when overlay is usable.
    let overlay = matches!(inputs.root, StageFiles::Snapshots(_)) || overlay_usable();
    Ok(if overlay {
        // 0755 (under the umask): the upper dir's root is the RUN's `/`.
        std::fs::create_dir(&step.upper).context("creating the overlay upper dir")?;
        (
            RootfsSpec::Overlay {
                lowers: inputs.root.lowers(),
                upper: step.upper.clone(),
                work: step.work.clone(),
            },
            None,
        )
    } else {
        let StageFiles::Dir(root) = inputs.root else {
            bail!("RUN over layer snapshots needs overlayfs");
        };
        let copy = step.scratch.join("rootfs");
        copy_tree(root, &copy)?;
        (RootfsSpec::Dir(copy.clone()), Some(copy))
    })
}

/// Whether RUN steps can use overlayfs. `RBUILD_NO_OVERLAY=1` forces the
/// copied-rootfs fallback (for tests, and for hosts where overlay misbehaves).
pub fn overlay_usable() -> bool {
    std::env::var_os("RBUILD_NO_OVERLAY").is_none_or(|v| v.is_empty() || v == "0")
        && sandbox::overlay_available()
}

/// Starts the overlay probe (once per process) on a thread of `scope` when
/// the plan has a RUN step. The probe forks, mounts and removes a few dirs:
/// milliseconds the first RUN of a build would otherwise wait for, now
/// overlapped with the context scan and the cached steps before it.
pub fn probe_early<'s>(scope: &'s std::thread::Scope<'s, '_>, plan: &crate::plan::Plan) {
    let has_run = plan.stages.iter().any(|st| {
        st.steps
            .iter()
            .any(|step| matches!(step.kind, crate::plan::StepKind::Run(_)))
    });
    if has_run {
        scope.spawn(overlay_usable);
    }
}

/// `/etc/resolv.conf`, `/etc/hosts` (with `--add-host` lines) and
/// `/etc/hostname` as BuildKit manages them: the sandbox writes them to its
/// private tmpfs and binds them read-only, so they never reach the layer or
/// a host path, and a RUN that writes to them fails as under BuildKit
/// (`tests/conformance`, case `run-writes-etc-hosts`).
fn managed_files(extra_hosts: &[(String, String)]) -> ExtraFiles {
    let mut hosts =
        format!("127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in extra_hosts {
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    ExtraFiles {
        resolv_conf: Some(std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
        hosts: Some(hosts),
        hostname: Some(format!("{HOSTNAME}\n")),
    }
}

/// Host owners → owners in the image, through a rootless sandbox's id map.
/// An id outside the map has no owner in the image: refused, not written
/// as root. (Whiteout and opaque markers are rbuild's own, root-owned.)
fn to_container_owners(entries: &mut [LayerEntry], maps: &sandbox::IdMaps) -> anyhow::Result<()> {
    use crate::layer::EntryKind;
    for e in entries {
        if matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque) {
            continue;
        }
        e.uid = maps
            .to_container_uid(e.uid)
            .ok_or_else(|| unmapped_owner("uid", e.uid, &e.path))?;
        e.gid = maps
            .to_container_gid(e.gid)
            .ok_or_else(|| unmapped_owner("gid", e.gid, &e.path))?;
    }
    Ok(())
}

fn unmapped_owner(kind: &str, id: u32, path: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the RUN step changed /{path}, owned by host {kind} {id}, which the sandbox's id \
         map does not cover: rbuild cannot say who owns it in the image\n\
         hint: build as root, or give your user a subordinate id range that covers \
         the image's ids (/etc/subuid, /etc/subgid)"
    )
}

/// The process user (ids, groups) and HOME, from USER and the image's files.
fn resolve_user(inputs: &RunInputs<'_>) -> anyhow::Result<(UserSpec, String)> {
    let spec = inputs
        .config
        .config
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "0".into());
    let u = inputs
        .users
        .resolve_user(&spec)
        .with_context(|| format!("resolving USER {spec}"))?;
    Ok((
        UserSpec {
            uid: u.uid,
            gid: u.gid,
            additional_gids: u.additional_gids,
        },
        u.home,
    ))
}

/// Image ENV with the ARGs in scope over it, proxies, and HOME when unset.
fn process_env(inputs: &RunInputs<'_>, home: &str) -> Vec<String> {
    let mut env: Vec<String> = inputs.config.config.env.clone();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    // The plan gives each ARG the value the stage's environment holds at
    // this step, so an ARG declared after an ENV of the same name wins, as
    // in BuildKit (its ARG replaces the variable in the LLB state's env).
    for (k, v) in inputs.arg_env {
        let var = format!("{k}={v}");
        match env.iter_mut().find(|e| e.split('=').next() == Some(k)) {
            Some(e) => *e = var,
            None => env.push(var),
        }
    }
    for (k, v) in inputs.proxy_env {
        if !has(&env, k) {
            env.push(format!("{k}={v}"));
        }
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

/// Cache mount locks held for a step, by lock file: two mounts of one id
/// take it once (a second `flock` on another open of the file waited for
/// the first forever).
type StepLocks = Vec<(PathBuf, crate::store::LockGuard)>;

/// `VAR=value` for a secret mounted as an environment variable. A value
/// an environment cannot hold exactly is refused, naming the secret and
/// never showing it: a NUL byte used to fail in the sandbox with the whole
/// `VAR=secret` in the message (and so in the build log), and bytes that
/// are not UTF-8 were silently replaced.
fn secret_env(id: &str, var: &str, value: &[u8]) -> anyhow::Result<String> {
    let hint = "hint: mount it as a file instead (target=PATH, or no env=)";
    if value.contains(&0) {
        bail!(
            "secret {id} cannot be the environment variable {var}: it contains a NUL byte\n{hint}"
        );
    }
    match std::str::from_utf8(value) {
        Ok(text) => Ok(format!("{var}={text}")),
        Err(_) => bail!(
            "secret {id} cannot be the environment variable {var}: it is not UTF-8 text\n{hint}"
        ),
    }
}

fn lower_mount(
    inputs: &RunInputs<'_>,
    (index, m): (usize, &Mount),
    scratch: &Path,
    specs: &mut Vec<MountSpec>,
    env: &mut Vec<String>,
    locks: &mut StepLocks,
) -> anyhow::Result<()> {
    match m.kind {
        MountType::Tmpfs => specs.push(MountSpec::Tmpfs {
            target: target(m)?,
            size: m.size,
        }),
        MountType::Bind => {
            // The sandbox binds absolute paths; the context (or `--root`)
            // may have been given relative, as in `rbuild build .`.
            let source = std::path::absolute((inputs.bind_source)(index, m)?)
                .context("resolving the bind mount's source")?;
            let source = if m.readonly {
                source
            } else {
                // Writes to a rw bind are discarded, as in BuildKit: never the user's files.
                let copy = scratch.join(format!("bind-{}", specs.len()));
                copy_tree(&source, &copy)?;
                copy
            };
            specs.push(MountSpec::Bind {
                source,
                target: target(m)?,
                readonly: m.readonly,
            });
        }
        MountType::Cache => {
            let target = target(m)?;
            let id = m.id.clone().unwrap_or_else(|| target.clone());
            let dir = super::cachemounts::cache_dir(
                inputs.store,
                &id,
                m,
                &super::cachemounts::stage_platform(inputs.config),
                inputs.mount_restorer,
                inputs.on_warning,
            )?;
            let lock = dir.with_extension("lock");
            let locking = m.sharing == CacheSharing::Locked || m.sharing == CacheSharing::Private;
            if locking && !locks.iter().any(|(p, _)| *p == lock) {
                let guard = crate::store::lock_exclusive(&lock)
                    .with_context(|| format!("locking cache mount {id}"))?;
                locks.push((lock, guard));
            }
            specs.push(MountSpec::Bind {
                source: dir,
                target,
                readonly: m.readonly,
            });
        }
        MountType::Secret => {
            let id =
                m.id.clone()
                    .or_else(|| {
                        m.target
                            .as_deref()
                            .and_then(|t| t.rsplit('/').next())
                            .map(str::to_string)
                    })
                    .context("a secret mount needs id=")?;
            let Some(value) = secret_value(inputs.secrets.get(&id))? else {
                if m.required {
                    bail!(
                        "secret {id} is required but was not provided (--secret id={id},src=FILE)"
                    );
                }
                return Ok(());
            };
            if let Some(var) = &m.env {
                env.push(secret_env(&id, var, &value)?);
                if m.target.is_none() {
                    return Ok(());
                }
            }
            // BuildKit's defaults: uid 0, gid 0, mode 0400, each on its own.
            specs.push(MountSpec::File {
                target: m
                    .target
                    .clone()
                    .unwrap_or_else(|| format!("/run/secrets/{id}")),
                content: FileBytes(value),
                uid: m.uid.unwrap_or(0),
                gid: m.gid.unwrap_or(0),
                mode: m.mode.unwrap_or(0o400),
            });
        }
        MountType::Ssh => {
            let id =
                m.id.as_deref()
                    .filter(|i| !i.is_empty())
                    .unwrap_or("default");
            let Some(sock) = inputs.ssh.get(id) else {
                if m.required {
                    bail!("SSH agent {id:?} is required: pass --ssh {id}[=SOCKET]");
                }
                return Ok(());
            };
            let target = m
                .target
                .clone()
                .unwrap_or_else(|| "/run/buildkit/ssh_agent.0".to_string());
            env.push(format!("SSH_AUTH_SOCK={target}"));
            specs.push(MountSpec::Bind {
                source: sock.clone(),
                target,
                readonly: false,
            });
        }
    }
    Ok(())
}

fn target(m: &Mount) -> anyhow::Result<String> {
    m.target
        .clone()
        .filter(|t| !t.is_empty())
        .context("the mount needs target=")
}

fn secret_value(src: Option<&SecretSource>) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(match src {
        None => None,
        Some(SecretSource::File(p)) => {
            Some(std::fs::read(p).with_context(|| format!("reading secret file {}", p.display()))?)
        }
        Some(SecretSource::Env(var)) => std::env::var_os(var).map(|v| {
            use std::os::unix::ffi::OsStringExt;
            v.into_vec()
        }),
    })
}

/// Mount points the sandbox created in the fallback copy, removed while
/// still empty (deepest first), so the diff sees neither them nor their
/// parents as changes. Filtering them out of the entries afterwards would
/// leave their parent directories behind.
fn remove_empty_stubs(copy: &Path, stubs: &[String]) {
    let mut stubs: Vec<&String> = stubs.iter().collect();
    stubs.sort_by_key(|s| std::cmp::Reverse(s.matches('/').count()));
    for stub in stubs {
        let p = copy.join(stub.trim_start_matches('/'));
        // A failure leaves the stub, which the entry filter still drops.
        let _ = match p.symlink_metadata() {
            Ok(m) if m.is_dir() => std::fs::remove_dir(&p),
            Ok(m) if m.is_file() && m.len() == 0 => std::fs::remove_file(&p),
            _ => Ok(()),
        };
    }
}

/// The no-overlay fallback's copy of the stage's files: same types, owners
/// (when permitted), modes, mtimes and holes, so that diffing it after the
/// step finds only what the step changed (a copy with fresh mtimes made
/// every RUN layer hold the whole tree). Device nodes and FIFOs are copied
/// too: a node missing from the copy would read as deleted. Iterative, so
/// a deep tree costs no stack.
fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut dirs = Vec::new();
    for item in walkdir::WalkDir::new(src).follow_links(false) {
        let item = item.with_context(|| format!("walking {}", src.display()))?;
        let rel = item.path().strip_prefix(src).context("walking the stage")?;
        // The root itself may be a single file (a bind mount of one).
        let to = match rel.as_os_str().is_empty() {
            true => dst.to_path_buf(),
            false => dst.join(rel),
        };
        let meta = item
            .metadata()
            .with_context(|| format!("reading {}", item.path().display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            // Metadata once every child exists (a new child moves the mtime).
            dirs.push((to, meta));
            continue;
        }
        if ft.is_symlink() {
            let t = std::fs::read_link(item.path())?;
            std::os::unix::fs::symlink(&t, &to)
                .with_context(|| format!("creating {}", to.display()))?;
        } else if ft.is_file() {
            // Holes stay holes (std::fs::copy writes them out as zeros).
            let from = std::fs::File::open(item.path())
                .with_context(|| format!("opening {}", item.path().display()))?;
            let out =
                std::fs::File::create(&to).with_context(|| format!("creating {}", to.display()))?;
            crate::layer::copy_sparse(&from, &out)
                .with_context(|| format!("copying {}", item.path().display()))?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            use nix::sys::stat::{mknod, Mode, SFlag};
            let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
            if let Err(e) = mknod(&to, kind, mode, meta.rdev()) {
                // Without the privilege the stage's view has no nodes either.
                if e == nix::errno::Errno::EPERM {
                    continue;
                }
                return Err(e).with_context(|| format!("creating {}", to.display()));
            }
        } else {
            // Sockets: no layer can hold them.
            continue;
        }
        keep_metadata(&to, &meta)?;
    }
    for (to, meta) in dirs.iter().rev() {
        keep_metadata(to, meta)?;
    }
    Ok(())
}

/// Owner (when permitted), then mode (a chown clears setuid bits), then
/// times, never following a symlink.
fn keep_metadata(to: &Path, meta: &std::fs::Metadata) -> anyhow::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _ = std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()));
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .with_context(|| format!("chmod {}", to.display()))?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        to,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("setting the times of {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_outside_the_id_map_are_refused_not_made_root() {
        let one = |c, h, n| sandbox::IdMapEntry {
            container_id: c,
            host_id: h,
            size: n,
        };
        let maps = sandbox::IdMaps {
            uid: vec![one(0, 1000, 1), one(1, 100_000, 65536)],
            gid: vec![one(0, 1000, 1), one(1, 100_000, 65536)],
        };
        let dir = |path: &str, uid, gid| LayerEntry {
            uid,
            gid,
            ..LayerEntry::opaque(path)
        };
        let mut ok = vec![
            LayerEntry {
                kind: crate::layer::EntryKind::Dir,
                ..dir("a", 1000, 100_004)
            },
            // rbuild's own markers are root-owned in any map.
            LayerEntry::whiteout("gone"),
        ];
        to_container_owners(&mut ok, &maps).unwrap();
        assert_eq!((ok[0].uid, ok[0].gid), (0, 5));
        let mut bad = vec![LayerEntry {
            kind: crate::layer::EntryKind::Dir,
            ..dir("etc/x", 5000, 1000)
        }];
        let err = to_container_owners(&mut bad, &maps)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/x, owned by host uid 5000"), "{err}");
        assert!(err.contains("hint: "), "{err}");
        assert_eq!(bad[0].uid, 5000, "not rewritten to root");
    }

    #[test]
    fn secret_specs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "s3cret").unwrap();
        assert_eq!(
            parse_secret(&format!("id=tok,src={}", file.display())).unwrap(),
            ("tok".into(), SecretSource::File(file.clone()))
        );
        assert_eq!(
            parse_secret("id=tok,env=TOKEN").unwrap(),
            ("tok".into(), SecretSource::Env("TOKEN".into()))
        );
        assert_eq!(
            parse_secret("id=tok").unwrap(),
            ("tok".into(), SecretSource::Env("tok".into()))
        );
        assert!(parse_secret("src=/x").is_err());
        assert!(parse_secret("id=a,what=b").is_err());
    }

    #[test]
    fn a_missing_secret_file_is_an_error_naming_it() {
        let err = parse_secret("id=s,src=/nonexistent/secret").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("--secret id=s: failed to stat the secret file /nonexistent/secret"),
            "{msg}"
        );
        assert!(msg.contains("hint: "), "{msg}");
    }

    #[test]
    fn relative_mount_targets_follow_workdir() {
        let parsed = crate::plan::parse_mount("type=cache,target=cache").unwrap();
        let m = mounts(&[parsed], "/app");
        assert_eq!(m[0].target.as_deref(), Some("/app/cache"));
    }
}
