//! `--cache-to` / `--cache-from` against a real registry and real
//! directories: a fresh store reuses every step of another store's build
//! (same image digest), downloads no layer when it pushes to the registry
//! the cache is in, re-runs exactly what a changed file invalidates, and
//! refuses a tampered cache by running the step instead.

use crate::common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{stderr, tool, Env, RegistryConf, RegistryGuard};

const DOCKERFILE: &str = "\
FROM scratch AS tools
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]

FROM tools AS build
COPY src.txt /src.txt
RUN cat /src.txt > /out.txt && echo built >> /out.txt

FROM tools
COPY --from=build /out.txt /out.txt
RUN cp /out.txt /final.txt
";

/// A store and a context holding the Dockerfile, busybox and `src.txt`.
fn setup(busybox: &Path, src: &str) -> (Env, String) {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE), ("src.txt", src)]);
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    (env, ctx.to_str().unwrap().to_string())
}

/// What a build did: each layer step's name → "cached", "cached (REASON)"
/// or "executed"; the warnings; the image's manifest digest.
struct Built {
    steps: BTreeMap<String, String>,
    warnings: Vec<String>,
    digest: String,
    stderr: String,
}

fn build(env: &Env, args: &[&str]) -> Built {
    let meta = env.path("meta.json");
    let mut all = vec!["build", "--progress", "json", "--metadata-file"];
    all.push(meta.to_str().unwrap());
    all.extend_from_slice(args);
    let out = env.rbuild_ok(&all);
    let text = stderr(&out);
    let mut names = BTreeMap::new();
    let mut steps = BTreeMap::new();
    let mut warnings = Vec::new();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let id = v["id"].as_u64().unwrap_or(0);
        match v["type"].as_str().unwrap_or_default() {
            "step_started" => {
                names.insert(id, v["name"].as_str().unwrap_or_default().to_string());
            }
            "step_cached" => {
                let state = match v["reason"].as_str() {
                    Some(r) => format!("cached ({r})"),
                    None => "cached".to_string(),
                };
                steps.insert(names[&id].clone(), state);
            }
            "step_cache_miss" => {
                steps.insert(names[&id].clone(), "executed".to_string());
            }
            "warning" => warnings.push(v["message"].as_str().unwrap_or_default().to_string()),
            _ => {}
        }
    }
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    // --metadata-file names the cache of every remote hit.
    for s in meta["rbuild.steps"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        if steps
            .get(name)
            .is_some_and(|st| st.starts_with("cached (remote cache "))
        {
            let from = s["cache_from"].as_str().unwrap_or_default();
            assert!(steps[name].contains(from) && !from.is_empty(), "{s}");
        }
    }
    Built {
        steps,
        warnings,
        digest: meta["containerimage.digest"].as_str().unwrap().to_string(),
        stderr: text,
    }
}

/// A TCP proxy in front of the registry that notes every request line.
fn counting_proxy(to: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    for line in text.split("\r\n") {
                        let methods = ["GET ", "HEAD ", "POST ", "PUT ", "PATCH ", "DELETE "];
                        if methods.iter().any(|m| line.starts_with(m)) && line.contains(" /v2/") {
                            log.lock().unwrap().push(line.to_string());
                        }
                    }
                }
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, seen)
}

fn tools() -> Option<std::path::PathBuf> {
    let (Some(_), Some(busybox)) = (
        tool("docker-registry", "docker-registry"),
        tool("busybox", "busybox-static"),
    ) else {
        return None;
    };
    Some(busybox)
}

fn all_cached(b: &Built, how: &str) {
    assert!(!b.steps.is_empty(), "{}", b.stderr);
    for (name, state) in &b.steps {
        assert!(
            state.starts_with("cached") && state.contains(how),
            "{name}: {state}\n{}",
            b.stderr
        );
    }
}

