use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

pub(crate) const PLATFORM: &str = "linux/amd64";

pub(crate) fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// A cache mount dir of `store` for `id`, filled like a package cache.
pub(crate) fn fill_mount(store: &Store, id: &str) -> PathBuf {
    let dir = store.cache_mount_dir(id).unwrap();
    fs::create_dir_all(dir.join("pkgs/sub")).unwrap();
    fs::write(dir.join("pkgs/a.deb"), vec![7u8; 300_000]).unwrap();
    fs::write(dir.join("pkgs/sub/b.txt"), "b").unwrap();
    fs::write(dir.join("empty"), "").unwrap();
    fs::set_permissions(dir.join("empty"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(dir.join("pkgs/sub/b.txt"), dir.join("b-link")).unwrap();
    std::os::unix::fs::symlink("pkgs/a.deb", dir.join("latest")).unwrap();
    dir
}

fn opts(max_size: u64) -> PackOptions {
    PackOptions {
        max_size,
        compression: Compression::Gzip { level: 6 },
    }
}

pub(crate) fn packed(store: &Store, id: &str) -> PackedMount {
    match pack(store, id, PLATFORM, &opts(DEFAULT_MAX_SIZE)).unwrap() {
        Packed::Layer(p) => p,
        other => panic!("not packed: {other:?}"),
    }
}

/// (path, kind, mode, size, content) of everything below `dir`, sorted.
pub(crate) fn tree(dir: &Path) -> Vec<(String, String, u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let item = item.unwrap();
        let meta = item.path().symlink_metadata().unwrap();
        let rel = item.path().strip_prefix(dir).unwrap().display().to_string();
        let (kind, content) = if meta.is_symlink() {
            let t = fs::read_link(item.path()).unwrap();
            ("link".to_string(), t.display().to_string().into_bytes())
        } else if meta.is_file() {
            ("file".to_string(), fs::read(item.path()).unwrap())
        } else {
            ("dir".to_string(), Vec::new())
        };
        let size = if meta.is_file() { meta.len() } else { 0 };
        out.push((rel, kind, meta.mode() & 0o7777, size, content));
    }
    out
}

fn blob(store: &Store, p: &PackedMount) -> fs::File {
    store.open_blob(&p.layer.digest).unwrap()
}

#[test]
fn a_mount_packs_to_a_deterministic_layer_and_restores_the_same_files() {
    let (_d, store) = store();
    let src = fill_mount(&store, "/root/.cache");
    let p = packed(&store, "/root/.cache");
    assert_eq!(p.id, "/root/.cache");
    assert_eq!(p.platform, PLATFORM);
    assert_eq!(p.layer.media_type, crate::oci::media::OCI_LAYER_GZIP);
    assert_eq!(
        p.layer.size,
        store
            .open_blob(&p.layer.digest)
            .unwrap()
            .metadata()
            .unwrap()
            .len()
    );
    assert!(p.uncompressed_size > 300_000, "{p:?}");
    assert!(p.layer.size < 10_000, "zeros compress: {p:?}");
    // The same files give the same blob.
    assert_eq!(packed(&store, "/root/.cache"), p);
    // JSON round trip in the documented shape.
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["layer"]["media_type"],
        crate::oci::media::OCI_LAYER_GZIP
    );
    assert_eq!(json["uncompressed_size"], p.uncompressed_size);
    assert_eq!(serde_json::from_value::<PackedMount>(json).unwrap(), p);

    let (_d2, other) = self::store();
    let dest = other.temp_dir("t-").unwrap();
    restore(&p, blob(&store, &p), dest.path()).unwrap();
    assert_eq!(tree(dest.path()), tree(&src));
    // The hard link is one inode again.
    let a = dest.path().join("b-link").metadata().unwrap();
    let b = dest.path().join("pkgs/sub/b.txt").metadata().unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn zstd_and_uncompressed_mounts_round_trip() {
    let (_d, store) = store();
    let src = fill_mount(&store, "m");
    for compression in [Compression::Zstd { level: 3 }, Compression::None] {
        let o = PackOptions {
            max_size: DEFAULT_MAX_SIZE,
            compression,
        };
        let Packed::Layer(p) = pack(&store, "m", PLATFORM, &o).unwrap() else {
            panic!("not packed");
        };
        let dest = store.temp_dir("t-").unwrap();
        restore(&p, blob(&store, &p), dest.path()).unwrap();
        assert_eq!(tree(dest.path()), tree(&src), "{compression:?}");
    }
}

#[test]
fn missing_empty_and_too_large_mounts_are_not_packed() {
    let (_d, store) = store();
    assert_eq!(
        pack(&store, "none", PLATFORM, &opts(10)).unwrap(),
        Packed::Empty
    );
    fs::create_dir_all(store.cache_mount_dir("empty").unwrap()).unwrap();
    assert_eq!(
        pack(&store, "empty", PLATFORM, &opts(10)).unwrap(),
        Packed::Empty
    );
    fill_mount(&store, "big");
    let got = pack(&store, "big", PLATFORM, &opts(100_000)).unwrap();
    let Packed::TooLarge { id, size, limit } = &got else {
        panic!("{got:?}");
    };
    assert_eq!((id.as_str(), *size, *limit), ("big", 300_001, 100_000));
    let note = got.note();
    assert!(
        note.contains("cache-mounts-max-size") && note.contains("hint:"),
        "{note}"
    );
    assert_eq!(parse_max_size("512MiB").unwrap(), 512 << 20);
    let err = parse_max_size("lots").unwrap_err().to_string();
    assert!(
        err.contains("cache-mounts-max-size") && err.contains("lots"),
        "{err}"
    );
}

/// Restoring from a blob that is not what the entry says fails, naming
/// what differs; nothing is taken on trust.
#[test]
fn a_tampered_entry_or_blob_is_refused() {
    let (_d, store) = store();
    fill_mount(&store, "m");
    let p = packed(&store, "m");
    let bytes = fs::read(store.blob_path(&p.layer.digest).unwrap()).unwrap();
    let try_restore = |entry: &PackedMount, data: Vec<u8>| {
        let dest = store.temp_dir("t-").unwrap();
        match restore(entry, std::io::Cursor::new(data), dest.path()) {
            Ok(()) => panic!("restored: {entry:?}"),
            Err(err) => format!("{:#}", anyhow::Error::from(err)),
        }
    };
    // Another layer's diff_id.
    let mut e = p.clone();
    e.layer.diff_id = format!("sha256:{}", "0".repeat(64));
    let err = try_restore(&e, bytes.clone());
    assert!(err.contains("diff_id") && err.contains("tampered"), "{err}");
    // Another digest (same content).
    let mut e = p.clone();
    e.layer.digest = format!("sha256:{}", "1".repeat(64));
    let err = try_restore(&e, bytes.clone());
    assert!(err.contains("digest") && err.contains("tampered"), "{err}");
    // A blob shorter than the entry says.
    let mut e = p.clone();
    e.layer.size += 10;
    let err = try_restore(&e, bytes.clone());
    assert!(err.contains("size") && err.contains("tampered"), "{err}");
    // Bytes appended after the gzip stream: refused (not gzip).
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"junk");
    let err = try_restore(&p, longer);
    assert!(err.contains("unpacking its layer"), "{err}");
    // A tar that claims to expand less than it does.
    let mut e = p.clone();
    e.uncompressed_size = 1000;
    let err = try_restore(&e, bytes.clone());
    assert!(err.contains("expands to more than 1000"), "{err}");
    // Malformed entries never reach the unpacker.
    for (field, entry) in [
        (
            "platform",
            PackedMount {
                platform: "linux".into(),
                ..p.clone()
            },
        ),
        (
            "platform",
            PackedMount {
                platform: "linux/../x".into(),
                ..p.clone()
            },
        ),
        (
            "id",
            PackedMount {
                id: String::new(),
                ..p.clone()
            },
        ),
        (
            "digest",
            PackedMount {
                layer: MountLayer {
                    digest: "md5:x".into(),
                    ..p.layer.clone()
                },
                ..p.clone()
            },
        ),
        (
            "media type",
            PackedMount {
                layer: MountLayer {
                    media_type: "text/plain".into(),
                    ..p.layer.clone()
                },
                ..p.clone()
            },
        ),
    ] {
        let err = try_restore(&entry, bytes.clone());
        assert!(
            err.contains("invalid") && err.contains(field),
            "{field}: {err}"
        );
    }
}

