//! Concurrent writers on one store: threads with their own `Store` handles
//! and real rbuild processes tag at once and no tag is lost; a writer killed
//! mid-blob leaves only a temp file, which the next open removes, while a
//! live writer's temp survives another process opening the store.

use crate::store_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use rbuild::store::Store;
use store_support::make_image;

#[test]
fn eight_threads_tagging_twenty_each_keep_all_160_tags() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = make_image(&store, "base:v1", &[&[("a", b"1")]], "2001-01-01T00:00:00Z");
    let root = dir.path().to_path_buf();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let root = root.clone();
            let m = m.clone();
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                for i in 0..20 {
                    store.tag(&format!("app:t{t}-{i}"), &m).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let tags = store.tags().unwrap();
    assert_eq!(tags.len(), 161, "160 new tags + base:v1");
    for t in 0..8 {
        for i in 0..20 {
            assert!(store.resolve(&format!("app:t{t}-{i}")).unwrap().is_some());
        }
    }
}

#[test]
fn eight_processes_tagging_twenty_each_keep_all_160_tags() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    make_image(&store, "base:v1", &[&[("a", b"1")]], "2001-01-01T00:00:00Z");
    let root = dir.path().to_str().unwrap().to_string();
    let children: Vec<_> = (0..8)
        .map(|p| {
            // Each process runs 20 `rbuild tag` invocations in sequence.
            let script = format!(
                "for i in $(seq 0 19); do {} --root {root} tag base:v1 app:p{p}-$i || exit 1; done",
                env!("CARGO_BIN_EXE_rbuild")
            );
            Command::new("sh").args(["-c", &script]).spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let tags = store.tags().unwrap();
    assert_eq!(tags.len(), 161);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 161);
}

/// Child mode: start a blob, say so, and wait to be killed.
#[test]
fn child_writes_half_a_blob() {
    let Ok(root) = std::env::var("RBUILD_TEST_CHILD_ROOT") else {
        return;
    };
    let store = Store::open(std::path::Path::new(&root)).unwrap();
    let mut w = store.blob_writer().unwrap();
    w.write_all(&[7u8; 100_000]).unwrap();
    w.flush().unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

fn spawn_half_writer(root: &std::path::Path) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store_concurrency::child_writes_half_a_blob",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RBUILD_TEST_CHILD_ROOT", root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("ready") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
    }
    child
}

#[test]
fn killed_writer_leaves_only_a_temp_that_the_next_open_cleans() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut child = spawn_half_writer(dir.path());
    // While the writer lives, another open must not take its temp away.
    Store::open(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("rbuild/tmp"))
            .unwrap()
            .count(),
        1
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert!(store.tags().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("rbuild/tmp"))
            .unwrap()
            .count(),
        1
    );
    Store::open(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("rbuild/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_live_temp_dir_survives_other_processes_opening_the_store_and_goes_on_drop() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tmp = store.temp_dir("live-").unwrap();
    std::fs::write(tmp.path().join("work"), "x").unwrap();
    let mode = std::fs::metadata(tmp.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "temp dirs are private");
    // Another rbuild process sweeps the temp area on open.
    let st = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(dir.path())
        .arg("images")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        tmp.path().join("work").exists(),
        "the sweep took a live temp"
    );
    let path = tmp.path().to_path_buf();
    drop(tmp);
    assert!(!path.exists(), "dropped temp dirs are removed");
}

/// `rbuild pull` holds the store's lease like a build: a prune while a
/// layer is still arriving refuses, so it cannot collect the blobs pulled
/// before the tag names them; the pull then completes.
#[test]
fn a_prune_during_a_pull_waits_for_it() {
    use crate::hostile::{config_for, layer, Conn, Hostile, Image, Req, GZ};
    let (raw, gz) = layer(&[("f", b"pulled while pruning")]);
    let img = Image::new(
        "slow",
        "v1",
        &[(gz.clone(), GZ)],
        config_for(&[&raw], false),
    );
    let layer_path = format!("/v2/slow/blobs/{}", crate::hostile::digest_of(&gz));
    let h = Hostile::start(move |req: &Req, c: &mut Conn| {
        if req.path == layer_path {
            // About 2 s for the layer.
            let every = std::time::Duration::from_millis(2000 / gz.len().max(1) as u64 + 1);
            return c.trickle(&[("Content-Type", "application/octet-stream")], &gz, every);
        }
        img.serve(req, c)
    });
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let reference = format!("{}/slow:v1", h.addr());
    let rbuild = crate::common::rbuild_bin();
    let pull = Command::new(rbuild)
        .arg("--root")
        .arg(&root)
        .args(["pull", "--registry-min-speed", "0", &reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the layer is on its way.
    let started = std::time::Instant::now();
    while !h
        .requests()
        .iter()
        .any(|r| r.path.contains("/blobs/") && r.method == "GET")
        || h.requests().len() < 4
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the pull never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let prune = Command::new(rbuild)
        .arg("--root")
        .arg(&root)
        .arg("prune")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&prune.stderr).into_owned();
    assert!(!prune.status.success() && said.contains("in use"), "{said}");
    let pulled = pull.wait_with_output().unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let store = Store::open(&root).unwrap();
    let tags = store.tags().unwrap();
    assert!(tags.iter().any(|(n, _)| n.contains("slow")), "{tags:?}");
}
