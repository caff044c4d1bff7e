//! Builds the new root inside the sandbox's mount namespace: the overlay (or
//! the fallback dir), /proc with docker's masked paths, a minimal /dev,
//! read-only /sys, the managed /etc files, the user's mounts, then
//! `pivot_root` and a detach of the old root.
//!
//! Missing mount points must not leak into the upper dir: for an overlay they
//! are created in an extra, topmost lower layer on a private tmpfs (see
//! `stub_lower`), whose directories copy the mode, owner and times of the
//! image's directories so copy-up keeps the image's metadata.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{fchdir, pivot_root, symlinkat};

use super::files;
use super::paths::{self, ensure, fd_path, Kind};
use super::wire::Request;
use super::{MountSpec, NetworkMode, RootfsSpec, RunSpec};

const NONE: Option<&str> = None;

/// What `prepare` leaves for init.
pub struct Prepared {
    /// Mount points that had to be created in the rootfs itself.
    pub stubs: Vec<String>,
}

/// Sets up the root and pivots into it.
pub fn prepare(req: &Request) -> Result<Prepared> {
    let state = &req.state_dir;
    // Secrets and managed files live on this tmpfs, which exists only in
    // the sandbox's private mount namespace: it dies with the namespace,
    // even when rbuild is killed, and never shows on the host.
    let size = files::state_size(&req.spec);
    mount_tmpfs(state, &format!("mode=0700,size={size}"))?;
    let files = state.join("files");
    mkdir(&files, 0o755)?;
    let new_root = state.join("root");
    mkdir(&new_root, 0o755)?;
    let spec = &req.spec;
    let targets = mount_targets(spec)?;
    match &spec.rootfs {
        RootfsSpec::Overlay {
            lowers,
            upper,
            work,
        } => {
            let stub = state.join("stub");
            mkdir(&stub, 0o755)?;
            let mut copied = Vec::new();
            for (target, kind) in &targets {
                stub_lower(lowers, &stub, target, *kind, &mut copied)?;
            }
            // Times last: creating entries inside a dir changes its mtime.
            for (path, meta) in copied.iter().rev() {
                copy_times(path, meta)?;
            }
            let mut all = vec![stub];
            all.extend(lowers.iter().cloned());
            mount_overlay(&all, upper, work, &new_root, req.unprivileged, Some(state))?;
        }
        RootfsSpec::Dir(dir) => {
            mount(
                Some(dir),
                &new_root,
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            )
            .with_context(|| format!("bind-mounting rootfs {}", dir.display()))?;
        }
    }
    let root = open(
        &new_root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening new root {}", new_root.display()))?;
    if matches!(spec.rootfs, RootfsSpec::Dir(_)) {
        remount_adding(&root, "", MsFlags::MS_NODEV)?;
    }
    let mut stubs = Vec::new();
    mount_proc(&root, &mut stubs)?;
    mount_dev(&root, spec.limits.shm_size, &mut stubs)?;
    mount_sys(&root, spec.network, &mut stubs)?;
    files::mount_extra_files(&root, &files, spec, &mut stubs)?;
    for (i, m) in spec.mounts.iter().enumerate() {
        mount_user(&root, m, &files.join(format!("mount-{i}")), &mut stubs)?;
    }
    pivot(&root)?;
    Ok(Prepared { stubs })
}

/// Checks that an overlay can be mounted here (in this mount namespace).
pub fn probe_overlay(state: &Path, unprivileged: bool) -> Result<()> {
    let (l, u, w, m) = probe_dirs(state)?;
    mount_overlay(&[l], &u, &w, &m, unprivileged, None)
}

/// The probe's scratch lower, upper, work and mount dirs, made in `state`.
fn probe_dirs(state: &Path) -> Result<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let (l, u, w, m) = (
        state.join("l"),
        state.join("u"),
        state.join("w"),
        state.join("m"),
    );
    for d in [&l, &u, &w, &m] {
        mkdir(d, 0o755)?;
    }
    Ok((l, u, w, m))
}

