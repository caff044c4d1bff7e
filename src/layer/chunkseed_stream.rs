//! Seeding while the layer arrives: the blob's bytes are hashed as they
//! are read (and passed to `out`: the store, or nowhere when the layer
//! write is their only user), each chunk the index lists is handed to a verifying
//! worker the moment its last byte is in (libdeflate / libzstd, one worker
//! per core, at most two), and the verified chunks are followed in stream
//! order to compute, from their bytes, what a warm store's records carry:
//! the diff_id's and the digest's sha256 states at each chunk's end, the
//! chunk's offset in the tar, and the key of its description
//! (`chunkseed_desc.rs`). Nothing is recorded unless the whole blob hashes
//! to its digest; so every record states only what rbuild computed from
//! bytes whose digest it checked, never what the index claims.
//!
//! A state is only kept for a chunk when every chunk before it, from the
//! blob's first byte, was listed, contiguous and verified: only then is
//! the concatenation of their decompressed bytes the layer's tar prefix.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::chunkcache::{ChunkCache, NewChunk};
use super::chunked::Codec;
use super::chunkseed::{verify_chunk, ChunkIndexError, SeedKeys, SeedStats, MAX_CHUNK_BYTES};
use super::chunkseed_desc::Describer;
use super::chunkseed_feed::SeedFeed;
use super::midsha::MidSha256;

/// One listed chunk's bytes, cut from the stream, for a worker.
struct Job {
    index: usize,
    entry: NewChunk,
    bytes: Vec<u8>,
    /// The digest's state after the chunk's last whole block.
    blob_state: [u32; 8],
}

/// A worker's answer: the chunk to record (keyed by its bytes) and its
/// tar bytes, or nothing when the bytes do not prove the entry.
struct Checked {
    index: usize,
    blob_state: [u32; 8],
    good: Option<(NewChunk, Vec<u8>)>,
    /// The chunk's compressed bytes, kept only for a feed.
    bytes: Vec<u8>,
}

/// What a streamed seeding found, to record once the blob is committed.
pub struct Seeded {
    records: Vec<NewChunk>,
    pub stats: SeedStats,
    /// Chunks recorded with hash states and a description key: a rebuild
    /// resumes from them.
    pub resumable: usize,
}

impl Seeded {
    /// Records the verified chunks as living in the blob `digest` (which
    /// the caller has stored).
    pub fn record(self, cache: &ChunkCache, digest: &str) -> io::Result<SeedStats> {
        let fresh: Vec<NewChunk> = self
            .records
            .into_iter()
            .filter(|c| !cache.has_record(&c.key))
            .collect();
        cache.record(digest, &fresh)?;
        if self.stats.seeded > 0 {
            cache.mark_seeded(digest)?;
        }
        Ok(self.stats)
    }
}

/// Reads the blob `digest` of `size` bytes from `body`, writes it to `out`
/// and verifies the chunks `chunks` (the parsed index, codec tag `tag`)
/// while it arrives. Fails when the blob does not match its digest and size.
#[allow(clippy::too_many_arguments)]
pub(super) fn seed_stream(
    chunks: Vec<NewChunk>,
    codec: Codec,
    tag: &str,
    keys: SeedKeys,
    digest: &str,
    size: u64,
    body: &mut dyn Read,
    out: &mut dyn Write,
    feed: Option<&SeedFeed>,
) -> Result<Seeded, ChunkIndexError> {
    let listed = chunks.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let (job_tx, job_rx) = bounded::<Job>(threads * 2);
    let (res_tx, res_rx) = bounded::<Checked>(threads * 4);
    // Tar buffers the follower is done with, back to the verifiers.
    let (spare_tx, spare_rx) = bounded::<Vec<u8>>(threads * 4);
    let (read, followed) = std::thread::scope(|s| {
        for _ in 0..threads {
            let (rx, tx, spare) = (job_rx.clone(), res_tx.clone(), spare_rx.clone());
            let keep = feed.is_some();
            s.spawn(move || verifier(rx, tx, spare, codec, tag, keys.bytes, keep));
        }
        let refused = res_tx.clone();
        drop((job_rx, res_tx, spare_rx));
        let publish = Publish { feed, digest };
        let follower = s.spawn(move || follow(res_rx, spare_tx, tag, keys, publish));
        let read = read_and_cut(body, out, chunks, size, job_tx, refused);
        let followed = follower.join();
        (read, followed)
    });
    let blob = |problem: String| ChunkIndexError::Invalid {
        digest: digest.to_string(),
        problem,
    };
    let got = read.map_err(|e| ChunkIndexError::Blob {
        digest: digest.to_string(),
        path: "the fetched layer".into(),
        source: e,
    })?;
    if got.len() != size || format!("sha256:{}", hex::encode(got.finalize())) != digest {
        return Err(blob(
            "the layer blob does not match its digest and size".into(),
        ));
    }
    let (records, seeded, resumable) =
        followed.map_err(|_| blob("the seeding thread panicked".into()))?;
    Ok(Seeded {
        records,
        stats: SeedStats {
            listed,
            seeded,
            refused: listed - seeded,
        },
        resumable,
    })
}

