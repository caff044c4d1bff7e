//! The chunk cache: the key of a chunk's uncompressed bytes (plus codec,
//! level and library version) → where its compressed bytes already sit in
//! a stored blob. A rebuild whose tar stream is mostly unchanged copies
//! those bytes instead of compressing again.
//!
//! A key is the sha256 of the chunk's *description*: its bytes, except
//! that the content of a file whose sha256 the context scan vouches for
//! (`KnownFiles`) stands as that digest and the range of the file (see
//! [`KeyHasher`]). So a chunk of unchanged context files is recognised from
//! its tar headers without reading the files.
//!
//! A record does not hold the compressed bytes: they are already in the
//! layer blob that was written with them, so a cold build writes only one
//! short record per chunk (about one per MiB of layer) instead of a
//! second copy of the layer. A record is one line, `rbuild-chunk-v2 <blob
//! digest> <offset> <length> <crc32> <tar length> <tar crc32> <tar offset>
//! <tar sha256 state> <blob sha256 state> <crc32 of the line before it>`,
//! named by the hex key and written over the old record in place (no new
//! inode per record: a one-file rebuild rewrites every chunk's record, and
//! a temp file and a rename each, 282 of them, cost 50-300 ms of its wall
//! time on this kind of ext4). A reader that catches a record half
//! rewritten, or a crash that tears one, sees a line that fails its CRC or
//! its parse: a miss, never wrong bytes; concurrent builds at worst
//! replace a record with an equally valid one. The two sha256 states are the diff_id's and
//! the digest's hash states at the end of the chunk in that blob: a layer
//! that starts with the same chunks resumes both hashes there
//! (`chunked::Resume`). A record whose blob is gone (pruned), whose bytes
//! do not match its CRC, or whose line fails its own CRC is a miss, never
//! an error: the chunk is compressed again. The store's prune removes
//! records whose blob it removed.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::blobrange::BlobRange;
use super::midsha::{parse_state, state_hex};

/// First word of every record; bump it when the format or the meaning changes.
const RECORD_VERSION: &str = "rbuild-chunk-v2";
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
    /// A seeding still running, whose verified chunks a lookup may wait
    /// for (`chunkseed_feed.rs`).
    feed: Option<Arc<super::chunkseed_feed::SeedFeed>>,
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
    /// The chunk's uncompressed length, CRC and offset in the tar stream.
    pub ulen: u64,
    pub ucrc: u32,
    pub tar_off: u64,
    /// The diff_id's and the digest's sha256 states at the chunk's end.
    pub states: Option<([u32; 8], [u32; 8])>,
}

/// A record found, with the compressed bytes it points to: read into
/// memory, or (`lookup_range`) left where they are in the blob.
#[derive(Debug, Clone)]
pub(crate) struct Hit<B = Vec<u8>> {
    pub blob: String,
    pub offset: u64,
    /// CRC-32 of `bytes`.
    pub crc: u32,
    pub ulen: u64,
    pub ucrc: u32,
    pub tar_off: u64,
    pub states: Option<([u32; 8], [u32; 8])>,
    pub bytes: B,
}

impl<B> Hit<B> {
    pub(crate) fn with_bytes<C>(self, bytes: C) -> Hit<C> {
        Hit {
            blob: self.blob,
            offset: self.offset,
            crc: self.crc,
            ulen: self.ulen,
            ucrc: self.ucrc,
            tar_off: self.tar_off,
            states: self.states,
            bytes,
        }
    }
}

/// The blob a run of [`ChunkCache::lookup_range`] calls read from, kept
/// open between them (resumed chunks come from one blob), and the buffer
/// their CRCs are checked through.
#[derive(Default)]
pub(crate) struct RangeReader {
    open: Option<(String, Arc<File>)>,
    buf: Vec<u8>,
}

/// The key of a chunk from its description: literal runs (maximal, never
/// empty) and ranges of files known by their sha256. Each part is tagged
/// and length-prefixed, so two different descriptions never hash the same
/// input; a file's range stands for exactly its bytes (the digest names
/// the whole content), so equal keys mean equal chunk bytes as long as
/// sha256 holds.
pub(crate) struct KeyHasher(Sha256);

