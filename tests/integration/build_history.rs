//! `rbuild history` says where each layer came from (the CACHE column and
//! the `"cache"` field of `--format json`): executed, a hit in this store,
//! or a `--cache-from` cache by name; nothing for an image this store did
//! not build; `?` for a corrupt build record. Prune drops the record of a
//! deleted image, and concurrent builds never leave a torn one.

use crate::common;

use std::path::{Path, PathBuf};

use common::{stderr, stdout, tool, Env, RegistryConf, RegistryGuard};

/// Two COPY layers and a metadata step between them (no RUN: no sandbox
/// needed, the story is the same for every layer step).
const DOCKERFILE: &str = "FROM scratch\nCOPY a.txt /a.txt\nENV X=1\nCOPY b.txt /b.txt\n";

fn setup(env: &Env) -> String {
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
        ],
    );
    ctx.to_str().unwrap().to_string()
}

/// Build with `args`; the manifest digest.
fn build(env: &Env, args: &[&str]) -> String {
    let meta = env.path("meta.json");
    let mut all = vec!["build", "--metadata-file", meta.to_str().unwrap()];
    all.extend_from_slice(args);
    env.rbuild_ok(&all);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    v["containerimage.digest"].as_str().unwrap().to_string()
}

/// The table's header and, per row (newest first), its CREATED BY cell
/// start and its CACHE cell (None when the table has no CACHE column).
fn table(env: &Env, image: &str) -> (String, Vec<(String, Option<String>)>) {
    let out = env.rbuild_ok(&["history", "--no-trunc", image]);
    let text = stdout(&out);
    let mut lines = text.lines();
    let head = lines.next().unwrap().to_string();
    let col = |name: &str| head.find(name);
    let (by, cache, size) = (col("CREATED BY"), col("CACHE"), col("SIZE").unwrap());
    let rows = lines
        .map(|l| {
            let cell = |from: usize, to: usize| {
                l.chars()
                    .skip(from)
                    .take(to - from)
                    .collect::<String>()
                    .trim()
                    .to_string()
            };
            let by = cell(by.unwrap(), cache.unwrap_or(size));
            (by, cache.map(|c| cell(c, size)))
        })
        .collect();
    (head, rows)
}

/// The CACHE cells of the layer rows (the COPY steps), newest first.
fn copy_cells(env: &Env, image: &str) -> Vec<String> {
    let (head, rows) = table(env, image);
    assert!(head.contains("CACHE"), "no CACHE column: {head}");
    rows.into_iter()
        .filter(|(by, _)| by.starts_with("COPY"))
        .map(|(_, c)| c.unwrap())
        .collect()
}

/// `--format json`'s `cache` objects of the COPY rows, newest first.
fn json_caches(env: &Env, image: &str) -> Vec<serde_json::Value> {
    let out = env.rbuild_ok(&["history", "--format", "json", image]);
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["CreatedBy"].as_str().unwrap().starts_with("COPY"))
        .map(|v| v["cache"].clone())
        .collect()
}

fn record_path(env: &Env, manifest: &str) -> PathBuf {
    let hex = manifest.strip_prefix("sha256:").unwrap();
    env.root().join(format!("rbuild/builds/{hex}.json"))
}

#[test]
fn a_first_build_executes_and_a_second_hits_the_local_store() {
    let env = Env::new();
    let ctx = setup(&env);
    let first = build(&env, &["-t", "h:1", &ctx]);
    assert_eq!(copy_cells(&env, "h:1"), ["executed", "executed"]);
    for c in json_caches(&env, "h:1") {
        assert_eq!(c["source"], "executed", "{c}");
        // The miss reason as progress showed it.
        assert!(!c["reason"].as_str().unwrap().is_empty(), "{c}");
    }
    // The metadata row (ENV) has no layer: nothing to say.
    let (_, rows) = table(&env, "h:1");
    let env_row = rows.iter().find(|(by, _)| by.starts_with("ENV")).unwrap();
    assert_eq!(env_row.1.as_deref(), Some(""), "{rows:?}");

    let second = build(&env, &["-t", "h:1", &ctx]);
    assert_eq!(first, second, "the record must not change the image");
    assert_eq!(copy_cells(&env, "h:1"), ["local", "local"]);
    for c in json_caches(&env, "h:1") {
        assert_eq!(c["source"], "local", "{c}");
        // The date of the build that made the layer.
        assert!(c["built"].as_str().unwrap().ends_with('Z'), "{c}");
    }
    // The latest build's story, in one whole file.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record_path(&env, &second)).unwrap()).unwrap();
    assert_eq!(rec["v"], 1);
    assert_eq!(rec["manifest"], second.as_str());
    assert_eq!(rec["layers"].as_array().unwrap().len(), 2, "{rec}");
}

