//! RUN over layer snapshots: each layer unpacked once into
//! `rbuild/layers/<diff_id hex>` (overlay whiteouts), a RUN's root an overlay
//! of them. The merged view must equal the one a plain unpack gives
//! (checked against the no-overlay fallback), snapshots must be reused
//! across builds, survive concurrent creation, go with `prune`, and work
//! for a stage taller than the kernel's overlay limits allow directly.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{stderr, tool, Env};

const BASE: &str = "FROM scratch\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
    RUN mkdir -p /tmp /etc /root && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group\n";

/// Three layers with a deleted file and an opaque dir, then the view.
const MERGED: &str = "RUN mkdir -p /d/sub /o && echo 1 > /d/a && echo 2 > /d/b && echo old > /o/old && echo k > /keep\n\
    RUN rm /d/a && rm -rf /o && mkdir /o && echo new > /o/new\n\
    RUN echo c > /d/c\n\
    ARG BUST\n\
    RUN echo \"$BUST\" >/dev/null && find /d /o /keep | sort | tr '\\n' ' ' && cat /o/new\n";

fn context(env: &Env, name: &str, rest: &str) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let dockerfile = format!("{BASE}{rest}");
    let ctx = env.context(name, &[("Dockerfile", dockerfile.as_str())]);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    Some(ctx)
}

fn build_args<'a>(ctx: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    args
}

/// (name → (inode, mtime ns)) of every snapshot dir in the store.
fn snapshots(env: &Env) -> BTreeMap<String, (u64, i64)> {
    let dir = env.root().join("rbuild/layers");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    rd.map(|e| {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        (
            e.file_name().to_string_lossy().into_owned(),
            (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec()),
        )
    })
    .collect()
}

const EXPECTED_VIEW: &str = "/d /d/b /d/c /d/sub /keep /o /o/new new";

#[test]
fn run_sees_the_merged_view_of_whiteouts_and_opaque_dirs() {
    let env = Env::new();
    let Some(ctx) = context(&env, "ctx", MERGED) else {
        return;
    };
    let out = env.rbuild_ok(&build_args(&ctx, &["-t", "m:1", "--build-arg", "BUST=1"]));
    let log = stderr(&out);
    assert!(log.contains(EXPECTED_VIEW), "{log}");
    assert!(!log.contains("overlayfs is not available"), "{log}");
    // The layers below the last RUN are snapshots, with overlay whiteouts.
    let snaps = snapshots(&env);
    assert!(snaps.len() >= 5, "{snaps:?}");
    let mut whiteouts = 0;
    let mut opaque = 0;
    for name in snaps.keys() {
        let dir = env.root().join("rbuild/layers").join(name);
        if let Ok(m) = std::fs::symlink_metadata(dir.join("d/a")) {
            if m.file_type().is_char_device_like() && m.rdev() == 0 {
                whiteouts += 1;
            }
        }
        if let Ok(Some(v)) = xattr_get(&dir.join("o"), opaque_name()) {
            assert_eq!(v, b"y");
            opaque += 1;
        }
    }
    assert_eq!((whiteouts, opaque), (1, 1), "{snaps:?}");
    // The same Dockerfile on the copy fallback (a plain unpack) agrees.
    let plain = Env::new();
    let out = std::process::Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(plain.root())
        .args(build_args(&ctx, &["--build-arg", "BUST=1"]))
        .env("RBUILD_NO_OVERLAY", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(EXPECTED_VIEW), "{}", stderr(&out));
    assert!(snapshots(&plain).is_empty(), "no snapshots without overlay");
}

#[test]
fn a_rebuild_reuses_the_snapshots() {
    let env = Env::new();
    let Some(ctx) = context(&env, "ctx", MERGED) else {
        return;
    };
    env.rbuild_ok(&build_args(&ctx, &["--build-arg", "BUST=1"]));
    let before = snapshots(&env);
    assert!(!before.is_empty());
    let out = env.rbuild_ok(&build_args(&ctx, &["--build-arg", "BUST=2"]));
    let log = stderr(&out);
    assert!(log.contains(EXPECTED_VIEW), "{log}");
    assert!(log.contains("CACHED"), "{log}");
    // Nothing unpacked again: the same dirs, same inodes and mtimes.
    assert_eq!(snapshots(&env), before);
}

