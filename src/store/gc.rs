//! Garbage collection: mark every blob reachable from `index.json` (through
//! indexes, manifests and configs) and from cache records, then sweep blobs,
//! layer dirs and dead temps. Runs under the index lock (no tag changes
//! meanwhile) and the exclusive GC lock (no build in flight).

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
}

#[derive(Default)]
struct Marks {
    blobs: HashSet<String>,
    diff_ids: HashSet<String>,
}

impl Store {
    /// Drop what no tag or cache record reaches; `all` drops the cache first.
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
        }
        let marks = self.mark()?;
        self.sweep_blobs(&marks, &mut report)?;
        self.sweep_layer_dirs(&marks, &mut report)?;
        report.temps = fsutil::clean_temps(&self.tmp_dir())?;
        Ok(report)
    }

    fn mark(&self) -> anyhow::Result<Marks> {
        let mut marks = Marks::default();
        for desc in self.index_roots()? {
            self.mark_json_blob(desc.digest().as_ref(), &mut marks)?;
        }
        for record in self.cache_records()? {
            for digest in record.referenced_blobs() {
                self.mark_json_blob(digest, &mut marks)?;
            }
            if let Some(layer) = &record.layer {
                marks.diff_ids.insert(layer.diff_id.clone());
            }
        }
        Ok(marks)
    }

    /// Mark `digest`, and if it is an index, manifest or config, what it names.
    fn mark_json_blob(&self, digest: &str, marks: &mut Marks) -> anyhow::Result<()> {
        if !marks.blobs.insert(digest.to_string()) {
            return Ok(());
        }
        let Ok(path) = self.blob_path(digest) else {
            return Ok(());
        };
        // Layers are big and not JSON: only parse what could be metadata.
        let small = fs::metadata(&path)
            .map(|m| m.len() < 4 << 20)
            .unwrap_or(false);
        if !small {
            return Ok(());
        }
        let Ok(value) = serde_json::from_slice::<Value>(&fs::read(&path).unwrap_or_default())
        else {
            return Ok(());
        };
        let children: Vec<String> = ["manifests", "layers"]
            .iter()
            .filter_map(|k| value.get(k).and_then(Value::as_array))
            .flatten()
            .chain(value.get("config").filter(|c| c.get("digest").is_some()))
            .filter_map(|d| d.get("digest").and_then(Value::as_str).map(str::to_string))
            .collect();
        if let Some(ids) = value.pointer("/rootfs/diff_ids").and_then(Value::as_array) {
            marks
                .diff_ids
                .extend(ids.iter().filter_map(Value::as_str).map(str::to_string));
        }
        for child in children {
            self.mark_json_blob(&child, marks)?;
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
        for diff_id in self.layer_dir_ids()? {
            if marks.diff_ids.contains(&diff_id) {
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
