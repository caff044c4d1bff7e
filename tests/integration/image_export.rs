//! Export and image commands, checked with real tools: skopeo reads our
//! docker-archive and OCI layout output, umoci unpacks what skopeo copied.

use crate::store_support;

use std::io::Write;
use std::process::Command;

use rbuild::image::{
    commit_image, convert_image, descriptor, export_docker_archive, export_oci_layout, find_image,
    HistoryEntry, ImageConfig, ImageFormat,
};
use rbuild::oci::digest::sha256_digest;
use rbuild::oci::media::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use rbuild::store::Store;
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

fn tar_member(path: &std::path::Path, name: &str) -> Vec<u8> {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in ar.entries().unwrap() {
        let mut e = entry.unwrap();
        if e.path().unwrap().to_str() == Some(name) {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            return v;
        }
    }
    panic!("{name} not in {}", path.display());
}

fn rbuild(root: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.arg("--root").arg(root);
    c
}

#[test]
fn docker_archive_is_read_by_skopeo_and_round_trips_to_oci() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    make_image(
        &store,
        "app:v1",
        &[&[("hello.txt", b"hi\n")], &[("b.txt", b"bee\n")]],
        "2001-02-03T04:05:06Z",
    );
    let out = dir.path().join("out.tar");
    export_docker_archive(&store, &["app:v1".to_string()], &out).unwrap();
    let text =
        run(Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", out.display())]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    let manifest = tar_member(&out, "manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["app:v1"]));
    let repos: serde_json::Value =
        serde_json::from_slice(&tar_member(&out, "repositories")).unwrap();
    assert!(repos["app"]["v1"].is_string(), "{repos}");
    let image = find_image(&store, "app:v1").unwrap();
    assert_eq!(v["Digest"].as_str().map(str::len), Some(71));
    // Docker-archive layers are the uncompressed tars: digests are the diff_ids.
    let layers: Vec<&str> = v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    let diff_ids: Vec<&str> = image
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(layers, diff_ids);

    let copy = dir.path().join("copy");
    run(Command::new("skopeo").args([
        "copy",
        &format!("docker-archive:{}", out.display()),
        &format!("oci:{}:x", copy.display()),
    ]));
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:x", copy.display()),
        bundle.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(bundle.join("rootfs/hello.txt")).unwrap(),
        b"hi\n"
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/b.txt")).unwrap(),
        b"bee\n"
    );
}

#[test]
fn oci_layout_export_as_dir_and_tar() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store").as_path()).unwrap();
    make_image(&store, "app:v1", &[&[("f", b"1")]], "2001-02-03T04:05:06Z");
    make_image(
        &store,
        "other:v2",
        &[&[("g", b"2")]],
        "2001-02-03T04:05:06Z",
    );
    let out = dir.path().join("layout");
    export_oci_layout(&store, &["app:v1".to_string()], &out).unwrap();
    // Exporting a second image into the same dir keeps the first.
    export_oci_layout(&store, &["other:v2".to_string()], &out).unwrap();
    for r in ["app:v1", "other:v2"] {
        let t =
            run(Command::new("skopeo").args(["inspect", &format!("oci:{}:{r}", out.display())]));
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 1, "{r}");
    }
    let blobs = std::fs::read_dir(out.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 6, "manifest, config, layer for each image");

    let tar = dir.path().join("layout.tar");
    export_oci_layout(&store, &["app:v1".to_string()], &tar).unwrap();
    let t =
        run(Command::new("skopeo")
            .args(["inspect", &format!("oci-archive:{}:app:v1", tar.display())]));
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    let desc = store.resolve("app:v1").unwrap().unwrap();
    assert_eq!(v["Digest"], desc.digest().to_string());
}

