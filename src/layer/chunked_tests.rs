//! Tests of the chunked compressor (a file of their own: chunked.rs stays short).

use std::fs;
use std::io::Read;
use std::path::Path;

use super::out::WRITE_QUEUE_BYTES;
use super::*;
use crate::layer::blobrange::BlobRange;
use crate::layer::{
    write_layer, BlobResolver, EntryKind, FileSource, KnownFiles, LayerEntry, LayerInfo, Timespec,
    WriteOptions,
};
use crate::oci::Compression;

/// Text-like, compressible, different per seed (xorshift over a word list).
fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = ["fn ", "let ", "x", "= ", "Some(", ");\n", "self.", "0"];
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(WORDS[(s % 8) as usize].as_bytes());
        out.extend_from_slice(format!("{}", s % 97).as_bytes());
    }
    out.truncate(len);
    out
}

fn file(path: &str, data: Vec<u8>) -> LayerEntry {
    LayerEntry {
        path: path.into(),
        kind: EntryKind::File(FileSource::Bytes(data)),
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timespec::new(1_700_000_000, 0),
        xattrs: vec![],
    }
}

/// ~10 MB: 400 files of 20 KB around one 9 MB file (cut into pieces).
fn tree() -> Vec<LayerEntry> {
    let mut v: Vec<LayerEntry> = (0..400)
        .map(|i| file(&format!("src/f{i:04}.rs"), text(i, 20_000)))
        .collect();
    v.push(file("src/f0200big", text(9999, 9 << 20)));
    v
}

fn write(
    entries: Vec<LayerEntry>,
    c: Compression,
    threads: usize,
    cache: Option<&ChunkCache>,
) -> (LayerInfo, Vec<u8>) {
    let mut out = Vec::new();
    let opts = WriteOptions {
        compression: c,
        threads,
        chunk_cache: cache.cloned(),
        ..Default::default()
    };
    let info = write_layer(entries, &mut out, &opts).unwrap();
    (info, out)
}

fn decode(c: Compression, bytes: &[u8]) -> Vec<u8> {
    let mut back = Vec::new();
    match c {
        Compression::Gzip { .. } => {
            flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut back)
                .unwrap();
        }
        Compression::Zstd { .. } => back = zstd::stream::decode_all(bytes).unwrap(),
        Compression::None => back = bytes.to_vec(),
    };
    back
}

const CODECS: [Compression; 2] = [
    Compression::Gzip { level: 6 },
    Compression::Zstd { level: 3 },
];

