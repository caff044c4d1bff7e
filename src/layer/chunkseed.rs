//! Chunk indexes: which compressed chunk sits where in a layer blob, so
//! that another store which fetched the blob (a CI runner with an empty
//! store and a `--cache-from` cache) can seed its chunk cache from it and
//! compress only the chunks that changed.
//!
//! A store writes the index of each chunked layer it writes (beside the
//! chunk records, named `index-<hex digest>`, swept with the blob by
//! prune); `--cache-to` exports it as a blob of its own, and a build that
//! misses a step whose earlier layer has one seeds from it (`seed`).
//!
//! The text format (`docs/cache.md`): a first line
//! `rbuild-chunk-index-v1 <blob digest> <codec tag>`, then per chunk, in
//! blob order, `<key hex> <offset> <compressed len> <crc32 of the
//! compressed bytes> <uncompressed len>`.
//!
//! An imported index is untrusted: a chunk is recorded only after its
//! compressed bytes, read from the (digest-checked) local blob, were
//! decompressed alone and hash to the key it claims, and are exactly one
//! gzip member or zstd frame, so that it concatenates with any other chunk
//! into the stream its key promises. A lying entry is dropped: that
//! chunk is compressed again, nothing else changes.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::chunkcache::{ChunkCache, NewChunk};
use super::chunked::Codec;
use super::chunkseed_feed::SeedFeed;
pub use super::chunkseed_stream::Seeded;
use crate::oci::Compression;

/// First word of an index; bump it when the format or the meaning changes.
const INDEX_VERSION: &str = "rbuild-chunk-index-v1";
/// The largest index read: ~100 bytes per chunk of at least 512 KiB of tar,
/// so far beyond any layer's.
pub const MAX_INDEX_BYTES: u64 = 8 << 20;
/// A layer of one chunk gains little from an index (and most layers are
/// that small): only layers of at least this many chunks get one.
const MIN_INDEXED_CHUNKS: usize = 2;
/// No chunk is this big, compressed or not (chunks are at most about
/// 2 × 4 MiB of tar): a larger length is a lie and must not drive an
/// allocation.
pub(super) const MAX_CHUNK_BYTES: u64 = 16 << 20;

/// Errors of an index as a whole (a bad chunk entry is only dropped).
#[derive(Debug, thiserror::Error)]
pub enum ChunkIndexError {
    #[error("chunk index of {digest}: {problem}")]
    Invalid { digest: String, problem: String },
    #[error("chunk index of {digest}: reading the layer blob {path}: {source}")]
    Blob {
        digest: String,
        path: String,
        source: std::io::Error,
    },
}

/// Which keys seeded chunks are recorded under. A layer write finds a
/// chunk of files it knows by digest (a context COPY) by its description
/// key, any other chunk (a RUN's, another stage's files) by the key of its
/// bytes; computing a key the step's write will not ask for is wasted
/// (a sha256 over the whole layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedKeys {
    /// The key of the bytes alone (`ChunkCache::key`).
    pub bytes: bool,
    /// The description key (`chunkseed_desc.rs`).
    pub described: bool,
}

impl SeedKeys {
    pub const BOTH: SeedKeys = SeedKeys {
        bytes: true,
        described: true,
    };
}

/// What seeding from an index did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedStats {
    /// Chunks the index lists.
    pub listed: usize,
    /// Chunks verified and recorded in the chunk cache.
    pub seeded: usize,
    /// Chunks whose bytes did not prove what the index claims.
    pub refused: usize,
}

fn codec_of(c: Compression) -> Option<Codec> {
    match c {
        Compression::None => None,
        Compression::Gzip { level } => Some(Codec::Gzip(level)),
        Compression::Zstd { level } => Some(Codec::Zstd(level)),
    }
}

fn index_name(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("index-{hex}"))
}

