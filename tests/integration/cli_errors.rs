//! Each class of failure, produced as a user would hit it: the exit code
//! (docs/cli.md, "Exit codes"), the message printed once, and the hint.
//! Also corrupt store state (reported as corrupt, never as "not found"),
//! an unknown USER, and Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, stderr, tool, Env};

const BASE: &str = "FROM scratch\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
    RUN mkdir -p /etc && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd \
    && echo 'root:x:0:' > /etc/group\n";

/// A context with the static busybox and a Dockerfile of BASE + `rest`.
fn busybox_context(env: &Env, rest: &str) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let ctx = env.context("ctx", &[("Dockerfile", &format!("{BASE}{rest}"))]);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    Some(ctx)
}

fn build(env: &Env, ctx: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().expect("utf-8 path"));
    env.rbuild(&args)
}

/// The code, and the stderr that must hold `needle` exactly once.
fn assert_fails(out: &Output, code: i32, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.matches(needle).count(), 1, "{needle:?} once in:\n{err}");
    assert_eq!(error_lines(&err), 1, "one error in:\n{err}");
    err
}

/// Lines that start an error (warnings may quote "client error:" etc.).
fn error_lines(err: &str) -> usize {
    err.lines()
        .filter(|l| l.starts_with("error:") || l.contains(": error: "))
        .count()
}

