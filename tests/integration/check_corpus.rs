//! `rbuild check` over the shared corpus: every real-world Dockerfile and
//! every buildah conformance Dockerfile not meant to fail must pass (exit 0,
//! warnings allowed); the one that is invalid Dockerfile syntax
//! (`Dockerfile.env`, an unterminated quote on line 12) must fail there.
//! Also the CLI's output on examples/hello and on a file with three errors.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> Option<PathBuf> {
    common::corpus("")
}

fn check(file: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("check")
        .arg("-f")
        .arg(file)
        .output()
        .expect("runs rbuild");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dockerfiles(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| e.file_name().to_string_lossy().starts_with("Dockerfile"))
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

/// `dir/Dockerfile` paths of MANIFEST rows marked `fails` (several upstream
/// cases can share one Dockerfile: each path once).
fn meant_to_fail(dir: &Path) -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.md")).expect("reads MANIFEST.md");
    let mut files: Vec<PathBuf> = manifest
        .lines()
        .filter(|l| l.starts_with('|') && l.contains("| fails"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
            let (ctx, file) = (cols.get(3)?, cols.get(4)?);
            let base = if ctx.starts_with('(') {
                dir.to_path_buf()
            } else {
                dir.join(ctx)
            };
            Some(base.join(file))
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

#[test]
fn real_world_dockerfiles_pass() {
    let Some(c) = corpus() else { return };
    let files = dockerfiles(&c.join("real-world"));
    assert!(files.len() >= 47, "found only {} files", files.len());
    for f in &files {
        let (code, stdout, stderr) = check(f);
        assert_eq!(code, 0, "{}:\n{stderr}", f.display());
        assert!(stdout.starts_with("stage 0"), "{}: {stdout}", f.display());
    }
}

#[test]
fn buildah_conformance_dockerfiles_pass_unless_meant_to_fail() {
    let Some(c) = corpus() else { return };
    let dir = c.join("buildah-conformance");
    let fails = meant_to_fail(&dir);
    assert_eq!(fails.len(), 6, "{fails:?}");
    let env_file = dir.join("Dockerfile.env");
    let invalid = std::fs::read(&env_file).expect("reads Dockerfile.env");
    let files = dockerfiles(&dir);
    assert!(files.len() >= 91, "found only {} files", files.len());
    let mut passed = 0;
    for f in &files {
        let (code, _, stderr) = check(f);
        // Copies of the invalid file (transientmount/Dockerfile.env) fail too.
        if std::fs::read(f).ok().as_deref() == Some(&invalid[..]) {
            assert_eq!(code, 3, "{} should fail", f.display());
            assert!(stderr.contains("Dockerfile.env:12:"), "{stderr}");
            continue;
        }
        if fails.contains(f) {
            continue;
        }
        assert_eq!(code, 0, "{}:\n{stderr}", f.display());
        passed += 1;
    }
    assert!(passed >= 80, "only {passed} passed");
}

#[test]
fn hello_example_prints_the_summary() {
    let ctx = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("check")
        .arg(&ctx)
        .output()
        .expect("runs rbuild");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "stage 0 \"base\" FROM scratch (5 steps) [target]\n  LABEL org.opencontainers.image.title=\"hello\"\n  [1/2] WORKDIR /app\n  [2/2] COPY hello.txt ./\n  ENV GREETING=\"hello from rbuild\"\n  CMD [\"/bin/cat\", \"/app/hello.txt\"]\n"
    );
}

#[test]
fn every_error_is_printed_with_a_caret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let df = dir.path().join("Dockerfile");
    std::fs::write(&df, "FROM scratch\nCOPY --nope a b\nBOGUS x\n\tWORKDIR\n").expect("writes");
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .current_dir(dir.path())
        .args(["check", "-f", "Dockerfile", "."])
        .output()
        .expect("runs rbuild");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Dockerfile:2:6: error: unknown flag: --nope\n  2 | COPY --nope a b\n    |      ^\n\
         Dockerfile:3:1: error: unknown instruction: BOGUS\n  3 | BOGUS x\n    | ^\n\
         Dockerfile:4:2: error: WORKDIR requires exactly one argument\n  4 | \tWORKDIR\n    | \t^\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn target_and_build_args_on_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "ARG TAG=1\nFROM alpine:$TAG AS a\nFROM scratch AS b\nCOPY --from=a / /\nFROM busybox AS c\n",
    )
    .expect("writes");
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["check", "--target", "b", "--build-arg", "TAG=2"])
        .arg(dir.path())
        .output()
        .expect("runs rbuild");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stage 0 \"a\" FROM alpine:2 (0 steps)\n  [a 1/1] FROM docker.io/library/alpine:2\nstage 1 \"b\" FROM scratch (1 step) [target]\n  [b 1/1] COPY --from=a / /\n"
    );
}

/// What a build would reject is reported by `check`, at its line: a
/// non-octal `--chmod`, a bad `--checksum`, an unsupported `--security`.
#[test]
fn flag_values_a_build_rejects_are_check_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY a /a\nCOPY --chmod=abc a /b\nADD --checksum=md5:00 https://x/y /y\nRUN --security=insecure true\n",
    )
    .expect("writes");
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .current_dir(dir.path())
        .args(["check", "-f", "Dockerfile", "."])
        .output()
        .expect("runs rbuild");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("Dockerfile:3:1: error: invalid chmod parameter: 'abc'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Dockerfile:4:1: error: invalid checksum digest format"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Dockerfile:5:1: error: --security=insecure is not supported"),
        "{stderr}"
    );
}
