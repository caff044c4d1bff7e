//! The mount-point directories a RUN step leaves in its layer, as BuildKit's
//! do: runc creates `/proc`, `/dev`, `/sys`, `/etc` (for the hosts and
//! resolv.conf mounts) and every mount's target (for a file mount, its parent
//! directory) in the rootfs when the image lacks them,
//! and BuildKit's diff keeps them — empty, 0755, root-owned — with their
//! missing parents. rbuild's sandbox makes its mount points outside the upper
//! dir (so nothing the command did not write is read back as a change); this
//! module adds the same directories to the layer afterwards, so the image is
//! the one BuildKit builds (`tests/conformance`, cases `run-*`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::layer::{EntryKind, LayerEntry, Timespec};
use crate::sandbox::MountSpec;

/// The directories the step's mounts need: the kernel filesystems, `/etc`
/// and each user mount's target (a file bind's parent).
pub fn needed(user_mounts: &[MountSpec]) -> Vec<String> {
    // /etc holds the managed hosts, resolv.conf and hostname mounts.
    let mut dirs: Vec<String> = ["/proc", "/dev", "/sys", "/etc"]
        .iter()
        .map(|d| d.to_string())
        .collect();
    for m in user_mounts {
        match m {
            MountSpec::Tmpfs { target, .. } => dirs.push(target.clone()),
            MountSpec::Bind { source, target, .. } if source.is_dir() => dirs.push(target.clone()),
            MountSpec::Bind { target, .. } | MountSpec::File { target, .. } => {
                if let Some((parent, _)) = target.rsplit_once('/') {
                    dirs.push(parent.to_string());
                }
            }
        }
    }
    dirs
}

/// Entries for the directories of `dirs` (and their parents) that `lowers`,
/// the stage's files before the step (layer dirs, topmost first, read with
/// overlay rules), lack and `entries` does not already
/// hold. A path through a symlink or a file is left alone: the sandbox
/// resolved it inside the image, and no directory was created there.
pub fn missing_entries(
    lowers: &[PathBuf],
    dirs: &[String],
    entries: &[LayerEntry],
    mtime: Timespec,
) -> Vec<LayerEntry> {
    let mut seen: BTreeSet<String> = entries.iter().map(|e| e.path.clone()).collect();
    let mut view = crate::layer::MergedView::new(lowers);
    let mut out = Vec::new();
    for dir in dirs {
        let mut rel = String::new();
        for comp in dir.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                break;
            }
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(comp);
            match view.lookup(&rel).map(std::fs::symlink_metadata) {
                Some(Ok(meta)) if meta.is_dir() => continue,
                Some(Ok(_)) => break,
                _ => {}
            }
            if seen.insert(rel.clone()) {
                out.push(LayerEntry {
                    path: rel.clone(),
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime,
                    xattrs: Vec::new(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_targets_and_parents_only() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("link")).unwrap();
        let file = root.path().join("etc/secret");
        std::fs::write(&file, "x").unwrap();
        let mounts = vec![
            MountSpec::Tmpfs {
                target: "/cache/deep".into(),
                size: None,
            },
            MountSpec::Bind {
                source: file,
                target: "/run/secrets/s".into(),
                readonly: true,
            },
            MountSpec::Tmpfs {
                target: "/link/x".into(),
                size: None,
            },
            MountSpec::Tmpfs {
                target: "/etc".into(),
                size: None,
            },
        ];
        let dirs = needed(&mounts);
        let got = missing_entries(
            &[root.path().to_path_buf()],
            &dirs,
            &[],
            Timespec::new(0, 0),
        );
        let paths: Vec<&str> = got.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["dev", "sys", "cache", "cache/deep", "run", "run/secrets"]
        );
        assert!(got
            .iter()
            .all(|e| e.mode == 0o755 && e.uid == 0 && e.kind == EntryKind::Dir));
    }
}
