//! A small record of "blob D is known to exist in repository R of registry
//! H", kept in a JSON file, so push can mount blobs across repositories
//! instead of uploading them again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

/// Digest → set of `registry/repository` names holding it.
#[derive(Debug, Default)]
pub struct BlobLocations {
    path: Option<PathBuf>,
    map: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

/// Entries kept per blob; older names are dropped first.
const MAX_PER_BLOB: usize = 8;

impl BlobLocations {
    /// An in-memory record (nothing is saved).
    pub fn new() -> Self {
        Self::default()
    }

    /// Load the record from `path` (empty when the file is missing).
    pub fn load(path: &Path) -> Result<Self> {
        let map = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing blob locations {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(BlobLocations {
            path: Some(path.to_path_buf()),
            map: Mutex::new(map),
        })
    }

    /// Write the record back to the file it was loaded from.
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = {
            let map = self
                .map
                .lock()
                .map_err(|_| anyhow::anyhow!("blob locations poisoned"))?;
            serde_json::to_vec(&*map)?
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        super::blobs::write_atomic(path, &bytes)
    }

    /// Note that `digest` exists in `registry/repository`.
    pub fn record(&self, digest: &str, registry: &str, repository: &str) {
        if let Ok(mut map) = self.map.lock() {
            let set = map.entry(digest.to_string()).or_default();
            set.insert(format!("{registry}/{repository}"));
            while set.len() > MAX_PER_BLOB {
                let first = set.iter().next().cloned();
                if let Some(f) = first {
                    set.remove(&f);
                }
            }
        }
    }

    /// Repositories of `registry` other than `except` known to hold `digest`.
    pub fn candidates(&self, digest: &str, registry: &str, except: &str) -> Vec<String> {
        let prefix = format!("{registry}/");
        let Ok(map) = self.map.lock() else {
            return Vec::new();
        };
        map.get(digest)
            .map(|set| {
                set.iter()
                    .filter_map(|n| n.strip_prefix(&prefix))
                    .filter(|repo| *repo != except)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_persist_and_filter_by_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/locations.json");
        let loc = BlobLocations::load(&path).unwrap();
        loc.record("sha256:aa", "r.io", "one");
        loc.record("sha256:aa", "r.io", "two");
        loc.record("sha256:aa", "other.io", "three");
        loc.save().unwrap();
        let again = BlobLocations::load(&path).unwrap();
        assert_eq!(again.candidates("sha256:aa", "r.io", "two"), vec!["one"]);
        assert_eq!(
            again.candidates("sha256:aa", "other.io", "x"),
            vec!["three"]
        );
        assert!(again.candidates("sha256:bb", "r.io", "x").is_empty());
    }
}
