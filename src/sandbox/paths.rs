//! Path handling inside the new root before `pivot_root`: every lookup goes
//! through `openat2(RESOLVE_IN_ROOT)` on a handle of the root, so a symlink
//! or `..` in the image can never point a mount or a created file outside it.
//! Mounts then target the opened handle via `/proc/self/fd/N`.

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

/// What a mount point must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// The normal components of an absolute in-rootfs path; `..` is refused
/// (callers pass clean absolute paths; `..` would only hide mistakes).
pub fn components(path: &str) -> Result<Vec<&str>> {
    if !path.starts_with('/') {
        bail!("path {path:?} inside the rootfs must be absolute");
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        bail!("path {path:?} inside the rootfs must not contain `..`");
    }
    Ok(parts)
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens `rel` (components joined by `/`) as an `O_PATH` handle, resolving
/// symlinks as if `root` were `/`.
pub fn open_in_root(root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    // EAGAIN: a rename or mount anywhere on the host raced a lookup through
    // `..` (RESOLVE_IN_ROOT checks the global seqcounts); openat2(2) asks the
    // caller to retry. Bounded: a host busy enough to fail 1000 times in a
    // row gets the error.
    let mut tries = 0;
    loop {
        match openat2(root, rel, how(OFlag::O_PATH)) {
            Err(nix::errno::Errno::EAGAIN) if tries < 1000 => tries += 1,
            other => return other,
        }
    }
}

/// The `/proc/self/fd/N` path that names an open handle (a mount target).
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Opens `path` inside `root`, creating missing components (dirs 0755, a
/// final file 0644, owned by the caller), and records each created path
/// (symlinks resolved) in `created`. Fails if the existing final component
/// is of the wrong kind.
pub fn ensure(
    root: &OwnedFd,
    path: &str,
    kind: Kind,
    created: &mut Vec<String>,
) -> Result<OwnedFd> {
    ensure_depth(root, path, kind, created, 0)
}

/// How many dangling symlinks `ensure` follows before giving up (loops).
const MAX_LINKS: usize = 16;

fn ensure_depth(
    root: &OwnedFd,
    path: &str,
    kind: Kind,
    created: &mut Vec<String>,
    depth: usize,
) -> Result<OwnedFd> {
    let parts = components(path)?;
    for i in 0..parts.len() {
        let prefix = parts[..=i].join("/");
        match open_in_root(root, &prefix) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("opening {path} in the rootfs")),
        }
        let parent_rel = parts[..i].join("/");
        let parent = open_in_root(root, &parent_rel)
            .with_context(|| format!("opening the parent of /{prefix} in the rootfs"))?;
        let want = if i + 1 == parts.len() {
            kind
        } else {
            Kind::Dir
        };
        match create_entry(&parent, parts[i], want) {
            Ok(()) => created.push(real_path(root, &prefix)?),
            // ENOENT on open but EEXIST on create: a dangling symlink. Make
            // its target (resolved inside the root), like docker does.
            Err(Errno::EEXIST) if depth < MAX_LINKS => {
                let target = readlinkat(&parent, parts[i])
                    .with_context(|| format!("reading symlink /{prefix} in the rootfs"))?;
                let base = real_path(root, &parent_rel)?;
                let target = resolve_link(&base, &target.to_string_lossy());
                ensure_depth(root, &target, want, created, depth + 1)?;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating mount point /{prefix} in the rootfs"))
            }
        }
    }
    let fd = open_in_root(root, &parts.join("/"))
        .with_context(|| format!("opening mount point {path} in the rootfs"))?;
    check_kind(&fd, path, kind)?;
    Ok(fd)
}

/// Creates `name` in `parent` without following a symlink there.
fn create_entry(parent: &OwnedFd, name: &str, kind: Kind) -> nix::Result<()> {
    match kind {
        Kind::Dir => mkdirat(parent, name, Mode::from_bits_truncate(0o755)),
        Kind::File => {
            let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW;
            let how = OpenHow::new()
                .flags(flags | OFlag::O_CLOEXEC)
                .mode(Mode::from_bits_truncate(0o644))
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            openat2(parent, name, how).map(drop)
        }
    }
}

