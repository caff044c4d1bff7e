//! The layer unpacker on arbitrary (possibly compressed) archives: it may
//! fail, but never writes outside its destination.
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

fuzz_target!(|data: &[u8]| {
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
