//! The store against host users and against other rbuild processes, each
//! test doing the attack: an unprivileged user (uid 65534) tries to run the
//! setuid-root files and open the device nodes that a base image and a RUN
//! put in the store, during a build and after it; a store whose private dir
//! another user can reach is refused (or tightened, when it is ours); and
//! `rbuild images` or seven other `--no-cache` builds running beside a build
//! never delete its temp dirs.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, tool, Env};

const NOBODY: u32 = 65534;

/// A busybox base (as tests/build_run.rs makes it) plus a setuid-root copy
/// of the host's `cat`, which the host can run from the store's files.
const BASE: &str = "FROM scratch\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
    RUN mkdir -p /tmp /etc /root && chmod 1777 /tmp && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group\n\
    COPY --chmod=4755 hostcat /bin/suidcat\n";

/// The attacks by another host user chown and setpriv, so they need root;
/// without it they show nothing, which is a failure under CI. In the
/// rootless re-run (`rootless_store_hardening`) the root run covers them.
fn require_root() -> bool {
    if common::is_root() {
        return true;
    }
    if std::env::var_os("RBUILD_TEST_IDMAP").is_some() {
        eprintln!("skipping in the rootless re-run: the root run does this attack");
        return false;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the store hardening tests need root under CI"
    );
    eprintln!("skipping: needs root");
    false
}

/// `busy:v1` built into the env's store; the store's parent dir opened to
/// everyone, as `/var/lib` is (tempdir() makes it 0700, which would hide
/// the store from the attacker whatever rbuild does).
fn env_with_base() -> Option<Env> {
    let busybox = tool("busybox", "busybox-static")?;
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctx = env.context("base", &[("Dockerfile", BASE)]);
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    std::fs::copy("/usr/bin/cat", ctx.join("hostcat")).unwrap();
    build(&env, &ctx, "busy:v1", &[]);
    Some(env)
}

fn build(env: &Env, ctx: &Path, tag: &str, extra: &[&str]) -> Output {
    let mut args = vec!["build", "--progress", "plain", "-t", tag];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    env.rbuild_ok(&args)
}

fn spawn_build(env: &Env, ctx: &Path, tag: &str, extra: &[&str]) -> std::process::Child {
    Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "-t", tag])
        .args(extra)
        .arg(ctx)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_ok(child: std::process::Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// `cmd args…` as uid/gid 65534 with no supplementary groups. Through a
/// shell: setpriv still holds root's capabilities when it execs its
/// argument, so it would reach paths no unprivileged user can.
fn as_nobody(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("setpriv")
        .args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
        ])
        .args(["/bin/sh", "-c", "exec \"$@\"", "sh"])
        .args(args)
        .output()
        .unwrap()
}

/// Every setuid/setgid file and device node under `dir` (not following links).
fn dangerous_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        let ft = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            dangerous_files(&e.path(), out);
        } else if ft.is_char_device()
            || ft.is_block_device()
            || (ft.is_file() && meta.mode() & 0o6000 != 0)
        {
            out.push(e.path());
        }
    }
}

