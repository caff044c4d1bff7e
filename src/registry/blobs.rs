//! What the registry client needs from a local blob store (`BlobStore`), and
//! `OciLayout`, a plain OCI image layout directory implementing it, so pull
//! and push work end to end before the real store is wired in.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::reference::is_valid_digest;

/// Content-addressed blobs, as pull and push need them.
pub trait BlobStore: Sync {
    /// Whether the blob is present (complete and verified when written).
    fn has_blob(&self, digest: &str) -> bool;
    /// Open the blob for reading.
    fn open_blob(&self, digest: &str) -> io::Result<File>;
    /// The blob's size in bytes.
    fn blob_size(&self, digest: &str) -> io::Result<u64>;
    /// Store a blob read from `r`; must verify digest (and size when given)
    /// and appear atomically, so a failed write leaves nothing behind.
    fn write_blob(
        &self,
        expected_digest: &str,
        expected_size: Option<u64>,
        r: &mut dyn Read,
    ) -> Result<()>;
}

/// Manifests and configs are read whole; refuse absurd sizes.
pub const MAX_SMALL_BLOB: u64 = 16 << 20;

/// Read a small blob (manifest, config) into memory.
pub fn read_small_blob(store: &dyn BlobStore, digest: &str) -> Result<Vec<u8>> {
    let size = store
        .blob_size(digest)
        .with_context(|| format!("reading size of blob {digest}"))?;
    if size > MAX_SMALL_BLOB {
        bail!("blob {digest} is {size} bytes, too large for a manifest or config");
    }
    let mut buf = Vec::with_capacity(size as usize);
    store
        .open_blob(digest)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .with_context(|| format!("reading blob {digest}"))?;
    Ok(buf)
}

/// Hashes and counts everything written through it.
pub(crate) struct HashingWriter<W> {
    pub inner: W,
    pub hasher: Sha256,
    pub written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`).
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl OciLayout {
    /// Open a layout, creating the directory skeleton when missing.
    pub fn create(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("blobs/sha256"))
            .with_context(|| format!("creating OCI layout at {}", root.display()))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            let empty = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []});
            write_atomic(&index, empty.to_string().as_bytes())?;
        }
        Ok(OciLayout {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob; the digest is validated first so it cannot name
    /// anything outside `blobs/`.
    pub fn blob_path(&self, digest: &str) -> io::Result<PathBuf> {
        if !is_valid_digest(digest) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid digest {digest:?}"),
            ));
        }
        let (alg, hex) = digest.split_once(':').unwrap_or(("", ""));
        Ok(self.root.join("blobs").join(alg).join(hex))
    }

    fn read_index(&self) -> Result<Value> {
        let path = self.root.join("index.json");
        let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Point `name` at a manifest descriptor in index.json (replacing any
    /// previous entry of that name).
    pub fn set_ref(&self, name: &str, media_type: &str, digest: &str, size: u64) -> Result<()> {
        let mut index = self.read_index()?;
        let list = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .context("index.json has no manifests array")?;
        list.retain(|m| m["annotations"][REF_NAME].as_str() != Some(name));
        list.push(json!({
            "mediaType": media_type, "digest": digest, "size": size,
            "annotations": { REF_NAME: name }
        }));
        let bytes = serde_json::to_vec_pretty(&index)?;
        write_atomic(&self.root.join("index.json"), &bytes)
    }

    /// The manifest digest `name` points at, if any.
    pub fn resolve_ref(&self, name: &str) -> Result<Option<String>> {
        let index = self.read_index()?;
        Ok(index["manifests"].as_array().and_then(|list| {
            list.iter()
                .find(|m| m["annotations"][REF_NAME].as_str() == Some(name))
                .and_then(|m| m["digest"].as_str().map(str::to_string))
        }))
    }
}

impl BlobStore for OciLayout {
    fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    fn open_blob(&self, digest: &str) -> io::Result<File> {
        File::open(self.blob_path(digest)?)
    }

    fn blob_size(&self, digest: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.blob_path(digest)?)?.len())
    }

    fn write_blob(
        &self,
        expected_digest: &str,
        expected_size: Option<u64>,
        r: &mut dyn Read,
    ) -> Result<()> {
        let path = self.blob_path(expected_digest)?;
        let dir = path.parent().context("blob path has a parent")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let mut w = HashingWriter {
            inner: tmp,
            hasher: Sha256::new(),
            written: 0,
        };
        io::copy(r, &mut w).with_context(|| format!("writing blob {expected_digest}"))?;
        let got = format!("sha256:{}", hex::encode(w.hasher.finalize()));
        if let Some(want) = expected_size {
            if w.written != want {
                bail!(
                    "blob {expected_digest}: got {} bytes, expected {want}",
                    w.written
                );
            }
        }
        if !expected_digest.starts_with("sha256:") {
            bail!("blob {expected_digest}: only sha256 digests can be verified");
        }
        if got != expected_digest {
            bail!("blob {expected_digest}: content digest is {got}");
        }
        w.inner
            .as_file()
            .sync_all()
            .with_context(|| format!("syncing blob {expected_digest}"))?;
        w.inner
            .persist(&path)
            .with_context(|| format!("storing blob at {}", path.display()))?;
        Ok(())
    }
}

/// Write a file by temp file + fsync + rename in the same directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::reference::sha256_digest;

    #[test]
    fn write_blob_verifies_and_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        let data = b"hello blob";
        let d = sha256_digest(data);
        let wrong = sha256_digest(b"other");
        let err = layout
            .write_blob(&wrong, None, &mut &data[..])
            .unwrap_err()
            .to_string();
        assert!(err.contains("content digest"), "{err}");
        assert!(!layout.has_blob(&wrong));
        let err = layout.write_blob(&d, Some(3), &mut &data[..]).unwrap_err();
        assert!(err.to_string().contains("expected 3"), "{err}");
        layout.write_blob(&d, Some(10), &mut &data[..]).unwrap();
        assert!(layout.has_blob(&d));
        assert_eq!(read_small_blob(&layout, &d).unwrap(), data);
        // Nothing but the blob itself is left in the directory.
        let n = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn digests_cannot_escape_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        assert!(layout.blob_path("sha256:../../etc/passwd").is_err());
        assert!(!layout.has_blob("sha256/../../oci-layout"));
    }

    #[test]
    fn refs_round_trip_through_index_json() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        let d = sha256_digest(b"m");
        layout
            .set_ref(
                "app:v1",
                "application/vnd.oci.image.manifest.v1+json",
                &d,
                1,
            )
            .unwrap();
        layout
            .set_ref(
                "app:v1",
                "application/vnd.oci.image.manifest.v1+json",
                &d,
                1,
            )
            .unwrap();
        assert_eq!(layout.resolve_ref("app:v1").unwrap(), Some(d));
        assert_eq!(layout.resolve_ref("app:v2").unwrap(), None);
        let index: Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    }
}
