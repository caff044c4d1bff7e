//! Builds end to end for the smaller fixes of issue 8: device nodes kept by
//! ADD of a tar and COPY --from, sparse files kept sparse, missing secret
//! files, cache-miss reasons, COPY --from errors, and RUN layers without
//! objects overlay copied up unchanged.

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::{stderr, tool, Env};

const BASE: &str = "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
    RUN mkdir -p /tmp /etc /root /usr/local && chmod 1777 /tmp\n";

/// A context with the static busybox and a Dockerfile of BASE + `rest`.
fn busybox_context(env: &Env, rest: &str) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let dockerfile = format!("{BASE}{rest}");
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile.as_str())]);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    Some(ctx)
}

fn build(env: &Env, ctx: &Path, tag: &str) -> String {
    let out = env.rbuild_ok(&[
        "build",
        "--progress",
        "plain",
        "-t",
        tag,
        ctx.to_str().unwrap(),
    ]);
    stderr(&out)
}

fn blob(env: &Env, digest: &str) -> PathBuf {
    env.root()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The manifest of `tag` in the store.
fn manifest(env: &Env, tag: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root().join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index")
        .clone();
    serde_json::from_slice(&std::fs::read(blob(env, desc["digest"].as_str().unwrap())).unwrap())
        .unwrap()
}

fn layer_count(env: &Env, tag: &str) -> usize {
    manifest(env, tag)["layers"].as_array().unwrap().len()
}

/// Entries of the image's last layer: name, type, (major, minor), content.
type Entry = (String, tar::EntryType, (u32, u32), Vec<u8>);

fn last_layer(env: &Env, tag: &str) -> Vec<Entry> {
    layer_from_top(env, tag, 0)
}

/// Entries of the image's layer `n` places below the top (0: the last).
fn layer_from_top(env: &Env, tag: &str, n: usize) -> Vec<Entry> {
    let m = manifest(env, tag);
    let digest = m["layers"].as_array().unwrap().iter().rev().nth(n).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let f = std::fs::File::open(blob(env, &digest)).unwrap();
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let dev = (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            );
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            (name, h.entry_type(), dev, body)
        })
        .collect()
}

/// A tar with a char device, a block device, a FIFO and a file under `dev/`.
fn device_tar(path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, kind, major, minor) in [
        ("dev/null2", tar::EntryType::Char, 1, 3),
        ("dev/loop9", tar::EntryType::Block, 7, 9),
        ("dev/fifo", tar::EntryType::Fifo, 0, 0),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o600);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(2);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "dev/file", &b"hi"[..]).unwrap();
    b.finish().unwrap();
}

/// The same tests as an ordinary user with a subuid range (rootless mode).
#[test]
fn rootless_small_fixes() {
    common::rerun_as_test_user(module_path!(), "subid");
}

#[test]
fn add_of_a_tar_and_copy_from_keep_device_nodes() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch AS a\nADD dev.tar /d/\nFROM scratch\nCOPY --from=a /d /e\n",
        )],
    );
    device_tar(&ctx.join("dev.tar"));
    let log = build(&env, &ctx, "dev:1");
    if !common::is_root() {
        // Without the privilege to create nodes, the build says what it lacks.
        assert!(
            log.contains("ADD dev.tar: skipped device node /dev/null2"),
            "{log}"
        );
        return;
    }
    let entries = last_layer(&env, "dev:1");
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.0 == name)
            .map(|e| (e.1, e.2))
            .unwrap_or_else(|| panic!("{name} missing from {:?}", entries))
    };
    assert_eq!(find("e/dev/null2"), (tar::EntryType::Char, (1, 3)));
    assert_eq!(find("e/dev/loop9"), (tar::EntryType::Block, (7, 9)));
    assert_eq!(find("e/dev/fifo").0, tar::EntryType::Fifo);
}

/// The defence that makes keeping device nodes harmless: RUN sees the
/// image's files on a nodev root, so a node opens nothing, even as root.
#[test]
fn run_cannot_open_a_device_node_from_the_image() {
    let env = Env::new();
    let Some(ctx) = busybox_context(
        &env,
        "ADD dev.tar /d/\nRUN if echo x > /d/dev/null2; then echo OPENED; else echo REFUSED; fi > /result\n",
    ) else {
        return;
    };
    device_tar(&ctx.join("dev.tar"));
    let log = build(&env, &ctx, "nodev:1");
    if !common::is_root() {
        // Rootless, no node can be created at all: the build says so.
        assert!(
            log.contains("ADD dev.tar: skipped device node /dev/null2"),
            "{log}"
        );
        return;
    }
    let result = last_layer(&env, "nodev:1")
        .into_iter()
        .find(|e| e.0 == "result")
        .expect("result file");
    assert_eq!(String::from_utf8_lossy(&result.3), "REFUSED\n");
}