/// The attacker's try at each dangerous file: run the setuid ones on
/// /etc/shadow, read the device nodes. Every try must fail.
fn attack(root: &Path, when: &str) -> usize {
    let mut found = Vec::new();
    dangerous_files(root, &mut found);
    for path in &found {
        let meta = path.symlink_metadata().unwrap();
        let out = if meta.is_file() {
            as_nobody(&[path.as_os_str(), "/etc/shadow".as_ref()])
        } else {
            as_nobody(&["/usr/bin/head".as_ref(), "-c1".as_ref(), path.as_os_str()])
        };
        assert!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("root:"),
            "{when}: uid {NOBODY} used {} (mode {:o}): {}",
            path.display(),
            meta.mode(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    found.len()
}

/// rbuild/ and every dir rbuild made in it are 0700 and ours; a cache
/// mount dir keeps the mode the mount asked for (it is what RUN sees).
fn assert_private_modes(root: &Path) {
    let private = root.join("rbuild");
    let meta = private.symlink_metadata().unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700, "{}", private.display());
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    for e in std::fs::read_dir(&private).unwrap().flatten() {
        let m = e.path().symlink_metadata().unwrap();
        if m.is_dir() {
            assert_eq!(m.mode() & 0o777, 0o700, "{}", e.path().display());
        }
    }
    for e in std::fs::read_dir(private.join("tmp")).unwrap().flatten() {
        let m = e.path().symlink_metadata().unwrap();
        if m.is_dir() {
            assert_eq!(m.mode() & 0o777, 0o700, "{}", e.path().display());
        }
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find_named(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
            if let Some(found) = find_named(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn host_users_cannot_use_setuid_files_or_devices_in_the_store() {
    if !require_root() || tool("setpriv", "util-linux").is_none() {
        return;
    }
    let Some(env) = env_with_base() else {
        return;
    };
    // The RUN leaves setuid files and device nodes in its upper dir and
    // in a cache mount, then waits for the test to look.
    let ctx = env.context(
        "attack",
        &[(
            "Dockerfile",
            "FROM busy:v1\nRUN --mount=type=cache,id=attack,target=/c sh -c '\
             cp /bin/suidcat /c/suidcat && chmod 4755 /c/suidcat && \
             cp /bin/suidcat /c/sgidcat && chmod 2755 /c/sgidcat && \
             mknod -m 666 /c/null c 1 3 && mknod -m 666 /upper-null c 1 3 && \
             cp /bin/suidcat /upper-suid && chmod 4755 /upper-suid && \
             touch /c/ready && i=0; \
             while [ ! -e /c/go ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done'\n",
        )],
    );
    let child = spawn_build(&env, &ctx, "attack:v1", &[]);
    let root = env.root();
    let mut ready = None;
    wait_for("the RUN to start", || {
        ready = find_named(&root.join("rbuild"), "ready");
        ready.is_some()
    });
    let during = attack(&root, "during the build");
    // The base's setuid cat in the stage's files, the RUN's upper dir (2)
    // and the cache mount (3).
    assert!(during >= 6, "found only {during} dangerous files to try");
    assert_private_modes(&root);
    std::fs::write(ready.unwrap().with_file_name("go"), "").unwrap();
    wait_ok(child, "the attack build");
    let after = attack(&root, "after the build");
    assert!(after >= 3, "the cache mount keeps its files: {after}");
    assert_private_modes(&root);
    // prune --all drops the cache mounts too.
    env.rbuild_ok(&["prune", "--all"]);
    let mut left = Vec::new();
    dangerous_files(&root, &mut left);
    assert!(left.is_empty(), "left after prune --all: {left:?}");
}

#[test]
fn a_private_dir_others_can_reach_is_refused_or_tightened() {
    if !require_root() {
        return;
    }
    // Ours and 0755 (an old store): tightened, with one warning.
    let env = Env::new();
    let private = env.root().join("rbuild");
    std::fs::create_dir_all(private.join("cachemounts")).unwrap();
    for d in [&private, &private.join("cachemounts")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = env.rbuild_ok(&["images"]);
    let warned = stderr(&out);
    assert!(
        warned.contains("warning:") && warned.contains(&private.display().to_string()),
        "{warned}"
    );
    assert_eq!(warned.matches("warning:").count(), 1, "{warned}");
    for d in [&private, &private.join("cachemounts")] {
        assert_eq!(d.metadata().unwrap().mode() & 0o777, 0o700);
    }
    let again = env.rbuild_ok(&["images"]);
    assert!(!stderr(&again).contains("warning:"), "{}", stderr(&again));

    // Someone else's rbuild/ (0755 or not): refused, naming it, with a hint.
    nix::unistd::chown(&private, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    for mode in [0o755, 0o700] {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = env.rbuild(&["images"]);
        let err = stderr(&out);
        assert!(!out.status.success(), "mode {mode:o} accepted: {err}");
        assert!(err.contains(&private.display().to_string()), "{err}");
        assert!(err.contains("uid 65534") && err.contains("hint:"), "{err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
        assert_eq!(
            private.metadata().unwrap().mode() & 0o777,
            mode,
            "untouched"
        );
    }

    // rbuild/ a symlink: refused (it could point anywhere).
    let env = Env::new();
    std::fs::create_dir_all(env.root()).unwrap();
    std::fs::create_dir(env.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink(env.path("elsewhere"), env.root().join("rbuild")).unwrap();
    let out = env.rbuild(&["images"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));

    // A root owned by another user: whoever owns it can swap rbuild/.
    let env = Env::new();
    std::fs::create_dir_all(env.root()).unwrap();
    nix::unistd::chown(&env.root(), Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let out = env.rbuild(&["images"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&env.root().display().to_string()) && err.contains("hint:"),
        "{err}"
    );
    assert!(!env.root().join("rbuild").exists(), "nothing created in it");

    // A root others may write to (even sticky, like /tmp): refused.
    let env = Env::new();
    std::fs::create_dir_all(env.root()).unwrap();
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = env.rbuild(&["images"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("writable by other users") && err.contains("hint:"),
        "{err}"
    );

    // A root that is a symlink to a dir we own: used, through its target.
    let env = Env::new();
    std::fs::create_dir(env.path("real")).unwrap();
    std::os::unix::fs::symlink(env.path("real"), env.root()).unwrap();
    env.rbuild_ok(&["images"]);
    let meta = env.path("real/rbuild").symlink_metadata().unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
}

#[test]
fn images_during_a_slow_run_do_not_break_it() {
    let Some(env) = env_with_base() else {
        return;
    };
    let ctx = env.context(
        "slow",
        &[
            (
                "Dockerfile",
                "FROM busy:v1\nCOPY f /f\nRUN sleep 3 && cat /f > /g\n",
            ),
            ("f", "slow\n"),
        ],
    );
    let mut child = spawn_build(&env, &ctx, "slow:v1", &["--no-cache"]);
    let mut runs = 0;
    while child.try_wait().unwrap().is_none() {
        env.rbuild_ok(&["images"]);
        runs += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_ok(child, "the slow build");
    assert!(
        runs >= 5,
        "only {runs} `rbuild images` ran during the build"
    );
}

#[test]
fn eight_parallel_no_cache_builds_five_rounds_all_succeed() {
    let Some(env) = env_with_base() else {
        return;
    };
    let ctxs: Vec<PathBuf> = (0..8)
        .map(|i| {
            let df = "FROM busy:v1\nCOPY f /f\nRUN cat /f > /g && ls / > /listing\n".to_string();
            env.context(
                &format!("p{i}"),
                &[("Dockerfile", &df), ("f", &format!("{i}\n"))],
            )
        })
        .collect();
    for round in 0..5 {
        let children: Vec<_> = ctxs
            .iter()
            .enumerate()
            .map(|(i, c)| spawn_build(&env, c, &format!("par{i}:r{round}"), &["--no-cache"]))
            .collect();
        for (i, c) in children.into_iter().enumerate() {
            wait_ok(c, &format!("round {round}, build {i}"));
        }
    }
    let tags = String::from_utf8_lossy(&env.rbuild_ok(&["images"]).stdout).into_owned();
    assert_eq!(tags.matches("par").count(), 40, "{tags}");
}

/// The concurrency tests again as an ordinary user: rbuild in its user
/// namespace, RUN files owned by subordinate ids in the temps.
#[test]
fn rootless_store_hardening() {
    common::rerun_as_test_user(module_path!(), "subid");
}
