//! The chunk cache: sha256 of a chunk's uncompressed bytes (plus codec,
//! level and library version) → where its compressed bytes already sit in
//! a stored blob. A rebuild whose tar stream is mostly unchanged copies
//! those bytes instead of compressing again.
//!
//! A record does not hold the compressed bytes: they are already in the
//! layer blob that was written with them, so a cold build writes only one
//! ~90-byte record per chunk (about one per MiB of layer) instead of a
//! second copy of the layer. A record is one line,
//! `rbuild-chunk-v1 <blob digest> <offset> <length> <crc32>`, named by the
//! hex key, written atomically (temp file in a locked store temp dir, then
//! rename), so concurrent builds at worst replace a record with an equally
//! valid one. A record whose blob is gone (pruned) or whose bytes do not
//! match its CRC is a miss, never an error: the chunk is compressed again.
//! The store's prune removes records whose blob it removed.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// First word of every record; bump it when the format or the meaning changes.
const RECORD_VERSION: &str = "rbuild-chunk-v1";
/// A record is a short line; anything longer is not one of ours.
const MAX_RECORD: u64 = 512;
/// No chunk compresses to more than this (chunks are at most 8 MiB of tar;
/// incompressible data grows by well under 1 %): a larger length in a
/// record is corrupt and must not drive an allocation.
const MAX_COMPRESSED: u64 = 16 << 20;

/// Maps a blob digest to the path of the stored blob, if the store has it.
pub type BlobResolver = Arc<dyn Fn(&str) -> Option<PathBuf> + Send + Sync>;

/// A chunk cache in a directory (the store's `rbuild/chunks/`).
#[derive(Clone)]
pub struct ChunkCache {
    dir: PathBuf,
    tmp: PathBuf,
    blob_path: BlobResolver,
}

impl fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkCache")
            .field("dir", &self.dir)
            .field("tmp", &self.tmp)
            .finish_non_exhaustive()
    }
}

/// Where a chunk just written sits in the new blob (recorded once the
/// blob's digest is known).
#[derive(Debug, Clone)]
pub(crate) struct NewChunk {
    pub key: [u8; 32],
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
    /// Uncompressed length (the chunk index carries it; records do not).
    pub ulen: u64,
}

impl ChunkCache {
    /// Records live in `dir` (created by the caller, private); temps are
    /// made in `tmp`, a dir on the same filesystem that the caller keeps
    /// alive (and locked) while layers are written; `blob_path` finds the
    /// blobs records point into.
    pub fn new(dir: PathBuf, tmp: PathBuf, blob_path: BlobResolver) -> ChunkCache {
        ChunkCache {
            dir,
            tmp,
            blob_path,
        }
    }

    /// The key of `data` compressed as `codec` (which names codec, level and
    /// library version: another zlib or libzstd may emit other bytes, and
    /// the output must not depend on whether the cache was warm).
    pub(crate) fn key(codec: &str, data: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(RECORD_VERSION.as_bytes());
        h.update([0]);
        h.update(codec.as_bytes());
        h.update([0]);
        h.update(data);
        h.finalize().into()
    }

    fn record_path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(key))
    }

    /// The compressed bytes of the chunk with this key, if a record points
    /// to bytes that are still there and match its CRC.
    pub(crate) fn lookup(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        let mut text = String::new();
        File::open(self.record_path(key))
            .ok()?
            .take(MAX_RECORD)
            .read_to_string(&mut text)
            .ok()?;
        let rec = parse_record(&text)?;
        if rec.len > MAX_COMPRESSED {
            return None;
        }
        let blob = File::open((self.blob_path)(rec.blob)?).ok()?;
        let mut bytes = vec![0u8; rec.len as usize];
        blob.read_exact_at(&mut bytes, rec.offset).ok()?;
        (crc32fast::hash(&bytes) == rec.crc).then_some(bytes)
    }

    /// Whether a record for `key` exists (it may still miss on lookup).
    pub(crate) fn has_record(&self, key: &[u8; 32]) -> bool {
        self.record_path(key).exists()
    }

    /// Records `chunks` as living in the blob `digest`.
    pub(crate) fn record(&self, digest: &str, chunks: &[NewChunk]) -> io::Result<()> {
        // Unique per process and call: two threads of one process may write
        // layers at once.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        for c in chunks {
            let line = format!(
                "{RECORD_VERSION} {digest} {} {} {}\n",
                c.offset, c.len, c.crc
            );
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let tmp = self.tmp.join(format!("chunk-{}-{n}", std::process::id()));
            write_then_rename(&tmp, &self.record_path(&c.key), line.as_bytes()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("recording chunk in {}: {e}", self.dir.display()),
                )
            })?;
        }
        Ok(())
    }
}

