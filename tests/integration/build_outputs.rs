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

/// `-o DIR` into a directory that already holds files: files the image
/// lacks are left alone, whatever whiteouts its layers hold (a file the
/// image deleted, a directory it made opaque); the image's files are
/// written. Applied layer by layer, a whiteout deleted the user's files.
#[test]
fn a_local_output_leaves_the_files_already_there() {
    let Some(busybox) = tool("busybox", "busybox-static") else {
        return;
    };
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY busybox /bin/busybox\n\
                 COPY victim.txt /victim.txt\nCOPY d /d\n\
                 RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox rm /victim.txt && /bin/busybox rm -r /d && /bin/busybox mkdir /d && echo new > /d/n\"]\n",
            ),
            ("victim.txt", "from the image\n"),
            ("d/old", "old\n"),
        ],
    );
    std::fs::copy(&busybox, ctx.join("busybox")).unwrap();
    let dest = env.path("dest");
    std::fs::create_dir_all(dest.join("d")).unwrap();
    std::fs::write(dest.join("victim.txt"), "the user's\n").unwrap();
    std::fs::write(dest.join("d/user.txt"), "the user's too\n").unwrap();
    std::fs::write(dest.join("notes.txt"), "keep\n").unwrap();
    let out = env.rbuild(&["build", "-o", dest.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |p: &str| std::fs::read_to_string(dest.join(p)).unwrap();
    assert_eq!(read("victim.txt"), "the user's\n");
    assert_eq!(read("d/user.txt"), "the user's too\n");
    assert_eq!(read("notes.txt"), "keep\n");
    assert_eq!(read("d/n"), "new\n");
    assert!(!dest.join("d/old").exists(), "the image deleted d/old");
    assert!(dest.join("bin/busybox").exists());
    // Into an empty directory: the same files.
    let fresh = env.path("fresh");
    let out = env.rbuild(&[
        "build",
        "-o",
        fresh.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!fresh.join("victim.txt").exists() && !fresh.join("d/old").exists());
    assert_eq!(std::fs::read_to_string(fresh.join("d/n")).unwrap(), "new\n");
}
