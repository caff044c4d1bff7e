//! The sandbox holes of issue 8, each tested by doing the attack:
//! descriptors the caller left open must not reach a RUN step, a secret (and
//! the managed /etc files) must never sit on a host path, not even after
//! `kill -9`, and a secret mount's `uid`/`gid` work on their own, with
//! BuildKit's defaults (0, 0, mode 0400).

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, tool, Env};

const BASE: &str = "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
    RUN mkdir -p /tmp /etc /root && chmod 1777 /tmp && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group\n";

/// A context with the static busybox and a Dockerfile of BASE + `rest`.
fn context(env: &Env, rest: &str) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let dockerfile = format!("{BASE}{rest}");
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile.as_str())]);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    Some(ctx)
}

/// A value nobody else on the machine writes: the secret the tests look for.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

/// Descriptors 7 and 9 are open in rbuild's caller (as after `exec 7>f` in
/// a shell); the RUN must see only 0, 1 and 2 (and the one `ls` opens to
/// list them), and writing to 7 or 9 must fail.
#[test]
fn caller_descriptors_do_not_reach_run() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN echo \"fds: $(ls /proc/self/fd | tr '\\n' ' ')end\"; ls -l /proc/self/fd; \
         for fd in 7 9; do (eval \"echo x >&$fd\") 2>/dev/null && echo \"LEAK-$fd\"; done; true\n",
    ) else {
        return;
    };
    let Some(bash) = tool("bash", "bash") else {
        return;
    };
    let (seven, nine) = (env.path("fd7"), env.path("fd9"));
    let out = Command::new(bash)
        .arg("-c")
        .arg("exec 7>\"$1\" 9>\"$2\"; shift 2; exec \"$@\"")
        .arg("bash")
        .arg(&seven)
        .arg(&nine)
        .arg(common::rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "--no-cache", "-t", "fd:1"])
        .arg(&ctx)
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("LEAK-7") && !log.contains("LEAK-9"), "{log}");
    assert_eq!(
        std::fs::read(&seven).unwrap(),
        b"",
        "fd 7 wrote the host file"
    );
    assert_eq!(
        std::fs::read(&nine).unwrap(),
        b"",
        "fd 9 wrote the host file"
    );
    // `ls` lists 0-2 plus the descriptor of the dir it is reading.
    assert!(log.contains("fds: 0 1 2 3 end"), "{log}");
}

/// Where a secret could land on the host: files under `dirs` that hold
/// `needle` (unreadable files, e.g. other users', are skipped).
fn files_holding(dirs: &[&Path], needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in dirs {
        for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(entry.path().to_path_buf());
            }
        }
    }
    found
}

