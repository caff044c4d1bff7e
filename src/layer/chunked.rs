//! Chunked compression: the tar stream is cut into chunks at tar entry
//! boundaries chosen by content (a hash of the entry's path), each chunk is
//! compressed on its own by a worker thread — or copied from the chunk
//! cache — and the pieces are written in order as one stream:
//!
//! - gzip: one member; each chunk is raw deflate ended by a sync flush
//!   (non-final, byte-aligned, as pigz does), then a final empty block, the
//!   CRC-32 combined from the chunks' CRCs, and ISIZE.
//! - zstd: each chunk is a complete frame (with content size and checksum);
//!   concatenated frames are one valid zstd stream.
//!
//! Why entry boundaries and path hashes: the tar stream is sorted and
//! deterministic, so after a one-file change every chunk but the changed
//! file's is byte-identical to last time — as long as the cut points do not
//! move. A cut depends only on the entry's path and the chunk's length
//! (at least [`MIN_CHUNK`]), so inserting or growing a file moves at most
//! the cuts up to the next path that matches. Entries of [`MAX_CHUNK`] or
//! more start a chunk of their own and are cut every `MAX_CHUNK` bytes from
//! their start, so a big file's pieces do not depend on what precedes it.
//!
//! The bytes written depend only on the tar stream, the codec and level:
//! not on the thread count, nor on whether chunks came from the cache
//! (the cache key names the codec, level and library version).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use flate2::Compress;

use super::chunkcache::{ChunkCache, NewChunk};
use super::pgzip::deflate_block;
use super::tarwrite::TarSink;

/// A chunk ends at the first matching entry boundary past this size.
pub(crate) const MIN_CHUNK: usize = 512 * 1024;
/// A chunk ends at the first entry boundary past this size, and entries this
/// big are cut into pieces of this size.
pub(crate) const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// One entry boundary in this many (by path hash) may end a chunk.
const CUT_ONE_IN: u64 = 16;
/// gzip header: magic, CM=deflate, no flags, mtime 0, XFL 0, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty fixed-Huffman deflate block: ends the deflate stream
/// after the chunks' sync-flushed (non-final) blocks.
const DEFLATE_END: [u8; 2] = [0x03, 0x00];

/// How chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Gzip(u32),
    Zstd(i32),
}

impl Codec {
    /// Names the codec, level and library for the chunk cache key.
    fn cache_tag(self) -> String {
        match self {
            // flate2 is built with its zlib-rs backend (Cargo.toml); the
            // crate version pins the deflate implementation.
            Codec::Gzip(level) => format!("gzip-{level}-zlib-rs-flate2-1"),
            Codec::Zstd(level) => {
                format!("zstd-{level}-{}", zstd::zstd_safe::version_number())
            }
        }
    }
}

/// How a layer's chunks were produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Chunks in the blob.
    pub chunks: u64,
    /// Chunks copied from the chunk cache.
    pub reused: u64,
    /// Chunks compressed now.
    pub compressed: u64,
    /// Uncompressed bytes of the reused chunks.
    pub reused_bytes: u64,
}

struct Job {
    data: Vec<u8>,
    reply: Sender<io::Result<Done>>,
}

struct Done {
    bytes: Vec<u8>,
    ulen: u64,
    /// CRC-32 of the uncompressed chunk (gzip's trailer needs it).
    crc: crc32fast::Hasher,
    /// Set when the chunk was compressed now and should be recorded.
    key: Option<[u8; 32]>,
    reused: bool,
}

/// A [`TarSink`] that compresses what it is given in chunks.
pub(crate) struct ChunkedWriter<W: Write> {
    out: Option<W>,
    codec: Codec,
    chunk: Vec<u8>,
    /// Inside an entry of `MAX_CHUNK` bytes or more: cut every `MAX_CHUNK`.
    in_big_entry: bool,
    jobs: Option<Sender<Job>>,
    pending: VecDeque<Receiver<io::Result<Done>>>,
    max_pending: usize,
    workers: Vec<JoinHandle<()>>,
    crc: crc32fast::Hasher,
    total_in: u64,
    /// Bytes written to `out` so far (where the next chunk starts).
    offset: u64,
    new_chunks: Vec<NewChunk>,
    stats: ChunkStats,
}

