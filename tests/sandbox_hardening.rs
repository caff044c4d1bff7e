//! The sandbox holes of issue 8, each tested by doing the attack:
//! descriptors the caller left open must not reach a RUN step, a secret (and
//! the managed /etc files) must never sit on a host path, not even after
//! `kill -9`, and a secret mount's `uid`/`gid` work on their own, with
//! BuildKit's defaults (0, 0, mode 0400).

mod common;

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
    let Some(ctx) = context(
        &env,
        &format!(
            "FROM base\nRUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && \
             echo 10.9.9.9 db >> /etc/hosts && sleep 3 && : {marker}\n"
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

#[test]
fn secret_leaves_no_host_copy_when_build_is_killed() {
    secret_build(true);
}

#[test]
fn secret_and_managed_files_never_touch_host_paths() {
    secret_build(false);
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
    common::rerun_as_test_user("subid");
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
