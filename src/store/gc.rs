//! Garbage collection: mark every blob reachable from `index.json` (through
//! indexes, manifests and configs) and from cache records, then sweep blobs,
//! layer dirs, dead temps and the build records of manifests now gone. Runs
//! under the index lock (no tag changes meanwhile) and the exclusive GC
//! lock (no build in flight).

use std::collections::HashSet;
use std::fs;

use anyhow::Context;
use serde_json::Value;

use super::{blob, fsutil, lock, Store};

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub blobs: usize,
    pub bytes: u64,
    pub layer_dirs: usize,
    pub cache_records: usize,
    pub temps: usize,
    /// RUN cache mount dirs (only with `all`).
    pub cache_mounts: usize,
    /// Layer chunk cache records whose blob is gone.
    pub chunk_records: usize,
    /// Temps that could not be removed, described.
    pub left: Vec<String>,
    /// Records of where blobs live in registries, for blobs nothing here
    /// names any more (e.g. an imported cache's layers).
    pub blob_locations: usize,
    /// Build records (`rbuild history`'s CACHE) of manifests now gone.
    pub build_records: usize,
}

#[derive(Default)]
struct Marks {
    blobs: HashSet<String>,
    diff_ids: HashSet<String>,
}

impl Store {
    /// Drop what no tag or cache record reaches; `all` drops the build
    /// cache (records and RUN cache mounts) first, and every layer snapshot.
    pub fn prune(&self, all: bool) -> anyhow::Result<PruneReport> {
        let Some(_gc) = lock::try_lock_exclusive(&self.private("gc.lock"))? else {
            anyhow::bail!(
                "the store {} is in use by a running build; try again later",
                self.root.display()
            );
        };
        let _index = self.lock_index()?;
        let mut report = PruneReport::default();
        if all {
            for path in self.cache_files()? {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                report.cache_records += 1;
            }
            report.cache_mounts = self.remove_cache_mounts()?;
        }
        let mut marks = self.mark()?;
        if all {
            // Snapshots are a cache of the blobs (made again on need) and
            // hold the images' setuid files and device nodes: `--all`
            // leaves none behind.
            marks.diff_ids.clear();
        }
        self.sweep_blobs(&marks, &mut report)?;
        self.sweep_layer_dirs(&marks, &mut report)?;
        report.build_records = self.sweep_build_records()?;
        report.chunk_records = self.sweep_chunk_records()?;
        report.blob_locations = self.sweep_blob_locations(&marks)?;
        report.temps = fsutil::clean_temps(&self.tmp_dir(), &mut report.left)?;
        Ok(report)
    }

    /// Remove every cache mount dir (and its lock file); no build runs
    /// meanwhile (the caller holds the GC lock exclusively).
    fn remove_cache_mounts(&self) -> anyhow::Result<usize> {
        let dir = self.private("cachemounts");
        let mut removed = 0;
        for path in fsutil::list_dir(&dir)? {
            let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
            if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .with_context(|| format!("removing cache mount {}", path.display()))?;
            removed += usize::from(is_dir);
        }
        Ok(removed)
    }

    /// Drop the registry module's records of where blobs live (a JSON
    /// object keyed by digest; the rest of its format is the registry's
    /// business) for blobs no image or cache record names: what imported
    /// caches noted about their layers and saved mounts, once nothing in
    /// the store uses them. A file that does not parse is left alone (the
    /// registry module reports it when it reads it).
    fn sweep_blob_locations(&self, marks: &Marks) -> anyhow::Result<usize> {
        let path = self.blob_locations_file()?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(&bytes) else {
            return Ok(0);
        };
        let before = map.len();
        map.retain(|digest, _| marks.blobs.contains(digest));
        let removed = before - map.len();
        if removed > 0 {
            let bytes = serde_json::to_vec(&Value::Object(map)).context("blob locations")?;
            self.atomic_write(&path, &bytes)?;
        }
        Ok(removed)
    }

