//! RUN steps end to end: a busybox base built from nothing (`FROM scratch`,
//! the static busybox, `busybox --install`), then RUN in every form the
//! issue lists, checked from outside with umoci and by reading the layers.

use crate::common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_ok, stderr, tool, Env};

const BASE: &str = "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
    RUN mkdir -p /tmp /etc /root && chmod 1777 /tmp && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group\n";

/// A context with the static busybox and a Dockerfile of BASE + `rest`.
fn context(env: &Env, rest: &str, files: &[(&str, &str)]) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let dockerfile = format!("{BASE}{rest}");
    let mut all = vec![("Dockerfile", dockerfile.as_str())];
    all.extend_from_slice(files);
    let ctx = env.context("ctx", &all);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    Some(ctx)
}

fn build(env: &Env, ctx: &Path, tag: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", "--progress", "plain", "-t", tag];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    env.rbuild_ok(&args)
}

/// The image's filesystem, unpacked by umoci (an independent reader).
fn unpack(env: &Env, tag: &str) -> Option<PathBuf> {
    let umoci = tool("umoci", "umoci")?;
    let bundle = env.path(&format!("bundle-{}", tag.replace(':', "-")));
    let mut cmd = Command::new(umoci);
    cmd.arg("unpack");
    if !common::is_root() {
        cmd.arg("--rootless");
    }
    run_ok(
        cmd.arg("--image")
            .arg(format!("{}:{tag}", env.root().display()))
            .arg(&bundle),
    );
    Some(bundle.join("rootfs"))
}

/// Entry names of the image's last layer, read with the tar crate.
fn last_layer_names(env: &Env, tag: &str) -> Vec<(String, tar::EntryType)> {
    last_layer_entries(env, tag)
        .into_iter()
        .map(|(name, kind, _)| (name, kind))
        .collect()
}

/// Entry names, types and owners (uid, gid) of the image's last layer.
fn last_layer_entries(env: &Env, tag: &str) -> Vec<(String, tar::EntryType, (u64, u64))> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root().join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index");
    let blob = |d: &str| {
        env.root()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(desc["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let f = std::fs::File::open(blob(&layer)).unwrap();
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type(),
                (h.uid().unwrap(), h.gid().unwrap()),
            )
        })
        .collect()
}

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn shell_exec_shell_instruction_env_and_arg() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nARG WHO=world\nENV GREETING=hello\nRUN echo \"$GREETING $WHO\" > /greeting\n\
         RUN [\"/bin/sh\", \"-c\", \"echo exec form >> /greeting\"]\n\
         SHELL [\"/bin/sh\", \"-e\", \"-c\"]\nRUN echo \"shell $0\" >> /greeting\n",
        &[],
    ) else {
        return;
    };
    build(&env, &ctx, "run:1", &["--build-arg", "WHO=rbuild"]);
    let Some(root) = unpack(&env, "run:1") else {
        return;
    };
    assert_eq!(
        read(&root, "/greeting"),
        "hello rbuild\nexec form\nshell /bin/sh\n"
    );
    let cfg = stdout_json(&env.rbuild_ok(&["inspect", "run:1"]));
    let envs = cfg["Config"]["config"]["Env"]
        .as_array()
        .expect("Env")
        .clone();
    assert!(
        envs.iter()
            .all(|e| !e.as_str().unwrap().starts_with("WHO=")),
        "ARG values stay out of the config env: {envs:?}"
    );
    assert!(envs.iter().any(|e| e == "GREETING=hello"), "{envs:?}");
}

fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

#[test]
fn user_switching_and_workdir_creation() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN echo 'app:x:1000:1000:App:/home/app:/bin/sh' >> /etc/passwd && \
         echo 'app:x:1000:' >> /etc/group && echo 'extra:x:2000:app' >> /etc/group && mkdir -p /home/app && chown app:app /home/app\n\
         USER app\nWORKDIR /home/app/work\nRUN id -u > uid && id -G > groups && echo $HOME > home && pwd > pwd\n",
        &[],
    ) else {
        return;
    };
    build(&env, &ctx, "user:1", &[]);
    let Some(root) = unpack(&env, "user:1") else {
        return;
    };
    let w = "/home/app/work";
    assert_eq!(read(&root, &format!("{w}/uid")).trim(), "1000");
    assert_eq!(read(&root, &format!("{w}/groups")).trim(), "1000 2000");
    assert_eq!(read(&root, &format!("{w}/home")).trim(), "/home/app");
    assert_eq!(read(&root, &format!("{w}/pwd")).trim(), w);
    // Rootless too: the layer records ids as inside the sandbox (umoci
    // --rootless cannot chown, so read the tar headers).
    let owner = last_layer_entries(&env, "user:1")
        .into_iter()
        .find(|(name, _, _)| name.trim_end_matches('/') == "home/app/work/uid")
        .map(|(_, _, owner)| owner);
    assert_eq!(
        owner,
        Some((1000, 1000)),
        "layers record ids as inside the sandbox"
    );
    if common::is_root() {
        let meta = std::fs::metadata(root.join("home/app/work/uid")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "umoci agrees");
    }
}