/// The reading side: the blob to `out` and its hash, each listed chunk to
/// the workers as soon as it is complete; an entry that is no chunk of
/// this stream (impossible lengths, overlapping, past the end) straight to
/// the follower as refused. Returns the blob's hash.
fn read_and_cut(
    body: &mut dyn Read,
    out: &mut dyn Write,
    chunks: Vec<NewChunk>,
    size: u64,
    jobs: Sender<Job>,
    refused: Sender<Checked>,
) -> io::Result<MidSha256> {
    let refuse = |index: usize| {
        let _ = refused.send(Checked {
            index,
            blob_state: [0; 8],
            good: None,
            bytes: Vec::new(),
        });
    };
    let mut hash = MidSha256::new();
    let mut plan = chunks.into_iter().enumerate().peekable();
    let mut current: Option<(usize, NewChunk, Vec<u8>)> = None;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            // Whatever the stream did not hold is refused.
            current.into_iter().for_each(|(i, _, _)| refuse(i));
            plan.for_each(|(i, _)| refuse(i));
            return Ok(hash);
        }
        out.write_all(&buf[..n])?;
        let mut data = &buf[..n];
        while !data.is_empty() {
            let pos = hash.len();
            while current.is_none() {
                // A lying length never drives an allocation.
                let possible = |c: &NewChunk| {
                    c.offset >= pos
                        && c.len <= MAX_CHUNK_BYTES
                        && c.ulen <= MAX_CHUNK_BYTES
                        && c.offset.checked_add(c.len).is_some_and(|e| e <= size)
                };
                match plan.next_if(|(_, c)| !possible(c) || c.offset == pos) {
                    Some((i, c)) if possible(&c) => {
                        let bytes = Vec::with_capacity(c.len as usize);
                        current = Some((i, c, bytes));
                    }
                    Some((i, _)) => refuse(i),
                    None => break,
                }
            }
            let Some((_, c, bytes)) = current.as_mut() else {
                // Bytes no entry covers: up to the next entry's start.
                let next = plan.peek().map_or(u64::MAX, |(_, c)| c.offset);
                let take = (next - pos).min(data.len() as u64) as usize;
                hash.update(&data[..take]);
                data = &data[take..];
                continue;
            };
            let take = (c.len as usize - bytes.len()).min(data.len());
            bytes.extend_from_slice(&data[..take]);
            hash.update(&data[..take]);
            data = &data[take..];
            if bytes.len() as u64 == c.len {
                if let Some((index, entry, bytes)) = current.take() {
                    let job = Job {
                        index,
                        entry,
                        bytes,
                        blob_state: hash.state(),
                    };
                    jobs.send(job)
                        .map_err(|_| io::Error::other("the chunk verifiers have exited"))?;
                }
            }
        }
    }
}

fn verifier(
    jobs: Receiver<Job>,
    out: Sender<Checked>,
    spare: Receiver<Vec<u8>>,
    codec: Codec,
    tag: &str,
    key: bool,
    keep_bytes: bool,
) {
    let mut gz = super::chunkseed::Gunzip::new();
    for job in jobs {
        let buf = spare.try_recv().unwrap_or_default();
        let good = verify_chunk(codec, tag, job.entry, &job.bytes, &mut gz, key, buf);
        let bytes = match keep_bytes && good.is_some() {
            true => job.bytes,
            false => Vec::new(),
        };
        let checked = Checked {
            index: job.index,
            blob_state: job.blob_state,
            good,
            bytes,
        };
        if out.send(checked).is_err() {
            return;
        }
    }
}

