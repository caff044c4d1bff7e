//! Differential conformance with BuildKit: every case under
//! `tests/conformance/cases/` was built once with dockerd 20.10's BuildKit
//! (`tests/conformance/record.sh`) and its snapshot recorded in the case's
//! `expected.json`. Here each case is built with rbuild on the same base
//! image (Debian's static busybox, made on this machine) and its snapshot —
//! config, history, merged filesystem — must equal BuildKit's, or show
//! exactly the difference its `known-difference.txt` lists.

use crate::common;
use crate::conformance_support;

use common::{is_root, rbuild_bin, tool};
use conformance_support::snapshot::{Base, Snapshot};
use conformance_support::{all_cases, Case};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Build the base image into `store` and export it as a docker-archive.
fn build_base(work: &Path, store: &Path, busybox: &Path) -> PathBuf {
    let ctx = work.join("base");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/base");
    std::fs::create_dir_all(&ctx).unwrap();
    for name in ["Dockerfile", "passwd", "group"] {
        std::fs::copy(src.join(name), ctx.join(name)).unwrap();
    }
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    let tar = work.join("base.tar");
    let out = Command::new(rbuild_bin())
        .arg("--root")
        .arg(store)
        .args(["build", "--progress", "plain", "-t", "conformance-base:1"])
        .arg(&ctx)
        // Reproducible, so that every worker's store holds the same base.
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .expect("rbuild");
    assert!(
        out.status.success(),
        "base image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(rbuild_bin())
        .arg("--root")
        .arg(store)
        .args(["save", "conformance-base:1", "-o"])
        .arg(&tar)
        .output()
        .expect("rbuild save");
    assert!(
        out.status.success(),
        "save base: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tar
}

enum Outcome {
    Same,
    Known(String),
    Wrong(String),
}

fn check_case(case: &Case, work: &Path, store: &Path, base: &Base) -> Outcome {
    let expected: Value = match std::fs::read(case.dir.join("expected.json")) {
        Ok(b) => serde_json::from_slice(&b).expect("expected.json"),
        Err(_) => {
            return Outcome::Wrong(
                "no expected.json: record it (tests/conformance/README.md)".into(),
            )
        }
    };
    let ctx = work.join("ctx").join(&case.name);
    case.prepare(&ctx);
    let tar = work.join(format!("{}.tar", case.name));
    let out = Command::new(rbuild_bin())
        .arg("--root")
        .arg(store)
        .args(["build", "--progress", "plain", "--network", "host"])
        .arg("-o")
        .arg(format!("type=docker,dest={}", tar.display()))
        .args(case.args())
        .arg(".")
        .current_dir(&ctx)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("rbuild build");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let diff = if expected["build"] == "fails" {
        if out.status.success() {
            vec![
                "build: - fails (BuildKit rejects this build)".to_string(),
                "build: + succeeds".to_string(),
            ]
        } else {
            Vec::new()
        }
    } else if !out.status.success() {
        vec![
            "build: - succeeds".to_string(),
            "build: + fails".to_string(),
        ]
    } else {
        match Snapshot::read(&tar, base) {
            Ok(actual) => Snapshot::diff(&Snapshot::from_json(&expected), &actual),
            Err(e) => return Outcome::Wrong(format!("reading rbuild's image: {e}")),
        }
    };
    let _ = std::fs::remove_file(&tar);
    let _ = std::fs::remove_dir_all(&ctx);
    match case.known() {
        Some(k) if k.lines == diff => Outcome::Known(format!(
            "{} ({}): {}",
            case.name,
            if k.intended {
                "intended"
            } else {
                "not fixed yet"
            },
            k.reason
        )),
        Some(k) => Outcome::Wrong(format!(
            "known-difference.txt lists:\n    {}\nbut the difference is:\n    {}",
            k.lines.join("\n    "),
            diff.join("\n    ")
        )),
        None if diff.is_empty() => Outcome::Same,
        None if !out.status.success() => {
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Outcome::Wrong(format!(
                "rbuild failed where BuildKit succeeds:\n    {}",
                tail.join("\n    ")
            ))
        }
        None => Outcome::Wrong(diff.join("\n    ")),
    }
}

#[test]
fn every_case_builds_as_buildkit_built_it() {
    let Some(busybox) = tool("busybox", "busybox-static") else {
        return;
    };
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the conformance suite runs RUN steps as root"
        );
        eprintln!("skipping: the conformance suite needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // One store per worker: each store sees one rbuild process at a time.
    let stores = [work.path().join("store0"), work.path().join("store1")];
    let base = Base::read(&build_base(work.path(), &stores[0], &busybox)).expect("base image");
    build_base(work.path(), &stores[1], &busybox);
    // `RBUILD_CONFORMANCE_CASES=a,b` runs only those cases (while working on them).
    let only = std::env::var("RBUILD_CONFORMANCE_CASES").ok();
    let cases: Vec<Case> = all_cases()
        .into_iter()
        .filter(|c| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|n| n == c.name))
        })
        .collect();
    let total = cases.len();
    let queue = Mutex::new(cases);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for store in &stores {
            let (queue, results, base, work) = (&queue, &results, &base, work.path());
            s.spawn(move || loop {
                let Some(case) = queue.lock().unwrap().pop() else {
                    break;
                };
                let outcome = check_case(&case, work, store, base);
                results.lock().unwrap().push((case.name, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut same, mut known, mut wrong) = (0, Vec::new(), Vec::new());
    for (name, outcome) in results {
        match outcome {
            Outcome::Same => same += 1,
            Outcome::Known(k) => known.push(k),
            Outcome::Wrong(w) => wrong.push(format!("{name}:\n    {w}")),
        }
    }
    eprintln!(
        "{total} cases: {same} as BuildKit, {} known differences",
        known.len()
    );
    for k in &known {
        eprintln!("  known: {k}");
    }
    assert!(
        wrong.is_empty(),
        "{} of {total} cases differ from BuildKit:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        only.is_some() || total >= 80,
        "the suite should hold at least 80 cases, has {total}"
    );
}

/// Record mode, run by `tests/conformance/record.sh` (not part of the normal
/// run): turn the docker archives `docker save` wrote into `expected.json`.
#[test]
#[ignore = "run by tests/conformance/record.sh with dockerd's output"]
fn record_buildkit_snapshots() {
    let dir = PathBuf::from(
        std::env::var("RBUILD_CONFORMANCE_RECORD").expect("RBUILD_CONFORMANCE_RECORD"),
    );
    let version = std::fs::read_to_string(dir.join("version")).expect("version");
    let version = version.trim();
    let base = Base::read(&dir.join("base.tar")).expect("base.tar");
    // dockerd's snapshot paths change with every recording.
    let overlay = regex::Regex::new(r"\S*/overlay2/[^/\s]+/merged").expect("regex");
    for case in all_cases() {
        let tar = dir.join(format!("{}.tar", case.name));
        let json = if tar.exists() {
            Snapshot::read(&tar, &base)
                .expect("snapshot")
                .to_json(version)
        } else if dir.join(format!("{}.failed", case.name)).exists() {
            let log =
                std::fs::read_to_string(dir.join(format!("{}.log", case.name))).unwrap_or_default();
            let error = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            let error = overlay.replace_all(&error, "<rootfs>").into_owned();
            serde_json::json!({ "recorded_with": version, "build": "fails", "buildkit_error": error })
        } else {
            continue;
        };
        let text = serde_json::to_string_pretty(&json).unwrap() + "\n";
        std::fs::write(case.dir.join("expected.json"), text).unwrap();
        eprintln!("wrote {}/expected.json", case.name);
    }
}