#[test]
fn deletions_become_whiteouts_and_replaced_dirs_opaque() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN mkdir -p /opt/gone /data && echo x > /opt/gone/f && echo old > /data/old && echo m > /etc/motd\n\
         RUN rm /etc/motd && rm -rf /opt/gone && rm -rf /data && mkdir /data && echo new > /data/new && echo h > /h1 && ln /h1 /h2\n",
        &[],
    ) else {
        return;
    };
    build(&env, &ctx, "wh:1", &[]);
    let names = last_layer_names(&env, "wh:1");
    let has = |n: &str| names.iter().any(|(p, _)| p.trim_end_matches('/') == n);
    assert!(has("etc/.wh.motd"), "{names:?}");
    assert!(has("opt/.wh.gone"), "{names:?}");
    assert!(has("data/.wh..wh..opq"), "{names:?}");
    assert!(
        names
            .iter()
            .any(|(p, t)| (p == "h2" || p == "h1") && *t == tar::EntryType::Link),
        "hard link kept as a link: {names:?}"
    );
    let Some(root) = unpack(&env, "wh:1") else {
        return;
    };
    assert!(!root.join("etc/motd").exists());
    assert!(!root.join("opt/gone").exists());
    assert!(!root.join("data/old").exists());
    assert_eq!(read(&root, "/data/new"), "new\n");
    let (a, b) = (
        std::fs::metadata(root.join("h1")).unwrap(),
        std::fs::metadata(root.join("h2")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn failing_run_reports_exit_code_and_line() {
    let env = Env::new();
    let Some(ctx) = context(&env, "FROM base\nRUN echo about to fail && exit 3\n", &[]) else {
        return;
    };
    let out = env.rbuild(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "fail:1",
        ctx.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("Dockerfile:6"), "{err}");
    assert!(
        err.contains("about to fail"),
        "the last output lines are shown: {err}"
    );
}

#[test]
fn network_none_has_only_loopback() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN --network=none cat /proc/net/dev > /netdev\nRUN cat /proc/net/dev > /hostdev\n",
        &[],
    ) else {
        return;
    };
    build(&env, &ctx, "net:1", &[]);
    let Some(root) = unpack(&env, "net:1") else {
        return;
    };
    let ifaces = |text: String| -> Vec<String> {
        text.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|s| s.trim().to_string())
            .collect()
    };
    assert_eq!(ifaces(read(&root, "/netdev")), vec!["lo"]);
    let host = ifaces(std::fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(
        ifaces(read(&root, "/hostdev")).len(),
        host.len(),
        "default network is the host's"
    );
}

#[test]
fn cache_bind_and_tmpfs_mounts() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base AS other\nRUN echo from-stage > /stagefile\n\
         FROM base\nRUN --mount=type=cache,target=/cache sh -c 'echo x >> /cache/log; wc -l < /cache/log > /count'\n\
         RUN --mount=type=bind,source=input.txt,target=/mnt/input cat /mnt/input > /copied\n\
         RUN --mount=type=bind,from=other,source=/stagefile,target=/mnt/s cat /mnt/s > /fromstage\n\
         RUN --mount=type=tmpfs,target=/scratch sh -c 'echo t > /scratch/f && cat /scratch/f > /tmpfs-seen'\n",
        &[("input.txt", "context input\n")],
    ) else {
        return;
    };
    build(&env, &ctx, "m:1", &[]);
    build(&env, &ctx, "m:2", &["--no-cache"]);
    let Some(root) = unpack(&env, "m:2") else {
        return;
    };
    assert_eq!(
        read(&root, "/count").trim(),
        "2",
        "the cache mount persisted between builds"
    );
    assert_eq!(read(&root, "/copied"), "context input\n");
    assert_eq!(read(&root, "/fromstage"), "from-stage\n");
    assert_eq!(read(&root, "/tmpfs-seen"), "t\n");
    assert!(
        !root.join("scratch/f").exists(),
        "tmpfs contents stay out of the layer"
    );
    assert!(
        !root.join("cache/log").exists(),
        "cache contents stay out of the layer"
    );
    assert!(
        !root.join("mnt/input").exists(),
        "mount points stay out of the layer"
    );
}

