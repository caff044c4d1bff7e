//! The test layout itself: with `autotests = false`, a test file that is
//! not a module of this binary would never be built or run, silently.

use std::fs;
use std::path::Path;

/// Every `.rs` file (and helper directory) under `tests/integration/` is
/// declared in `main.rs`, and no test file sits directly in `tests/`.
#[test]
fn every_test_file_is_a_module_of_the_integration_binary() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let stray: Vec<String> = fs::read_dir(&tests)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        stray.is_empty(),
        "{stray:?} would not be built (autotests = false)\n\
         hint: move them to tests/integration/ and declare them in tests/integration/main.rs"
    );
    let dir = tests.join("integration");
    let main = fs::read_to_string(dir.join("main.rs")).unwrap();
    let mut undeclared = Vec::new();
    for entry in fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        let name = if path.is_dir() && path.join("mod.rs").is_file() {
            path.file_name().unwrap().to_string_lossy().into_owned()
        } else if path.extension().is_some_and(|x| x == "rs") {
            path.file_stem().unwrap().to_string_lossy().into_owned()
        } else {
            continue;
        };
        if name != "main" && !main.lines().any(|l| l == format!("mod {name};")) {
            undeclared.push(name);
        }
    }
    assert!(
        undeclared.is_empty(),
        "not declared in tests/integration/main.rs: {undeclared:?}"
    );
}