/// [`probe_overlay`] for a caller that may unshare a mount namespace itself
/// (root, or root of rbuild's own user namespace): a forked child mounts the
/// overlay (options as [`mount_overlay_data`] tries them) in a private mount
/// namespace and exits, without re-executing rbuild as the sandbox's setup
/// process.
pub fn probe_overlay_forked(state: &Path, unprivileged: bool) -> Result<()> {
    use std::ffi::CString;
    let (l, u, w, m) = probe_dirs(state)?;
    let data = overlay_options(&[overlay_path(&l)?], &u, &w, unprivileged)?;
    let cstr = |s: String| CString::new(s).context("overlay option with a NUL byte");
    let options = [cstr(format!("{data},volatile"))?, cstr(data)?];
    let target =
        CString::new(m.as_os_str().as_encoded_bytes()).context("probe dir with a NUL byte")?;
    super::sys::mount_overlay_in_child(&target, &options)
        .with_context(|| format!("mounting a probe overlay on {}", m.display()))
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn mount_tmpfs(target: &Path, data: &str) -> Result<()> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data),
    )
    .with_context(|| format!("mounting tmpfs on {}", target.display()))
}

/// Every path the sandbox mounts something on, with its kind.
fn mount_targets(spec: &RunSpec) -> Result<Vec<(String, Kind)>> {
    let mut t = vec![
        ("/proc".to_string(), Kind::Dir),
        ("/dev".to_string(), Kind::Dir),
        ("/sys".to_string(), Kind::Dir),
    ];
    for (name, content) in files::extra_files(spec) {
        if content.is_some() {
            t.push((format!("/etc/{name}"), Kind::File));
        }
    }
    for m in &spec.mounts {
        t.push(match m {
            MountSpec::Bind { source, target, .. } => {
                let meta = fs::metadata(source)
                    .with_context(|| format!("bind mount source {}", source.display()))?;
                let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
                (target.clone(), kind)
            }
            MountSpec::Tmpfs { target, .. } => (target.clone(), Kind::Dir),
            MountSpec::File { target, .. } => (target.clone(), Kind::File),
        });
    }
    Ok(t)
}

/// What the merged view of the lowers (top first) holds at `rel`.
enum Found {
    Dir(fs::Metadata),
    Other,
    Absent,
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    super::sys::has_xattr(path, "trusted.overlay.opaque")
        || super::sys::has_xattr(path, "user.overlay.opaque")
}

/// Overlay lookup of `parts` across `lowers`: the topmost lower holding the
/// path wins; a whiteout hides it, an opaque dir hides lower layers below.
fn lookup(lowers: &[PathBuf], parts: &[&str]) -> Found {
    for lower in lowers {
        let mut path = lower.clone();
        let mut stop_below = false;
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                break;
            };
            if is_whiteout(&meta) {
                return Found::Absent;
            }
            let last = i + 1 == parts.len();
            if last {
                return if meta.is_dir() {
                    Found::Dir(meta)
                } else {
                    Found::Other
                };
            }
            if !meta.is_dir() {
                return Found::Other;
            }
            stop_below |= is_opaque(&path);
        }
        if stop_below {
            break;
        }
    }
    Found::Absent
}

/// Makes sure `target` exists in the overlay by adding it to the stub lower
/// when no lower has it. Leaves it to the in-root creation (reported as a
/// stub) when a symlink or a file is in the way.
fn stub_lower(
    lowers: &[PathBuf],
    stub: &Path,
    target: &str,
    kind: Kind,
    copied: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<()> {
    let parts = paths::components(target)?;
    match lookup(lowers, &parts) {
        Found::Dir(_) | Found::Other => return Ok(()),
        Found::Absent => {}
    }
    let mut path = stub.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let last = i + 1 == parts.len();
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        if last && kind == Kind::File {
            fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            return Ok(());
        }
        match lookup(lowers, &parts[..=i]) {
            Found::Dir(meta) => {
                copy_dir_meta(&path, &meta)?;
                copied.push((path.clone(), meta));
            }
            Found::Absent => mkdir(&path, 0o755)?,
            Found::Other => return Ok(()),
        }
    }
    Ok(())
}

fn copy_dir_meta(path: &Path, meta: &fs::Metadata) -> Result<()> {
    mkdir(path, 0o700)?;
    // Ownership is best effort: in a single-id user namespace other owners
    // are unmapped and chown fails; the merged dir still shows the image's.
    let _ = std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()));
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .with_context(|| format!("chmod {}", path.display()))
}

