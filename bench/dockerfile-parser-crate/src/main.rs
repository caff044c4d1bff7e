//! Runs the `dockerfile-parser` crate over the corpora rbuild's own parser is
//! tested on and prints how many files it parses and how many it reads right.
//!
//! "Right" means the sequence of instruction keywords equals the expected one:
//! for BuildKit's cases, the keywords of upstream's `result` dump; for the
//! real-world and buildah corpora, the keywords rbuild's parser finds (a TSV
//! written by `cargo test --test integration parser_corpus::write_keyword_sequences -- --ignored`).
//! A few targeted checks look at values: legacy `ENV k v`, JSON fallback,
//! heredocs and the escape directive.
//!
//! Usage: dockerfile-parser-crate-bench <testdata/corpus> <shared/corpus> <keywords.tsv>

use dockerfile_parser::{Dockerfile, Instruction, ShellOrExecExpr};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn keyword(i: &Instruction) -> String {
    match i {
        Instruction::From(_) => "from".into(),
        Instruction::Arg(_) => "arg".into(),
        Instruction::Label(_) => "label".into(),
        Instruction::Run(_) => "run".into(),
        Instruction::Entrypoint(_) => "entrypoint".into(),
        Instruction::Cmd(_) => "cmd".into(),
        Instruction::Copy(_) => "copy".into(),
        Instruction::Env(_) => "env".into(),
        Instruction::Misc(m) => m.instruction.content.to_lowercase(),
    }
}

fn keywords(df: &Dockerfile) -> Vec<String> {
    df.instructions.iter().map(keyword).collect()
}

/// Keywords of a BuildKit `result` dump: the word after each line's `(`.
fn result_keywords(result: &str) -> Vec<String> {
    result
        .lines()
        .filter_map(|l| l.strip_prefix('('))
        .map(|l| l.split([' ', ')']).next().unwrap_or("").to_string())
        .collect()
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

fn sorted_dirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[derive(Default)]
struct Tally {
    total: usize,
    parsed: usize,
    right: usize,
    wrong: Vec<String>,
}

impl Tally {
    fn print(&self, name: &str) {
        println!(
            "{name}: {} files, parsed {}, right {}",
            self.total, self.parsed, self.right
        );
        for w in &self.wrong {
            println!("    {w}");
        }
    }
}

fn buildkit_cases(testdata: &Path) -> Tally {
    let mut t = Tally::default();
    for dir in sorted_dirs(&testdata.join("buildkit-parser")) {
        t.total += 1;
        let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let want = result_keywords(&read(&dir.join("result")));
        match Dockerfile::parse(&read(&dir.join("Dockerfile"))) {
            Err(e) => t.wrong.push(format!("{name}: parse error: {}", first_line(&e.to_string()))),
            Ok(df) => {
                t.parsed += 1;
                let got = keywords(&df);
                if got == want {
                    t.right += 1;
                } else {
                    t.wrong.push(format!("{name}: keywords {got:?}, want {want:?}"));
                }
            }
        }
    }
    t
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(120).collect()
}

fn negative_cases(testdata: &Path) -> Tally {
    let mut t = Tally::default();
    for dir in sorted_dirs(&testdata.join("buildkit-parser-negative")) {
        t.total += 1;
        let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        match Dockerfile::parse(&read(&dir.join("Dockerfile"))) {
            Err(_) => t.right += 1,
            Ok(df) => {
                t.parsed += 1;
                t.wrong.push(format!("{name}: accepted ({} instructions)", df.instructions.len()));
            }
        }
    }
    t
}

fn dockerfiles(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            dockerfiles(&e.path(), out);
        } else if ft.is_file() && e.file_name().to_string_lossy().starts_with("Dockerfile") {
            out.push(e.path());
        }
    }
}

/// Real-world and buildah files against rbuild's keyword sequences.
fn corpus(shared: &Path, sub: &str, expected: &HashMap<String, Vec<String>>) -> (Tally, Tally) {
    let mut all = Tally::default();
    let mut heredoc = Tally::default();
    let mut files = Vec::new();
    dockerfiles(&shared.join(sub), &mut files);
    for f in files {
        let rel = f.strip_prefix(shared).unwrap_or(&f).to_string_lossy().into_owned();
        let text = read(&f);
        let has_heredoc = text.lines().any(|l| {
            let u = l.trim_start().to_ascii_uppercase();
            (u.starts_with("RUN") || u.starts_with("COPY") || u.starts_with("ADD")) && l.contains("<<")
        });
        let want = expected.get(&rel);
        let (parsed, right, why) = match Dockerfile::parse(&text) {
            Err(e) => (false, false, format!("parse error: {}", first_line(&e.to_string()))),
            Ok(df) => {
                let got = keywords(&df);
                let ok = want == Some(&got);
                let why = match want {
                    None => "no expected keywords (run rbuild's write_keyword_sequences)".to_string(),
                    Some(w) => format!("{} instructions, want {}", got.len(), w.len()),
                };
                (true, ok, why)
            }
        };
        for t in [Some(&mut all), has_heredoc.then_some(&mut heredoc)].into_iter().flatten() {
            t.total += 1;
            t.parsed += parsed as usize;
            t.right += right as usize;
            if !right {
                t.wrong.push(format!("{rel}: {why}"));
            }
        }
    }
    (all, heredoc)
}