impl KeyHasher {
    /// `codec` names the codec, level and library version: another zlib or
    /// libzstd may emit other bytes, and the output must not depend on
    /// whether the cache was warm.
    pub(crate) fn new(codec: &str) -> Self {
        let mut h = Sha256::new();
        h.update(RECORD_VERSION.as_bytes());
        h.update([0]);
        h.update(codec.as_bytes());
        h.update([0]);
        KeyHasher(h)
    }

    pub(crate) fn literal(&mut self, bytes: &[u8]) {
        self.0.update([0]);
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub(crate) fn file(&mut self, digest: &[u8; 32], offset: u64, len: u64) {
        self.0.update([1]);
        self.0.update(digest);
        self.0.update(offset.to_le_bytes());
        self.0.update(len.to_le_bytes());
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
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
            feed: None,
        }
    }

    /// The same cache, whose lookups also take chunks from a seeding
    /// that is still running.
    pub fn with_feed(self, feed: Arc<super::chunkseed_feed::SeedFeed>) -> ChunkCache {
        ChunkCache {
            feed: Some(feed),
            ..self
        }
    }

    /// The key of `data` described as bytes alone (no known files): what
    /// a chunk seeded from another store's layer is recorded under.
    pub(crate) fn key(codec: &str, data: &[u8]) -> [u8; 32] {
        let mut h = KeyHasher::new(codec);
        if !data.is_empty() {
            h.literal(data);
        }
        h.finish()
    }

