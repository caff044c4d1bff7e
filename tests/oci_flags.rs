//! The build flags that speak the `oci` vocabulary (`--compression`,
//! `--compression-level`, `--format`, `--platform`): each bad value is
//! refused once, naming the flag and the rule.

mod common;

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
