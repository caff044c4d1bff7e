//! RUN cache mounts across builds and stores: their contents travel with
//! `--cache-to ...,cache-mounts=true` / `--cache-from` (registry and local
//! directory), and what `prune` keeps and drops.

use crate::common;

use std::path::{Path, PathBuf};

use common::{stderr, tool, Env, RegistryConf, RegistryGuard};

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

/// Seeds the mount with a "download" (a stand-in for a package manager's
/// cache); the consumer fetches only when the mount is empty and copies
/// the package into the image either way.
const SEED: &str = "FROM base\nRUN --mount=type=cache,id=dl,target=/var/cache/dl \
    sh -c 'echo payload-v1 > /var/cache/dl/pkg'\n";
const CONSUME: &str = "FROM base\nRUN --mount=type=cache,id=dl,target=/var/cache/dl \
    sh -c 'if [ -e /var/cache/dl/pkg ]; then echo MOUNT-WAS-FILLED; \
    else echo MOUNT-WAS-EMPTY; echo payload-v1 > /var/cache/dl/pkg; fi; \
    cp /var/cache/dl/pkg /pkg'\n";

/// The blobs of a store.
fn blobs(env: &Env) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(env.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

/// Whether the RUN printed `marker` (a log line ending in it, not the
/// command line that names it).
fn said(log: &str, marker: &str) -> bool {
    log.lines()
        .any(|l| l.trim_end().ends_with(marker) && !l.contains("sh -c"))
}

/// Build `ctx` into `env`'s store with `args`; returns (stderr, digest).
fn build_digest(env: &Env, ctx: &Path, args: &[&str]) -> (String, String) {
    let iid = env.path("iid");
    let mut all = vec![
        "build",
        "--progress",
        "plain",
        "--build-arg",
        "SOURCE_DATE_EPOCH=1700000000",
        "--iidfile",
        iid.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    all.push(ctx.to_str().unwrap());
    let out = env.rbuild_ok(&all);
    (stderr(&out), std::fs::read_to_string(iid).unwrap())
}

/// A cache mount filled in one store is restored in a fresh store that
/// imports the cache, before the first RUN that mounts it; the image is
/// the one a build without the restored mount gives.
#[test]
fn cache_mount_contents_travel_through_registry_and_directory_caches() {
    if !common::require_root("RUN steps") || tool("docker-registry", "docker-registry").is_none() {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let dir_cache = tempfile::tempdir().unwrap();
    let dir_cache = dir_cache.path().join("cache");
    let registry_ref = format!("type=registry,ref={}/app:buildcache", reg.addr());
    let local_to = format!("type=local,dest={}", dir_cache.display());
    let local_from = format!("type=local,src={}", dir_cache.display());
    for (to, from) in [(registry_ref.clone(), registry_ref), (local_to, local_from)] {
        // Store A fills the mount and exports it.
        let a = Env::new();
        let Some(seed) = context(&a, "seed", SEED) else {
            return;
        };
        let to_mounts = format!("{to},cache-mounts=true,cache-mounts-max-size=1MiB");
        let (log, _) = build_digest(&a, &seed, &["--cache-to", &to_mounts]);
        assert!(log.contains("cache mount dl (linux/"), "{log}");

        // Store B: a fresh runner importing the cache finds the mount filled.
        let b = Env::new();
        let consume = context(&b, "consume", CONSUME).unwrap();
        let (log_b, digest_b) = build_digest(&b, &consume, &["--cache-from", &from]);
        assert!(said(&log_b, "MOUNT-WAS-FILLED"), "{to}: {log_b}");
        assert!(!said(&log_b, "MOUNT-WAS-EMPTY"), "{to}: {log_b}");
        // What the import brought (the mount's layer blob) is not kept
        // once the build is done: prune removes it.
        let mount_blob = log
            .lines()
            .find(|l| l.contains("cache mount dl ("))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap()
            .to_string();
        assert!(blobs(&b).contains(&mount_blob), "{to}: {mount_blob}");
        let locations = b.root().join("rbuild/registry/blob-locations.json");
        let noted = |what: &str| {
            std::fs::read_to_string(&locations)
                .unwrap_or_default()
                .contains(what)
        };
        let from_registry = to.starts_with("type=registry");
        assert_eq!(noted(&mount_blob), from_registry, "{to}");
        b.rbuild_ok(&["prune"]);
        assert!(!blobs(&b).contains(&mount_blob), "{to}: {mount_blob}");
        assert!(!noted(&mount_blob), "{to}: prune left the import's record");

        // Store C: the same build without the cache downloads, and gives
        // the same image.
        let c = Env::new();
        let consume = context(&c, "consume", CONSUME).unwrap();
        let (log_c, digest_c) = build_digest(&c, &consume, &[]);
        assert!(said(&log_c, "MOUNT-WAS-EMPTY"), "{log_c}");
        assert_eq!(
            digest_b, digest_c,
            "{to}: the restored mount changed the image"
        );
    }
}

/// A mount over `cache-mounts-max-size` is left out with a note naming its
/// size, and the build (and the rest of the export) goes on.
#[test]
fn a_mount_over_the_limit_is_not_exported() {
    if !common::require_root("RUN steps") {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(
        &env,
        "big",
        "FROM base\nRUN --mount=type=cache,id=big,target=/c \
         sh -c 'head -c 200000 /dev/zero > /c/blob'\n",
    ) else {
        return;
    };
    let dest = env.path("cache");
    let to = format!(
        "type=local,dest={},cache-mounts=true,cache-mounts-max-size=100K",
        dest.display()
    );
    let (log, _) = build_digest(&env, &ctx, &["--cache-to", &to]);
    assert!(
        log.contains("cache mount big not saved: it holds 200000 bytes")
            && log.contains("hint: raise cache-mounts-max-size"),
        "{log}"
    );
    // The cache was still written (records, no mount).
    let index = std::fs::read_to_string(dest.join("index.json")).unwrap();
    assert!(
        index.contains("application/vnd.oci.image.manifest.v1+json"),
        "{index}"
    );
    // A bad limit is refused before the build, naming the value.
    let out = env.rbuild(&[
        "build",
        "--cache-to",
        &format!(
            "type=local,dest={},cache-mounts=true,cache-mounts-max-size=lots",
            dest.display()
        ),
        ctx.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cache-mounts-max-size") && err.contains("lots"),
        "{err}"
    );
}

/// The `mounts` entries of the cache in OCI layout `dir`.
fn saved_mounts(dir: &Path) -> Vec<serde_json::Value> {
    let blob = |d: &str| -> serde_json::Value {
        let hex = d.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let map = blob(manifest["config"]["digest"].as_str().unwrap());
    let mounts = map["mounts"].as_array().cloned().unwrap_or_default();
    // Each mount's layer is one of the manifest's layers, and its blob is there.
    for m in &mounts {
        let d = m["layer"]["digest"].as_str().unwrap();
        assert!(
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["digest"] == d),
            "{manifest}"
        );
        assert!(dir.join("blobs/sha256").join(&d[7..]).is_file());
    }
    mounts
}

/// A build whose RUNs are all cached uses no mount; its export keeps the
/// mounts it imported, so the next runner still gets them.
#[test]
fn an_unused_imported_mount_is_exported_again() {
    if !common::require_root("RUN steps") {
        return;
    }
    let a = Env::new();
    let Some(seed) = context(&a, "seed", SEED) else {
        return;
    };
    let first = a.path("first");
    let second = a.path("second");
    let to = |d: &Path| format!("type=local,dest={},cache-mounts=true", d.display());
    let from = |d: &Path| format!("type=local,src={}", d.display());
    build_digest(&a, &seed, &["--cache-to", &to(&first)]);
    let saved = saved_mounts(&first);
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(saved[0]["id"], "dl");

    let b = Env::new();
    let seed_b = context(&b, "seed", SEED).unwrap();
    let (log, _) = build_digest(
        &b,
        &seed_b,
        &["--cache-from", &from(&first), "--cache-to", &to(&second)],
    );
    assert!(
        log.contains("cache mount dl (linux/") && log.contains("kept as imported"),
        "{log}"
    );
    assert_eq!(saved_mounts(&second), saved);

    let c = Env::new();
    let consume = context(&c, "consume", CONSUME).unwrap();
    let (log, _) = build_digest(&c, &consume, &["--cache-from", &from(&second)]);
    assert!(said(&log, "MOUNT-WAS-FILLED"), "{log}");
}
