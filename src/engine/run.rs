//! RUN: the sandbox over an overlay of the stage's filesystem, then the
//! overlay's upper dir as the step's layer.
//!
//! The stage's layers are materialized once per stage (see `rootfs`) and
//! serve as the overlay's single lower dir; each RUN gets a fresh upper dir.
//! `RUN --mount` types are lowered here into what the sandbox knows (binds
//! of prepared host paths and tmpfs): cache dirs live in the store, secrets
//! in a private temp dir removed after the step, the SSH agent socket is
//! bound from `SSH_AUTH_SOCK`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::dockerfile::mount::{CacheSharing, Mount, MountType};
use crate::image::ImageConfig;
use crate::layer::{changeset_from_overlay_upper, diff_trees, LayerEntry};
use crate::sandbox::{self, ExtraFiles, MountSpec, NetworkMode, RootfsSpec, RunSpec, UserSpec};
use crate::store::Store;

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
    Ok((id, src))
}

/// Inputs of one RUN that are not in the instruction.
pub struct RunInputs<'a> {
    pub store: &'a Store,
    pub argv: Vec<String>,
    pub config: &'a ImageConfig,
    /// ARG values in scope (not in the image, but in the process env).
    pub arg_env: &'a [(String, String)],
    pub proxy_env: &'a BTreeMap<String, String>,
    /// The stage's filesystem (overlay lower).
    pub root: &'a Path,
    pub users: &'a UserDb,
    pub network: NetworkMode,
    pub mounts: Vec<Mount>,
    /// Host paths for `--mount` sources: context root, other stages' roots.
    pub bind_source: &'a dyn Fn(&Mount) -> anyhow::Result<PathBuf>,
    pub secrets: &'a BTreeMap<String, SecretSource>,
    pub ssh: &'a BTreeMap<String, PathBuf>,
    /// Heredoc scripts (`RUN <<EOF` with a `#!` line) to put at `/dev/pipes/NAME`.
    pub scripts: Vec<(String, String)>,
    /// mtime of files the step's layer gets from outside the upper dir.
    pub created: crate::layer::Timespec,
    /// `--add-host`: (name, address) lines added to `/etc/hosts`.
    pub extra_hosts: &'a [(String, String)],
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
        if first.body.starts_with("#!") {
            let path = format!("/dev/pipes/{}", first.name);
            return (shell(path), vec![(first.name.clone(), first.body.clone())]);
        }
        return (shell(first.body.clone()), Vec::new());
    }
    let mut full = line.clone();
    for d in heredocs {
        full.push('\n');
        full.push_str(&d.body);
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

/// Run the command; returns the layer entries (empty when nothing changed)
/// and the temp dir holding the files they name, to keep until the layer is
/// written.
pub fn run(
    inputs: &RunInputs<'_>,
    on_output: &mut dyn FnMut(sandbox::Stream, &[u8]),
) -> anyhow::Result<(Vec<LayerEntry>, tempfile::TempDir)> {
    let work = tempfile::tempdir_in(inputs.store.tmp_dir()).context("creating RUN dirs")?;
    let secrets_dir = private_dir(inputs.store)?;
    let user = resolve_user(inputs)?;
    let mut env = process_env(inputs, &user.1);
    let mut specs = Vec::new();
    let mut locks = Vec::new();
    for m in &inputs.mounts {
        lower_mount(
            inputs,
            m,
            secrets_dir.path(),
            &mut specs,
            &mut env,
            &mut locks,
        )?;
    }
    for (name, body) in &inputs.scripts {
        let p = secrets_dir.path().join(format!("pipe-{name}"));
        write_private(&p, body.as_bytes(), 0o755)?;
        specs.push(MountSpec::Bind {
            source: p,
            target: format!("/dev/pipes/{name}"),
            readonly: true,
        });
    }
    let managed = managed_files(secrets_dir.path(), inputs.extra_hosts, &mut specs)?;
    let overlay = overlay_usable();
    let (rootfs, fallback_root) = if overlay {
        let upper = work.path().join("upper");
        let workdir = work.path().join("work");
        std::fs::create_dir_all(&upper).context("creating the overlay upper dir")?;
        std::fs::create_dir_all(&workdir).context("creating the overlay work dir")?;
        (
            RootfsSpec::Overlay {
                lowers: vec![inputs.root.to_path_buf()],
                upper,
                work: workdir,
            },
            None,
        )
    } else {
        let copy = work.path().join("rootfs");
        copy_tree(inputs.root, &copy)?;
        (RootfsSpec::Dir(copy.clone()), Some(copy))
    };
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
        // Bound from files of ours instead (see `managed_files`).
        extra_files: ExtraFiles::default(),
    };
    let outcome = sandbox::run(&spec, on_output).context("running the RUN sandbox")?;
    drop(locks);
    if outcome.exit_code != 0 {
        bail!(
            "process {:?} did not complete successfully: exit code: {}",
            inputs.argv.join(" "),
            outcome.exit_code
        );
    }
    let mut entries = match (&spec.rootfs, fallback_root) {
        (RootfsSpec::Overlay { upper, .. }, _) => {
            changeset_from_overlay_upper(upper, &[inputs.root.to_path_buf()])
                .context("reading the RUN step's changes")?
        }
        (_, Some(copy)) => {
            diff_trees(inputs.root, &copy).context("diffing the RUN step's changes")?
        }
        _ => Vec::new(),
    };
    let stubs: Vec<String> = outcome
        .mount_stubs
        .iter()
        .map(|s| s.trim_start_matches('/').to_string())
        .collect();
    entries.retain(|e| !stubs.contains(&e.path));
    // What the command really wrote to a managed file stays, as in docker.
    for (target, path, original) in managed {
        let now = std::fs::read(&path).with_context(|| format!("reading back {target}"))?;
        if now != original.as_bytes() {
            entries.retain(|e| e.path != target.trim_start_matches('/'));
            entries.push(LayerEntry {
                path: target.trim_start_matches('/').to_string(),
                kind: crate::layer::EntryKind::File(crate::layer::FileSource::Bytes(now)),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: inputs.created,
                xattrs: Vec::new(),
            });
        }
    }
    if let Some(maps) = &outcome.id_maps {
        for e in &mut entries {
            e.uid = maps.to_container_uid(e.uid).unwrap_or(0);
            e.gid = maps.to_container_gid(e.gid).unwrap_or(0);
        }
    }
    Ok((entries, work))
}

