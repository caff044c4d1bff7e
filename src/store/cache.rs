//! The build cache index: one JSON file per cache key under `rbuild/cache/`,
//! named by the sha256 of the key (any key string is a safe file name), each
//! written atomically. A record keeps the key's inputs so the engine can say
//! why a step missed, by diffing against [`Store::cache_closest`].

use std::fs;
use std::path::PathBuf;

use super::{fsutil, Store};
use crate::oci::digest::sha256_hex;
use crate::oci::LayerRef;
use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Bump when the record's meaning changes; older records read as misses.
pub const CACHE_SCHEMA: u32 = 1;

/// The result of one build step, found again by its cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub schema: u32,
    pub key: String,
    /// The previous step's key (None for a stage's first step).
    pub parent: Option<String>,
    /// The Dockerfile's scope, stage and instruction position, e.g.
    /// `3f2a…/build/3` (the engine compares misses within one stage).
    pub step_id: String,
    /// The key's inputs: `{"parent", "instruction", "build_args", "files"}`.
    pub inputs: serde_json::Value,
    /// The layer, or None for a metadata-only step.
    pub layer: Option<LayerRef>,
    /// The config changes the step made, as JSON.
    pub config_changes: serde_json::Value,
    /// Other blobs the record keeps alive (e.g. a base image's manifest).
    #[serde(default)]
    pub blobs: Vec<String>,
    /// Unix seconds when written; the newest wins in `cache_closest`.
    pub created: u64,
    /// The nanoseconds within `created`: two builds in one second (a
    /// script, a test) left the newest to the order of the record files.
    #[serde(default)]
    pub created_nanos: u32,
}

impl CacheRecord {
    /// A record for `key` with no layer and no config changes yet.
    pub fn new(
        key: &str,
        parent: Option<&str>,
        step_id: &str,
        inputs: serde_json::Value,
    ) -> CacheRecord {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (created, created_nanos) = (now.as_secs(), now.subsec_nanos());
        CacheRecord {
            schema: CACHE_SCHEMA,
            key: key.to_string(),
            parent: parent.map(str::to_string),
            step_id: step_id.to_string(),
            inputs,
            layer: None,
            config_changes: serde_json::Value::Null,
            blobs: Vec::new(),
            created,
            created_nanos,
        }
    }

    /// Every blob digest this record keeps alive.
    pub fn referenced_blobs(&self) -> impl Iterator<Item = &str> {
        self.layer
            .iter()
            .map(|l| l.digest.as_str())
            .chain(self.blobs.iter().map(String::as_str))
    }
}

/// What [`Store::cache_lookup`] found for a key.
#[derive(Debug)]
pub enum CacheLookup {
    Hit(Box<CacheRecord>),
    /// No usable record: none, an older schema, or its blobs were pruned.
    Miss,
    /// A record is there but does not parse or names another key.
    Corrupt(super::StoreError),
}

/// Whether a record that does not parse as [`CacheRecord`] is at least JSON
/// naming an older schema.
fn older_schema(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("schema")?.as_u64())
        .is_some_and(|v| v < u64::from(CACHE_SCHEMA))
}

/// Why a step missed: the differences between the inputs of the closest
/// previous record and the new ones, one human-readable line each, e.g.
/// `instruction changed: "RUN make" -> "RUN make all"`, `files: a.txt changed`,
/// `build_args: VERSION added`.
pub fn diff_inputs(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let empty = serde_json::Map::new();
    let (old_map, new_map) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = old_map.keys().chain(new_map.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        match (old_map.get(key), new_map.get(key)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut inner: Vec<&String> = a.keys().chain(b.keys()).collect();
                inner.sort();
                inner.dedup();
                for k in inner {
                    match (a.get(k), b.get(k)) {
                        (Some(x), Some(y)) if x == y => {}
                        (Some(_), Some(_)) => out.push(format!("{key}: {k} changed")),
                        (None, Some(_)) => out.push(format!("{key}: {k} added")),
                        (Some(_), None) => out.push(format!("{key}: {k} removed")),
                        (None, None) => {}
                    }
                }
            }
            (Some(a), Some(b)) => out.push(format!("{key} changed: {a} -> {b}")),
            (None, Some(_)) => out.push(format!("{key} added")),
            (Some(_), None) => out.push(format!("{key} removed")),
            (None, None) => {}
        }
    }
    out
}

impl Store {
    fn cache_path(&self, key: &str) -> PathBuf {
        let name = sha256_hex(key.as_bytes());
        self.private("cache").join(format!("{name}.json"))
    }

    /// The record for `key`: None if absent, of an older schema, corrupt,
    /// or if a blob it needs has been pruned. [`Store::cache_lookup`] tells
    /// a corrupt record apart.
    pub fn cache_get(&self, key: &str) -> anyhow::Result<Option<CacheRecord>> {
        Ok(match self.cache_lookup(key)? {
            CacheLookup::Hit(record) => Some(*record),
            CacheLookup::Miss | CacheLookup::Corrupt(_) => None,
        })
    }

