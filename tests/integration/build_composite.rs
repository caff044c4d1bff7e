//! Composite COPY snapshots (`engine::snapfill_delta`): a context COPY
//! rebuilt after a small change gets, as its snapshot, the changed files
//! over the previous build's plain snapshot (`rbuild/layers/<hex>.c/`:
//! `delta/` and a `base` link). The RUN after it must see exactly the
//! tree a plain copy of the stage shows (checked against the no-overlay
//! fallback in a store of its own), through chains of rebuilds, after a
//! deletion (which falls back to the whole fill), under concurrent
//! rebuilds and across `prune`.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{stderr, tool, Env};

const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
    WORKDIR /app\nCOPY tree .\n\
    RUN echo SUM:$(find . | sort | xargs stat -c '%n %s %a %u %g %Y %F' | md5sum) \
    $(find . -type f | sort | xargs cat | md5sum) && cat sub/changed\n";

/// A context of 40 files in four dirs, `sub/changed` and a symlink.
fn context(env: &Env) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE)]);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    for i in 0..40 {
        let dir = ctx.join("tree").join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    std::fs::create_dir_all(ctx.join("tree/sub")).unwrap();
    std::fs::write(ctx.join("tree/sub/changed"), "v0\n").unwrap();
    std::os::unix::fs::symlink("d0/f0", ctx.join("tree/link")).unwrap();
    Some(ctx)
}

fn build(env: &Env, ctx: &Path, extra: &[&str]) -> String {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    stderr(&env.rbuild_ok(&args))
}

fn sum(log: &str) -> String {
    log.lines()
        .find_map(|l| l.split_once("SUM:").map(|(_, s)| s.to_string()))
        .unwrap_or_else(|| panic!("no SUM line in {log}"))
}

/// The RUN's view of the same context built with no overlay at all (every
/// step over a materialized root), in a fresh store.
fn plain_sum(ctx: &Path) -> String {
    plain_sum_with(ctx, &[])
}

