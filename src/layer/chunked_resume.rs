//! Resuming the unchanged start of a layer. While the stream still matches
//! the start of a layer written before, chunks are *described* rather than
//! read: tar headers as bytes, the content of files known by sha256 as
//! (digest, range). At each cut the description's key is looked up; when
//! its record points into the same earlier blob right where the stream has
//! got to, the chunk's compressed bytes are written out and both hashes
//! jump to the states the record kept for that point, so the files are
//! never read and neither their tar nor their blob bytes hashed again.
//!
//! Why this is sound: the first resumed chunk's record starts the earlier
//! blob's stream (blob offset 0, tar offset 0), and
//! every next one continues the same blob exactly where the last ended.
//! Equal keys mean equal chunk bytes, so the earlier stream up to there is
//! byte for byte this one, and its hash states are this stream's. At the
//! first chunk that does not chain, the described chunk is read (once) and
//! the writer goes on as usual, hashing from the last resumed states.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{push_file_part, ChunkOut, ChunkedWriter, FilePart, HashMsg, MAX_CHUNK};
use crate::layer::blobrange::BlobRange;
use crate::layer::chunkcache::{Hit, KeyHasher, NewChunk, RangeReader};
use crate::layer::midsha::MidSha256;

/// A resumed chunk's compressed bytes: a range of a stored blob, or in
/// memory from a seeding that still runs (`chunkseed_feed.rs`).
pub(super) enum Resumed {
    Range(BlobRange),
    Mem(Vec<u8>),
}

impl<B> Hit<B> {
    fn map_bytes<C>(self, f: impl FnOnce(B) -> C) -> Hit<C> {
        let Hit {
            blob,
            offset,
            crc,
            ulen,
            ucrc,
            tar_off,
            states,
            bytes,
        } = self;
        Hit {
            blob,
            offset,
            crc,
            ulen,
            ucrc,
            tar_off,
            states,
            bytes: f(bytes),
        }
    }
}

/// A piece of a described chunk.
enum Part {
    Lit(Vec<u8>),
    File {
        file: Arc<File>,
        digest: [u8; 32],
        off: u64,
        len: u64,
    },
}

/// The earlier blob being followed, and the hash states at its last chunk.
struct Chain {
    blob: String,
    tar_state: [u32; 8],
    blob_state: [u32; 8],
}

pub(super) struct Resume {
    parts: Vec<Part>,
    len: usize,
    chain: Option<Chain>,
    /// The last (at most 64) blob bytes written: the digest's state is
    /// kept per whole block, so it resumes with these.
    tail: Vec<u8>,
    /// Resumed chunks go out as ranges of the blob they are in, checked
    /// through this (the blob open once, one small buffer).
    reader: RangeReader,
}

