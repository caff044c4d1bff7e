//! Bounded random testing of everything that reads untrusted text or
//! archives: the Dockerfile parser + typed instructions + planner, word
//! expansion, `.dockerignore` patterns and matching, image references, and
//! the layer unpacker. Inputs are seeds from `testdata/` mutated by a small
//! deterministic generator (no extra crates), so a failure reproduces from
//! its iteration number.
//!
//! CI runs a few thousand cases in a few seconds. For a long session:
//! `RBUILD_FUZZ_ITERS=200000 cargo test --release --test integration fuzz_inputs::`
//! (`RBUILD_FUZZ_SEED=N` picks another sequence). A failing input is saved
//! under `target/fuzz-failures/` and named in the panic message. The
//! coverage-guided cargo-fuzz targets for the same code are in `fuzz/`;
//! docs/fuzzing.md has both, the hours run and what they found.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rbuild::context::{parse_ignore, PatternMatcher};
use rbuild::dockerfile::shell::Lexer;
use rbuild::layer::{unpack_layer, UnpackOptions};
use rbuild::oci::Reference;
use rbuild::plan::{plan_text, PlanOptions};
use rbuild::store::check_reference;

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How many cases each target runs: small by default, `RBUILD_FUZZ_ITERS` for long runs.
fn iterations(default: usize) -> usize {
    std::env::var("RBUILD_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn base_seed() -> u64 {
    std::env::var("RBUILD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/corpus")
}

/// Every Dockerfile of the BuildKit parser corpus (testdata, Apache-2.0).
fn dockerfile_seeds() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["buildkit-parser", "buildkit-parser-negative"] {
        let Ok(rd) = fs::read_dir(testdata().join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(t) = fs::read_to_string(e.path().join("Dockerfile")) {
                out.push(t);
            }
        }
    }
    assert!(
        !out.is_empty(),
        "testdata/corpus/buildkit-parser is missing"
    );
    out
}

/// The words of BuildKit's shell test tables (testdata, Apache-2.0).
fn word_seeds() -> Vec<String> {
    let mut out = Vec::new();
    for f in ["envVarTest", "wordsTest"] {
        let text = fs::read_to_string(testdata().join("buildkit-shell").join(f))
            .expect("testdata/corpus/buildkit-shell");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((word, _)) = line.split_once('|') {
                out.push(word.trim().to_string());
            }
        }
    }
    out
}

/// Fragments that reach deep into the grammars.
const TOKENS: &[&str] = &[
    "${",
    "}",
    ":-",
    ":+",
    "?",
    "#",
    "%",
    "//",
    "/",
    "$",
    "\\",
    "`",
    "\"",
    "'",
    "\n",
    " ",
    "\t",
    "<<EOF\n",
    "EOF\n",
    "<<-'E'\n",
    "\\\n",
    "ONBUILD ",
    "ARG A=",
    "ENV B=",
    "FROM ",
    "RUN ",
    "COPY --from=",
    "--mount=type=",
    "[\"",
    "\",",
    "]",
    "*",
    "**/",
    "!",
    "[a-",
    "^",
    "@sha256:",
    ":",
    "..",
    "# escape=`\n",
    "# syntax=x\n",
    "\u{feff}",
    "é",
    "\0",
];

/// One random edit: flip, insert a token, duplicate or drop a slice.
fn mutate(rng: &mut Rng, input: &str) -> String {
    let mut s: Vec<char> = input.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(5) {
            0 if !s.is_empty() => {
                let i = rng.below(s.len());
                s[i] = char::from_u32(rng.below(0x80) as u32).unwrap_or('x');
            }
            1 if !s.is_empty() => {
                let end = (at + rng.below(16)).min(s.len());
                s.drain(at..end);
            }
            2 if !s.is_empty() => {
                let start = rng.below(s.len());
                let end = (start + 1 + rng.below(32)).min(s.len());
                let piece: Vec<char> = s[start..end].to_vec();
                let at = at.min(s.len());
                s.splice(at..at, piece);
            }
            _ => {
                let tok: Vec<char> = rng.pick(TOKENS).chars().collect();
                s.splice(at..at, tok);
            }
        }
    }
    s.into_iter().collect()
}

