//! Layers small enough to be one chunk (what most RUN steps write: a file
//! or two and the directories above them), written on the calling thread.
//!
//! The chunked writer starts a hasher, a writer and one compression worker
//! per core for every layer, and looks its chunk up in the chunk cache and
//! records it there: for a layer of a few KiB that costs more than the
//! layer (thread starts, the cache's files; docs/benchmarks.md, "Per RUN
//! step"). A tar shorter than `MIN_CHUNK` is always one chunk there (a cut
//! needs a chunk of `MIN_CHUNK` bytes or an entry of `MAX_CHUNK`), whose
//! bytes are one gzip member or zstd frame of the whole tar made by the
//! same compressor call: so the blob written here is byte for byte the one
//! the chunked writer makes, and the layer's digest does not depend on the
//! path taken (`tests::same_bytes_as_the_chunked_writer`, and
//! `build_pinned::` pins whole images).

use std::io::Write;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::chunked::{compress_one, ChunkStats, Codec, MIN_CHUNK};
use super::entry::{EntryKind, FileSource, LayerEntry};
use super::tarwrite::{write_entries, KnownFiles, TarSink};

/// Entries whose tar is at most this long by estimate take this path: half
/// of `MIN_CHUNK`, so headers longer than estimated (PAX records) never
/// reach it; the written length is checked again anyway.
const SMALL_TAR: u64 = MIN_CHUNK as u64 / 2;

/// More entries than this are not looked at (the estimate stats each file).
const MAX_ENTRIES: usize = 256;

/// Whether `entries` surely make a tar far shorter than one chunk. Files
/// are `lstat`ed for their size; one that cannot be is not small.
pub(crate) fn is_small(entries: &[LayerEntry]) -> bool {
    if entries.len() > MAX_ENTRIES {
        return false;
    }
    let blocks = |n: u64| n.div_ceil(512) * 512;
    // The two end-of-archive blocks.
    let mut total = 1024u64;
    for e in entries {
        let link = match &e.kind {
            EntryKind::Symlink { target } | EntryKind::Hardlink { target } => target.len(),
            _ => 0,
        };
        let xattrs: usize = e.xattrs.iter().map(|(k, v)| k.len() + v.len() + 32).sum();
        // Header, and a PAX header with its records (path, link, xattrs,
        // times, ids) when it needs one.
        total += 1024 + blocks((e.path.len() + link + xattrs + 256) as u64);
        if let EntryKind::File(src) = &e.kind {
            let size = match src {
                FileSource::Bytes(b) => b.len() as u64,
                FileSource::Path(p) => match std::fs::symlink_metadata(p) {
                    Ok(m) => m.len(),
                    Err(_) => return false,
                },
            };
            total += blocks(size);
        }
        if total > SMALL_TAR {
            return false;
        }
    }
    true
}

/// The tar of `entries` in memory, when it is shorter than one chunk (the
/// files may have grown since [`is_small`] looked: then `None`, and the
/// caller writes the layer the chunked way).
pub(crate) fn tar_in_memory(
    entries: &[LayerEntry],
    known: Option<&KnownFiles>,
) -> Result<Option<Vec<u8>>> {
    let mut tar = Vec::with_capacity(SMALL_TAR as usize);
    write_entries(entries, &mut tar, known)?;
    Ok((tar.len() < MIN_CHUNK).then_some(tar))
}

impl TarSink for Vec<u8> {}

/// What [`write_small`] wrote.
pub(crate) struct SmallLayer {
    pub diff_id: String,
    pub tar_size: u64,
    pub digest: String,
    pub size: u64,
    pub stats: ChunkStats,
}

/// Compresses `tar` (from [`tar_in_memory`]) as one chunk into `out`.
pub(crate) fn write_small(
    tar: &[u8],
    codec: Codec,
    out: &mut (dyn Write + Send),
) -> Result<SmallLayer> {
    let bytes = compress_one(tar, codec).context("compressing the layer")?;
    out.write_all(&bytes).context("writing the layer blob")?;
    out.flush().context("flushing the layer blob")?;
    let hex = |data: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(data)));
    Ok(SmallLayer {
        diff_id: hex(tar),
        tar_size: tar.len() as u64,
        digest: hex(&bytes),
        size: bytes.len() as u64,
        stats: ChunkStats {
            chunks: 1,
            compressed: 1,
            ..ChunkStats::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{write_prepared, PreparedEntries, Timespec, WriteOptions};
    use crate::oci::Compression;

    fn entry(path: &str, kind: EntryKind) -> LayerEntry {
        LayerEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Timespec { sec: 1, nsec: 5 },
            xattrs: vec![("user.x".into(), b"y".to_vec())],
        }
    }

    /// The small path and the chunked writer (forced by writing the same
    /// tar through `ChunkedWriter`) give the same blob, for both codecs.
    #[test]
    fn same_bytes_as_the_chunked_writer() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![7u8; 100_000]).unwrap();
        let entries = vec![
            entry("etc", EntryKind::Dir),
            entry(
                "etc/a",
                EntryKind::File(FileSource::Bytes(b"hello\n".to_vec())),
            ),
            entry("etc/big", EntryKind::File(FileSource::Path(file))),
            entry("etc/l", EntryKind::Symlink { target: "a".into() }),
        ];
        let prepared = PreparedEntries::new(entries, None).unwrap();
        assert!(is_small(&prepared));
        for compression in [
            Compression::Gzip { level: 6 },
            Compression::Zstd { level: 3 },
        ] {
            let codec = match compression {
                Compression::Gzip { level } => Codec::Gzip(level),
                Compression::Zstd { level } => Codec::Zstd(level),
                Compression::None => unreachable!(),
            };
            let mut small = Vec::new();
            let opts = WriteOptions {
                compression,
                ..WriteOptions::default()
            };
            let info = write_prepared(&prepared, &mut small, &opts).unwrap();
            let mut chunked =
                super::super::chunked::ChunkedWriter::new(Vec::new(), codec, 2, None).unwrap();
            write_entries(&prepared, &mut chunked, None).unwrap();
            let done = chunked.finish().unwrap();
            assert_eq!(small, done.out, "{compression:?}");
            assert_eq!(info.digest, done.digest);
            assert_eq!(info.diff_id, done.diff_id);
            assert_eq!(info.size, small.len() as u64);
            assert_eq!(info.chunks.compressed, 1);
        }
    }

    #[test]
    fn a_big_file_or_many_entries_are_not_small() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![0u8; SMALL_TAR as usize]).unwrap();
        let big = vec![entry("f", EntryKind::File(FileSource::Path(file)))];
        assert!(!is_small(&big));
        let gone = vec![entry(
            "g",
            EntryKind::File(FileSource::Path(dir.path().join("no"))),
        )];
        assert!(!is_small(&gone));
        let many: Vec<_> = (0..=MAX_ENTRIES)
            .map(|i| entry(&format!("d{i}"), EntryKind::Dir))
            .collect();
        assert!(!is_small(&many));
    }
}
