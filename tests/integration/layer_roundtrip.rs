//! Layer writer round trips on real files: write → unpack → compare, GNU
//! tar as an independent reader, determinism, and the compressors checked
//! by the real gzip/pigz/zstd tools.

use crate::layer_common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use layer_common::*;
use rbuild::layer::*;
use rbuild::oci::media::OCI_LAYER_GZIP;
use rbuild::oci::Compression;

/// A tree with every kind of object a layer carries.
fn build_tree(root: &Path) -> String {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("a.txt"), "hello\n").unwrap();
    fs::write(root.join("dir/sub/file"), vec![7u8; 70_000]).unwrap();
    symlink("a.txt", root.join("link")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    fs::write(root.join("dir/h1"), "linked").unwrap();
    fs::hard_link(root.join("dir/h1"), root.join("h2")).unwrap();
    // > 100 and > 255 bytes in total, components under NAME_MAX.
    let long_dir = format!("{}/{}", "d".repeat(120), "e".repeat(150));
    fs::create_dir_all(root.join(&long_dir)).unwrap();
    let long_file = format!("{long_dir}/{}", "f".repeat(200));
    fs::write(root.join(&long_file), "deep").unwrap();
    symlink("t".repeat(180), root.join("long-target")).unwrap();
    fs::write(root.join("suid"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("caps"), "bin").unwrap();
    fs::create_dir(root.join("ro")).unwrap();
    fs::write(root.join("ro/inner"), "r").unwrap();
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    set_xattr(&root.join("a.txt"), "user.x", b"value\0with nul");
    // vfs_cap_data v2 with the effective bit: cap_net_raw=ep.
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    set_xattr(&root.join("caps"), "security.capability", &cap);
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o640, 0);
    mknod(
        &root.join("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    lchown(&root.join("a.txt"), 1234, 5678);
    lchown(&root.join("dir/sub/file"), 3_000_000, 4_000_000); // needs PAX uid/gid
    lchown(&root.join("link"), 42, 43);
    // Times last: children change their parent's mtime.
    for (i, e) in walkdir::WalkDir::new(root)
        .min_depth(1)
        .contents_first(true)
        .into_iter()
        .enumerate()
    {
        let e = e.unwrap();
        set_mtime(
            e.path(),
            1_600_000_000 + i as i64,
            if i % 2 == 0 { 123_456_789 } else { 0 },
        );
    }
    long_file
}

fn write_to_vec(entries: Vec<LayerEntry>, compression: Compression) -> (Vec<u8>, LayerInfo) {
    let mut out = Vec::new();
    let opts = WriteOptions {
        compression,
        ..Default::default()
    };
    let info = write_layer(entries, &mut out, &opts).unwrap();
    (out, info)
}

#[test]
fn round_trip_preserves_every_attribute() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let long_file = build_tree(&src);
    fs::create_dir(&dst).unwrap();
    let entries = entries_from_dir(&src, &DirOptions::default()).unwrap();
    let (blob, info) = write_to_vec(entries, Compression::Gzip { level: 6 });
    assert_eq!(info.media_type, OCI_LAYER_GZIP);
    assert_eq!(info.size, blob.len() as u64);
    let stats = unpack_layer(
        &blob[..],
        &dst,
        &UnpackOptions {
            strict: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(stats.notes.is_empty(), "{:?}", stats.notes);
    assert_same_tree(&src, &dst);
    assert_eq!(fs::read_to_string(dst.join(&long_file)).unwrap(), "deep");

    // GNU tar reads the same archive: long names, link names, owners.
    let tar_path = t.path().join("layer.tar.gz");
    fs::write(&tar_path, &blob).unwrap();
    let listing = run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-tvzf")
        .arg(&tar_path));
    assert!(listing.contains(&long_file), "{listing}");
    assert!(
        listing.contains(&format!("long-target -> {}", "t".repeat(180))),
        "{listing}"
    );
    assert!(listing.contains("3000000/4000000"), "{listing}");
    assert!(
        listing.contains("h2 link to dir/h1") || listing.contains("dir/h1 link to h2"),
        "{listing}"
    );
    assert!(listing.contains("-rwsr-xr-x"), "{listing}");
    let gnu = t.path().join("gnu");
    fs::create_dir(&gnu).unwrap();
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xpzf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&gnu));
    assert_eq!(fs::read_to_string(gnu.join(&long_file)).unwrap(), "deep");
    assert_eq!(xattrs(&gnu.join("caps")), xattrs(&src.join("caps")));
}