/// The chunks in stream order: tar hash states and description keys for
/// the unbroken prefix. Returns the records (by bytes key and/or
/// description key, as `keys` asks), the chunks verified, and how many of
/// them carry states and a key a layer write resumes by.
fn follow(
    results: Receiver<Checked>,
    spare: Sender<Vec<u8>>,
    tag: &str,
    keys: SeedKeys,
    publish: Publish<'_>,
) -> (Vec<NewChunk>, usize, usize) {
    let mut waiting = BTreeMap::new();
    let mut next = 0usize;
    let mut tar = MidSha256::new();
    // The tar's length so far, and whether its hash is still worth it: a
    // write that stopped resuming needs no more states.
    let (mut tar_len, mut hashing) = (0u64, true);
    let mut unbroken = true;
    let mut desc = Describer::new(tag);
    if !keys.described {
        desc.break_off();
    }
    let mut good: Vec<NewChunk> = Vec::new();
    // Chunk index → its place in `good`, for chunks of the described
    // prefix that end on a 64-byte boundary (so a write may resume there).
    let mut keyed = std::collections::HashMap::new();
    let mut desc_keys = Vec::new();
    // Compressed bytes of chunks whose description key is still to come.
    let mut unkeyed = Held::default();
    for r in results {
        waiting.insert(r.index, r);
        while let Some(r) = waiting.remove(&next) {
            next += 1;
            let Some((mut c, data)) = r.good else {
                unbroken = false;
                desc.break_off();
                unkeyed.clear();
                continue;
            };
            let bytes = r.bytes;
            // The chain holds while chunks follow each other from byte 0.
            unbroken &= c.offset == blob_len(&good, unbroken);
            if unbroken {
                c.tar_off = tar_len;
                tar_len += data.len() as u64;
                hashing &= !publish.feed.is_some_and(|f| f.resume_over());
                if hashing {
                    tar.update(&data);
                }
                desc.feed(&data);
                desc.end_chunk(r.index);
                if tar_len.is_multiple_of(64) {
                    if hashing {
                        c.states = Some((tar.state(), r.blob_state));
                    }
                    keyed.insert(r.index, good.len());
                }
            } else {
                desc.break_off();
            }
            // Full: the verifiers have buffers enough.
            let _ = spare.try_send(data);
            if keys.bytes {
                publish.chunk(&c, bytes);
            } else if publish.feed.is_some() && keyed.contains_key(&r.index) {
                // A file spanning many chunks keys them all at its end:
                // held beside the feed, within the feed's bound (the
                // first ones go; the write compresses them).
                unkeyed.insert(r.index, bytes, super::chunkseed_feed::HELD_BYTES_MAX);
            }
            good.push(c);
            let new_keys = desc.take_keys();
            for (index, key) in &new_keys {
                if let (Some(&at), Some(bytes)) = (keyed.get(index), unkeyed.remove(index)) {
                    publish.chunk(
                        &NewChunk {
                            key: *key,
                            ..good[at].clone()
                        },
                        bytes,
                    );
                }
                // Chunks before it will get no key any more.
                unkeyed.drop_through(*index);
            }
            desc_keys.extend(new_keys);
        }
    }
    let seeded = good.len();
    let mut records = Vec::new();
    let mut resumable = 0;
    if keys.bytes {
        resumable = good.iter().filter(|c| c.states.is_some()).count();
        records.extend(good.iter().cloned());
    }
    for (index, key) in desc_keys {
        if let Some(&at) = keyed.get(&index) {
            records.push(NewChunk {
                key,
                ..good[at].clone()
            });
            if !keys.bytes && good[at].states.is_some() {
                resumable += 1;
            }
        }
    }
    (records, seeded, resumable)
}

/// Where verified chunks go while the seeding runs, if anywhere.
struct Publish<'a> {
    feed: Option<&'a SeedFeed>,
    digest: &'a str,
}

impl Publish<'_> {
    fn chunk(&self, c: &NewChunk, bytes: Vec<u8>) {
        let Some(feed) = self.feed else { return };
        if bytes.len() as u64 != c.len {
            return;
        }
        let hit = super::chunkcache::Hit {
            blob: self.digest.to_string(),
            offset: c.offset,
            crc: c.crc,
            ulen: c.ulen,
            ucrc: c.ucrc,
            tar_off: c.tar_off,
            states: c.states,
            bytes,
        };
        feed.publish(c.key, hit);
    }
}

/// Where the next chunk must start for the chain to hold: the end of the
/// last chunk recorded (all of them chained while `unbroken`).
fn blob_len(good: &[NewChunk], unbroken: bool) -> u64 {
    match (good.last(), unbroken) {
        (Some(c), true) => c.offset + c.len,
        (None, true) => 0,
        _ => u64::MAX,
    }
}

#[cfg(test)]
#[path = "chunkseed_stream_tests.rs"]
mod tests;

/// Compressed chunks waiting for their description key, in chunk order,
/// with their total kept as they come and go: summed again per chunk, a
/// cache's index of many tiny chunks of one file made this quadratic.
#[derive(Default)]
struct Held {
    chunks: BTreeMap<usize, Vec<u8>>,
    bytes: usize,
}

impl Held {
    /// Holds `bytes` for chunk `index`, dropping the earliest held chunks
    /// while the total is over `max`.
    fn insert(&mut self, index: usize, bytes: Vec<u8>, max: usize) {
        self.bytes += bytes.len();
        if let Some(old) = self.chunks.insert(index, bytes) {
            self.bytes -= old.len();
        }
        while self.bytes > max {
            match self.chunks.pop_first() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }

    fn remove(&mut self, index: &usize) -> Option<Vec<u8>> {
        let b = self.chunks.remove(index)?;
        self.bytes -= b.len();
        Some(b)
    }

    /// Drops every chunk up to and including `index`.
    fn drop_through(&mut self, index: usize) {
        // Summing what goes (each chunk once), not what stays.
        let keep = self.chunks.split_off(&(index + 1));
        let gone = std::mem::replace(&mut self.chunks, keep);
        self.bytes -= gone.values().map(Vec::len).sum::<usize>();
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }
}
