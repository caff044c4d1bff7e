//! The layer unpacker on arbitrary (possibly compressed) archives: it may
//! fail, but never writes outside its destination.
//!
//! A few kilobytes of bzip2, zstd or a GNU sparse entry can stand for
//! gigabytes of file data, which would fill the shared disk: every file
//! this process writes is capped at 16 MiB (`RLIMIT_FSIZE`, with `SIGXFSZ`
//! ignored so the write just fails).
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rbuild::layer::{unpack_layer, UnpackOptions};

fn listing(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .map(|e| {
            let body = if e.file_type().is_file() {
                fs::read(e.path()).unwrap_or_default()
            } else {
                Vec::new()
            };
            (e.path().to_path_buf(), body)
        })
        .collect()
}

fn cap_file_size() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let limit = libc::rlimit {
            rlim_cur: 16 << 20,
            rlim_max: 16 << 20,
        };
        // SAFETY: plain libc calls with valid arguments.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
    });
}

fuzz_target!(|data: &[u8]| {
    cap_file_size();
    let tmp = tempfile::tempdir().expect("temp dir");
    let outside = tmp.path().join("outside");
    let dest = tmp.path().join("dest");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(&dest).unwrap();
    fs::write(outside.join("keep"), b"untouched").unwrap();
    let before = listing(&outside);
    let opts = UnpackOptions {
        no_chown: true,
        ..UnpackOptions::default()
    };
    let _ = unpack_layer(data, &dest, &opts);
    assert_eq!(listing(&outside), before, "wrote outside dest");
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        2,
        "created beside dest"
    );
});
