//! The local store: an OCI image layout (blobs, `index.json` tags) plus
//! rbuild's own bookkeeping (unpacked layers, cache index) beside it.
//!
//! ```text
//! ROOT/oci-layout            {"imageLayoutVersion":"1.0.0"}
//! ROOT/index.json            one manifest descriptor per tag (ref.name = "app:v1")
//! ROOT/blobs/sha256/<hex>    immutable content
//! ROOT/rbuild/lock           flock around every index.json read-modify-write
//! ROOT/rbuild/gc.lock        builds hold it shared, prune exclusive
//! ROOT/rbuild/layers/<hex>/  unpacked layers, by diff_id
//! ROOT/rbuild/cache/<h>.json build cache records, one per key
//! ROOT/rbuild/statcache/     owned by the context module
//! ROOT/rbuild/tmp/           temps; each locked while its writer lives
//! ```
//! Because the root is a plain OCI layout, `skopeo inspect oci:ROOT:app:v1`
//! and `umoci unpack --image ROOT:app:v1` read it with no export step.

mod blob;
mod cache;
mod fsutil;
mod gc;
mod layers;
mod lock;
mod tags;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub use blob::{digest_hex, sha256_digest, BlobError, BlobInfo, BlobWriter};
pub use cache::{diff_inputs, CacheRecord, CachedLayer, CACHE_SCHEMA};
pub use gc::PruneReport;
pub use lock::{lock_exclusive, LockGuard};
pub use tags::{check_reference, lookup_name, normalize_tag, TagError, REF_NAME};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const EMPTY_INDEX: &[u8] = br#"{"schemaVersion":2,"manifests":[]}"#;

/// A handle on a store directory. Cheap; many handles (and processes) may
/// use one directory at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open `root`, creating the layout if needed, and clean temps left by
    /// writers that died.
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for dir in [
            store.blobs_dir(),
            store.private("layers"),
            store.private("cache"),
            store.private("statcache"),
            store.tmp_dir(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        store.init_layout_files()?;
        fsutil::clean_temps(&store.tmp_dir())?;
        Ok(store)
    }

    fn init_layout_files(&self) -> anyhow::Result<()> {
        let _lock = self.lock_index()?;
        let layout = self.root.join("oci-layout");
        if !layout.exists() {
            fsutil::atomic_write(&self.tmp_dir(), &layout, OCI_LAYOUT)?;
        }
        let index = self.index_path();
        if !index.exists() {
            fsutil::atomic_write(&self.tmp_dir(), &index, EMPTY_INDEX)?;
        }
        Ok(())
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/rbuild/<name>`: rbuild's own bookkeeping (e.g. `statcache`).
    pub fn private(&self, name: &str) -> PathBuf {
        self.root.join("rbuild").join(name)
    }

    /// Where temps go: same filesystem as the blobs, cleaned on open/prune.
    pub fn tmp_dir(&self) -> PathBuf {
        self.private("tmp")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn lock_index(&self) -> anyhow::Result<LockGuard> {
        lock::lock_exclusive(&self.private("lock"))
    }

    /// Hold this for a whole build: prune refuses to run meanwhile, so blobs
    /// written but not yet tagged or cached are not collected.
    pub fn lease(&self) -> anyhow::Result<LockGuard> {
        lock::lock_shared(&self.private("gc.lock"))
    }

    /// Write `bytes` to `path` atomically (temp in the store, fsync, rename).
    /// For bookkeeping files of other modules under [`Store::private`].
    pub fn atomic_write(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        fsutil::atomic_write(&self.tmp_dir(), path, bytes)
    }

    /// Path of a blob (it may not exist). Fails on a malformed digest.
    pub fn blob_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        Ok(self.blobs_dir().join(digest_hex(digest)?))
    }

    /// Whether the store has this blob.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Start writing a blob.
    pub fn blob_writer(&self) -> anyhow::Result<BlobWriter> {
        BlobWriter::new(&self.tmp_dir(), &self.blobs_dir())
    }

    /// Write a small blob from memory.
    pub fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<BlobInfo> {
        use std::io::Write;
        // Blobs are immutable: one already stored needs no write (nor fsync).
        let digest = sha256_digest(bytes);
        if self.has_blob(&digest) {
            return Ok(BlobInfo {
                digest,
                size: bytes.len() as u64,
            });
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes).context("writing a blob")?;
        w.commit()
    }

    /// Read a whole blob (manifests, configs: small ones).
    pub fn read_blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).with_context(|| format!("reading blob {digest} ({})", path.display()))
    }

    /// Open a blob for streaming.
    pub fn open_blob(&self, digest: &str) -> anyhow::Result<fs::File> {
        let path = self.blob_path(digest)?;
        fs::File::open(&path).with_context(|| format!("opening blob {digest} ({})", path.display()))
    }
}