fn copy_times(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let times = fs::FileTimes::new()
        .set_accessed(meta.accessed().unwrap_or(std::time::SystemTime::UNIX_EPOCH))
        .set_modified(meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH));
    fs::File::open(path)
        .and_then(|f| f.set_times(times))
        .with_context(|| format!("setting times of {}", path.display()))
}

fn overlay_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("overlay path {} is not UTF-8", p.display()))?;
    if !p.is_absolute() || s.contains([',', ':', '\\']) {
        bail!("overlay path {s:?} must be absolute and free of ',', ':' and '\\'");
    }
    Ok(s.to_string())
}

/// The kernel reads the mount options from one page.
const OPTIONS_MAX: usize = 4095;

fn overlay_options(
    lowers: &[String],
    upper: &Path,
    work: &Path,
    unprivileged: bool,
) -> Result<String> {
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={},index=off,metacopy=off",
        lowers.join(":"),
        overlay_path(upper)?,
        overlay_path(work)?
    );
    // Plain whiteouts and opaque xattrs only, so the layer code never sees
    // redirects or metacopy files. `userxattr` (the unprivileged mode) rules
    // out redirect_dir=off and already implies "nofollow".
    data.push_str(if unprivileged {
        ",userxattr"
    } else {
        ",redirect_dir=off"
    });
    Ok(data)
}

/// Mounts the overlay. When the lowers' full paths do not fit the kernel's
/// one-page option limit (a many-layer stage in a deep store), each lower
/// gets a short symlink `l/N` in `short_dir` and the mount names them
/// relative to it (overlay resolves lowerdir paths, symlinks followed,
/// against the caller's cwd, as docker's overlay2 driver does).
fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    unprivileged: bool,
    short_dir: Option<&Path>,
) -> Result<()> {
    let full: Vec<String> = lowers
        .iter()
        .map(|p| overlay_path(p))
        .collect::<Result<_>>()?;
    let mut data = overlay_options(&full, upper, work, unprivileged)?;
    let mut cwd_changed = false;
    if let (true, Some(dir)) = (data.len() > OPTIONS_MAX, short_dir) {
        let links = dir.join("l");
        mkdir(&links, 0o700)?;
        let mut short = Vec::with_capacity(lowers.len());
        for (i, lower) in lowers.iter().enumerate() {
            let link = links.join(i.to_string());
            std::os::unix::fs::symlink(lower, &link)
                .with_context(|| format!("creating {}", link.display()))?;
            short.push(format!("l/{i}"));
        }
        data = overlay_options(&short, upper, work, unprivileged)?;
        nix::unistd::chdir(dir).with_context(|| format!("chdir {}", dir.display()))?;
        cwd_changed = true;
    }
    let result = mount_overlay_data(target, &data, lowers.len());
    if cwd_changed {
        nix::unistd::chdir("/").context("chdir /")?;
    }
    result
}

/// Mounts the overlay `volatile` when the kernel has it (5.10+), else
/// without. Without `volatile`, tearing the overlay down (when the sandbox's
/// mount namespace dies) calls `syncfs` on the upper dir's filesystem: it
/// waits for every dirty page of that whole filesystem, the store's and
/// everyone else's, 20 ms to 0.8 s per RUN step on a busy host. Nothing needs
/// that sync: the upper dir is scratch that the engine reads into the layer
/// blob (fsynced by the blob writer) and then removes, and a crash mid-step
/// only leaves a temp dir the store sweeps. The work dir's
/// `work/incompat/volatile` marker goes with the work dir after each step.
fn mount_overlay_data(target: &Path, data: &str, lowers: usize) -> Result<()> {
    let volatile = format!("{data},volatile");
    if volatile.len() <= OPTIONS_MAX {
        match overlay_mount(target, &volatile) {
            // Only an option the kernel does not know falls back.
            Err(Errno::EINVAL) => {}
            other => {
                return other.with_context(|| {
                    format!("mounting overlay on {} ({volatile})", target.display())
                })
            }
        }
    }
    if data.len() > OPTIONS_MAX {
        bail!(
            "overlay options are {} bytes, over the kernel's 4095-byte limit ({} lower layers)",
            data.len(),
            lowers
        );
    }
    overlay_mount(target, data)
        .with_context(|| format!("mounting overlay on {} ({data})", target.display()))
}

