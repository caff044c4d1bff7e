//! PID 1 of the sandbox and the command's process. Init builds the root
//! (`rootfs`), forks the command, reaps every child (so `cmd &` and zombies
//! never hang the step), forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/2,
//! and when the command exits kills whatever is left in the pid namespace.
//! The command's process drops to docker's capabilities, switches user, sets
//! `no_new_privs` and execs.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{execve, setgroups, setresgid, setresuid, ForkResult, Gid, Pid, Uid};

use super::wire::{send, Report, Request};
use super::{caps, rootfs, seccomp, sys, NetworkMode, RunSpec};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs init and exits with 0 after reporting the command's status, or 1
/// after reporting a setup error.
pub fn main(req: Request, report: &File) -> ! {
    let code = match setup_and_wait(&req, report) {
        Ok(code) => {
            send(report, &Report::Exit { code });
            0
        }
        Err(err) => {
            send(
                report,
                &Report::Error {
                    message: format!("{err:#}"),
                },
            );
            1
        }
    };
    std::process::exit(code)
}

fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

fn setup_and_wait(req: &Request, report: &File) -> Result<i32> {
    // Stage one made us die with it before calling us
    // (`helper::die_with_stage_one`): the pid namespace and every mount go
    // with it.
    let spec = &req.spec;
    nix::unistd::sethostname(&spec.hostname).context("setting the hostname")?;
    if spec.network == NetworkMode::None {
        sys::loopback_up().context("bringing up lo")?;
    }
    let prepared = rootfs::prepare(req)?;
    for path in prepared.stubs {
        send(report, &Report::Stub { path });
    }
    std::fs::create_dir_all(&spec.cwd)
        .with_context(|| format!("creating the working dir {}", spec.cwd))?;
    nix::unistd::chdir(spec.cwd.as_str())
        .with_context(|| format!("entering the working dir {}", spec.cwd))?;
    let signals = forwarded_signals();
    signals
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .context("blocking signals in init")?;
    match sys::fork().context("forking the command")? {
        ForkResult::Child => {
            let Err(err) = exec_command(spec);
            send(
                report,
                &Report::Error {
                    message: format!("{err:#}"),
                },
            );
            std::process::exit(127)
        }
        ForkResult::Parent { child } => wait_loop(child, &signals),
    }
}

/// Reaps children until the command exits, forwarding signals to it; then
/// kills the rest of the namespace. Returns the command's status.
fn wait_loop(command: Pid, signals: &SigSet) -> Result<i32> {
    loop {
        let sig = signals.wait().context("waiting for signals in init")?;
        if sig != Signal::SIGCHLD {
            let _ = kill(command, sig);
            continue;
        }
        if let Some(code) = reap(command)? {
            // From PID 1, pid -1 means every other process in our namespace.
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            return Ok(code);
        }
    }
}

fn reap(command: Pid) -> Result<Option<i32>> {
    let mut result = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => result = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                result = Some(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(result),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("reaping children"),
        }
    }
}

fn exec_command(spec: &RunSpec) -> Result<Infallible> {
    // A session of its own, so no controlling terminal: /dev/tty (bound
    // from the host) then opens nothing, and the step can neither read
    // what the user types during the build nor push input into the
    // user's shell (TIOCSTI), as runc and BuildKit also ensure.
    nix::unistd::setsid().context("starting a new session")?;
    sys::reset_signal_dispositions();
    SigSet::empty()
        .thread_set_mask()
        .context("clearing the signal mask")?;
    let null = File::open("/dev/null").context("opening /dev/null")?;
    nix::unistd::dup2_stdin(&null).context("redirecting stdin")?;
    drop(null);
    sys::join_new_session_keyring().context("creating a session keyring")?;
    // Before the capabilities go: raising a hard limit needs CAP_SYS_RESOURCE.
    super::limits::apply_ulimits(&spec.limits.ulimits)?;
    caps::limit_bounding_set().context("dropping capabilities from the bounding set")?;
    switch_user(spec)?;
    caps::apply_process_sets(spec.user.uid).context("setting capabilities")?;
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    let program = find_program(spec)?;
    let argv = cstrings(&spec.argv)?;
    let env = cstrings(&spec.env)?;
    // Only 0-2 may reach the command: whatever rbuild's caller or a library
    // user left open, and our own report pipe and dir handles, close on exec
    // (marked rather than closed, so an exec failure can still be reported).
    sys::cloexec_from(3).context("marking descriptors close-on-exec")?;
    // Last, so setup itself is not filtered; applies to the exec onwards.
    sys::install_seccomp(&seccomp::program()).context("installing the seccomp filter")?;
    execve(&program, &argv, &env).with_context(|| {
        format!(
            "exec {:?}",
            spec.argv.first().map(String::as_str).unwrap_or("")
        )
    })
}

fn switch_user(spec: &RunSpec) -> Result<()> {
    let u = &spec.user;
    let groups: Vec<Gid> = u
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    match setgroups(&groups) {
        Ok(()) => {}
        // A single-id user namespace denies setgroups; only fatal when the
        // caller asked for supplementary groups.
        Err(Errno::EPERM) if groups.is_empty() => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "setting supplementary groups {:?} (is each gid mapped? \
                     a single-id user namespace allows none)",
                    u.additional_gids
                )
            })
        }
    }
    let gid = Gid::from_raw(u.gid);
    setresgid(gid, gid, gid)
        .with_context(|| format!("switching to gid {} (is it mapped?)", u.gid))?;
    let uid = Uid::from_raw(u.uid);
    setresuid(uid, uid, uid).with_context(|| format!("switching to uid {} (is it mapped?)", u.uid))
}

fn cstrings(items: &[String]) -> Result<Vec<CString>> {
    items
        .iter()
        .map(|s| {
            // Only the name: an environment entry may hold a secret.
            let name = s.split('=').next().unwrap_or_default();
            CString::new(s.as_bytes()).with_context(|| format!("{name:?}… contains a NUL byte"))
        })
        .collect()
}

/// Resolves `argv[0]` like docker: as given when it contains `/`, else in the
/// spec's `PATH` (or the default one).
fn find_program(spec: &RunSpec) -> Result<CString> {
    let Some(name) = spec.argv.first() else {
        bail!("empty command");
    };
    if name.contains('/') {
        return CString::new(name.as_bytes()).context("program name contains a NUL byte");
    }
    let path = spec
        .env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p.as_path()));
    match found {
        Some(p) => CString::new(p.into_os_string().into_encoded_bytes())
            .context("program path contains a NUL byte"),
        None => bail!("exec: {name:?}: executable file not found in $PATH"),
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