fn pgrep(pattern: &str) -> bool {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a build whose RUN holds a secret mount and the managed /etc files
/// while it sleeps; looks for host copies while it runs, then either lets it
/// finish or `kill -9`s rbuild's whole process group, and looks again.
///
/// As root, rbuild runs in a mount namespace with its own empty /dev/shm
/// (util-linux `unshare`), so every entry it makes there is seen exactly,
/// whatever else runs on the machine; otherwise the host's /dev/shm is
/// searched for the secret's bytes.
fn secret_build(kill: bool) {
    let env = Env::new();
    let secret = unique("s3cr3t-kill9");
    let marker = unique("marker");

    // Long enough that the step is surely still running when it is killed:
    // the search below took over 60 s at load ~11 (the build had finished).
    let secs = if kill { 300 } else { 3 };
    let Some(ctx) = context(
        &env,
        &format!(
            "FROM base\nRUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && \
             cat /etc/hosts > /dev/null && sleep {secs} && : {marker}\n"
        ),
    ) else {
        return;
    };
    let secret_file = env.path("secret.txt");
    std::fs::write(&secret_file, &secret).unwrap();
    let tmpdir = env.path("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let private_shm = common::is_root();
    let mut cmd = if private_shm {
        let Some(unshare) = tool("unshare", "util-linux") else {
            return;
        };
        let mut c = Command::new(unshare);
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /dev/shm && exec \"$@\"")
            .arg("sh")
            .arg(common::rbuild_bin());
        c
    } else {
        Command::new(common::rbuild_bin())
    };
    let mut child = cmd
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "-t", "sec:1", "--secret"])
        .arg(format!("id=tok,src={}", secret_file.display()))
        .arg(&ctx)
        .env("TMPDIR", &tmpdir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for("the RUN step to start", || pgrep(&marker));
    // While the RUN holds the secret: no host path has it.
    let shm = PathBuf::from(format!("/proc/{pid}/root/dev/shm"));
    if private_shm {
        let entries: Vec<_> = std::fs::read_dir(&shm).unwrap().flatten().collect();
        assert!(
            entries.is_empty(),
            "rbuild put files in /dev/shm: {entries:?}"
        );
    }
    let places = [Path::new("/dev/shm"), &tmpdir, &env.root()];
    let found = files_holding(&places, secret.as_bytes());
    assert!(found.is_empty(), "the secret is on the host: {found:?}");
    let status = if kill {
        let group = nix::unistd::Pid::from_raw(-(pid as i32));
        nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        wait_for("the RUN step to die", || !pgrep(&marker));
        status
    } else {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.status
    };
    assert_eq!(status.success(), !kill);
    let found = files_holding(&places, secret.as_bytes());
    assert!(found.is_empty(), "the secret outlived the build: {found:?}");
    let left: Vec<_> = std::fs::read_dir(&tmpdir).unwrap().flatten().collect();
    assert!(left.is_empty(), "temp files outlived the build: {left:?}");
    // What a killed build left in the store's temp dir goes at the next open.
    env.rbuild_ok(&["images"]);
    let store_tmp = env.root().join("rbuild/tmp");
    let left: Vec<_> = std::fs::read_dir(&store_tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "store temps outlived the build: {left:?}");
}

/// Both runs in one test, one after the other: run side by side on a
/// loaded machine, one build's search for secret copies delayed the other's
/// kill past the end of its step.
#[test]
fn secret_leaves_no_host_copy_finished_or_killed() {
    secret_build(false);
    secret_build(true);
}

/// `uid=` alone, `gid=` alone and neither, with BuildKit's defaults (uid 0,
/// gid 0, mode 0400): the owner set is the one the file gets.
#[test]
fn secret_uid_and_gid_apply_on_their_own() {
    let env = Env::new();
    let show = |label: &str| {
        format!(
            "echo \"{label} $(stat -c %u:%g:%a /run/secrets/s) \
             $(cat /run/secrets/s 2>/dev/null || echo unreadable)\""
        )
    };
    let rest = format!(
        "FROM base\nUSER 1000\nRUN --mount=type=secret,id=s,uid=1000 {}\n\
         USER 1000:1000\nRUN --mount=type=secret,id=s,gid=1000,mode=0440 {}\n\
         RUN --mount=type=secret,id=s,gid=1000 {}\n\
         USER 0\nRUN --mount=type=secret,id=s {}\n",
        show("uid-only"),
        show("gid-only"),
        show("gid-default-mode"),
        show("defaults"),
    );
    let Some(ctx) = context(&env, &rest) else {
        return;
    };
    let value = env.path("value");
    std::fs::write(&value, "open-sesame").unwrap();
    let out = env.rbuild_ok(&[
        "build",
        "--progress",
        "plain",
        "--secret",
        &format!("id=s,src={}", value.display()),
        ctx.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    for want in [
        "uid-only 1000:0:400 open-sesame",
        "gid-only 0:1000:440 open-sesame",
        "gid-default-mode 0:1000:400 unreadable",
        "defaults 0:0:400 open-sesame",
    ] {
        assert!(log.contains(want), "missing {want:?} in:\n{log}");
    }
}

#[test]
fn rootless_sandbox_hardening() {
    common::rerun_as_test_user(module_path!(), "subid");
}

/// A heredoc script (`#!` line) is handed over like a secret, as bytes the
/// sandbox writes to its own tmpfs: it still runs from `/dev/pipes/NAME`.
#[test]
fn heredoc_script_runs_from_the_sandbox_tmpfs() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN <<EOT\n#!/bin/sh\necho \"script $0 $(stat -c %a \"$0\")\"\nEOT\n",
    ) else {
        return;
    };
    let out = env.rbuild_ok(&["build", "--progress", "plain", ctx.to_str().unwrap()]);
    let log = stderr(&out);
    assert!(log.contains("script /dev/pipes/EOT 755"), "{log}");
}