/// Every blob of the store, decompressed when it is a layer.
fn all_blob_bytes(root: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let raw = std::fs::read(e.unwrap().path()).unwrap();
        let mut dec = Vec::new();
        if flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut dec)
            .is_ok()
        {
            out.push(dec);
        }
        out.push(raw);
    }
    out
}

fn walk_contains(dir: &Path, needle: &[u8]) -> bool {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .any(|e| {
            std::fs::read(e.path())
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
}

#[test]
fn secrets_are_usable_and_stored_nowhere() {
    let env = Env::new();
    let secret = "s3cr3t-value-7f2c";
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN --mount=type=secret,id=tok sha256sum < /run/secrets/tok > /used\n\
         RUN --mount=type=secret,id=tok,env=TOKEN sh -c 'printf %s \"$TOKEN\" | sha256sum > /env-used'\n",
        &[],
    ) else {
        return;
    };
    let file = env.path("secret.txt");
    std::fs::write(&file, secret).unwrap();
    let spec = format!("id=tok,src={}", file.display());
    let out = build(&env, &ctx, "sec:1", &["--secret", &spec]);
    assert!(!stderr(&out).contains(secret), "the secret is not logged");
    let needle = secret.as_bytes();
    for blob in all_blob_bytes(&env.root()) {
        assert!(
            !blob.windows(needle.len()).any(|w| w == needle),
            "secret found in a blob"
        );
    }
    assert!(
        !walk_contains(&env.root(), needle),
        "secret found in the store"
    );
    let Some(root) = unpack(&env, "sec:1") else {
        return;
    };
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    assert!(
        read(&root, "/used").starts_with(&want),
        "the file mount held the secret"
    );
    assert!(
        read(&root, "/env-used").starts_with(&want),
        "the env var held the secret"
    );
    assert!(!root.join("run/secrets/tok").exists());
    // Without the secret, a required mount fails clearly.
    let ctx2 = env.context(
        "ctx2",
        &[("Dockerfile", "FROM scratch\nCOPY busybox /bin/busybox\nRUN --mount=type=secret,id=nope,required=true [\"/bin/busybox\", \"true\"]\n")],
    );
    std::fs::copy(ctx.join("busybox"), ctx2.join("busybox")).unwrap();
    let out = env.rbuild(&["build", ctx2.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("secret nope is required"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ssh_agent_socket_is_forwarded() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo ok > /ssh-ok\n",
        &[],
    ) else {
        return;
    };
    let sock = env.path("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    if !common::is_root() {
        // The sandbox user must be able to reach the socket's directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let spec = format!("default={}", sock.display());
    build(&env, &ctx, "ssh:1", &["--ssh", &spec]);
    let Some(root) = unpack(&env, "ssh:1") else {
        return;
    };
    assert_eq!(read(&root, "/ssh-ok"), "ok\n");
}

#[test]
fn background_process_does_not_hang_the_build() {
    let env = Env::new();
    // Unique per test process: other modules of this binary (sandbox_run)
    // start `sleep 1000`s of their own at the same time.
    let sleep = format!("sleep {}", 2_000_000 + std::process::id());
    let Some(ctx) = context(
        &env,
        &format!("FROM base\nRUN {sleep} & echo started\n"),
        &[],
    ) else {
        return;
    };
    let t = Instant::now();
    build(&env, &ctx, "bg:1", &[]);
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    let leftover = Command::new("pgrep").args(["-f", &sleep]).output().unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "the sandbox's processes died with it"
    );
}

#[test]
fn escape_attempts_do_not_touch_the_host() {
    let env = Env::new();
    let sentinel = env.path("sentinel");
    let target = sentinel.display().to_string();
    let Some(ctx) = context(
        &env,
        &format!(
            "FROM base\nRUN echo pwned > /proc/1/root{target} ; mount -t tmpfs none /mnt ; \
             chroot .. sh -c 'echo pwned > {target}' ; echo pwned > {target} ; true\n"
        ),
        &[],
    ) else {
        return;
    };
    build(&env, &ctx, "esc:1", &[]);
    assert!(!sentinel.exists(), "the host file was written");
}

/// Pids of processes whose command line is exactly `cmdline`.
fn pids_of(cmdline: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-x", "-f", cmdline])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Ctrl-C (SIGINT to rbuild) and SIGKILL both stop the build and take the
/// RUN step's processes with them; rootless, rbuild is the parent of the
/// rbuild re-executed in its user namespace, which must die too.
#[test]
fn interrupted_build_stops_its_sandbox() {
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        let env = Env::new();
        // Unique per test process: the root and rootless runs overlap.
        let sleep = format!("sleep {}{}", 100000 + std::process::id(), signal as i32);
        let Some(ctx) = context(&env, &format!("FROM base\nRUN {sleep}\n"), &[]) else {
            return;
        };
        let mut child = Command::new(common::rbuild_bin())
            .arg("--root")
            .arg(env.root())
            .args(["build", "--progress", "plain", "-t", "int:1"])
            .arg(&ctx)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while pids_of(&sleep).is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the RUN step never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "{signal:?}: the build was stopped");
        let stopped = Instant::now();
        while !pids_of(&sleep).is_empty() {
            assert!(
                stopped.elapsed() < Duration::from_secs(10),
                "{signal:?}: the RUN step outlived rbuild"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let rbuilds = Command::new("pgrep")
            .args(["-f", &env.root().display().to_string()])
            .output()
            .unwrap();
        assert!(
            rbuilds.stdout.is_empty(),
            "{signal:?}: no rbuild process of this build is left"
        );
    }
}

#[test]
fn rootless_builds() {
    common::rerun_as_test_user(module_path!(), "subid");
}

#[test]
fn managed_etc_files_stay_out_of_layers_and_are_read_only() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN cat /etc/hostname > /seen-hostname && cat /etc/hosts > /seen-hosts\n",
        &[],
    ) else {
        return;
    };
    build(&env, &ctx, "etc:1", &[]);
    let names = last_layer_names(&env, "etc:1");
    assert!(
        !names.iter().any(|(p, _)| p.starts_with("etc/")),
        "the sandbox's own files leaked into the layer: {names:?}"
    );
    let Some(root) = unpack(&env, "etc:1") else {
        return;
    };
    assert_eq!(read(&root, "/seen-hostname"), "buildkitsandbox\n");
    assert!(read(&root, "/seen-hosts").contains("localhost"));

    let ctx2 = env.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!("{BASE}FROM base\nRUN echo '10.1.2.3 db.internal' >> /etc/hosts\n"),
        )],
    );
    // Read-only, as under BuildKit: writing to it fails the step.
    let out = env.rbuild(&["build", "-t", "etc:2", ctx2.to_str().unwrap()]);
    assert!(!out.status.success(), "a RUN writing /etc/hosts must fail");
}

