use super::*;
use crate::layer::{write_layer, LayerEntry, Timespec, WriteOptions};
use std::fs;
use std::sync::Arc;

/// A store-like dir: chunk records, temps and blobs by hex digest.
fn cache(root: &Path) -> ChunkCache {
    let blobs = root.join("blobs");
    for d in ["chunks", "tmp", "blobs"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let resolver: crate::layer::BlobResolver =
        Arc::new(move |d: &str| Some(blobs.join(d.strip_prefix("sha256:")?)));
    ChunkCache::new(root.join("chunks"), root.join("tmp"), resolver)
}

/// ~2.5 MB of files in several chunks; `salt` changes one file.
fn entries(salt: &str) -> Vec<LayerEntry> {
    (0..120usize)
        .map(|i| {
            let body: String = (0..1000)
                .map(|l| format!("line {l} of file {i} {}\n", if i == 60 { salt } else { "" }))
                .collect();
            LayerEntry {
                path: format!("f{i:03}"),
                kind: crate::layer::EntryKind::File(crate::layer::FileSource::Bytes(
                    body.into_bytes(),
                )),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: Timespec::new(0, 0),
                xattrs: vec![],
            }
        })
        .collect()
}

/// Writes a layer into `root`'s blobs; returns (digest, diff_id, stats).
fn write(
    root: &Path,
    c: &ChunkCache,
    files: Vec<LayerEntry>,
    compression: Compression,
) -> (String, String, crate::layer::ChunkStats) {
    let mut out = Vec::new();
    let opts = WriteOptions {
        compression,
        threads: 2,
        chunk_cache: Some(c.clone()),
        ..Default::default()
    };
    let info = write_layer(files, &mut out, &opts).unwrap();
    fs::write(root.join("blobs").join(&info.digest[7..]), &out).unwrap();
    (info.digest, info.diff_id, info.chunks)
}

fn diff_id_of(root: &Path, digest: &str) -> String {
    let f = fs::File::open(root.join("blobs").join(&digest[7..])).unwrap();
    crate::cache::remote::diff_id_of(f).unwrap()
}

/// Store A writes a layer and its index; store B, given A's blob and
/// index, seeds its cache and writes a one-file-changed layer reusing
/// almost every chunk, bit-identical to a cold write.
fn round_trip(compression: Compression, tamper: impl Fn(&str) -> String) -> (SeedStats, u64) {
    let (a, b, cold) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let ca = cache(a.path());
    let (digest, _, stats) = write(a.path(), &ca, entries(""), compression);
    assert!(stats.chunks >= 3, "{stats:?}");
    let index = local_index(&ca, &digest).expect("an index was saved");
    let index = tamper(std::str::from_utf8(&index).unwrap());

    let cb = cache(b.path());
    fs::copy(
        a.path().join("blobs").join(&digest[7..]),
        b.path().join("blobs").join(&digest[7..]),
    )
    .unwrap();
    let blob = b.path().join("blobs").join(&digest[7..]);
    let seeded = seed(&cb, index.as_bytes(), &digest, &blob, compression).unwrap();
    let changed = entries("changed");
    let (d_b, id_b, stats_b) = write(b.path(), &cb, changed, compression);
    let cc = cache(cold.path());
    let (d_cold, _, _) = write(cold.path(), &cc, entries("changed"), compression);
    assert_eq!(d_b, d_cold, "a seeded write is bit-identical to a cold one");
    assert_eq!(diff_id_of(b.path(), &d_b), id_b);
    (seeded, stats_b.reused)
}

#[test]
fn an_honest_index_seeds_every_chunk_gzip_and_zstd() {
    for compression in [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ] {
        let (seeded, reused) = round_trip(compression, str::to_string);
        assert_eq!(seeded.seeded, seeded.listed, "{compression:?} {seeded:?}");
        assert_eq!(seeded.refused, 0);
        assert!(
            reused + 2 >= seeded.listed as u64 && reused > 0,
            "{compression:?}: {reused} of {seeded:?}"
        );
    }
}

/// Rewrites chunk line `n` (1-based after the header) with `f`.
fn edit_line(index: &str, n: usize, f: impl Fn(Vec<String>) -> Vec<String>) -> String {
    let mut lines: Vec<String> = index.lines().map(str::to_string).collect();
    let words = lines[n].split(' ').map(str::to_string).collect();
    lines[n] = f(words).join(" ");
    lines.join("\n") + "\n"
}

#[test]
fn lying_entries_are_refused_and_cost_only_their_chunks() {
    for compression in [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ] {
        // Chunk 2 claims chunk 1's bytes (offset, length and CRC) but one
        // byte more than they hold, chunk 3 a wrong CRC: both refused.
        // Chunk 1 claims another key, which costs nothing: a seeded chunk
        // is recorded under the key of what it decompresses to.
        let (seeded, reused) = round_trip(compression, |index| {
            assert!(index.lines().count() > 3, "{index}");
            let first: Vec<String> = index
                .lines()
                .nth(1)
                .unwrap()
                .split(' ')
                .map(str::to_string)
                .collect();
            let moved = edit_line(index, 2, |mut w| {
                w[1..4].clone_from_slice(&first[1..4]);
                w[4] = (first[4].parse::<u64>().unwrap() + 1).to_string();
                w
            });
            let bad_crc = edit_line(&moved, 3, |mut w| {
                w[3] = (w[3].parse::<u64>().unwrap() ^ 1).to_string();
                w
            });
            edit_line(&bad_crc, 1, |mut w| {
                w[0] = "ab".repeat(32);
                w
            })
        });
        assert_eq!(seeded.refused, 2, "{compression:?} {seeded:?}");
        assert_eq!(seeded.seeded, seeded.listed - 2);
        assert!(reused > 0 && reused + 4 >= seeded.listed as u64, "{reused}");
    }
}

#[test]
fn gzip_chunks_must_be_exactly_one_plain_member() {
    let data = b"hello hello hello chunk".repeat(1000);
    let member = |data: &[u8]| {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
        let n = c.gzip_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    };
    let honest = member(&data);
    assert!(gunzip_chunk(&honest, data.len()) == Some(data.clone()));
    // Wrong claimed length, either way.
    assert!(gunzip_chunk(&honest, data.len() - 1).is_none());
    assert!(gunzip_chunk(&honest, data.len() + 1).is_none());
    // Bytes after the member (a second member hiding in the chunk), or a
    // member cut short.
    let mut two = honest.clone();
    two.extend_from_slice(&member(b"more"));
    assert!(gunzip_chunk(&two, data.len()).is_none());
    assert!(gunzip_chunk(&honest[..honest.len() - 1], data.len()).is_none());
    // A bad CRC-32 in the trailer.
    let mut bad_crc = honest.clone();
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 1;
    assert!(gunzip_chunk(&bad_crc, data.len()).is_none());
    // A header with a file name (valid gzip, but not what the writer makes).
    let mut named = flate2::GzBuilder::new()
        .filename("x")
        .write(Vec::new(), flate2::Compression::new(6));
    std::io::Write::write_all(&mut named, &data).unwrap();
    assert!(gunzip_chunk(&named.finish().unwrap(), data.len()).is_none());
    // Raw deflate (the chunk format of older rbuilds) is not a member.
    let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
    std::io::Write::write_all(&mut raw, &data).unwrap();
    assert!(gunzip_chunk(&raw.finish().unwrap(), data.len()).is_none());
}

#[test]
fn bad_indexes_are_refused_whole_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    let d = crate::oci::digest::sha256_digest(b"x");
    let blob = dir.path().join("blobs/x");
    fs::write(&blob, b"x").unwrap();
    let gz = Compression::Gzip { level: 6 };
    for (index, want) in [
        ("rbuild-chunk-index-v9 sha256:aa t\n".to_string(), "format"),
        (
            format!("{INDEX_VERSION} sha256:{} t\n", "b".repeat(64)),
            "another blob",
        ),
        (format!("{INDEX_VERSION} {d} t\nzz 1 2 3 4\n"), "line 2"),
        (
            format!("{INDEX_VERSION} {d} t\n{} 1 2 3\n", "c".repeat(64)),
            "line 2",
        ),
        ("garbage".to_string(), "header"),
    ] {
        let err = seed(&c, index.as_bytes(), &d, &blob, gz)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want) && err.contains(&d), "{err}");
    }
    // Another codec's index seeds nothing, without an error.
    let other = format!("{INDEX_VERSION} {d} zstd-3-x\n{} 0 1 0 1\n", "c".repeat(64));
    let s = seed(&c, other.as_bytes(), &d, &blob, gz).unwrap();
    assert_eq!((s.listed, s.seeded), (1, 0));
    // A blob that is not the digest the index names seeds nothing: every
    // record states what was computed from bytes whose digest was checked.
    fs::write(&blob, b"y").unwrap();
    let err = seed(&c, other.as_bytes(), &d, &blob, gz)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match its digest"), "{err}");
}

fn gunzip_chunk(bytes: &[u8], ulen: usize) -> Option<Vec<u8>> {
    Gunzip::new().member(bytes, ulen, Vec::new())
}
