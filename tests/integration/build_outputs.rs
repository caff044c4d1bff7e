//! `--output` in every form buildx has: bare `DIR`, `type=local`,
//! `type=tar` (file and `-`), `type=oci|docker`, several at once.

use crate::common;

use std::process::{Command, Stdio};

use common::{rbuild_bin, run_ok, stderr, tool, Env};

fn tar_names(file: &std::path::Path) -> Vec<String> {
    let out = run_ok(Command::new("tar").arg("-tf").arg(file));
    out.lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn several_outputs_at_once() {
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[
            (
                "Dockerfile",
                "FROM scratch AS base\nCOPY a.txt /a.txt\nFROM base\nCOPY sub /sub\nLABEL x=y\n",
            ),
            ("a.txt", "alpha\n"),
            ("sub/deep/b.txt", "beta\n"),
        ],
    );
    let (dir1, dir2) = (env.path("out1"), env.path("out/2"));
    let (tarf, dock) = (env.path("files.tar"), env.path("img.tar"));
    let out = Command::new(rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "-o"])
        .arg(&dir1)
        .arg("-o")
        .arg(format!("type=local,dest={}", dir2.display()))
        .arg("-o")
        .arg(format!("type=tar,dest={}", tarf.display()))
        .arg("-o")
        .arg(format!("type=docker,dest={}", dock.display()))
        .args(["-o", "-"])
        .arg(&ctx)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(image ID sha256:"),
        "summary on stderr"
    );
    for d in [&dir1, &dir2] {
        assert_eq!(std::fs::read_to_string(d.join("a.txt")).unwrap(), "alpha\n");
        assert_eq!(
            std::fs::read_to_string(d.join("sub/deep/b.txt")).unwrap(),
            "beta\n"
        );
    }
    assert_eq!(
        tar_names(&tarf),
        ["a.txt", "sub", "sub/deep", "sub/deep/b.txt"]
    );
    // `-o -` streams the same tar to stdout, byte for byte.
    let file_bytes = std::fs::read(&tarf).unwrap();
    assert!(
        out.stdout == file_bytes,
        "stdout tar differs from the file tar"
    );
    if let Some(skopeo) = tool("skopeo", "skopeo") {
        let cfg = run_ok(
            Command::new(skopeo)
                .args(["inspect", "--config"])
                .arg(format!("docker-archive:{}", dock.display())),
        );
        assert!(cfg.contains("\"x\": \"y\""), "{cfg}");
    }
}

#[test]
fn oci_archive_to_stdout_is_read_by_skopeo() {
    let Some(skopeo) = tool("skopeo", "skopeo") else {
        return;
    };
    let env = Env::new();
    let ctx = env.context("c", &[("Dockerfile", "FROM scratch\nLABEL o=k\n")]);
    let out = Command::new(rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(["build", "-t", "x:1", "-o", "type=oci,dest=-"])
        .arg(&ctx)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let file = env.path("oci.tar");
    std::fs::write(&file, &out.stdout).unwrap();
    let cfg = run_ok(
        Command::new(skopeo)
            .args(["inspect", "--config"])
            .arg(format!("oci-archive:{}", file.display())),
    );
    assert!(cfg.contains("\"o\": \"k\""), "{cfg}");
}

#[test]
fn stdout_conflicts_are_refused() {
    let env = Env::new();
    let ctx = env.context("c", &[("Dockerfile", "FROM scratch\n")]);
    let c = ctx.to_str().unwrap();
    let out = env.rbuild(&["build", "-q", "-o", "-", c]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("hint: use --iidfile"),
        "{}",
        stderr(&out)
    );
    let out = env.rbuild(&["build", "-o", "-", "-o", "type=oci,dest=-", c]);
    assert!(
        stderr(&out).contains("only one --output"),
        "{}",
        stderr(&out)
    );
    let out = env.rbuild(&["build", "-o", "type=image,dest=x", c]);
    assert!(
        stderr(&out).contains("(oci, docker, local, tar)"),
        "{}",
        stderr(&out)
    );
}
