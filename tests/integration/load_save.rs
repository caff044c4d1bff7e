//! `rbuild load` of archives written by skopeo (docker-archive and
//! oci-archive, plain and compressed, from a file and from stdin), every
//! blob verified; `rbuild save` of several images, to stdout, as OCI.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{rbuild_bin, run_ok, stderr, stdout, tool, Env};

fn with_stdin(env: &Env, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let t = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    t.join().unwrap();
    out
}

fn config_of(skopeo: &Path, transport: &str) -> String {
    run_ok(Command::new(skopeo).args(["inspect", "--config", "--raw", transport]))
}

/// An image with two layers in a fresh store; returns the store's env.
fn source_image() -> Env {
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY a /a\nCOPY d /d\nENV K=v\n",
            ),
            ("a", "alpha\n"),
            ("d/b", "beta\n"),
        ],
    );
    env.rbuild_ok(&["build", "-t", "app:v1", ctx.to_str().unwrap()]);
    env
}

#[test]
fn load_what_skopeo_writes() {
    let Some(skopeo) = tool("skopeo", "skopeo") else {
        return;
    };
    let src = source_image();
    let src_ref = format!("oci:{}:app:v1", src.root().display());
    let want_config = config_of(&skopeo, &src_ref);
    let docker = src.path("d.tar");
    let oci = src.path("o.tar");
    run_ok(
        Command::new(&skopeo)
            .args(["copy", "-q", &src_ref])
            .arg(format!("docker-archive:{}:loaded/app:v1", docker.display())),
    );
    run_ok(
        Command::new(&skopeo)
            .args(["copy", "-q", &src_ref])
            .arg(format!("oci-archive:{}:ociname:v2", oci.display())),
    );

    let env = Env::new();
    let out = env.rbuild_ok(&["load", "-i", docker.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("Loaded image: docker.io/loaded/app:v1"),
        "{}",
        stdout(&out)
    );
    // The config (so the image ID) is the same bytes.
    let got = config_of(
        &skopeo,
        &format!("oci:{}:docker.io/loaded/app:v1", env.root().display()),
    );
    assert_eq!(got, want_config);
    // Its layers are usable: a build on top of it exports the files.
    let ctx = env.context(
        "c",
        &[("Dockerfile", "FROM docker.io/loaded/app:v1\nLABEL on=top\n")],
    );
    let out_dir = env.path("files");
    env.rbuild_ok(&[
        "build",
        "--pull=never",
        "-o",
        out_dir.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("d/b")).unwrap(),
        "beta\n"
    );

    // OCI archive, gzip-compressed, on stdin.
    let gz = run_ok_bytes(Command::new("gzip").arg("-c").arg(&oci));
    let out = with_stdin(&env, &["load"], &gz);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Loaded image: ociname:v2"),
        "{}",
        stdout(&out)
    );
    let got = config_of(&skopeo, &format!("oci:{}:ociname:v2", env.root().display()));
    assert_eq!(got, want_config);
}

fn run_ok_bytes(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn a_corrupt_blob_is_refused_and_nothing_is_tagged() {
    let Some(skopeo) = tool("skopeo", "skopeo") else {
        return;
    };
    let src = source_image();
    let layout = src.path("layout");
    run_ok(
        Command::new(&skopeo)
            .args(["copy", "-q"])
            .arg(format!("oci:{}:app:v1", src.root().display()))
            .arg(format!("oci:{}:bad:v1", layout.display())),
    );
    // Flip a byte in the largest blob (a layer), keep its size.
    let blobs = layout.join("blobs/sha256");
    let victim = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let tar = src.path("bad.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );

    let env = Env::new();
    let out = env.rbuild(&["load", "-i", tar.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("hashes to"), "{err}");
    assert!(err.contains("bad.tar"), "{err}");
    let images = stdout(&env.rbuild_ok(&["images"]));
    assert!(!images.contains("bad"), "{images}");
}

#[test]
fn save_several_images_to_stdout_and_as_oci() {
    let Some(skopeo) = tool("skopeo", "skopeo") else {
        return;
    };
    let env = source_image();
    env.rbuild_ok(&["tag", "app:v1", "other:v2"]);
    let out = Command::new(rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(["save", "app:v1", "other:v2"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let file = env.path("both.tar");
    std::fs::write(&file, &out.stdout).unwrap();
    let want = config_of(&skopeo, &format!("oci:{}:app:v1", env.root().display()));
    for name in ["app:v1", "other:v2"] {
        let got = config_of(
            &skopeo,
            &format!("docker-archive:{}:{name}", file.display()),
        );
        assert_eq!(got, want, "{name}");
    }
    let oci = env.path("both.oci");
    env.rbuild_ok(&[
        "save",
        "--format",
        "oci",
        "-o",
        oci.to_str().unwrap(),
        "app:v1",
        "other:v2",
    ]);
    for name in ["app:v1", "other:v2"] {
        let got = config_of(&skopeo, &format!("oci-archive:{}:{name}", oci.display()));
        assert_eq!(got, want, "{name}");
    }
    // And back: the OCI archive loads into an empty store.
    let env2 = Env::new();
    let out = env2.rbuild_ok(&["load", "-i", oci.to_str().unwrap()]);
    assert_eq!(
        stdout(&out).matches("Loaded image:").count(),
        2,
        "{}",
        stdout(&out)
    );
}
