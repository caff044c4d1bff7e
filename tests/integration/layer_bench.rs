//! Hidden entry point for bench/compress/run.sh: writes one layer from a
//! directory with our pipeline. Ignored by default; the script runs it as
//! `layer_bench::bench_write_layer --ignored --nocapture` from a release
//! build of the integration test binary.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use std::sync::Arc;

use rbuild::layer::{
    entries_from_dir, write_layer, BlobResolver, ChunkCache, DirOptions, WriteOptions,
};
use rbuild::oci::Compression;

/// With `RBUILD_BENCH_CACHE=DIR`, a chunk cache in DIR whose blobs are
/// `DIR/blobs/<hex>` (the written layer is hard-linked there), as the
/// store's would be.
fn bench_cache() -> Option<(ChunkCache, PathBuf)> {
    let dir = std::env::var("RBUILD_BENCH_CACHE")
        .ok()
        .filter(|d| !d.is_empty())?;
    let dir = PathBuf::from(dir);
    for sub in ["chunks", "tmp", "blobs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let blobs = dir.join("blobs");
    let b = blobs.clone();
    let resolver: BlobResolver = Arc::new(move |d: &str| Some(b.join(d.strip_prefix("sha256:")?)));
    let cache = ChunkCache::new(dir.join("chunks"), dir.join("tmp"), resolver);
    Some((cache, blobs))
}

#[test]
#[ignore = "benchmark driver: run by bench/compress/run.sh"]
fn bench_write_layer() {
    let (Ok(dir), Ok(out), Ok(codec)) = (
        std::env::var("RBUILD_BENCH_DIR"),
        std::env::var("RBUILD_BENCH_OUT"),
        std::env::var("RBUILD_BENCH_CODEC"),
    ) else {
        panic!("set RBUILD_BENCH_DIR, RBUILD_BENCH_OUT and RBUILD_BENCH_CODEC (gzip|zstd|none)");
    };
    let compression = match codec.as_str() {
        "gzip" => Compression::Gzip { level: 6 },
        "zstd" => Compression::Zstd { level: 3 },
        "none" => Compression::None,
        other => panic!("unknown codec {other}"),
    };
    let threads = std::env::var("RBUILD_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let start = Instant::now();
    let entries = entries_from_dir(&PathBuf::from(&dir), &DirOptions::default()).unwrap();
    let walked = start.elapsed().as_secs_f64();
    let mut f = File::create(&out).unwrap();
    let cache = bench_cache();
    let opts = WriteOptions {
        compression,
        source_date_epoch: None,
        threads,
        chunk_cache: cache.as_ref().map(|c| c.0.clone()),
        known_files: None,
    };
    let info = write_layer(entries, &mut f, &opts).unwrap();
    assert!(info.size > 0);
    if let Some((_, blobs)) = &cache {
        let dest = blobs.join(info.digest.strip_prefix("sha256:").unwrap());
        if !dest.exists() {
            std::fs::hard_link(&out, &dest).unwrap();
        }
    }
    println!(
        "RESULT codec={codec} secs={:.3} walk={walked:.3} size={} uncompressed={} digest={} chunks={} reused={}",
        start.elapsed().as_secs_f64(),
        info.size,
        info.uncompressed_size,
        info.digest,
        info.chunks.chunks,
        info.chunks.reused,
    );
}