/// The index text of `chunks`, the blob `digest` written as `codec`.
fn encode(digest: &str, codec: Codec, chunks: &[NewChunk]) -> Vec<u8> {
    let mut out = format!("{INDEX_VERSION} {digest} {}\n", codec.cache_tag());
    for c in chunks {
        out.push_str(&format!(
            "{} {} {} {} {}\n",
            hex::encode(c.key),
            c.offset,
            c.len,
            c.crc,
            c.ulen
        ));
    }
    out.into_bytes()
}

/// Keeps the index of a blob just written beside the chunk records.
pub(crate) fn save(
    cache: &ChunkCache,
    digest: &str,
    codec: Codec,
    chunks: &[NewChunk],
) -> std::io::Result<()> {
    let Some(name) = index_name(digest) else {
        return Ok(());
    };
    if chunks.len() < MIN_INDEXED_CHUNKS {
        return Ok(());
    }
    cache.write_aside(&name, &encode(digest, codec, chunks))
}

/// The index this store wrote for the blob `digest`, if any.
pub fn local_index(cache: &ChunkCache, digest: &str) -> Option<Vec<u8>> {
    let bytes = cache.read_aside(&index_name(digest)?, MAX_INDEX_BYTES)?;
    let first = bytes.split(|b| *b == b'\n').next()?;
    let mut words = std::str::from_utf8(first).ok()?.split(' ');
    (words.next()? == INDEX_VERSION && words.next()? == digest).then_some(bytes)
}

/// The keys the index of the blob `digest` claims (untrusted: only a
/// hint of which chunks a seeding may deliver).
pub fn claimed_keys(index: &[u8], digest: &str) -> Result<Vec<[u8; 32]>, ChunkIndexError> {
    Ok(parse(index, digest)?.1.into_iter().map(|c| c.key).collect())
}