impl ChunkCache {
    /// Writes `bytes` as the file `name` beside the records (a blob's
    /// chunk index, `chunkseed`), atomically like a record. `name` never
    /// looks like a key (64 hex digits), so it cannot shadow a record.
    pub(crate) fn write_aside(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("aside-{}-{n}", std::process::id()));
        write_then_rename(&tmp, &self.dir.join(name), bytes)
    }

    /// The file `name` written by [`ChunkCache::write_aside`], if it is
    /// there and at most `max` bytes.
    pub(crate) fn read_aside(&self, name: &str, max: u64) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(self.dir.join(name))
            .ok()?
            .take(max + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        (bytes.len() as u64 <= max).then_some(bytes)
    }
}

/// No fsync: a record lost or torn by a crash is only a cache miss (the CRC
/// and the length check catch a torn one).
fn write_then_rename(tmp: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(tmp)?;
    let written = f.write_all(bytes).and_then(|_| fs::rename(tmp, dest));
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written
}

struct Record<'a> {
    blob: &'a str,
    offset: u64,
    len: u64,
    crc: u32,
}

fn parse_record(text: &str) -> Option<Record<'_>> {
    let mut words = text.strip_suffix('\n')?.split(' ');
    if words.next()? != RECORD_VERSION {
        return None;
    }
    let rec = Record {
        blob: words.next()?,
        offset: words.next()?.parse().ok()?,
        len: words.next()?.parse().ok()?,
        crc: words.next()?.parse().ok()?,
    };
    words.next().is_none().then_some(rec)
}

/// The blob digest a record file names, for the store's prune.
pub fn chunk_record_blob(text: &str) -> Option<&str> {
    parse_record(text).map(|r| r.blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(root: &Path) -> ChunkCache {
        let blobs = root.join("blobs");
        for d in ["chunks", "tmp", "blobs"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let resolver: BlobResolver =
            Arc::new(move |d: &str| Some(blobs.join(d.strip_prefix("sha256:")?)));
        ChunkCache::new(root.join("chunks"), root.join("tmp"), resolver)
    }

    #[test]
    fn records_point_into_blobs_and_bad_ones_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        fs::write(dir.path().join("blobs/abc"), b"headerCHUNKtrailer").unwrap();
        let key = ChunkCache::key("gzip-6", b"whatever");
        let chunk = NewChunk {
            key,
            offset: 6,
            len: 5,
            crc: crc32fast::hash(b"CHUNK"),
            ulen: 8,
        };
        assert_eq!(c.lookup(&key), None);
        c.record("sha256:abc", std::slice::from_ref(&chunk))
            .unwrap();
        assert_eq!(c.lookup(&key).as_deref(), Some(&b"CHUNK"[..]));
        // No temp is left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // A record pointing at other bytes (wrong offset) is a miss.
        let bad = NewChunk {
            offset: 5,
            ..chunk.clone()
        };
        c.record("sha256:abc", &[bad]).unwrap();
        assert_eq!(c.lookup(&key), None);
        // So is one whose blob is gone, or one past the blob's end.
        c.record("sha256:gone", std::slice::from_ref(&chunk))
            .unwrap();
        assert_eq!(c.lookup(&key), None);
        let past = NewChunk {
            offset: 100,
            ..chunk.clone()
        };
        c.record("sha256:abc", &[past]).unwrap();
        assert_eq!(c.lookup(&key), None);
        // A different codec string is a different key.
        assert_ne!(key, ChunkCache::key("gzip-9", b"whatever"));
    }

    #[test]
    fn record_parser_rejects_junk() {
        assert!(parse_record("rbuild-chunk-v1 sha256:a 1 2 3\n").is_some());
        assert_eq!(
            chunk_record_blob("rbuild-chunk-v1 sha256:a 1 2 3\n"),
            Some("sha256:a")
        );
        for junk in [
            "",
            "rbuild-chunk-v1 sha256:a 1 2 3",
            "rbuild-chunk-v0 sha256:a 1 2 3\n",
            "rbuild-chunk-v1 sha256:a 1 2\n",
            "rbuild-chunk-v1 sha256:a 1 2 3 4\n",
            "rbuild-chunk-v1 sha256:a -1 2 3\n",
            "rbuild-chunk-v1 sha256:a 1 2 99999999999\n",
        ] {
            assert!(parse_record(junk).is_none(), "{junk:?}");
        }
    }
}
