//! The build flags that speak the `oci` vocabulary (`--compression`,
//! `--compression-level`, `--format`, `--platform`): each bad value is
//! refused once, naming the flag and the rule.

use crate::common;

use common::{stderr, Env};

fn refused(env: &Env, args: &[&str]) -> String {
    let out = env.rbuild(args);
    assert!(!out.status.success(), "rbuild {args:?} should fail");
    stderr(&out)
}

#[test]
fn compression_levels_are_checked_per_codec() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\n")]);
    let ctx = ctx.to_str().unwrap();
    let err = refused(&env, &["build", "--compression-level", "12", ctx]);
    assert!(err.contains("--compression-level"), "{err}");
    assert!(
        err.contains("gzip compression level is 0-9, not 12"),
        "{err}"
    );
    let args = [
        "build",
        "--compression",
        "zstd",
        "--compression-level",
        "0",
        ctx,
    ];
    let err = refused(&env, &args);
    assert!(
        err.contains("zstd compression level is 1-22, not 0"),
        "{err}"
    );
    let err = refused(&env, &["build", "--compression", "brotli", ctx]);
    assert!(
        err.contains("gzip") && err.contains("zstd") && err.contains("none"),
        "{err}"
    );
}

#[test]
fn docker_format_has_no_zstd_layers() {
    let env = Env::new();
    let files = [("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "x")];
    let ctx = env.context("ctx", &files);
    let ctx = ctx.to_str().unwrap();
    let args = ["build", "--compression", "zstd", "--format", "docker", ctx];
    let err = refused(&env, &args);
    assert_eq!(
        err.matches("docker image format has no zstd layers; use the OCI format")
            .count(),
        1,
        "{err}"
    );
    // The same build in OCI format works, with a zstd layer.
    env.rbuild_ok(&["build", "-q", "--compression", "zstd", "-t", "z:1", ctx]);
    let out = env.rbuild_ok(&["inspect", "z:1", "--format", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(rbuild::oci::media::OCI_LAYER_ZSTD), "{text}");
}

#[test]
fn bad_platforms_name_the_flag_and_the_form() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\n")]);
    let ctx = ctx.to_str().unwrap();
    for bad in ["linux/", "linux", "linux/amd64/v1/x", "linux/am d64"] {
        let err = refused(&env, &["build", "--platform", bad, ctx]);
        assert!(err.contains("--platform"), "{bad}: {err}");
        assert!(err.contains("expected os/arch[/variant]"), "{bad}: {err}");
    }
}

/// The manifest digest of one small build (no RUN, so no root needed)
/// under SOURCE_DATE_EPOCH, per compression, format and platform (always
/// named, so the digests do not depend on the host). Pinned:
/// the vocabulary moved into `oci` without changing one byte (the same
/// digests came from the commit before the move), and a later change that
/// alters them must say why here.
#[test]
fn pinned_digests_per_compression_format_and_platform() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let dockerfile = "FROM scratch\nCOPY a.txt /a.txt\nCOPY sub /sub\nWORKDIR /work\n\
                      ENV A=1\nARG TARGETARCH\nLABEL arch=$TARGETARCH\nCMD [\"/a.txt\"]\n";
    let files = [
        ("Dockerfile", dockerfile),
        ("a.txt", "a\n"),
        ("sub/b.txt", "b\n"),
    ];
    let ctx = env.context("ctx", &files);
    for (path, mode) in [("a.txt", 0o644), ("sub", 0o755), ("sub/b.txt", 0o600)] {
        let perms = std::fs::Permissions::from_mode(mode);
        std::fs::set_permissions(ctx.join(path), perms).unwrap();
    }
    let ctx = ctx.to_str().unwrap();
    let meta = env.path("meta.json");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--platform", "linux/amd64"],
            "sha256:7dfb904e475f2b8a65889219e3b2cd400b9f7acdd44de79697b38d6faa04ce40",
        ),
        (
            &["--platform", "linux/amd64", "--compression", "zstd"],
            "sha256:3f1fe46bc34d12ccfea3c1e2c3abb32bf46e47841c97ce07d7531a144273d976",
        ),
        (
            &["--platform", "linux/amd64", "--compression", "none"],
            "sha256:d4c0845a237b2f283091aaf0f0729426cfa40448b8a21b01b0dd468e41f563ed",
        ),
        (
            &["--platform", "linux/amd64", "--format", "docker"],
            "sha256:5cef5a7ffceee14259c20a330114eae727c4138c667ac38273025829ffe58cf3",
        ),
        (
            &["--platform", "linux/arm64"],
            "sha256:f64ffea0d28871409c119adf6008bf0bddf75bdd7e51a543da9a0471a6322cb0",
        ),
        (
            &["--platform", "linux/arm64/v8"],
            "sha256:a38ed61cbdf81065172daab13dcd01d15672f15e49f7f92c646dcc630a5bffbe",
        ),
        (
            &["--platform", "linux/arm/v7"],
            "sha256:9591bcdfd3dbbd07ad88685e4406cbe883e9fbe047ee7ad19de610f187197b3a",
        ),
    ];
    let mut wrong = Vec::new();
    for (args, want) in cases {
        let mut cmd = std::process::Command::new(common::rbuild_bin());
        cmd.arg("--root")
            .arg(env.root())
            .args(["build", "-q", "--no-cache"]);
        cmd.args(*args).arg("--metadata-file").arg(&meta).arg(ctx);
        let out = cmd.env("SOURCE_DATE_EPOCH", "1700000000").output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        let got = m["containerimage.digest"].as_str().unwrap().to_string();
        if got != *want {
            wrong.push(format!("{args:?}: got {got}, pinned {want}"));
        }
    }
    assert!(wrong.is_empty(), "digests changed:\n{}", wrong.join("\n"));
}
