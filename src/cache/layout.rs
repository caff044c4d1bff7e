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

/// Read a small blob whole, checking its digest.
pub fn read_small(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let path = blob_path(dir, digest)?;
    let len = fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_SMALL {
        bail!("{} is {len} bytes (limit {MAX_SMALL})", path.display());
    }
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if sha256(&bytes) != digest {
        bail!("{} does not match its digest", path.display());
    }
    Ok(bytes)
}

fn read_index(dir: &Path) -> Result<Value> {
    let path = dir.join("index.json");
    let len = fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_SMALL {
        bail!("{} is {len} bytes (limit {MAX_SMALL})", path.display());
    }
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
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
    fs::create_dir_all(dir.join("blobs/sha256"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let _lock = crate::store::lock_exclusive(&dir.join(LOCK))?;
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
    // their blobs.
    let mut entries: Vec<Value> = match read_index(dir) {
        Ok(index) => index["manifests"].as_array().cloned().unwrap_or_default(),
        Err(_) => Vec::new(),
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
/// configs and layers, one level of nested indexes). A manifest that
/// cannot be read keeps everything: nothing is removed on doubt.
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
        if depth < 2 {
            for child in m["manifests"].as_array().into_iter().flatten() {
                if let Some(d) = child["digest"].as_str() {
                    todo.push((d.to_string(), depth + 1));
                }
            }
        }
    }
    let blobs = dir.join("blobs/sha256");
    for entry in fs::read_dir(&blobs).with_context(|| format!("listing {}", blobs.display()))? {
        let entry = entry.with_context(|| format!("listing {}", blobs.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&format!("sha256:{name}")) {
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
}