/// A cache whose blobs are files named by digest hex in `root/blobs`.
/// A chunk cache in `root` (`chunks/`, `tmp/`, `blobs/`), as a store's.
pub(in crate::layer) fn cache(root: &Path) -> ChunkCache {
    for d in ["chunks", "tmp", "blobs"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let blobs = root.join("blobs");
    let resolver: BlobResolver =
        Arc::new(move |d: &str| Some(blobs.join(d.strip_prefix("sha256:")?)));
    ChunkCache::new(root.join("chunks"), root.join("tmp"), resolver)
}

fn store_blob(root: &Path, info: &LayerInfo, bytes: &[u8]) {
    let hex = info.digest.strip_prefix("sha256:").unwrap();
    fs::write(root.join("blobs").join(hex), bytes).unwrap();
}

#[test]
fn chunked_streams_decode_to_the_tar_whatever_the_threads() {
    let (plain, tar) = write(tree(), Compression::None, 1, None);
    for c in CODECS {
        let (one, a) = write(tree(), c, 1, None);
        let (three, b) = write(tree(), c, 3, None);
        assert_eq!(a, b, "{c:?}: output depends on the thread count");
        assert_eq!(one, three);
        assert!(one.chunks.chunks >= 8, "{c:?}: {:?}", one.chunks);
        assert_eq!(one.chunks.compressed, one.chunks.chunks);
        assert_eq!(one.diff_id, plain.diff_id);
        assert_eq!(one.uncompressed_size, tar.len() as u64);
        assert_eq!(decode(c, &a), tar, "{c:?}");
        assert!(a.len() < tar.len() / 2, "{c:?}: {} bytes", a.len());
    }
}

#[test]
fn cut_points_follow_entries_and_big_files_are_split_from_their_start() {
    let mut w = ChunkedWriter::new(Vec::new(), Codec::Zstd(1), 1, None).unwrap();
    let mut cuts = Vec::new();
    let mut pos = 0u64;
    for e in tree() {
        let EntryKind::File(FileSource::Bytes(data)) = &e.kind else {
            unreachable!()
        };
        w.entry_start(data.len() as u64).unwrap();
        w.write_all(data).unwrap();
        w.entry_end(&e.path).unwrap();
        pos += data.len() as u64;
        cuts.push((w.total_in - w.chunk.len() as u64, pos));
    }
    let done = w.finish().unwrap();
    // The big file (index 400) starts a chunk: the chunk start seen
    // after it is a multiple of MAX_CHUNK from the file's start.
    let (start_after_big, end_big) = cuts[400];
    let big_start = end_big - (9 << 20);
    assert!(start_after_big >= big_start);
    assert_eq!((start_after_big - big_start) % MAX_CHUNK as u64, 0);
    assert!(done.stats.chunks >= 10, "{:?}", done.stats);
}

#[test]
fn warm_cache_reuses_unchanged_chunks_and_changes_no_byte() {
    for c in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path());
        let (first, bytes) = write(tree(), c, 2, Some(&cache));
        assert_eq!(first.chunks.reused, 0);
        store_blob(dir.path(), &first, &bytes);
        // Same entries again: everything comes from the cache, and the
        // blob is byte-identical.
        let (again, again_bytes) = write(tree(), c, 2, Some(&cache));
        assert_eq!(again.chunks.reused, again.chunks.chunks, "{c:?}");
        assert_eq!(again_bytes, bytes);

        // One file in the middle changed, one file inserted before the
        // big one: only the chunks around them are compressed again.
        let mut changed = tree();
        changed[150] = file("src/f0150.rs", text(424242, 21_000));
        changed.push(file("src/f0199x.rs", text(777, 5_000)));
        let (warm, warm_bytes) = write(changed.clone(), c, 2, Some(&cache));
        let (cold, cold_bytes) = write(changed.clone(), c, 2, None);
        assert_eq!(
            warm_bytes, cold_bytes,
            "{c:?}: a warm cache changed the blob"
        );
        assert_eq!(warm.digest, cold.digest);
        let s = warm.chunks;
        assert!(
            s.compressed <= 4 && s.reused + 4 >= s.chunks,
            "{c:?}: {s:?}"
        );
        assert!(s.reused_bytes > 15 << 20 >> 1, "{c:?}: {s:?}");
        let (_, tar) = write(changed, Compression::None, 1, None);
        assert_eq!(decode(c, &warm_bytes), tar);
    }
}

#[test]
fn a_different_level_does_not_reuse_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let (first, bytes) = write(tree(), Compression::Gzip { level: 6 }, 2, Some(&cache));
    store_blob(dir.path(), &first, &bytes);
    let (other, _) = write(tree(), Compression::Gzip { level: 1 }, 2, Some(&cache));
    assert_eq!(other.chunks.reused, 0);
    let (z, _) = write(tree(), Compression::Zstd { level: 6 }, 2, Some(&cache));
    assert_eq!(z.chunks.reused, 0);
}

#[test]
fn path_hash_is_stable() {
    // Cut points are part of the cache's contract: pin the hash.
    assert_eq!(path_hash(""), 0xf52a_15e9_a9b5_e89b);
    assert_ne!(path_hash("a"), path_hash("b"));
}