/// Runs `f` on one input; a panic saves the input and fails with its path.
fn run_case(target: &str, case: usize, input: &[u8], f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    fs::create_dir_all(&dir).expect("failure dir");
    let path = dir.join(format!("{target}-{case}.bin"));
    fs::write(&path, input).expect("saving the failing input");
    panic!(
        "{target}: case {case} panicked; input saved in {}",
        path.display()
    );
}

#[test]
fn fuzz_dockerfile_parse_and_plan() {
    let seeds = dockerfile_seeds();
    let mut rng = Rng::new(base_seed());
    for case in 0..iterations(400) {
        let seed = rng.pick(&seeds).clone();
        let text = mutate(&mut rng, &seed);
        run_case("dockerfile", case, text.as_bytes(), || {
            let lines = text.lines().count().max(1);
            if let Err(e) = plan_text(&text, &PlanOptions::default()) {
                // Every problem points into the file (or at no line at all).
                for p in &e.problems {
                    assert!(
                        p.span.start_line <= lines + 1,
                        "line {} of {lines}",
                        p.span.start_line
                    );
                }
            }
        });
    }
}

#[test]
fn fuzz_word_expansion() {
    let seeds = word_seeds();
    let env: Vec<(String, String)> = [("A", "a b"), ("B", ""), ("PWD", "/home"), ("X", "*?")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut rng = Rng::new(base_seed() + 1);
    for case in 0..iterations(3000) {
        let seed = rng.pick(&seeds).clone();
        let word = mutate(&mut rng, &seed);
        run_case("word", case, word.as_bytes(), || {
            for escape in ['\\', '`'] {
                let lexer = Lexer::new(escape);
                if let Ok(e) = lexer.process(&word, &env) {
                    // Splitting never invents text: each word comes from the result.
                    let joined: usize = e.words.iter().map(String::len).sum();
                    assert!(joined <= e.result.len(), "{word:?}: {e:?}");
                }
                let _ = Lexer::heredoc_body().process_word(&word, &env);
                let _ = Lexer::heredoc_line().process_words(&word, &env);
            }
        });
    }
}

#[test]
fn fuzz_dockerignore_patterns() {
    let seeds = [
        "*.md\n!README.md\n",
        "**/node_modules\n",
        "a/**/b\n",
        "[a-c]?x\n",
        "!**/keep\n",
        "/abs\\*\n",
        "dir/\n",
        "**\n",
        "^x\n",
        "a[\n",
    ];
    let paths = [
        "a",
        "a/b",
        "a/b/c.md",
        "README.md",
        "x/keep",
        "node_modules/q",
        "abs*",
        "b.x",
    ];
    let mut rng = Rng::new(base_seed() + 2);
    for case in 0..iterations(2000) {
        let seed = *rng.pick(&seeds);
        let text = mutate(&mut rng, seed);
        run_case("dockerignore", case, text.as_bytes(), || {
            let Ok(pm) = PatternMatcher::new(&parse_ignore(&text)) else {
                return;
            };
            // With `!` exceptions the walk may differ from scratch, as in
            // moby (docs/fuzzing.md, findings); only matching must not fail.
            if pm.has_exclusions() {
                for path in paths {
                    let _ = pm.matches(path);
                }
                return;
            }
            for path in paths {
                // The from-scratch and the incremental walk agree, as upstream's do.
                let Ok(scratch) = pm.matches(path) else {
                    continue;
                };
                let mut info = Default::default();
                let mut verdict = false;
                let parts: Vec<&str> = path.split('/').collect();
                for i in 1..=parts.len() {
                    let Ok((v, next)) = pm.matches_with_parent(&parts[..i].join("/"), &info) else {
                        return;
                    };
                    verdict = v;
                    info = next;
                }
                assert_eq!(scratch, verdict, "{text:?} vs {path}");
            }
        });
    }
}

#[test]
fn fuzz_references() {
    let seeds = [
        "alpine",
        "alpine:3.19",
        "docker.io/library/alpine:latest",
        "localhost:5000/a/b:v1",
        "ghcr.io/o/r@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "[::1]:5000/x",
        "a__b-c.d/e",
        "UPPER:tag",
    ];
    let mut rng = Rng::new(base_seed() + 3);
    for case in 0..iterations(5000) {
        let seed = *rng.pick(&seeds);
        let s = mutate(&mut rng, seed);
        run_case("reference", case, s.as_bytes(), || {
            if let Ok(r) = Reference::parse(&s) {
                // Normalizing is idempotent.
                let again = Reference::parse(&r.to_string()).expect("a normalized name parses");
                assert_eq!(again, r, "{s:?}");
            }
            if check_reference(&s).is_ok() {
                assert!(!s.is_empty() && s.len() < 255 + 130 + 140, "{s:?}");
            }
        });
    }
}

/// A tar of random entries whose names and link targets try to leave the
/// destination, written with raw headers so nothing is sanitized.
fn hostile_tar(rng: &mut Rng, outside: &Path) -> Vec<u8> {
    let outside_abs = outside.to_string_lossy().into_owned();
    let names = [
        "a",
        "a/b",
        "l",
        "l/x",
        "l/../x",
        "../x",
        "../outside/y",
        "/abs",
        "./a/./c",
        "a//d",
        ".wh.a",
        "a/.wh..wh..opq",
        "h",
        "z/../../x",
        "",
    ];
    let targets = [
        "..",
        "../..",
        "/",
        "../outside",
        outside_abs.as_str(),
        "a",
        "l",
        "/rbuild-fuzz-nonexistent",
    ];
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(8) {
        let mut h = tar::Header::new_gnu();
        let name = rng.pick(&names).as_bytes();
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name);
        let kind = rng.below(4);
        let body: &[u8] = if kind == 0 { b"data" } else { b"" };
        match kind {
            0 => h.set_entry_type(tar::EntryType::Regular),
            1 => h.set_entry_type(tar::EntryType::Directory),
            2 => h.set_entry_type(tar::EntryType::Symlink),
            _ => h.set_entry_type(tar::EntryType::Link),
        }
        if kind >= 2 {
            let t = rng.pick(&targets).as_bytes();
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        }
        h.set_mode(0o755);
        h.set_size(body.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    if rng.below(4) == 0 {
        // Corrupt a byte: headers, sizes and checksums must fail cleanly.
        let i = rng.below(out.len());
        out[i] = rng.next() as u8;
    }
    out
}

/// Every path under `dir` (relative), for before/after comparisons.
fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.expect("walk");
        let content = if e.file_type().is_file() {
            fs::read(e.path()).expect("read")
        } else {
            Vec::new()
        };
        out.push((e.path().strip_prefix(dir).unwrap().to_path_buf(), content));
    }
    out
}