    fn mark(&self) -> anyhow::Result<Marks> {
        let mut marks = Marks::default();
        for desc in self.index_roots()? {
            // What a tag names must read: a damaged manifest would leave
            // its layers unmarked, and the sweep would delete them.
            self.mark_manifest(desc.digest().as_ref(), &mut marks, true)?;
        }
        for record in self.cache_records()? {
            if let Some(layer) = &record.layer {
                marks.blobs.insert(layer.digest.clone());
                marks.diff_ids.insert(layer.diff_id.clone());
            }
            for digest in &record.blobs {
                self.mark_manifest(digest, &mut marks, false)?;
            }
        }
        Ok(marks)
    }

    /// A blob's JSON; `None` when it is absent, or (not `strict`) when it
    /// does not read or parse. `strict`: such a blob is corrupt, an error.
    fn blob_json(&self, digest: &str, strict: bool) -> anyhow::Result<Option<Value>> {
        if !self.has_blob(digest) {
            return Ok(None);
        }
        let parsed = self
            .read_blob(digest)
            .map_err(|e| format!("{e:#}"))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(v) => Ok(Some(v)),
            Err(_) if !strict => Ok(None),
            Err(why) => Err(super::StoreError::Corrupt {
                what: "blob",
                path: self.blob_path(digest)?,
                why: format!("{digest}, which a tag reaches, does not read as JSON: {why}"),
                hint: "prune refuses to run (it would drop what the image names); \
                       `rbuild rmi` the image that names it, or restore the blob",
            }
            .into()),
        }
    }

    /// Mark a manifest or index and everything it names; a config also
    /// marks its layers' unpacked dirs (by diff_id).
    fn mark_manifest(&self, digest: &str, marks: &mut Marks, strict: bool) -> anyhow::Result<()> {
        if !marks.blobs.insert(digest.to_string()) {
            return Ok(());
        }
        let Some(value) = self.blob_json(digest, strict)? else {
            return Ok(());
        };
        let digest_of = |d: &Value| d.get("digest").and_then(Value::as_str).map(str::to_string);
        let children = value.get("manifests").and_then(Value::as_array);
        for child in children.into_iter().flatten().filter_map(digest_of) {
            self.mark_manifest(&child, marks, strict)?;
        }
        let layers = value.get("layers").and_then(Value::as_array);
        marks
            .blobs
            .extend(layers.into_iter().flatten().filter_map(digest_of));
        if let Some(config) = value.get("config").and_then(digest_of) {
            if let Some(ids) = self
                .blob_json(&config, strict)?
                .and_then(|c| c.pointer("/rootfs/diff_ids").cloned())
                .and_then(|v| v.as_array().cloned())
            {
                marks
                    .diff_ids
                    .extend(ids.iter().filter_map(Value::as_str).map(str::to_string));
            }
            marks.blobs.insert(config);
        }
        Ok(())
    }

    fn sweep_blobs(&self, marks: &Marks, report: &mut PruneReport) -> anyhow::Result<()> {
        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if marks.blobs.contains(&format!("sha256:{name}")) {
                continue;
            }
            report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            blob::remove_blob(&entry.path())?;
            report.blobs += 1;
        }
        Ok(())
    }

    fn sweep_layer_dirs(&self, marks: &Marks, report: &mut PruneReport) -> anyhow::Result<()> {
        // A composite (a COPY's changed files over the snapshot of an
        // earlier build of it) lives while its layer is named, and keeps
        // its base alive meanwhile (that base holds most of its files, so
        // keeping it costs what the layer's own plain snapshot would); it
        // goes with its layer, or when its base is missing.
        let mut bases = HashSet::new();
        for (diff_id, path, base) in self.composite_layer_dirs()? {
            match base {
                Some(b) if marks.diff_ids.contains(&diff_id) && self.layer_dir(&b).is_some() => {
                    bases.insert(b);
                }
                _ => {
                    fs::remove_dir_all(&path)
                        .with_context(|| format!("removing layer dir {}", path.display()))?;
                    report.layer_dirs += 1;
                }
            }
        }
        for diff_id in self.layer_dir_ids()? {
            if marks.diff_ids.contains(&diff_id) || bases.contains(&diff_id) {
                continue;
            }
            if let Some(path) = self.layer_dir(&diff_id) {
                fs::remove_dir_all(&path)
                    .with_context(|| format!("removing layer dir {}", path.display()))?;
                report.layer_dirs += 1;
            }
        }
        Ok(())
    }
}
