//! Chunked compression: the tar stream is cut into chunks at tar entry
//! boundaries chosen by content (a hash of the entry's path), each chunk is
//! compressed on its own by a worker thread — or copied from the chunk
//! cache — and the pieces are written in order as one stream:
//!
//! - gzip: each chunk is a complete gzip member (header, deflate, CRC-32,
//!   ISIZE) made by libdeflate, which compresses whole buffers in less CPU
//!   than zlib-rs at the same level (1.3-1.9x) but cannot end a block with
//!   a sync flush; concatenated members are one valid gzip file (RFC 1952
//!   §2.2), as eStargz layers are (docs/compression.md).
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
//! The sha256 of the tar (diff_id) and of the blob (digest), both over the
//! whole stream, are computed on a thread of their own, so the thread that
//! reads files and writes the tar does only that.
//!
//! The bytes written depend only on the tar stream, the codec and level:
//! not on the thread count, nor on whether chunks came from the cache
//! (the cache key names the codec, level and library version).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::chunkcache::{ChunkCache, KeyHasher, NewChunk};
use super::tarwrite::TarSink;
use hashing::{hash_streams, send_hash, HashMsg, Hashes};
use libdeflater::CompressionLvl;
pub(crate) use out::{ChunkOut, Piece, ToWriterThread, WRITE_QUEUE_PIECES};
use resume::Resume;

#[path = "chunked_hash.rs"]
mod hashing;
#[path = "chunked_out.rs"]
mod out;
#[path = "chunked_resume.rs"]
mod resume;

/// A chunk ends at the first matching entry boundary past this size.
pub(crate) const MIN_CHUNK: usize = 512 * 1024;
/// A chunk ends at the first entry boundary past this size, and entries this
/// big are cut into pieces of this size.
pub(crate) const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// Uncompressed bytes handed to workers but not yet written out. Deep
/// enough that a worker or the writer losing the CPU for a while (a loaded
/// machine) does not stall the others; small enough to bound memory.
/// At most this, and at most a chunk per worker and one more (12 MiB with
/// two workers): each pending chunk of big files is a 4-8 MiB buffer
/// resident until written, and more of them than workers only wait.
const PENDING_BYTES: usize = 16 << 20;
/// Chunk buffers kept for reuse once the worker and the hasher are done
/// with them: a fresh 4 MiB buffer per chunk page-faulted on every page the
/// producing thread filled (about 5 % of a one-file rebuild's CPU time).
/// Two are enough to keep the producer off fresh pages; each one kept is
/// up to 4 MiB of resident memory.
const SPARE_BUFFERS: usize = 2;
/// One entry boundary in this many (by path hash) may end a chunk.
const CUT_ONE_IN: u64 = 16;
/// The libdeflate built into libdeflate-sys (its C source, bundled and
/// compiled by the crate): part of the chunk cache key, since another
/// version may compress the same chunk to other bytes. A unit test checks
/// it against Cargo.lock, so an upgrade cannot forget it.
const LIBDEFLATE_VERSION: &str = "1.26";

/// How chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Gzip(u32),
    Zstd(i32),
}