#[test]
fn without_overlayfs_runs_on_a_copy_and_says_so_once() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN mkdir -p /opt/old && echo x > /opt/old/f && echo keep > /etc/motd\n\
         RUN rm -rf /opt/old && echo new > /new && rm /etc/motd\n",
        &[],
    ) else {
        return;
    };
    let out = std::process::Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "-t", "copy:1"])
        .arg(&ctx)
        .env("RBUILD_NO_OVERLAY", "1")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("overlayfs is not available").count(),
        1,
        "said once: {err}"
    );
    let names = last_layer_names(&env, "copy:1");
    let has = |n: &str| names.iter().any(|(p, _)| p.trim_end_matches('/') == n);
    assert!(
        has("opt/.wh.old") && has("etc/.wh.motd") && has("new"),
        "{names:?}"
    );
    let Some(root) = unpack(&env, "copy:1") else {
        return;
    };
    assert!(!root.join("opt/old").exists() && !root.join("etc/motd").exists());
    assert_eq!(read(&root, "/new"), "new\n");
}

#[test]
fn context_bind_mounts_hide_what_dockerignore_excludes() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN --mount=type=bind,target=/ctx ls -a /ctx > /listing\n\
         RUN --mount=type=bind,source=app,target=/app sh -c 'cat /app/main.txt > /main; ls /app > /applist'\n",
        &[
            (".dockerignore", "secret.env\napp/private\n"),
            ("secret.env", "TOKEN=do-not-leak\n"),
            ("app/main.txt", "visible\n"),
            ("app/private/key", "do-not-leak\n"),
        ],
    ) else {
        return;
    };
    build(&env, &ctx, "bind:1", &[]);
    let Some(root) = unpack(&env, "bind:1") else {
        return;
    };
    let listing = read(&root, "/listing");
    assert!(
        listing.contains("busybox") && listing.contains("app"),
        "{listing}"
    );
    assert!(
        !listing.contains("secret.env"),
        "ignored file visible to RUN: {listing}"
    );
    assert_eq!(read(&root, "/main"), "visible\n");
    assert!(
        !read(&root, "/applist").contains("private"),
        "ignored dir visible"
    );
    // The user's context is untouched and still has its files.
    assert!(ctx.join("secret.env").exists() && ctx.join("app/private/key").exists());
}