fn plain_sum_with(ctx: &Path, extra: &[&str]) -> String {
    let plain = Env::new();
    let out = std::process::Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(plain.root())
        .args(["build", "--progress", "plain"])
        .args(extra)
        .arg(ctx)
        .env("RBUILD_NO_OVERLAY", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    sum(&stderr(&out))
}

fn snapshot_names(env: &Env) -> BTreeSet<String> {
    std::fs::read_dir(env.root().join("rbuild/layers"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The snapshot names `after` has and `before` had not.
fn added(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<String> {
    after.difference(before).cloned().collect()
}

fn base_of(env: &Env, composite: &str) -> String {
    let link = env
        .root()
        .join("rbuild/layers")
        .join(composite)
        .join("base");
    std::fs::read_link(link)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Changed, touched and added files, over three rebuilds: each a composite
/// over the first build's snapshot, each RUN's view that of a plain copy.
#[test]
fn rebuilds_over_composites_see_exactly_the_new_layer() {
    let env = Env::new();
    let Some(ctx) = context(&env) else {
        return;
    };
    let log = build(&env, &ctx, &[]);
    assert!(log.contains("v0"), "{log}");
    let s0 = snapshot_names(&env);
    // 1: one file changed.
    std::fs::write(ctx.join("tree/sub/changed"), "v1, longer\n").unwrap();
    let log = build(&env, &ctx, &[]);
    assert!(
        log.contains(
            "layer snapshot: 1 changed files over the previous build's (0 linked, 1 copied), \
             41 unchanged"
        ),
        "{log}"
    );
    assert!(log.contains("v1, longer"), "{log}");
    assert_eq!(sum(&log), plain_sum(&ctx));
    let s1 = snapshot_names(&env);
    let c1 = added(&s0, &s1);
    assert_eq!(c1.len(), 1, "{c1:?}");
    assert!(c1[0].ends_with(".c"), "{c1:?}");
    let base = base_of(&env, &c1[0]);
    assert!(s0.contains(&base), "{base} not in {s0:?}");
    // 2: another file changed, one touched (same bytes, new mtime), one
    // added in a new dir: the earlier delta's file is carried (linked).
    std::fs::write(ctx.join("tree/d1/f1"), "changed 1\n").unwrap();
    let f2 = std::fs::File::options()
        .append(true)
        .open(ctx.join("tree/d2/f2"))
        .unwrap();
    f2.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    std::fs::create_dir_all(ctx.join("tree/new/deeper")).unwrap();
    std::fs::write(ctx.join("tree/new/deeper/n"), "new\n").unwrap();
    let log = build(&env, &ctx, &[]);
    assert!(
        log.contains(
            "layer snapshot: 4 changed files over the previous build's (1 linked, 3 copied), \
             39 unchanged"
        ),
        "{log}"
    );
    assert_eq!(sum(&log), plain_sum(&ctx));
    let s2 = snapshot_names(&env);
    let c2 = added(&s1, &s2);
    assert_eq!(c2.len(), 1, "{c2:?}");
    assert_eq!(base_of(&env, &c2[0]), base, "a composite's base is plain");
    let delta = env.root().join("rbuild/layers").join(&c2[0]).join("delta");
    assert!(delta.join("app/new/deeper/n").is_file());
    assert!(
        !delta.join("app/d0").exists(),
        "unchanged dirs stay in the base"
    );
}

/// A deletion cannot be shown by a composite (the base still has the
/// file): the whole fill runs, from the composite's base, and copies the
/// files the composite had changed rather than linking the base's older
/// ones. With `SOURCE_DATE_EPOCH` every mtime is the same, so only the
/// composite's own list tells the base's `sub/changed` (v0) from the
/// layer's (v1, same size).
#[test]
fn a_deletion_after_a_composite_falls_back_to_the_whole_fill() {
    let env = Env::new();
    let Some(ctx) = context(&env) else {
        return;
    };
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    build(&env, &ctx, &epoch);
    std::fs::write(ctx.join("tree/sub/changed"), "v1\n").unwrap();
    let log = build(&env, &ctx, &epoch);
    assert!(
        log.contains("1 changed files over the previous build's"),
        "{log}"
    );
    let before = snapshot_names(&env);
    std::fs::remove_file(ctx.join("tree/d3/f3")).unwrap();
    let log = build(&env, &ctx, &epoch);
    // 40 files left: 39 linked from the base, sub/changed copied (the
    // base holds v0); the symlink is made, not counted.
    assert!(
        log.contains("layer snapshot: 39 files linked from the previous build, 1 copied"),
        "{log}"
    );
    assert!(log.contains("v1"), "{log}");
    assert_eq!(sum(&log), plain_sum_with(&ctx, &epoch));
    let new = added(&before, &snapshot_names(&env));
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(!new[0].ends_with(".c"), "a plain snapshot: {new:?}");
}

/// Two rebuilds racing to make the same composite both succeed and leave
/// one composite and no temp.
#[test]
fn concurrent_rebuilds_make_one_composite() {
    let env = Env::new();
    let Some(ctx) = context(&env) else {
        return;
    };
    build(&env, &ctx, &[]);
    let before = snapshot_names(&env);
    std::fs::write(ctx.join("tree/sub/changed"), "raced\n").unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(common::rbuild_bin())
                .arg("--root")
                .arg(env.root())
                .args(["build", "--progress", "plain", ctx.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("rbuild")
        })
        .collect();
    let mut sums = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        sums.push(sum(&stderr(&out)));
    }
    let new = added(&before, &snapshot_names(&env));
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].ends_with(".c"), "{new:?}");
    assert_eq!(sums[0], sums[1]);
    assert_eq!(sums[0], plain_sum(&ctx));
    let temps: Vec<_> = std::fs::read_dir(env.root().join("rbuild/tmp"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("layer-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

/// `prune` keeps a named layer's composite and, with it, its base even
/// when nothing names the base's layer any more; the composite still
/// serves the RUN; once the layer is unnamed both go.
#[test]
fn prune_keeps_a_named_composite_and_its_base() {
    let env = Env::new();
    let Some(ctx) = context(&env) else {
        return;
    };
    build(&env, &ctx, &["-t", "c:1"]);
    std::fs::write(ctx.join("tree/sub/changed"), "v1\n").unwrap();
    build(&env, &ctx, &["-t", "c:2"]);
    let names = snapshot_names(&env);
    let composite = names.iter().find(|n| n.ends_with(".c")).unwrap().clone();
    let base = base_of(&env, &composite);
    // The old image and every cache record gone: only c:2 names anything.
    env.rbuild_ok(&["rmi", "c:1"]);
    let drop_records = || {
        for rec in std::fs::read_dir(env.root().join("rbuild/cache")).unwrap() {
            std::fs::remove_file(rec.unwrap().path()).unwrap();
        }
    };
    drop_records();
    env.rbuild_ok(&["prune"]);
    let kept = snapshot_names(&env);
    assert!(
        kept.contains(&composite) && kept.contains(&base),
        "{kept:?}"
    );
    // No record: the COPY runs again, makes the same layer and keeps the
    // installed composite; the RUN reads through it.
    let log = build(&env, &ctx, &["-t", "c:2"]);
    assert!(log.contains("v1"), "{log}");
    assert_eq!(sum(&log), plain_sum(&ctx));
    assert!(snapshot_names(&env).contains(&composite));
    env.rbuild_ok(&["rmi", "c:2"]);
    drop_records();
    env.rbuild_ok(&["prune"]);
    assert!(
        snapshot_names(&env).is_empty(),
        "{:?}",
        snapshot_names(&env)
    );
}

/// Every test above again as an ordinary user with a subuid range
/// (overlay in a user namespace, `userxattr`).
#[test]
fn rootless_composites() {
    common::rerun_as_test_user(module_path!(), "subid");
}