/// rbuild itself passes no inherited descriptor on: a credential helper
/// (`docker-credential-*`, run by `rbuild logout` through `credsStore`)
/// started with 7 and 9 open in rbuild's caller sees neither.
#[test]
fn caller_descriptors_do_not_reach_rbuild_children() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let Some(bash) = tool("bash", "bash") else {
        return;
    };
    let bin = env.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let seen = env.path("helper-fds");
    let helper = bin.join("docker-credential-fdprobe");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nls /proc/$$/fd > {}\nfor fd in 7 9; do (eval \"echo x >&$fd\") 2>/dev/null && echo LEAK-$fd >> {}; done\nexit 1\n",
            seen.display(),
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = env.path("docker");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("config.json"), r#"{"credsStore": "fdprobe"}"#).unwrap();
    let (seven, nine) = (env.path("fd7"), env.path("fd9"));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(bash)
        .arg("-c")
        .arg("exec 7>\"$1\" 9>\"$2\"; shift 2; exec \"$@\"")
        .arg("bash")
        .arg(&seven)
        .arg(&nine)
        .arg(common::rbuild_bin())
        .args(["logout", "registry.example"])
        .env("DOCKER_CONFIG", &config)
        .env("PATH", path)
        .output()
        .unwrap();
    let listing = std::fs::read_to_string(&seen)
        .unwrap_or_else(|e| panic!("the helper did not run ({e}): {}", stderr(&out)));
    let fds: Vec<&str> = listing.split_whitespace().collect();
    assert!(
        !fds.contains(&"7") && !fds.contains(&"9") && !listing.contains("LEAK"),
        "the helper inherited the caller's descriptors: {fds:?}"
    );
    assert_eq!(std::fs::read(&seven).unwrap(), b"");
    assert_eq!(std::fs::read(&nine).unwrap(), b"");
}

/// The sandbox as a library (`rbuild::sandbox::run_with`) on a busybox root
/// made on the host: one overlay lower with the applets as symlinks.
mod library {
    use std::fs;
    use std::path::{Path, PathBuf};

    use rbuild::sandbox::{
        run_with, ExtraFiles, IdMapMode, MountSpec, NetworkMode, RootfsSpec, RunOutcome, RunSpec,
        SandboxOptions, Stream, UserSpec,
    };

    pub struct Run {
        pub outcome: RunOutcome,
        pub stdout: String,
        pub stderr: String,
        pub upper: PathBuf,
        /// Holds the rootfs and the upper dir until the test is done.
        pub _dirs: tempfile::TempDir,
    }

    /// `/bin/sh -c script` with `mounts`, the sandbox's state dir made in
    /// `state_parent`; `None` when busybox is missing (the test skips, or
    /// fails under CI).
    pub fn sh(script: &str, mounts: Vec<MountSpec>, state_parent: &Path) -> Option<Run> {
        sh_with(script, state_parent, |s| s.mounts = mounts)
    }

    /// [`sh`] with the spec changed by `edit` first.
    pub fn sh_with(
        script: &str,
        state_parent: &Path,
        edit: impl FnOnce(&mut RunSpec),
    ) -> Option<Run> {
        try_sh_with(script, state_parent, IdMapMode::Auto, edit).map(Result::unwrap)
    }

