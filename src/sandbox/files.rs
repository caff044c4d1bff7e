//! The files the sandbox itself puts in the root: the managed
//! `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`, and
//! [`MountSpec::File`] mounts (secrets, heredoc scripts). All of them live on
//! the state tmpfs, which exists only in the sandbox's private mount
//! namespace: no copy ever sits on a host path, and the tmpfs dies with the
//! namespace even when rbuild is killed.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

use super::paths::{self, ensure, fd_path, Kind};
use super::rootfs::remount_adding;
use super::{MountSpec, RunSpec};

const NONE: Option<&str> = None;

/// Room on the state tmpfs beyond the files put there; the limit keeps it
/// from filling the host's RAM.
const STATE_HEADROOM: u64 = 64 << 20;

/// The managed files by name below `/etc`, with their contents.
pub fn extra_files(spec: &RunSpec) -> [(&'static str, &Option<String>); 3] {
    let f = &spec.extra_files;
    [
        ("resolv.conf", &f.resolv_conf),
        ("hosts", &f.hosts),
        ("hostname", &f.hostname),
    ]
}

/// Bytes the state tmpfs may hold: every file put there plus headroom.
pub fn state_size(spec: &RunSpec) -> u64 {
    let managed = extra_files(spec)
        .iter()
        .filter_map(|(_, c)| c.as_ref().map(|c| c.len() as u64))
        .sum::<u64>();
    let mounted = spec
        .mounts
        .iter()
        .map(|m| match m {
            MountSpec::File { content, .. } => content.0.len() as u64,
            _ => 0,
        })
        .sum::<u64>();
    STATE_HEADROOM + managed + mounted
}

/// Writes the managed files to `dir` (on the state tmpfs) and binds them
/// read-only over `/etc/NAME`, as BuildKit does: a command that writes to
/// them fails, and nothing of them reaches the layer.
pub fn mount_extra_files(
    root: &OwnedFd,
    dir: &Path,
    spec: &RunSpec,
    stubs: &mut Vec<String>,
) -> Result<()> {
    for (name, content) in extra_files(spec) {
        let Some(content) = content else { continue };
        let src = dir.join(name);
        fs::write(&src, content).with_context(|| format!("writing {}", src.display()))?;
        fs::set_permissions(&src, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod {}", src.display()))?;
        let target = format!("/etc/{name}");
        let fd = ensure(root, &target, Kind::File, stubs)?;
        mount(
            Some(&src),
            fd_path(&fd).as_str(),
            NONE,
            MsFlags::MS_BIND,
            NONE,
        )
        .with_context(|| format!("binding {target}"))?;
        let rel = paths::components(&target)?.join("/");
        remount_adding(root, &rel, MsFlags::MS_RDONLY | MsFlags::MS_NODEV)?;
    }
    Ok(())
}

/// A [`MountSpec::File`]: `bytes` written to `file` (on the state tmpfs)
/// with `owner` = (uid, gid, mode), bound read-only and nodev on `target`.
pub fn mount_file(
    root: &OwnedFd,
    target: &str,
    file: &Path,
    bytes: &[u8],
    owner: (u32, u32, u32),
    stubs: &mut Vec<String>,
) -> Result<()> {
    let (uid, gid, mode) = owner;
    write_owned(file, bytes, uid, gid, mode)
        .with_context(|| format!("preparing the file for {target}"))?;
    let fd = ensure(root, target, Kind::File, stubs)?;
    mount(
        Some(file),
        fd_path(&fd).as_str(),
        NONE,
        MsFlags::MS_BIND,
        NONE,
    )
    .with_context(|| format!("bind-mounting the file on {target}"))?;
    let rel = paths::components(target)?.join("/");
    remount_adding(root, &rel, MsFlags::MS_RDONLY | MsFlags::MS_NODEV)
}

/// Writes `bytes` to a new file owned by `uid`:`gid` (ids of this user
/// namespace) with `mode`, in that order: chown clears set-id bits.
fn write_owned(path: &Path, bytes: &[u8], uid: u32, gid: u32, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    // EINVAL: an id outside the user namespace's map (rootless without a
    // subuid range). The hint goes last, where the chain of causes ends.
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| {
        anyhow::anyhow!(
            "setting the owner to {uid}:{gid}: {e}\n\
             hint: both ids must be mapped in the build's user namespace: give the \
             user a subuid/subgid range (/etc/subuid, /etc/subgid) or drop uid=/gid="
        )
    })?;
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .with_context(|| format!("setting mode {mode:o}"))
}