fn overlay_mount(target: &Path, data: &str) -> nix::Result<()> {
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(data),
    )
}

const PROC_READONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];
const PROC_MASKED: &[&str] = &[
    "acpi",
    "asound",
    "interrupts",
    "kcore",
    "keys",
    "latency_stats",
    "sched_debug",
    "scsi",
    "timer_list",
    "timer_stats",
];

fn mount_proc(root: &OwnedFd, stubs: &mut Vec<String>) -> Result<()> {
    let fd = ensure(root, "/proc", Kind::Dir, stubs)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("proc"),
        fd_path(&fd).as_str(),
        Some("proc"),
        flags,
        NONE,
    )
    .context("mounting /proc")?;
    for name in PROC_READONLY {
        let rel = format!("proc/{name}");
        let Ok(fd) = paths::open_in_root(root, &rel) else {
            continue;
        };
        let p = fd_path(&fd);
        mount(
            Some(p.as_str()),
            p.as_str(),
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .with_context(|| format!("binding /{rel} read-only"))?;
        remount_readonly(root, &rel)?;
    }
    for name in PROC_MASKED {
        mask(root, &format!("proc/{name}"))?;
    }
    Ok(())
}

/// Hides a path: /dev/null over files, an empty read-only tmpfs over dirs.
fn mask(root: &OwnedFd, rel: &str) -> Result<()> {
    let Ok(fd) = paths::open_in_root(root, rel) else {
        return Ok(());
    };
    let st = nix::sys::stat::fstat(&fd).with_context(|| format!("stat /{rel}"))?;
    let p = fd_path(&fd);
    let res = if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        mount(
            Some("tmpfs"),
            p.as_str(),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            NONE,
        )
    } else {
        mount(Some("/dev/null"), p.as_str(), NONE, MsFlags::MS_BIND, NONE)
    };
    res.with_context(|| format!("masking /{rel}"))
}

/// Remounts the bind mount at `rel` read-only.
fn remount_readonly(root: &OwnedFd, rel: &str) -> Result<()> {
    remount_adding(root, rel, MsFlags::MS_RDONLY)
}

/// Remounts the bind mount at `rel` adding `extra`, keeping the flags the
/// kernel locks in a user namespace (nosuid, nodev, noexec, atime).
pub(super) fn remount_adding(root: &OwnedFd, rel: &str, extra: MsFlags) -> Result<()> {
    let fd = paths::open_in_root(root, rel).with_context(|| format!("reopening /{rel}"))?;
    let p = fd_path(&fd);
    let st = statvfs(p.as_str()).with_context(|| format!("statvfs /{rel}"))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    if st.flags().contains(FsFlags::ST_RDONLY) {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(NONE, p.as_str(), NONE, flags, NONE)
        .with_context(|| format!("remounting /{rel} with {extra:?}"))
}

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// /dev is a nodev tmpfs holding binds of the host's device nodes (a bind
/// keeps the host mount's permission to open devices). So no device node the
/// command creates (it has CAP_MKNOD, like docker) can be opened anywhere:
/// without a device cgroup that is what keeps real root off the host disks.
fn mount_dev(root: &OwnedFd, shm_size: Option<u64>, stubs: &mut Vec<String>) -> Result<()> {
    let fd = ensure(root, "/dev", Kind::Dir, stubs)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME;
    mount(
        Some("tmpfs"),
        fd_path(&fd).as_str(),
        Some("tmpfs"),
        flags,
        Some("mode=755,size=65536k"),
    )
    .context("mounting tmpfs on /dev")?;
    let dev = paths::open_in_root(root, "dev").context("reopening /dev")?;
    for name in DEVICES {
        bind_device(root, name)?;
    }
    let mut none = Vec::new();
    let pts = ensure(root, "/dev/pts", Kind::Dir, &mut none)?;
    let pts_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let pts_path = fd_path(&pts);
    mount(
        Some("devpts"),
        pts_path.as_str(),
        Some("devpts"),
        pts_flags,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .or_else(|_| {
        // gid 5 (tty) is unmapped in a single-id user namespace.
        mount(
            Some("devpts"),
            pts_path.as_str(),
            Some("devpts"),
            pts_flags,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )
    })
    .context("mounting devpts on /dev/pts")?;
    let shm = ensure(root, "/dev/shm", Kind::Dir, &mut none)?;
    let shm_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("shm"),
        fd_path(&shm).as_str(),
        Some("tmpfs"),
        shm_flags,
        // docker's default size; `--shm-size` changes it.
        Some(format!("mode=1777,size={}", shm_size.unwrap_or(64 << 20)).as_str()),
    )
    .context("mounting tmpfs on /dev/shm")?;
    for (target, name) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        symlinkat(target, &dev, name).with_context(|| format!("creating /dev/{name}"))?;
    }
    Ok(())
}

