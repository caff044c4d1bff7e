//! The layer pipeline: entries → tar → chunked compressor (which also
//! computes the diff_id and digest, and reuses cached chunks) → sink, in one
//! pass with bounded memory. Uncompressed layers skip the compressor.

use std::io::{self, BufWriter, Write};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::chunkcache::ChunkCache;
use super::chunked::{
    ChunkStats, ChunkedWriter, Codec, Finished, Piece, ToWriterThread, WRITE_QUEUE_PIECES,
};
use super::entry::{LayerEntry, PreparedEntries};
use super::tarwrite::{write_entries, KnownFiles, TarSink};
use crate::oci::media::{OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD};
use crate::oci::Compression;

/// Options for [`write_layer`].
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub compression: Compression,
    /// Clamp mtimes later than this (seconds since the epoch) to it.
    pub source_date_epoch: Option<i64>,
    /// Compression threads; 0 = one per core. Never changes the output bytes.
    pub threads: usize,
    /// Reuse compressed chunks of earlier layers (and record this one's).
    /// Never changes the output bytes either.
    pub chunk_cache: Option<ChunkCache>,
    /// Source files whose content sha256 the caller knows: their chunks
    /// are keyed from the digests (no sha256 over the bytes) and, at the
    /// start of the stream, resumed without reading them. Never changes
    /// the output bytes.
    pub known_files: Option<std::sync::Arc<KnownFiles>>,
}

/// What was written: the identities the image config and manifest need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// `sha256:` of the blob as written (the manifest's layer digest).
    pub digest: String,
    /// Blob size in bytes (compressed).
    pub size: u64,
    pub uncompressed_size: u64,
    pub media_type: &'static str,
    /// How many chunks were compressed and how many reused (all zero
    /// when uncompressed).
    pub chunks: ChunkStats,
}

/// A pass-through writer that hashes and counts what goes through it.
struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: TarSink> TarSink for HashWriter<W> {
    fn entry_start(&mut self, size: u64) -> io::Result<()> {
        self.inner.entry_start(size)
    }

    fn entry_end(&mut self, path: &str) -> io::Result<()> {
        self.inner.entry_end(path)
    }
}

/// Writes `entries` as one layer blob into `out` and returns its identities.
/// A compressed blob is written to `out` from a thread of its own.
pub fn write_layer(
    entries: Vec<LayerEntry>,
    out: &mut (dyn Write + Send),
    opts: &WriteOptions,
) -> Result<LayerInfo> {
    let entries =
        PreparedEntries::new(entries, opts.source_date_epoch).context("preparing layer entries")?;
    write_prepared(&entries, out, opts)
}

/// [`write_layer`] of entries already prepared (with the same
/// `source_date_epoch` as `opts`), borrowed so that another thread can read
/// them at the same time.
pub fn write_prepared(
    entries: &PreparedEntries,
    out: &mut (dyn Write + Send),
    opts: &WriteOptions,
) -> Result<LayerInfo> {
    let mut buffered = BufWriter::with_capacity(256 * 1024, out);
    let (codec, media_type) = match opts.compression {
        Compression::None => {
            // The blob is the tar: one hash serves as diff_id and digest.
            let mut tar = HashWriter::new(buffered);
            write_entries(entries, &mut tar, None)?;
            let (mut buffered, diff_id, n) = tar.finish();
            buffered.flush().context("flushing the layer blob")?;
            return Ok(LayerInfo {
                digest: diff_id.clone(),
                diff_id,
                size: n,
                uncompressed_size: n,
                media_type: OCI_LAYER,
                chunks: ChunkStats::default(),
            });
        }
        Compression::Gzip { level } => (Codec::Gzip(level), OCI_LAYER_GZIP),
        Compression::Zstd { level } => (Codec::Zstd(level), OCI_LAYER_ZSTD),
    };
    // A layer of one chunk (most RUN steps') on this thread, same bytes.
    let small = match super::small::is_small(entries) {
        true => super::small::tar_in_memory(entries, opts.known_files.as_deref())?,
        false => None,
    };
    if let Some(tar) = small {
        let s = super::small::write_small(&tar, codec, &mut buffered)?;
        return Ok(LayerInfo {
            diff_id: s.diff_id,
            digest: s.digest,
            size: s.size,
            uncompressed_size: s.tar_size,
            media_type,
            chunks: s.stats,
        });
    }
    let done = compress_entries(entries, buffered, codec, opts)?;
    let digest = done.digest;
    if let Some(cache) = &opts.chunk_cache {
        cache
            .record(&digest, &done.new_chunks)
            .context("recording the layer's chunks in the chunk cache")?;
        super::chunkseed::save(cache, &digest, codec, &done.index)
            .context("saving the layer's chunk index")?;
    }
    Ok(LayerInfo {
        diff_id: done.diff_id,
        digest,
        size: done.size,
        uncompressed_size: done.tar_size,
        media_type,
        chunks: done.stats,
    })
}