#[test]
fn fuzz_layer_unpack_stays_inside() {
    let mut rng = Rng::new(base_seed() + 4);
    for case in 0..iterations(300) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"untouched").unwrap();
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let tar = hostile_tar(&mut rng, &outside);
        let before = listing(&outside);
        run_case("unpack", case, &tar, || {
            let opts = UnpackOptions {
                no_chown: true,
                ..UnpackOptions::default()
            };
            let _ = unpack_layer(&tar[..], &dest, &opts);
            assert_eq!(listing(&outside), before, "case {case} wrote outside dest");
            let top: Vec<_> = fs::read_dir(tmp.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(top.len(), 2, "case {case} created {top:?} beside dest");
            assert!(!Path::new("/rbuild-fuzz-nonexistent").exists());
        });
    }
}

/// Replays `testdata/fuzz/dockerignore-walk-vs-scratch.bin`: with `*/m`
/// then `!*`, `n/m/o/p` is re-included from scratch (its parent `n` matches
/// the exception) but stays excluded in the walk, which skips an exception
/// while nothing above is excluded. Pinned as found: the walk decides what a
/// build sees, and changing it should be checked against BuildKit first.
#[test]
fn dockerignore_walk_vs_scratch_finding_is_pinned() {
    let data = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/fuzz/dockerignore-walk-vs-scratch.bin"),
    )
    .expect("testdata/fuzz");
    let pm = PatternMatcher::new(&parse_ignore(&String::from_utf8_lossy(&data))).unwrap();
    assert!(pm.has_exclusions());
    assert!(!pm.matches("n/m/o/p").unwrap());
    let mut info = Default::default();
    let mut verdict = false;
    for p in ["n", "n/m", "n/m/o", "n/m/o/p"] {
        let (v, next) = pm.matches_with_parent(p, &info).unwrap();
        verdict = v;
        info = next;
    }
    assert!(verdict);
}