#[test]
fn a_registry_cache_serves_an_empty_store_and_its_push_downloads_no_layer() {
    let Some(busybox) = tools() else { return };
    let reg = RegistryGuard::start(RegistryConf::default());
    let (proxy, requests) = counting_proxy(reg.port);
    let cache = format!("127.0.0.1:{proxy}/test/cache:1");
    let (a, ctx_a) = setup(&busybox, "one\n");
    let to = format!("type=registry,ref={cache},mode=max");
    let built_a = build(&a, &["--cache-to", &to, "-t", "app:a", &ctx_a]);
    assert!(
        built_a.steps.values().all(|s| s == "executed"),
        "{:?}",
        built_a.steps
    );

    requests.lock().unwrap().clear();
    let (b, ctx_b) = setup(&busybox, "one\n");
    let app = format!("127.0.0.1:{proxy}/test/app:b");
    let built_b = build(&b, &["--cache-from", &cache, "--push", "-t", &app, &ctx_b]);
    all_cached(&built_b, &format!("remote cache {cache}"));
    assert_eq!(built_b.steps.len(), 6, "{:?}", built_b.steps);
    assert_eq!(built_a.digest, built_b.digest);
    // The image's layers were mounted from the cache's repository: no blob
    // of the image came down, only the cache's manifest and map.
    let requests = requests.lock().unwrap().clone();
    let gets: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/blobs/"))
        .collect();
    assert_eq!(
        gets.len(),
        1,
        "only the cache map is fetched: {requests:#?}"
    );
    assert!(gets[0].contains("/test/cache/blobs/"), "{gets:?}");
    assert!(
        requests.iter().any(|r| r.contains("mount=")),
        "{requests:#?}"
    );
    // …and the pushed image is whole: B's own store (which never fetched
    // its layers) pulls it for a build FROM it, and runs on it.
    let ctx_c = b.context(
        "ctx2",
        &[("Dockerfile", &format!("FROM {app}\nRUN cat /final.txt\n"))],
    );
    let out = b.rbuild_ok(&["build", "--progress", "plain", ctx_c.to_str().unwrap()]);
    assert!(stderr(&out).contains("[internal] pull"), "{}", stderr(&out));
    assert!(stderr(&out).contains("one"), "{}", stderr(&out));
}