#[test]
fn a_copied_sparse_file_stays_sparse_on_disk() {
    let env = Env::new();
    let Some(ctx) = busybox_context(
        &env,
        "COPY sparse /s\nRUN stat -c %b /s > /blocks && wc -c < /s >> /blocks\n",
    ) else {
        return;
    };
    let f = std::fs::File::create(ctx.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"data", 1 << 20).unwrap();
    build(&env, &ctx, "sparse:1");
    let blocks = last_layer(&env, "sparse:1")
        .into_iter()
        .find(|e| e.0 == "blocks")
        .expect("blocks file");
    let text = String::from_utf8_lossy(&blocks.3).into_owned();
    let mut lines = text.lines();
    let used: u64 = lines.next().unwrap().trim().parse().unwrap();
    let size: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert_eq!(size, 64 << 20);
    // 512-byte units: a dense copy would use 131072.
    assert!(used <= 256, "the 64 MiB file uses {used} blocks: {text}");
}

#[test]
fn a_missing_secret_file_fails_even_when_no_step_uses_it() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\nENV A=1\n")]);
    let out = env.rbuild(&[
        "build",
        "--secret",
        "id=s,src=/nonexistent/secret",
        ctx.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--secret id=s: failed to stat the secret file /nonexistent/secret"),
        "{err}"
    );
    assert_eq!(err.matches("/nonexistent/secret").count(), 1, "{err}");
}

#[test]
fn a_missing_copy_from_path_names_the_stage() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch AS builder\nCOPY a /a\nFROM scratch\nCOPY --from=builder /app/x /x\n",
            ),
            ("a", "a"),
        ],
    );
    let out = env.rbuild(&["build", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/app/x not found in stage builder"), "{err}");
    assert!(!err.contains("not found in build context"), "{err}");
}

#[test]
fn a_missing_mount_from_source_names_the_stage() {
    let env = Env::new();
    let Some(ctx) = busybox_context(
        &env,
        "FROM base\nRUN --mount=type=bind,from=base,source=/nope,target=/m true\n",
    ) else {
        return;
    };
    let out = env.rbuild(&["build", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--mount source /nope not found in stage base"),
        "{err}"
    );
    assert!(!err.contains("rootfs-"), "no private temp path: {err}");
}

#[test]
fn cache_miss_reasons_quote_the_instruction_once_and_skip_unrelated_steps() {
    let env = Env::new();
    let Some(ctx) = busybox_context(&env, "RUN echo one > /f\n") else {
        return;
    };
    build(&env, &ctx, "miss:1");
    let dockerfile = format!("{BASE}RUN echo two > /f\n");
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let log = build(&env, &ctx, "miss:2");
    assert!(
        log.contains("cache miss: the instruction changed (was `RUN /bin/sh -c echo one > /f`)"),
        "{log}"
    );
    assert!(!log.contains("RUN RUN"), "{log}");

    // Another Dockerfile in the same store, same stage name and positions:
    // nothing of the first build is its earlier version.
    let other = env.context(
        "other",
        &[
            ("Dockerfile", "FROM scratch AS base\nCOPY x /x\nCOPY y /y\n"),
            ("x", "x"),
            ("y", "y"),
        ],
    );
    let log = build(&env, &other, "other:1");
    assert_eq!(
        log.matches("cache miss: no cache entry for this step")
            .count(),
        2,
        "{log}"
    );
}

/// A RUN that changes nothing adds an empty layer (as BuildKit does), even
/// though overlay copied the directory up; a RUN that adds a file carries
/// the file's parents, as BuildKit's layers do.
#[test]
fn run_layers_hold_changes_and_their_parents_only() {
    let env = Env::new();
    let Some(ctx) = busybox_context(
        &env,
        "RUN mkdir -p /usr/local/x && echo hi > /usr/local/x/file\nRUN chmod 755 /usr/local\n",
    ) else {
        return;
    };
    build(&env, &ctx, "noop:1");
    // busybox, --install, mkdir, the file, and the no-op chmod's empty layer.
    assert_eq!(layer_count(&env, "noop:1"), 5);
    assert!(last_layer(&env, "noop:1").is_empty(), "the no-op chmod");
    let names: Vec<String> = layer_from_top(&env, "noop:1", 1)
        .into_iter()
        .map(|e| e.0.trim_end_matches('/').to_string())
        .collect();
    assert_eq!(
        names,
        ["usr", "usr/local", "usr/local/x", "usr/local/x/file"]
    );
}

/// Without overlayfs the step runs on a copy that is diffed afterwards: the
/// copy keeps times, device nodes and FIFOs, and the sandbox's mount points
/// are not changes, so the layer holds only what the command did.
#[test]
fn no_overlay_run_layers_hold_only_the_change() {
    let env = Env::new();
    let Some(ctx) = busybox_context(&env, "ADD dev.tar /d/\nRUN touch /x\n") else {
        return;
    };
    device_tar(&ctx.join("dev.tar"));
    let out = std::process::Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "-t", "copy:1"])
        .arg(&ctx)
        .env("RBUILD_NO_OVERLAY", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<String> = last_layer(&env, "copy:1")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names, ["x"]);
}
