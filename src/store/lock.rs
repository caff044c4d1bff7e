//! `flock(2)` locks: whole-file advisory locks that the kernel drops when the
//! holder dies, so a crashed rbuild never leaves the store locked.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// A held lock; released on drop.
pub struct LockGuard {
    _lock: Flock<File>,
}

/// Open (creating) `path` and take an exclusive lock, waiting for it.
pub fn lock_exclusive(path: &Path) -> anyhow::Result<LockGuard> {
    lock_file(path, FlockArg::LockExclusive)
}

/// Open (creating) `path` and take a shared lock, waiting for it.
pub fn lock_shared(path: &Path) -> anyhow::Result<LockGuard> {
    lock_file(path, FlockArg::LockShared)
}

/// Try to take an exclusive lock without waiting; `None` if someone holds it.
pub fn try_lock_exclusive(path: &Path) -> anyhow::Result<Option<LockGuard>> {
    let file = open_lock_file(path)?;
    match try_flock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(LockGuard { _lock: lock })),
        Err(Errno::EWOULDBLOCK) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// Lock an already open file (or directory) without waiting.
pub fn try_flock(file: File, arg: FlockArg) -> Result<Flock<File>, Errno> {
    Flock::lock(file, arg).map_err(|(_, e)| e)
}

fn open_lock_file(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a symlink: a lock file planted as a link (in a cache
    // dir someone else filled) would create or open a file elsewhere.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| {
            format!(
                "opening lock file {} (a symlink is refused)",
                path.display()
            )
        })
}

fn lock_file(path: &Path, arg: FlockArg) -> anyhow::Result<LockGuard> {
    let mut file = open_lock_file(path)?;
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(LockGuard { _lock: lock }),
            // A signal interrupted the wait: wait again.
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}