/// The absolute in-root path a symlink in dir `base` pointing to `target`
/// names, with `.` and `..` folded (`..` stops at the root, as in the
/// kernel's RESOLVE_IN_ROOT).
pub fn resolve_link(base: &str, target: &str) -> String {
    let joined = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("{base}/{target}")
    };
    let mut out: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    format!("/{}", out.join("/"))
}

/// Where `rel` really is inside the root, with symlinks resolved, as an
/// absolute in-rootfs path (what the layer code must look for).
fn real_path(root: &OwnedFd, rel: &str) -> Result<String> {
    let fd = open_in_root(root, rel).with_context(|| format!("reopening /{rel}"))?;
    let root_path = std::fs::read_link(fd_path(root)).context("resolving the root's path")?;
    let path = std::fs::read_link(fd_path(&fd)).with_context(|| format!("resolving /{rel}"))?;
    let inside = path
        .strip_prefix(&root_path)
        .with_context(|| format!("/{rel} resolved outside the root"))?;
    Ok(format!("/{}", inside.display()))
}

fn check_kind(fd: &OwnedFd, path: &str, kind: Kind) -> Result<()> {
    let st = fstat(fd).with_context(|| format!("stat of mount point {path}"))?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    match (kind, is_dir) {
        (Kind::Dir, false) => {
            bail!("mount point {path} exists in the rootfs but is not a directory")
        }
        (Kind::File, true) => bail!("mount point {path} exists in the rootfs but is a directory"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::open;

    fn root_fd(dir: &std::path::Path) -> OwnedFd {
        open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn components_refuse_relative_and_dotdot() {
        assert_eq!(components("/etc//hosts/.").unwrap(), vec!["etc", "hosts"]);
        assert!(components("etc/hosts").is_err());
        assert!(components("/etc/../../x").is_err());
    }

    #[test]
    fn ensure_creates_missing_components_and_records_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let root = root_fd(dir.path());
        let mut created = Vec::new();
        ensure(&root, "/etc/sub/file", Kind::File, &mut created).unwrap();
        assert_eq!(created, vec!["/etc/sub", "/etc/sub/file"]);
        assert!(dir.path().join("etc/sub/file").is_file());
        assert!(ensure(&root, "/etc/sub", Kind::File, &mut created).is_err());
    }

    #[test]
    fn ensure_keeps_symlinks_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // An absolute symlink to a host dir means that path *inside* the
        // root: dangling there, so it is created inside, never outside.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("/real", dir.path().join("good")).unwrap();
        std::os::unix::fs::symlink("../../../../..", dir.path().join("up")).unwrap();
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        let root = root_fd(dir.path());
        let mut created = Vec::new();
        ensure(&root, "/link/x", Kind::Dir, &mut created).unwrap();
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        let inner = outside.path().strip_prefix("/").unwrap();
        assert!(dir.path().join(inner).join("x").is_dir());
        ensure(&root, "/good/x", Kind::Dir, &mut created).unwrap();
        assert!(dir.path().join("real/x").is_dir());
        // `..` through a symlink is clamped at the root.
        ensure(&root, "/up/escaped", Kind::Dir, &mut created).unwrap();
        assert!(dir.path().join("escaped").is_dir());
        assert!(ensure(&root, "/loop/x", Kind::Dir, &mut created).is_err());
        // Created paths are reported where they really are.
        let first = format!(
            "/{}",
            inner
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
        );
        assert_eq!(created[0], first);
        assert_eq!(
            created[created.len() - 3..],
            [
                "/link/x".replace("/link", &format!("/{}", inner.display())),
                "/real/x".into(),
                "/escaped".into()
            ]
        );
    }

    #[test]
    fn resolve_link_folds_dots_and_clamps_at_root() {
        assert_eq!(resolve_link("/var", "../run"), "/run");
        assert_eq!(resolve_link("/var", "/a/./b/../c"), "/a/c");
        assert_eq!(resolve_link("/", "../../etc"), "/etc");
        assert_eq!(resolve_link("/a/b", "c"), "/a/b/c");
    }
}