/// Parses an index of the blob `digest`; returns its codec tag and chunks.
fn parse(index: &[u8], digest: &str) -> Result<(String, Vec<NewChunk>), ChunkIndexError> {
    let bad = |problem: String| ChunkIndexError::Invalid {
        digest: digest.to_string(),
        problem,
    };
    if index.len() as u64 > MAX_INDEX_BYTES {
        return Err(bad(format!(
            "{} bytes (limit {MAX_INDEX_BYTES})",
            index.len()
        )));
    }
    let text = std::str::from_utf8(index).map_err(|_| bad("not UTF-8 text".into()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    match header[..] {
        [v, _, _] if v != INDEX_VERSION => {
            Err(bad(format!("format {:?} is not {INDEX_VERSION}", clip(v))))
        }
        [_, d, _] if d != digest => Err(bad(format!("it describes another blob ({:?})", clip(d)))),
        [_, _, tag] => {
            let chunks = lines
                .enumerate()
                .map(|(i, l)| {
                    parse_line(l).ok_or_else(|| {
                        bad(format!(
                            "line {}: {:?} is not a chunk entry",
                            i + 2,
                            clip(l)
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((tag.to_string(), chunks))
        }
        _ => Err(bad("the first line is not an index header".into())),
    }
}

fn parse_line(line: &str) -> Option<NewChunk> {
    let mut w = line.split(' ');
    let mut key = [0u8; 32];
    hex::decode_to_slice(w.next()?, &mut key).ok()?;
    let c = NewChunk {
        key,
        offset: w.next()?.parse().ok()?,
        len: w.next()?.parse().ok()?,
        crc: w.next()?.parse().ok()?,
        ulen: w.next()?.parse().ok()?,
        // Known only once the chunk is decompressed (`verify`); a seeded
        // record never carries hash states, so no stream resumes from a
        // state another store claims.
        ucrc: 0,
        tar_off: 0,
        states: None,
    };
    w.next().is_none().then_some(c)
}

/// Untrusted text in a message: at most 80 characters of it.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// How many chunks `index` (of the blob `digest`) lists, and how many of
/// them `cache` has no record for and could be seeded (none when the
/// index is of another codec or level: its keys would never match).
pub fn unseeded(
    cache: &ChunkCache,
    index: &[u8],
    digest: &str,
    compression: Compression,
) -> Result<(usize, usize), ChunkIndexError> {
    let (tag, chunks) = parse(index, digest)?;
    if codec_of(compression).is_none_or(|c| c.cache_tag() != tag) {
        return Ok((chunks.len(), 0));
    }
    let missing = chunks.iter().filter(|c| !cache.has_record(&c.key)).count();
    Ok((chunks.len(), missing))
}

/// Seeds `cache` from `index`, the chunk index of the stored blob `digest`
/// at `blob`, for layers compressed as `compression`: the blob is read
/// once as [`seed_reader`] reads a download (its digest checked again).
pub fn seed(
    cache: &ChunkCache,
    index: &[u8],
    digest: &str,
    blob: &Path,
    compression: Compression,
) -> Result<SeedStats, ChunkIndexError> {
    let blob_err = |source| ChunkIndexError::Blob {
        digest: digest.to_string(),
        path: blob.display().to_string(),
        source,
    };
    let mut file = File::open(blob).map_err(blob_err)?;
    let size = file.metadata().map_err(blob_err)?.len();
    let seeded = seed_reader(
        index,
        digest,
        size,
        &mut file,
        &mut std::io::sink(),
        compression,
        SeedKeys::BOTH,
    )?;
    seeded.record(cache, digest).map_err(blob_err)
}

/// Reads the layer blob `digest` (`size` bytes, `index` its chunk index)
/// from `body` — a download — and writes it to `out` while verifying each
/// chunk as soon as it has arrived (see `chunkseed_stream.rs`). A caller
/// that stores the blob then [`Seeded::record`]s the chunks. An index
/// of another codec or level seeds nothing (its keys could not match).
pub fn seed_reader(
    index: &[u8],
    digest: &str,
    size: u64,
    body: &mut dyn Read,
    out: &mut dyn Write,
    compression: Compression,
    keys: SeedKeys,
) -> Result<Seeded, ChunkIndexError> {
    seed_reader_fed(index, digest, size, body, out, compression, keys, None)
}

/// [`seed_reader`] that also hands each verified chunk to `feed` the
/// moment it is known, for a layer write running at the same time
/// (`chunkseed_feed.rs`).
#[allow(clippy::too_many_arguments)]
pub fn seed_reader_fed(
    index: &[u8],
    digest: &str,
    size: u64,
    body: &mut dyn Read,
    out: &mut dyn Write,
    compression: Compression,
    keys: SeedKeys,
    feed: Option<&SeedFeed>,
) -> Result<Seeded, ChunkIndexError> {
    let (tag, chunks) = parse(index, digest)?;
    let listed = chunks.len();
    let codec = codec_of(compression).filter(|c| c.cache_tag() == tag);
    // Another codec's chunks are not verified (none could match), but the
    // blob is still read and checked: the caller stores it either way.
    let (codec, chunks) = match codec {
        Some(c) => (c, chunks),
        None => (Codec::Gzip(0), Vec::new()),
    };
    let mut seeded = super::chunkseed_stream::seed_stream(
        chunks, codec, &tag, keys, digest, size, body, out, feed,
    )?;
    seeded.stats.listed = listed;
    Ok(seeded)
}

/// The chunk to record and its tar bytes, if `bytes` are a chunk that
/// decompresses, alone, to `c.ulen` bytes and can stand anywhere in a
/// stream of chunks. It is recorded under the key of those bytes alone,
/// computed here: the key the index claims is the other store's (a
/// description naming its files by digest, `chunkcache::KeyHasher`), which
/// only its bytes could vouch for; so a lying key costs nothing, and a
/// chunk is only ever reused for exactly the bytes it decompresses to.
/// The tar bytes are written into `out` (a buffer used before: fresh
/// memory for every chunk cost a page fault per 4 KiB of the layer).
pub(super) fn verify_chunk(
    codec: Codec,
    tag: &str,
    c: NewChunk,
    bytes: &[u8],
    gz: &mut Gunzip,
    key: bool,
    out: Vec<u8>,
) -> Option<(NewChunk, Vec<u8>)> {
    if crc32fast::hash(bytes) != c.crc {
        return None;
    }
    let data = match codec {
        Codec::Gzip(_) => gz.member(bytes, c.ulen as usize, out),
        Codec::Zstd(_) => unzstd_chunk(bytes, c.ulen as usize, out),
    }?;
    let chunk = NewChunk {
        // Without it, a placeholder never recorded (`chunkseed_stream`).
        key: if key {
            ChunkCache::key(tag, &data)
        } else {
            [0; 32]
        },
        ucrc: crc32fast::hash(&data),
        tar_off: 0,
        states: None,
        ..c
    };
    Some((chunk, data))
}

/// A zstd chunk is one whole frame of exactly these bytes (frames are
/// self-delimiting, so it concatenates with any other); its checksum is
/// checked while it is decompressed.
fn unzstd_chunk(bytes: &[u8], ulen: usize, mut out: Vec<u8>) -> Option<Vec<u8>> {
    if zstd::zstd_safe::find_frame_compressed_size(bytes).ok()? != bytes.len() {
        return None;
    }
    // Written into the spare capacity, at most all of it: a frame of more
    // than `ulen` bytes fails or fails the length check.
    out.clear();
    out.reserve(ulen);
    let mut z = zstd::bulk::Decompressor::new().ok()?;
    z.decompress_to_buffer(bytes, &mut out).ok()?;
    (out.len() == ulen).then_some(out)
}

/// libdeflate's decompressor, one per verifying thread: 2-3x faster than
/// flate2 on the same members, and (through `_ex`, which the safe
/// `libdeflater` wrapper does not offer) it says how many input bytes the
/// member used.
pub(super) struct Gunzip(std::ptr::NonNull<libdeflate_sys::libdeflate_decompressor>);

// SAFETY: a libdeflate decompressor is plain memory with no thread
// affinity; it is used by one thread at a time (`&mut self`).
unsafe impl Send for Gunzip {}

impl Gunzip {
    pub(super) fn new() -> Self {
        // SAFETY: allocation only; a null return (out of memory) aborts
        // below rather than being dereferenced.
        let p = unsafe { libdeflate_sys::libdeflate_alloc_decompressor() };
        Gunzip(std::ptr::NonNull::new(p).unwrap_or_else(|| std::process::abort()))
    }

    /// A gzip chunk is one whole gzip member (`chunked.rs`) of exactly
    /// these bytes, with no optional header fields (the writer sets none):
    /// members are self-delimiting and independent, so a member
    /// concatenates with any other into the stream its key promises.
    /// libdeflate checks its CRC-32 and ISIZE.
    /// The tar bytes are written into `data`'s spare capacity.
    fn member(&mut self, bytes: &[u8], ulen: usize, mut data: Vec<u8>) -> Option<Vec<u8>> {
        // FLG (byte 3) zero: no name, comment, extra field or header CRC.
        if bytes.len() < 18 || bytes[..4] != [0x1f, 0x8b, 8, 0] {
            return None;
        }
        data.clear();
        data.reserve(ulen);
        let (mut used, mut made) = (0usize, 0usize);
        // SAFETY: the input is a live slice; the output is `data`'s spare
        // capacity, at least `ulen` bytes, of which libdeflate writes at
        // most `ulen`; the decompressor is ours.
        let r = unsafe {
            libdeflate_sys::libdeflate_gzip_decompress_ex(
                self.0.as_ptr(),
                bytes.as_ptr().cast(),
                bytes.len(),
                data.as_mut_ptr().cast(),
                ulen,
                &mut used,
                &mut made,
            )
        };
        // The member must fill exactly `ulen` bytes (more is
        // INSUFFICIENT_SPACE) and end exactly where the chunk does.
        let ok = r == libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS
            && made == ulen
            && used == bytes.len();
        if !ok {
            return None;
        }
        // SAFETY: libdeflate initialized the first `made` (= `ulen`, within
        // the capacity reserved above) bytes.
        unsafe { data.set_len(made) };
        Some(data)
    }
}

impl Drop for Gunzip {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

#[cfg(test)]
#[path = "chunkseed_tests.rs"]
mod tests;