impl Codec {
    /// Names the codec, level and library for the chunk cache key.
    pub(crate) fn cache_tag(self) -> String {
        match self {
            // "member": a chunk is a whole gzip member (records of the
            // older raw sync-flushed deflate chunks had another tag).
            Codec::Gzip(level) => format!("gzip-member-{level}-libdeflate-{LIBDEFLATE_VERSION}"),
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
    /// Of the reused chunks, those at the start of the stream that were
    /// resumed: their files neither read nor hashed again.
    pub resumed: u64,
}

/// A range of a chunk that is the content of a file known by its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FilePart {
    start: usize,
    len: usize,
    digest: [u8; 32],
    file_off: u64,
}

/// The chunk key of `data` with `files` (sorted, disjoint) standing for
/// their ranges: literal runs between them (see `KeyHasher`).
fn chunk_key(tag: &str, data: &[u8], files: &[FilePart]) -> [u8; 32] {
    let mut h = KeyHasher::new(tag);
    let mut at = 0;
    for f in files {
        if f.start > at {
            h.literal(&data[at..f.start]);
        }
        h.file(&f.digest, f.file_off, f.len as u64);
        at = f.start + f.len;
    }
    if data.len() > at {
        h.literal(&data[at..]);
    }
    h.finish()
}

/// Appends a file range, merged with the previous one when contiguous.
fn push_file_part(parts: &mut Vec<FilePart>, part: FilePart) {
    if let Some(last) = parts.last_mut() {
        if last.digest == part.digest
            && last.start + last.len == part.start
            && last.file_off + last.len as u64 == part.file_off
        {
            last.len += part.len;
            return;
        }
    }
    parts.push(part);
}

struct Job {
    data: Arc<Vec<u8>>,
    files: Vec<FilePart>,
    /// The key, when the producer already computed it.
    key: Option<[u8; 32]>,
    reply: Sender<io::Result<Done>>,
}

struct Done {
    bytes: Vec<u8>,
    /// CRC-32 of `bytes` (the chunk cache checks it when reusing them).
    bytes_crc: u32,
    ulen: u64,
    /// CRC-32 of the uncompressed chunk (the chunk record keeps it, and a
    /// hit must match it).
    crc: crc32fast::Hasher,
    /// The chunk's key, when there is a cache to record it in.
    key: Option<[u8; 32]>,
    reused: bool,
}

/// A chunk handed to a worker: its result, uncompressed length, index in
/// the stream and offset in the tar.
struct Pending {
    rx: Receiver<io::Result<Done>>,
    ulen: usize,
    index: u64,
    tar_off: u64,
}

/// A [`TarSink`] that compresses what it is given in chunks.
pub(crate) struct ChunkedWriter<W: ChunkOut> {
    out: Option<W>,
    codec: Codec,
    chunk: Vec<u8>,
    /// Inside an entry of `MAX_CHUNK` bytes or more: cut every `MAX_CHUNK`.
    in_big_entry: bool,
    /// File ranges of `chunk` known by digest, and the file whose content
    /// the next bytes written are (digest, offset, bytes left).
    files: Vec<FilePart>,
    announced: Option<([u8; 32], u64, u64)>,
    /// The key of `chunk` when already computed (a resumed description).
    next_key: Option<[u8; 32]>,
    jobs: Option<Sender<Job>>,
    /// Chunks in flight, oldest first.
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// The bound on `pending_bytes` (see [`PENDING_BYTES`]).
    pending_max: usize,
    workers: Vec<JoinHandle<()>>,
    total_in: u64,
    /// Bytes written to `out` so far (where the next chunk starts).
    offset: u64,
    /// Tar bytes in chunks cut so far, and how many chunks.
    cut_bytes: u64,
    cut_count: u64,
    /// Every chunk, by index, to record as living in this blob (the hash
    /// states of those not resumed come from the hashing thread at the
    /// end). Reused and resumed chunks are recorded again too, so the
    /// newest blob holds a whole chain for the next rebuild to resume.
    new_chunks: Vec<(u64, NewChunk)>,
    cache: Option<Arc<ChunkCache>>,
    tag: String,
    /// While the stream still matches an earlier layer's start: chunks
    /// described but not read (see `chunked_resume.rs`).
    resume: Option<Resume>,
    stats: ChunkStats,
    /// The sha256 of the tar and of the blob are computed on a thread of
    /// their own: on the producing thread they were the bottleneck.
    hashes: Option<Sender<HashMsg>>,
    hasher: Option<JoinHandle<Hashes>>,
    /// Chunk buffers handed back by whichever of worker and hasher used
    /// them last (see [`give_back`]).
    spare: Receiver<Vec<u8>>,
}

/// What [`ChunkedWriter::finish`] hands back.
pub(crate) struct Finished<W> {
    pub out: W,
    /// `sha256:` of the tar stream, and its length.
    pub diff_id: String,
    pub tar_size: u64,
    /// `sha256:` of the compressed stream, and its length.
    pub digest: String,
    pub size: u64,
    pub stats: ChunkStats,
    /// Every chunk with a key, with its place in the blob and hash states
    /// (recorded, so the next rebuild reuses or resumes from this blob).
    pub new_chunks: Vec<NewChunk>,
    /// The same chunks, in order: the blob's chunk index (`chunkseed`).
    pub index: Vec<NewChunk>,
}

impl<W: ChunkOut> ChunkedWriter<W> {
    /// `threads == 0` means one per available core.
    pub(crate) fn new(
        out: W,
        codec: Codec,
        threads: usize,
        cache: Option<ChunkCache>,
    ) -> io::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let (hash_tx, hash_rx) = bounded::<HashMsg>(8);
        let (spare_tx, spare) = bounded::<Vec<u8>>(SPARE_BUFFERS);
        let hasher_spare = spare_tx.clone();
        let hasher = std::thread::Builder::new()
            .name("layer-sha256".into())
            .spawn(move || hash_streams(hash_rx, hasher_spare))?;
        let cache = cache.map(Arc::new);
        let resume = cache.as_ref().map(|_| Resume::new());
        let (tx, rx) = bounded::<Job>(64);
        let workers = (0..threads)
            .map(|i| {
                let (rx, cache, spare) = (rx.clone(), cache.clone(), spare_tx.clone());
                std::thread::Builder::new()
                    .name(format!("chunk-{i}"))
                    .spawn(move || worker(rx, codec, cache, spare))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let w = ChunkedWriter {
            out: Some(out),
            codec,
            chunk: Vec::with_capacity(MAX_CHUNK),
            in_big_entry: false,
            files: Vec::new(),
            announced: None,
            next_key: None,
            jobs: Some(tx),
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_max: ((threads + 1) * MAX_CHUNK).min(PENDING_BYTES),
            workers,
            total_in: 0,
            offset: 0,
            cut_bytes: 0,
            cut_count: 0,
            new_chunks: Vec::new(),
            cache,
            tag: codec.cache_tag(),
            resume,
            stats: ChunkStats::default(),
            hashes: Some(hash_tx),
            hasher: Some(hasher),
            spare,
        };
        Ok(w)
    }

    /// The current chunk's length, described or real.
    fn chunk_len(&self) -> usize {
        match &self.resume {
            Some(r) => r.len(),
            None => self.chunk.len(),
        }
    }

    fn out(&mut self) -> io::Result<&mut W> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("chunk writer already finished"))
    }

