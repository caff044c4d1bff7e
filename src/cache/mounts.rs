//! Cache-mount contents that travel with an exported cache
//! (`--cache-to ...,cache-mounts=true`): the files of a
//! `RUN --mount=type=cache` dir packed into one deterministic layer blob,
//! listed in the cache config's `"mounts"` array as a [`PackedMount`], and
//! unpacked into a new, empty mount dir before the first RUN that mounts
//! that id in a store that has none (see `engine::cachemounts`).
//!
//! A saved mount is keyed by its id and the platform of the stage that used
//! it (`os/arch[/variant]`): a package cache of one architecture is useless
//! to another. In the store, mount dirs are keyed by id alone (as in
//! BuildKit), so the platform only picks which saved layer fills a new dir.
//!
//! Everything in an imported entry is untrusted: [`PackedMount::validate`]
//! checks its fields, [`restore`] reads at most the layer's `size` bytes,
//! checks the blob's digest and size, the tar's diff_id and its expanded
//! size, and unpacks with `layer::unpack_layer`, which keeps every entry
//! inside the dir (no `..`, no absolute names, no symlink walks).

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layer::{self, DirOptions, LayerCheckError, UnpackOptions, WriteOptions};
use crate::oci::Compression;
use crate::store::Store;

/// Fills new cache-mount dirs with contents saved elsewhere (the remote
/// cache's `"mounts"` entries), and learns which mounts a build used so
/// they can be saved again. The engine calls it (`engine::cachemounts`);
/// [`MountSet`] implements it.
pub trait MountRestorer: Send + Sync + std::fmt::Debug {
    /// Fill `dir` (new, empty, not yet seen by any RUN, already given the
    /// mount's owner and mode) with the saved contents of cache mount `id`
    /// of a stage built for `platform` (`os/arch[/variant]`). `Ok(false)`:
    /// nothing saved for that mount. On an error the dir is emptied again
    /// and the build goes on with an empty mount, warning once.
    fn restore(&self, store: &Store, id: &str, platform: &str, dir: &Path) -> anyhow::Result<bool>;

    /// A RUN that is about to run mounts `id` on `platform` (called for
    /// every such RUN, restored or not).
    fn used(&self, _id: &str, _platform: &str) {}
}

/// `--cache-to` key that turns the export of cache mounts on.
pub const OPTION_ENABLE: &str = "cache-mounts";
/// `--cache-to` key for the largest mount exported (files' bytes).
pub const OPTION_MAX_SIZE: &str = "cache-mounts-max-size";
/// Default of `cache-mounts-max-size`: CI caches are a few GiB in all
/// (GitHub's is 10 GB per repository), and a mount past this is usually a
/// build's output tree, not a download cache.
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;

/// Longest mount id accepted from a cache (ids are usually paths).
const MAX_ID_LEN: usize = 4096;

/// One saved cache mount: an entry of the cache config's `"mounts"` list
/// (`docs/cache.md`). `layer` has the shape of a record's layer, and the
/// blob is listed in the cache manifest's `layers` like theirs.
///
/// ```json
/// {"id": "/root/.cache/pip", "platform": "linux/amd64",
///  "layer": {"digest": "sha256:…", "diff_id": "sha256:…", "size": 1234,
///            "media_type": "application/vnd.oci.image.layer.v1.tar+gzip"},
///  "uncompressed_size": 10240}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedMount {
    /// The mount's id (`id=`, else its target), as the Dockerfile says it.
    pub id: String,
    /// The stage's platform, `os/arch[/variant]`.
    pub platform: String,
    pub layer: MountLayer,
    /// Length of the uncompressed tar (the most a restore may expand to).
    pub uncompressed_size: u64,
}

/// The layer blob of a saved mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountLayer {
    /// The blob's digest and size (what is stored and pushed).
    pub digest: String,
    /// The sha256 of the uncompressed tar.
    pub diff_id: String,
    pub size: u64,
    /// One of the OCI layer media types (tar, tar+gzip, tar+zstd).
    pub media_type: String,
}

/// What [`pack`] did with one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packed {
    /// Written to the store as a layer blob.
    Layer(PackedMount),
    /// The store has no such mount, or it holds nothing: nothing to save.
    Empty,
    /// Its files hold more bytes than the limit: skipped.
    TooLarge { id: String, size: u64, limit: u64 },
}

