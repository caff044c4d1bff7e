//! Bounded RUN steps end to end: `--memory` (an OOM-killed step says so),
//! `--pids-limit`, `--ulimit`, `--shm-size`, `--cpus` seen in the step's
//! cgroup from the host while it runs, the step's cgroup removed afterwards,
//! rbuild's own cgroup never changed, a full store filesystem named, and a
//! rootless build either applying a limit or saying it cannot.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, tool, Env};

const BASE: &str = "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// A context with the static busybox and a Dockerfile of BASE + `rest`.
fn context(env: &Env, rest: &str) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let dockerfile = format!("{BASE}{rest}");
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile.as_str())]);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    Some(ctx)
}

fn rbuild_cmd(env: &Env, ctx: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(common::rbuild_bin());
    cmd.arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "--no-cache"])
        .args(extra)
        .arg(ctx)
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Runs a build; returns its output and the rbuild process id (which names
/// its cgroups `rbuild-PID-N`).
fn build(env: &Env, ctx: &Path, extra: &[&str]) -> (Output, u32) {
    let child = rbuild_cmd(env, ctx, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running rbuild");
    let pid = child.id();
    (child.wait_with_output().expect("rbuild output"), pid)
}

/// Where this process's own cgroups are, per controller line of
/// /proc/self/cgroup (v1: `/sys/fs/cgroup/CONTROLLERS/PATH`; v2: the
/// unified mount). rbuild, started by this test, is in the same ones.
fn own_cgroups() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap_or(""), parts.next());
        let rel = path.unwrap_or("/").trim_start_matches('/');
        let candidates: Vec<PathBuf> = if ctrls.is_empty() {
            vec![
                Path::new("/sys/fs/cgroup/unified").join(rel),
                Path::new("/sys/fs/cgroup").join(rel),
            ]
        } else if ctrls.starts_with("name=") {
            vec![]
        } else {
            vec![Path::new("/sys/fs/cgroup").join(ctrls).join(rel)]
        };
        if let Some(d) = candidates
            .into_iter()
            .find(|d| d.join("cgroup.procs").exists())
        {
            dirs.push(d);
        }
    }
    dirs
}

/// The `rbuild-PID-*` cgroups of rbuild process `pid` that exist now.
fn step_cgroups(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("rbuild-{pid}-");
    own_cgroups()
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Every limit file of this process's own cgroups, with its contents.
fn own_limits() -> Vec<(PathBuf, String)> {
    let files = [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.max",
        "memory.swap.max",
        "pids.max",
        "cpu.cfs_quota_us",
        "cpu.cfs_period_us",
        "cpu.shares",
        "cpu.max",
        "cpu.weight",
        "cpuset.cpus",
        "cpuset.mems",
    ];
    let mut out = Vec::new();
    for d in own_cgroups() {
        for f in files {
            if let Ok(v) = std::fs::read_to_string(d.join(f)) {
                out.push((d.join(f), v));
            }
        }
    }
    out
}

/// The test needs real root and the v1/v2 controllers: as another user it
/// is covered by `rootless_limit_applied_or_warned`.
fn root_only() -> bool {
    if common::is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "build_limits needs root under CI"
    );
    eprintln!("skipping: needs root");
    false
}

#[test]
fn memory_limit_oom_kill_is_reported_and_cgroup_removed() {
    if !root_only() {
        return;
    }
    let env = Env::new();
    // Doubles a string up to 256 MiB: far above the limit, yet bounded on
    // a host where the limit would not apply.
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN awk 'BEGIN { s = \"x\"; while (length(s) < 268435456) s = s s; print length(s) }'\n",
    ) else {
        return;
    };
    let before = own_limits();
    let (out, pid) = build(&env, &ctx, &["--memory", "32m"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("RUN was killed: out of memory (limit 32 MiB)"),
        "{err}"
    );
    assert!(err.contains("hint: raise --memory"), "{err}");
    assert!(step_cgroups(pid).is_empty(), "{:?}", step_cgroups(pid));
    assert_eq!(own_limits(), before, "rbuild's own cgroup is unchanged");
    let tmp = env.root().join("rbuild/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing left in the store: {left:?}");

    // The same step with room to spare completes.
    let (out, _) = build(&env, &ctx, &["--memory", "1g"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Builds `ctx` (a RUN that starts 50 sleeping processes) under
/// `--pids-limit 20`: the step fails at `fork`, and its cgroup is gone.
fn fork_loop_is_stopped_at_20(env: &Env, ctx: &Path) {
    let (out, pid) = build(env, ctx, &["--pids-limit", "20"]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "50 processes under a limit of 20: {err}"
    );
    assert!(err.contains("fork"), "{err}");
    assert!(!err.contains("all 50 started"), "{err}");
    assert!(step_cgroups(pid).is_empty());
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    if !root_only() {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN i=0; while [ $i -lt 50 ]; do sleep 2 & i=$((i+1)); done; echo \"all $i started\"\n",
    ) else {
        return;
    };
    fork_loop_is_stopped_at_20(&env, &ctx);
    let (out, _) = build(&env, &ctx, &["--pids-limit", "100"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("all 50 started"), "{err}");
}

#[test]
fn ulimit_and_shm_size_reach_the_step() {
    if !root_only() {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN echo \"nofile=$(ulimit -n) hard=$(ulimit -Hn)\" && df -k /dev/shm\n",
    ) else {
        return;
    };
    let (out, _) = build(
        &env,
        &ctx,
        &["--ulimit", "nofile=100:200", "--shm-size", "1m"],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("nofile=100 hard=200"), "{err}");
    let shm_kb = err
        .lines()
        .find(|l| l.contains(" shm ") && l.trim_end().ends_with("/dev/shm"))
        .and_then(|l| l.split_whitespace().rev().nth(4))
        .unwrap_or_else(|| panic!("no df line for /dev/shm: {err}"));
    assert_eq!(shm_kb, "1024", "{err}");

    // docker's default: 64 MiB.
    let (out, _) = build(&env, &ctx, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains(" shm ") && l.contains(" 65536 ")),
        "{err}"
    );
}

/// The first of `files` that exists in one of `dirs`, trimmed.
fn read_any(dirs: &[PathBuf], files: &[&str]) -> Option<String> {
    files.iter().find_map(|f| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(f)).ok())
            .map(|v| v.trim().to_string())
    })
}