    fn hash(&self, msg: HashMsg) -> io::Result<()> {
        let tx = self
            .hashes
            .as_ref()
            .ok_or_else(|| io::Error::other("chunk writer already finished"))?;
        send_hash(tx, msg)
    }

    /// Waits for the oldest chunk and writes it out.
    fn drain_one(&mut self) -> io::Result<()> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        self.pending_bytes -= p.ulen;
        let done =
            p.rx.recv()
                .map_err(|_| io::Error::other("a compression worker thread died"))??;
        let len = done.bytes.len() as u64;
        let bytes = Arc::new(done.bytes);
        self.out()?.put(bytes.clone())?;
        if let Some(key) = done.key {
            let chunk = NewChunk {
                key,
                offset: self.offset,
                len,
                crc: done.bytes_crc,
                ulen: done.ulen,
                ucrc: done.crc.clone().finalize(),
                tar_off: p.tar_off,
                states: None,
            };
            self.new_chunks.push((p.index, chunk));
        }
        self.hash(HashMsg::Chunk(p.index, bytes))?;
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
        if self.resume.is_some() && self.resume_cut()? {
            return Ok(());
        }
        if self.chunk.is_empty() {
            return Ok(());
        }
        // Write what is done without waiting, then wait only if over budget.
        while self.pending.front().is_some_and(|p| !p.rx.is_empty()) {
            self.drain_one()?;
        }
        while !self.pending.is_empty() && self.pending_bytes + self.chunk.len() > self.pending_max {
            self.drain_one()?;
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(MAX_CHUNK));
        let data = Arc::new(std::mem::replace(&mut self.chunk, next));
        let len = data.len();
        let index = self.cut_count;
        self.hash(HashMsg::Tar(index, data.clone()))?;
        let (reply, rx) = bounded(1);
        let job = Job {
            data,
            files: std::mem::take(&mut self.files),
            key: self.next_key.take(),
            reply,
        };
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("chunk writer already finished"))?
            .send(job)
            .map_err(|_| io::Error::other("compression worker threads have exited"))?;
        self.pending_bytes += len;
        self.pending.push_back(Pending {
            rx,
            ulen: len,
            index,
            tar_off: self.cut_bytes,
        });
        self.cut_count += 1;
        self.cut_bytes += len as u64;
        Ok(())
    }

    /// Compresses what is left, ends the stream and returns the sink.
    pub(crate) fn finish(mut self) -> io::Result<Finished<W>> {
        self.cut()?;
        if self.resume.is_some() {
            // Every chunk was resumed: the hashes go on from the last one.
            self.end_resume()?;
        }
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        self.jobs = None;
        if let (Codec::Gzip(level), 0) = (self.codec, self.stats.chunks) {
            // No input at all: one empty member, so the blob is still gzip.
            let empty = Arc::new(gzip_member(&mut GzipCompressor::new(level), &[])?);
            self.out()?.put(empty.clone())?;
            self.hash(HashMsg::Blob(empty))?;
        }
        self.out()?.flush()?;
        self.hashes = None;
        let h = self
            .hasher
            .take()
            .ok_or_else(|| io::Error::other("chunk writer already finished"))?
            .join()
            .map_err(|_| io::Error::other("the layer hashing thread died"))?;
        let out = self
            .out
            .take()
            .ok_or_else(|| io::Error::other("chunk writer already finished"))?;
        let new_chunks: Vec<NewChunk> = std::mem::take(&mut self.new_chunks)
            .into_iter()
            .map(|(i, mut c)| {
                if c.states.is_none() {
                    c.states = h.states(i);
                }
                c
            })
            .collect();
        let (tar_size, size) = (h.tar.len(), h.blob.len());
        Ok(Finished {
            out,
            diff_id: format!("sha256:{}", hex::encode(h.tar.finalize())),
            tar_size,
            digest: format!("sha256:{}", hex::encode(h.blob.finalize())),
            size,
            stats: self.stats,
            index: new_chunks.clone(),
            new_chunks,
        })
    }
}

