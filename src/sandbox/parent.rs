//! The caller's side of the sandbox: validate the spec, start the setup
//! process, write the id maps when rootless, stream the command's output to
//! the callback and turn the reports into a [`RunOutcome`] or an error.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::wire::{Report, Request, GO};
use super::{
    cgroup, idmap, paths, sys, RootfsSpec, RunOutcome, RunSpec, SandboxOptions, Stream, INIT_ARG,
};
use super::{ExtraFiles, IdMaps, NetworkMode, UserSpec};

/// Runs `spec` with the default options (re-executing `/proc/self/exe`).
pub fn run(spec: &RunSpec, on_output: &mut dyn FnMut(Stream, &[u8])) -> Result<RunOutcome> {
    run_with(&SandboxOptions::default(), spec, on_output)
}

/// Runs `spec` in a new sandbox and blocks until the command and everything
/// it started are gone. stdout/stderr chunks go to `on_output` as they
/// arrive. A non-zero exit is an `Ok` outcome; `Err` means the sandbox could
/// not be set up or the program could not be executed.
pub fn run_with(
    opts: &SandboxOptions,
    spec: &RunSpec,
    on_output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<RunOutcome> {
    let outcome = run_prestarted(opts, spec, None, on_output);
    if let RootfsSpec::Overlay { work, .. } = &spec.rootfs {
        clean_workdir(work);
    }
    outcome
}

/// A sandbox setup process started before its step: the re-executed rbuild
/// binary, blocked reading its request, and the step's cgroup, which a
/// thread of its own moves it into. Starting both while the previous step
/// writes its layer takes the exec and the cgroup move (an RCU grace period
/// on cgroup v1: ~5-11 ms, docs/benchmarks.md) off the next step's path.
/// The process has nothing of a step yet: no namespace, no request, no
/// mount, no descriptor but its pipes. Dropped unused, it is killed and
/// reaped and its cgroup removed.
pub struct Prestarted {
    helper: Option<Helper>,
    /// Moves the helper into the step's cgroup: the cgroup and its warnings.
    joining: Option<std::thread::JoinHandle<(cgroup::StepCgroup, Vec<String>)>>,
    init_exe: std::path::PathBuf,
    id_map: super::IdMapMode,
    limits: super::Limits,
}

/// Starts a setup process for a later [`run_prestarted`] with these options
/// and limits. It must be started (and used or dropped) by the thread that
/// runs the step: the process dies with the thread that forked it
/// (`PR_SET_PDEATHSIG`).
pub fn prestart(opts: &SandboxOptions, limits: &super::Limits) -> Result<Prestarted> {
    let helper = Helper::spawn(opts)?;
    let pid = helper.child.id();
    let for_thread = limits.clone();
    let joining = std::thread::Builder::new()
        .name("sandbox-cgroup".into())
        .spawn(move || {
            let (mut cgroup, mut warnings) = cgroup::StepCgroup::create(&for_thread);
            warnings.extend(cgroup.add_process(pid));
            (cgroup, warnings)
        });
    let mut spare = Prestarted {
        helper: Some(helper),
        joining: None,
        init_exe: opts.init_exe.clone(),
        id_map: opts.id_map,
        limits: limits.clone(),
    };
    // On an error the drop kills and reaps the helper.
    spare.joining = Some(joining.context("starting the sandbox's cgroup thread")?);
    Ok(spare)
}

impl Prestarted {
    /// The helper (its request sent) and its joined cgroup.
    fn start(mut self, req: &Request) -> Result<(Helper, cgroup::StepCgroup, Vec<String>)> {
        let mut helper = self
            .helper
            .take()
            .context("prestarted sandbox already used")?;
        helper.send_request(req)?;
        let joined = self.joining.take().map(std::thread::JoinHandle::join);
        match joined {
            Some(Ok((cgroup, warnings))) => Ok((helper, cgroup, warnings)),
            _ => Err(helper.failure(anyhow!("the sandbox's cgroup thread panicked"))),
        }
    }
}

impl Drop for Prestarted {
    fn drop(&mut self) {
        if let Some(mut helper) = self.helper.take() {
            let _ = helper.child.kill();
            // Joined before the helper is reaped, so its pid is not reused
            // while the thread may still write it to `cgroup.procs`.
            if let Some(j) = self.joining.take() {
                drop(j.join());
            }
            let _ = helper.child.wait();
        }
    }
}

/// [`run_with`], on `spare` when it was started with the same options and
/// limits (else it is dropped and a setup process started as usual), and
/// leaving the overlay work dir as the kernel left it: the caller empties
/// it with [`clean_workdir`] when it suits (the engine does it off the
/// step's path, `engine::exec::KeepAlive`).
pub fn run_prestarted(
    opts: &SandboxOptions,
    spec: &RunSpec,
    spare: Option<Prestarted>,
    on_output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<RunOutcome> {
    validate(spec)?;
    // Held (and removed) until this returns, unless the caller gave one.
    let mut owned = None;
    let state_dir = match &opts.state_dir {
        Some(dir) => dir.clone(),
        None => {
            let mut state = tempfile::Builder::new();
            state.prefix("rbuild-sandbox-");
            let state = match &opts.state_parent {
                Some(dir) => state.tempdir_in(dir),
                None => state.tempdir(),
            }
            .context("creating the sandbox state dir")?;
            owned.insert(state).path().to_path_buf()
        }
    };
    let userns = !nix::unistd::geteuid().is_root();
    let req = Request {
        spec: spec.clone(),
        userns,
        unprivileged: userns || super::in_user_namespace(),
        state_dir,
        probe_overlay: false,
    };
    let spare = spare.filter(|p| {
        p.init_exe == opts.init_exe && p.id_map == opts.id_map && p.limits == spec.limits
    });
    // The cgroup is removed (with anything left in it) when this returns.
    // The helper forks nothing before the go byte, so init and the command
    // start inside the step's cgroup.
    let (mut helper, cgroup, mut limit_warnings) = match spare {
        Some(spare) => spare.start(&req)?,
        None => {
            let (mut cgroup, mut warnings) = cgroup::StepCgroup::create(&spec.limits);
            let mut helper = Helper::spawn(opts)?;
            helper.send_request(&req)?;
            warnings.extend(cgroup.add_process(helper.child.id()));
            (helper, cgroup, warnings)
        }
    };
    let setup = helper.handshake(opts, &req);
    let (out, err) = (helper.stdout.take(), helper.stderr.take());
    if let Err(e) = setup {
        return Err(helper.failure(e));
    }
    // Listed while it runs, so an interrupt can end it (engine::cancel).
    let listed = super::running::list(helper.child.id());
    let pumped = pump(&mut helper, out, err, on_output);
    drop(listed); // before the helper is reaped
    let outcome = match pumped {
        Ok(()) => helper.finish(),
        Err(e) => Err(helper.failure(e)),
    };
    let oom_kills = cgroup.oom_kills();
    match outcome {
        // The OOM killer may pick the sandbox's own init: say why it died.
        Err(e) if oom_kills > 0 => Err(e.context(cgroup::oom_message(cgroup.memory_limit()))),
        Err(e) => Err(e),
        Ok(mut o) => {
            o.oom_kills = oom_kills;
            o.memory_limit = cgroup.memory_limit();
            limit_warnings.append(&mut o.limit_warnings);
            o.limit_warnings = limit_warnings;
            Ok(o)
        }
    }
}

/// Empties the overlay work dir. The kernel leaves `work/work` with mode
/// 000, which a non-root caller could not delete later.
pub fn clean_workdir(work: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Best effort: the work dir is scratch space and a leftover only
        // costs disk space, never correctness. Only real dirs are chmod'ed
        // (never through a symlink).
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether an overlay can be mounted by this process (inside a user
/// namespace when not root). Probed once per process.
pub fn overlay_available() -> bool {
    overlay_available_with(&SandboxOptions::default())
}

/// [`overlay_available`] with an explicit init executable.
pub fn overlay_available_with(opts: &SandboxOptions) -> bool {
    static PROBED: OnceLock<bool> = OnceLock::new();
    *PROBED.get_or_init(|| probe(opts).is_ok())
}

fn probe(opts: &SandboxOptions) -> Result<()> {
    let state = tempfile::Builder::new().prefix("rbuild-probe-").tempdir()?;
    let userns = !nix::unistd::geteuid().is_root();
    if !userns {
        // Root may unshare a mount namespace itself: a forked child mounts
        // the probe overlay, with no re-exec of rbuild (the first RUN step
        // of every build waits for the probe).
        let result = super::rootfs::probe_overlay_forked(state.path(), super::in_user_namespace());
        clean_workdir(&state.path().join("w"));
        return result;
    }
    let req = Request {
        spec: RunSpec {
            rootfs: RootfsSpec::Dir(state.path().to_path_buf()),
            argv: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: UserSpec::default(),
            hostname: "probe".into(),
            network: NetworkMode::None,
            mounts: vec![],
            extra_files: ExtraFiles::default(),
            limits: Default::default(),
        },
        userns,
        unprivileged: userns || super::in_user_namespace(),
        state_dir: state.path().to_path_buf(),
        probe_overlay: true,
    };
    let mut helper = Helper::spawn(opts)?;
    helper.send_request(&req)?;
    if let Err(e) = helper.handshake(opts, &req) {
        return Err(helper.failure(e));
    }
    let (out, err) = (helper.stdout.take(), helper.stderr.take());
    let result = match pump(&mut helper, out, err, &mut |_, _| {}) {
        Ok(()) => helper.finish().map(|_| ()),
        Err(e) => Err(helper.failure(e)),
    };
    clean_workdir(&state.path().join("w"));
    result
}

fn validate(spec: &RunSpec) -> Result<()> {
    if spec.argv.is_empty() {
        bail!("RUN needs a command (argv is empty)");
    }
    paths::components(&spec.cwd).context("working dir")?;
    for m in &spec.mounts {
        let target = match m {
            super::MountSpec::Bind { source, target, .. } => {
                if !source.is_absolute() {
                    bail!("bind mount source {} must be absolute", source.display());
                }
                target
            }
            super::MountSpec::Tmpfs { target, .. } | super::MountSpec::File { target, .. } => {
                target
            }
        };
        if paths::components(target)?.is_empty() {
            bail!("cannot mount over the root of the rootfs");
        }
    }
    if let RootfsSpec::Overlay {
        lowers,
        upper,
        work,
    } = &spec.rootfs
    {
        for p in lowers.iter().chain([upper, work]) {
            if !p.is_dir() {
                bail!(
                    "overlay dir {} does not exist or is not a directory",
                    p.display()
                );
            }
        }
    }
    Ok(())
}

/// The running setup process and the parent's ends of its pipes.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    reports: BufReader<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    stubs: Vec<String>,
    exit: Option<i32>,
    id_maps: Option<IdMaps>,
    /// Warnings for the build's output (the single-id namespace fallback).
    warnings: Vec<String>,
    errors: Vec<String>,
    init_died: Option<String>,
}

impl Helper {
    fn spawn(opts: &SandboxOptions) -> Result<Helper> {
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).context("creating the stdout pipe")?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).context("creating the stderr pipe")?;
        let (rep_r, rep_w) = pipe2(OFlag::O_CLOEXEC).context("creating the report pipe")?;
        let mut cmd = Command::new(&opts.init_exe);
        cmd.arg(INIT_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        sys::prepare_helper_command(&mut cmd, rep_w.as_raw_fd());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the sandbox via {}", opts.init_exe.display()))?;
        // Close our copies of the write ends so EOF arrives when the sandbox ends.
        drop(cmd);
        drop(rep_w);
        let stdin = child.stdin.take();
        Ok(Helper {
            child,
            stdin,
            reports: BufReader::new(File::from(rep_r)),
            stdout: Some(File::from(out_r)),
            stderr: Some(File::from(err_r)),
            stubs: vec![],
            exit: None,
            id_maps: None,
            warnings: Vec::new(),
            errors: vec![],
            init_died: None,
        })
    }

    /// Sends the request line; the helper is blocked reading it.
    fn send_request(&mut self, req: &Request) -> Result<()> {
        let mut line = serde_json::to_vec(req).context("encoding the sandbox request")?;
        line.push(b'\n');
        if let Some(s) = self.stdin.as_mut() {
            // A write error means the helper died; its report says why.
            let _ = s.write_all(&line);
        }
        Ok(())
    }

    /// Waits for the user namespace, writes the maps, sends the go byte.
    /// Without a user namespace there are no maps to write, so the go byte
    /// goes at once: waiting for `Ready` would only add a round trip between
    /// the two processes (milliseconds each on a loaded host), and the
    /// helper's `Ready` is read with the other reports.
    fn handshake(&mut self, opts: &SandboxOptions, req: &Request) -> Result<()> {
        if req.userns {
            match self.next_report()? {
                Some(Report::Ready) => {}
                _ => bail!("the sandbox setup process stopped before it was ready"),
            }
            let (maps, warning) = idmap::write_maps(self.child.id(), opts.id_map)?;
            self.id_maps = Some(maps);
            self.warnings.extend(warning);
        }
        let mut stdin = self.stdin.take().context("sandbox stdin already closed")?;
        stdin
            .write_all(GO)
            .context("signalling the sandbox to go on")?;
        Ok(())
    }

    fn next_report(&mut self) -> Result<Option<Report>> {
        let mut line = String::new();
        if self
            .reports
            .read_line(&mut line)
            .context("reading sandbox reports")?
            == 0
        {
            return Ok(None);
        }
        let report: Report = serde_json::from_str(&line)
            .with_context(|| format!("decoding sandbox report {:?}", line.trim()))?;
        self.note_report(&report);
        Ok(Some(report))
    }

    fn note_report(&mut self, report: &Report) {
        match report {
            Report::Stub { path } => self.stubs.push(path.clone()),
            Report::Error { message } => self.errors.push(message.clone()),
            Report::Exit { code } => self.exit = Some(*code),
            Report::InitDied { status } => self.init_died = Some(status.clone()),
            Report::Ready => {}
        }
    }

    /// Handles every complete report line in `pending` (and, at `eof`, a
    /// last line without its newline). A line that does not decode is kept
    /// as an error, as [`Helper::drain_reports`] does.
    fn take_report_lines(&mut self, pending: &mut Vec<u8>, eof: bool) {
        let mut start = 0;
        while let Some(n) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = pending[start..start + n].to_vec();
            start += n + 1;
            self.handle_report_line(&line);
        }
        pending.drain(..start);
        if eof && !pending.is_empty() {
            let line = std::mem::take(pending);
            self.handle_report_line(&line);
        }
    }

    fn handle_report_line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        match serde_json::from_str::<Report>(&text) {
            Ok(report) => self.note_report(&report),
            Err(e) => self
                .errors
                .push(format!("decoding sandbox report {:?}: {e}", text.trim())),
        }
    }

    /// Reads reports until EOF. A line that does not decode is kept as an
    /// error and reading goes on: stopping would leave init blocked on a
    /// full pipe, and the output would never end.
    fn drain_reports(&mut self) -> Result<()> {
        loop {
            match self.next_report() {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) if e.is::<serde_json::Error>() => self.errors.push(format!("{e:#}")),
                Err(e) => return Err(e),
            }
        }
    }

    /// Kills and reaps the helper, preferring its own error message.
    fn failure(mut self, err: anyhow::Error) -> anyhow::Error {
        let _ = self.child.kill();
        let _ = self.drain_reports();
        let _ = self.child.wait();
        match self.errors.first() {
            Some(msg) => anyhow!("sandbox: {msg}"),
            None => err,
        }
    }

    fn finish(mut self) -> Result<RunOutcome> {
        self.drain_reports()?;
        let status = self.child.wait().context("waiting for the sandbox")?;
        if let Some(msg) = self.errors.first() {
            bail!("sandbox: {msg}");
        }
        if let Some(status) = &self.init_died {
            bail!("sandbox init died: {status}");
        }
        let exit_code = self
            .exit
            .ok_or_else(|| anyhow!("sandbox ended without reporting an exit status ({status})"))?;
        Ok(RunOutcome {
            exit_code,
            mount_stubs: self.stubs,
            id_maps: self.id_maps,
            oom_kills: 0,
            memory_limit: None,
            limit_warnings: self.warnings,
        })
    }
}