/// A power loss can leave a snapshot's files empty (they are never
/// fsynced): snapshots made in another boot of the kernel are retired at
/// the next open, not mounted. The loss is simulated: every snapshot file
/// truncated, and the store's boot mark rewritten to another boot's.
#[test]
fn snapshots_of_another_boot_are_not_used() {
    let env = Env::new();
    let Some(ctx) = context(&env, "ctx", MERGED) else {
        return;
    };
    env.rbuild_ok(&build_args(&ctx, &["--build-arg", "BUST=1"]));
    let before = snapshots(&env);
    assert!(!before.is_empty());
    let mark = env.root().join("rbuild/layers.boot");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), boot.trim());
    let mut truncated = 0;
    for e in walkdir::WalkDir::new(env.root().join("rbuild/layers")) {
        let e = e.unwrap();
        if e.file_type().is_file() && e.metadata().unwrap().len() > 0 {
            std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_len(0)
                .unwrap();
            truncated += 1;
        }
    }
    assert!(truncated > 3, "{truncated}");
    std::fs::write(&mark, "00000000-0000-0000-0000-000000000000").unwrap();
    let out = env.rbuild_ok(&build_args(&ctx, &["--build-arg", "BUST=2"]));
    let log = stderr(&out);
    // The RUN saw whole files: busybox ran, /o/new still says "new".
    assert!(log.contains(EXPECTED_VIEW), "{log}");
    let after = snapshots(&env);
    for (name, ino) in &before {
        assert_ne!(after.get(name), Some(ino), "{name} was kept");
    }
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), boot.trim());
    let tmp = std::fs::read_dir(env.root().join("rbuild/tmp")).unwrap();
    assert_eq!(tmp.count(), 0, "the retired snapshots were swept");
}