/// A tar (right digest and diff_id, as an attacker who writes the cache
/// would make it) whose entries point outside the mount stays inside it.
#[test]
fn a_layer_that_escapes_the_mount_dir_is_refused() {
    let (_d, store) = store();
    let outside = store.temp_dir("outside-").unwrap();
    let victim = outside.path().join("victim");
    for name in [
        format!("../../{}", victim.display()),
        "a/../../escaped".to_string(),
    ] {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // `set_path` refuses `..`; write the raw name as an attacker would.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        tar.append(&h, &b"evil"[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        let digest = crate::oci::digest::sha256_digest(&bytes);
        let entry = PackedMount {
            id: "m".into(),
            platform: PLATFORM.into(),
            layer: MountLayer {
                digest: digest.clone(),
                diff_id: digest,
                size: bytes.len() as u64,
                media_type: crate::oci::media::OCI_LAYER.into(),
            },
            uncompressed_size: bytes.len() as u64,
        };
        let dest = store.temp_dir("t-").unwrap();
        let err = format!(
            "{:#}",
            anyhow::Error::from(
                restore(&entry, std::io::Cursor::new(bytes), dest.path()).unwrap_err(),
            )
        );
        assert!(err.contains(".."), "{name}: {err}");
        assert!(!victim.exists() && !store.root().join("escaped").exists());
    }
}