/// What [`ChunkedWriter::finish`] hands back.
pub(crate) struct Finished<W> {
    pub out: W,
    pub stats: ChunkStats,
    /// Chunks compressed now, with their place in the blob.
    pub new_chunks: Vec<NewChunk>,
}

impl<W: Write> ChunkedWriter<W> {
    /// `threads == 0` means one per available core.
    pub(crate) fn new(
        mut out: W,
        codec: Codec,
        threads: usize,
        cache: Option<ChunkCache>,
    ) -> io::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let mut offset = 0;
        if let Codec::Gzip(_) = codec {
            out.write_all(&GZIP_HEADER)?;
            offset = GZIP_HEADER.len() as u64;
        }
        let cache = cache.map(Arc::new);
        let (tx, rx) = bounded::<Job>(threads);
        let workers = (0..threads)
            .map(|i| {
                let (rx, cache) = (rx.clone(), cache.clone());
                std::thread::Builder::new()
                    .name(format!("chunk-{i}"))
                    .spawn(move || worker(rx, codec, cache))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ChunkedWriter {
            out: Some(out),
            codec,
            chunk: Vec::with_capacity(MAX_CHUNK),
            in_big_entry: false,
            jobs: Some(tx),
            pending: VecDeque::new(),
            // Enough chunks in flight to keep every worker busy while the
            // oldest is written; this bounds memory (≤ 8 MiB a chunk) too.
            max_pending: threads * 2,
            workers,
            crc: crc32fast::Hasher::new(),
            total_in: 0,
            offset,
            new_chunks: Vec::new(),
            stats: ChunkStats::default(),
        })
    }

    fn out(&mut self) -> io::Result<&mut W> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("chunk writer already finished"))
    }

    /// Waits for the oldest chunk and writes it out.
    fn drain_one(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = rx
            .recv()
            .map_err(|_| io::Error::other("a compression worker thread died"))??;
        self.crc.combine(&done.crc);
        self.out()?.write_all(&done.bytes)?;
        let len = done.bytes.len() as u64;
        if let Some(key) = done.key {
            self.new_chunks.push(NewChunk {
                key,
                offset: self.offset,
                len,
                crc: crc32fast::hash(&done.bytes),
            });
        }
        self.offset += len;
        self.stats.chunks += 1;
        if done.reused {
            self.stats.reused += 1;
            self.stats.reused_bytes += done.ulen;
        } else {
            self.stats.compressed += 1;
        }
        Ok(())
    }

    /// Ends the current chunk (if any) and hands it to a worker.
    fn cut(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        while self.pending.len() >= self.max_pending {
            self.drain_one()?;
        }
        let data = std::mem::replace(&mut self.chunk, Vec::with_capacity(MAX_CHUNK));
        let (reply, rx) = bounded(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("chunk writer already finished"))?
            .send(Job { data, reply })
            .map_err(|_| io::Error::other("compression worker threads have exited"))?;
        self.pending.push_back(rx);
        Ok(())
    }

    /// Compresses what is left, ends the stream and returns the sink.
    pub(crate) fn finish(mut self) -> io::Result<Finished<W>> {
        self.cut()?;
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        self.jobs = None;
        if let Codec::Gzip(_) = self.codec {
            let crc = self.crc.clone().finalize();
            // ISIZE is the length modulo 2^32 (RFC 1952).
            let isize = self.total_in as u32;
            let out = self.out()?;
            out.write_all(&DEFLATE_END)?;
            out.write_all(&crc.to_le_bytes())?;
            out.write_all(&isize.to_le_bytes())?;
        }
        self.out()?.flush()?;
        let out = self
            .out
            .take()
            .ok_or_else(|| io::Error::other("chunk writer already finished"))?;
        Ok(Finished {
            out,
            stats: self.stats,
            new_chunks: std::mem::take(&mut self.new_chunks),
        })
    }
}