/// Tars and compresses `entries` into `out`: this thread reads and tars,
/// workers compress, and a scoped thread writes the pieces to `out`.
fn compress_entries(
    entries: &[LayerEntry],
    mut out: BufWriter<&mut (dyn Write + Send)>,
    codec: Codec,
    opts: &WriteOptions,
) -> Result<Finished<()>> {
    // Pieces queued for the writer: those in memory at most
    // `WRITE_QUEUE_BYTES` (`ToWriterThread` waits for the lengths reported
    // back), ranges of an earlier blob by count only.
    let (tx, rx) = crossbeam_channel::bounded::<Piece>(WRITE_QUEUE_PIECES);
    // Unbounded, but short: `put` takes the reports on every call.
    let (written_tx, written) = crossbeam_channel::unbounded::<usize>();
    std::thread::scope(|s| {
        let writer = std::thread::Builder::new()
            .name("layer-write".into())
            .spawn_scoped(s, move || -> io::Result<()> {
                for piece in rx {
                    let n = piece.write_to(&mut out)?;
                    // The producer is gone only when it failed first.
                    if n > 0 {
                        let _ = written_tx.send(n);
                    }
                }
                out.flush()
            })
            .context("starting the layer writer thread")?;
        let produced = (|| -> Result<Finished<()>> {
            let mut chunked = ChunkedWriter::new(
                ToWriterThread::new(tx, written),
                codec,
                opts.threads,
                opts.chunk_cache.clone(),
            )
            .context("starting compression threads")?;
            write_entries(entries, &mut chunked, opts.known_files.as_deref())?;
            let done = chunked
                .finish()
                .context("finishing the compressed stream")?;
            // Dropping the sender ends the writer's loop.
            Ok(done.map_out(|_| ()))
        })();
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("the layer writer thread panicked"))?;
        // A write error (a full disk) is the cause of any "writer exited".
        written.context("writing the layer blob")?;
        produced
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_layer_has_dockers_well_known_diff_id() {
        for compression in [
            Compression::None,
            Compression::Gzip { level: 6 },
            Compression::Zstd { level: 3 },
        ] {
            let mut out = Vec::new();
            let opts = WriteOptions {
                compression,
                ..Default::default()
            };
            let info = write_layer(Vec::new(), &mut out, &opts).unwrap();
            assert_eq!(
                info.diff_id,
                "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
            );
            assert_eq!(info.uncompressed_size, 1024);
            assert_eq!(info.size, out.len() as u64);
        }
    }

    /// A sink that fails part-way (a full disk): the error reaches the
    /// caller through the writer thread, and nothing waits forever.
    #[test]
    fn a_failing_sink_fails_the_layer_without_hanging() {
        use crate::layer::{EntryKind, FileSource, Timespec};
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::other("no space left (test)"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        // Incompressible, so the blob is far past the sink's 1 MiB.
        let mut x: u64 = 1;
        let data: Vec<u8> = (0..24 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for compression in [
            Compression::Gzip { level: 1 },
            Compression::Zstd { level: 1 },
        ] {
            let entries = vec![LayerEntry {
                path: "big".into(),
                kind: EntryKind::File(FileSource::Bytes(data.clone())),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: Timespec::new(0, 0),
                xattrs: vec![],
            }];
            let opts = WriteOptions {
                compression,
                threads: 2,
                ..Default::default()
            };
            let err = write_layer(entries, &mut Full(1 << 20), &opts).unwrap_err();
            assert!(
                format!("{err:#}").contains("no space left (test)"),
                "{err:#}"
            );
        }
    }

    /// Pins the exact tar bytes: any change to header encoding, ordering or
    /// PAX records changes every diff_id we produce, so it must be deliberate.
    #[test]
    fn tar_format_snapshot() {
        use crate::layer::{EntryKind, FileSource, LayerEntry, Timespec};
        let base = LayerEntry {
            path: String::new(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timespec::new(1_700_000_000, 0),
            xattrs: vec![],
        };
        let entries = vec![
            LayerEntry {
                path: "etc".into(),
                ..base.clone()
            },
            LayerEntry {
                path: "etc/app.conf".into(),
                kind: EntryKind::File(FileSource::Bytes(b"k=v\n".to_vec())),
                mode: 0o4755,
                uid: 1000,
                gid: 1000,
                mtime: Timespec::new(1_700_000_000, 250_000_000),
                xattrs: vec![("security.capability".into(), vec![1, 0, 0, 2])],
            },
            LayerEntry {
                path: "etc/link".into(),
                kind: EntryKind::Symlink {
                    target: "app.conf".into(),
                },
                ..base.clone()
            },
            LayerEntry {
                path: format!("opt/{}", "n".repeat(120)),
                kind: EntryKind::Fifo,
                mode: 0o600,
                ..base.clone()
            },
            LayerEntry::whiteout("var/old"),
        ];
        let mut out = Vec::new();
        let opts = WriteOptions {
            compression: Compression::None,
            ..Default::default()
        };
        let info = write_layer(entries, &mut out, &opts).unwrap();
        assert_eq!(&out[257..265], b"ustar\x0000");
        assert_eq!(&out[..4], b"etc/");
        let names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/app.conf",
                "etc/link",
                &format!("opt/{}", "n".repeat(120)),
                "var/.wh.old"
            ]
        );
        assert_eq!(
            info.diff_id,
            "sha256:4bb6b99b1bcb3e6cc38d91d25532a5e4741648ab9dc6b6af1f6fe7f18995cc52"
        );
    }
}
