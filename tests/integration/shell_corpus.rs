//! BuildKit's own word-expansion tables (testdata/corpus/buildkit-shell), run
//! the way MANIFEST.md describes, with the case counts pinned so that a
//! truncated or silently skipped file fails instead of passing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rbuild::dockerfile::shell::Lexer;

fn corpus(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/corpus/buildkit-shell")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn env_var_test_table() {
    let env: BTreeMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let lexer = Lexer::new('\\');
    let (mut cases, mut run, mut skipped_windows) = (0, 0, 0);
    let mut failures = Vec::new();
    for (lineno, line) in corpus("envVarTest").lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(fields.len(), 3, "line {}: {line:?}", lineno + 1);
        let (platform, input, expected) = (fields[0], fields[1], fields[2]);
        cases += 1;
        match platform {
            "W" => {
                skipped_windows += 1;
                continue;
            }
            "A" | "U" => {}
            other => panic!("line {}: unknown platform {other:?}", lineno + 1),
        }
        run += 1;
        let got = lexer.process_word(input, &env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(s), e) => e != "error" && s == e,
            (Err(_), _) => false,
        };
        if !ok {
            failures.push(format!(
                "line {}: {input:?} expected {expected:?}, got {got:?}",
                lineno + 1
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cases, 230, "case count in envVarTest");
    assert_eq!(skipped_windows, 2, "W cases");
    assert_eq!(run, 228, "A and U cases run");
}

#[test]
fn words_test_table() {
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let (mut cases, mut env_lines) = (0, 0);
    let mut failures = Vec::new();
    for (lineno, line) in corpus("wordsTest").lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(def) = line.strip_prefix("ENV ") {
            // Trailing spaces are part of the value.
            let def = def.trim_start_matches(' ');
            let (k, v) = def.split_once('=').unwrap_or((def, ""));
            env.push((k.to_string(), v.to_string()));
            env_lines += 1;
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(
            fields.len(),
            2,
            "line {}: exactly one | in {line:?}",
            lineno + 1
        );
        let input = fields[0].trim();
        let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
        cases += 1;
        let got = match lexer.process_words(input, &env) {
            Ok(words) => words,
            Err(_) => vec!["error".to_string()],
        };
        if got != expected {
            failures.push(format!(
                "line {}: {input:?} expected {expected:?}, got {got:?}",
                lineno + 1
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cases, 24, "case count in wordsTest");
    assert_eq!(env_lines, 4, "ENV lines in wordsTest");
    assert_eq!(
        env.last().map(|(k, v)| (k.as_str(), v.as_str())),
        Some(("trailing", "ab c   "))
    );
}
