//! Hidden entry point for bench/compress/run.sh: writes one layer from a
//! directory with our pipeline. Ignored by default; the script runs it as
//! `layer_bench --ignored --nocapture` from a release build.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use rbuild::layer::{entries_from_dir, write_layer, Compression, DirOptions, WriteOptions};

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
    let mut f = File::create(&out).unwrap();
    let opts = WriteOptions {
        compression,
        source_date_epoch: None,
        threads,
        chunk_cache: None,
    };
    let info = write_layer(entries, &mut f, &opts).unwrap();
    assert!(info.size > 0);
    println!(
        "RESULT codec={codec} secs={:.3} size={} uncompressed={} digest={}",
        start.elapsed().as_secs_f64(),
        info.size,
        info.uncompressed_size,
        info.digest
    );
}
