//! Where the chunked writer's compressed stream goes: the [`ChunkOut`]
//! sink, and the queue to the thread that writes the blob
//! ([`ToWriterThread`]), whose pieces are bytes in memory or ranges of an
//! earlier blob (a resumed chunk, `blobrange.rs`).

use std::io::{self, Write};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::layer::blobrange::BlobRange;

/// Where the compressed stream goes, piece by piece in stream order.
pub(crate) trait ChunkOut {
    fn put(&mut self, bytes: Arc<Vec<u8>>) -> io::Result<()>;
    /// Compressed bytes that already sit in a stored blob (a resumed chunk).
    fn put_range(&mut self, range: BlobRange) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

impl<W: Write> ChunkOut for W {
    fn put(&mut self, bytes: Arc<Vec<u8>>) -> io::Result<()> {
        self.write_all(&bytes)
    }
    fn put_range(&mut self, range: BlobRange) -> io::Result<()> {
        range.write_to(self)
    }
    fn flush(&mut self) -> io::Result<()> {
        Write::flush(self)
    }
}

/// Compressed bytes handed to the writer thread and not yet written. A
/// bound by count alone let eight 4 MiB pieces wait (resumed chunks are
/// read from the previous blob faster than they are written): 32 MiB, a
/// sixth of a 200,000-file rebuild's peak memory. Resumed chunks are now
/// sent as ranges of the earlier blob ([`Piece::Range`]), which hold no
/// memory while they wait and are not counted.
pub(crate) const WRITE_QUEUE_BYTES: usize = 8 << 20;

/// Pieces queued for the writer thread, by count: enough for the ranges
/// of a resumed start of about 1 GB to wait without holding the producer
/// back from the changed part of the layer.
pub(crate) const WRITE_QUEUE_PIECES: usize = 256;

/// One piece of the compressed stream, for the writer thread.
pub(crate) enum Piece {
    Bytes(Arc<Vec<u8>>),
    Range(BlobRange),
}

impl Piece {
    /// Writes the piece; returns the bytes it held in memory (for the
    /// producer's bound on what is queued).
    pub(crate) fn write_to(self, out: &mut dyn Write) -> io::Result<usize> {
        match self {
            Piece::Bytes(b) => out.write_all(&b).map(|_| b.len()),
            Piece::Range(r) => r.write_to(out).map(|_| 0),
        }
    }
}

/// Hands the pieces to a thread that writes them (see `write_layer`): on
/// the producing thread, writing the blob (a copy into the page cache per
/// byte) cost as much as reading and tarring the files. The writer reports
/// each in-memory piece's length on `written` once it is written and
/// dropped.
pub(crate) struct ToWriterThread {
    tx: Sender<Piece>,
    written: Receiver<usize>,
    /// Bytes sent and not yet reported written.
    queued: usize,
}

impl ToWriterThread {
    pub(crate) fn new(tx: Sender<Piece>, written: Receiver<usize>) -> Self {
        ToWriterThread {
            tx,
            written,
            queued: 0,
        }
    }

    fn gone() -> io::Error {
        io::Error::other("the layer blob writer thread has exited")
    }
}

impl ChunkOut for ToWriterThread {
    fn put(&mut self, bytes: Arc<Vec<u8>>) -> io::Result<()> {
        while let Ok(n) = self.written.try_recv() {
            self.queued = self.queued.saturating_sub(n);
        }
        self.queued += bytes.len();
        self.tx
            .send(Piece::Bytes(bytes))
            .map_err(|_| Self::gone())?;
        while self.queued > WRITE_QUEUE_BYTES {
            let n = self.written.recv().map_err(|_| Self::gone())?;
            self.queued = self.queued.saturating_sub(n);
        }
        Ok(())
    }
    fn put_range(&mut self, range: BlobRange) -> io::Result<()> {
        self.tx.send(Piece::Range(range)).map_err(|_| Self::gone())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
