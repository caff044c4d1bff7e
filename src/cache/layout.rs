//! `type=local`: the cache artifact in an OCI image layout directory, named
//! `cache` in its `index.json`. An export copies the blobs in first, then
//! replaces `index.json` (temp file + rename), then removes the blobs no
//! manifest of the new index references; an exclusive `flock` on
//! `.rbuild-cache.lock` makes concurrent exports into one DIR take turns.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::format::{Desc, OCI_MANIFEST};
use crate::oci::digest::sha256_digest as sha256;

/// The `org.opencontainers.image.ref.name` of the cache in `index.json`.
pub const REF: &str = "cache";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LOCK: &str = ".rbuild-cache.lock";
/// A manifest or index.json larger than this is not one rbuild wrote.
const MAX_SMALL: u64 = super::format::MAX_MAP_BYTES;

/// The path of a blob; the digest is checked so it names nothing outside.
pub fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(dir.join("blobs/sha256").join(h))
        }
        _ => bail!(
            "invalid digest {:?}",
            digest.chars().take(80).collect::<String>()
        ),
    }
}

/// Opens a file of the layout for reading: a regular file, not a symlink
/// (a cache dir is someone else's input: a blob linked to `/dev/zero`, a
/// FIFO or a file elsewhere is refused, not read).
pub fn open_file(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {} (a symlink is refused)", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(f)
}

/// A file of the layout, whole, if it is at most `MAX_SMALL` bytes.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_file(path)?
        .take(MAX_SMALL + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_SMALL {
        bail!("{} is over {MAX_SMALL} bytes", path.display());
    }
    Ok(bytes)
}

/// Read a small blob whole, checking its digest.
pub fn read_small(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let path = blob_path(dir, digest)?;
    let bytes = read_bounded(&path)?;
    if sha256(&bytes) != digest {
        bail!("{} does not match its digest", path.display());
    }
    Ok(bytes)
}

fn read_index(dir: &Path) -> Result<Value> {
    let path = dir.join("index.json");
    let bytes = read_bounded(&path)?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Refuses a layout whose own paths are symlinks (`blobs`,
/// `blobs/sha256`, `index.json`, `oci-layout`, the lock): an export
/// writes and deletes there, and through a link it would write or delete
/// files outside DIR (`blobs/sha256` → `~/.ssh` lost every key).
fn check_no_links(dir: &Path) -> Result<()> {
    for rel in ["blobs", "blobs/sha256", "index.json", "oci-layout", LOCK] {
        let path = dir.join(rel);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{} is a symlink: refusing to write the cache through it\n\
                 hint: --cache-to type=local,dest= needs a plain directory",
                path.display()
            );
        }
    }
    Ok(())
}

/// The manifest named `cache` in the layout at `dir`: its bytes.
pub fn read_manifest(dir: &Path) -> Result<Vec<u8>> {
    let index = read_index(dir)?;
    let digest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"][REF_NAME].as_str() == Some(REF))
        .and_then(|m| m["digest"].as_str())
        .with_context(|| {
            format!(
                "{} names no manifest `{REF}`\nhint: write one with --cache-to type=local,dest={}",
                dir.join("index.json").display(),
                dir.display()
            )
        })?;
    read_small(dir, digest)
}

