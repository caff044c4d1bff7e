//! Pinned image digests: the same Dockerfiles under `SOURCE_DATE_EPOCH`
//! give byte-identical images from one rbuild version to the next. The
//! digests were recorded before the typed-plan refactor (issue 10) and
//! prove it changed no image; a change that alters one on purpose must say
//! why in its commit and record the new value here.
//!
//! Re-pinned once on purpose (issue 13, the libdeflate change): gzip layers
//! became one gzip member per chunk, compressed by libdeflate instead of
//! zlib-rs's sync-flushed raw deflate inside one member, so every gzip
//! layer's bytes (and so each manifest) changed while the tar streams, the
//! diff_ids and the cache keys did not. oci_flags.rs's zstd and
//! uncompressed pins did not move: nothing but the gzip framing changed.
//!
//! The cache keys of the layer steps are pinned too (the names of the
//! store's cache records): keys change only with a schema bump.
//!
//! Recorded on linux/amd64; every build passes `--platform linux/amd64` so
//! the config names the same platform on any host, and the RUN case keeps
//! busybox out of the final image (its bytes depend on the Debian package).

use crate::common;

use std::path::Path;

use common::{stdout, tool, Env};

const EPOCH: &str = "SOURCE_DATE_EPOCH=1700000000";

/// A tar with fixed headers (so its bytes, and the ADD layer, never vary).
fn fixed_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32, dir: bool| {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_uid(7);
        h.set_gid(8);
        if dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        } else {
            h.set_size(data.len() as u64);
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("t/", b"", 0o755, true);
    add("t/one.txt", b"one\n", 0o644, false);
    add("t/run.sh", b"#!/bin/sh\necho run\n", 0o755, false);
    b.into_inner().unwrap()
}

