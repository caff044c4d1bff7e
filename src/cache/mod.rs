//! A cache that travels: the build cache exported after a build
//! (`--cache-to`) and imported by another build, in another store
//! (`--cache-from`), through a registry, an OCI layout directory or the
//! pushed image itself. `docs/cache.md` describes the format.
//!
//! `spec` parses the flags; `format` is the artifact (an OCI image
//! manifest whose config blob is the key → layer map) and its validation;
//! `layout` reads and writes it in a directory; `remote` talks to
//! registries; `import` answers the engine's lookups and fetches a remote
//! layer when its files are needed; `export` writes the records a build
//! used; `mounts` saves and restores the contents of `RUN
//! --mount=type=cache` dirs (`cache-mounts=true`).
//!
//! The engine calls in at two places: `RemoteCaches::lookup` after the
//! local store misses, and `export` after the build. This module knows
//! the store, images and registries, never Dockerfiles.

pub mod export;
pub mod format;
pub mod import;
pub mod layout;
pub mod mounts;
pub mod remote;
pub mod spec;

pub use export::{export, inline_map, Exported, UsedRecords};
pub use format::{CacheMap, MapRecord};
pub use import::{RemoteCaches, RemoteHit, SeedSource};
pub use spec::{parse_cache_from, parse_cache_to, CacheFrom, CacheTo, Location, Mode};

/// Errors of the cache module: each names the flag value, file or
/// reference at fault.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A `--cache-to`/`--cache-from` value that cannot be used.
    #[error("invalid {flag} {spec:?}: {problem}")]
    Spec {
        flag: &'static str,
        spec: String,
        problem: String,
    },
    /// A cache map or manifest that breaks the format's rules.
    #[error("cache {source_name}: {problem}")]
    Invalid {
        source_name: String,
        problem: String,
    },
    /// A layer whose bytes do not match what the cache map claims.
    #[error(
        "cache {source_name}: layer {digest} does not match the cache record (expected diff_id \
         {expected}, the layer's content has {actual}); the record is refused and its step runs"
    )]
    Tampered {
        source_name: String,
        digest: String,
        expected: String,
        actual: String,
    },
}

impl CacheError {
    fn spec(flag: &'static str, spec: &str, problem: String) -> CacheError {
        CacheError::Spec {
            flag,
            spec: spec.to_string(),
            problem,
        }
    }

    pub(crate) fn invalid(source: &str, problem: impl Into<String>) -> CacheError {
        CacheError::Invalid {
            source_name: source.to_string(),
            problem: problem.into(),
        }
    }
}

/// The store's layer chunk cache: records in its private dir, pointing
/// into its blobs, written through `tmp` (a locked store temp dir the
/// caller keeps while it writes). The one place it is made, for layer
/// writes, cache mounts and chunk seeding alike.
pub(crate) fn store_chunk_cache(
    store: &crate::store::Store,
    tmp: &std::path::Path,
) -> anyhow::Result<crate::layer::ChunkCache> {
    let blobs = store.clone();
    Ok(crate::layer::ChunkCache::new(
        store.chunk_cache_dir()?,
        tmp.to_path_buf(),
        std::sync::Arc::new(move |d: &str| blobs.blob_path(d).ok()),
    ))
}

/// The store's layer chunk cache, for reading chunk indexes (None when its
/// dir cannot be made: the export then goes without them).
pub(crate) fn chunk_cache_reader(store: &crate::store::Store) -> Option<crate::layer::ChunkCache> {
    // Reading never writes a temp: the records dir stands in.
    let dir = store.chunk_cache_dir().ok()?;
    store_chunk_cache(store, &dir).ok()
}
