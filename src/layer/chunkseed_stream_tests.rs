//! A store seeded from another store's layer, as a fresh CI runner is
//! from a download, resumes that layer's unchanged start on its next
//! write: its files unread, the blob bit-identical to a cold write.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layer::chunked::tests::{cache, known_now};
use crate::layer::chunkseed::{claimed_keys, local_index, seed_reader, seed_reader_fed, SeedKeys};
use crate::layer::chunkseed_feed::SeedFeed;
use crate::layer::{
    write_layer, EntryKind, FileSource, LayerEntry, LayerInfo, Timespec, WriteOptions,
};
use crate::oci::Compression;

fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(format!("let x{} = {};\n", s % 89, s % 997).as_bytes());
    }
    out.truncate(len);
    out
}

/// 300 files on disk, one of them 9 MiB (cut into pieces of its own).
fn tree(dir: &Path) -> Vec<LayerEntry> {
    (0..300u64)
        .map(|i| {
            let (name, data) = match i {
                20 => (format!("f{i:04}big"), text(9999, 9 << 20)),
                _ => (format!("f{i:04}.rs"), text(i, 20_000 + i as usize)),
            };
            let path = dir.join(&name);
            fs::write(&path, data).unwrap();
            LayerEntry {
                path: format!("src/{name}"),
                kind: EntryKind::File(FileSource::Path(path)),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: Timespec { sec: 1, nsec: 0 },
                xattrs: Vec::new(),
            }
        })
        .collect()
}

/// Writes `entries` (with the store `root`'s cache and known files, or
/// neither) and stores the blob.
fn write(root: Option<&Path>, entries: &[LayerEntry], c: Compression) -> (LayerInfo, Vec<u8>) {
    let mut out = Vec::new();
    let opts = WriteOptions {
        compression: c,
        threads: 2,
        chunk_cache: root.map(cache),
        known_files: root.map(|_| Arc::new(known_now(entries))),
        ..Default::default()
    };
    let info = write_layer(entries.to_vec(), &mut out, &opts).unwrap();
    if let Some(root) = root {
        fs::write(root.join("blobs").join(&info.digest[7..]), &out).unwrap();
    }
    (info, out)
}

/// Store `a`, an earlier CI job, writes the layer of `tree` with its
/// index: (the files' dir, the entries, the layer, its blob, its index).
fn earlier_layer(
    a: &Path,
    c: Compression,
) -> (PathBuf, Vec<LayerEntry>, LayerInfo, Vec<u8>, Vec<u8>) {
    let files = a.join("files");
    fs::create_dir_all(&files).unwrap();
    let entries = tree(&files);
    let (first, blob) = write(Some(a), &entries, c);
    let index = local_index(&cache(a), &first.digest).unwrap();
    (files, entries, first, blob, index)
}

#[test]
fn a_store_seeded_from_a_download_resumes_the_unchanged_start() {
    for c in [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
    ] {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (files, entries, first, blob, index) = earlier_layer(a.path(), c);

        // Store B downloads it (here: reads it) and seeds while it arrives.
        let cb = cache(b.path());
        let mut stored = Vec::new();
        let seeded = seed_reader(
            &index,
            &first.digest,
            blob.len() as u64,
            &mut &blob[..],
            &mut stored,
            c,
            SeedKeys {
                bytes: false,
                described: true,
            },
        )
        .unwrap();
        assert_eq!(stored, blob, "{c:?}: the blob passes through unchanged");
        let resumable = seeded.resumable;
        fs::write(b.path().join("blobs").join(&first.digest[7..]), &stored).unwrap();
        let stats = seeded.record(&cb, &first.digest).unwrap();
        assert_eq!((stats.seeded, stats.refused), (stats.listed, 0), "{c:?}");
        assert!(
            resumable + 1 >= stats.listed,
            "{c:?}: {resumable} of {stats:?}"
        );

        // One file past the middle changes; B's write resumes up to it.
        fs::write(files.join("f0200.rs"), text(4242, 21_000)).unwrap();
        let (warm, warm_bytes) = write(Some(b.path()), &entries, c);
        let (cold, cold_bytes) = write(None, &entries, c);
        assert_eq!(warm_bytes, cold_bytes, "{c:?}: seeding changed the blob");
        assert_eq!((&warm.digest, &warm.diff_id), (&cold.digest, &cold.diff_id));
        let s = warm.chunks;
        assert!(s.resumed >= 4 && s.resumed < s.chunks, "{c:?}: {s:?}");
        assert!(s.compressed <= 3, "{c:?}: {s:?}");
    }
}

