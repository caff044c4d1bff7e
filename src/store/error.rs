//! What can make a store unsafe to use, each naming the path at fault and
//! what to do about it.

use std::path::PathBuf;

/// Errors of opening the store that a caller (or a test) may tell apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store {} is not a directory", path.display())]
    RootNotADir { path: PathBuf },
    #[error(
        "the store {} is owned by uid {owner}, not by you (uid {euid}) or root: \
         its owner could replace what rbuild keeps there\n\
         hint: use a --root you own (or chown it)",
        path.display()
    )]
    RootNotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "the store {} is writable by other users (mode {mode:04o}): they could replace \
         what rbuild keeps there\nhint: chmod go-w {}, or use another --root",
        path.display(),
        path.display()
    )]
    RootWritableByOthers { path: PathBuf, mode: u32 },
    #[error(
        "the store's private dir {} is a symlink or not a directory: rbuild keeps \
         build files there and will not follow it\nhint: remove it (rbuild recreates it), \
         or use another --root",
        path.display()
    )]
    PrivateNotADir { path: PathBuf },
    #[error(
        "the store's private dir {} is owned by uid {owner}, not by you (uid {euid}): \
         rbuild keeps setuid files and device nodes of builds there and will not share it\n\
         hint: use a --root of your own, or run rbuild as its owner",
        path.display()
    )]
    PrivateNotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    /// A file of the store's own state does not parse: reported as corrupt,
    /// never read as "absent" (which would hide it or lose what it named).
    #[error("the store's {what} {} is corrupt: {why}\nhint: {hint}", path.display())]
    Corrupt {
        /// What the file is, e.g. "index" or "cache record".
        what: &'static str,
        path: PathBuf,
        why: String,
        /// What the user can do about it.
        hint: &'static str,
    },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
