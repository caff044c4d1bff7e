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
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

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
    digest: String,
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
    pub(crate) fn lookup(&self, e: &Entry) -> Option<(&str, &[Xattr])> {
        let s = self.entries.get(&e.rel)?;
        let same = s.size == e.size
            && s.mtime_ns == e.mtime_ns
            && s.ctime_ns == e.ctime_ns
            && s.ino == e.ino;
        same.then_some((s.digest.as_str(), s.xattrs.as_slice()))
    }

    /// How many files the cache vouches for.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether saving `self` would write what `other` already holds.
    pub(crate) fn same_as(&self, other: &StatCache) -> bool {
        self.schema == other.schema && self.root == other.root && self.entries == other.entries
    }

    /// A cache holding exactly the given hashed files, minus racy ones.
    pub(crate) fn from_entries<'a>(
        root: &Path,
        entries: impl Iterator<Item = &'a Entry>,
        scan_start: SystemTime,
    ) -> StatCache {
        let start_sec = scan_start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let racy_from = start_sec * 1_000_000_000;
        let mut map = HashMap::new();
        for e in entries.filter(|e| e.kind == EntryKind::File) {
            let Some(d) = &e.digest else { continue };
            if e.mtime_ns >= racy_from || e.ctime_ns >= racy_from {
                continue;
            }
            map.insert(
                e.rel.clone(),
                Stamp {
                    size: e.size,
                    mtime_ns: e.mtime_ns,
                    ctime_ns: e.ctime_ns,
                    ino: e.ino,
                    digest: d.clone(),
                    xattrs: e.xattrs.clone(),
                },
            );
        }
        StatCache {
            schema: SCHEMA.to_string(),
            root: root.to_string_lossy().into_owned(),
            entries: map,
        }
    }

    /// Writes atomically: temp file in the same directory, fsync, rename,
    /// fsync the directory.
    pub(crate) fn save(&self, path: &Path) -> Result<(), ContextError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| ContextError::io("create stat cache directory", dir, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| ContextError::io("create stat cache temp file", dir, e))?;
        let json = serde_json::to_vec(self)
            .map_err(|e| ContextError::Internal(format!("encode stat cache: {e}")))?;
        tmp.write_all(&json)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| ContextError::io("write stat cache", tmp.path(), e))?;
        tmp.persist(path)
            .map_err(|e| ContextError::io("rename stat cache into place", path, e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ContextError::io("sync stat cache directory", dir, e))?;
        Ok(())
    }
}