/// Write a context: every file 0644 and every dir 0755, whatever the umask.
fn context(env: &Env, name: &str, dockerfile: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let mut all = vec![("Dockerfile", dockerfile)];
    all.extend_from_slice(files);
    let ctx = env.context(name, &all);
    std::fs::write(ctx.join("files.tar"), fixed_tar()).unwrap();
    for e in walkdir::WalkDir::new(&ctx) {
        let e = e.unwrap();
        let mode = if e.file_type().is_dir() { 0o755 } else { 0o644 };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    ctx
}

fn build(env: &Env, ctx: &Path, tag: &str) -> String {
    env.rbuild_ok(&[
        "build",
        "--progress",
        "quiet",
        "--platform",
        "linux/amd64",
        "--build-arg",
        EPOCH,
        "-t",
        tag,
        ctx.to_str().unwrap(),
    ]);
    manifest_digest(env, tag)
}

fn manifest_digest(env: &Env, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.root().join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index")["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The cache keys recorded in the store, sorted.
fn cache_keys(env: &Env) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(env.root().join("rbuild/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .collect();
    keys.sort();
    keys
}

fn only_on_amd64() -> bool {
    if std::env::consts::ARCH == "x86_64" {
        return true;
    }
    // The pinned values were recorded on x86_64 (the host table decides
    // some defaults); another host needs its own recording.
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the pinned digests were recorded on x86_64, and CI=true forbids skipping");
    }
    eprintln!("skipping: digests were recorded on x86_64");
    false
}

const META: &str = r#"FROM scratch
COPY --chmod=0640 --chown=1000:1000 a.txt /app/
COPY --link b.txt /l/
COPY --exclude=*.md dir/ /d/
ADD files.tar /x/
ADD --chmod=600 a.txt /y/a
WORKDIR /app/sub
WORKDIR rel
ENV A=1 B="two words"
LABEL org.example.a=b "with space"="v $A"
ARG V=7
LABEL v=$V
CMD ["run", "x"]
ENTRYPOINT ["/bin/e"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=1m30s --retries=3 CMD ["check", "-q"]
EXPOSE 80 53/udp 8000-8002/tcp
USER 1000:1000
ONBUILD RUN echo hi
SHELL ["/bin/bash", "-c"]
STOPSIGNAL SIGTERM
VOLUME /data ["/logs"]
MAINTAINER someone
COPY <<EOF /app/h.txt
hello $A $V
EOF
COPY --chmod=755 <<'EOF' /app/raw.sh
#!/bin/sh
echo $A
EOF
"#;

const META_FILES: &[(&str, &str)] = &[
    ("a.txt", "a\n"),
    ("b.txt", "b\n"),
    ("dir/keep.txt", "keep\n"),
    ("dir/drop.md", "drop\n"),
    ("dir/sub/deep.txt", "deep\n"),
];

#[test]
fn metadata_copy_add_workdir_digest_is_pinned() {
    if !only_on_amd64() {
        return;
    }
    let env = Env::new();
    let ctx = context(&env, "meta", META, META_FILES);
    let digest = build(&env, &ctx, "pin:meta");
    assert_eq!(
        digest, "sha256:692490ed05519b479c96937db4235af2e604f9d9539c35317b1776755995fcf7",
        "image digest changed"
    );
    assert_eq!(
        cache_keys(&env),
        [
            "13c3e463c74e646cd68e3aa85a07f1ac158809b0d13d991d44444b8b1a57beaf",
            "1b121d2216eac9b63a7dae3a1dc6222bc8b78eaf7a4a3297d4a20eb09354eb6e",
            "2f6815560eb1a100ae09b8737c74fa3e486d62c7b14b925d8e1d20ffc75b486b",
            "3081ac3087d75022eb9438eb12a75790fe260c2785e8dc978bee0c164cc13491",
            "537dcc076cb3e1792bf0e9177a4dbdd77b66802c098f2493e84f212a377f2ead",
            "7d01cf2764fc423e6538c641c522234854a21827a45565fcd0af21a467bc1b45",
            "8e6b4e7ea6fe58736d41519873d9188e116d435d9548a1fc65b5a134755029b1",
            "aa5ce178d5625f66cc58caf08463f51418fc9b20973de39fee4de9867432c2a4",
            "e5eeb237c9572763bc9b3e8cf1cec2efbb6775e112f6b38c9e01d4c832d61406",
        ],
        "cache keys changed"
    );
    // A rebuild reuses every step and gives the same image.
    assert_eq!(build(&env, &ctx, "pin:meta2"), digest);
}

const MULTI: &str = r#"FROM scratch AS first
COPY a.txt /a.txt
WORKDIR /w
COPY dir/ /w/
FROM scratch AS second
COPY --from=first /a.txt /b/
COPY --from=first /w /w2
HEALTHCHECK NONE
FROM second
COPY --from=0 /w/keep.txt /
CMD echo shell form
"#;

#[test]
fn multi_stage_copy_from_digest_is_pinned() {
    if !only_on_amd64() {
        return;
    }
    let env = Env::new();
    let ctx = context(&env, "multi", MULTI, META_FILES);
    let digest = build(&env, &ctx, "pin:multi");
    assert_eq!(
        digest, "sha256:33df607f800cc59644aadf18b0097a663d79cacdb7c9e046828078729c030f4d",
        "image digest changed"
    );
    assert_eq!(
        cache_keys(&env),
        [
            "06b73e964e302470259faf3b2474678422e7e8b57e1af20d184f6657e4b1ee73",
            "289696e368eb454c58d74e6e0071b41e6a62c01f480bc95fe273c907f05b0dd2",
            "78af21a5c29ae8ad9918b9900eec0923974ec613f9ed73f8ac42508131714e0f",
            "b13e0cd55ebb76fbc4b76320d6538527a857be464da961dbdf39404563563d59",
            "b1536cd117d80b308d0c44d4e7713862fdd2128856471f8e18535f12f75d1815",
            "b46555390c8c11b020ea92875d815d1851f55d73c022c69f8985bccf18b1e9de",
        ],
        "cache keys changed"
    );
}

const RUN: &str = r#"FROM scratch AS tools
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG GREETING=hi
WORKDIR /out
RUN echo "$GREETING" > greeting && mkdir -p sub && printf 'x\ny\n' > sub/f && chmod 600 sub/f
RUN --network=none --mount=type=bind,source=a.txt,target=/mnt/a.txt cp /mnt/a.txt copied
RUN <<EOF
set -e
echo heredoc > /out/heredoc
EOF
FROM scratch
COPY --from=tools /out /out
"#;

#[test]
fn run_steps_digest_is_pinned() {
    if !only_on_amd64() || !common::require_root("RUN in the sandbox") {
        return;
    }
    let Some(busybox) = tool("busybox", "busybox-static") else {
        return;
    };
    let env = Env::new();
    let ctx = context(&env, "run", RUN, &[("a.txt", "a\n")]);
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    let digest = build(&env, &ctx, "pin:run");
    assert_eq!(
        digest, "sha256:36bbd5cac3ef5a5b0de921bd8ed29d9580df3e37b1324a1d42684fb742aa4314",
        "image digest changed"
    );
    let out = env.rbuild_ok(&["history", "--no-trunc", "pin:run"]);
    assert!(stdout(&out).contains("COPY /out /out"), "{}", stdout(&out));
}