impl<W> Finished<W> {
    /// The same result with the sink replaced (or dropped).
    pub(crate) fn map_out<V>(self, f: impl FnOnce(W) -> V) -> Finished<V> {
        Finished {
            out: f(self.out),
            diff_id: self.diff_id,
            tar_size: self.tar_size,
            digest: self.digest,
            size: self.size,
            stats: self.stats,
            new_chunks: self.new_chunks,
            index: self.index,
        }
    }
}

fn join_workers(workers: &mut Vec<JoinHandle<()>>) {
    for w in workers.drain(..) {
        let _ = w.join();
    }
}

impl<W: ChunkOut> Write for ChunkedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // Pieces of a big entry: cut every MAX_CHUNK from its start.
        let n = if self.in_big_entry {
            data.len().min(MAX_CHUNK - self.chunk_len())
        } else {
            data.len()
        };
        let data = &data[..n];
        if let Some(r) = &mut self.resume {
            r.literal(data);
        } else {
            if let Some((digest, off, left)) = &mut self.announced {
                // The next bytes are an announced file's content.
                let k = (*left).min(n as u64) as usize;
                if k > 0 {
                    let part = FilePart {
                        start: self.chunk.len(),
                        len: k,
                        digest: *digest,
                        file_off: *off,
                    };
                    push_file_part(&mut self.files, part);
                    *off += k as u64;
                    *left -= k as u64;
                }
                if *left == 0 {
                    self.announced = None;
                }
            }
            self.chunk.extend_from_slice(data);
        }
        self.total_in += n as u64;
        if self.in_big_entry && self.chunk_len() == MAX_CHUNK {
            self.cut()?;
        }
        Ok(n)
    }

    /// Chunks are only complete at entry boundaries; flushing just passes through.
    fn flush(&mut self) -> io::Result<()> {
        self.out()?.flush()
    }
}

