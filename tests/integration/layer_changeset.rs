//! Changesets from a real overlayfs upper dir and from comparing two trees:
//! the resulting layer, applied over the lower content, must reproduce the
//! new tree exactly.

use crate::layer_common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use layer_common::*;
use rbuild::layer::*;

fn lower_tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/keep"), "k").unwrap();
    fs::write(root.join("etc/gone"), "g").unwrap();
    fs::write(root.join("etc/edit"), "before").unwrap();
    fs::create_dir_all(root.join("old/x")).unwrap();
    fs::write(root.join("old/x/y"), "y").unwrap();
    fs::create_dir(root.join("opq")).unwrap();
    fs::write(root.join("opq/a"), "a").unwrap();
    fs::write(root.join("mode"), "m").unwrap();
    symlink("etc/keep", root.join("link")).unwrap();
}

/// The same edits a RUN step might make.
fn edit(merged: &Path) {
    fs::remove_file(merged.join("etc/gone")).unwrap();
    fs::write(merged.join("etc/edit"), "after!").unwrap();
    fs::remove_dir_all(merged.join("old")).unwrap();
    fs::remove_dir_all(merged.join("opq")).unwrap();
    fs::create_dir(merged.join("opq")).unwrap();
    fs::write(merged.join("opq/b"), "b").unwrap();
    fs::set_permissions(merged.join("mode"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(merged.join("link")).unwrap();
    symlink("etc/edit", merged.join("link")).unwrap();
    fs::create_dir_all(merged.join("new/deep")).unwrap();
    fs::write(merged.join("new/deep/f"), "f").unwrap();
    fs::hard_link(merged.join("new/deep/f"), merged.join("new/g")).unwrap();
    fs::write(merged.join("caps"), "c").unwrap();
    set_xattr(&merged.join("caps"), "user.tag", b"1");
    fs::write(merged.join("transient"), "t").unwrap();
    fs::remove_file(merged.join("transient")).unwrap();
}

fn apply(layers: &[Vec<LayerEntry>], dest: &Path) {
    for entries in layers {
        let mut blob = Vec::new();
        write_layer(entries.clone(), &mut blob, &WriteOptions::default()).unwrap();
        unpack_layer(
            &blob[..],
            dest,
            &UnpackOptions {
                strict: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
}

fn names(entries: &[LayerEntry]) -> Vec<String> {
    let mut v: Vec<String> = entries.iter().map(|e| e.tar_path()).collect();
    v.sort();
    v
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn overlay_upper_becomes_an_oci_changeset() {
    let t = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged, out] = ["lower", "upper", "work", "merged", "out"].map(|n| {
        let p = t.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    });
    lower_tree(&lower);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged));
    let _mount = Mount(merged.clone());
    edit(&merged);

    let changes = changeset_from_overlay_upper(&upper, std::slice::from_ref(&lower)).unwrap();
    let n = names(&changes);
    for expect in [
        "etc/.wh.gone",
        ".wh.old",
        "opq/.wh..wh..opq",
        "opq/b",
        "new/g",
        "caps",
        "link",
        "mode",
    ] {
        assert!(n.contains(&expect.to_string()), "missing {expect} in {n:?}");
    }
    assert!(
        !n.iter().any(|p| p.contains("transient")),
        "whiteout for a path absent from lower: {n:?}"
    );
    assert!(changes
        .iter()
        .all(|e| e.xattrs.iter().all(|(k, _)| !k.contains("overlay"))));
    assert_eq!(
        changes
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Hardlink { .. }))
            .count(),
        1
    );

    let lower_layer = entries_from_dir(&lower, &DirOptions::default()).unwrap();
    apply(&[lower_layer, changes], &out);
    assert_same_tree(&merged, &out);
}

/// Overlay copies objects up on any metadata call, even one that changes
/// nothing; BuildKit's differ leaves those out and keeps a directory only
/// as the parent of a real change.
#[test]
fn overlay_upper_leaves_out_what_was_copied_up_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged, out] = ["lower", "upper", "work", "merged", "out"].map(|n| {
        let p = t.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    });
    fs::create_dir_all(lower.join("usr/local/share")).unwrap();
    fs::create_dir_all(lower.join("usr/bin")).unwrap();
    fs::write(lower.join("usr/bin/tool"), "t").unwrap();
    fs::create_dir_all(lower.join("etc")).unwrap();
    fs::write(lower.join("etc/keep"), "k").unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged));
    let _mount = Mount(merged.clone());
    // No-op metadata calls: each copies the object and its parents up.
    for p in ["usr/local/share", "etc/keep", "usr/bin/tool"] {
        let mode = fs::metadata(merged.join(p)).unwrap().permissions().mode();
        fs::set_permissions(merged.join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    // One real change, next to an unchanged copied-up file.
    fs::write(merged.join("usr/bin/new"), "n").unwrap();
    assert!(upper.join("usr/local/share").is_dir() && upper.join("etc/keep").exists());

    let changes = changeset_from_overlay_upper(&upper, std::slice::from_ref(&lower)).unwrap();
    assert_eq!(names(&changes), ["usr", "usr/bin", "usr/bin/new"]);

    let lower_layer = entries_from_dir(&lower, &DirOptions::default()).unwrap();
    apply(&[lower_layer, changes], &out);
    assert_eq!(
        snapshot(&merged, false),
        snapshot(&out, false),
        "the smaller layer still rebuilds the tree"
    );
}

#[test]
fn diff_trees_matches_the_new_tree() {
    let t = tempfile::tempdir().unwrap();
    let (lower, new, out) = (
        t.path().join("lower"),
        t.path().join("new"),
        t.path().join("out"),
    );
    for d in [&lower, &new, &out] {
        fs::create_dir(d).unwrap();
    }
    lower_tree(&lower);
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", lower.display()))
        .arg(&new));
    // Same size, same whole-second mtime: only a content comparison sees it.
    fs::write(lower.join("etc/keep"), "1").unwrap();
    fs::write(new.join("etc/keep"), "2").unwrap();
    set_mtime(&lower.join("etc/keep"), 1_500_000_000, 0);
    set_mtime(&new.join("etc/keep"), 1_500_000_000, 0);
    set_mtime(&lower.join("etc"), 1_500_000_000, 0);
    set_mtime(&new.join("etc"), 1_500_000_000, 0);
    edit(&new);

    let changes = diff_trees(&lower, &new).unwrap();
    let n = names(&changes);
    for expect in [
        "etc/.wh.gone",
        ".wh.old",
        "etc/keep",
        "etc/edit",
        "new",
        "new/deep",
        "new/deep/f",
        "caps",
    ] {
        assert!(n.contains(&expect.to_string()), "missing {expect} in {n:?}");
    }
    assert!(
        !n.iter().any(|p| p.starts_with("old/")),
        "only the top-most whiteout: {n:?}"
    );
    apply(
        &[
            entries_from_dir(&lower, &DirOptions::default()).unwrap(),
            changes,
        ],
        &out,
    );
    assert_same_tree(&new, &out);
}
