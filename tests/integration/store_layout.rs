//! The store is a real OCI image layout: skopeo and umoci read it directly.
//! Also: blob writing, prune, layer dirs and the cache index on real files.

use crate::store_support;

use std::io::Write;
use std::process::Command;

use rbuild::oci::LayerRef;
use rbuild::store::{CacheRecord, Store};
use store_support::{layer_tar_gz, make_image};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn skopeo_inspects_the_store_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    make_image(
        &store,
        "app:v1",
        &[&[("hello.txt", b"hi\n")]],
        "2001-02-03T04:05:06Z",
    );
    let root = dir.path().display().to_string();
    let out = run(Command::new("skopeo").args(["inspect", &format!("oci:{root}:app:v1")]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let layers = v["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let desc = store.resolve("app:v1").unwrap().unwrap();
    assert_eq!(v["Digest"], desc.digest().to_string());
    assert_eq!(v["Created"], "2001-02-03T04:05:06Z");
    // Raw config check: skopeo parses our config.
    let cfg =
        run(Command::new("skopeo").args(["inspect", "--config", &format!("oci:{root}:app:v1")]));
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["config"]["Cmd"][0], "/bin/sh");
}

#[test]
fn umoci_unpacks_the_store_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    make_image(
        &store,
        "app:v1",
        &[&[("hello.txt", b"hi\n")], &[("etc/motd", b"welcome\n")]],
        "2001-02-03T04:05:06Z",
    );
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:app:v1", dir.path().display()),
        bundle.to_str().unwrap(),
    ]));
    let hello = std::fs::read(bundle.join("rootfs/hello.txt")).unwrap();
    assert_eq!(hello, b"hi\n");
    let motd = std::fs::read(bundle.join("rootfs/etc/motd")).unwrap();
    assert_eq!(motd, b"welcome\n");
    let ls = run(Command::new("umoci").args(["ls", "--layout", dir.path().to_str().unwrap()]));
    assert_eq!(ls.trim(), "app:v1");
}

#[test]
fn tag_is_normalized_retagged_and_untagged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m1 = make_image(&store, "app", &[&[("a", b"1")]], "2001-01-01T00:00:00Z");
    let m2 = make_image(&store, "app:v2", &[&[("b", b"2")]], "2001-01-01T00:00:00Z");
    assert_eq!(
        store.resolve("app:latest").unwrap().unwrap().digest(),
        m1.digest()
    );
    store.tag("app", &m2).unwrap();
    let tags = store.tags().unwrap();
    assert_eq!(
        tags.len(),
        2,
        "retag replaces, does not duplicate: {tags:?}"
    );
    assert_eq!(store.resolve("app").unwrap().unwrap().digest(), m2.digest());
    assert!(store.untag("app").unwrap());
    assert!(!store.untag("app").unwrap());
    assert!(store.resolve("app").unwrap().is_none());
}

#[test]
fn unchanged_tag_and_existing_blob_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = make_image(&store, "app:v1", &[&[("a", b"1")]], "2001-01-01T00:00:00Z");
    let index = dir.path().join("index.json");
    let before = std::fs::metadata(&index).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // A no-op rebuild re-tags the same manifest and re-puts its blobs.
    store.tag("app:v1", &m).unwrap();
    let blob = store.put_blob(b"{\"same\":true}").unwrap();
    let blob_path = store.blob_path(&blob.digest).unwrap();
    let blob_before = std::fs::metadata(&blob_path).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(store.put_blob(b"{\"same\":true}").unwrap(), blob);
    let after = std::fs::metadata(&index).unwrap();
    assert_eq!(
        after.modified().unwrap(),
        before.modified().unwrap(),
        "index.json untouched"
    );
    assert_eq!(
        std::fs::metadata(&blob_path).unwrap().modified().unwrap(),
        blob_before.modified().unwrap(),
        "the stored blob was not rewritten"
    );
    // A different manifest still retags.
    let m2 = make_image(
        &store,
        "other:v1",
        &[&[("b", b"2")]],
        "2001-01-01T00:00:00Z",
    );
    store.tag("app:v1", &m2).unwrap();
    assert_eq!(
        store.resolve("app:v1").unwrap().unwrap().digest(),
        m2.digest()
    );
}