impl Resume {
    pub(super) fn new() -> Self {
        Resume {
            parts: Vec::new(),
            len: 0,
            chain: None,
            tail: Vec::new(),
            reader: RangeReader::default(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn literal(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(Part::Lit(v)) = self.parts.last_mut() {
            v.extend_from_slice(data);
        } else {
            self.parts.push(Part::Lit(data.to_vec()));
        }
    }

    /// The key, as `chunked::chunk_key` computes it from the same bytes.
    fn key(&self, tag: &str) -> [u8; 32] {
        let mut h = KeyHasher::new(tag);
        for p in &self.parts {
            match p {
                Part::Lit(v) => h.literal(v),
                Part::File {
                    digest, off, len, ..
                } => h.file(digest, *off, *len),
            }
        }
        h.finish()
    }

    fn push_tail(&mut self, bytes: &[u8]) {
        self.tail
            .extend_from_slice(&bytes[bytes.len().saturating_sub(64)..]);
        let extra = self.tail.len().saturating_sub(64);
        self.tail.drain(..extra);
    }
}

impl<W: ChunkOut> ChunkedWriter<W> {
    /// The content of a file known by digest, while resuming: described,
    /// not read (cut every `MAX_CHUNK` inside a big entry, as when read).
    /// If resuming stops inside the file, the rest is read and written.
    pub(super) fn describe_file(
        &mut self,
        digest: &[u8; 32],
        file: &File,
        size: u64,
    ) -> io::Result<()> {
        let shared = Arc::new(file.try_clone()?);
        let mut off = 0;
        while off < size {
            let big = self.in_big_entry;
            let Some(r) = self.resume.as_mut() else {
                break;
            };
            let room = if big {
                (MAX_CHUNK - r.len) as u64
            } else {
                u64::MAX
            };
            let len = room.min(size - off);
            r.parts.push(Part::File {
                file: shared.clone(),
                digest: *digest,
                off,
                len,
            });
            r.len += len as usize;
            off += len;
            self.total_in += len;
            if big && self.chunk_len() == MAX_CHUNK {
                self.cut()?;
            }
        }
        if off < size {
            self.announced = Some((*digest, off, size - off));
            let mut buf = vec![0u8; 256 * 1024];
            while off < size {
                let want = buf.len().min((size - off) as usize);
                let n = file.read_at(&mut buf[..want], off)?;
                if n == 0 {
                    return Err(io::Error::other(format!(
                        "a file of the layer shrank to {off} of its {size} bytes while it was written"
                    )));
                }
                self.write_all(&buf[..n])?;
                off += n as u64;
            }
        }
        Ok(())
    }

    /// A cut while resuming: true when the chunk was resumed (or empty);
    /// false when resuming stopped and the chunk, now read into `chunk`,
    /// is to be cut as usual.
    pub(super) fn resume_cut(&mut self) -> io::Result<bool> {
        let Some(r) = self.resume.as_ref() else {
            return Ok(false);
        };
        if r.len == 0 {
            return Ok(true);
        }
        let key = r.key(&self.tag);
        let found = match (self.cache.as_ref(), self.resume.as_mut()) {
            (Some(c), Some(r)) => c.lookup_range(&key, &mut r.reader),
            _ => None,
        };
        let found = match found {
            Some((hit, tail)) => Some((hit.map_bytes(Resumed::Range), tail)),
            // A chunk a running seeding delivers (in memory, not yet in a
            // stored blob: `chunkseed_feed.rs`).
            None => self.cache.as_ref().and_then(|c| c.fed(&key)).map(|hit| {
                let tail = hit.bytes[hit.bytes.len().saturating_sub(64)..].to_vec();
                (hit.map_bytes(Resumed::Mem), tail)
            }),
        };
        if let Some((hit, tail)) = found {
            if let Some(states) = self.chains(&hit) {
                self.resume_chunk(key, hit, &tail, states)?;
                return Ok(true);
            }
        }
        let Some(r) = self.resume.take() else {
            return Ok(false);
        };
        if let Some(c) = &self.cache {
            c.resume_ended();
        }
        self.start_hashes(&r)?;
        self.materialize(r)?;
        self.next_key = Some(key);
        Ok(false)
    }

    /// The hash states after `hit`, if it continues the followed blob
    /// exactly where the stream is.
    fn chains<B>(&self, hit: &Hit<B>) -> Option<([u32; 8], [u32; 8])> {
        let r = self.resume.as_ref()?;
        let states = hit.states?;
        let same_blob = match &r.chain {
            None => self.cut_bytes == 0,
            Some(c) => c.blob == hit.blob,
        };
        let ok = same_blob
            && hit.offset == self.offset
            && hit.tar_off == self.cut_bytes
            && hit.ulen == r.len as u64
            && (hit.tar_off + hit.ulen).is_multiple_of(64);
        ok.then_some(states)
    }

    fn resume_chunk(
        &mut self,
        key: [u8; 32],
        hit: Hit<Resumed>,
        tail: &[u8],
        states: ([u32; 8], [u32; 8]),
    ) -> io::Result<()> {
        let len = match &hit.bytes {
            Resumed::Range(r) => r.len() as u64,
            Resumed::Mem(v) => v.len() as u64,
        };
        let chunk = NewChunk {
            key,
            offset: self.offset,
            len,
            crc: hit.crc,
            ulen: hit.ulen,
            ucrc: hit.ucrc,
            tar_off: self.cut_bytes,
            states: Some(states),
        };
        self.new_chunks.push((self.cut_count, chunk));
        let blob = hit.blob;
        match hit.bytes {
            Resumed::Range(r) => self.out()?.put_range(r)?,
            Resumed::Mem(v) => self.out()?.put(Arc::new(v))?,
        }
        self.offset += len;
        self.cut_bytes += hit.ulen;
        self.cut_count += 1;
        self.stats.chunks += 1;
        self.stats.reused += 1;
        self.stats.resumed += 1;
        self.stats.reused_bytes += hit.ulen;
        if let Some(r) = self.resume.as_mut() {
            r.push_tail(tail);
            r.parts.clear();
            r.len = 0;
            r.chain = Some(Chain {
                blob,
                tar_state: states.0,
                blob_state: states.1,
            });
        }
        Ok(())
    }

    /// Stops resuming (at the end of a stream resumed whole).
    pub(super) fn end_resume(&mut self) -> io::Result<()> {
        match self.resume.take() {
            Some(r) => self.start_hashes(&r),
            None => Ok(()),
        }
    }

    /// The hashing thread starts from the last resumed chunk's states, or
    /// from the stream's start when none was resumed.
    fn start_hashes(&mut self, r: &Resume) -> io::Result<()> {
        let Some(c) = &r.chain else {
            return Ok(());
        };
        let tail_len = (self.offset % 64) as usize;
        let tail = r
            .tail
            .get(r.tail.len().saturating_sub(tail_len)..)
            .unwrap_or_default();
        let bad = || io::Error::other("a resumed layer hash state does not fit the stream");
        let tar = MidSha256::resume(c.tar_state, self.cut_bytes, &[]).ok_or_else(bad)?;
        let blob = MidSha256::resume(c.blob_state, self.offset, tail).ok_or_else(bad)?;
        self.hash(HashMsg::Resume(Box::new((tar, blob))))
    }

    /// Reads a described chunk into `chunk`, its known files noted.
    fn materialize(&mut self, r: Resume) -> io::Result<()> {
        for p in r.parts {
            match p {
                Part::Lit(v) => self.chunk.extend_from_slice(&v),
                Part::File {
                    file,
                    digest,
                    off,
                    len,
                } => {
                    let start = self.chunk.len();
                    self.chunk.resize(start + len as usize, 0);
                    file.read_exact_at(&mut self.chunk[start..], off)
                        .map_err(|e| {
                            io::Error::new(e.kind(), format!("reading a file of the layer: {e}"))
                        })?;
                    let part = FilePart {
                        start,
                        len: len as usize,
                        digest,
                        file_off: off,
                    };
                    push_file_part(&mut self.files, part);
                }
            }
        }
        Ok(())
    }
}
