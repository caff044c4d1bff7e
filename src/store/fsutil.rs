//! Atomic file writes and the temp area.
//!
//! Every temp file or dir lives in `rbuild/tmp/` (same filesystem as the
//! store, so `rename` is atomic) and holds a `flock` for as long as its
//! owner is alive. The cleaner deletes only temps it can lock, i.e. those
//! whose owner died; `rbuild/tmp.lock` closes the gap between creating a
//! temp and locking it (creators hold it shared, the cleaner exclusive).
//!
//! The lock is an open file description held by the rbuild process itself
//! (the guard), opened close-on-exec: a sandbox child neither needs it nor
//! could release it by closing its descriptors, so the temp stays locked
//! exactly as long as its guard lives.

use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tempfile::{NamedTempFile, TempDir};

use super::lock::{lock_exclusive, lock_shared, try_flock};

/// A temp file in the store's temp area, locked while alive, removed on drop.
pub struct TempFile {
    pub(super) file: NamedTempFile,
    _lock: Flock<File>,
}

/// A 0700 temp dir in the store's temp area, locked while alive, removed
/// (with everything in it) on drop.
pub struct LockedTempDir {
    pub(super) dir: TempDir,
    _lock: Flock<File>,
}

impl LockedTempDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl std::fmt::Debug for LockedTempDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LockedTempDir").field(&self.path()).finish()
    }
}

fn tmp_lock(tmp_dir: &Path) -> PathBuf {
    tmp_dir.with_extension("lock")
}

/// Create a locked temp file in `tmp_dir`.
pub fn temp_file(tmp_dir: &Path, prefix: &str) -> anyhow::Result<TempFile> {
    let _gate = lock_shared(&tmp_lock(tmp_dir))?;
    // Blobs and exports are renamed from here: give them normal file modes
    // (tempfile's default is 0600).
    let file = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(Permissions::from_mode(0o644))
        .tempfile_in(tmp_dir)
        .with_context(|| format!("creating a temp file in {}", tmp_dir.display()))?;
    let dup = file
        .as_file()
        .try_clone()
        .context("duplicating a temp file handle")?;
    let lock = try_flock(dup, FlockArg::LockExclusiveNonblock)
        .map_err(|e| anyhow::anyhow!("locking temp file {}: {e}", file.path().display()))?;
    Ok(TempFile { file, _lock: lock })
}

/// Create a locked temp dir in `tmp_dir`.
pub fn temp_dir(tmp_dir: &Path, prefix: &str) -> anyhow::Result<LockedTempDir> {
    let _gate = lock_shared(&tmp_lock(tmp_dir))?;
    // 0700 even though `tmp/` is private: what a build puts here (setuid
    // files, device nodes) must stay out of reach if the store is ever
    // loosened. A dir that needs its own mode (a rootfs) is made inside.
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(tmp_dir)
        .with_context(|| format!("creating a temp dir in {}", tmp_dir.display()))?;
    let handle = File::open(dir.path())
        .with_context(|| format!("opening temp dir {}", dir.path().display()))?;
    let lock = try_flock(handle, FlockArg::LockExclusiveNonblock)
        .map_err(|e| anyhow::anyhow!("locking temp dir {}: {e}", dir.path().display()))?;
    Ok(LockedTempDir { dir, _lock: lock })
}

impl TempFile {
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn as_file(&self) -> &File {
        self.file.as_file()
    }

    pub fn as_file_mut(&mut self) -> &mut File {
        self.file.as_file_mut()
    }

    /// fsync the data, then rename over `dest` and fsync its directory.
    pub fn persist(self, dest: &Path) -> anyhow::Result<()> {
        self.file
            .as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", self.file.path().display()))?;
        self.file
            .persist(dest)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming a temp file to {}", dest.display()))?;
        sync_parent(dest)
    }

    /// Rename over `dest` with no fsync at all: for files a crash may lose
    /// or leave empty because every reader treats that as "not there"
    /// (cache records: a miss). The rename still never shows a half-written
    /// file to a running process.
    pub fn replace_unsynced(self, dest: &Path) -> anyhow::Result<()> {
        self.file
            .persist(dest)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming a temp file to {}", dest.display()))?;
        Ok(())
    }
}

/// [`atomic_write`] without the fsyncs (see [`TempFile::replace_unsynced`]).
pub fn atomic_write_unsynced(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = temp_file(tmp_dir, "write-")?;
    tmp.file
        .write_all(bytes)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.replace_unsynced(dest)
}

/// fsync the directory holding `path` so a rename into it survives a crash.
pub fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let dir = File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
    dir.sync_all()
        .with_context(|| format!("syncing directory {}", parent.display()))
}

/// Write `bytes` to `dest` atomically (temp file in `tmp_dir`, fsync, rename).
pub fn atomic_write(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = temp_file(tmp_dir, "write-")?;
    tmp.file
        .write_all(bytes)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(dest)
}

/// The paths in `dir`; none when it does not exist (yet).
pub fn list_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    entries
        .map(|e| {
            e.map(|e| e.path())
                .with_context(|| format!("listing {}", dir.display()))
        })
        .collect()
}

/// Remove temps whose owners died; returns how many were removed. Temps
/// that could not be removed are described in `left`.
pub fn clean_temps(tmp_dir: &Path, left: &mut Vec<String>) -> anyhow::Result<usize> {
    let _gate = lock_exclusive(&tmp_lock(tmp_dir))?;
    let mut removed = 0;
    for path in list_dir(tmp_dir)? {
        // A leftover we cannot remove (e.g. files a rootless RUN created with
        // other ids) must not stop the store from opening: it is only space.
        match remove_if_abandoned(&path) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => left.push(format!("leaving temp {}: {e:#}", path.display())),
        }
    }
    Ok(removed)
}

fn remove_if_abandoned(path: &Path) -> anyhow::Result<bool> {
    let Ok(handle) = File::open(path) else {
        // Vanished meanwhile, or unreadable: nothing we can judge.
        return Ok(false);
    };
    let is_dir = handle
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .is_dir();
    match try_flock(handle, FlockArg::LockExclusiveNonblock) {
        Ok(_lock) => {
            let res = if is_dir {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            match res {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        Err(Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}