#[test]
fn a_local_cache_dir_serves_an_empty_store_and_a_change_reruns_only_what_follows() {
    let Some(busybox) = tools() else { return };
    let (a, ctx_a) = setup(&busybox, "one\n");
    let dir = a.path("cache");
    let to = format!("type=local,dest={},mode=max", dir.display());
    let built_a = build(&a, &["--cache-to", &to, "-t", "app:a", &ctx_a]);

    let (b, ctx_b) = setup(&busybox, "one\n");
    let from = format!("type=local,src={}", dir.display());
    let built_b = build(&b, &["--cache-from", &from, "-t", "app:b", &ctx_b]);
    all_cached(&built_b, "remote cache");
    assert_eq!(built_a.digest, built_b.digest);
    // The image is whole in B's store (its layers were fetched and checked).
    let out = b.rbuild_ok(&["save", "app:b", "-o", b.path("b.tar").to_str().unwrap()]);
    assert!(out.status.success());
    // The hits whose layers were fetched and checked (the result's) were
    // filed in B's store: a rebuild there needs no remote cache for them.
    // (The build stage's own layers were never needed, so never fetched.)
    let again = build(&b, &["-t", "app:b", &ctx_b]);
    for (name, state) in &again.steps {
        if name.starts_with("[tools ") || name.starts_with("[stage-2 ") {
            assert_eq!(state, "cached", "{name}: {:?}", again.steps);
        }
    }
    assert_eq!(again.digest, built_a.digest);

    // One changed file: its COPY and what follows run, the rest is reused.
    let (c, ctx_c) = setup(&busybox, "two\n");
    let built_c = build(&c, &["--cache-from", &from, "-t", "app:c", &ctx_c]);
    let executed: Vec<&String> = built_c
        .steps
        .iter()
        .filter(|(_, s)| *s == "executed")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(executed.len(), 4, "{:?}", built_c.steps);
    for name in executed {
        assert!(
            name.contains("COPY src.txt")
                || name.contains("RUN cat /src.txt")
                || name.contains("COPY --from=build")
                || name.contains("RUN cp"),
            "{name} ran: {:?}",
            built_c.steps
        );
    }
    assert_ne!(built_c.digest, built_a.digest);
    // Exporting again into the same DIR keeps it to one cache's blobs.
    let to_c = format!("type=local,dest={},mode=min", dir.display());
    build(&c, &["--cache-to", &to_c, "-t", "app:c", &ctx_c]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let blobs = std::fs::read_dir(dir.join("blobs/sha256")).unwrap().count();
    // mode=min: manifest + map + the result's four layers (busybox,
    // install, COPY --from, RUN cp); the build stage's are gone.
    assert_eq!(blobs, 6, "unreferenced blobs were dropped");
}

/// Rewrite the cache in `dir` so the record of the step that installs
/// busybox's links names another layer of the cache (busybox itself, with
/// its real size), keeping the diff_id it claims.
fn tamper(dir: &Path) {
    let read = |d: &str| std::fs::read(dir.join("blobs/sha256").join(&d[7..])).unwrap();
    let write = |bytes: &[u8]| {
        use sha2::Digest;
        let d = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        d
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: serde_json::Value = serde_json::from_slice(&read(&mdigest)).unwrap();
    let cdigest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut map: serde_json::Value = serde_json::from_slice(&read(&cdigest)).unwrap();
    let records = map["records"].as_array_mut().unwrap();
    // The records in build order: busybox COPY, install RUN, src COPY, …
    let victim = records[1]["layer"].clone();
    let other = records[0]["layer"].clone();
    assert_ne!(victim["digest"], other["digest"]);
    records[1]["layer"]["digest"] = other["digest"].clone();
    records[1]["layer"]["size"] = other["size"].clone();
    let map_bytes = serde_json::to_vec(&map).unwrap();
    manifest["config"]["digest"] = serde_json::json!(write(&map_bytes));
    manifest["config"]["size"] = serde_json::json!(map_bytes.len());
    let m_bytes = serde_json::to_vec(&manifest).unwrap();
    let m = write(&m_bytes);
    let mut index = index;
    index["manifests"][0]["digest"] = serde_json::json!(m);
    index["manifests"][0]["size"] = serde_json::json!(m_bytes.len());
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

const EPOCH: &str = "SOURCE_DATE_EPOCH=1700000000";

/// Store A exports its cache to a dir, `spoil` changes the dir, and an
/// empty store B builds the same context from it: the install step's
/// record must be refused with a warning and the step run, making A's
/// image. Returns A (it holds the dir) and the `--cache-from` value.
fn refused_and_run(busybox: &Path, spoil: fn(&Path)) -> (Env, String) {
    let (a, ctx_a) = setup(busybox, "one\n");
    let dir = a.path("cache");
    let to = format!("type=local,dest={},mode=max", dir.display());
    let built_a = build(
        &a,
        &[
            "--build-arg",
            EPOCH,
            "--cache-to",
            &to,
            "-t",
            "app:a",
            &ctx_a,
        ],
    );
    spoil(&dir);

    let (b, ctx_b) = setup(busybox, "one\n");
    let from = format!("type=local,src={}", dir.display());
    let built_b = build(
        &b,
        &[
            "--build-arg",
            EPOCH,
            "--cache-from",
            &from,
            "-t",
            "app:b",
            &ctx_b,
        ],
    );
    assert!(
        built_b
            .warnings
            .iter()
            .any(|w| w.contains("does not match the cache record")),
        "{:?}\n{}",
        built_b.warnings,
        built_b.stderr
    );
    let install = built_b
        .steps
        .iter()
        .find(|(n, _)| n.contains("--install"))
        .unwrap();
    assert_eq!(install.1, "executed", "{:?}", built_b.steps);
    // The step ran and made what its inputs make: the same image as A's.
    assert_eq!(built_a.digest, built_b.digest);
    (a, from)
}

#[test]
fn a_tampered_cache_record_is_refused_and_its_step_runs() {
    let Some(busybox) = tools() else { return };
    let (_a, from) = refused_and_run(&busybox, tamper);

    // Found when a later step needs the layer (src.txt changed, so its
    // COPY runs over the tools stage): refused there, and no step fails.
    let (c, ctx_c) = setup(&busybox, "two\n");
    let built_c = build(
        &c,
        &[
            "--build-arg",
            EPOCH,
            "--cache-from",
            &from,
            "-t",
            "app:c",
            &ctx_c,
        ],
    );
    assert!(
        built_c
            .warnings
            .iter()
            .any(|w| w.contains("does not match the cache record")),
        "{}",
        built_c.stderr
    );
    assert!(
        !built_c.stderr.contains("step_failed"),
        "{}",
        built_c.stderr
    );
    let install = built_c
        .steps
        .iter()
        .find(|(n, _)| n.contains("--install"))
        .unwrap();
    assert_eq!(install.1, "executed", "{:?}", built_c.steps);
}

#[test]
fn an_inline_cache_travels_inside_the_pushed_image() {
    let Some(busybox) = tools() else { return };
    let reg = RegistryGuard::start(RegistryConf::default());
    let app = format!("{}/test/inline:latest", reg.addr());
    let (a, ctx_a) = setup(&busybox, "one\n");
    let built_a = build(
        &a,
        &["--cache-to", "type=inline", "--push", "-t", &app, &ctx_a],
    );
    let (b, ctx_b) = setup(&busybox, "one\n");
    let built_b = build(
        &b,
        &[
            "--cache-from",
            &app,
            "--cache-to",
            "type=inline",
            "-t",
            "app:b",
            &ctx_b,
        ],
    );
    // The inline map holds what made the image's layers (the final stage
    // and the stage it is built FROM): all of it hits, and the stage it
    // only copies from is not built at all.
    all_cached(&built_b, "remote cache");
    assert_eq!(built_b.steps.len(), 4, "{:?}", built_b.steps);
    assert!(
        built_b.steps.keys().all(|n| !n.starts_with("[build ")),
        "{:?}",
        built_b.steps
    );
    assert_eq!(built_a.digest, built_b.digest);
}

/// Two builds of different contexts export to `to` at the same moment;
/// `from` must then name one whole cache: a fresh store gets every step of
/// exactly one of the builds from it, with no warning.
fn race(busybox: &Path, to: &str, from: &str) {
    let (a1, ctx1) = setup(busybox, "one\n");
    let (a2, ctx2) = setup(busybox, "two\n");
    // Both build first, then both export at the same moment.
    build(&a1, &["-t", "app:1", &ctx1]);
    build(&a2, &["-t", "app:2", &ctx2]);
    let procs: Vec<_> = [(&a1, &ctx1), (&a2, &ctx2)]
        .into_iter()
        .map(|(env, ctx)| {
            std::process::Command::new(common::rbuild_bin())
                .arg("--root")
                .arg(env.root())
                .args(["build", "-q", "--cache-to", to, "-t", "app:y", ctx])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut p in procs {
        assert!(p.wait().unwrap().success());
    }
    let hits: Vec<bool> = ["one\n", "two\n"]
        .into_iter()
        .map(|src| {
            let (b, ctx_b) = setup(busybox, src);
            let built = build(&b, &["--cache-from", from, "-t", "app:b", &ctx_b]);
            assert!(built.warnings.is_empty(), "{:?}", built.warnings);
            built.steps.values().all(|s| s.starts_with("cached"))
        })
        .collect();
    assert_eq!(hits.iter().filter(|h| **h).count(), 1, "{hits:?}");
}

#[test]
fn two_concurrent_exports_to_one_ref_leave_one_whole_cache() {
    let Some(busybox) = tools() else { return };
    let reg = RegistryGuard::start(RegistryConf::default());
    let cache = format!("{}/test/race:1", reg.addr());
    race(
        &busybox,
        &format!("type=registry,ref={cache},mode=max"),
        &cache,
    );
}

#[test]
fn two_concurrent_exports_to_one_dir_leave_one_whole_cache() {
    let Some(busybox) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cache");
    race(
        &busybox,
        &format!("type=local,dest={},mode=max", d.display()),
        &format!("type=local,src={}", d.display()),
    );
}

#[test]
fn an_unreachable_cache_from_warns_and_an_unreachable_cache_to_fails_unless_ignored() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "a\n")],
    );
    let ctx = ctx.to_str().unwrap();
    // A port nothing listens on.
    let dead = format!("127.0.0.1:{}/x/cache:1", common::free_port());
    let missing = format!("type=local,src={}", env.path("nothing").display());
    let built = build(
        &env,
        &[
            "--cache-from",
            &dead,
            "--cache-from",
            &missing,
            "-t",
            "a:1",
            ctx,
        ],
    );
    assert_eq!(built.warnings.len(), 2, "{:?}", built.warnings);
    assert!(
        built
            .warnings
            .iter()
            .all(|w| w.contains("building without it")),
        "{:?}",
        built.warnings
    );

    let to = format!("type=registry,ref={dead}");
    let out = env.rbuild(&["build", "--cache-to", &to, "-t", "a:1", ctx]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("--cache-to {dead}")) && err.contains("hint: with ignore-error=true"),
        "{err}"
    );

    let to = format!("type=registry,ref={dead},ignore-error=true");
    let built = build(&env, &["--cache-to", &to, "-t", "a:1", ctx]);
    assert!(
        built
            .warnings
            .iter()
            .any(|w| w.contains("ignore-error=true")),
        "{:?}",
        built.warnings
    );
}

