//! The parser against externally written Dockerfiles: BuildKit's own parser
//! test files (dump compared byte for byte, negative cases, line spans) and
//! the real-world and buildah conformance corpora (must parse and type-check).

use crate::common;

use rbuild::dockerfile::{parse, parse_bytes, parse_dockerfile, InstructionKind};
use std::path::{Path, PathBuf};

fn testdata(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/corpus")
        .join(sub)
}

fn case_dirs(sub: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn buildkit_positive_cases_dump_byte_for_byte() {
    let dirs = case_dirs("buildkit-parser");
    assert_eq!(dirs.len(), 33);
    let mut failures = Vec::new();
    for dir in &dirs {
        let src = std::fs::read(dir.join("Dockerfile")).unwrap();
        let expected = std::fs::read_to_string(dir.join("result")).unwrap();
        let out = parse_bytes(&src);
        if !out.errors.is_empty() {
            failures.push(format!("{}: errors {:?}", dir.display(), out.errors));
            continue;
        }
        let got = out.ast.dump() + "\n";
        if got != expected {
            failures.push(format!(
                "{}:\n--- want\n{expected}--- got\n{got}",
                dir.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 33 differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn buildkit_negative_cases_are_rejected() {
    let dirs = case_dirs("buildkit-parser-negative");
    assert_eq!(dirs.len(), 4);
    for dir in &dirs {
        let src = std::fs::read(dir.join("Dockerfile")).unwrap();
        let out = parse_bytes(&src);
        assert!(!out.errors.is_empty(), "{} parsed", dir.display());
    }
    let nested = std::fs::read(testdata(
        "buildkit-parser-negative/shykes-nested-json/Dockerfile",
    ))
    .unwrap();
    let errs = parse_bytes(&nested).errors;
    assert!(errs[0].message.contains("strings only"), "{errs:?}");
    assert_eq!(errs[0].line, 1);
}

#[test]
fn buildkit_line_spans() {
    let src = std::fs::read(testdata("buildkit-parser-line/Dockerfile")).unwrap();
    let out = parse_bytes(&src);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let ast = out.ast;
    assert_eq!((ast.start_line, ast.end_line), (5, 31));
    let spans: Vec<(usize, usize)> = ast
        .children
        .iter()
        .map(|n| (n.span.start_line, n.span.end_line))
        .collect();
    assert_eq!(spans, vec![(5, 5), (11, 12), (17, 31)]);
}

/// A sub-corpus of the shared corpus (see `common::corpus`).
fn shared_corpus(sub: &str) -> Option<PathBuf> {
    common::corpus(sub)
}

/// Every regular file named `Dockerfile*` under `dir` (symlinks not followed).
fn dockerfiles(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| {
            e.file_type().is_file() && e.file_name().to_string_lossy().starts_with("Dockerfile")
        })
        .map(|e| e.into_path())
        .collect();
    files.sort();
    files
}

fn assert_corpus_parses(sub: &str, expected_count: usize) {
    let Some(dir) = shared_corpus(sub) else {
        return;
    };
    let files = dockerfiles(&dir);
    assert_eq!(files.len(), expected_count, "{sub} Dockerfile count");
    let mut failures = Vec::new();
    for f in &files {
        let src = std::fs::read(f).unwrap();
        let text = String::from_utf8_lossy(&src);
        let raw = parse(&text);
        if !raw.errors.is_empty() {
            failures.push(format!("{}: {:?}", f.display(), raw.errors));
            continue;
        }
        match parse_dockerfile(&text) {
            Ok(df) => {
                assert_eq!(
                    df.instructions.len(),
                    raw.ast.children.len(),
                    "{}",
                    f.display()
                );
                for i in &df.instructions {
                    if let InstructionKind::Onbuild { trigger, .. } = &i.kind {
                        assert!(trigger.is_ok(), "{}: {trigger:?}", f.display());
                    }
                }
            }
            Err(errs) => failures.push(format!("{}: {:?}", f.display(), errs)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn real_world_corpus_parses_and_types() {
    assert_corpus_parses("real-world", 47);
}

#[test]
fn buildah_conformance_corpus_parses_and_types() {
    assert_corpus_parses("buildah-conformance", 91);
}

/// Every corpus Dockerfile: BuildKit's cases plus the shared corpora if present.
fn all_corpus_files() -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = case_dirs("buildkit-parser")
        .into_iter()
        .map(|d| {
            let name = format!(
                "buildkit-parser/{}",
                d.file_name().unwrap().to_string_lossy()
            );
            (name, d.join("Dockerfile"))
        })
        .collect();
    for sub in ["real-world", "buildah-conformance"] {
        let Some(dir) = shared_corpus(sub) else {
            continue;
        };
        let base = dir.parent().unwrap().to_path_buf();
        for f in dockerfiles(&dir) {
            let rel = f
                .strip_prefix(&base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.push((rel, f));
        }
    }
    files
}

/// Writes `<path relative to shared/corpus>\t<keyword,keyword,…>` for the
/// shared corpora, the oracle `bench/dockerfile-parser-crate` compares with.
/// Output: `$RBUILD_KEYWORDS_OUT` (default `target/corpus-keywords.tsv`).
#[test]
#[ignore]
fn write_keyword_sequences() {
    let out = std::env::var_os("RBUILD_KEYWORDS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/corpus-keywords.tsv")
        });
    let mut tsv = String::new();
    for (rel, path) in all_corpus_files() {
        if rel.starts_with("buildkit-parser/") {
            continue;
        }
        let ast = parse_bytes(&std::fs::read(&path).unwrap())
            .into_result()
            .unwrap();
        let kws: Vec<String> = ast.children.iter().map(|n| n.command()).collect();
        tsv.push_str(&format!("{rel}\t{}\n", kws.join(",")));
    }
    assert!(!tsv.is_empty());
    std::fs::write(&out, tsv).unwrap();
    eprintln!("wrote {}", out.display());
}

/// Parse speed: parses (raw + typed) every corpus Dockerfile many times and
/// prints the mean time per file. Run with `bench/parse/run.sh`.
#[test]
#[ignore]
fn bench_parse() {
    let iterations: u32 = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rows = Vec::new();
    for (rel, path) in all_corpus_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let expect_ok = !rel.starts_with("buildkit-parser/");
        let start = std::time::Instant::now();
        for _ in 0..iterations {
            let r = std::hint::black_box(parse_dockerfile(std::hint::black_box(&text)));
            assert!(!expect_ok || r.is_ok(), "{rel}");
        }
        rows.push((start.elapsed() / iterations, text.len(), rel));
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    println!("{:>10}  {:>7}  file", "µs/parse", "bytes");
    for (t, len, rel) in rows.iter().take(10) {
        println!("{:>10.1}  {len:>7}  {rel}", t.as_secs_f64() * 1e6);
    }
    let total: std::time::Duration = rows.iter().map(|r| r.0).sum();
    let bytes: usize = rows.iter().map(|r| r.1).sum();
    println!(
        "{} files, {iterations} iterations each: mean {:.1} µs/file, max {:.1} µs, {:.0} MB/s",
        rows.len(),
        total.as_secs_f64() * 1e6 / rows.len() as f64,
        rows[0].0.as_secs_f64() * 1e6,
        bytes as f64 / total.as_secs_f64() / 1e6
    );
    assert!(
        rows[0].0 < std::time::Duration::from_millis(1),
        "slowest parse over 1 ms"
    );
}

/// Truncated files (every 61st byte, at char boundaries) and mangled ones
/// (each escape character doubled, quotes and brackets dropped) must give
/// errors or trees, never a panic.
#[test]
fn truncated_and_mangled_files_never_panic() {
    let mut checked = 0;
    for (_, path) in all_corpus_files() {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let mut variants: Vec<String> = (0..text.len())
            .step_by(61)
            .filter(|&i| text.is_char_boundary(i))
            .map(|i| text[..i].to_string())
            .collect();
        variants.push(text.replace('\\', "\\\\"));
        variants.push(text.replace(['"', '\''], ""));
        variants.push(text.replace([']', '['], ""));
        variants.push(text.replace("EOF", "E0F"));
        for v in &variants {
            let report = rbuild::dockerfile::parse_dockerfile_report(v);
            // Either it typed something or it says why not.
            assert!(
                !report.instructions.is_empty()
                    || !report.errors.is_empty()
                    || v.trim().is_empty()
                    || v.lines()
                        .all(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
            );
            checked += 1;
        }
    }
    assert!(checked > 500, "only {checked} variants");
}