impl<W: ChunkOut> TarSink for ChunkedWriter<W> {
    fn entry_start(&mut self, size: u64) -> io::Result<()> {
        if size >= MAX_CHUNK as u64 {
            self.cut()?;
            self.in_big_entry = true;
        }
        Ok(())
    }

    fn file_content(&mut self, digest: &[u8; 32], file: &File, size: u64) -> io::Result<bool> {
        if self.resume.is_none() {
            self.announced = Some((*digest, 0, size));
            return Ok(false);
        }
        self.describe_file(digest, file, size)?;
        Ok(true)
    }

    fn entry_end(&mut self, path: &str) -> io::Result<()> {
        self.in_big_entry = false;
        self.announced = None;
        let len = self.chunk_len();
        if len >= MAX_CHUNK || (len >= MIN_CHUNK && path_hash(path).is_multiple_of(CUT_ONE_IN)) {
            self.cut()?;
        }
        Ok(())
    }
}

impl<W: ChunkOut> Drop for ChunkedWriter<W> {
    fn drop(&mut self) {
        self.jobs = None;
        self.pending.clear();
        join_workers(&mut self.workers);
        self.hashes = None;
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

/// Hands a chunk buffer back for reuse if this was its last user (the
/// worker and the hasher each hold it; the later one returns it).
fn give_back(data: Arc<Vec<u8>>, spare: &Sender<Vec<u8>>) {
    if let Ok(mut v) = Arc::try_unwrap(data) {
        v.clear();
        // A chunk that ran past MAX_CHUNK (an entry that started before it)
        // grew its buffer to 8 MiB: kept, those pages stayed resident.
        v.shrink_to(MAX_CHUNK);
        // A full pool or a finished writer: the buffer is just freed.
        let _ = spare.try_send(v);
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

/// A worker's compressor state, made on its first chunk and reused: with
/// either library each chunk is compressed independently of the ones
/// before, so reuse never changes the bytes.
#[derive(Default)]
struct Compressors {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    gzip: Option<GzipCompressor>,
}

fn worker(rx: Receiver<Job>, codec: Codec, cache: Option<Arc<ChunkCache>>, spare: Sender<Vec<u8>>) {
    let tag = codec.cache_tag();
    let mut compressors = Compressors::default();
    // Only a store that seeded chunks pays for the second key.
    let seeded = cache.as_ref().is_some_and(|c| c.has_seeded());
    for Job {
        data,
        files,
        key,
        reply,
    } in rx
    {
        let key = cache
            .as_ref()
            .map(|_| key.unwrap_or_else(|| chunk_key(&tag, &data, &files)));
        // A chunk described with known files has a key no other store
        // shares; a chunk seeded from a remote cache's layer (`chunkseed`)
        // is recorded under the key of its bytes alone, tried on a miss.
        let bytes_key = (seeded && !files.is_empty()).then_some(tag.as_str());
        let keys = ChunkKeys { key, bytes_key };
        let result = process(&data, codec, keys, cache.as_deref(), &mut compressors);
        // The receiver is gone only when the writer was dropped mid-stream.
        let _ = reply.send(result);
        give_back(data, &spare);
    }
}

/// The keys a chunk is looked up by: its own (the description's), and,
/// for a chunk with known files, the codec tag to key its bytes alone.
struct ChunkKeys<'a> {
    key: Option<[u8; 32]>,
    bytes_key: Option<&'a str>,
}

fn process(
    data: &[u8],
    codec: Codec,
    keys: ChunkKeys<'_>,
    cache: Option<&ChunkCache>,
    compressors: &mut Compressors,
) -> io::Result<Done> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    let mut key = keys.key;
    if let (Some(cache), Some(k)) = (cache, key) {
        let bytes_key =
            std::iter::once_with(|| keys.bytes_key.map(|tag| ChunkCache::key(tag, data))).flatten();
        for (i, lookup) in std::iter::once(k).chain(bytes_key).enumerate() {
            let Some(hit) = cache.lookup(&lookup) else {
                continue;
            };
            // The bytes read must match the record's length and CRC too: a
            // file known by digest that changed after the scan is a miss,
            // never another chunk's bytes, and its key (which describes
            // other bytes) is not recorded.
            if hit.ulen == data.len() as u64 && hit.ucrc == crc.clone().finalize() {
                return Ok(Done {
                    bytes_crc: hit.crc,
                    bytes: hit.bytes,
                    ulen: data.len() as u64,
                    crc,
                    key,
                    reused: true,
                });
            }
            if i == 0 {
                key = None;
            }
        }
    }
    let bytes = match codec {
        Codec::Gzip(level) => {
            let gz = compressors
                .gzip
                .get_or_insert_with(|| GzipCompressor::new(level));
            gzip_member(gz, data)?
        }
        Codec::Zstd(level) => {
            let z = match &mut compressors.zstd {
                Some(z) => z,
                None => compressors.zstd.insert(zstd_compressor(level)?),
            };
            z.compress(data)?
        }
    };
    Ok(Done {
        bytes_crc: crc32fast::hash(&bytes),
        bytes,
        ulen: data.len() as u64,
        crc,
        key,
        reused: false,
    })
}

/// One chunk compressed exactly as a worker without a chunk cache does it:
/// for a layer small enough to be one chunk, written on the calling thread
/// (`small.rs`).
pub(super) fn compress_one(data: &[u8], codec: Codec) -> io::Result<Vec<u8>> {
    let keys = ChunkKeys {
        key: None,
        bytes_key: None,
    };
    Ok(process(data, codec, keys, None, &mut Compressors::default())?.bytes)
}

/// libdeflate's compressor and an output buffer, both reused: a fresh
/// buffer of the worst-case size per chunk page-faulted on every page.
struct GzipCompressor {
    c: libdeflater::Compressor,
    out: Vec<u8>,
}

impl GzipCompressor {
    /// `--compression-level` 0-9 is passed as is: libdeflate names its
    /// levels as zlib does (0 stored, 1 fastest, 6 default, 9 slowest of
    /// the nine); its far slower levels 10-12 are not offered.
    fn new(level: u32) -> Self {
        let level = CompressionLvl::new(level.min(9) as i32).unwrap_or_default();
        GzipCompressor {
            c: libdeflater::Compressor::new(level),
            out: Vec::new(),
        }
    }
}

/// One complete gzip member holding `data`: libdeflate's header (mtime 0,
/// OS unknown), raw deflate, CRC-32 and ISIZE.
fn gzip_member(gz: &mut GzipCompressor, data: &[u8]) -> io::Result<Vec<u8>> {
    let bound = gz.c.gzip_compress_bound(data.len());
    if gz.out.len() < bound {
        gz.out.resize(bound, 0);
    }
    let n =
        gz.c.gzip_compress(data, &mut gz.out)
            .map_err(|e| io::Error::other(format!("libdeflate: {e:?}")))?;
    Ok(gz.out[..n].to_vec())
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
#[path = "chunked_tests.rs"]
pub(super) mod tests;