#[test]
fn concurrent_writers_share_one_cache_safely() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let c = Compression::Zstd { level: 3 };
    let (_, cold) = write(tree(), c, 2, None);
    // Two writers record the same chunks at once (as two builds would);
    // both blobs are the cold one, and no temp is left behind.
    let outs: Vec<(LayerInfo, Vec<u8>)> = std::thread::scope(|s| {
        let a = s.spawn(|| write(tree(), c, 2, Some(&cache)));
        let b = s.spawn(|| write(tree(), c, 2, Some(&cache)));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    for (info, bytes) in &outs {
        assert_eq!(bytes, &cold);
        store_blob(dir.path(), info, bytes);
    }
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let (warm, bytes) = write(tree(), c, 2, Some(&cache));
    assert_eq!(warm.chunks.reused, warm.chunks.chunks);
    assert_eq!(bytes, cold);
}

#[test]
fn cache_tag_names_the_libdeflate_in_cargo_lock() {
    // libdeflate-sys's version is libdeflate's (1.26.x bundles 1.26): an
    // upgrade that forgot LIBDEFLATE_VERSION would mix chunks of two
    // compressors in one blob and break warm == cold.
    let lock = include_str!("../../Cargo.lock");
    let at = lock
        .find("name = \"libdeflate-sys\"\nversion = \"")
        .expect("libdeflate-sys in Cargo.lock");
    let version = lock[at..].lines().nth(1).unwrap();
    assert!(
        version.starts_with(&format!("version = \"{LIBDEFLATE_VERSION}.")),
        "Cargo.lock has libdeflate-sys {version}, the cache tag says {LIBDEFLATE_VERSION}"
    );
    assert!(Codec::Gzip(6).cache_tag().contains(LIBDEFLATE_VERSION));
}

/// The members of a multi-member gzip file: (offset, length) of each, by
/// decoding one member at a time.
fn members(gz: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < gz.len() {
        let mut d = flate2::bufread::GzDecoder::new(&gz[pos..]);
        io::copy(&mut d, &mut io::sink()).unwrap();
        let rest = d.into_inner().len();
        let len = gz.len() - pos - rest;
        out.push((pos, len));
        pos += len;
    }
    out
}

#[test]
fn gzip_chunks_are_whole_members_and_levels_map_to_libdeflate() {
    let (info, gz) = write(tree(), Compression::Gzip { level: 6 }, 2, None);
    let m = members(&gz);
    // One member per chunk, each a gzip header with mtime 0 and OS unknown.
    assert_eq!(m.len() as u64, info.chunks.chunks);
    for &(at, _) in &m {
        assert_eq!(gz[at..at + 4], [0x1f, 0x8b, 8, 0]);
        assert_eq!(gz[at + 4..at + 8], [0, 0, 0, 0], "mtime");
        assert_eq!(gz[at + 9], 0xff, "OS");
    }
    // Level 0 stores; 1 and 9 compress less and more than 6.
    let size = |level| write(tree(), Compression::Gzip { level }, 2, None).1.len();
    let (l0, l1, l9) = (size(0), size(1), size(9));
    let (_, tar) = write(tree(), Compression::None, 1, None);
    assert!(l0 > tar.len(), "level 0 stores: {l0} vs tar {}", tar.len());
    assert!(l1 > gz.len() && gz.len() >= l9, "{l1} {} {l9}", gz.len());
}

#[test]
fn an_empty_stream_is_one_empty_gzip_member() {
    let w = ChunkedWriter::new(Vec::new(), Codec::Gzip(6), 1, None).unwrap();
    let done = w.finish().unwrap();
    let mut back = Vec::new();
    flate2::read::MultiGzDecoder::new(&done.out[..])
        .read_to_end(&mut back)
        .unwrap();
    assert!(back.is_empty());
    assert_eq!(done.size, done.out.len() as u64);
    assert!(done.out.starts_with(&[0x1f, 0x8b]));
}

/// Files on disk, and what a context scan would vouch for them.
fn disk_tree(dir: &Path) -> Vec<LayerEntry> {
    let mut v = Vec::new();
    for i in 0..300u64 {
        // A big file early on, cut into pieces of its own.
        let (name, data) = if i == 20 {
            (format!("f{i:04}big"), text(9999, 9 << 20))
        } else {
            (format!("f{i:04}.rs"), text(i, 20_000))
        };
        let path = dir.join(&name);
        fs::write(&path, data).unwrap();
        let mut e = file(&format!("src/{name}"), Vec::new());
        e.kind = EntryKind::File(FileSource::Path(path));
        v.push(e);
    }
    v
}

/// The entries' files as the context scan would know them now.
pub(in crate::layer) fn known_now(entries: &[LayerEntry]) -> KnownFiles {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut k = KnownFiles::default();
    for e in entries {
        let EntryKind::File(FileSource::Path(p)) = &e.kind else {
            continue;
        };
        let m = fs::metadata(p).unwrap();
        let file = crate::layer::KnownFile {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            sha256: sha2::Sha256::digest(fs::read(p).unwrap()).into(),
        };
        k.insert(p.clone(), file);
    }
    k
}

fn write_known(
    entries: Vec<LayerEntry>,
    c: Compression,
    cache: &ChunkCache,
    known: KnownFiles,
) -> (LayerInfo, Vec<u8>) {
    let mut out = Vec::new();
    let opts = WriteOptions {
        compression: c,
        threads: 2,
        chunk_cache: Some(cache.clone()),
        known_files: Some(Arc::new(known)),
        ..Default::default()
    };
    let info = write_layer(entries, &mut out, &opts).unwrap();
    (info, out)
}

#[test]
fn an_unchanged_start_is_resumed_unread_and_changes_no_byte() {
    for c in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        fs::create_dir_all(&files).unwrap();
        let cache = cache(dir.path());
        let entries = disk_tree(&files);
        let (cold, cold_bytes) = write_known(entries.clone(), c, &cache, known_now(&entries));
        store_blob(dir.path(), &cold, &cold_bytes);
        assert_eq!(cold.chunks.reused, 0);

        // One file past the middle changed: the chunks before it are
        // resumed, the rest as before; the blob is the one a cold write
        // without any cache makes.
        let victim = files.join("f0200.rs");
        fs::write(&victim, text(4242, 21_000)).unwrap();
        let (warm, warm_bytes) = write_known(entries.clone(), c, &cache, known_now(&entries));
        let (plain, plain_bytes) = write(entries.clone(), c, 2, None);
        assert_eq!(warm_bytes, plain_bytes, "{c:?}: resuming changed the blob");
        assert_eq!(
            (&warm.digest, &warm.diff_id),
            (&plain.digest, &plain.diff_id)
        );
        let s = warm.chunks;
        assert!(s.resumed >= 4 && s.resumed < s.chunks, "{c:?}: {s:?}");
        assert!(s.compressed <= 3, "{c:?}: {s:?}");
        store_blob(dir.path(), &warm, &warm_bytes);

        // Resumed files are not read: an early file rewritten with other
        // bytes of the same size, vouched for with its old digest (a stale
        // scan), still gives the old layer. And a later one, past the
        // first changed chunk, is read: its stale digest's record does not
        // match the bytes read (CRC), so it is compressed as it is.
        let mut stale = known_now(&entries);
        let early = files.join("f0003.rs");
        let old_early = stale.map.get(&early).unwrap().sha256;
        fs::write(
            &early,
            text(3, 20_000).iter().map(|b| b ^ 1).collect::<Vec<_>>(),
        )
        .unwrap();
        let mut fresh = known_now(&entries);
        fresh.map.get_mut(&early).unwrap().sha256 = old_early;
        let (same, same_bytes) = write_known(entries.clone(), c, &cache, fresh);
        assert_eq!(same_bytes, warm_bytes, "{c:?}: a resumed file was read");
        // The warm blob was recorded whole: everything resumes from it.
        assert_eq!(same.chunks.resumed, same.chunks.chunks, "{c:?}");
        fs::write(&early, text(3, 20_000)).unwrap();

        let late = files.join("f0250.rs");
        stale = known_now(&entries);
        let old_late = stale.map.get(&late).unwrap().sha256;
        fs::write(files.join("f0001.rs"), text(1111, 20_000)).unwrap();
        fs::write(
            &late,
            text(250, 20_000).iter().map(|b| b ^ 2).collect::<Vec<_>>(),
        )
        .unwrap();
        let mut lying = known_now(&entries);
        lying.map.get_mut(&late).unwrap().sha256 = old_late;
        let (read, read_bytes) = write_known(entries.clone(), c, &cache, lying);
        let (truth, truth_bytes) = write(entries.clone(), c, 2, None);
        assert_eq!(
            read_bytes, truth_bytes,
            "{c:?}: a stale digest reused other bytes"
        );
        assert_eq!(read.diff_id, truth.diff_id);
        assert_eq!(read.chunks.resumed, 0, "{c:?}");
        let (_, tar) = write(entries, Compression::None, 1, None);
        assert_eq!(decode(c, &read_bytes), tar);
    }
}

