//! pigz-style parallel gzip: the input is cut into fixed-size blocks, each
//! compressed on a worker thread as raw deflate primed with the previous
//! block's last 32 KiB (so the ratio stays close to serial gzip), ended with
//! a sync flush so the pieces concatenate into one deflate stream, and
//! written in order inside a single gzip member. The CRC is combined from
//! per-block CRCs. Output bytes depend only on the level and block size,
//! never on the number of threads.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use flate2::{Compress, Compression, FlushCompress, Status};

/// Deflate's window: the most a back-reference can reach.
const DICT_SIZE: usize = 32 * 1024;
/// Default block size; pigz uses 128 KiB, larger blocks cost less per block.
pub const DEFAULT_BLOCK_SIZE: usize = 512 * 1024;
/// gzip header: magic, CM=deflate, no flags, mtime 0, XFL 0, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

struct Job {
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
    reply: Sender<io::Result<Done>>,
}

pub(super) struct Done {
    pub(super) deflated: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// A `Write` that gzips into `W` using several threads.
pub struct ParallelGzipWriter<W: Write> {
    out: Option<W>,
    block_size: usize,
    buf: Vec<u8>,
    dict: Vec<u8>,
    jobs: Option<Sender<Job>>,
    pending: VecDeque<Receiver<io::Result<Done>>>,
    max_pending: usize,
    workers: Vec<JoinHandle<()>>,
    crc: crc32fast::Hasher,
    total_in: u64,
}

impl<W: Write> ParallelGzipWriter<W> {
    /// `threads == 0` means one per available core.
    pub fn new(out: W, level: u32, threads: usize) -> io::Result<Self> {
        Self::with_block_size(out, level, threads, DEFAULT_BLOCK_SIZE)
    }

    pub fn with_block_size(
        mut out: W,
        level: u32,
        threads: usize,
        block_size: usize,
    ) -> io::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let block_size = block_size.max(DICT_SIZE);
        let level = level.min(9);
        out.write_all(&GZIP_HEADER)?;
        let (tx, rx) = bounded::<Job>(threads);
        let workers = (0..threads)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("pgzip-{i}"))
                    .spawn(move || worker(rx, level))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ParallelGzipWriter {
            out: Some(out),
            block_size,
            buf: Vec::with_capacity(block_size),
            dict: Vec::new(),
            jobs: Some(tx),
            pending: VecDeque::new(),
            // Enough blocks in flight to keep every worker busy while the
            // oldest one is being written; this bounds memory too.
            max_pending: threads * 2,
            workers,
            crc: crc32fast::Hasher::new(),
            total_in: 0,
        })
    }

    fn out(&mut self) -> io::Result<&mut W> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))
    }

    /// Waits for the oldest block and writes it out.
    fn drain_one(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = rx
            .recv()
            .map_err(|_| io::Error::other("a gzip worker thread died"))??;
        self.crc.combine(&done.crc);
        self.out()?.write_all(&done.deflated)
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        while self.pending.len() >= self.max_pending {
            self.drain_one()?;
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.block_size));
        let dict = std::mem::take(&mut self.dict);
        self.dict = data[data.len().saturating_sub(DICT_SIZE)..].to_vec();
        let (reply, rx) = bounded(1);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))?;
        jobs.send(Job {
            data,
            dict,
            last,
            reply,
        })
        .map_err(|_| io::Error::other("gzip worker threads have exited"))?;
        self.pending.push_back(rx);
        Ok(())
    }

    /// Flushes the last block, writes the gzip trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        let crc = self.crc.clone().finalize();
        let isize = self.total_in as u32; // ISIZE is the length modulo 2^32 (RFC 1952).
        let out = self.out()?;
        out.write_all(&crc.to_le_bytes())?;
        out.write_all(&isize.to_le_bytes())?;
        out.flush()?;
        self.jobs = None;
        self.out
            .take()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))
    }
}

impl<W: Write> Write for ParallelGzipWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.block_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.total_in += n as u64;
        if self.buf.len() == self.block_size {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Blocks are only complete at `finish`; flushing just passes through.
    fn flush(&mut self) -> io::Result<()> {
        self.out()?.flush()
    }
}

impl<W: Write> Drop for ParallelGzipWriter<W> {
    fn drop(&mut self) {
        self.jobs = None;
        self.pending.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(rx: Receiver<Job>, level: u32) {
    for job in rx {
        // A fresh stream per block: a reset stream kept state that made the
        // output depend on which worker compressed which block.
        let mut c = Compress::new(Compression::new(level), false);
        let result = deflate_block(&mut c, &job.data, &job.dict, job.last);
        // The receiver is gone only when the writer was dropped mid-stream.
        let _ = job.reply.send(result);
    }
}

pub(super) fn deflate_block(
    c: &mut Compress,
    data: &[u8],
    dict: &[u8],
    last: bool,
) -> io::Result<Done> {
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let mut pos = 0usize;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let before = c.total_in();
        let status = c
            .compress_vec(&data[pos..], &mut out, flush)
            .map_err(io::Error::other)?;
        pos += (c.total_in() - before) as usize;
        let done = match status {
            Status::StreamEnd => true,
            // A sync flush is complete once all input is consumed and
            // deflate left output space unused.
            _ => !last && pos == data.len() && out.len() < out.capacity(),
        };
        if done {
            break;
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    Ok(Done { deflated: out, crc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(data: &[u8], threads: usize, block: usize) -> Vec<u8> {
        let mut w = ParallelGzipWriter::with_block_size(Vec::new(), 6, threads, block).unwrap();
        w.write_all(data).unwrap();
        let gz = w.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        gz
    }

    #[test]
    fn output_is_valid_and_independent_of_threads() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let a = roundtrip(&data, 1, DICT_SIZE);
        let b = roundtrip(&data, 3, DICT_SIZE);
        assert_eq!(a, b);
        roundtrip(b"", 2, DICT_SIZE);
        roundtrip(&data[..DICT_SIZE * 2], 2, DICT_SIZE);
    }
}
