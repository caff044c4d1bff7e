//! RUN cache mounts across builds and stores: what `prune` keeps and drops.

mod common;

use std::path::{Path, PathBuf};

use common::{tool, Env};

const BASE: &str = "FROM scratch AS base\nCOPY busybox /bin/busybox\n\
    RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// A context with the static busybox and a Dockerfile of BASE + `rest`.
fn context(env: &Env, name: &str, rest: &str) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let dockerfile = format!("{BASE}{rest}");
    let ctx = env.context(name, &[("Dockerfile", dockerfile.as_str())]);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    Some(ctx)
}

/// Build with `--no-cache` and return the final stage's `/count`.
fn count_after_build(env: &Env, ctx: &Path, out: &str) -> String {
    let dest = env.path(out);
    let output = format!("type=local,dest={}", dest.display());
    env.rbuild_ok(&[
        "build",
        "--progress",
        "plain",
        "--no-cache",
        "-o",
        &output,
        ctx.to_str().unwrap(),
    ]);
    std::fs::read_to_string(dest.join("count"))
        .expect("count")
        .trim()
        .to_string()
}

fn mount_dirs(env: &Env) -> usize {
    let dir = env.root().join("rbuild/cachemounts");
    std::fs::read_dir(dir)
        .map(|d| d.filter(|e| e.as_ref().unwrap().path().is_dir()).count())
        .unwrap_or(0)
}

/// `prune` keeps cache mounts (they are the point of a cache mount);
/// `prune --all` drops them, so the next build starts with an empty one.
#[test]
fn prune_all_clears_cache_mounts_and_prune_keeps_them() {
    if !common::require_root("RUN steps") {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "ctx",
        "FROM base\nRUN --mount=type=cache,id=dl,target=/cache \
         sh -c 'echo x >> /cache/log; wc -l < /cache/log > /count'\n",
    ) else {
        return;
    };
    assert_eq!(count_after_build(&env, &ctx, "o1"), "1");
    assert_eq!(count_after_build(&env, &ctx, "o2"), "2");
    env.rbuild_ok(&["prune"]);
    assert_eq!(mount_dirs(&env), 1);
    assert_eq!(
        count_after_build(&env, &ctx, "o3"),
        "3",
        "prune kept the mount"
    );
    let out = env.rbuild_ok(&["prune", "--all"]);
    assert_eq!(mount_dirs(&env), 0, "{}", common::stdout(&out));
    assert_eq!(
        count_after_build(&env, &ctx, "o4"),
        "1",
        "prune --all emptied the mount"
    );
}
