//! The local store: an OCI image layout (blobs, `index.json` tags) plus
//! rbuild's own bookkeeping (unpacked layers, cache index) beside it.
//!
//! ```text
//! ROOT/oci-layout            {"imageLayoutVersion":"1.0.0"}
//! ROOT/index.json            one manifest descriptor per tag (ref.name = "app:v1")
//! ROOT/blobs/sha256/<hex>    immutable content
//! ROOT/rbuild/               0700: nothing below is reachable by other users
//! ROOT/rbuild/lock           flock around every index.json read-modify-write
//! ROOT/rbuild/gc.lock        builds hold it shared, prune exclusive
//! ROOT/rbuild/layers/<hex>/  unpacked layers, by diff_id
//! ROOT/rbuild/layers.boot    the kernel boot they were made in (layers.rs)
//! ROOT/rbuild/cache/<h>.json build cache records, one per key
//! ROOT/rbuild/statcache/     the context module's stat caches
//! ROOT/rbuild/cachemounts/   RUN --mount=type=cache dirs
//! ROOT/rbuild/registry/      where blobs were seen (cross-repo mounts)
//! ROOT/rbuild/chunks/<key>   layer chunk cache records (point into blobs)
//! ROOT/rbuild/builds/<h>.json where each layer of a built image came from
//!                            (by manifest digest; `rbuild history`)
//! ROOT/rbuild/tmp/           temps; each locked while its owner lives
//! ```
//! Because the root is a plain OCI layout, `skopeo inspect oci:ROOT:app:v1`
//! and `umoci unpack --image ROOT:app:v1` read it with no export step.
//!
//! Other modules never build paths in `rbuild/`: they get locked temps
//! ([`Store::temp_dir`], [`Store::temp_file`]) and a few named places
//! ([`Store::cache_mount_dir`], [`Store::statcache_file`],
//! [`Store::blob_locations_file`], [`Store::chunk_cache_dir`]). Why `rbuild/` is private: `secure.rs`.

mod blob;
mod builds;
mod cache;
mod chunks;
mod error;
mod fsutil;
mod gc;
mod layers;
mod lock;
mod secure;
mod tags;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::oci::digest::{sha256_digest, sha256_hex};
use crate::oci::IMAGE_LAYOUT;

pub use blob::{digest_hex, BlobError, BlobInfo, BlobWriter};
pub use builds::{BuildRecord, BuildRecordRead, LayerOrigin, LayerStory, BUILD_RECORD_SCHEMA};
pub use cache::{diff_inputs, CacheLookup, CacheRecord, CACHE_SCHEMA};
pub use error::StoreError;
pub use fsutil::{LockedTempDir, TempFile};
pub use gc::PruneReport;
pub use layers::LayerSnapshot;
pub use lock::{lock_exclusive, LockGuard};
pub use tags::{check_reference, lookup_name, normalize_tag, TagError};

const EMPTY_INDEX: &[u8] = br#"{"schemaVersion":2,"manifests":[]}"#;

/// A handle on a store directory. Cheap; many handles (and processes) may
/// use one directory at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    notices: Vec<String>,
}

impl Store {
    /// Open `root`, creating the layout if needed, and clean temps left by
    /// processes that died. Refuses a root or `rbuild/` that other users
    /// control; tightens an `rbuild/` of ours that they could reach (see
    /// [`Store::notices`]).
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        let root = secure::checked_root(root)?;
        let mut notices = Vec::new();
        secure::private_root(&root.join("rbuild"), &mut notices)?;
        let mut store = Store { root, notices };
        let blobs = store.blobs_dir();
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        for name in ["layers", "cache", "statcache", "tmp"] {
            secure::make_private_dir(&store.private(name))?;
        }
        store.init_layout_files()?;
        store.retire_snapshots_of_other_boots()?;
        let mut left = Vec::new();
        fsutil::clean_temps(&store.tmp_dir(), &mut left)?;
        store.notices.extend(left);
        Ok(store)
    }

    fn init_layout_files(&self) -> anyhow::Result<()> {
        let _lock = self.lock_index()?;
        let layout = self.root.join("oci-layout");
        if !layout.exists() {
            self.atomic_write(&layout, IMAGE_LAYOUT)?;
        }
        let index = self.index_path();
        if !index.exists() {
            self.atomic_write(&index, EMPTY_INDEX)?;
        }
        Ok(())
    }

    /// The store directory (symlinks resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What opening the store found worth a warning (a private dir it had
    /// to tighten, temps it could not remove), for the caller to show.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// `ROOT/rbuild/<name>`: rbuild's own bookkeeping.
    fn private(&self, name: &str) -> PathBuf {
        self.root.join("rbuild").join(name)
    }

    /// Where temps go: same filesystem as the blobs, cleaned on open/prune.
    fn tmp_dir(&self) -> PathBuf {
        self.private("tmp")
    }

    /// A new 0700 temp dir in the store, locked (so no other process's
    /// sweep removes it) and removed when the guard is dropped.
    pub fn temp_dir(&self, prefix: &str) -> anyhow::Result<LockedTempDir> {
        fsutil::temp_dir(&self.tmp_dir(), prefix)
    }

    /// A new temp file in the store, locked and removed like [`Store::temp_dir`].
    pub fn temp_file(&self, prefix: &str) -> anyhow::Result<TempFile> {
        fsutil::temp_file(&self.tmp_dir(), prefix)
    }

    /// The persistent dir of a RUN cache mount with this id (not created:
    /// the caller gives it the mount's owner and mode), in a private dir of
    /// the store. Beside it, `<dir>.lock` serializes `sharing=locked` users.
    pub fn cache_mount_dir(&self, id: &str) -> anyhow::Result<PathBuf> {
        let parent = self.private("cachemounts");
        secure::make_private_dir(&parent)?;
        Ok(parent.join(sha256_hex(id.as_bytes())))
    }

    /// The stat cache file of the build context at `context` (an absolute path).
    pub fn statcache_file(&self, context: &Path) -> PathBuf {
        let name = sha256_hex(context.as_os_str().as_encoded_bytes());
        self.private("statcache").join(format!("{name}.json"))
    }

    /// The registry module's record of where blobs were seen.
    pub fn blob_locations_file(&self) -> anyhow::Result<PathBuf> {
        let dir = self.private("registry");
        secure::make_private_dir(&dir)?;
        Ok(dir.join("blob-locations.json"))
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
    fn atomic_write(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
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

    /// Start writing a blob whose digest the caller computes over the same
    /// bytes (see `BlobWriter::new_unhashed`); commit it with `commit_verified`.
    pub fn blob_writer_unhashed(&self) -> anyhow::Result<BlobWriter> {
        BlobWriter::new_unhashed(&self.tmp_dir(), &self.blobs_dir())
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
