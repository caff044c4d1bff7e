//! Chunked layer compression end to end: layers built by the CLI are read
//! by independent decoders (gzip -t, zstd -t, Python's gzip/tarfile,
//! skopeo + umoci), a rebuild with a warm chunk cache writes the same blob
//! as a cold build in a fresh store, and prune drops the chunk records of
//! blobs it removes.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_ok, tool, Env};
use serde_json::Value;

/// ~6 MB of text-like files: several chunks of the layer. With `changed`,
/// only that file is rewritten (the others keep their mtimes).
fn write_context(ctx: &Path, changed: Option<usize>) {
    fs::create_dir_all(ctx.join("src")).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY src/ /src/\n").unwrap();
    for i in 0..400usize {
        if changed.is_some_and(|c| c != i) {
            continue;
        }
        let salt = if changed == Some(i) { "changed" } else { "" };
        let body: String = (0..500)
            .map(|l| format!("let v{l} = {} * {i}; // {salt}\n", l * 7919 % 1000))
            .collect();
        fs::write(ctx.join(format!("src/f{i:04}.rs")), body).unwrap();
    }
}

fn build(env: &Env, ctx: &Path, tag: &str, codec: &str) {
    env.rbuild_ok(&[
        "build",
        "--progress",
        "plain",
        "--compression",
        codec,
        "-t",
        tag,
        ctx.to_str().unwrap(),
    ]);
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The (only) layer blob of the image tagged `tag` in the store at `root`.
fn layer_of(root: &Path, tag: &str) -> PathBuf {
    let index = json(&root.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"));
    let manifest = json(&blob(root, desc["digest"].as_str().unwrap()));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    blob(root, layers[0]["digest"].as_str().unwrap())
}

fn records(root: &Path) -> usize {
    fs::read_dir(root.join("rbuild/chunks"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// gzip -t / zstd -t, and (gzip) Python's gzip + tarfile lists every file.
fn check_with_tools(layer: &Path, codec: &str) {
    if codec == "gzip" {
        let Some(gzip) = tool("gzip", "gzip") else {
            return;
        };
        run_ok(Command::new(gzip).arg("-t").arg(layer));
        let Some(py) = tool("python3", "python3") else {
            return;
        };
        let n = run_ok(
            Command::new(py)
                .arg("-c")
                .arg(
                    "import gzip,io,sys,tarfile,zlib\n\
             raw = open(sys.argv[1], 'rb').read()\n\
             data = gzip.decompress(raw)\n\
             members = 0\n\
             while raw:\n\
             \x20   d = zlib.decompressobj(31)\n\
             \x20   d.decompress(raw)\n\
             \x20   raw, members = d.unused_data, members + 1\n\
             print(len(tarfile.open(fileobj=io.BytesIO(data)).getnames()), members)",
                )
                .arg(layer),
        );
        // 400 files and the src/ dir, in several gzip members (one per
        // chunk): Python's gzip read past the first one.
        let (names, members) = n.trim().split_once(' ').unwrap();
        assert_eq!(names, "401", "{n}");
        assert!(members.parse::<u32>().unwrap() >= 3, "{n}");
    } else {
        let Some(zstd) = tool("zstd", "zstd") else {
            return;
        };
        run_ok(Command::new(zstd).arg("-q").arg("-t").arg(layer));
    }
}

/// skopeo copies the image to another OCI layout, umoci unpacks it; returns
/// one file's content. umoci 0.4 reads no zstd, so zstd layers are
/// recompressed to gzip by skopeo on the way: its zstd decoder (the
/// klauspost one containerd uses) reads every frame.
fn skopeo_umoci_read(env: &Env, tag: &str, codec: &str, file: &str) -> Option<String> {
    let skopeo = tool("skopeo", "skopeo")?;
    let umoci = tool("umoci", "umoci")?;
    let name = tag.replace(':', "-");
    let copy = env.path(&format!("copy-{name}"));
    let mut cmd = Command::new(skopeo);
    cmd.arg("copy");
    if codec == "zstd" {
        cmd.args(["--dest-compress-format", "gzip"]);
    }
    run_ok(
        cmd.arg(format!("oci:{}:{tag}", env.root().display()))
            .arg(format!("oci:{}:{tag}", copy.display())),
    );
    if codec == "zstd" {
        // The copy really was decoded and re-encoded.
        let index = json(&copy.join("index.json"));
        let manifest = json(&blob(
            &copy,
            index["manifests"][0]["digest"].as_str().unwrap(),
        ));
        assert!(
            manifest["layers"][0]["mediaType"]
                .as_str()
                .unwrap()
                .ends_with("+gzip"),
            "{manifest}"
        );
    }
    let bundle = env.path(&format!("bundle-{name}"));
    let mut cmd = Command::new(umoci);
    cmd.arg("unpack");
    if !nix::unistd::geteuid().is_root() {
        cmd.arg("--rootless");
    }
    run_ok(
        cmd.arg("--image")
            .arg(format!("{}:{tag}", copy.display()))
            .arg(&bundle),
    );
    Some(fs::read_to_string(bundle.join("rootfs").join(file)).unwrap())
}

fn chunked_layers_are_valid_and_a_warm_rebuild_matches_a_cold_one(codec: &str) {
    let env = Env::new();
    let ctx = env.path("ctx");
    write_context(&ctx, None);
    build(&env, &ctx, "app:v1", codec);
    let v1 = layer_of(&env.root(), "app:v1");
    check_with_tools(&v1, codec);
    let before = records(&env.root());
    assert!(before >= 4, "{before} chunk records for a ~6 MB layer");
    if let Some(text) = skopeo_umoci_read(&env, "app:v1", codec, "src/f0200.rs") {
        assert_eq!(text, fs::read_to_string(ctx.join("src/f0200.rs")).unwrap());
    }

    // One file in the middle changes: the warm rebuild's blob is the one a
    // cold build of the same files in a fresh store writes.
    write_context(&ctx, Some(200));
    build(&env, &ctx, "app:v2", codec);
    let v2 = layer_of(&env.root(), "app:v2");
    assert_ne!(v1, v2);
    check_with_tools(&v2, codec);
    let fresh = Env::new();
    build(&fresh, &ctx, "app:v2", codec);
    let cold = layer_of(&fresh.root(), "app:v2");
    assert_eq!(
        v2.file_name(),
        cold.file_name(),
        "warm and cold blobs differ"
    );
    assert_eq!(fs::read(&v2).unwrap(), fs::read(&cold).unwrap());
    if let Some(text) = skopeo_umoci_read(&env, "app:v2", codec, "src/f0200.rs") {
        assert!(text.contains("// changed"), "{text}");
    }
    // Only the changed chunk was new: one record more, not a second set.
    let after = records(&env.root());
    assert!(
        after > before && after <= before + 2,
        "{before} → {after} records"
    );

    // Prune keeps records of live blobs and drops those of removed ones.
    env.rbuild_ok(&["prune", "--all"]);
    assert_eq!(records(&env.root()), after);
    env.rbuild_ok(&["rmi", "app:v1", "app:v2"]);
    env.rbuild_ok(&["prune", "--all"]);
    assert_eq!(records(&env.root()), 0);
}

#[test]
fn gzip_chunked_layers_are_valid_and_a_warm_rebuild_matches_a_cold_one() {
    chunked_layers_are_valid_and_a_warm_rebuild_matches_a_cold_one("gzip");
}

#[test]
fn zstd_chunked_layers_are_valid_and_a_warm_rebuild_matches_a_cold_one() {
    chunked_layers_are_valid_and_a_warm_rebuild_matches_a_cold_one("zstd");
}