#[test]
fn concurrent_builds_create_the_same_snapshots() {
    let env = Env::new();
    let Some(ctx) = context(&env, "ctx", MERGED) else {
        return;
    };
    let args = build_args(&ctx, &["--no-cache", "--build-arg", "BUST=1"]);
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(common::rbuild_bin())
                .arg("--root")
                .arg(env.root())
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("rbuild")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains(EXPECTED_VIEW), "{}", stderr(&out));
    }
    // The COPY layer is the same in all three: one snapshot of it, and no
    // temp left behind.
    let tmp: Vec<_> = std::fs::read_dir(env.root().join("rbuild/tmp"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("layer-"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn prune_removes_snapshots_whose_layer_is_gone() {
    let env = Env::new();
    let Some(ctx) = context(&env, "ctx", MERGED) else {
        return;
    };
    env.rbuild_ok(&build_args(&ctx, &["-t", "p:1", "--build-arg", "BUST=1"]));
    let before = snapshots(&env);
    assert!(!before.is_empty());
    env.rbuild_ok(&["prune"]);
    assert_eq!(snapshots(&env), before, "kept while the image names them");
    // Untagged, the layers stay while cache records name them; a record
    // dropped with its layer takes the snapshot along.
    env.rbuild_ok(&["rmi", "p:1"]);
    env.rbuild_ok(&["prune"]);
    assert_eq!(
        snapshots(&env),
        before,
        "kept while cache records name them"
    );
    for rec in std::fs::read_dir(env.root().join("rbuild/cache")).unwrap() {
        std::fs::remove_file(rec.unwrap().path()).unwrap();
    }
    env.rbuild_ok(&["prune"]);
    assert!(snapshots(&env).is_empty(), "{:?}", snapshots(&env));
    // `--all` drops every snapshot, even of a tagged image's layers.
    env.rbuild_ok(&build_args(&ctx, &["-t", "p:1", "--build-arg", "BUST=1"]));
    assert!(!snapshots(&env).is_empty());
    env.rbuild_ok(&["prune", "--all"]);
    assert!(snapshots(&env).is_empty(), "{:?}", snapshots(&env));
}

#[test]
fn a_stage_of_120_layers_runs_over_a_flattened_bottom() {
    let env = Env::new();
    let mut rest = String::new();
    for i in 0..117 {
        rest.push_str(&format!("COPY f{i} /f/{i}\n"));
    }
    rest.push_str("RUN rm /f/5 && ls /f | wc -l && cat /f/116\n");
    let Some(ctx) = context(&env, "ctx", &rest) else {
        return;
    };
    for i in 0..117 {
        std::fs::write(ctx.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let out = env.rbuild_ok(&build_args(&ctx, &["-t", "tall:1"]));
    let log = stderr(&out);
    assert!(log.contains("116\n") && log.contains("file 116"), "{log}");
    // 120 layers below the last RUN: the newest 70 as their own snapshots,
    // the oldest 50 flattened into one, made once (not once per step past
    // 100 layers): every layer's own snapshot (made while the stage was
    // shorter) plus that one.
    let n = snapshots(&env).len();
    assert!((100..=121).contains(&n), "{n} snapshots");
}

/// Every test above again as an ordinary user with a subuid range: rbuild
/// runs in a user namespace, mounts overlay with `userxattr`, and the
/// snapshots hold `user.overlay.opaque`.
#[test]
fn rootless_run_over_snapshots() {
    common::rerun_as_test_user(module_path!(), "subid");
}

/// The opaque xattr the snapshots hold: `trusted.*` as real root,
/// `user.*` rootless.
fn opaque_name() -> &'static str {
    if common::is_root() {
        "trusted.overlay.opaque"
    } else {
        "user.overlay.opaque"
    }
}

trait CharDev {
    fn is_char_device_like(&self) -> bool;
}

impl CharDev for std::fs::FileType {
    fn is_char_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

/// An xattr of `path` (not following a symlink), `None` when unset.
fn xattr_get(path: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let got =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(got as usize);
    Ok(Some(buf))
}

/// The one-file-changed rebuild: the new COPY layer's snapshot is a
/// composite, the changed file (and the dirs above it) over the previous
/// snapshot, which stays as it was, and the RUN after it sees exactly what
/// a plain copy of the stage shows (more in `build_composite`).
#[test]
fn a_one_file_change_makes_a_composite_copy_snapshot() {
    let env = Env::new();
    let rest = "WORKDIR /app\nCOPY tree .\n\
        RUN echo SUM:$(find . | sort | xargs stat -c '%n %s %a %u %g %Y' | md5sum) \
        $(find . -type f | sort | xargs cat | md5sum) && cat sub/changed\n";
    let Some(ctx) = context(&env, "ctx", rest) else {
        return;
    };
    for i in 0..50 {
        let dir = ctx.join("tree").join(format!("d{}", i % 5));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    std::fs::create_dir_all(ctx.join("tree/sub")).unwrap();
    std::fs::write(ctx.join("tree/sub/changed"), "before\n").unwrap();
    let out = env.rbuild_ok(&build_args(&ctx, &[]));
    assert!(stderr(&out).contains("before"), "{}", stderr(&out));
    let first = snapshots(&env);
    std::fs::write(ctx.join("tree/sub/changed"), "after!\n").unwrap();
    let out = env.rbuild_ok(&build_args(&ctx, &[]));
    let log = stderr(&out);
    assert!(log.contains("after!"), "{log}");
    assert!(
        log.contains(
            "layer snapshot: 1 changed files over the previous build's (0 linked, 1 copied), \
             50 unchanged"
        ),
        "{log}"
    );
    // One new snapshot (the new COPY layer); the old ones untouched.
    let second = snapshots(&env);
    assert_eq!(second.len(), first.len() + 1, "{first:?} {second:?}");
    for (name, v) in &first {
        assert_eq!(second.get(name), Some(v));
    }
    let new = second.keys().find(|k| !first.contains_key(*k)).unwrap();
    assert!(new.ends_with(".c"), "{new}");
    let delta = env.root().join("rbuild/layers").join(new).join("delta");
    assert_eq!(
        std::fs::read(delta.join("app/sub/changed")).unwrap(),
        b"after!\n"
    );
    assert!(!delta.join("app/d0").exists());
    // The same view as the copy fallback's.
    let sum = |log: &str| {
        log.lines()
            .find_map(|l| l.split_once("SUM:").map(|(_, s)| s.to_string()))
            .unwrap_or_else(|| panic!("no SUM line in {log}"))
    };
    let plain = Env::new();
    let out = std::process::Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(plain.root())
        .args(build_args(&ctx, &[]))
        .env("RBUILD_NO_OVERLAY", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sum(&stderr(&out)), sum(&log));
}

/// A cold COPY that a later RUN reads gets its snapshot filled from the
/// context while the layer is written (the RUN then unpacks nothing), with
/// the same view the copy fallback gives; a COPY nothing reads afterwards
/// makes no snapshot.
#[test]
fn a_cold_copy_read_later_fills_its_snapshot_while_it_is_written() {
    let env = Env::new();
    let rest = "WORKDIR /app\nCOPY tree .\n\
        RUN echo SUM:$(find . | sort | xargs stat -c '%n %s %a %u %g %Y' | md5sum) \
        $(find . -type f | sort | xargs cat | md5sum)\n\
        COPY tree /last/\n";
    let Some(ctx) = context(&env, "ctx", rest) else {
        return;
    };
    for i in 0..30 {
        let dir = ctx.join("tree").join(format!("d{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    std::os::unix::fs::symlink("d0/f0", ctx.join("tree/link")).unwrap();
    let out = env.rbuild_ok(&build_args(&ctx, &[]));
    let log = stderr(&out);
    // The COPY a RUN follows, not the last one (nothing reads it).
    let section = |what: &str| {
        log.split("\n\n")
            .find(|s| s.contains(what))
            .unwrap_or_else(|| panic!("no {what} step in {log}"))
            .to_string()
    };
    assert!(
        section("COPY tree .\n")
            .contains("layer snapshot: 0 files linked from the previous build, 30 copied"),
        "{log}"
    );
    assert!(
        !section("COPY tree /last/").contains("layer snapshot"),
        "{log}"
    );
    let sum = |log: &str| {
        log.lines()
            .find_map(|l| l.split_once("SUM:").map(|(_, s)| s.to_string()))
            .unwrap_or_else(|| panic!("no SUM line in {log}"))
    };
    let plain = Env::new();
    let out = std::process::Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(plain.root())
        .args(build_args(&ctx, &[]))
        .env("RBUILD_NO_OVERLAY", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sum(&stderr(&out)), sum(&log));
}

/// A cold COPY of a context whose files had settled before the scan
/// copies them without hashing them again (the scan's stat vouches for
/// them); a file written in the scan's second is hashed. Either way the
/// RUN sees what the copy fallback shows: names, sizes, modes (setuid
/// kept after the owner is set), owners, mtimes and contents, an empty
/// and a sparse file included.
#[test]
fn a_settled_context_is_copied_without_hashing_it_again() {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let env = Env::new();
    let rest = "WORKDIR /app\nCOPY tree .\n\
        RUN echo SUM:$(find . | sort | xargs stat -c '%n %s %a %u %g %Y' | md5sum) \
        $(find . -type f | sort | xargs cat | md5sum)\n";
    let Some(ctx) = context(&env, "ctx", rest) else {
        return;
    };
    let tree = ctx.join("tree");
    for i in 0..20 {
        let dir = tree.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        // Up to ~400 KiB: several kernel copies' worth of a read buffer.
        let body: Vec<u8> = (0..i * 20_000).map(|b| (b % 251) as u8).collect();
        std::fs::write(dir.join(format!("f{i}")), body).unwrap();
    }
    std::fs::write(tree.join("empty"), "").unwrap();
    let sparse = std::fs::File::create(tree.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    sparse.write_all_at(b"middle", 4 << 20).unwrap();
    std::fs::write(tree.join("suid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(tree.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    // Into the next second: everything above has settled for the scan.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_020_000_000 - u64::from(now.subsec_nanos()),
    ));
    std::fs::write(tree.join("racy"), "racy\n").unwrap();
    let out = env.rbuild_ok(&build_args(&ctx, &[]));
    let log = stderr(&out);
    let section = log
        .split("\n\n")
        .find(|s| s.contains("COPY tree .\n"))
        .unwrap_or_else(|| panic!("no COPY step in {log}"));
    assert!(
        section.contains(
            "layer snapshot: 0 files linked from the previous build, 24 copied \
             (1 hashed again: changed since the scan's second)\n"
        ),
        "{log}"
    );
    let sum = |log: &str| {
        log.lines()
            .find_map(|l| l.split_once("SUM:").map(|(_, s)| s.to_string()))
            .unwrap_or_else(|| panic!("no SUM line in {log}"))
    };
    let plain = Env::new();
    let out = std::process::Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(plain.root())
        .args(build_args(&ctx, &[]))
        .env("RBUILD_NO_OVERLAY", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sum(&stderr(&out)), sum(&log));
    assert!(sum(&log).contains(' '), "{log}");
}

/// COPY destinations and WORKDIR are resolved through the snapshots with
/// overlay rules: a dir hidden by an opaque dir or a whiteout is not there,
/// an image symlink is followed inside the image.
#[test]
fn copy_destinations_and_workdir_follow_the_merged_view() {
    let env = Env::new();
    let rest = "RUN mkdir -p /o/olddir /w && echo x > /w/a\n\
        RUN rm -rf /o && mkdir /o && rm /w/a && ln -s /o /lnk\n\
        COPY f /o/olddir\n\
        COPY f /lnk/vialink\n\
        WORKDIR /w/a\n\
        RUN echo \"V:$(cat /o/olddir) $(cat /o/vialink) $(pwd) $(ls -ld /w/a | cut -c1) $(ls /lnk | tr '\\n' ,)\"\n";
    let Some(ctx) = context(&env, "ctx", rest) else {
        return;
    };
    std::fs::write(ctx.join("f"), "F").unwrap();
    let out = env.rbuild_ok(&build_args(&ctx, &[]));
    let log = stderr(&out);
    assert!(log.contains("V:F F /w/a d olddir,vialink,"), "{log}");
    assert!(!log.contains("overlayfs is not available"), "{log}");
}