fn bind_device(root: &OwnedFd, name: &str) -> Result<()> {
    let mut none = Vec::new();
    let fd = ensure(root, &format!("/dev/{name}"), Kind::File, &mut none)?;
    let host = format!("/dev/{name}");
    mount(
        Some(host.as_str()),
        fd_path(&fd).as_str(),
        NONE,
        MsFlags::MS_BIND,
        NONE,
    )
    .with_context(|| format!("binding host {host}"))
}

/// Paths of /sys hidden as docker hides them: firmware tables (ACPI, EFI
/// variables) and the power-capping energy counters (a side channel).
const SYS_MASKED: &[&str] = &["firmware", "devices/virtual/powercap"];

fn mount_sys(root: &OwnedFd, network: NetworkMode, stubs: &mut Vec<String>) -> Result<()> {
    mount_sys_tree(root, network, stubs)?;
    for rel in SYS_MASKED {
        mask(root, &format!("sys/{rel}"))?;
    }
    Ok(())
}

fn mount_sys_tree(root: &OwnedFd, network: NetworkMode, stubs: &mut Vec<String>) -> Result<()> {
    let fd = ensure(root, "/sys", Kind::Dir, stubs)?;
    let p = fd_path(&fd);
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    match mount(Some("sysfs"), p.as_str(), Some("sysfs"), flags, NONE) {
        Ok(()) => Ok(()),
        // A user namespace that does not own the network namespace (host
        // network, rootless) may not mount sysfs: bind the host's instead.
        // Its submounts (the cgroup tree above all, which a rootless
        // user's session may own) are made read-only with it: a remount
        // changes the top mount only, and a writable cgroup tree let the
        // step kill the user's session or leave its own limits.
        Err(Errno::EPERM) if network == NetworkMode::Host => {
            mount(
                Some("/sys"),
                p.as_str(),
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            )
            .context("binding host /sys")?;
            // Opened again: `fd` is the dir under the new mount.
            let bound = paths::open_in_root(root, "sys").context("reopening /sys")?;
            let path = std::ffi::CString::new(fd_path(&bound)).context("the /sys mount's path")?;
            if super::sys::lock_tree_readonly(&path).is_ok() {
                return Ok(());
            }
            // A kernel before 5.12: /sys alone, without its submounts.
            nix::mount::umount2(fd_path(&bound).as_str(), nix::mount::MntFlags::MNT_DETACH)
                .context("unbinding host /sys")?;
            drop(bound);
            mount(Some("/sys"), p.as_str(), NONE, MsFlags::MS_BIND, NONE)
                .context("binding host /sys")?;
            remount_readonly(root, "sys")
        }
        Err(e) => Err(e).context("mounting sysfs on /sys"),
    }
}

/// Mounts `m`; a [`MountSpec::File`] is first written to `file` (on the
/// private state tmpfs).
fn mount_user(root: &OwnedFd, m: &MountSpec, file: &Path, stubs: &mut Vec<String>) -> Result<()> {
    match m {
        MountSpec::Bind {
            source,
            target,
            readonly,
        } => {
            let kind = if source.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            let fd = ensure(root, target, kind, stubs)?;
            mount(
                Some(source),
                fd_path(&fd).as_str(),
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            )
            .with_context(|| format!("bind-mounting {} on {target}", source.display()))?;
            // nodev: a device node made in a cache dir must not open either.
            let mut extra = MsFlags::MS_NODEV;
            if *readonly {
                extra |= MsFlags::MS_RDONLY;
            }
            remount_adding(root, &paths::components(target)?.join("/"), extra)
        }
        MountSpec::Tmpfs { target, size } => {
            let fd = ensure(root, target, Kind::Dir, stubs)?;
            let mut data = "mode=1777".to_string();
            if let Some(size) = size {
                data.push_str(&format!(",size={size}"));
            }
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            mount(
                Some("tmpfs"),
                fd_path(&fd).as_str(),
                Some("tmpfs"),
                flags,
                Some(data.as_str()),
            )
            .with_context(|| format!("mounting tmpfs on {target}"))
        }
        MountSpec::File {
            target,
            content,
            uid,
            gid,
            mode,
        } => files::mount_file(root, target, file, &content.0, (*uid, *gid, *mode), stubs),
    }
}