/// Each bind mount gets its own source, also after a cache mount (every
/// bind used to get the first mount's source), and two `sharing=locked`
/// mounts of one cache id lock it once (the second lock waited forever).
#[test]
fn bind_mounts_get_their_own_sources_and_one_cache_id_locks_once() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\n\
         RUN --mount=type=cache,target=/c --mount=type=bind,source=a.txt,target=/ma \
         --mount=type=bind,source=b.txt,target=/mb cat /ma /mb > /both\n\
         RUN --mount=type=cache,id=x,target=/a,sharing=locked \
         --mount=type=cache,id=x,target=/b,sharing=locked sh -c 'echo one > /a/f && cat /b/f > /locked'\n",
        &[("a.txt", "A\n"), ("b.txt", "B\n")],
    ) else {
        return;
    };
    build(&env, &ctx, "b:1", &[]);
    let Some(root) = unpack(&env, "b:1") else {
        return;
    };
    assert_eq!(read(&root, "/both"), "A\nB\n");
    assert_eq!(
        read(&root, "/locked"),
        "one\n",
        "both targets are the one cache"
    );
}

/// A secret that an environment variable cannot hold exactly is refused,
/// naming the secret and never showing its value.
#[test]
fn a_secret_env_with_a_nul_byte_is_refused_without_showing_it() {
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "FROM base\nRUN --mount=type=secret,id=bin,env=BIN true\n",
        &[],
    ) else {
        return;
    };
    let file = env.path("bin.secret");
    std::fs::write(&file, b"prefix\0MARK-9d1e-secret").unwrap();
    let spec = format!("id=bin,src={}", file.display());
    let mut args = vec!["build", "--progress", "plain", "--secret", &spec];
    let c = ctx.to_str().unwrap();
    args.push(c);
    let out = env.rbuild(&args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("secret bin cannot be the environment variable BIN") && err.contains("hint:"),
        "{err}"
    );
    assert!(!err.contains("MARK-9d1e"), "the secret was shown: {err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("MARK-9d1e"));
}

/// The steps after a `COPY --link` still depend on what is below it (the
/// link COPY's own key leaves its parent out, and the steps after took
/// that key as theirs); `SOURCE_DATE_EPOCH` changes the layers it clamps.
#[test]
fn steps_after_a_link_copy_and_source_date_epoch_are_keyed() {
    let env = Env::new();
    for v in ["one", "two"] {
        let Some(ctx) = context(&env, &format!("FROM base\nRUN echo {v} > /marker\n"), &[]) else {
            return;
        };
        build(&env, &ctx, &format!("mk:{v}"), &[]);
    }
    // Only the base image differs between the two builds.
    let linked = env.context(
        "linked",
        &[
            (
                "Dockerfile",
                "ARG B\nFROM mk:$B\nCOPY --link f /f\nRUN cat /marker > /out\n",
            ),
            ("f", "f\n"),
        ],
    );
    build(&env, &linked, "l:1", &["--build-arg", "B=one"]);
    build(&env, &linked, "l:2", &["--build-arg", "B=two"]);
    let Some(root) = unpack(&env, "l:2") else {
        return;
    };
    assert_eq!(
        read(&root, "/out"),
        "two\n",
        "the RUN after the link COPY was reused"
    );

    let plain = env.context(
        "plain",
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x\n")],
    );
    let digest = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("writing image ").map(str::to_string))
            .unwrap_or_default()
    };
    build(&env, &plain, "e:0", &[]);
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1"];
    let cached = digest(&build(&env, &plain, "e:1", &epoch));
    let mut clean_args = epoch.to_vec();
    clean_args.push("--no-cache");
    let clean = digest(&build(&env, &plain, "e:2", &clean_args));
    assert!(!clean.is_empty());
    assert_eq!(
        cached, clean,
        "a layer made without SOURCE_DATE_EPOCH was reused"
    );
}