/// Resuming stops inside a big file (the record of its second piece is
/// gone): that piece is read, the rest of the file is read as usual, and
/// the blob is still the cache-less one.
#[test]
fn resuming_can_stop_inside_a_big_file() {
    for c in CODECS {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        fs::create_dir_all(&files).unwrap();
        let cache = cache(dir.path());
        let entries = disk_tree(&files);
        let (cold, cold_bytes) = write_known(entries.clone(), c, &cache, known_now(&entries));
        store_blob(dir.path(), &cold, &cold_bytes);
        // The big file's pieces are the chunks of exactly MAX_CHUNK bytes;
        // drop the record of the second one (by tar offset).
        let mut pieces: Vec<(u64, std::path::PathBuf)> = fs::read_dir(dir.path().join("chunks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter_map(|p| {
                let text = fs::read_to_string(&p).unwrap();
                let w: Vec<&str> = text.split(' ').collect();
                (w[5] == MAX_CHUNK.to_string()).then(|| (w[7].parse().unwrap(), p))
            })
            .collect();
        pieces.sort();
        assert_eq!(pieces.len(), 2, "{c:?}: {pieces:?}");
        fs::remove_file(&pieces[1].1).unwrap();
        let (warm, warm_bytes) = write_known(entries.clone(), c, &cache, known_now(&entries));
        assert_eq!(warm_bytes, cold_bytes, "{c:?}");
        assert_eq!((&warm.digest, &warm.diff_id), (&cold.digest, &cold.diff_id));
        let s = warm.chunks;
        assert!(s.resumed >= 2 && s.resumed < s.chunks, "{c:?}: {s:?}");
        assert_eq!(s.compressed, 1, "{c:?}: {s:?}");
    }
}