#[test]
fn blob_writer_verifies_and_dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"half a layer").unwrap();
    drop(w);
    let blobs = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "a dropped writer must not name a blob");
    let tmp = std::fs::read_dir(dir.path().join("rbuild/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "a dropped writer must remove its temp file");
    assert!(store.tags().unwrap().is_empty());

    let mut w = store.blob_writer().unwrap();
    w.write_all(b"content").unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = w.commit_verified(&wrong, None).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(!store.has_blob(&wrong));

    let mut w = store.blob_writer().unwrap();
    w.write_all(b"content").unwrap();
    let expect = rbuild::oci::digest::sha256_digest(b"content");
    let info = w.commit_verified(&expect, Some(7)).unwrap();
    assert_eq!(info.digest, expect);
    assert_eq!(store.read_blob(&expect).unwrap(), b"content");
    assert!(store.blob_path("sha256:../../etc/passwd").is_err());
}

#[test]
fn prune_keeps_tagged_and_cached_blobs_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let kept = make_image(
        &store,
        "keep:v1",
        &[&[("k", b"keep")]],
        "2001-01-01T00:00:00Z",
    );
    let gone = make_image(
        &store,
        "gone:v1",
        &[&[("g", b"gone")]],
        "2001-01-01T00:00:00Z",
    );
    store.untag("gone:v1").unwrap();
    let stray = store.put_blob(b"unreferenced").unwrap();
    // A cache record keeps its layer (and layer dir) alive.
    let (gz, diff_id) = layer_tar_gz(&[("c", b"cached")]);
    let cached = store.put_blob(&gz).unwrap();
    let mut rec = CacheRecord::new("key-1", None, "stage0/1", serde_json::json!({}));
    rec.layer = Some(LayerRef {
        digest: cached.digest.clone(),
        diff_id: diff_id.clone(),
        size: cached.size,
        media_type: rbuild::oci::media::OCI_LAYER_GZIP.into(),
    });
    store.cache_put(&rec).unwrap();
    store
        .install_layer_dir(&diff_id, |d| Ok(std::fs::write(d.join("c"), "cached")?))
        .unwrap();
    let orphan_id = format!("sha256:{}", "e".repeat(64));
    store.install_layer_dir(&orphan_id, |_| Ok(())).unwrap();

    let report = store.prune(false).unwrap();
    assert!(store.has_blob(kept.digest().as_ref()));
    assert!(!store.has_blob(gone.digest().as_ref()));
    assert!(!store.has_blob(&stray.digest));
    assert!(store.has_blob(&cached.digest));
    assert!(store.layer_dir(&diff_id).is_some());
    assert!(store.layer_dir(&orphan_id).is_none());
    assert_eq!(report.layer_dirs, 1);
    assert_eq!(
        report.blobs, 4,
        "gone's manifest, config, layer + the stray: {report:?}"
    );
    // The kept image is still whole.
    let img = rbuild::image::find_image(&store, "keep:v1").unwrap();
    assert!(store.has_blob(img.manifest.layers()[0].digest().as_ref()));

    let report = store.prune(true).unwrap();
    assert_eq!(report.cache_records, 1);
    assert!(!store.has_blob(&cached.digest));
    assert!(store.cache_get("key-1").unwrap().is_none());
    assert!(store.has_blob(kept.digest().as_ref()));
}

#[test]
fn prune_refuses_while_a_build_holds_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let lease = store.lease().unwrap();
    let err = store.prune(false).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(lease);
    store.prune(false).unwrap();
}