fn hint_of(err: &str) -> &str {
    let (_, hint) = err
        .rsplit_once("\nhint: ")
        .unwrap_or_else(|| panic!("no hint in:\n{err}"));
    hint.trim_end()
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\n")]);
    let out = build(&env, &ctx, &["--compression-level", "55"]);
    assert_fails(&out, 2, "gzip compression level is 0-9, not 55");
    // clap's own refusal, the same class.
    let out = build(&env, &ctx, &["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = env.rbuild(&["pull", "UPPER/Case:x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = env.rbuild(&["tag", "app:1", "BAD:x"]);
    assert_fails(&out, 2, "repository name must be lowercase");
    assert!(!env.root().exists(), "a usage error opens no store");
}

#[test]
fn a_dockerfile_error_exits_3_with_its_location() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\nBOGUS x\n")]);
    let out = build(&env, &ctx, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(
        err.matches("ctx/Dockerfile:2:1: error: unknown instruction: BOGUS")
            .count(),
        1,
        "{err}"
    );
    // `rbuild check` uses the same code for the same file.
    let out = env.rbuild(&["check", ctx.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn a_missing_copy_source_is_a_failed_step() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\nCOPY nothere /x\n")]);
    let out = build(&env, &ctx, &[]);
    assert_fails(
        &out,
        4,
        "Dockerfile:2: COPY nothere /x: file not found in build context or excluded by \
         .dockerignore: nothere",
    );
}

#[test]
fn a_failed_run_exits_4_naming_the_step() {
    let env = Env::new();
    let Some(ctx) = busybox_context(&env, "RUN echo hi && exit 3\n") else {
        return;
    };
    let out = build(&env, &ctx, &[]);
    assert_fails(
        &out,
        4,
        "ctx/Dockerfile:5: RUN echo hi && exit 3: process \"/bin/sh -c echo hi && exit 3\" \
         did not complete successfully: exit code: 3",
    );
}

#[test]
fn an_unknown_user_fails_like_buildkit() {
    let env = Env::new();
    let Some(ctx) = busybox_context(&env, "USER ghost\nRUN true\n") else {
        return;
    };
    let out = build(&env, &ctx, &[]);
    let err = assert_fails(&out, 4, "unable to find user ghost");
    assert!(err.contains("ctx/Dockerfile:6: RUN true"), "{err}");
    assert!(hint_of(&err).contains("numeric uid"), "{err}");
    // --chown: looked up in the stage's passwd, never taken as root.
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY --chown=ghost a /a\n"),
            ("a", "x"),
        ],
    );
    let out = build(&env, &ctx, &[]);
    assert_fails(&out, 4, "unable to find user ghost");
}

#[test]
fn an_unreachable_registry_exits_5() {
    let env = Env::new();
    // Nothing listens on port 1: connection refused, after the retries.
    let out = env.rbuild(&["pull", "--registry-timeout", "2", "127.0.0.1:1/app:v1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert_eq!(error_lines(&err), 1, "{err}");
    assert!(err.contains("cannot reach registry 127.0.0.1:1"), "{err}");
    // A FROM image pulled during a build: the same class.
    let ctx = env.context("ctx", &[("Dockerfile", "FROM 127.0.0.1:1/app:v1\n")]);
    let out = build(&env, &ctx, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn a_registry_error_answer_exits_5() {
    if tool("docker-registry", "docker-registry").is_none() {
        return;
    }
    let reg = common::RegistryGuard::start(common::RegistryConf::default());
    let env = Env::new();
    let reference = format!("{}/nothing:here", reg.addr());
    let out = env.rbuild(&["pull", &reference]);
    let err = assert_fails(&out, 5, "MANIFEST_UNKNOWN");
    assert!(err.contains(&reference), "names the reference: {err}");
}

#[test]
fn a_corrupt_index_is_reported_as_corrupt_not_missing() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\nLABEL a=b\n")]);
    env.rbuild_ok(&["build", "-q", "-t", "base:1", ctx.to_str().unwrap()]);
    let index = env.root().join("index.json");
    std::fs::write(&index, "{\"schemaVersion\":2,\"manifests\":[").unwrap();
    let shown = std::fs::canonicalize(&index).unwrap();
    let needle = format!("the store's index {} is corrupt", shown.display());
    for args in [
        &["images"][..],
        &["inspect", "base:1"],
        &["push", "base:1", "127.0.0.1:1/a"],
    ] {
        let out = env.rbuild(args);
        let err = assert_fails(&out, 6, &needle);
        assert!(!err.contains("no such image"), "{args:?}: {err}");
        assert!(hint_of(&err).contains("move it aside"), "{err}");
    }
    // A build FROM the stored image does not take it as absent (and pull).
    let ctx = env.context("ctx2", &[("Dockerfile", "FROM base:1\nLABEL c=d\n")]);
    let out = build(&env, &ctx, &["--pull=never"]);
    assert_fails(&out, 6, &needle);
    // Moved aside as the hint says: the store works again (with no tags).
    std::fs::rename(&index, env.root().join("index.json.bad")).unwrap();
    let out = env.rbuild_ok(&["images"]);
    assert!(
        !common::stdout(&out).contains("base"),
        "{}",
        common::stdout(&out)
    );
}

#[test]
fn a_corrupt_cache_record_is_a_miss_that_says_so() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "x")],
    );
    let out = build(&env, &ctx, &["-t", "app:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = env.root().join("rbuild/cache");
    let records: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!records.is_empty());
    for r in &records {
        std::fs::write(r, "{\"schema\":1,\"key\":").unwrap();
    }
    let out = build(&env, &ctx, &["-t", "app:1"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let miss = err
        .lines()
        .find(|l| l.contains("cache miss:"))
        .unwrap_or_else(|| panic!("no miss in:\n{err}"));
    assert!(miss.contains("the store's cache record"), "{miss}");
    assert!(miss.contains("is corrupt: EOF while parsing"), "{miss}");
    assert!(
        records
            .iter()
            .any(|r| miss.contains(&*r.file_name().unwrap().to_string_lossy())),
        "the miss names the record's file: {miss}"
    );
    // Rewritten: the next build hits.
    let out = build(&env, &ctx, &["-t", "app:1"]);
    let err = stderr(&out);
    assert!(err.contains("CACHED") && !err.contains("corrupt"), "{err}");
}

#[test]
fn context_errors_exit_7() {
    let env = Env::new();
    let out = env.rbuild(&["build", "-q", env.path("no-such-dir").to_str().unwrap()]);
    assert_fails(&out, 7, "is not a directory, a tarball, `-` or a URL");
    let ctx = env.context("ctx", &[("a", "x")]);
    let out = env.rbuild(&["build", "-q", ctx.to_str().unwrap()]);
    let err = assert_fails(&out, 7, "reading Dockerfile");
    assert!(hint_of(&err).contains("unless -f names another"), "{err}");
}

#[test]
fn an_unsafe_store_exits_6() {
    let env = Env::new();
    std::fs::create_dir_all(env.root()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = env.rbuild(&["images"]);
    let err = assert_fails(&out, 6, "is writable by other users");
    assert!(hint_of(&err).contains("chmod go-w"), "{err}");
}

/// A build whose last RUN sleeps, started in a process group of its own
/// (as a shell starts a job), and its stderr so far.
struct SleepingBuild {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl SleepingBuild {
    /// Returns `settle` after the sleeping RUN's step has started.
    fn start(env: &Env, settle: Duration) -> Option<SleepingBuild> {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let ctx = busybox_context(env, "RUN sleep 60\n")?;
        let mut child = Command::new(common::rbuild_bin())
            .args(["--root", env.root().to_str().unwrap()])
            .args(["build", "--progress", "plain", "-t", "app:1"])
            .arg(&ctx)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn rbuild");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the sleeping RUN starts");
            if line.contains("RUN sleep 60") {
                break;
            }
        }
        // The step is announced just before its sandbox starts.
        std::thread::sleep(settle);
        Some(SleepingBuild { child, lines })
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// The exit status, how long it took after `since`, and the rest of stderr.
    fn wait(mut self, since: Instant) -> (std::process::ExitStatus, Duration, String) {
        let status = self.child.wait().unwrap();
        let took = since.elapsed();
        let rest: Vec<String> = self.lines.iter().collect();
        (status, took, rest.join("\n"))
    }
}

#[test]
fn ctrl_c_stops_the_build_cleans_up_and_exits_130() {
    let env = Env::new();
    let Some(build) = SleepingBuild::start(&env, Duration::from_millis(1500)) else {
        return;
    };
    let sent = Instant::now();
    // What a terminal's Ctrl-C does: SIGINT to the whole process group.
    nix::sys::signal::killpg(build.pid(), nix::sys::signal::Signal::SIGINT).unwrap();
    let (status, took, err) = build.wait(sent);
    assert!(
        took < Duration::from_secs(20),
        "waited for the RUN: {took:?}"
    );
    assert_eq!(status.code(), Some(130), "{status:?}\n{err}");
    assert_eq!(error_lines(&err), 1, "{err}");
    assert!(
        err.contains("Dockerfile:5: RUN sleep 60: interrupted by SIGINT"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(env.root().join("rbuild/tmp"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "temp dirs outlived the build: {left:?}");
    let out = env.rbuild(&["inspect", "app:1"]);
    assert!(!out.status.success(), "an interrupted build tags nothing");
}

#[test]
fn sigterm_to_rbuild_alone_ends_the_run_too() {
    let env = Env::new();
    // At once: the sandbox may still be starting (it is ended when it is
    // listed).
    let Some(build) = SleepingBuild::start(&env, Duration::ZERO) else {
        return;
    };
    let sent = Instant::now();
    // A supervisor that signals only the main pid, not the group.
    nix::sys::signal::kill(build.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, took, err) = build.wait(sent);
    assert!(
        took < Duration::from_secs(20),
        "waited for the RUN: {took:?}\n{err}"
    );
    assert_eq!(status.code(), Some(143), "{status:?}\n{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    let out = env.rbuild(&["inspect", "app:1"]);
    assert!(!out.status.success(), "an interrupted build tags nothing");
}

#[test]
fn a_corrupt_manifest_is_reported_and_prune_refuses_to_sweep() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "x")],
    );
    env.rbuild_ok(&["build", "-q", "-t", "app:1", ctx.to_str().unwrap()]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root().join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blobs = env.root().join("blobs/sha256");
    let manifest = blobs.join(digest.trim_start_matches("sha256:"));
    std::fs::write(&manifest, "not json").unwrap();
    let count = || std::fs::read_dir(&blobs).unwrap().count();
    let before = count();
    // Reading the image says corrupt too, naming the blob.
    let out = env.rbuild(&["inspect", "app:1"]);
    let err = assert_fails(&out, 6, "is corrupt");
    assert!(
        err.contains(&digest) && err.contains("does not parse"),
        "{err}"
    );
    let out = env.rbuild(&["prune"]);
    let err = assert_fails(&out, 6, "is corrupt");
    assert!(err.contains(&digest), "{err}");
    assert!(hint_of(&err).contains("rbuild rmi"), "{err}");
    assert_eq!(count(), before, "nothing was swept");
}

/// The column and the caret count characters: multibyte characters before
/// the fault do not push them to the right.
#[test]
fn columns_and_carets_count_characters() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --chown=éééé --bogus=1 a b\n",
        )],
    );
    let out = build(&env, &ctx, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("Dockerfile:2:19:"), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("COPY --chown"))
        .expect("the line");
    let caret = err
        .lines()
        .find(|l| l.trim_end().ends_with('^'))
        .expect("a caret");
    let at = |l: &str, i: usize| l.chars().nth(i);
    let col = caret.chars().count() - 1;
    assert_eq!(at(line, col), Some('-'), "{err}");
    assert_eq!(
        line.chars().skip(col).take(7).collect::<String>(),
        "--bogus",
        "{err}"
    );
}