/// The writer thread's queue is bounded in bytes: while pieces over
/// `WRITE_QUEUE_BYTES` wait unwritten, `put` blocks (eight 4 MiB resumed
/// chunks once waited at once), and a written length lets it go on.
#[test]
fn the_writer_queue_is_bounded_in_bytes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let piece = WRITE_QUEUE_BYTES / 2;
    let (tx, rx) = crossbeam_channel::bounded::<Piece>(WRITE_QUEUE_PIECES);
    let (written_tx, written) = crossbeam_channel::unbounded::<usize>();
    let put = Arc::new(AtomicUsize::new(0));
    let producer = {
        let put = put.clone();
        std::thread::spawn(move || {
            let mut out = ToWriterThread::new(tx, written);
            // Ranges of a stored blob hold no memory: not counted.
            let blob = Arc::new(tempfile::tempfile().unwrap());
            for _ in 0..100 {
                out.put_range(BlobRange::new(blob.clone(), 0, piece))
                    .unwrap();
            }
            for _ in 0..3 {
                out.put(Arc::new(vec![0u8; piece])).unwrap();
                put.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // All three pieces are sent, none reported written: the third put
    // (12 MiB queued) must not return.
    let got: Vec<_> = (0..103).map(|_| rx.recv().unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        put.load(Ordering::SeqCst),
        2,
        "put went past the byte bound"
    );
    drop(got);
    written_tx.send(piece).unwrap();
    producer.join().unwrap();
    assert_eq!(put.load(Ordering::SeqCst), 3);
}

/// Resumed chunks reach the blob as ranges of the earlier blob, written by
/// the writer thread from a mapping (`blobrange.rs`): wherever the changed
/// file is (the first, one in the middle, the last), the blob is byte for
/// byte the one a write without any cache makes, and what comes before
/// the change is resumed. An earlier blob whose bytes no longer match its
/// records (flipped in place) is not resumed from, and changes nothing.
#[test]
fn resumed_ranges_give_the_cacheless_blob_wherever_the_change_is() {
    for c in CODECS {
        for victim in ["f0000.rs", "f0150.rs", "f0299.rs"] {
            let dir = tempfile::tempdir().unwrap();
            let files = dir.path().join("files");
            fs::create_dir_all(&files).unwrap();
            let cache = cache(dir.path());
            let entries = disk_tree(&files);
            let (cold, cold_bytes) = write_known(entries.clone(), c, &cache, known_now(&entries));
            store_blob(dir.path(), &cold, &cold_bytes);
            fs::write(files.join(victim), text(4242, 21_000)).unwrap();
            let (warm, warm_bytes) = write_known(entries.clone(), c, &cache, known_now(&entries));
            let (plain, plain_bytes) = write(entries.clone(), c, 2, None);
            assert!(warm_bytes == plain_bytes, "{c:?} {victim}: blob differs");
            assert_eq!(
                (&warm.digest, &warm.diff_id),
                (&plain.digest, &plain.diff_id)
            );
            let s = warm.chunks;
            match victim {
                "f0000.rs" => assert_eq!(s.resumed, 0, "{c:?}: {s:?}"),
                "f0150.rs" => assert!(s.resumed >= 4 && s.resumed < s.chunks, "{c:?}: {s:?}"),
                _ => assert!(
                    s.resumed + 2 >= s.chunks && s.resumed < s.chunks,
                    "{c:?}: {s:?}"
                ),
            }
            assert!(s.compressed <= 3, "{c:?} {victim}: {s:?}");

            // Flip a byte inside the warm blob's first chunk: its record's
            // CRC no longer matches, so nothing is resumed from it, and the
            // next blob is still the cache-less one.
            store_blob(dir.path(), &warm, &warm_bytes);
            let hex = warm.digest.strip_prefix("sha256:").unwrap();
            let mut broken = warm_bytes.clone();
            broken[100] ^= 0xff;
            fs::write(dir.path().join("blobs").join(hex), &broken).unwrap();
            fs::write(files.join(victim), text(4343, 21_000)).unwrap();
            let (next, next_bytes) = write_known(entries.clone(), c, &cache, known_now(&entries));
            let (truth, truth_bytes) = write(entries.clone(), c, 2, None);
            assert!(
                next_bytes == truth_bytes,
                "{c:?} {victim}: corrupt bytes reused"
            );
            assert_eq!(next.digest, truth.digest);
            assert_eq!(next.chunks.resumed, 0, "{c:?} {victim}");
        }
    }
}