    /// The record for `key`, or why there is none. A record that does not
    /// parse, or that is filed under another key, is [`CacheLookup::Corrupt`]:
    /// the step runs again (and its new record replaces the bad one), and
    /// the engine says why instead of calling it an ordinary miss.
    pub fn cache_lookup(&self, key: &str) -> anyhow::Result<CacheLookup> {
        let path = self.cache_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheLookup::Miss),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let corrupt = |why: String| {
            Ok(CacheLookup::Corrupt(super::StoreError::Corrupt {
                what: "cache record",
                path: path.clone(),
                why,
                hint: "the step runs again and rewrites it; if records keep \
                       breaking, check the disk",
            }))
        };
        let record = match serde_json::from_slice::<CacheRecord>(&bytes) {
            Ok(r) => r,
            // An older schema may not parse as this one: that is age, not damage.
            Err(_) if older_schema(&bytes) => return Ok(CacheLookup::Miss),
            Err(e) => return corrupt(e.to_string()),
        };
        if record.schema != CACHE_SCHEMA {
            return Ok(CacheLookup::Miss);
        }
        if record.key != key {
            return corrupt("it holds the record of another key".to_string());
        }
        if !record.referenced_blobs().all(|d| self.has_blob(d)) {
            return Ok(CacheLookup::Miss);
        }
        Ok(CacheLookup::Hit(Box::new(record)))
    }

    /// Store `record` under its key (atomically replacing an older one).
    ///
    /// Renamed into place without fsync (two fewer syncs per step, each
    /// milliseconds on a busy disk): a record is only a shortcut that the
    /// step can recompute. After a crash it is either the old one, absent
    /// (a miss), or empty or torn, which `cache_get` reports as corrupt (a
    /// miss that says so) and `cache_records` skips. What it names is
    /// durable before it is written: the layer blob and the per-file inputs
    /// blob are fsynced with their directory by the blob writer.
    pub fn cache_put(&self, record: &CacheRecord) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(record).context("encoding a cache record")?;
        fsutil::atomic_write_unsynced(&self.tmp_dir(), &self.cache_path(&record.key), &bytes)
            .with_context(|| format!("writing cache record for {}", record.key))
    }

    /// The most recent record for the same parent key, else for the same
    /// step position: what the engine diffs against to explain a miss.
    pub fn cache_closest(
        &self,
        parent_key: Option<&str>,
        step_id: &str,
    ) -> anyhow::Result<Option<CacheRecord>> {
        self.cache_closest_where(parent_key, step_id, &|_| true)
    }

    /// Like [`Store::cache_closest`], among the records `accept` lets
    /// through (the engine keeps to earlier builds of the same Dockerfile).
    pub fn cache_closest_where(
        &self,
        parent_key: Option<&str>,
        step_id: &str,
        accept: &dyn Fn(&CacheRecord) -> bool,
    ) -> anyhow::Result<Option<CacheRecord>> {
        let mut best: Option<(u8, (u64, u32), CacheRecord)> = None;
        for record in self.cache_records()? {
            if !accept(&record) {
                continue;
            }
            let rank = if parent_key.is_some() && record.parent.as_deref() == parent_key {
                2
            } else if record.step_id == step_id {
                1
            } else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((r, c, _)) => (rank, (record.created, record.created_nanos)) > (*r, *c),
            };
            if better {
                best = Some((rank, (record.created, record.created_nanos), record));
            }
        }
        Ok(best.map(|(_, _, r)| r))
    }

    /// Every readable record of the current schema.
    pub fn cache_records(&self) -> anyhow::Result<Vec<CacheRecord>> {
        Ok(self
            .cache_files()?
            .into_iter()
            .filter_map(|p| fs::read(&p).ok())
            .filter_map(|b| serde_json::from_slice::<CacheRecord>(&b).ok())
            .filter(|r| r.schema == CACHE_SCHEMA)
            .collect())
    }

    pub(crate) fn cache_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let dir = self.private("cache");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            out.push(entry.path());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_tells_a_corrupt_record_from_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        assert!(matches!(
            store.cache_lookup("k").unwrap(),
            CacheLookup::Miss
        ));
        let rec = CacheRecord::new("k", None, "scope/stage/0", json!({}));
        store.cache_put(&rec).unwrap();
        assert!(matches!(store.cache_lookup("k").unwrap(), CacheLookup::Hit(r) if *r == rec));
        let path = store.cache_path("k");
        let corrupt = |s: &Store| match s.cache_lookup("k").unwrap() {
            CacheLookup::Corrupt(e) => e.to_string(),
            other => panic!("not corrupt: {other:?}"),
        };
        fs::write(&path, b"{\"schema\":1,\"key\":").unwrap();
        let why = corrupt(&store);
        assert!(
            why.contains(&path.display().to_string()) && why.contains("EOF"),
            "{why}"
        );
        assert!(why.contains("\nhint: "), "{why}");
        // A record filed under another key's name is corrupt too.
        let other = CacheRecord::new("other", None, "scope/stage/0", json!({}));
        fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert!(corrupt(&store).contains("another key"));
        // An older schema is age, not damage.
        fs::write(&path, br#"{"schema":0,"key":"k"}"#).unwrap();
        assert!(matches!(
            store.cache_lookup("k").unwrap(),
            CacheLookup::Miss
        ));
        assert!(store.cache_get("k").unwrap().is_none());
    }

    #[test]
    fn diff_inputs_names_what_changed() {
        let old = json!({"parent": "p", "instruction": "RUN make", "build_args": {"A": "1", "B": "2"}, "files": {"a.txt": "sha256:1", "gone": "sha256:2"}});
        let new = json!({"parent": "p", "instruction": "RUN make all", "build_args": {"A": "9", "B": "2", "C": "3"}, "files": {"a.txt": "sha256:1", "new": "sha256:3"}});
        assert_eq!(
            diff_inputs(&old, &new),
            vec![
                "build_args: A changed",
                "build_args: C added",
                "files: gone removed",
                "files: new added",
                r#"instruction changed: "RUN make" -> "RUN make all""#,
            ]
        );
        assert!(diff_inputs(&old, &old).is_empty());
    }
}