#[test]
fn same_input_same_digest_and_unpack_repack_same_diff_id() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    build_tree(&src);
    fs::create_dir(&dst).unwrap();
    for comp in [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
        Compression::None,
    ] {
        let (_, a) = write_to_vec(
            entries_from_dir(&src, &DirOptions::default()).unwrap(),
            comp,
        );
        let (_, b) = write_to_vec(
            entries_from_dir(&src, &DirOptions::default()).unwrap(),
            comp,
        );
        assert_eq!(a, b, "{comp:?} output is not deterministic");
    }
    let (blob, first) = write_to_vec(
        entries_from_dir(&src, &DirOptions::default()).unwrap(),
        Compression::Zstd { level: 3 },
    );
    unpack_layer(&blob[..], &dst, &UnpackOptions::default()).unwrap();
    let (_, again) = write_to_vec(
        entries_from_dir(&dst, &DirOptions::default()).unwrap(),
        Compression::None,
    );
    assert_eq!(first.diff_id, again.diff_id);
    assert_eq!(again.diff_id, again.digest);
}

#[test]
fn source_date_epoch_clamps_and_no_atime_or_names() {
    let e = |path: &str, sec| LayerEntry {
        path: path.into(),
        kind: EntryKind::File(FileSource::Bytes(b"x".to_vec())),
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timespec::new(sec, 5),
        xattrs: vec![
            ("trusted.overlay.opaque".into(), b"y".to_vec()),
            ("user.k".into(), b"v".to_vec()),
        ],
    };
    let mut out = Vec::new();
    let opts = WriteOptions {
        compression: Compression::None,
        source_date_epoch: Some(1_000_000),
        threads: 1,
        chunk_cache: None,
    };
    write_layer(vec![e("new", 2_000_000), e("old", 10)], &mut out, &opts).unwrap();
    let mut ar = tar::Archive::new(&out[..]);
    let mut seen = Vec::new();
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        assert!(h.username_bytes().unwrap().is_empty());
        assert!(h.groupname_bytes().unwrap().is_empty());
        let pax: Vec<String> = entry
            .pax_extensions()
            .unwrap()
            .map(|x| x.map(|r| r.unwrap().key().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert!(
            pax.iter()
                .all(|k| k != "atime" && k != "ctime" && !k.contains("overlay")),
            "{pax:?}"
        );
        seen.push((
            entry.path().unwrap().display().to_string(),
            h.mtime().unwrap(),
            pax,
        ));
    }
    assert_eq!(seen[0].0, "new");
    assert_eq!(seen[0].1, 1_000_000, "clamped to SOURCE_DATE_EPOCH");
    assert!(
        !seen[0].2.contains(&"mtime".to_string()),
        "clamped time has no fraction"
    );
    assert_eq!(seen[1].1, 10);
    assert!(
        seen[1].2.contains(&"mtime".to_string())
            && seen[1].2.contains(&"SCHILY.xattr.user.k".to_string())
    );
}

/// Mixed compressible/incompressible data, several chunks long.
fn sample_data() -> Vec<u8> {
    let mut data = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..9_000_000u32 {
        if (i / 100_000) % 3 == 0 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        } else {
            data.push(
                b"let value = entry.path(); // text\n"[(i as usize * 7 + i as usize / 1000) % 34],
            );
        }
    }
    data
}