/// A set whose blobs come from store `a` (as from another machine).
pub(crate) fn set_of(a: &Store, entries: Vec<PackedMount>) -> (MountSet, Vec<MountError>) {
    let a = a.clone();
    MountSet::new(
        entries,
        Box::new(move |to: &Store, p: &PackedMount| -> anyhow::Result<()> {
            let mut w = to.blob_writer()?;
            std::io::copy(&mut a.open_blob(&p.layer.digest)?, &mut w)?;
            w.commit_verified(&p.layer.digest, Some(p.layer.size))?;
            Ok(())
        }),
    )
}

#[test]
fn cache_to_parses_the_mount_keys() {
    use crate::cache::parse_cache_to;
    let to = parse_cache_to("type=local,dest=/c,cache-mounts=true").unwrap();
    assert_eq!(to.mounts, Some(DEFAULT_MAX_SIZE));
    let to = parse_cache_to("type=local,dest=/c,cache-mounts=true,cache-mounts-max-size=512MiB")
        .unwrap();
    assert_eq!(to.mounts, Some(512 << 20));
    assert_eq!(parse_cache_to("type=local,dest=/c").unwrap().mounts, None);
    assert_eq!(
        parse_cache_to("type=local,dest=/c,cache-mounts=false")
            .unwrap()
            .mounts,
        None
    );
    for (spec, want) in [
        ("type=inline,cache-mounts=true", "type=inline"),
        (
            "type=local,dest=/c,cache-mounts-max-size=1G",
            "needs cache-mounts=true",
        ),
        (
            "type=local,dest=/c,cache-mounts=yes",
            "expected true or false",
        ),
        (
            "type=local,dest=/c,cache-mounts=true,cache-mounts-max-size=9Q",
            "9Q",
        ),
    ] {
        let err = parse_cache_to(spec).unwrap_err().to_string();
        assert!(
            err.contains(want) && err.contains("--cache-to"),
            "{spec}: {err}"
        );
    }
}
