//! A fresh store with a `--cache-from` cache whose COPY misses (one file
//! changed) seeds its chunk cache from the cache's earlier layer and chunk
//! index: most chunks are copied, not compressed, and the image is
//! bit-identical to the same build done cold in a fresh store. A lying
//! chunk index costs only the chunks it lies about.

use crate::common;

use std::path::{Path, PathBuf};

use common::{stderr, tool, Env, RegistryConf, RegistryGuard};

const EPOCH: &str = "SOURCE_DATE_EPOCH=1700000000";

/// ~9 MB of text-like files (several chunks); `changed` rewrites one.
fn context(env: &Env, changed: bool) -> PathBuf {
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY tree/ /tree/\n")],
    );
    write_tree(&ctx, changed.then_some(150));
    ctx
}

/// ~9 MB of text-like files in 300 files under `ctx/tree/`; `changed`
/// names the one whose text differs (also used by `cache_ci_job`).
pub(crate) fn write_tree(ctx: &Path, changed: Option<usize>) {
    std::fs::create_dir_all(ctx.join("tree")).unwrap();
    for i in 0..300usize {
        let salt = if changed == Some(i) { "changed" } else { "" };
        let body: String = (0..600)
            .map(|l| {
                format!(
                    "fn f{l}() -> u64 {{ {} * {i} }} // {salt}\n",
                    l * 7919 % 1000
                )
            })
            .collect();
        std::fs::write(ctx.join(format!("tree/f{i:04}.rs")), body).unwrap();
    }
}

/// What a build said: its plain progress output and image digest.
pub(crate) struct Built {
    pub(crate) log: String,
    pub(crate) digest: String,
}

/// Builds `ctx` with `args` (reproducible timestamps), failing the test
/// if the build fails.
pub(crate) fn build(env: &Env, ctx: &Path, args: &[&str]) -> Built {
    let meta = env.path("meta.json");
    let mut all = vec!["build", "--progress", "plain", "--build-arg", EPOCH];
    all.extend_from_slice(&["--metadata-file", meta.to_str().unwrap()]);
    all.extend_from_slice(args);
    all.push(ctx.to_str().unwrap());
    let log = stderr(&env.rbuild_ok(&all));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    Built {
        log,
        digest: meta["containerimage.digest"].as_str().unwrap().to_string(),
    }
}

/// The two numbers of the first "`WORD` A/B" in the log; for "reused",
/// of the COPY's "layer chunks: A of B reused" line.
fn ratio(log: &str, word: &str) -> Option<(u64, u64)> {
    if word == "reused" {
        let at = log.find("layer chunks: ")? + "layer chunks: ".len();
        let (a, rest) = log[at..].split_once(" of ")?;
        let b = rest.split_once(' ')?.0;
        return Some((a.parse().ok()?, b.parse().ok()?));
    }
    let at = log.find(word)? + word.len();
    let rest = log[at..].trim_start();
    let (a, rest) = rest.split_once('/')?;
    let b: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Store A exports, the tree changes, fresh store B builds from the cache;
/// returns B's build, after checking it against a cold build.
fn seeded_build(to: &str, from: &str, between: impl Fn()) -> Built {
    let a = Env::new();
    let ctx_a = context(&a, false);
    build(&a, &ctx_a, &["--cache-to", to, "-t", "app:a"]);
    between();
    let b = Env::new();
    let ctx_b = context(&b, true);
    let built = build(&b, &ctx_b, &["--cache-from", from, "-t", "app:b"]);
    let cold = Env::new();
    let ctx_c = context(&cold, true);
    let reference = build(&cold, &ctx_c, &["-t", "app:c"]);
    assert_eq!(built.digest, reference.digest, "{}", built.log);
    assert!(
        ratio(&reference.log, "reused").is_none(),
        "{}",
        reference.log
    );
    built
}

fn assert_seeded_most(b: &Built) {
    let (seeded, listed) = ratio(&b.log, "seeded").expect(&b.log);
    assert!(listed >= 4 && seeded == listed, "{}", b.log);
    let (reused, chunks) = ratio(&b.log, "reused").expect(&b.log);
    assert!(reused > 0 && reused + 2 >= chunks, "{}", b.log);
}

#[test]
fn a_fresh_store_reuses_the_registry_caches_chunks() {
    if tool("docker-registry", "docker-registry").is_none() {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let cache = format!("{}/test/cache:1", reg.addr());
    let to = format!("type=registry,ref={cache},mode=max");
    let b = seeded_build(&to, &cache, || {});
    assert_seeded_most(&b);
    assert!(
        b.log.contains(&format!("remote cache {cache}")),
        "{}",
        b.log
    );
}

#[test]
fn a_fresh_store_reuses_the_local_caches_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let to = format!("type=local,dest={},mode=max", dir.path().display());
    let from = format!("type=local,src={}", dir.path().display());
    let b = seeded_build(&to, &from, || {});
    assert_seeded_most(&b);

    // A store whose COPY hits the cache exports the chunk index the remote
    // record came with: a pipeline that exports every run keeps it.
    let d = Env::new();
    let ctx_d = context(&d, false);
    let again = tempfile::tempdir().unwrap();
    let to_again = format!("type=local,dest={},mode=max", again.path().display());
    let built = build(
        &d,
        &ctx_d,
        &["--cache-from", &from, "--cache-to", &to_again],
    );
    assert!(built.log.contains("CACHED"), "{}", built.log);
    let index = chunk_index_of(again.path()).expect("the re-exported map names a chunk index");
    assert_eq!(Some(index), chunk_index_of(dir.path()));
}

/// The bytes of the chunk index the cache in `dir` names, if any.
fn chunk_index_of(dir: &Path) -> Option<Vec<u8>> {
    let blob = |d: &str| dir.join("blobs/sha256").join(&d[7..]);
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let index = json(dir.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str()?));
    let map = json(blob(manifest["config"]["digest"].as_str()?));
    let d = map["records"]
        .as_array()?
        .iter()
        .find_map(|r| r["chunks"]["digest"].as_str())?
        .to_string();
    std::fs::read(blob(&d)).ok()
}

