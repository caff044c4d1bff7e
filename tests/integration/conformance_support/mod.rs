//! Support for `tests/conformance.rs`: the cases under
//! `tests/conformance/cases/`, how their contexts are prepared, and the
//! snapshot both BuildKit's and rbuild's images are reduced to.

pub mod snapshot;

use std::path::{Path, PathBuf};
use std::process::Command;

/// One case: `context/` (the build context), optional `setup.sh` (run inside
/// the prepared context), `args` (extra build flags, one per line),
/// `expected.json` (BuildKit's result) and `known-difference.txt`.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
}

/// A difference from BuildKit kept in a list the test reads: the first line
/// says `intended: REASON` or `unfixed: REASON`; the other lines are the exact
/// diff the case must show.
pub struct Known {
    pub intended: bool,
    pub reason: String,
    pub lines: Vec<String>,
}

pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/cases")
}

pub fn all_cases() -> Vec<Case> {
    let mut names: Vec<String> = std::fs::read_dir(cases_dir())
        .expect("tests/conformance/cases")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| Case {
            dir: cases_dir().join(&name),
            name,
        })
        .collect()
}

impl Case {
    /// Extra `docker build` / `rbuild build` arguments.
    pub fn args(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("args"))
            .map(|t| {
                t.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn known(&self) -> Option<Known> {
        let text = std::fs::read_to_string(self.dir.join("known-difference.txt")).ok()?;
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("");
        let (kind, reason) = first.split_once(':').unwrap_or_else(|| {
            panic!(
                "{}: first line must be `intended: …` or `unfixed: …`",
                self.name
            )
        });
        Some(Known {
            intended: kind.trim() == "intended",
            reason: reason.trim().to_string(),
            lines: lines
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// Copy the context to `dst` as record.sh does: files 0644 (0755 when
    /// executable), directories 0755, symlinks as they are; then run the
    /// case's `setup.sh` inside it with umask 022.
    pub fn prepare(&self, dst: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dst).expect("mkdir context");
        let src = self.dir.join("context");
        if src.is_dir() {
            for entry in walkdir::WalkDir::new(&src).min_depth(1) {
                let entry = entry.expect("walk context");
                let rel = entry.path().strip_prefix(&src).expect("under context");
                let to = dst.join(rel);
                let ft = entry.file_type();
                if ft.is_symlink() {
                    let target = std::fs::read_link(entry.path()).expect("readlink");
                    std::os::unix::fs::symlink(target, &to).expect("symlink");
                } else if ft.is_dir() {
                    std::fs::create_dir_all(&to).expect("mkdir");
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
                        .expect("chmod");
                } else {
                    std::fs::copy(entry.path(), &to).expect("copy context file");
                    let exec = entry.metadata().expect("stat").permissions().mode() & 0o100 != 0;
                    let mode = if exec { 0o755 } else { 0o644 };
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                        .expect("chmod");
                }
            }
        }
        let setup = self.dir.join("setup.sh");
        if setup.exists() {
            let out = Command::new("sh")
                .arg("-c")
                .arg("umask 022 && sh \"$0\"")
                .arg(&setup)
                .current_dir(dst)
                .output()
                .expect("running setup.sh");
            assert!(
                out.status.success(),
                "{}: setup.sh failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
