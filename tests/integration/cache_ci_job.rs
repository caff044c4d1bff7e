//! A CI job with a registry cache (issue 11): the fresh runner's seeded
//! store resumes the earlier layer's unchanged start, and `--push`
//! uploads the image's layers while later steps run — without ever
//! tagging an image whose build failed.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cache_seed::{build, write_tree};
use common::{require_root, stderr, tool, Env, RegistryConf, RegistryGuard};

fn context(env: &Env, dockerfile: &str, changed: bool) -> PathBuf {
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile)]);
    write_tree(&ctx, changed.then_some(200));
    ctx
}

/// The number before `word` in the log's first line that has `word`.
fn count_before(log: &str, word: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(word))?;
    let before = line[..line.find(word)?].trim_end();
    let digits: String = before
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

#[test]
fn a_fresh_runner_resumes_the_layer_it_seeded_from_the_registry() {
    if tool("docker-registry", "docker-registry").is_none() {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let cache = format!("{}/test/cache:1", reg.addr());
    let df = "FROM scratch\nCOPY tree/ /tree/\n";
    let a = Env::new();
    let ctx_a = context(&a, df, false);
    let to = format!("type=registry,ref={cache},mode=max");
    build(&a, &ctx_a, &["--cache-to", &to, "-t", "app:a"]);

    // A fresh store, one file changed: the earlier layer is seeded while
    // it downloads, with hash states, and the write resumes up to the
    // changed file without reading the files before it.
    let b = Env::new();
    let ctx_b = context(&b, df, true);
    let built = build(&b, &ctx_b, &["--cache-from", &cache, "-t", "app:b"]);
    let (log, digest) = (built.log, built.digest);
    let resumable = count_before(&log, "resumable from remote cache").expect(&log);
    assert!(resumable >= 4, "{log}");
    let resumed = count_before(&log, "resumed without reading").expect(&log);
    assert!(resumed >= 2, "{log}");
    // The earlier layer only fed the write: it is not in the store.
    let line = log.lines().find(|l| l.contains("resumable from")).unwrap();
    assert!(line.contains("not stored"), "{log}");
    let at = line.find("(layer sha256:").expect(line) + "(layer sha256:".len();
    let earlier = &line[at..at + 64];
    assert!(
        !b.root().join("blobs/sha256").join(earlier).exists(),
        "{log}"
    );
    // The new layer's own records serve the next rebuild on this store:
    // another file changes, and (without the cache) the unchanged start
    // resumes and the rest is copied.
    write_tree(&ctx_b, Some(250));
    let again = build(&b, &ctx_b, &["-t", "app:b2"]).log;
    let resumed = count_before(&again, "resumed without reading").expect(&again);
    assert!(resumed >= 2, "{again}");
    let compressed = count_before(&again, "compressed").expect(&again);
    assert!(compressed <= 3, "{again}");

    // Bit-identical to the same build cold in a fresh store.
    let cold = Env::new();
    let ctx_c = context(&cold, df, true);
    let cold_digest = build(&cold, &ctx_c, &["-t", "app:c"]).digest;
    assert_eq!(digest, cold_digest, "{log}");
}

/// A context with busybox, for RUN.
fn busybox_context(env: &Env, dockerfile: &str) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let ctx = context(env, dockerfile, false);
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    Some(ctx)
}

#[test]
fn push_uploads_layers_while_later_steps_run() {
    if tool("docker-registry", "docker-registry").is_none() || !require_root("RUN steps") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let app = format!("{}/test/app:1", reg.addr());
    let env = Env::new();
    let df = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY tree/ /tree/\n\
              RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox ls /tree > /list\"]\n";
    let Some(ctx) = busybox_context(&env, df) else {
        return;
    };
    let built = build(&env, &ctx, &["--push", "-t", &app]);
    let (log, digest) = (built.log, built.digest);
    let early = count_before(&log, "layer(s) uploaded while the build ran").expect(&log);
    assert!(early >= 2, "{log}");
    // The big layers (busybox's, the tree's) went up while written,
    // committed under the digest rbuild computed, which the registry
    // checked against the bytes it received.
    let streamed = count_before(&log, "streamed as written").expect(&log);
    assert!(streamed >= 1, "{log}");
    assert!(log.contains(&format!("pushed {app}@{digest}")), "{log}");
    if let Some(skopeo) = tool("skopeo", "skopeo") {
        // skopeo reads the pushed image and copies it, every blob
        // verified against its digest.
        let remote = format!("docker://{app}");
        let inspect = common::run_ok(std::process::Command::new(&skopeo).args([
            "inspect",
            "--tls-verify=false",
            &remote,
        ]));
        assert!(inspect.contains(&digest), "{inspect}");
        let oci = format!("oci:{}:copy", env.path("copied").display());
        common::run_ok(std::process::Command::new(&skopeo).args([
            "copy",
            "--src-tls-verify=false",
            &remote,
            &oci,
        ]));
    }
    // What the registry holds is the image, every blob verified on pull.
    let fresh = Env::new();
    let out = fresh.rbuild_ok(&["pull", &app]);
    assert!(out.status.success());
    let inspect = common::stdout(&fresh.rbuild_ok(&["inspect", "--format", "json", &app]));
    assert!(inspect.contains(&digest[7..]), "{inspect}");
}

/// The tree's layer is streamed to the registry while it is written (and
/// committed there as a blob), then the RUN fails: the build exits with
/// the step's code and no tag names anything.
#[test]
fn a_push_overlapping_a_failing_step_tags_nothing() {
    if tool("docker-registry", "docker-registry").is_none() || !require_root("RUN steps") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let app = format!("{}/test/app:1", reg.addr());
    let env = Env::new();
    let df = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY tree/ /tree/\n\
              RUN [\"/bin/busybox\", \"sh\", \"-c\", \"exit 7\"]\n";
    let Some(ctx) = busybox_context(&env, df) else {
        return;
    };
    let started = Instant::now();
    let out = env.rbuild(&[
        "build",
        "--progress",
        "plain",
        "--push",
        "-t",
        &app,
        ctx.to_str().unwrap(),
    ]);
    // The failed step's exit code class (4), promptly: the uploads in
    // flight were cancelled or finished, none held the build.
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(!stderr(&out).contains("pushed "), "{}", stderr(&out));
    // No tag: a fresh store cannot pull it.
    let fresh = Env::new();
    let pulled = fresh.rbuild(&["pull", &app]);
    assert!(!pulled.status.success(), "{}", stderr(&pulled));
}