fn join_workers(workers: &mut Vec<JoinHandle<()>>) {
    for w in workers.drain(..) {
        let _ = w.join();
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = if self.in_big_entry {
            // Pieces of a big entry: cut every MAX_CHUNK from its start.
            let n = data.len().min(MAX_CHUNK - self.chunk.len());
            self.chunk.extend_from_slice(&data[..n]);
            if self.chunk.len() == MAX_CHUNK {
                self.cut()?;
            }
            n
        } else {
            self.chunk.extend_from_slice(data);
            data.len()
        };
        self.total_in += n as u64;
        Ok(n)
    }

    /// Chunks are only complete at entry boundaries; flushing just passes through.
    fn flush(&mut self) -> io::Result<()> {
        self.out()?.flush()
    }
}

impl<W: Write> TarSink for ChunkedWriter<W> {
    fn entry_start(&mut self, size: u64) -> io::Result<()> {
        if size >= MAX_CHUNK as u64 {
            self.cut()?;
            self.in_big_entry = true;
        }
        Ok(())
    }

    fn entry_end(&mut self, path: &str) -> io::Result<()> {
        self.in_big_entry = false;
        let len = self.chunk.len();
        if len >= MAX_CHUNK || (len >= MIN_CHUNK && path_hash(path).is_multiple_of(CUT_ONE_IN)) {
            self.cut()?;
        }
        Ok(())
    }
}

impl<W: Write> Drop for ChunkedWriter<W> {
    fn drop(&mut self) {
        self.jobs = None;
        self.pending.clear();
        join_workers(&mut self.workers);
    }
}

/// FNV-1a with a final mix: stable across Rust versions (the cut points
/// must be, or every upgrade would miss the whole cache).
fn path_hash(path: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV's low bits alone are weak.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn worker(rx: Receiver<Job>, codec: Codec, cache: Option<Arc<ChunkCache>>) {
    let tag = codec.cache_tag();
    let mut zstd = None;
    for job in rx {
        let result = process(&job.data, codec, &tag, cache.as_deref(), &mut zstd);
        // The receiver is gone only when the writer was dropped mid-stream.
        let _ = job.reply.send(result);
    }
}

fn process(
    data: &[u8],
    codec: Codec,
    tag: &str,
    cache: Option<&ChunkCache>,
    zstd: &mut Option<zstd::bulk::Compressor<'static>>,
) -> io::Result<Done> {
    let mut crc = crc32fast::Hasher::new();
    if let Codec::Gzip(_) = codec {
        crc.update(data);
    }
    let key = cache.map(|_| ChunkCache::key(tag, data));
    if let (Some(cache), Some(key)) = (cache, &key) {
        if let Some(bytes) = cache.lookup(key) {
            return Ok(Done {
                bytes,
                ulen: data.len() as u64,
                crc,
                key: None,
                reused: true,
            });
        }
    }
    let bytes = match codec {
        Codec::Gzip(level) => {
            // A fresh stream per chunk: its bytes must not depend on which
            // chunks this worker compressed before.
            let mut c = Compress::new(flate2::Compression::new(level.min(9)), false);
            deflate_block(&mut c, data, &[], false)?.deflated
        }
        Codec::Zstd(level) => {
            let z = match zstd {
                Some(z) => z,
                None => zstd.insert(zstd_compressor(level)?),
            };
            z.compress(data)?
        }
    };
    Ok(Done {
        bytes,
        ulen: data.len() as u64,
        crc,
        key,
        reused: false,
    })
}