impl Packed {
    /// A line for the build's output: the size saved, or why nothing was.
    pub fn note(&self) -> String {
        match self {
            Packed::Layer(p) => format!(
                "cache mount {} ({}): saved, {} bytes as tar, {} bytes compressed, layer {}",
                p.id, p.platform, p.uncompressed_size, p.layer.size, p.layer.digest
            ),
            Packed::Empty => "cache mount is empty: nothing saved".to_string(),
            Packed::TooLarge { id, size, limit } => format!(
                "cache mount {id} not saved: it holds {size} bytes, more than \
                 {OPTION_MAX_SIZE}={limit}\nhint: raise {OPTION_MAX_SIZE} in --cache-to \
                 to save it"
            ),
        }
    }
}

/// Why a mount could not be packed or restored.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cache mount {id}: {action}")]
    Io {
        id: String,
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the cache's entry for mount {id:?} is invalid: {reason}")]
    BadEntry { id: String, reason: String },
    #[error(
        "cache mount {id}: the layer's {what} is {got}, but the cache says {want}: \
         the cache is broken or was tampered with"
    )]
    Mismatch {
        id: String,
        what: &'static str,
        got: String,
        want: String,
    },
    #[error("invalid {OPTION_MAX_SIZE} {value:?}: {reason}")]
    BadLimit { value: String, reason: String },
}

impl MountError {
    fn io(id: &str, action: &'static str, source: impl Into<anyhow::Error>) -> Self {
        MountError::Io {
            id: id.to_string(),
            action,
            source: source.into().into(),
        }
    }
}

/// Parse a `cache-mounts-max-size` value (`512MiB`, `2G`, bytes).
pub fn parse_max_size(value: &str) -> Result<u64, MountError> {
    crate::registry::settings::parse_size(value).map_err(|reason| MountError::BadLimit {
        value: value.to_string(),
        reason,
    })
}

impl PackedMount {
    /// Check an entry read from a cache (untrusted) before using it.
    pub fn validate(&self) -> Result<(), MountError> {
        let bad = |reason: String| MountError::BadEntry {
            id: self.id.chars().take(200).collect(),
            reason,
        };
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN || self.id.contains('\0') {
            return Err(bad(format!(
                "the id must be 1 to {MAX_ID_LEN} bytes without NUL"
            )));
        }
        let parts: Vec<&str> = self.platform.split('/').collect();
        let word_ok = |w: &&str| {
            !w.is_empty()
                && w.len() <= 32
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(word_ok) {
            return Err(bad(format!(
                "platform {:?} is not os/arch[/variant]",
                self.platform
            )));
        }
        let l = &self.layer;
        for (what, d) in [("digest", &l.digest), ("diff_id", &l.diff_id)] {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !ok {
                return Err(bad(format!("{what} {d:?} is not a sha256 digest")));
            }
        }
        let known = [
            crate::oci::media::OCI_LAYER,
            crate::oci::media::OCI_LAYER_GZIP,
            crate::oci::media::OCI_LAYER_ZSTD,
        ];
        if !known.contains(&l.media_type.as_str()) {
            return Err(bad(format!(
                "media type {:?} is not an OCI layer type",
                l.media_type
            )));
        }
        Ok(())
    }
}

/// How [`pack`] writes a mount.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// Mounts whose files hold more bytes than this are skipped.
    pub max_size: u64,
    /// The build's layer compression.
    pub compression: Compression,
}

/// Pack the contents of this store's cache mount `id` (used by a stage on
/// `platform`) into a layer blob in the store. Holds the mount's lock while
/// reading, so a `sharing=locked` RUN of another build cannot change it
/// meanwhile. The same files give the same blob (sorted entries, the tar
/// writer's fixed format); unchanged chunks are reused from the store's
/// chunk cache, so re-saving a mostly unchanged mount compresses little.
pub fn pack(
    store: &Store,
    id: &str,
    platform: &str,
    opts: &PackOptions,
) -> Result<Packed, MountError> {
    let dir = store
        .cache_mount_dir(id)
        .map_err(|e| MountError::io(id, "finding its dir", e))?;
    if !dir.is_dir() {
        return Ok(Packed::Empty);
    }
    let _lock = crate::store::lock_exclusive(&dir.with_extension("lock"))
        .map_err(|e| MountError::io(id, "locking it", e))?;
    let (files, bytes) = measure(&dir).map_err(|e| MountError::io(id, "measuring it", e))?;
    if files == 0 {
        return Ok(Packed::Empty);
    }
    if bytes > opts.max_size {
        return Ok(Packed::TooLarge {
            id: id.to_string(),
            size: bytes,
            limit: opts.max_size,
        });
    }
    let entries = layer::entries_from_dir(&dir, &DirOptions::default())
        .map_err(|e| MountError::io(id, "reading its files", e))?;
    let tmp = store
        .temp_dir("mountpack-")
        .map_err(|e| MountError::io(id, "creating a temp dir", e))?;
    let chunk_cache = super::store_chunk_cache(store, tmp.path())
        .map_err(|e| MountError::io(id, "opening the chunk cache", e))?;
    let write = WriteOptions {
        compression: opts.compression,
        source_date_epoch: None,
        threads: 0,
        chunk_cache: Some(chunk_cache),
        known_files: None,
    };
    let mut blob = store
        .blob_writer()
        .map_err(|e| MountError::io(id, "starting its blob", e))?;
    let info = layer::write_layer(entries, &mut blob, &write)
        .map_err(|e| MountError::io(id, "writing its layer", e))?;
    blob.commit()
        .map_err(|e| MountError::io(id, "storing its blob", e))?;
    Ok(Packed::Layer(PackedMount {
        id: id.to_string(),
        platform: platform.to_string(),
        layer: MountLayer {
            digest: info.digest,
            diff_id: info.diff_id,
            size: info.size,
            media_type: info.media_type.to_string(),
        },
        uncompressed_size: info.uncompressed_size,
    }))
}