#[test]
fn layer_dirs_install_atomically_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = format!("sha256:{}", "a".repeat(64));
    assert!(store.layer_dir(&id).is_none());
    // A failing fill leaves nothing behind.
    let err = store
        .install_layer_dir(&id, |d| {
            std::fs::write(d.join("partial"), "x")?;
            anyhow::bail!("unpack failed")
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("unpack failed"));
    assert!(store.layer_dir(&id).is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("rbuild/tmp"))
            .unwrap()
            .count(),
        0
    );
    let path = store
        .install_layer_dir(&id, |d| Ok(std::fs::write(d.join("f"), "1")?))
        .unwrap();
    assert_eq!(std::fs::read(path.join("f")).unwrap(), b"1");
    // Second install keeps the first and does not call fill.
    let again = store
        .install_layer_dir(&id, |_| panic!("must not refill"))
        .unwrap();
    assert_eq!(again, path);
    assert!(store.install_layer_dir("sha256:../x", |_| Ok(())).is_err());
}

#[test]
fn cache_records_round_trip_and_closest_prefers_same_parent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.cache_get("nope").unwrap().is_none());
    let inputs = serde_json::json!({"parent": "p1", "instruction": "RUN make", "build_args": {"A": "1"}, "files": {}});
    let mut a = CacheRecord::new("k-a", Some("p1"), "build/2", inputs.clone());
    a.config_changes = serde_json::json!({"Env": ["A=1"]});
    a.created = 100;
    store.cache_put(&a).unwrap();
    let mut b = CacheRecord::new("k-b", Some("p0"), "build/2", inputs);
    b.created = 200;
    store.cache_put(&b).unwrap();
    assert_eq!(store.cache_get("k-a").unwrap().unwrap(), a);
    // Same parent wins over a newer record at the same position.
    assert_eq!(
        store
            .cache_closest(Some("p1"), "build/9")
            .unwrap()
            .unwrap()
            .key,
        "k-a"
    );
    assert_eq!(
        store
            .cache_closest(Some("zz"), "build/2")
            .unwrap()
            .unwrap()
            .key,
        "k-b"
    );
    assert!(store
        .cache_closest(Some("zz"), "other/1")
        .unwrap()
        .is_none());
    // A record whose layer blob is gone is a miss.
    let mut c = CacheRecord::new("k-c", None, "s/0", serde_json::json!({}));
    c.layer = Some(LayerRef {
        digest: format!("sha256:{}", "f".repeat(64)),
        diff_id: format!("sha256:{}", "f".repeat(64)),
        size: 1,
        media_type: "x".into(),
    });
    store.cache_put(&c).unwrap();
    assert!(store.cache_get("k-c").unwrap().is_none());
    // Any key string is a safe file name.
    let weird = CacheRecord::new("../../etc/passwd", None, "s/0", serde_json::json!({}));
    store.cache_put(&weird).unwrap();
    assert!(store.cache_get("../../etc/passwd").unwrap().is_some());
    assert!(!dir.path().join("etc").exists());
}

#[test]
fn store_root_layout_files_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert!(dir.path().join("rbuild/layers").is_dir());
    assert!(dir.path().join("rbuild/cache").is_dir());
}

#[test]
fn blobs_and_layer_dirs_get_normal_modes_and_tags_need_their_manifest() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let blob = store.put_blob(b"x").unwrap();
    let mode = std::fs::metadata(store.blob_path(&blob.digest).unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let id = format!("sha256:{}", "b".repeat(64));
    let path = store.install_layer_dir(&id, |_| Ok(())).unwrap();
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "a layer root must not be 0700");

    let missing = oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::ImageManifest,
        10,
        format!("sha256:{}", "c".repeat(64))
            .parse::<oci_spec::image::Digest>()
            .unwrap(),
    );
    let err = store.tag("app:v1", &missing).unwrap_err();
    assert!(format!("{err:#}").contains("not in the store"), "{err:#}");
    assert!(store.tags().unwrap().is_empty());
}
