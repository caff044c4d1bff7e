//! Path handling inside the new root before `pivot_root`: every lookup goes
//! through `openat2(RESOLVE_IN_ROOT)` on a handle of the root, so a symlink
//! or `..` in the image can never point a mount or a created file outside it.
//! Mounts then target the opened handle via `/proc/self/fd/N`.

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
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
    openat2(root, rel, how(OFlag::O_PATH))
}

/// The `/proc/self/fd/N` path that names an open handle (a mount target).
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Opens `path` inside `root`, creating missing components (dirs 0755, a
/// final file 0644, owned by the caller), and records each created path in
/// `created`. Fails if the existing final component is of the wrong kind.
pub fn ensure(
    root: &OwnedFd,
    path: &str,
    kind: Kind,
    created: &mut Vec<String>,
) -> Result<OwnedFd> {
    let parts = components(path)?;
    for i in 0..parts.len() {
        let prefix = parts[..=i].join("/");
        match open_in_root(root, &prefix) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("opening {path} in the rootfs")),
        }
        let parent = open_in_root(root, &parts[..i].join("/"))
            .with_context(|| format!("opening the parent of /{prefix} in the rootfs"))?;
        let name = parts[i];
        let last = i + 1 == parts.len();
        if last && kind == Kind::File {
            let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW;
            let how = OpenHow::new()
                .flags(flags | OFlag::O_CLOEXEC)
                .mode(Mode::from_bits_truncate(0o644))
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            openat2(&parent, name, how)
                .with_context(|| format!("creating mount point file /{prefix} in the rootfs"))?;
        } else {
            match mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) => {}
                // ENOENT on open but EEXIST on mkdir: a dangling symlink.
                Err(Errno::EEXIST) => bail!(
                    "mount point {path}: /{prefix} is a symlink to a missing target in the rootfs"
                ),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("creating mount point dir /{prefix} in the rootfs")
                    })
                }
            }
        }
        created.push(format!("/{prefix}"));
    }
    let fd = open_in_root(root, &parts.join("/"))
        .with_context(|| format!("opening mount point {path} in the rootfs"))?;
    check_kind(&fd, path, kind)?;
    Ok(fd)
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
        // An absolute symlink to a host dir means that path *inside* the root:
        // dangling there, so creating below it is refused, not done outside.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("/real", dir.path().join("good")).unwrap();
        std::os::unix::fs::symlink("../../../../..", dir.path().join("up")).unwrap();
        let root = root_fd(dir.path());
        let mut created = Vec::new();
        let err = ensure(&root, "/link/x", Kind::Dir, &mut created).unwrap_err();
        assert!(format!("{err:#}").contains("symlink"), "{err:#}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        ensure(&root, "/good/x", Kind::Dir, &mut created).unwrap();
        assert!(dir.path().join("real/x").is_dir());
        // `..` through a symlink is clamped at the root.
        ensure(&root, "/up/escaped", Kind::Dir, &mut created).unwrap();
        assert!(dir.path().join("escaped").is_dir());
        assert_eq!(created, vec!["/good/x", "/up/escaped"]);
    }
}