/// Entries below `dir` and their regular files' bytes (lstat only; a
/// hard-linked file counts once, as the tar holds it once).
fn measure(dir: &Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut linked = std::collections::HashSet::new();
    for item in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let item = item?;
        files += 1;
        let meta = item.metadata()?;
        let first = meta.nlink() < 2 || linked.insert((meta.dev(), meta.ino()));
        if meta.is_file() && first {
            bytes = bytes.saturating_add(meta.len());
        }
    }
    Ok((files, bytes))
}

/// Unpack a saved mount's layer (read from `reader`, e.g. a registry blob
/// stream) into `dir`, which must be new and empty. Reads at most
/// `entry.layer.size` bytes; fails, leaving `dir` for the caller to empty, when
/// the digest, size, diff_id or expanded size differ from the entry's.
pub fn restore(entry: &PackedMount, reader: impl Read, dir: &Path) -> Result<(), MountError> {
    entry.validate()?;
    let id = &entry.id;
    let mut blob = Counted {
        inner: reader.take(entry.layer.size.saturating_add(1)),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let opts = UnpackOptions {
        expected_diff_id: Some(entry.layer.diff_id.clone()),
        max_expanded: Some(entry.uncompressed_size),
        ..Default::default()
    };
    if let Err(e) = layer::unpack_layer(&mut blob, dir, &opts) {
        if let Some(LayerCheckError::DiffIdMismatch { got, want }) = e.downcast_ref() {
            return Err(MountError::Mismatch {
                id: id.clone(),
                what: "diff_id",
                got: got.clone(),
                want: want.clone(),
            });
        }
        return Err(MountError::io(id, "unpacking its layer", e));
    }
    // A decoder may stop before the blob's end (trailing bytes): the digest
    // covers them too.
    io::copy(&mut blob, &mut io::sink()).map_err(|e| MountError::io(id, "reading its layer", e))?;
    let got = format!("sha256:{}", hex::encode(blob.hasher.finalize()));
    if blob.bytes != entry.layer.size {
        return Err(MountError::Mismatch {
            id: id.clone(),
            what: "size",
            got: blob.bytes.to_string(),
            want: entry.layer.size.to_string(),
        });
    }
    if got != entry.layer.digest {
        return Err(MountError::Mismatch {
            id: id.clone(),
            what: "digest",
            got,
            want: entry.layer.digest.clone(),
        });
    }
    Ok(())
}

/// The `"mounts"` entries of one export to `dest`: each mount a RUN of the
/// build used, packed now (a mount over the limit, or one that cannot be
/// read, gets a note instead), and each imported entry no RUN used, kept
/// as it was (its blob fetched into the store unless `dest` is on the
/// registry that holds it, where the push mounts it). `notes` get a line
/// per mount: its size, or why it was left out.
pub fn for_export(
    store: &Store,
    caches: &super::import::RemoteCaches,
    dest: &super::spec::Location,
    opts: &PackOptions,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<PackedMount>> {
    let set = caches.mounts();
    let mut out = Vec::new();
    for (id, platform) in set.used() {
        match pack(store, &id, &platform, opts) {
            Ok(Packed::Layer(p)) => {
                notes.push(Packed::Layer(p.clone()).note());
                out.push(p);
            }
            Ok(Packed::Empty) => {}
            Ok(too_large) => notes.push(too_large.note()),
            Err(e) => notes.push(format!("cache mount {id} not saved: {e:#}")),
        }
    }
    let dest_registry = match dest {
        super::spec::Location::Registry(r) => Some(super::remote::parse_reference(r)?.registry),
        _ => None,
    };
    for e in set.unused() {
        let there = dest_registry.as_ref().is_some_and(|d| {
            caches
                .registry_of(&e.layer.digest)
                .is_some_and(|(reg, _)| &reg == d)
        });
        if !there {
            if let Err(err) = set.ensure_local(store, &e) {
                notes.push(format!("cache mount {} not kept: {err:#}", e.id));
                continue;
            }
        }
        notes.push(format!(
            "cache mount {} ({}): kept as imported ({} bytes)",
            e.id, e.platform, e.layer.size
        ));
        out.push(e);
    }
    Ok(out)
}

/// Hashes and counts what is read through it.
struct Counted<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Copies a saved mount's blob into the store (from a registry, a local
/// cache dir, …), checking its digest.
pub type BlobFetcher = dyn Fn(&Store, &PackedMount) -> anyhow::Result<()> + Send + Sync;

/// The mounts an imported cache saved, as the engine's [`MountRestorer`]:
/// a blob is fetched only when a RUN mounts an id this store lacks (lazy,
/// as the rest of the cache), and the ids RUNs used are recorded for the
/// next export.
pub struct MountSet {
    entries: Vec<PackedMount>,
    fetch: Box<BlobFetcher>,
    used: Mutex<BTreeSet<(String, String)>>,
    restored: Mutex<Vec<PackedMount>>,
}

impl Default for MountSet {
    fn default() -> Self {
        MountSet::new(Vec::new(), Box::new(|_, _| Ok(()))).0
    }
}

impl std::fmt::Debug for MountSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountSet")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl MountSet {
    /// The valid entries of imported caches (in `--cache-from` order: the
    /// first entry for an id and platform wins); invalid ones are returned
    /// as errors for the caller to warn about, and left out.
    pub fn new(entries: Vec<PackedMount>, fetch: Box<BlobFetcher>) -> (MountSet, Vec<MountError>) {
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        let mut keep = Vec::new();
        for e in entries {
            match e.validate() {
                Err(err) => errors.push(err),
                Ok(()) if seen.insert((e.id.clone(), e.platform.clone())) => keep.push(e),
                Ok(()) => {}
            }
        }
        let set = MountSet {
            entries: keep,
            fetch,
            used: Mutex::default(),
            restored: Mutex::default(),
        };
        (set, errors)
    }

    /// The valid imported entries.
    pub fn entries(&self) -> &[PackedMount] {
        &self.entries
    }

    /// `(id, platform)` of every mount a RUN of this build used: the ones
    /// to [`pack`] for the next export.
    pub fn used(&self) -> Vec<(String, String)> {
        lock(&self.used).iter().cloned().collect()
    }

    /// The entries restored into this store during the build.
    pub fn restored(&self) -> Vec<PackedMount> {
        lock(&self.restored).clone()
    }

    /// Make sure the store holds an entry's blob (fetching it if not).
    pub fn ensure_local(&self, store: &Store, entry: &PackedMount) -> anyhow::Result<()> {
        if !store.has_blob(&entry.layer.digest) {
            (self.fetch)(store, entry)?;
        }
        Ok(())
    }

    /// Imported entries no RUN of this build used: an export keeps them as
    /// they are (their files did not change here).
    pub fn unused(&self) -> Vec<PackedMount> {
        let used = lock(&self.used);
        self.entries
            .iter()
            .filter(|e| !used.contains(&(e.id.clone(), e.platform.clone())))
            .cloned()
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MountRestorer for MountSet {
    fn restore(&self, store: &Store, id: &str, platform: &str, dir: &Path) -> anyhow::Result<bool> {
        let Some(entry) = self
            .entries
            .iter()
            .find(|e| e.id == id && e.platform == platform)
        else {
            return Ok(false);
        };
        self.ensure_local(store, entry)?;
        restore(entry, store.open_blob(&entry.layer.digest)?, dir)?;
        lock(&self.restored).push(entry.clone());
        Ok(true)
    }

    fn used(&self, id: &str, platform: &str) {
        lock(&self.used).insert((id.to_string(), platform.to_string()));
    }
}

#[cfg(test)]
#[path = "mounts_tests.rs"]
pub(crate) mod tests;