    fn record_path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(key))
    }

    /// The compressed bytes of the chunk with this key, if a record points
    /// to bytes that are still there and match its CRC, or a running
    /// seeding delivers it (waiting for it while the seeding's index
    /// claims it).
    pub(crate) fn lookup(&self, key: &[u8; 32]) -> Option<Hit> {
        self.lookup_record(key).or_else(|| self.fed(key))
    }

    /// The chunk a running seeding delivers under `key` (waiting for it
    /// while the seeding's index claims it), or, once the seeding ended,
    /// its record. None without a feed.
    pub(crate) fn fed(&self, key: &[u8; 32]) -> Option<Hit> {
        let feed = self.feed.as_ref()?;
        if let Some(hit) = feed.take(key) {
            return Some(hit);
        }
        // Ended meanwhile: what it verified is recorded now.
        self.lookup_record(key)
    }

    /// The write stopped resuming (`chunked_resume.rs`): a running
    /// seeding need not compute hash states any more.
    pub(crate) fn resume_ended(&self) {
        if let Some(f) = &self.feed {
            f.end_resume();
        }
    }

    /// The record of `key`, its compressed length and its blob's path.
    fn find(&self, key: &[u8; 32]) -> Option<(Hit<()>, u64, PathBuf)> {
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
        let path = (self.blob_path)(rec.blob)?;
        let hit = Hit {
            blob: rec.blob.to_string(),
            offset: rec.offset,
            crc: rec.crc,
            ulen: rec.ulen,
            ucrc: rec.ucrc,
            tar_off: rec.tar_off,
            states: rec.states,
            bytes: (),
        };
        Some((hit, rec.len, path))
    }

    /// The compressed bytes of the chunk with this key, if a record points
    /// to bytes that are still there and match its CRC.
    fn lookup_record(&self, key: &[u8; 32]) -> Option<Hit> {
        let (hit, len, path) = self.find(key)?;
        let mut blob = File::open(path).ok()?;
        // Read into spare capacity: zeroing up to 4 MiB first, only for
        // the read to overwrite it, cost 3 % of a one-file rebuild.
        blob.seek(SeekFrom::Start(hit.offset)).ok()?;
        let mut bytes = Vec::with_capacity(len as usize);
        blob.take(len).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 != len {
            return None;
        }
        (crc32fast::hash(&bytes) == hit.crc).then(|| hit.with_bytes(bytes))
    }

    /// As [`ChunkCache::lookup`], but the bytes stay in the blob: the hit
    /// is the range they fill there, with its last (at most 64) bytes. Its
    /// CRC is checked through `reader`'s buffer, without a copy of the
    /// range in memory (`blobrange.rs` says why).
    pub(crate) fn lookup_range(
        &self,
        key: &[u8; 32],
        reader: &mut RangeReader,
    ) -> Option<(Hit<BlobRange>, Vec<u8>)> {
        let (hit, len, path) = self.find(key)?;
        let file = match &reader.open {
            Some((blob, f)) if *blob == hit.blob => f.clone(),
            _ => {
                let f = Arc::new(File::open(path).ok()?);
                reader.open = Some((hit.blob.clone(), f.clone()));
                f
            }
        };
        let range = BlobRange::new(file, hit.offset, usize::try_from(len).ok()?);
        let (crc, tail) = range.check(&mut reader.buf).ok()?;
        (crc == hit.crc).then(|| (hit.with_bytes(range), tail))
    }

    /// Whether a record for `key` exists (it may still miss on lookup).
    pub(crate) fn has_record(&self, key: &[u8; 32]) -> bool {
        self.record_path(key).exists()
    }

    /// Records `chunks` as living in the blob `digest`.
    pub(crate) fn record(&self, digest: &str, chunks: &[NewChunk]) -> io::Result<()> {
        for c in chunks {
            let (tar_state, blob_state) = match &c.states {
                Some((t, b)) => (state_hex(t), state_hex(b)),
                None => ("-".to_string(), "-".to_string()),
            };
            let body = format!(
                "{RECORD_VERSION} {digest} {} {} {} {} {} {} {tar_state} {blob_state}",
                c.offset, c.len, c.crc, c.ulen, c.ucrc, c.tar_off
            );
            let line = format!("{body} {}\n", crc32fast::hash(body.as_bytes()));
            write_in_place(&self.record_path(&c.key), line.as_bytes()).map_err(|e| {
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
    /// Notes that chunks of another store's layer (the blob `digest`) were
    /// seeded here, under the keys of their bytes alone: only then do
    /// writers look chunks up by that second key. The note names the blob,
    /// so prune's record sweep drops it with the blob.
    pub(crate) fn mark_seeded(&self, digest: &str) -> io::Result<()> {
        self.write_aside(
            "seeded",
            format!("rbuild-chunk-seeded {digest}\n").as_bytes(),
        )
    }

    /// Whether [`ChunkCache::mark_seeded`] was noted (and not swept).
    pub(crate) fn has_seeded(&self) -> bool {
        self.dir.join("seeded").exists()
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

/// A record over the old one, in place: its bytes from the start, then cut
/// to their length (usually the old one: the same fields, other numbers).
/// No fsync: a record lost or torn by a crash is only a cache miss (the
/// CRC and the length check catch a torn one).
fn write_in_place(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)?;
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)
}

/// No fsync: as for records.
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
    ulen: u64,
    ucrc: u32,
    tar_off: u64,
    states: Option<([u32; 8], [u32; 8])>,
}

fn parse_record(text: &str) -> Option<Record<'_>> {
    let (body, line_crc) = text.strip_suffix('\n')?.rsplit_once(' ')?;
    if line_crc.parse::<u32>().ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let mut words = body.split(' ');
    if words.next()? != RECORD_VERSION {
        return None;
    }
    let mut rec = Record {
        blob: words.next()?,
        offset: words.next()?.parse().ok()?,
        len: words.next()?.parse().ok()?,
        crc: words.next()?.parse().ok()?,
        ulen: words.next()?.parse().ok()?,
        ucrc: words.next()?.parse().ok()?,
        tar_off: words.next()?.parse().ok()?,
        states: None,
    };
    let (t, b) = (words.next()?, words.next()?);
    if (t, b) != ("-", "-") {
        rec.states = Some((parse_state(t)?, parse_state(b)?));
    }
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

    fn bytes_of(h: Option<Hit>) -> Option<Vec<u8>> {
        h.map(|h| h.bytes)
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
            ucrc: crc32fast::hash(b"whatever"),
            tar_off: 512,
            states: Some(([1, 2, 3, 4, 5, 6, 7, 8], [9; 8])),
        };
        assert!(c.lookup(&key).is_none());
        c.record("sha256:abc", std::slice::from_ref(&chunk))
            .unwrap();
        let hit = c.lookup(&key).unwrap();
        assert_eq!(hit.bytes, b"CHUNK");
        // The same hit left in the blob: its range, checked, and its tail.
        let mut reader = RangeReader::default();
        let (ranged, tail) = c.lookup_range(&key, &mut reader).unwrap();
        assert_eq!(
            (ranged.offset, ranged.bytes.len(), ranged.crc),
            (6, 5, hit.crc)
        );
        assert_eq!(tail, b"CHUNK");
        let mut out = Vec::new();
        ranged.bytes.write_to(&mut out).unwrap();
        assert_eq!(out, b"CHUNK");
        assert_eq!((hit.offset, hit.ulen, hit.tar_off), (6, 8, 512));
        assert_eq!(hit.states, chunk.states);
        // No temp is left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // A record pointing at other bytes (wrong offset) is a miss.
        let bad = NewChunk {
            offset: 5,
            ..chunk.clone()
        };
        c.record("sha256:abc", &[bad]).unwrap();
        assert!(c.lookup(&key).is_none());
        assert!(c.lookup_range(&key, &mut reader).is_none());
        // So is one whose blob is gone, or one past the blob's end.
        c.record("sha256:gone", std::slice::from_ref(&chunk))
            .unwrap();
        assert!(c.lookup(&key).is_none());
        let past = NewChunk {
            offset: 100,
            ..chunk.clone()
        };
        c.record("sha256:abc", &[past]).unwrap();
        assert!(c.lookup(&key).is_none());
        // A record without hash states is still a hit (and, shorter than
        // the record it is written over in place, cut to its length).
        let plain = NewChunk {
            states: None,
            ..chunk.clone()
        };
        c.record("sha256:abc", &[plain]).unwrap();
        assert_eq!(bytes_of(c.lookup(&key)).as_deref(), Some(&b"CHUNK"[..]));
        // A record whose line was changed (a flipped state digit) misses.
        let path = c.record_path(&key);
        c.record("sha256:abc", std::slice::from_ref(&chunk))
            .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replacen(" 00000001", " 00000003", 1)).unwrap();
        assert!(c.lookup(&key).is_none());
        // A different codec string is a different key; so is a file range
        // instead of the same bytes.
        assert_ne!(key, ChunkCache::key("gzip-9", b"whatever"));
        let mut h = KeyHasher::new("gzip-6");
        h.file(&[0; 32], 0, 8);
        assert_ne!(key, h.finish());
    }

    #[test]
    fn record_parser_rejects_junk() {
        let line = |body: &str| format!("{body} {}\n", crc32fast::hash(body.as_bytes()));
        let good = line("rbuild-chunk-v2 sha256:a 1 2 3 4 5 6 - -");
        assert!(parse_record(&good).is_some());
        assert_eq!(chunk_record_blob(&good), Some("sha256:a"));
        let st = "0".repeat(64);
        assert!(parse_record(&line(&format!(
            "rbuild-chunk-v2 sha256:a 1 2 3 4 5 6 {st} {st}"
        )))
        .is_some());
        for junk in [
            String::new(),
            good.trim_end().to_string(),
            line("rbuild-chunk-v1 sha256:a 1 2 3 4 5 6 - -"),
            line("rbuild-chunk-v2 sha256:a 1 2 3 4 5 6 -"),
            line("rbuild-chunk-v2 sha256:a 1 2 3 4 5 6 - - 7"),
            line("rbuild-chunk-v2 sha256:a -1 2 3 4 5 6 - -"),
            line("rbuild-chunk-v2 sha256:a 1 2 99999999999 4 5 6 - -"),
            line(&format!("rbuild-chunk-v2 sha256:a 1 2 3 4 5 6 {st} -")),
            line("rbuild-chunk-v2 sha256:a 1 2 3 4 5 6 xyz xyz"),
            good.replace(" 1 2 ", " 1 3 "),
        ] {
            assert!(parse_record(&junk).is_none(), "{junk:?}");
        }
    }
}