#[test]
fn limits_show_in_the_step_cgroups_while_it_runs() {
    if !root_only() {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN cat /proc/self/cgroup && grep Cpus_allowed_list /proc/self/status && sleep 3\n",
    ) else {
        return;
    };
    let before = own_limits();
    let flags = [
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--cpuset-cpus",
        "0",
        "--memory",
        "256m",
        "--memory-swap",
        "512m",
        "--pids-limit",
        "50",
    ];
    let child = rbuild_cmd(&env, &ctx, &flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rbuild");
    let pid = child.id();
    // The sleeping RUN is the build's second step: `rbuild-PID-1`.
    let name = format!("rbuild-{pid}-1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut dirs = Vec::new();
    while Instant::now() < deadline && dirs.len() < 4 {
        dirs = step_cgroups(pid)
            .into_iter()
            .filter(|d| d.ends_with(&name))
            .filter(|d| {
                std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
            })
            .collect();
        // cgroup v2: one directory holds every controller.
        if dirs.iter().any(|d| d.join("cpu.max").exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let get = |files: &[&str]| read_any(&dirs, files).unwrap_or_default();
    let quota = get(&["cpu.cfs_quota_us", "cpu.max"]);
    assert!(
        quota == "50000" || quota == "50000 100000",
        "{quota} in {dirs:?}"
    );
    let shares = get(&["cpu.shares", "cpu.weight"]);
    assert!(shares == "512" || shares == "20", "{shares}");
    assert_eq!(get(&["cpuset.cpus"]), "0");
    assert_eq!(get(&["memory.limit_in_bytes", "memory.max"]), "268435456");
    let swap = get(&["memory.memsw.limit_in_bytes", "memory.swap.max"]);
    assert!(swap == "536870912" || swap == "268435456", "{swap}");
    assert_eq!(get(&["pids.max"]), "50");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.lines().any(|l| l.contains(&format!(":cpu:/{name}"))),
        "the step's processes are in its cgroup: {err}"
    );
    assert!(
        err.contains("Cpus_allowed_list:\t0\n"),
        "--cpuset-cpus 0 pins the step: {err}"
    );
    for d in &dirs {
        assert!(!d.exists(), "{} removed after the step", d.display());
    }
    assert!(step_cgroups(pid).is_empty());
    assert_eq!(own_limits(), before, "rbuild's own cgroup is unchanged");
}

#[test]
fn bad_limit_flags_name_the_flag() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\n")]);
    for (args, want) in [
        (vec!["--memory", "lots"], "invalid --memory \"lots\""),
        (vec!["--ulimit", "files=1"], "unknown limit \"files\""),
        (vec!["--cpus", "0"], "invalid --cpus \"0\""),
        (vec!["--shm-size", "1q"], "unknown unit \"q\""),
    ] {
        let out = rbuild_cmd(&env, &ctx, &args).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// A store on a 24 MiB tmpfs: a RUN that writes 64 MiB fails, the error
/// names the full filesystem, and nothing of the step stays behind.
#[test]
fn full_store_filesystem_is_named_and_cleaned() {
    if !root_only() {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN dd if=/dev/zero of=/big bs=1M count=64\n",
    ) else {
        return;
    };
    let mnt = env.root();
    std::fs::create_dir_all(&mnt).unwrap();
    // Dropped after `_guard` has unmounted.
    let _mounts = common::host_mounts_shared();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(st.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let (out, _) = build(&env, &ctx, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "the filesystem holding the store ({}) is full",
            mnt.display()
        )),
        "{err}"
    );
    assert!(err.contains("hint: free space there"), "{err}");
    let left: Vec<_> = std::fs::read_dir(mnt.join("rbuild/tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing left in the store: {left:?}");

    // 14 MiB that fit as files but not a second time as the layer blob:
    // the step succeeds, writing its layer runs out of space.
    let ctx = context(
        &env,
        "FROM base\nRUN dd if=/dev/urandom of=/big bs=1M count=14\n",
    )
    .unwrap();
    let (out, _) = build(&env, &ctx, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains(&format!(
            "hint: the filesystem holding the store ({}) is full",
            mnt.display()
        )),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(mnt.join("rbuild/tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing left in the store: {left:?}");
}

/// As an ordinary user (no cgroup delegation on most test hosts) a limit
/// is either applied or named in a warning, and the build goes on.
#[test]
fn rootless_limit_applied_or_warned() {
    if !root_only() {
        return;
    }
    common::ensure_test_user();
    let Some(busybox) = tool("busybox", "busybox-static") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("{BASE}FROM base\nRUN cat /proc/self/cgroup\n"),
    )
    .unwrap();
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    let st = Command::new("chown")
        .args(["-R", common::TEST_USER])
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(st.success());
    let user = nix::unistd::User::from_name(common::TEST_USER)
        .unwrap()
        .expect("the test user");
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--clear-groups", "--reset-env"])
        .arg(common::rbuild_bin())
        .arg("--root")
        .arg(tmp.path().join("root"))
        .args(["build", "--progress", "plain", "--pids-limit", "30"])
        .arg(&ctx)
        .env("HOME", tmp.path())
        .output()
        .expect("setpriv");
    let err = stderr(&out);
    assert!(out.status.success(), "the build goes on: {err}");
    let applied = err
        .lines()
        .any(|l| l.contains(":pids:") && l.contains("rbuild-"));
    let warned = err.contains("--pids-limit not applied");
    assert!(applied || warned, "{err}");
    if warned {
        assert_eq!(
            err.matches("--pids-limit not applied").count(),
            1,
            "warned once: {err}"
        );
        assert!(err.contains("hint:"), "{err}");
    }
}

/// rbuild killed with SIGKILL cannot remove its step's cgroup: the sandbox
/// dies with it (the cgroup is empty), and the next build removes it.
#[test]
fn killed_build_cgroup_is_swept_by_the_next_build() {
    if !root_only() {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(&env, "FROM base\nRUN sleep 60\n") else {
        return;
    };
    let mut child = rbuild_cmd(&env, &ctx, &["--pids-limit", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rbuild");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut running = None;
    while Instant::now() < deadline && running.is_none() {
        // The second RUN (the sleep) is step 1.
        running = step_cgroups(pid)
            .into_iter()
            .find(|d| d.to_string_lossy().ends_with("-1") && d.join("pids.max").exists());
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = running.expect("the sleeping step's cgroup");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()) {
        assert!(Instant::now() < deadline, "the step died with rbuild");
        std::thread::sleep(Duration::from_millis(50));
    }
    let other = Env::new();
    let Some(ctx2) = context(&other, "FROM base\nRUN true\n") else {
        return;
    };
    let (out, _) = build(&other, &ctx2, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.exists(), "{} swept", dir.display());
}

/// A RUN after a RUN in one stage runs on the setup process the first one
/// started while its layer was written (`sandbox::prestart`): that process
/// was moved into its step's cgroup by another thread, and the limit must
/// hold there all the same.
#[test]
fn pids_limit_holds_for_a_prestarted_step() {
    if !root_only() {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN true\nRUN i=0; while [ $i -lt 50 ]; do sleep 2 & i=$((i+1)); done; echo \"all $i started\"\n",
    ) else {
        return;
    };
    fork_loop_is_stopped_at_20(&env, &ctx);
}

/// The children of this process now (every thread's `children` list).
fn own_children() -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

/// A prestarted setup process that is never used (the stage ended or
/// failed first) is killed and reaped when dropped, and its cgroup goes.
#[test]
fn unused_prestarted_sandbox_is_reaped_with_its_cgroup() {
    use rbuild::sandbox::{prestart, Limits, SandboxOptions};
    if !root_only() {
        return;
    }
    let opts = SandboxOptions {
        init_exe: common::rbuild_bin().into(),
        ..SandboxOptions::default()
    };
    let limits = Limits {
        pids: Some(64),
        ..Limits::default()
    };
    let before = own_children();
    let spare = prestart(&opts, &limits).expect("prestart");
    // Other tests of this binary start processes too: ours is the new
    // child running as the setup process.
    let started: Vec<u32> = own_children()
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"__sandbox-init"))
        })
        .collect();
    assert_eq!(started.len(), 1, "one setup process: {started:?}");
    let helper = started[0];
    // The cgroup thread moves it in the background: wait until it is in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cgroup = None;
    while cgroup.is_none() {
        assert!(
            Instant::now() < deadline,
            "the helper joined no step cgroup"
        );
        cgroup = step_cgroups(std::process::id()).into_iter().find(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .is_ok_and(|p| p.split_whitespace().any(|x| x == helper.to_string()))
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(spare);
    assert!(
        !std::path::Path::new(&format!("/proc/{helper}")).exists(),
        "the unused setup process was reaped"
    );
    let dir = cgroup.unwrap();
    assert!(!dir.exists(), "{} removed", dir.display());
}
