//! The messages between `run` (parent) and the sandbox setup process: the
//! request goes as one JSON line on the helper's stdin, reports come back as
//! JSON lines on fd 3 (each short enough for one atomic pipe write). The request carries secret bytes
//! ([`super::MountSpec::File`]): a pipe, never a file.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::RunSpec;

/// What the setup process must do.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub spec: RunSpec,
    /// Unshare a user namespace first (rootless); the parent writes the maps.
    pub userns: bool,
    /// Not real root (a new user namespace, or root inside an existing
    /// one): overlayfs must use `userxattr`.
    pub unprivileged: bool,
    /// A private, empty directory the setup process mounts a tmpfs on for
    /// its own files (extra lower layer, extra files, the new root).
    pub state_dir: PathBuf,
    /// Only check that an overlay can be mounted (in `state_dir`), then exit.
    pub probe_overlay: bool,
}

/// A message from the setup process, its init or the command's child.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    /// The user namespace exists (if requested): write the id maps, then
    /// send the go byte.
    Ready,
    /// A mount point had to be created in the rootfs itself.
    Stub { path: String },
    /// Setup or exec failed.
    Error { message: String },
    /// The command finished with this status.
    Exit { code: i32 },
    /// Init itself died without reporting (e.g. killed by a signal).
    InitDied { status: String },
}

/// Writes one report line; errors are ignored because the only reader is
/// the parent, and if it is gone nobody is left to tell.
pub fn send(out: &File, report: &Report) {
    if let Ok(mut line) = serde_json::to_vec(report) {
        line.push(b'\n');
        let _ = (&*out).write_all(&line);
    }
}

/// The go byte the parent writes after the id maps.
pub const GO: &[u8] = b"g\n";