#[test]
fn a_corrupt_record_reads_as_unknown_and_prune_drops_a_deleted_images_record() {
    let env = Env::new();
    let ctx = setup(&env);
    let kept = build(&env, &["-t", "kept:1", &ctx]);
    let path = record_path(&env, &kept);
    std::fs::write(&path, b"\x00\xffnot json at all").unwrap();
    let out = env.rbuild_ok(&["history", "kept:1"]);
    assert_eq!(copy_cells(&env, "kept:1"), ["?", "?"]);
    // Said once, naming the file, with what to do.
    let err = stderr(&out);
    assert_eq!(err.matches("warning: ").count(), 1, "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("hint: "), "{err}");
    // json: unknown is no field.
    assert!(json_caches(&env, "kept:1").iter().all(|c| c.is_null()));
    // An oversized file is refused unread the same way.
    std::fs::write(&path, vec![b' '; (1 << 20) + 1]).unwrap();
    assert_eq!(copy_cells(&env, "kept:1"), ["?", "?"]);

    // Another image (another manifest: other content), then deleted.
    std::fs::write(Path::new(&ctx).join("b.txt"), "other\n").unwrap();
    let gone = build(&env, &["-t", "gone:1", &ctx]);
    assert!(record_path(&env, &gone).is_file());
    env.rbuild_ok(&["rmi", "gone:1"]);
    let out = env.rbuild_ok(&["prune"]);
    assert!(
        stdout(&out).contains(", 1 build records"),
        "{}",
        stdout(&out)
    );
    assert!(!record_path(&env, &gone).exists());
    // The tagged image keeps its record (even a corrupt one: it is the
    // next build's to replace).
    assert!(path.is_file());
    std::fs::write(Path::new(&ctx).join("b.txt"), "b\n").unwrap();
    build(&env, &["-t", "kept:1", &ctx]);
    assert_eq!(copy_cells(&env, "kept:1"), ["local", "local"]);
}

#[test]
fn concurrent_builds_of_one_image_leave_one_whole_record() {
    let env = Env::new();
    let ctx = setup(&env);
    let digest = build(&env, &["-t", "c:1", &ctx]);
    let spawn = || {
        std::process::Command::new(common::rbuild_bin())
            .args(["--root", env.root().to_str().unwrap()])
            .args(["build", "--progress", "plain", "-t", "c:1", &ctx])
            .env_remove("SOURCE_DATE_EPOCH")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let path = record_path(&env, &digest);
    for _ in 0..3 {
        let mut kids: Vec<_> = (0..3).map(|_| spawn()).collect();
        // Read while they write: every read is a whole record.
        while kids.iter_mut().any(|k| k.try_wait().unwrap().is_none()) {
            let bytes = std::fs::read(&path).unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|e| panic!("torn record: {e}"));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for mut k in kids {
            assert!(k.wait().unwrap().success());
        }
    }
    assert_eq!(copy_cells(&env, "c:1"), ["local", "local"]);
}

#[test]
fn a_cache_from_names_the_registry_ref_or_the_directory_and_a_pulled_image_has_no_cache() {
    if tool("docker-registry", "docker-registry").is_none() {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let cache = format!("{}/test/cache:1", reg.addr());
    let app = format!("{}/test/app:1", reg.addr());
    let a = Env::new();
    let ctx_a = setup(&a);
    let dir = a.path("cache-dir");
    let to_reg = format!("type=registry,ref={cache},mode=max");
    let to_dir = format!("type=local,dest={},mode=max", dir.display());
    let built = build(
        &a,
        &[
            "--cache-to",
            &to_reg,
            "--cache-to",
            &to_dir,
            "--push",
            "-t",
            &app,
            &ctx_a,
        ],
    );
    assert_eq!(copy_cells(&a, &app), ["executed", "executed"]);

    // An empty store served by the registry cache.
    let b = Env::new();
    let ctx_b = setup(&b);
    assert_eq!(
        build(&b, &["--cache-from", &cache, "-t", "b:1", &ctx_b]),
        built
    );
    let want = format!("remote {cache}");
    assert_eq!(copy_cells(&b, "b:1"), [want.as_str(), want.as_str()]);
    for c in json_caches(&b, "b:1") {
        assert_eq!(c, serde_json::json!({"source": "remote", "from": cache}));
    }

    // An empty store served by the directory.
    let c = Env::new();
    let ctx_c = setup(&c);
    let from = format!("type=local,src={}", dir.display());
    assert_eq!(
        build(&c, &["--cache-from", &from, "-t", "c:1", &ctx_c]),
        built
    );
    let want = format!("remote {}", dir.display());
    assert_eq!(copy_cells(&c, "c:1"), [want.as_str(), want.as_str()]);
    for j in json_caches(&c, "c:1") {
        assert_eq!(j["source"], "remote", "{j}");
        assert_eq!(j["from"], dir.to_str().unwrap(), "{j}");
    }

    // Pulled, the image has no story here: docker's columns, unchanged.
    let d = Env::new();
    d.rbuild_ok(&["pull", &app]);
    let (head, rows) = table(&d, &app);
    assert!(!head.contains("CACHE"), "{head}");
    assert_eq!(
        head.split_whitespace().collect::<Vec<_>>(),
        ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    );
    assert!(rows.iter().all(|(_, c)| c.is_none()));
    let out = d.rbuild_ok(&["history", "--format", "json", &app]);
    assert!(!stdout(&out).contains("\"cache\""), "{}", stdout(&out));
    // A build FROM it says its layers came from the base image.
    let ctx_d = d.context(
        "ctx",
        &[
            ("Dockerfile", &format!("FROM {app}\nCOPY f /f\n")),
            ("f", "f"),
        ],
    );
    build(&d, &["-t", "d:1", ctx_d.to_str().unwrap()]);
    let (_, rows) = table(&d, "d:1");
    let cells: Vec<&str> = rows.iter().filter_map(|(_, c)| c.as_deref()).collect();
    assert_eq!(cells, ["executed", "base", "", "base"], "{rows:?}");
}