/// One compressor per worker, reused: each `compress` call is a complete
/// frame with the content size and a checksum, independent of earlier ones.
fn zstd_compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut z = zstd::bulk::Compressor::new(level)?;
    z.include_checksum(true)?;
    z.include_contentsize(true)?;
    Ok(z)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;
    use std::path::Path;

    use super::*;
    use crate::layer::{
        write_layer, BlobResolver, Compression, EntryKind, FileSource, LayerEntry, LayerInfo,
        Timespec, WriteOptions,
    };

    /// Text-like, compressible, different per seed (xorshift over a word list).
    fn text(seed: u64, len: usize) -> Vec<u8> {
        const WORDS: [&str; 8] = ["fn ", "let ", "x", "= ", "Some(", ");\n", "self.", "0"];
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            out.extend_from_slice(WORDS[(s % 8) as usize].as_bytes());
            out.extend_from_slice(format!("{}", s % 97).as_bytes());
        }
        out.truncate(len);
        out
    }

    fn file(path: &str, data: Vec<u8>) -> LayerEntry {
        LayerEntry {
            path: path.into(),
            kind: EntryKind::File(FileSource::Bytes(data)),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Timespec::new(1_700_000_000, 0),
            xattrs: vec![],
        }
    }

    /// ~10 MB: 400 files of 20 KB around one 9 MB file (cut into pieces).
    fn tree() -> Vec<LayerEntry> {
        let mut v: Vec<LayerEntry> = (0..400)
            .map(|i| file(&format!("src/f{i:04}.rs"), text(i, 20_000)))
            .collect();
        v.push(file("src/f0200big", text(9999, 9 << 20)));
        v
    }

    fn write(
        entries: Vec<LayerEntry>,
        c: Compression,
        threads: usize,
        cache: Option<&ChunkCache>,
    ) -> (LayerInfo, Vec<u8>) {
        let mut out = Vec::new();
        let opts = WriteOptions {
            compression: c,
            threads,
            chunk_cache: cache.cloned(),
            ..Default::default()
        };
        let info = write_layer(entries, &mut out, &opts).unwrap();
        (info, out)
    }

    fn decode(c: Compression, bytes: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        match c {
            Compression::Gzip { .. } => {
                flate2::read::GzDecoder::new(bytes)
                    .read_to_end(&mut back)
                    .unwrap();
            }
            Compression::Zstd { .. } => back = zstd::stream::decode_all(bytes).unwrap(),
            Compression::None => back = bytes.to_vec(),
        };
        back
    }

    const CODECS: [Compression; 2] = [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ];

    /// A cache whose blobs are files named by digest hex in `root/blobs`.
    fn cache(root: &Path) -> ChunkCache {
        for d in ["chunks", "tmp", "blobs"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let blobs = root.join("blobs");
        let resolver: BlobResolver =
            Arc::new(move |d: &str| Some(blobs.join(d.strip_prefix("sha256:")?)));
        ChunkCache::new(root.join("chunks"), root.join("tmp"), resolver)
    }

    fn store_blob(root: &Path, info: &LayerInfo, bytes: &[u8]) {
        let hex = info.digest.strip_prefix("sha256:").unwrap();
        fs::write(root.join("blobs").join(hex), bytes).unwrap();
    }

    #[test]
    fn chunked_streams_decode_to_the_tar_whatever_the_threads() {
        let (plain, tar) = write(tree(), Compression::None, 1, None);
        for c in CODECS {
            let (one, a) = write(tree(), c, 1, None);
            let (three, b) = write(tree(), c, 3, None);
            assert_eq!(a, b, "{c:?}: output depends on the thread count");
            assert_eq!(one, three);
            assert!(one.chunks.chunks >= 8, "{c:?}: {:?}", one.chunks);
            assert_eq!(one.chunks.compressed, one.chunks.chunks);
            assert_eq!(one.diff_id, plain.diff_id);
            assert_eq!(one.uncompressed_size, tar.len() as u64);
            assert_eq!(decode(c, &a), tar, "{c:?}");
            assert!(a.len() < tar.len() / 2, "{c:?}: {} bytes", a.len());
        }
    }

    #[test]
    fn cut_points_follow_entries_and_big_files_are_split_from_their_start() {
        let mut w = ChunkedWriter::new(Vec::new(), Codec::Zstd(1), 1, None).unwrap();
        let mut cuts = Vec::new();
        let mut pos = 0u64;
        for e in tree() {
            let EntryKind::File(FileSource::Bytes(data)) = &e.kind else {
                unreachable!()
            };
            w.entry_start(data.len() as u64).unwrap();
            w.write_all(data).unwrap();
            w.entry_end(&e.path).unwrap();
            pos += data.len() as u64;
            cuts.push((w.total_in - w.chunk.len() as u64, pos));
        }
        let done = w.finish().unwrap();
        // The big file (index 400) starts a chunk: the chunk start seen
        // after it is a multiple of MAX_CHUNK from the file's start.
        let (start_after_big, end_big) = cuts[400];
        let big_start = end_big - (9 << 20);
        assert!(start_after_big >= big_start);
        assert_eq!((start_after_big - big_start) % MAX_CHUNK as u64, 0);
        assert!(done.stats.chunks >= 10, "{:?}", done.stats);
    }

    #[test]
    fn warm_cache_reuses_unchanged_chunks_and_changes_no_byte() {
        for c in CODECS {
            let dir = tempfile::tempdir().unwrap();
            let cache = cache(dir.path());
            let (first, bytes) = write(tree(), c, 2, Some(&cache));
            assert_eq!(first.chunks.reused, 0);
            store_blob(dir.path(), &first, &bytes);
            // Same entries again: everything comes from the cache, and the
            // blob is byte-identical.
            let (again, again_bytes) = write(tree(), c, 2, Some(&cache));
            assert_eq!(again.chunks.reused, again.chunks.chunks, "{c:?}");
            assert_eq!(again_bytes, bytes);

            // One file in the middle changed, one file inserted before the
            // big one: only the chunks around them are compressed again.
            let mut changed = tree();
            changed[150] = file("src/f0150.rs", text(424242, 21_000));
            changed.push(file("src/f0199x.rs", text(777, 5_000)));
            let (warm, warm_bytes) = write(changed.clone(), c, 2, Some(&cache));
            let (cold, cold_bytes) = write(changed.clone(), c, 2, None);
            assert_eq!(
                warm_bytes, cold_bytes,
                "{c:?}: a warm cache changed the blob"
            );
            assert_eq!(warm.digest, cold.digest);
            let s = warm.chunks;
            assert!(
                s.compressed <= 4 && s.reused + 4 >= s.chunks,
                "{c:?}: {s:?}"
            );
            assert!(s.reused_bytes > 15 << 20 >> 1, "{c:?}: {s:?}");
            let (_, tar) = write(changed, Compression::None, 1, None);
            assert_eq!(decode(c, &warm_bytes), tar);
        }
    }

    #[test]
    fn a_different_level_does_not_reuse_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let (first, bytes) = write(tree(), Compression::Gzip { level: 6 }, 2, Some(&cache));
        store_blob(dir.path(), &first, &bytes);
        let (other, _) = write(tree(), Compression::Gzip { level: 1 }, 2, Some(&cache));
        assert_eq!(other.chunks.reused, 0);
        let (z, _) = write(tree(), Compression::Zstd { level: 6 }, 2, Some(&cache));
        assert_eq!(z.chunks.reused, 0);
    }

    #[test]
    fn path_hash_is_stable() {
        // Cut points are part of the cache's contract: pin the hash.
        assert_eq!(path_hash(""), 0xf52a_15e9_a9b5_e89b);
        assert_ne!(path_hash("a"), path_hash("b"));
    }
}
