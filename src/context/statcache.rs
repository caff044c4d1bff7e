//! The persisted stat cache: (path, size, mtime_ns, inode, ctime_ns) →
//! digest, so a rebuild of an unchanged context reads no file contents.
//!
//! Trust rule: a digest is reused only when size, mtime, ctime and inode all
//! match. ctime cannot be set by user space, so rewriting a file and
//! restoring its mtime still forces a re-hash; a file replaced by rename
//! changes inode. Racy-git guard: a file whose mtime or ctime falls in the
//! same second as the scan start (or later) is not saved, because it could
//! change again within the timestamp granularity without its stat changing.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::filedigest::FileDigest;
use super::scan::{Entry, EntryKind};
use super::ContextError;

const SCHEMA: &str = "rbuild.statcache.v1";

/// One extended attribute: name and value.
type Xattr = (String, Vec<u8>);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    /// Saved as `sha256:<hex>`; anything else fails the whole load.
    digest: FileDigest,
    /// The file's content xattrs (see `scan::read_xattrs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<Xattr>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StatCache {
    schema: String,
    root: String,
    entries: HashMap<String, Stamp>,
}

impl StatCache {
    /// Loads the cache for `root`. A missing, unreadable, corrupt or foreign
    /// cache is treated as empty: it only ever saves work.
    pub(crate) fn load(path: &Path, root: &Path) -> StatCache {
        let Ok(bytes) = std::fs::read(path) else {
            return StatCache::default();
        };
        match serde_json::from_slice::<StatCache>(&bytes) {
            Ok(c) if c.schema == SCHEMA && c.root == root.to_string_lossy() => c,
            _ => StatCache::default(),
        }
    }

    /// The digest and xattrs recorded for `e`, when its stat still matches.
    pub(crate) fn lookup(&self, e: &Entry) -> Option<(FileDigest, &[Xattr])> {
        let s = self.entries.get(&e.rel)?;
        let same = s.size == e.size
            && s.mtime_ns == e.mtime_ns
            && s.ctime_ns == e.ctime_ns
            && s.ino == e.ino;
        same.then_some((s.digest, s.xattrs.as_slice()))
    }

    /// How many files the cache vouches for.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether saving `entries` (the files a scan hashed; no path twice)
    /// would write exactly what this cache holds. Compared in place:
    /// building a second cache to compare cost ~50 MB at 200,000 files.
    pub(crate) fn holds_exactly<'a>(
        &self,
        root: &Path,
        entries: impl Iterator<Item = &'a Entry>,
        scan_start: SystemTime,
    ) -> bool {
        if self.schema != SCHEMA || self.root != root.to_string_lossy() {
            return false;
        }
        let mut n = 0;
        for (e, digest) in savable(entries, scan_start) {
            n += 1;
            let same = self.entries.get(&e.rel).is_some_and(|s| {
                s.size == e.size
                    && s.mtime_ns == e.mtime_ns
                    && s.ctime_ns == e.ctime_ns
                    && s.ino == e.ino
                    && s.digest == digest
                    && s.xattrs == e.xattrs
            });
            if !same {
                return false;
            }
        }
        n == self.entries.len()
    }

    /// Saves the cache of `entries` (no path twice), minus racy ones, to
    /// `path`. The JSON is streamed from the entries to the file (built in
    /// memory, the text of 200,000 stamps peaked at ~65 MB). Atomic: temp
    /// file in the same directory, fsync, rename, fsync the directory.
    pub(crate) fn save_entries<'a>(
        path: &Path,
        root: &Path,
        entries: impl Iterator<Item = &'a Entry> + Clone,
        scan_start: SystemTime,
    ) -> Result<(), ContextError> {
        let view = CacheView {
            schema: SCHEMA,
            root: root.to_string_lossy(),
            entries: StampsView {
                entries,
                scan_start,
            },
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| ContextError::io("create stat cache directory", dir, e))?;
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| ContextError::io("create stat cache temp file", dir, e))?;
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, tmp);
        serde_json::to_writer(&mut out, &view).map_err(|e| match e.io_error_kind() {
            Some(kind) => ContextError::io("write stat cache", path, kind.into()),
            None => ContextError::Internal(format!("encode stat cache: {e}")),
        })?;
        let tmp = out
            .into_inner()
            .map_err(|e| ContextError::io("write stat cache", path, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| ContextError::io("write stat cache", tmp.path(), e))?;
        tmp.persist(path)
            .map_err(|e| ContextError::io("rename stat cache into place", path, e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ContextError::io("sync stat cache directory", dir, e))?;
        Ok(())
    }
}