#[test]
fn gzip_and_zstd_layers_validate_with_real_tools() {
    let t = tempfile::tempdir().unwrap();
    let data = sample_data();
    let src = t.path().join("tree");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("data"), &data).unwrap();
    for (comp, ext, tool) in [
        (Compression::Zstd { level: 3 }, "zst", "zstd"),
        (Compression::Gzip { level: 6 }, "gz", "pigz"),
    ] {
        let path = t.path().join(format!("layer.tar.{ext}"));
        let mut f = fs::File::create(&path).unwrap();
        let info = write_layer(
            entries_from_dir(&src, &DirOptions::default()).unwrap(),
            &mut f,
            &WriteOptions {
                compression: comp,
                ..Default::default()
            },
        )
        .unwrap();
        drop(f);
        // The 9 MB file is cut into pieces: several members (gzip) or
        // frames (zstd), which every reader below must read to the end.
        assert!(info.chunks.chunks >= 3, "{:?}", info.chunks);
        run(Command::new(tool).arg("-q").arg("-t").arg(&path));
        let listing = run(Command::new("tar").arg("-tvf").arg(&path));
        assert!(listing.contains("data"));
        let sha = run(Command::new("sha256sum").arg(&path));
        assert_eq!(
            format!("sha256:{}", sha.split_whitespace().next().unwrap()),
            info.digest
        );
        let plain = run(Command::new("sh")
            .arg("-c")
            .arg(format!("{tool} -dc {} | sha256sum", path.display())));
        assert_eq!(
            format!("sha256:{}", plain.split_whitespace().next().unwrap()),
            info.diff_id
        );
        if ext != "gz" {
            continue;
        }
        // gzip layers are one gzip member per chunk: GNU gzip and
        // busybox read all of them.
        run(Command::new("gzip").arg("-t").arg(&path));
        run(Command::new("busybox").arg("gunzip").arg("-t").arg(&path));
        let busybox = run(Command::new("sh")
            .arg("-c")
            .arg(format!("busybox gunzip -c {} | sha256sum", path.display())));
        assert_eq!(busybox, plain);
        // Within 2 % of serial `gzip -6` of the same tar (libdeflate's
        // level 6 against zlib's, over independent 4 MiB members).
        let serial = run(Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc {} | gzip -6c | wc -c", path.display())));
        let serial: f64 = serial.trim().parse().unwrap();
        let ours = fs::metadata(&path).unwrap().len() as f64;
        assert!(ours < serial * 1.02, "ours {ours} vs gzip -6 {serial}");
    }
}

/// Stores `bytes` as a blob of an OCI layout and returns its descriptor fields.
fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    use sha2::{Digest, Sha256};
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

#[test]
fn umoci_unpacks_our_gzip_layer_identically() {
    let t = tempfile::tempdir().unwrap();
    let (src, layout) = (t.path().join("src"), t.path().join("layout"));
    build_tree(&src);
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let (blob, info) = write_to_vec(
        entries_from_dir(&src, &DirOptions::default()).unwrap(),
        Compression::Gzip { level: 6 },
    );
    let (layer_digest, layer_size) = put_blob(&layout, &blob);
    assert_eq!(
        (layer_digest.clone(), layer_size as u64),
        (info.digest.clone(), info.size)
    );
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [info.diff_id]},
    });
    let (config_digest, config_size) = put_blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": info.media_type, "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put_blob(&layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "t"},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let bundle = t.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    assert_same_tree(&src, &bundle.join("rootfs"));
}

#[test]
fn gnu_tar_archives_unpack_identically() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let long_file = build_tree(&src);
    // POSIX (PAX) with xattrs, gzip; GNU format (long-name 'L' entries, no
    // xattrs, whole-second mtimes), xz.
    for (format, flags) in [("posix", "--xattrs --xattrs-include=* -z"), ("gnu", "-J")] {
        let archive = t.path().join(format!("{format}.tar"));
        run(Command::new("tar")
            .args(flags.split(' '))
            .args(["--numeric-owner", "-c", "-f"])
            .arg(&archive)
            .arg(format!("--format={format}"))
            .arg("-C")
            .arg(&src)
            .arg("."));
        let dst = t.path().join(format!("dst-{format}"));
        fs::create_dir(&dst).unwrap();
        let f = fs::File::open(&archive).unwrap();
        let stats = unpack_layer(
            f,
            &dst,
            &UnpackOptions {
                strict: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(stats.entries > 10);
        if format == "posix" {
            assert_same_tree(&src, &dst);
        } else {
            let a: Vec<String> = snapshot(&src, false).into_keys().collect();
            let b: Vec<String> = snapshot(&dst, false).into_keys().collect();
            assert_eq!(a, b);
            assert_eq!(fs::read_to_string(dst.join(&long_file)).unwrap(), "deep");
            assert_eq!(
                fs::read_link(dst.join("long-target")).unwrap(),
                Path::new(&"t".repeat(180))
            );
        }
    }
}