#[test]
fn docker_format_manifest_and_zstd_layer_export() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // A zstd layer in an OCI image: the docker archive must hold it decompressed.
    let (gz, diff_id) = layer_tar_gz(&[("z.txt", b"zed\n")]);
    let plain = {
        let mut d = flate2::read::GzDecoder::new(&gz[..]);
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut v).unwrap();
        v
    };
    assert_eq!(sha256_digest(&plain), diff_id);
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let mut w = store.blob_writer().unwrap();
    w.write_all(&zst).unwrap();
    let blob = w.commit().unwrap();
    let mut config = ImageConfig::for_host();
    config.add_layer(&diff_id, HistoryEntry::new("ADD z.txt /"));
    let layer = descriptor(OCI_LAYER_ZSTD, &blob).unwrap();
    let m = commit_image(
        &store,
        ImageFormat::Oci,
        &config,
        std::slice::from_ref(&layer),
    )
    .unwrap();
    store.tag("zimg:v1", &m).unwrap();
    let out = dir.path().join("z.tar");
    export_docker_archive(&store, &["zimg:v1".to_string()], &out).unwrap();
    let t =
        run(Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", out.display())]));
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["Layers"][0], diff_id.as_str());
    // zstd cannot be written as a docker schema2 image.
    assert!(commit_image(&store, ImageFormat::Docker, &config, &[layer]).is_err());

    // A gzip layer as a docker schema2 image: readable by us, and converted
    // to OCI (what skopeo/umoci look for in index.json) with the same layers.
    let (gz, diff_id) = layer_tar_gz(&[("d.txt", b"dee\n")]);
    let blob = store.put_blob(&gz).unwrap();
    let mut config = ImageConfig::for_host();
    config.add_layer(&diff_id, HistoryEntry::new("ADD d.txt /"));
    let layer = descriptor(DOCKER_LAYER_GZIP, &blob).unwrap();
    let m = commit_image(&store, ImageFormat::Docker, &config, &[layer]).unwrap();
    store.tag("dimg:docker", &m).unwrap();
    let docker = find_image(&store, "dimg:docker").unwrap();
    let raw: serde_json::Value =
        serde_json::from_slice(&store.read_blob(m.digest().as_ref()).unwrap()).unwrap();
    assert_eq!(raw["mediaType"], DOCKER_MANIFEST);
    assert_eq!(raw["config"]["mediaType"], DOCKER_CONFIG);
    assert_eq!(raw["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
    let oci = convert_image(&store, &docker, ImageFormat::Oci).unwrap();
    store.tag("dimg:oci", &oci).unwrap();
    let t = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci:{}:dimg:oci", dir.path().display()),
    ]));
    let raw: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(raw["mediaType"], OCI_MANIFEST);
    assert_eq!(raw["layers"][0]["mediaType"], OCI_LAYER_GZIP);
    assert_eq!(raw["layers"][0]["digest"], blob.digest.as_str());
    assert_eq!(raw["config"]["digest"], docker.config_digest.as_str());
}

#[test]
fn cli_images_tag_rmi_inspect_save_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    make_image(&store, "app:v1", &[&[("f", b"1")]], "2001-02-03T04:05:06Z");
    run(rbuild(dir.path()).args(["tag", "app:v1", "copy"]));
    let images = run(rbuild(dir.path()).arg("images"));
    let lines: Vec<&str> = images.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY   TAG       IMAGE ID       CREATED"),
        "{images}"
    );
    assert_eq!(lines.len(), 3, "{images}");
    assert!(lines[2].starts_with("copy         latest    "), "{images}");
    assert!(lines[1].contains("years ago"), "{images}");

    let inspect = run(rbuild(dir.path()).args(["inspect", "copy"]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["RepoTags"], serde_json::json!(["app:v1", "copy:latest"]));
    assert_eq!(v["Config"]["config"]["Cmd"][0], "/bin/sh");
    // The short image ID from `images` finds the image too.
    let id = v["Id"].as_str().unwrap()["sha256:".len()..][..12].to_string();
    assert!(images.contains(&id));
    run(rbuild(dir.path()).args(["history", &id]));

    let hist = run(rbuild(dir.path()).args(["history", "--format", "json", "app:v1"]));
    let rows: Vec<serde_json::Value> = hist
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["ID"], "<missing>");
    assert_eq!(rows[0]["CreatedAt"], "2001-02-03T04:05:06Z");
    assert_eq!(rows[1]["CreatedBy"], "COPY layer0 / # buildkit");
    let raw = run(rbuild(dir.path()).args(["history", "-H=false", "app:v1"]));
    assert!(raw.contains("2001-02-03T04:05:06Z"), "{raw}");

    let out = dir.path().join("saved.tar");
    run(rbuild(dir.path()).args(["save", "app:v1", "-o", out.to_str().unwrap()]));
    run(Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", out.display())]));

    let res = rbuild(dir.path())
        .args(["rmi", "copy", "nosuch:v9"])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stdout).contains("Untagged: copy:latest"));
    assert!(String::from_utf8_lossy(&res.stderr).contains("nosuch:v9"));
    assert!(store.resolve("copy").unwrap().is_none());
    let pr = run(rbuild(dir.path()).args(["prune"]));
    assert!(pr.starts_with("Deleted 0 blobs"), "{pr}");
    run(rbuild(dir.path()).args(["rmi", "app:v1"]));
    let pr = run(rbuild(dir.path()).args(["prune", "--all"]));
    assert!(pr.starts_with("Deleted 3 blobs"), "{pr}");
}
