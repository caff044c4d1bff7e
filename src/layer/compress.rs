//! The layer pipeline: entries → tar → sha256 (diff_id) → compressor →
//! sha256 (digest) → sink, in one pass with bounded memory.

use std::io::{self, BufWriter, Write};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::entry::{normalize, LayerEntry, Timespec};
use super::pgzip::ParallelGzipWriter;
use super::tarwrite::write_entries;
use super::{MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// Parallel gzip, level 0–9 (6 is gzip's default).
    Gzip {
        level: u32,
    },
    /// Multithreaded zstd, level 1–22 (3 is zstd's default).
    Zstd {
        level: i32,
    },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip { level: 6 }
    }
}

/// Options for [`write_layer`].
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub compression: Compression,
    /// Clamp mtimes later than this (seconds since the epoch) to it.
    pub source_date_epoch: Option<i64>,
    /// Compression threads; 0 = one per core. Never changes the output bytes.
    pub threads: usize,
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

/// Writes `entries` as one layer blob into `out` and returns its identities.
pub fn write_layer(
    entries: Vec<LayerEntry>,
    out: &mut dyn Write,
    opts: &WriteOptions,
) -> Result<LayerInfo> {
    let mut entries = normalize(entries).context("preparing layer entries")?;
    if let Some(epoch) = opts.source_date_epoch {
        let limit = Timespec::new(epoch, 0);
        for e in &mut entries {
            e.mtime = e.mtime.min(limit);
        }
    }
    let buffered = BufWriter::with_capacity(256 * 1024, out);
    let (diff_id, uncompressed_size, media_type, compressed) = match opts.compression {
        Compression::None => {
            // The blob is the tar: one hash serves as diff_id and digest.
            let mut tar = HashWriter::new(buffered);
            write_entries(&entries, &mut tar)?;
            let (mut buffered, diff_id, n) = tar.finish();
            buffered.flush().context("flushing the layer blob")?;
            (diff_id, n, MEDIA_TYPE_TAR, None)
        }
        Compression::Gzip { level } => {
            let sink = HashWriter::new(buffered);
            let gz = ParallelGzipWriter::new(sink, level, opts.threads)
                .context("starting gzip threads")?;
            let mut tar = HashWriter::new(gz);
            write_entries(&entries, &mut tar)?;
            let (gz, diff_id, n) = tar.finish();
            let sink = gz.finish().context("finishing the gzip stream")?;
            (diff_id, n, MEDIA_TYPE_TAR_GZIP, Some(sink))
        }
        Compression::Zstd { level } => {
            let mut z = zstd::stream::write::Encoder::new(HashWriter::new(buffered), level)
                .context("starting zstd")?;
            z.multithread(zstd_threads(opts.threads))
                .context("enabling zstd threads")?;
            z.include_checksum(true)
                .context("enabling the zstd checksum")?;
            let mut tar = HashWriter::new(z);
            write_entries(&entries, &mut tar)?;
            let (z, diff_id, n) = tar.finish();
            let sink = z.finish().context("finishing the zstd stream")?;
            (diff_id, n, MEDIA_TYPE_TAR_ZSTD, Some(sink))
        }
    };
    let (digest, size) = match compressed {
        None => (diff_id.clone(), uncompressed_size),
        Some(sink) => {
            let (mut buffered, digest, size) = sink.finish();
            buffered.flush().context("flushing the layer blob")?;
            (digest, size)
        }
    };
    Ok(LayerInfo {
        diff_id,
        digest,
        size,
        uncompressed_size,
        media_type,
    })
}

fn zstd_threads(threads: usize) -> u32 {
    let n = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    };
    n as u32
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