    /// [`sh_with`] with an id map mode, returning the sandbox's error.
    pub fn try_sh_with(
        script: &str,
        state_parent: &Path,
        id_map: IdMapMode,
        edit: impl FnOnce(&mut RunSpec),
    ) -> Option<anyhow::Result<Run>> {
        let busybox = super::tool("busybox", "busybox-static")?;
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir_all(base.join("bin")).unwrap();
        fs::copy(busybox, base.join("bin/busybox")).unwrap();
        for applet in ["sh", "ls", "cat", "stat", "echo", "true"] {
            std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
        }
        let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        let mut spec = RunSpec {
            rootfs: RootfsSpec::Overlay {
                lowers: vec![base],
                upper: upper.clone(),
                work,
            },
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: UserSpec::default(),
            hostname: "hardening".into(),
            network: NetworkMode::None,
            mounts: vec![],
            extra_files: ExtraFiles::default(),
            limits: Default::default(),
        };
        edit(&mut spec);
        let opts = SandboxOptions {
            init_exe: PathBuf::from(crate::common::rbuild_bin()),
            id_map,
            state_parent: Some(state_parent.to_path_buf()),
            state_dir: None,
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let outcome = run_with(&opts, &spec, &mut |stream, chunk| match stream {
            Stream::Stdout => stdout.extend_from_slice(chunk),
            Stream::Stderr => stderr.extend_from_slice(chunk),
        });
        Some(outcome.map(|outcome| Run {
            outcome,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            upper,
            _dirs: tmp,
        }))
    }
}

/// Every path below `dir`, relative.
fn entries(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .flatten()
        .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
        .collect()
}

/// A library caller's descriptor without close-on-exec (a dup of a file)
/// must not reach the command: it sees 0-2 only (3 is the dir `ls` reads),
/// and writing to the descriptor fails.
#[test]
fn library_caller_descriptors_do_not_reach_the_command() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host-file");
    let file = std::fs::File::create(&host).unwrap();
    // SAFETY: dup of an open descriptor; the result is owned below.
    let leaked = unsafe { libc::dup(file.as_raw_fd()) };
    assert!(leaked > 2);
    // SAFETY: `leaked` is a fresh descriptor nothing else owns.
    let _owned = unsafe { OwnedFd::from_raw_fd(leaked) };
    let script =
        format!("echo $(ls /proc/self/fd); (echo x >&{leaked}) 2>/dev/null && echo LEAK; true");
    let Some(out) = library::sh(&script, vec![], tmp.path()) else {
        return;
    };
    assert_eq!(out.outcome.exit_code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "0 1 2 3\n");
    assert_eq!(std::fs::read(&host).unwrap(), b"");
}

/// A file mount (secrets, heredoc scripts): the bytes, owner and mode as
/// asked, read-only, and nothing of it left in the upper dir or the state
/// dir's parent.
#[test]
fn file_mounts_are_owned_read_only_and_private() {
    use rbuild::sandbox::{FileBytes, MountSpec};
    let state = tempfile::tempdir().unwrap();
    let (uid, gid) = (1000, 1001);
    let mounts = vec![MountSpec::File {
        target: "/run/secrets/s".into(),
        content: FileBytes(b"hush\n".to_vec()),
        uid,
        gid,
        mode: 0o440,
    }];
    let script = "stat -c %u:%g:%a /run/secrets/s; cat /run/secrets/s; \
                  (echo x > /run/secrets/s) 2>/dev/null && echo writable; true";
    let Some(out) = library::sh(script, mounts, state.path()) else {
        return;
    };
    assert_eq!(out.outcome.exit_code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("{uid}:{gid}:440\nhush\n"));
    assert!(entries(&out.upper).is_empty(), "{:?}", entries(&out.upper));
    let left = entries(state.path());
    assert!(left.is_empty(), "{left:?}");
}

