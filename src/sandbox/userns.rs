//! Rootless builds, the `buildah unshare` model: an ordinary user with a
//! subuid/subgid range re-executes rbuild inside a new user namespace (and
//! mount namespace) where uid/gid 0 is the user and 1.. is the range. In
//! there rbuild is "root": unpacking chowns to the image's ids, the overlay
//! upper dirs of RUN steps are readable and removable, and the sandbox adds
//! no nested user namespace (see [`in_user_namespace`]).
//!
//! The child is `exe USERNS_ARG args…`; it enters the namespaces between
//! fork and exec (`sys::prepare_userns_command`) while a thread of the
//! parent writes the maps with `newuidmap`/`newgidmap`. The parent then
//! only forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT and passes the exit status
//! on; the child dies with it (`PR_SET_PDEATHSIG`).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::{pipe2, Pid};

use super::{idmap, sys};

/// The hidden first argument of an rbuild re-executed inside its user
/// namespace: `main` strips it and must not re-execute again.
pub const USERNS_ARG: &str = "__rbuild-userns";

/// Whether this process runs in a user namespace other than the initial
/// one (its uid map is not the identity over all ids). Root there is not
/// real root: no device nodes, no `trusted.*` xattrs, overlayfs only with
/// `userxattr`.
pub fn in_user_namespace() -> bool {
    static IN_USERNS: OnceLock<bool> = OnceLock::new();
    *IN_USERNS.get_or_init(|| match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => !is_initial_map(&map),
        // No /proc: assume the initial namespace (nothing to adapt).
        Err(_) => false,
    })
}

/// The initial user namespace maps every id to itself in one line.
fn is_initial_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| !f.is_empty())
        .collect();
    matches!(lines.as_slice(), [f] if f.as_slice() == ["0", "0", "4294967295"])
}

/// Runs `exe USERNS_ARG args…` inside a new user and mount namespace with
/// the caller's full subuid/subgid mapping, with `env` added to the
/// environment, and waits for it. stdin/stdout/stderr are shared.
///
/// `Err` means the namespace could not be set up (no range, `newuidmap`
/// missing or refusing): the child never ran and the caller should go on
/// without it. `Ok` is the child's exit status.
pub fn run_in_userns(
    exe: &Path,
    args: &[OsString],
    env: &[(&str, OsString)],
) -> Result<ExitStatus> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let (u, g) = idmap::user_ranges(uid)?;
    let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC).context("creating the userns pipe")?;
    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC).context("creating the userns pipe")?;
    // `spawn` returns only after the child's exec, so the maps must be
    // written by another thread while it waits in `pre_exec`.
    let mapper = std::thread::spawn(move || -> Result<()> {
        let (mut ready, mut go) = (File::from(ready_r), File::from(go_w));
        let mut pid = [0u8; 4];
        ready
            .read_exact(&mut pid)
            .context("the re-executed rbuild stopped before entering its user namespace")?;
        let result = idmap::write_range_maps(u32::from_ne_bytes(pid), uid, gid, u, g);
        // A failed write means the child is gone; spawn reports that.
        let _ = go.write_all(if result.is_ok() { b"g" } else { b"n" });
        result
    });
    let mut cmd = Command::new(exe);
    cmd.arg(USERNS_ARG).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    sys::prepare_userns_command(
        &mut cmd,
        ready_w.as_raw_fd(),
        go_r.as_raw_fd(),
        std::process::id(),
    );
    let spawned = cmd.spawn();
    // Our copies of the child's ends: closing them gives the mapper EOF if
    // the child failed before writing its pid.
    drop((ready_w, go_r));
    let mapped = match mapper.join() {
        Ok(r) => r,
        Err(_) => bail!("the id-mapping thread panicked"),
    };
    let mut child = match (spawned, mapped) {
        (Ok(child), _) => child,
        (Err(e), Ok(())) => {
            return Err(e)
                .with_context(|| format!("re-executing {} in a user namespace", exe.display()))
        }
        (Err(_), Err(map_err)) => return Err(map_err),
    };
    let pid = Pid::from_raw(child.id() as i32);
    forward_signals(pid);
    child
        .wait()
        .context("waiting for rbuild in its user namespace")
}

/// Blocks the usual termination signals in this thread (so the parent
/// outlives the child and reports its status) and forwards them to `child`
/// from a helper thread. Ctrl-C reaches the child directly too (same
/// process group); a second SIGINT is harmless.
fn forward_signals(child: Pid) {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return; // Signals then just kill the parent; the child dies with it.
    }
    std::thread::spawn(move || loop {
        let Ok(sig) = set.wait() else { return };
        // Only the main thread reaps the child, and the process exits right
        // after that, so a recycled pid is not a realistic target.
        let _ = kill(child, sig);
    });
}

/// The exit code for the re-executed child's `status`; when a signal killed
/// it, this process dies of the same signal first (so shells see Ctrl-C).
pub fn exit_code(status: ExitStatus) -> i32 {
    if let Some(sig) = status.signal() {
        sys::die_of_signal(sig);
        return 128 + sig;
    }
    status.code().unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_map_is_recognized() {
        assert!(is_initial_map("         0          0 4294967295\n"));
        assert!(!is_initial_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_initial_map("0 0 4294967295\n5 5 1\n"));
        assert!(!is_initial_map(""));
    }
}