/// Whether RUN steps can use overlayfs. `RBUILD_NO_OVERLAY=1` forces the
/// copied-rootfs fallback (for tests, and for hosts where overlay misbehaves).
pub fn overlay_usable() -> bool {
    std::env::var_os("RBUILD_NO_OVERLAY").is_none_or(|v| v.is_empty() || v == "0")
        && sandbox::overlay_available()
}

/// `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` as docker manages
/// them: bound from files in `dir` (never into the upper dir). Returns
/// (target, file, content written) to compare after the run.
fn managed_files(
    dir: &Path,
    extra_hosts: &[(String, String)],
    specs: &mut Vec<MountSpec>,
) -> anyhow::Result<Vec<(String, PathBuf, String)>> {
    let mut hosts =
        format!("127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in extra_hosts {
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    let contents = [
        (
            "/etc/resolv.conf",
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
        ("/etc/hosts", hosts),
        ("/etc/hostname", format!("{HOSTNAME}\n")),
    ];
    let mut out = Vec::new();
    for (target, content) in contents {
        let file = dir.join(format!("managed{}", target.replace('/', "-")));
        write_private(&file, content.as_bytes(), 0o644)?;
        specs.push(MountSpec::Bind {
            source: file.clone(),
            target: target.to_string(),
            readonly: false,
        });
        out.push((target.to_string(), file, content));
    }
    Ok(out)
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

/// Image ENV, then ARGs not shadowed by ENV, proxies, and HOME when unset.
fn process_env(inputs: &RunInputs<'_>, home: &str) -> Vec<String> {
    let mut env: Vec<String> = inputs.config.config.env.clone();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    for (k, v) in inputs.arg_env {
        if !has(&env, k) {
            env.push(format!("{k}={v}"));
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

fn lower_mount(
    inputs: &RunInputs<'_>,
    m: &Mount,
    private: &Path,
    specs: &mut Vec<MountSpec>,
    env: &mut Vec<String>,
    locks: &mut Vec<crate::store::LockGuard>,
) -> anyhow::Result<()> {
    match m.kind {
        MountType::Tmpfs => specs.push(MountSpec::Tmpfs {
            target: target(m)?,
            size: m.size,
        }),
        MountType::Bind => {
            let source = (inputs.bind_source)(m)?;
            let source = if m.readonly {
                source
            } else {
                // Writes to a rw bind are discarded, as in BuildKit: never the user's files.
                let copy = private.join(format!("bind-{}", specs.len()));
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
            let dir = cache_dir(inputs.store, &id, m)?;
            if m.sharing == CacheSharing::Locked || m.sharing == CacheSharing::Private {
                let lock = dir.with_extension("lock");
                locks.push(
                    crate::store::lock_exclusive(&lock)
                        .with_context(|| format!("locking cache mount {id}"))?,
                );
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
                env.push(format!("{var}={}", String::from_utf8_lossy(&value)));
                if m.target.is_none() {
                    return Ok(());
                }
            }
            let file = private.join(format!("secret-{}", specs.len()));
            write_private(&file, &value, m.mode.unwrap_or(0o400))?;
            if let (Some(uid), Some(gid)) = (m.uid, m.gid) {
                let _ = nix::unistd::chown(&file, Some(uid.into()), Some(gid.into()));
            }
            specs.push(MountSpec::Bind {
                source: file,
                target: m
                    .target
                    .clone()
                    .unwrap_or_else(|| format!("/run/secrets/{id}")),
                readonly: true,
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

/// A persistent cache-mount dir in the store, created with the mount's owner and mode.
fn cache_dir(store: &Store, id: &str, m: &Mount) -> anyhow::Result<PathBuf> {
    use sha2::Digest;
    let name = hex::encode(sha2::Sha256::digest(id.as_bytes()));
    let dir = store.private("cachemounts").join(name);
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating cache mount dir {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &dir,
            std::fs::Permissions::from_mode(m.mode.unwrap_or(0o755)),
        )?;
        if m.uid.is_some() || m.gid.is_some() {
            nix::unistd::chown(&dir, m.uid.map(Into::into), m.gid.map(Into::into))
                .with_context(|| format!("chown of cache mount dir {}", dir.display()))?;
        }
    }
    Ok(dir)
}

/// A temp dir only the current user can read, in memory when possible.
fn private_dir(store: &Store) -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new().prefix("rbuild-").tempdir_in(shm)
    } else {
        tempfile::tempdir_in(store.tmp_dir())
    }
    .context("creating a private temp dir")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

fn write_private(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Recursive copy keeping modes, owners (when permitted), symlinks and times.
fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta =
        std::fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(src)?;
        std::os::unix::fs::symlink(&t, dst)
            .with_context(|| format!("creating {}", dst.display()))?;
        return Ok(());
    }
    if ft.is_dir() {
        std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
        for e in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if ft.is_file() {
        std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    } else {
        // Devices, fifos and sockets are not copied into a scratch copy.
        return Ok(());
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let _ = std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs() {
        assert_eq!(
            parse_secret("id=tok,src=/x").unwrap(),
            ("tok".into(), SecretSource::File("/x".into()))
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
    fn relative_mount_targets_follow_workdir() {
        let parsed = crate::dockerfile::parse_mount("type=cache,target=cache").unwrap();
        let m = mounts(&[parsed], "/app");
        assert_eq!(m[0].target.as_deref(), Some("/app/cache"));
    }
}