/// Streams the output to `on_output` and reads the reports, side by side,
/// until every pipe reaches EOF. The reports must not wait for the output:
/// init's last ones (what the command wrote to `/etc/hosts`) may be more
/// than the report pipe holds, and init keeps the output pipes open until
/// they are written. One `poll` over the three pipes on the calling thread:
/// three threads per step (two output readers and a report reader) cost
/// their starts and, at the end, three wake-ups the step waited for.
fn pump(
    helper: &mut Helper,
    out: Option<File>,
    err: Option<File>,
    on_output: &mut dyn FnMut(Stream, &[u8]),
) -> Result<()> {
    // What the handshake's reader already holds comes first.
    let mut pending = helper.reports.buffer().to_vec();
    helper.reports.consume(pending.len());
    helper.take_report_lines(&mut pending, false);
    let reports = helper
        .reports
        .get_ref()
        .try_clone()
        .context("reading sandbox reports")?;
    // Slot 0 and 1: stdout, stderr; 2: reports. `None` once at EOF.
    let mut pipes = [out, err, Some(reports)];
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut slots = Vec::with_capacity(3);
        for (i, f) in pipes.iter().enumerate() {
            if let Some(f) = f {
                fds.push(libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                slots.push(i);
            }
        }
        if fds.is_empty() {
            return Ok(());
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waiting for the sandbox's pipes");
        }
        for (pfd, &slot) in fds.iter().zip(&slots) {
            if pfd.revents == 0 {
                continue;
            }
            let Some(file) = pipes[slot].as_mut() else {
                continue;
            };
            let read = match file.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => other,
            };
            match (slot, read) {
                (_, Ok(0)) | (0 | 1, Err(_)) => {
                    pipes[slot] = None;
                    if slot == 2 {
                        helper.take_report_lines(&mut pending, true);
                    }
                }
                (0, Ok(n)) => on_output(Stream::Stdout, &buf[..n]),
                (1, Ok(n)) => on_output(Stream::Stderr, &buf[..n]),
                (_, Ok(n)) => {
                    pending.extend_from_slice(&buf[..n]);
                    helper.take_report_lines(&mut pending, false);
                }
                (_, Err(e)) => return Err(e).context("reading sandbox reports"),
            }
        }
    }
}
