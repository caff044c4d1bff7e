//! Stage one of the sandbox, running in the re-executed rbuild binary: read
//! the request, unshare the user namespace and wait for the parent to write
//! the id maps, unshare the other namespaces, then fork PID 1 (`init`) and
//! wait for it.

use std::fs::File;
use std::io::{BufRead, BufReader};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{setresgid, setresuid, ForkResult, Gid, Uid};

use super::wire::{send, Report, Request};
use super::{init, rootfs, sys, NetworkMode};

/// Runs stage one and exits: 0 when init reported, 1 on a setup error
/// (already reported on the report fd).
pub fn main() -> ! {
    let report = sys::take_report_fd();
    // Mark what the caller left open at once, even when `init_exe` is not
    // rbuild's own `main` (which already did); the command's process marks
    // again right before its `execve`, the only exec below us.
    let _ = sys::cloexec_from(3);
    let code = match stage_one(&report) {
        Ok(()) => 0,
        Err(err) => {
            send(
                &report,
                &Report::Error {
                    message: format!("{err:#}"),
                },
            );
            1
        }
    };
    std::process::exit(code)
}

fn stage_one(report: &File) -> Result<()> {
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading the sandbox request")?;
    let req: Request = serde_json::from_str(&line).context("decoding the sandbox request")?;
    if req.userns {
        unshare(CloneFlags::CLONE_NEWUSER).context("creating the user namespace")?;
    }
    send(report, &Report::Ready);
    line.clear();
    if input
        .read_line(&mut line)
        .context("waiting for the id maps")?
        == 0
    {
        bail!("the parent went away before writing the id maps");
    }
    if req.userns {
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).context("setresgid 0")?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).context("setresuid 0")?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS;
    // The overlay probe runs nothing and only needs a mount namespace to
    // mount in: a network namespace alone costs milliseconds to create and
    // tear down (measured in docs/benchmarks.md, "Per RUN step").
    if !req.probe_overlay {
        flags |= CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
        if req.spec.network == NetworkMode::None {
            flags |= CloneFlags::CLONE_NEWNET;
        }
    }
    unshare(flags).context("creating the mount, pid, ipc, uts and net namespaces")?;
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private")?;
    if req.probe_overlay {
        rootfs::probe_overlay(&req.state_dir, req.unprivileged)?;
        send(report, &Report::Exit { code: 0 });
        return Ok(());
    }
    // Held open by stage one for its whole life: init learns from it
    // whether stage one died before init's parent-death signal was set.
    let (alive_r, alive_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating the liveness pipe")?;
    match sys::fork().context("forking the sandbox init")? {
        ForkResult::Child => {
            drop(alive_w);
            if let Err(err) = die_with_stage_one(&alive_r) {
                send(
                    report,
                    &Report::Error {
                        message: format!("{err:#}"),
                    },
                );
                std::process::exit(1);
            }
            drop(alive_r);
            init::main(req, report)
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            let status = waitpid(child, None).context("waiting for the sandbox init")?;
            if !matches!(status, WaitStatus::Exited(_, 0)) {
                send(
                    report,
                    &Report::InitDied {
                        status: format!("{status:?}"),
                    },
                );
            }
            Ok(())
        }
    }
}

/// Makes init die with stage one (which dies with rbuild), so the pid
/// namespace and every mount go with it. The parent-death signal only
/// covers a parent that dies after it is set: when stage one was killed
/// between the fork and here (an interrupt that reached a sandbox just as
/// it started), the liveness pipe's write end is already closed and init
/// must not run the command at all.
fn die_with_stage_one(alive: &std::os::fd::OwnedFd) -> Result<()> {
    use std::os::fd::AsRawFd;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("setting the parent-death signal")?;
    let mut pfd = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("checking on stage one");
    }
    if pfd.revents & (libc::POLLHUP | libc::POLLIN) != 0 {
        bail!("the sandbox's setup process ended before its init started");
    }
    Ok(())
}