/// A push to another registry than the cache's cannot mount the layers:
/// they are fetched (and checked) first, and the pushed image is whole.
#[test]
fn a_push_to_another_registry_fetches_the_cached_layers_first() {
    let Some(busybox) = tools() else { return };
    let (reg1, reg2) = (
        RegistryGuard::start(RegistryConf::default()),
        RegistryGuard::start(RegistryConf::default()),
    );
    let cache = format!("{}/test/cache:1", reg1.addr());
    let (a, ctx_a) = setup(&busybox, "one\n");
    let to = format!("type=registry,ref={cache}");
    build(&a, &["--cache-to", &to, "-t", "app:a", &ctx_a]);
    let (b, ctx_b) = setup(&busybox, "one\n");
    let app = format!("{}/test/app:1", reg2.addr());
    let built = build(&b, &["--cache-from", &cache, "--push", "-t", &app, &ctx_b]);
    all_cached(&built, "remote cache");
    let c = Env::new();
    let ctx_c = c.context(
        "ctx",
        &[("Dockerfile", &format!("FROM {app}\nRUN cat /final.txt\n"))],
    );
    let out = c.rbuild_ok(&["build", "--progress", "plain", ctx_c.to_str().unwrap()]);
    assert!(stderr(&out).contains("one"), "{}", stderr(&out));
}