#[test]
fn a_lying_chunk_index_costs_only_its_lies() {
    let dir = tempfile::tempdir().unwrap();
    let to = format!("type=local,dest={},mode=max", dir.path().display());
    let from = format!("type=local,src={}", dir.path().display());
    let b = seeded_build(&to, &from, || tamper_index(dir.path()));
    let (seeded, listed) = ratio(&b.log, "seeded").expect(&b.log);
    assert_eq!(seeded + 2, listed, "{}", b.log);
    assert!(b.log.contains("2 refused"), "{}", b.log);
    let (reused, chunks) = ratio(&b.log, "reused").expect(&b.log);
    assert!(reused > 0 && reused + 2 < chunks, "{}", b.log);
}

/// In the cache in `dir`, the chunk index's second chunk claims the first
/// chunk's bytes (offset, length and CRC) with one byte more than they
/// decompress to, the third a wrong CRC (both refused), and the fourth
/// another key (harmless: a seeded chunk is recorded under the key of the
/// bytes it decompresses to, so it is still reused); the map, manifest and
/// index.json are rewritten to match.
fn tamper_index(dir: &Path) {
    let blob = |d: &str| dir.join("blobs/sha256").join(&d[7..]);
    let write = |bytes: &[u8]| {
        use sha2::Digest;
        let d = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        std::fs::write(blob(&d), bytes).unwrap();
        (d, bytes.len())
    };
    let read_json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut index = read_json(dir.join("index.json"));
    let mut manifest = read_json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let mut map = read_json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let record = map["records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["chunks"].is_object())
        .expect("a record with a chunk index");
    let old = record["chunks"]["digest"].as_str().unwrap().to_string();
    let text = String::from_utf8(std::fs::read(blob(&old)).unwrap()).unwrap();
    let mut lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect();
    assert!(lines.len() > 5, "{text}");
    let first = lines[1].clone();
    lines[2][1..4].clone_from_slice(&first[1..4]);
    lines[2][4] = (first[4].parse::<u64>().unwrap() + 1).to_string();
    lines[3][3] = (lines[3][3].parse::<u64>().unwrap() ^ 1).to_string();
    lines[4][0] = "ab".repeat(32);
    let lied: String = lines.iter().map(|w| w.join(" ") + "\n").collect();
    let (d, size) = write(lied.as_bytes());
    record["chunks"]["digest"] = d.clone().into();
    record["chunks"]["size"] = size.into();
    for l in manifest["layers"].as_array_mut().unwrap() {
        if l["digest"] == old.as_str() {
            l["digest"] = d.clone().into();
            l["size"] = size.into();
        }
    }
    let (cd, csize) = write(&serde_json::to_vec(&map).unwrap());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = csize.into();
    let (md, msize) = write(&serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = msize.into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}