/// The start of `scan_start`'s second in ns since the epoch: a file whose
/// mtime or ctime is not earlier could change again without its stat
/// changing (same clock tick), so nothing vouches for its digest.
pub(crate) fn racy_from_ns(scan_start: SystemTime) -> i64 {
    let start_sec = scan_start
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    start_sec.saturating_mul(1_000_000_000)
}

/// The stamps a save writes: regular files with a digest whose mtime and
/// ctime fall before the second the scan started (the racy-git guard).
fn savable<'a>(
    entries: impl Iterator<Item = &'a Entry>,
    scan_start: SystemTime,
) -> impl Iterator<Item = (&'a Entry, FileDigest)> {
    let racy_from = racy_from_ns(scan_start);
    entries
        .filter(|e| e.kind == EntryKind::File)
        .filter(move |e| e.mtime_ns < racy_from && e.ctime_ns < racy_from)
        .filter_map(|e| Some((e, e.digest?)))
}

/// A [`StatCache`] as saved (the same JSON), borrowing the scan's entries.
#[derive(Serialize)]
#[serde(bound(serialize = "StampsView<I>: Serialize"))]
struct CacheView<'a, I> {
    schema: &'a str,
    root: std::borrow::Cow<'a, str>,
    entries: StampsView<I>,
}

struct StampsView<I> {
    entries: I,
    scan_start: SystemTime,
}

/// A [`Stamp`] as saved, borrowing.
#[derive(Serialize)]
struct StampRef<'a> {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    digest: FileDigest,
    #[serde(skip_serializing_if = "<[Xattr]>::is_empty")]
    xattrs: &'a [Xattr],
}

impl<'a, I: Iterator<Item = &'a Entry> + Clone> Serialize for StampsView<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let stamps = savable(self.entries.clone(), self.scan_start).map(|(e, digest)| {
            let stamp = StampRef {
                size: e.size,
                mtime_ns: e.mtime_ns,
                ctime_ns: e.ctime_ns,
                ino: e.ino,
                digest,
                xattrs: &e.xattrs,
            };
            (e.rel.as_str(), stamp)
        });
        s.collect_map(stamps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rel: &str, size: u64) -> Entry {
        Entry {
            rel: rel.to_string(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_ns: 1_000_000_000,
            ctime_ns: 1_000_000_000,
            dev: 1,
            ino: 7,
            nlink: 1,
            digest: FileDigest::parse(&format!("sha256:{}", "ab".repeat(32))),
            xattrs: vec![("user.k".into(), b"v".to_vec())],
        }
    }

    #[test]
    fn a_streamed_save_loads_back_and_is_compared_in_place() {
        let t = tempfile::tempdir().unwrap();
        let (path, root) = (t.path().join("cache.json"), t.path().join("ctx"));
        let now = SystemTime::now();
        let mut racy = file("racy", 1);
        racy.mtime_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let entries = [file("a", 3), file("d/b", 4), racy];
        StatCache::save_entries(&path, &root, entries.iter(), now).unwrap();
        // The saved JSON has the v1 shape: a map of stamps by path.
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["entries"]["d/b"]["size"], 4);
        assert_eq!(
            json["entries"]["a"]["digest"],
            format!("sha256:{}", "ab".repeat(32))
        );
        assert!(
            json["entries"].get("racy").is_none(),
            "racy files are not saved"
        );
        let loaded = StatCache::load(&path, &root);
        assert_eq!(
            loaded.lookup(&entries[0]).map(|(d, _)| d),
            entries[0].digest
        );
        assert!(loaded.holds_exactly(&root, entries.iter(), now));
        // Any difference, or a file more or less, is a change to save.
        let mut changed = entries.clone();
        changed[1].size = 5;
        assert!(!loaded.holds_exactly(&root, changed.iter(), now));
        assert!(!loaded.holds_exactly(&root, entries[..1].iter(), now));
        assert!(!loaded.holds_exactly(&t.path().join("other"), entries.iter(), now));
        // A digest that is not exactly sha256:<hex> makes the whole file unusable.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("sha256:abab", "sha256:ABAB")).unwrap();
        assert!(StatCache::load(&path, &root).lookup(&entries[0]).is_none());
    }
}