/// Targeted value checks on BuildKit cases; returns (name, passed, detail).
fn targeted(testdata: &Path) -> Vec<(String, bool, String)> {
    let bk = testdata.join("buildkit-parser");
    let mut out = Vec::new();
    // Legacy `ENV name value` must give key "name" and value "value".
    let env = Dockerfile::parse(&read(&bk.join("env/Dockerfile")));
    let legacy = env.as_ref().ok().and_then(|df| {
        df.instructions.iter().find_map(|i| i.as_env()).map(|e| {
            e.vars.iter().map(|v| (v.key.content.clone(), v.value.to_string())).collect::<Vec<_>>()
        })
    });
    let ok = legacy.as_ref().is_some_and(|v| v == &[("name".to_string(), "value".to_string())]);
    out.push(("legacy `ENV name value`".into(), ok, format!("{legacy:?}")));
    // Invalid JSON falls back to shell form with the whole text.
    for case in [
        "jeztah-invalid-json-json-inside-string",
        "jeztah-invalid-json-json-inside-string-double",
        "jeztah-invalid-json-single-quotes",
        "jeztah-invalid-json-unterminated-bracket",
        "jeztah-invalid-json-unterminated-string",
    ] {
        let src = read(&bk.join(case).join("Dockerfile"));
        let got = Dockerfile::parse(&src).ok().and_then(|df| {
            df.instructions.iter().find_map(|i| i.as_cmd()).map(|c| match &c.expr {
                ShellOrExecExpr::Shell(s) => format!("shell {:?}", s.to_string().trim()),
                ShellOrExecExpr::Exec(a) => format!("exec {:?}", a.elements.iter().map(|e| &e.content).collect::<Vec<_>>()),
            })
        });
        let want = format!("shell {:?}", src.trim().trim_start_matches("CMD").trim());
        out.push((format!("JSON fallback {case}"), got.as_deref() == Some(want.as_str()), format!("{got:?}")));
    }
    // Escape directive: with `# escape=`` ` ``, a trailing backtick continues the line.
    let esc = "# escape=`\nFROM x\nRUN a `\n  b\n";
    let got = Dockerfile::parse(esc).map(|df| df.instructions.len());
    out.push(("escape=` continuation (want 2 instructions)".into(), matches!(got, Ok(2)), format!("{got:?}")));
    // Heredoc: the body must not be read as instructions.
    let hd = "FROM x\nRUN <<EOF\necho hi\nEOF\n";
    let got = Dockerfile::parse(hd).map(|df| keywords(&df));
    out.push(("heredoc RUN <<EOF (want [from, run])".into(), matches!(&got, Ok(k) if k == &["from", "run"]), format!("{got:?}")));
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: {} <testdata/corpus> <shared/corpus> <keywords.tsv>", args[0]);
        std::process::exit(2);
    }
    let (testdata, shared) = (Path::new(&args[1]), Path::new(&args[2]));
    let expected: HashMap<String, Vec<String>> = read(Path::new(&args[3]))
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, k)| (p.to_string(), k.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()))
        .collect();
    println!("dockerfile-parser 0.9 measured on rbuild's corpora\n");
    buildkit_cases(testdata).print("BuildKit positive cases (keywords vs result)");
    negative_cases(testdata).print("BuildKit negative cases (right = rejected)");
    for sub in ["real-world", "buildah-conformance"] {
        let (all, heredoc) = corpus(shared, sub, &expected);
        all.print(&format!("{sub} (keywords vs rbuild)"));
        heredoc.print(&format!("{sub}, files with heredocs"));
    }
    println!("\ntargeted checks:");
    for (name, ok, detail) in targeted(testdata) {
        println!("  [{}] {name}: {detail}", if ok { "ok" } else { "WRONG" });
    }
}