/// The cache is a plain OCI artifact: skopeo copies it from a directory to
/// a registry, and a build reads it there.
#[test]
fn skopeo_copies_a_cache_and_the_copy_serves_a_build() {
    let (Some(_), Some(skopeo)) = (
        tool("docker-registry", "docker-registry"),
        tool("skopeo", "skopeo"),
    ) else {
        return;
    };
    let reg = RegistryGuard::start(RegistryConf::default());
    let env = Env::new();
    let files = [
        ("Dockerfile", "FROM scratch\nCOPY a /a\nCOPY b /b\n"),
        ("a", "a\n"),
        ("b", "b\n"),
    ];
    let ctx = env.context("ctx", &files);
    let dir = env.path("cache");
    let to = format!("type=local,dest={}", dir.display());
    let built_a = build(
        &env,
        &["--cache-to", &to, "-t", "a:1", ctx.to_str().unwrap()],
    );
    let copy = format!("{}/test/copied:1", reg.addr());
    common::run_ok(
        std::process::Command::new(skopeo)
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:cache", dir.display()))
            .arg(format!("docker://{copy}")),
    );
    let b = Env::new();
    let ctx_b = b.context("ctx", &files);
    let built_b = build(
        &b,
        &["--cache-from", &copy, "-t", "b:1", ctx_b.to_str().unwrap()],
    );
    all_cached(&built_b, &format!("remote cache {copy}"));
    assert_eq!(built_a.digest, built_b.digest);
}

/// A cache dir whose layer blob holds other bytes than its digest (one
/// byte flipped, same size) is refused like a record naming the wrong
/// layer: the step runs (it failed the build).
#[test]
fn a_cache_blob_that_is_not_its_digest_is_refused_and_its_step_runs() {
    let Some(busybox) = tools() else { return };
    refused_and_run(&busybox, flip_a_layer_byte);
}

/// Flips one byte of the install RUN's layer blob (the second record, in
/// build order) in the cache dir: same size, another digest.
fn flip_a_layer_byte(dir: &Path) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| dir.join("blobs/sha256").join(&d[7..]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let map: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let victim = blob(map["records"][1]["layer"]["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
}
