//! The engine's cache-mount hook against a real `cache::mounts::MountSet`
//! (the packing side's fixtures are `cache::mounts`'s test helpers).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use crate::cache::mounts::tests::{fill_mount, packed, set_of, store, tree, PLATFORM};
use crate::cache::mounts::MountRestorer;

use super::cache_dir;

fn cache_mount(id: &str, extra: &str) -> crate::plan::Mount {
    let spec = format!("type=cache,id={id},target=/c{extra}");
    crate::plan::parse_mount(&spec).unwrap()
}

/// The engine's hook: a mount this store lacks is filled from the set (only
/// for the same id and platform), with the mount's own owner and mode; one
/// it has is left alone; a restore that fails leaves an empty mount and a
/// warning.
#[test]
fn the_engine_fills_a_new_mount_dir_from_the_set() {
    let (_d, a) = store();
    let src = fill_mount(&a, "pip");
    let p = packed(&a, "pip");
    let mut broken = p.clone();
    broken.id = "broken".into();
    broken.layer.diff_id = format!("sha256:{}", "0".repeat(64));
    let mut invalid = p.clone();
    invalid.id = "invalid".into();
    invalid.platform = "nope".into();
    let (set, errors) = set_of(&a, vec![p.clone(), broken, invalid]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let set: Arc<dyn MountRestorer> = Arc::new(set);

    let (_d2, b) = store();
    let warnings = std::sync::Mutex::new(Vec::<String>::new());
    let warn = |w: &str| warnings.lock().unwrap().push(w.to_string());
    // Another platform: not restored.
    let m = cache_mount("pip", ",mode=0700");
    let dir = cache_dir(&b, "pip", &m, "linux/arm64", Some(&*set), &warn).unwrap();
    assert!(tree(&dir).is_empty());
    fs::remove_dir(&dir).unwrap();
    // The same platform: restored, with the mount's mode on its root.
    let dir = cache_dir(&b, "pip", &m, PLATFORM, Some(&*set), &warn).unwrap();
    assert_eq!(tree(&dir), tree(&src));
    assert_eq!(dir.metadata().unwrap().mode() & 0o7777, 0o700);
    // Existing (even changed) dirs are never restored over.
    fs::remove_file(dir.join("empty")).unwrap();
    cache_dir(&b, "pip", &m, PLATFORM, Some(&*set), &warn).unwrap();
    assert!(!dir.join("empty").exists());
    // A blob that fails its check: an empty mount and one warning.
    let m = cache_mount("broken", "");
    let dir = cache_dir(&b, "broken", &m, PLATFORM, Some(&*set), &warn).unwrap();
    assert!(tree(&dir).is_empty(), "{:?}", tree(&dir));
    let w = warnings.lock().unwrap().clone();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("cache mount broken") && w[0].contains("diff_id"),
        "{w:?}"
    );
    // No temp is left behind.
    assert!(b.root().join("rbuild/tmp").read_dir().unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("cachemount-")
    }));
}

#[test]
fn the_set_reports_used_restored_and_unused_entries() {
    let (_d, a) = store();
    fill_mount(&a, "x");
    fill_mount(&a, "y");
    let px = packed(&a, "x");
    let py = packed(&a, "y");
    let (set, errors) = set_of(&a, vec![px.clone(), py.clone(), px.clone()]);
    assert!(errors.is_empty());
    let (_d2, b) = store();
    let m = cache_mount("x", "");
    cache_dir(&b, "x", &m, PLATFORM, Some(&set), &|_| {}).unwrap();
    assert_eq!(set.used(), vec![("x".to_string(), PLATFORM.to_string())]);
    assert_eq!(set.restored(), vec![px]);
    assert_eq!(set.unused(), vec![py]);
}