/// Write `manifest` (with `config` and the blobs `layers` lists) into the
/// layout at `dir` as `cache`. `copy_layer` puts a layer blob at the path
/// it is given (from the store, or fetched).
pub fn write(
    dir: &Path,
    manifest: &[u8],
    config: &[u8],
    layers: &[Desc],
    copy_layer: &dyn Fn(&Desc, &Path) -> Result<()>,
) -> Result<()> {
    check_no_links(dir)?;
    fs::create_dir_all(dir.join("blobs/sha256"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let _lock = crate::store::lock_exclusive(&dir.join(LOCK))?;
    // Checked again under the lock: another process may have made them.
    check_no_links(dir)?;
    let marker = dir.join("oci-layout");
    if !marker.exists() {
        write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    for l in layers {
        let path = blob_path(dir, &l.digest)?;
        if fs::metadata(&path).is_ok_and(|m| m.len() == l.size) {
            continue;
        }
        copy_layer(l, &path)
            .with_context(|| format!("writing layer {} into {}", l.digest, dir.display()))?;
    }
    for bytes in [config, manifest] {
        let path = blob_path(dir, &sha256(bytes))?;
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
    }
    // Other entries of an index.json we did not write are kept, with
    // their blobs; an index.json that cannot be read is not replaced
    // (its entries, and their blobs, would be lost).
    let mut entries: Vec<Value> = match read_index(dir) {
        Ok(index) => index["manifests"].as_array().cloned().unwrap_or_default(),
        Err(_) if !dir.join("index.json").exists() => Vec::new(),
        Err(e) => {
            return Err(e.context(format!(
                "{} is not an OCI image layout rbuild can add its cache to\n\
                 hint: export into an empty directory, or one an earlier --cache-to wrote",
                dir.display()
            )))
        }
    };
    entries.retain(|m| m["annotations"][REF_NAME].as_str() != Some(REF));
    entries.push(json!({
        "mediaType": OCI_MANIFEST,
        "digest": sha256(manifest),
        "size": manifest.len(),
        "artifactType": super::format::ARTIFACT_TYPE,
        "annotations": { REF_NAME: REF },
    }));
    let index = json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::media::OCI_INDEX,
        "manifests": entries,
    });
    write_atomic(&dir.join("index.json"), &serde_json::to_vec_pretty(&index)?)?;
    drop_unreferenced(dir, &entries)
}

/// Remove the blobs no manifest of `entries` reaches (manifests, their
/// configs and layers, two levels of nested indexes). A manifest that
/// cannot be read, or an index nested deeper, keeps everything: nothing
/// is removed on doubt. Only regular files named by a digest are removed.
fn drop_unreferenced(dir: &Path, entries: &[Value]) -> Result<()> {
    let mut keep = HashSet::new();
    let mut todo: Vec<(String, usize)> = entries
        .iter()
        .filter_map(|m| m["digest"].as_str().map(|d| (d.to_string(), 0)))
        .collect();
    while let Some((digest, depth)) = todo.pop() {
        if !keep.insert(digest.clone()) {
            continue;
        }
        let Ok(bytes) = read_small(dir, &digest) else {
            return Ok(());
        };
        let Ok(m) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        for d in m["config"].as_object().into_iter().chain(
            m["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object),
        ) {
            if let Some(d) = d.get("digest").and_then(Value::as_str) {
                keep.insert(d.to_string());
            }
        }
        for child in m["manifests"].as_array().into_iter().flatten() {
            if let Some(d) = child["digest"].as_str() {
                if depth >= 2 {
                    return Ok(());
                }
                todo.push((d.to_string(), depth + 1));
            }
        }
    }
    let blobs = dir.join("blobs/sha256");
    for entry in fs::read_dir(&blobs).with_context(|| format!("listing {}", blobs.display()))? {
        let entry = entry.with_context(|| format!("listing {}", blobs.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let blob = entry.file_type().is_ok_and(|t| t.is_file())
            && name.len() == 64
            && name.bytes().all(|b| b.is_ascii_hexdigit());
        if blob && !keep.contains(&format!("sha256:{name}")) {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Temp file in the same directory + fsync + rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a path with a parent")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Copy `from` to `to` atomically (hard link when on one filesystem).
pub fn copy_file_atomic(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().context("a path with a parent")?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let tmp_path = tmp.into_temp_path();
    let _ = fs::remove_file(&tmp_path);
    if fs::hard_link(from, &tmp_path).is_err() {
        fs::copy(from, &tmp_path)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        fs::File::open(&tmp_path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", to.display()))?;
    }
    tmp_path
        .persist(to)
        .with_context(|| format!("renaming into {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_replaces_the_cache_and_drops_what_it_no_longer_needs() {
        let dir = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let layer = |name: &str| {
            let bytes = name.as_bytes().to_vec();
            let d = Desc {
                media_type: crate::oci::media::OCI_LAYER.into(),
                digest: sha256(&bytes),
                size: bytes.len() as u64,
            };
            fs::write(src.path().join(&d.digest[7..]), &bytes).unwrap();
            d
        };
        let copy = |d: &Desc, to: &Path| copy_file_atomic(&src.path().join(&d.digest[7..]), to);
        let (a, b) = (layer("a"), layer("b"));
        let manifest = |layers: &[Desc]| {
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": sha256(b"cfg"), "size": 3},
                "layers": layers}))
            .unwrap()
        };
        let m1 = manifest(&[a.clone(), b.clone()]);
        write(dir.path(), &m1, b"cfg", &[a.clone(), b.clone()], &copy).unwrap();
        assert_eq!(read_manifest(dir.path()).unwrap(), m1);
        let m2 = manifest(std::slice::from_ref(&b));
        write(dir.path(), &m2, b"cfg", std::slice::from_ref(&b), &copy).unwrap();
        assert_eq!(read_manifest(dir.path()).unwrap(), m2);
        assert!(
            !blob_path(dir.path(), &a.digest).unwrap().exists(),
            "a is unreferenced"
        );
        assert!(blob_path(dir.path(), &b.digest).unwrap().exists());
        assert!(!blob_path(dir.path(), &sha256(&m1)).unwrap().exists());
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left.len(),
            4,
            "oci-layout, index.json, blobs, the lock: {left:?}"
        );
    }

    fn one_layer(src: &Path, name: &str) -> Desc {
        let bytes = name.as_bytes().to_vec();
        let d = Desc {
            media_type: crate::oci::media::OCI_LAYER.into(),
            digest: sha256(&bytes),
            size: bytes.len() as u64,
        };
        fs::write(src.join(&d.digest[7..]), &bytes).unwrap();
        d
    }

    fn export(dir: &Path, src: &Path, l: &Desc) -> Result<()> {
        let copy = |d: &Desc, to: &Path| copy_file_atomic(&src.join(&d.digest[7..]), to);
        let m = serde_json::to_vec(&json!({"schemaVersion": 2, "layers": [l]})).unwrap();
        write(dir, &m, b"cfg", std::slice::from_ref(l), &copy)
    }

    #[test]
    fn an_export_never_writes_or_deletes_through_a_symlink() {
        let (dir, src, outside) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let l = one_layer(src.path(), "l");
        // A file the user keeps elsewhere, named like a blob, and another.
        let victim = outside.path().join("a".repeat(64));
        fs::write(&victim, b"keep me").unwrap();
        fs::write(outside.path().join("id_ed25519"), b"key").unwrap();
        fs::create_dir(dir.path().join("blobs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("blobs/sha256")).unwrap();
        let e = format!("{:#}", export(dir.path(), src.path(), &l).unwrap_err());
        assert!(e.contains("is a symlink") && e.contains("hint:"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert!(outside.path().join("id_ed25519").exists());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 2);
        // A lock file planted as a link is not followed either.
        let dir2 = tempfile::tempdir().unwrap();
        let target = outside.path().join("created-by-lock");
        std::os::unix::fs::symlink(&target, dir2.path().join(LOCK)).unwrap();
        assert!(export(dir2.path(), src.path(), &l).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn an_index_it_cannot_read_is_kept_with_its_blobs() {
        let (dir, src) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let l = one_layer(src.path(), "l");
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        let other = dir.path().join("blobs/sha256").join("b".repeat(64));
        fs::write(&other, b"someone else's blob").unwrap();
        fs::write(dir.path().join("index.json"), b"{not json").unwrap();
        let e = format!("{:#}", export(dir.path(), src.path(), &l).unwrap_err());
        assert!(e.contains("hint:"), "{e}");
        assert!(
            other.exists(),
            "a blob of an index it could not read was removed"
        );
        assert_eq!(
            fs::read(dir.path().join("index.json")).unwrap(),
            b"{not json"
        );
    }

    #[test]
    fn reading_refuses_links_and_special_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        let digest = sha256(b"x");
        let path = blob_path(dir.path(), &digest).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(read_small(dir.path(), &digest).is_err());
        fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = format!("{:#}", read_small(dir.path(), &digest).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("index.json")).unwrap();
        assert!(read_manifest(dir.path()).is_err());
    }
}