/// `pivot_root(".", ".")` then detach the old root stacked below (the
/// youki/runc way, no temporary dir needed).
fn pivot(root: &OwnedFd) -> Result<()> {
    let dir = paths::open_in_root(root, "")?;
    let real = open(
        fd_path(&dir).as_str(),
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context("opening the new root")?;
    fchdir(&real).context("entering the new root")?;
    pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the old root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> (tempfile::TempDir, Vec<PathBuf>) {
        let tmp = tempfile::tempdir().unwrap();
        let (top, bottom) = (tmp.path().join("top"), tmp.path().join("bottom"));
        fs::create_dir_all(bottom.join("etc")).unwrap();
        fs::create_dir_all(bottom.join("gone/sub")).unwrap();
        fs::set_permissions(bottom.join("etc"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::write(bottom.join("etc/hosts"), "x").unwrap();
        fs::create_dir_all(&top).unwrap();
        std::os::unix::fs::symlink("/elsewhere", top.join("link")).unwrap();
        (tmp, vec![top, bottom])
    }

    #[test]
    fn lookup_follows_overlay_rules() {
        let (_tmp, lowers) = layers();
        assert!(matches!(lookup(&lowers, &["etc"]), Found::Dir(_)));
        assert!(matches!(lookup(&lowers, &["etc", "hosts"]), Found::Other));
        assert!(matches!(lookup(&lowers, &["link", "x"]), Found::Other));
        assert!(matches!(lookup(&lowers, &["nothing"]), Found::Absent));
        assert!(matches!(lookup(&lowers, &["gone", "sub"]), Found::Dir(_)));
        // A whiteout (0/0 char device, needs CAP_MKNOD) in the top layer
        // hides the bottom layer's dir.
        let wh = lowers[0].join("gone");
        if nix::sys::stat::mknod(&wh, SFlag::S_IFCHR, Mode::empty(), 0).is_ok() {
            assert!(matches!(lookup(&lowers, &["gone", "sub"]), Found::Absent));
            assert!(matches!(lookup(&lowers, &["gone"]), Found::Absent));
        }
    }

    #[test]
    fn stub_lower_copies_image_dir_metadata_and_skips_existing() {
        let (tmp, lowers) = layers();
        let stub = tmp.path().join("stub");
        fs::create_dir(&stub).unwrap();
        let mut copied = Vec::new();
        for (target, kind) in [
            ("/etc/resolv.conf", Kind::File),
            ("/etc/hosts", Kind::File),
            ("/proc", Kind::Dir),
            ("/link/x", Kind::Dir),
        ] {
            stub_lower(&lowers, &stub, target, kind, &mut copied).unwrap();
        }
        for (path, meta) in copied.iter().rev() {
            copy_times(path, meta).unwrap();
        }
        let etc = fs::metadata(stub.join("etc")).unwrap();
        assert_eq!(etc.mode() & 0o7777, 0o751);
        assert_eq!(
            etc.modified().unwrap(),
            fs::metadata(lowers[1].join("etc"))
                .unwrap()
                .modified()
                .unwrap()
        );
        assert!(stub.join("etc/resolv.conf").is_file());
        assert!(!stub.join("etc/hosts").exists(), "exists in the image");
        assert!(stub.join("proc").is_dir());
        assert!(
            !stub.join("link").exists(),
            "symlinks are left to in-root creation"
        );
    }

    #[test]
    fn overlay_paths_with_separators_are_refused() {
        assert!(overlay_path(Path::new("/a:b")).is_err());
        assert!(overlay_path(Path::new("/a,b")).is_err());
        assert!(overlay_path(Path::new("rel")).is_err());
        assert_eq!(overlay_path(Path::new("/a/b")).unwrap(), "/a/b");
    }
}