/// The managed `/etc/hosts` is read-only, as BuildKit binds it: a RUN that
/// writes to it fails, and nothing of it reaches the upper dir.
#[test]
fn managed_files_are_read_only() {
    let state = tempfile::tempdir().unwrap();
    let Some(out) = library::sh_with("echo 10.1.2.3 extra >> /etc/hosts", state.path(), |s| {
        s.extra_files.hosts = Some("127.0.0.1 localhost\n".into());
    }) else {
        return;
    };
    assert_ne!(out.outcome.exit_code, 0, "the write succeeded");
    assert!(out.stderr.contains("Read-only"), "{}", out.stderr);
    assert!(entries(&out.upper).is_empty(), "{:?}", entries(&out.upper));
}

/// Rootless without a subuid range (a single-id user namespace) a secret
/// owned by an unmapped id is a clear error with a hint, not a file the
/// user cannot read. Runs in the rootless re-run; as root there is no user
/// namespace to map.
#[test]
fn unmapped_secret_owner_is_a_clear_error() {
    use rbuild::sandbox::{FileBytes, IdMapMode, MountSpec};
    if common::is_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let mounts = vec![MountSpec::File {
        target: "/run/secrets/s".into(),
        content: FileBytes(b"x".to_vec()),
        uid: 1000,
        gid: 0,
        mode: 0o400,
    }];
    let err = match library::try_sh_with("true", state.path(), IdMapMode::SingleId, |s| {
        s.mounts = mounts
    }) {
        None => return,
        Some(Ok(_)) => panic!("an unmapped owner was accepted"),
        Some(Err(e)) => format!("{e:#}"),
    };
    println!("{err}");
    assert!(
        err.contains("/run/secrets/s") && err.contains("1000:0") && err.contains("\nhint: "),
        "{err}"
    );
}

/// A RUN step runs in a session of its own, without rbuild's controlling
/// terminal (run here under `script`, which gives rbuild one): it can
/// neither read the user's keystrokes from /dev/tty nor push input into
/// the user's shell. And every mount under its /sys is read-only (a
/// rootless build binds the host's /sys: its submounts, the cgroup tree
/// above all, kept their own flags).
#[test]
fn run_has_no_controlling_terminal_and_a_read_only_sys() {
    let env = Env::new();
    let Some(script) = tool("script", "bsdutils") else {
        return;
    };
    let Some(ctx) = context(
        &env,
        // Each result is computed, so the command's own text in the log
        // never holds what the assertions look for.
        "FROM base\nRUN sh -c 's=SHARED; [ \"$(cut -d\" \" -f6 /proc/$$/stat)\" = \"$$\" ] && s=OWN; \
         t=NONE; (: < /dev/tty) 2>/dev/null && t=OPEN; \
         rw=$(awk '\"'\"'$5 ~ /^\\/sys/ && $6 !~ /(^|,)ro(,|$)/ {print $5}'\"'\"' /proc/self/mountinfo); \
         fw=$(ls -A /sys/firmware | wc -l); \
         echo RESULT-SESSION-$s RESULT-TTY-$t RESULT-SYS-RW-[$rw] RESULT-FIRMWARE-$fw'\n",
    ) else {
        return;
    };
    let cmd = format!(
        "{} --root {} build --progress plain --no-cache {}",
        common::rbuild_bin(),
        env.root().display(),
        ctx.display()
    );
    let out = Command::new(script)
        .args(["-qec", &cmd, "/dev/null"])
        // script runs the command with $SHELL (else the account's shell,
        // which may be nologin for the test user).
        .env("SHELL", "/bin/sh")
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .output()
        .expect("running script");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}{}", stderr(&out));
    assert!(log.contains("RESULT-SESSION-OWN"), "{log}");
    assert!(log.contains("RESULT-TTY-NONE"), "{log}");
    assert!(log.contains("RESULT-SYS-RW-[]"), "{log}");
    // As docker does: firmware tables are hidden.
    assert!(log.contains("RESULT-FIRMWARE-0"), "{log}");
}
