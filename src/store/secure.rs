//! The store's boundary against other host users.
//!
//! The OCI layout part (root, `blobs/`, `index.json`, `oci-layout`) stays
//! world-readable: skopeo and umoci read it, and a setuid bit inside a blob
//! is only bytes of a tar stream. Everything else (`rbuild/`: stage files
//! unpacked with their setuid bits and device nodes, RUN upper dirs, cache
//! mounts) sits below one dir that is 0700 and ours, as containers/storage
//! and BuildKit keep theirs, so no other user can reach, run or open it.
//!
//! A root someone else owns or may write to is refused: they could swap
//! `rbuild/` (or `blobs/`) for their own between our checks and our use.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::StoreError;

/// The dirs directly in `rbuild/` that an older rbuild made 0755, tightened
/// when the store is migrated (a process that kept one as its cwd would
/// otherwise keep reaching into it).
const KNOWN_SUBDIRS: &[&str] = &[
    "tmp",
    "cache",
    "statcache",
    "cachemounts",
    "layers",
    "registry",
];

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Create `root` if needed and return its real path (symlinks resolved, so
/// what was checked is what is used), once it is a directory owned by us or
/// root that no one else may write to.
pub(crate) fn checked_root(root: &Path) -> Result<PathBuf, StoreError> {
    fs::create_dir_all(root).map_err(|e| StoreError::io("create the store", root, e))?;
    let real = fs::canonicalize(root).map_err(|e| StoreError::io("resolve the store", root, e))?;
    let meta = fs::metadata(&real).map_err(|e| StoreError::io("stat the store", &real, e))?;
    if !meta.is_dir() {
        return Err(StoreError::RootNotADir { path: real });
    }
    let (owner, me) = (meta.uid(), euid());
    if owner != me && owner != 0 {
        return Err(StoreError::RootNotOwned {
            path: real,
            owner,
            euid: me,
        });
    }
    // Sticky does not help: another user could still create `rbuild/` or
    // `blobs/` here first.
    if meta.mode() & 0o022 != 0 {
        return Err(StoreError::RootWritableByOthers {
            path: real,
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(real)
}

/// Make `path` (the store's `rbuild/`) a 0700 directory of ours. One an
/// older rbuild left reachable by others is tightened (with a notice);
/// someone else's, or a symlink, is refused.
pub(crate) fn private_root(path: &Path, notices: &mut Vec<String>) -> Result<(), StoreError> {
    let dir = open_private(path)?;
    let meta = dir
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?;
    let (owner, me) = (meta.uid(), euid());
    if owner != me {
        return Err(StoreError::PrivateNotOwned {
            path: path.to_path_buf(),
            owner,
            euid: me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    // Through the descriptor: the dir we checked is the dir we change.
    dir.set_permissions(Permissions::from_mode(0o700))
        .map_err(|e| StoreError::io("restrict", path, e))?;
    for name in KNOWN_SUBDIRS {
        tighten_subdir(&path.join(name))?;
    }
    notices.push(format!(
        "{} was mode {mode:04o}, so other users could reach build files in it \
         (setuid binaries, device nodes, cache mounts); it is now 0700",
        path.display()
    ));
    Ok(())
}

/// Create `path` 0700 unless it exists, and open it without following a
/// symlink in its place.
fn open_private(path: &Path) -> Result<File, StoreError> {
    make_private_dir(path)?;
    let not_dir = || StoreError::PrivateNotADir {
        path: path.to_path_buf(),
    };
    let meta = fs::symlink_metadata(path).map_err(|e| StoreError::io("stat", path, e))?;
    if !meta.is_dir() {
        return Err(not_dir());
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => not_dir(),
            _ => StoreError::io("open", path, e),
        })
}

/// Create `path` with mode 0700 if it does not exist (its parent must).
pub(crate) fn make_private_dir(path: &Path) -> Result<(), StoreError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::io("create", path, e)),
    }
}

fn tighten_subdir(path: &Path) -> Result<(), StoreError> {
    let dir = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(d) => d,
        // Missing (made 0700 when first needed) or not a plain dir of ours:
        // below a 0700 rbuild/ it is out of reach either way.
        Err(_) => return Ok(()),
    };
    let meta = dir
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?;
    if meta.uid() == euid() && meta.mode() & 0o077 != 0 {
        dir.set_permissions(Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io("restrict", path, e))?;
    }
    Ok(())
}