#[test]
fn a_refused_chunk_ends_the_resumable_prefix_and_a_wrong_blob_records_nothing() {
    let c = Compression::Gzip { level: 6 };
    let a = tempfile::tempdir().unwrap();
    let (_, _, first, blob, index) = earlier_layer(a.path(), c);
    let text_index = String::from_utf8(index).unwrap();
    // Chunk k's claimed length is one short: it is refused, and no chunk
    // after it gets hash states (the chain from byte 0 is gone).
    let mut lines: Vec<String> = text_index.lines().map(str::to_string).collect();
    let k = (lines.len() - 1) / 2;
    let mut w: Vec<String> = lines[k + 1].split(' ').map(str::to_string).collect();
    w[4] = (w[4].parse::<u64>().unwrap() - 1).to_string();
    lines[k + 1] = w.join(" ");
    let lying = format!("{}\n", lines.join("\n"));
    let seeded = seed_reader(
        lying.as_bytes(),
        &first.digest,
        blob.len() as u64,
        &mut &blob[..],
        &mut std::io::sink(),
        c,
        SeedKeys::BOTH,
    )
    .unwrap();
    assert_eq!(seeded.stats.refused, 1);
    // Only chunks before the lie resume (one just before it may wait for
    // a file that goes on into the refused chunk).
    let r = seeded.resumable;
    assert!(r <= k && r + 1 >= k, "{r} resumable, chunk {k} refused");

    // A download that is not the blob the digest names: an error, and
    // nothing to record.
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let err = seed_reader(
        text_index.as_bytes(),
        &first.digest,
        bad.len() as u64,
        &mut &bad[..],
        &mut std::io::sink(),
        c,
        SeedKeys::BOTH,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
}

/// A layer of files the writer does not know by digest (a RUN's): seeded
/// by the keys of the chunks' bytes, the next write resumes from those.
#[test]
fn a_layer_of_unknown_files_resumes_by_the_bytes_keys() {
    let c = Compression::Gzip { level: 6 };
    let entries = |salt: &str| -> Vec<LayerEntry> {
        (0..200u64)
            .map(|i| LayerEntry {
                path: format!("f{i:04}"),
                kind: EntryKind::File(FileSource::Bytes({
                    let mut t = text(i, 30_000);
                    if i == 150 {
                        t.extend_from_slice(salt.as_bytes());
                    }
                    t
                })),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: Timespec { sec: 1, nsec: 0 },
                xattrs: Vec::new(),
            })
            .collect()
    };
    let write_in = |root: &Path, e: Vec<LayerEntry>| {
        let mut out = Vec::new();
        let opts = WriteOptions {
            compression: c,
            threads: 2,
            chunk_cache: Some(cache(root)),
            ..Default::default()
        };
        let info = write_layer(e, &mut out, &opts).unwrap();
        fs::write(root.join("blobs").join(&info.digest[7..]), &out).unwrap();
        (info, out)
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, blob) = write_in(a.path(), entries(""));
    let index = local_index(&cache(a.path()), &first.digest).unwrap();
    let bytes_only = SeedKeys {
        bytes: true,
        described: false,
    };
    let seeded = seed_reader(
        &index,
        &first.digest,
        blob.len() as u64,
        &mut &blob[..],
        &mut std::io::sink(),
        c,
        bytes_only,
    )
    .unwrap();
    assert!(seeded.resumable >= 4, "{}", seeded.resumable);
    let cb = cache(b.path());
    fs::write(b.path().join("blobs").join(&first.digest[7..]), &blob).unwrap();
    seeded.record(&cb, &first.digest).unwrap();
    let (warm, warm_bytes) = write_in(b.path(), entries("changed"));
    let (cold, cold_bytes) = write(None, &entries("changed"), c);
    assert_eq!(warm_bytes, cold_bytes);
    assert_eq!((&warm.digest, &warm.diff_id), (&cold.digest, &cold.diff_id));
    let s = warm.chunks;
    assert!(s.resumed >= 2 && s.resumed < s.chunks, "{s:?}");
}

/// An output that takes its time, as a write pushing to a slow registry.
struct Slow(Vec<u8>);

impl std::io::Write for Slow {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A fresh store's write fed by a seeding that keeps the earlier layer in
/// memory only (as a CI job's COPY is): a slow write still gets the cold
/// write's bytes, resuming the unchanged start; the feed never holds more
/// than its bound (the download waits for the write); and the store gets
/// neither the earlier blob nor a record naming it.
#[test]
fn a_slow_write_fed_from_memory_gets_the_cold_layer_and_stores_no_seed() {
    let c = Compression::Gzip { level: 6 };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (files, entries, first, blob, index) = earlier_layer(a.path(), c);
    fs::write(files.join("f0200.rs"), text(4242, 21_000)).unwrap();

    let cap = 1 << 20;
    let feed = Arc::new(SeedFeed::with_limits(
        cap,
        std::time::Duration::from_secs(60),
    ));
    feed.hold_back();
    feed.set_hints(claimed_keys(&index, &first.digest).unwrap());
    let described = SeedKeys {
        bytes: false,
        described: true,
    };
    let (warm, warm_bytes, seeded) = std::thread::scope(|s| {
        let seeding = s.spawn(|| {
            feed.begin_attempt();
            let size = blob.len() as u64;
            let mut sink = std::io::sink();
            let r = seed_reader_fed(
                &index,
                &first.digest,
                size,
                &mut &blob[..],
                &mut sink,
                c,
                described,
                Some(&feed),
            );
            feed.finish(r.is_ok());
            r.map(|s| s.stats)
        });
        let mut out = Slow(Vec::new());
        let opts = WriteOptions {
            compression: c,
            threads: 2,
            chunk_cache: Some(cache(b.path()).with_feed(feed.clone())),
            known_files: Some(Arc::new(known_now(&entries))),
            ..Default::default()
        };
        let info = write_layer(entries.clone(), &mut out, &opts).unwrap();
        feed.close();
        (info, out.0, seeding.join().unwrap().unwrap())
    });
    let (cold, cold_bytes) = write(None, &entries, c);
    assert_eq!(warm_bytes, cold_bytes, "the feed changed the blob");
    assert_eq!(warm.digest, cold.digest);
    let (f, s) = (feed.stats(), warm.chunks);
    assert_eq!(seeded.seeded, seeded.listed, "{seeded:?}");
    assert!(f.peak <= cap && f.peak > cap / 2, "{f:?}");
    assert!(feed.trusted(), "{f:?}");
    assert!(s.resumed >= 4 && s.reused + 3 >= s.chunks, "{s:?} {f:?}");
    assert_eq!(f.served as u64, s.reused, "{s:?} {f:?}");

    // Nothing of the earlier blob in B: no blob, no record naming it.
    assert!(!b.path().join("blobs").join(&first.digest[7..]).exists());
    for e in fs::read_dir(b.path().join("chunks")).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        assert!(!text.contains(&first.digest), "{text}");
    }
}

#[test]
fn held_chunks_keep_their_total_within_the_bound() {
    let mut held = super::Held::default();
    for i in 0..10 {
        held.insert(i, vec![0; 100], 550);
    }
    // The earliest went; the total is what is held, never over the bound.
    assert_eq!(
        held.chunks.keys().copied().collect::<Vec<_>>(),
        (5..10).collect::<Vec<_>>()
    );
    assert_eq!(held.bytes, 500);
    assert_eq!(held.remove(&7).map(|b| b.len()), Some(100));
    assert_eq!(held.remove(&7), None);
    assert_eq!(held.bytes, 400);
    held.drop_through(8);
    assert_eq!(held.chunks.keys().copied().collect::<Vec<_>>(), vec![9]);
    assert_eq!(held.bytes, 100);
    held.insert(9, vec![0; 30], 550);
    assert_eq!(held.bytes, 30);
    held.clear();
    assert_eq!((held.chunks.len(), held.bytes), (0, 0));
}
