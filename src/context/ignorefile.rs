//! Reading `.dockerignore` text into patterns (moby `ignorefile.ReadAll`),
//! and finding which ignore file applies to a build.

use std::path::{Path, PathBuf};

use super::gopath;
use super::pattern::PatternMatcher;
use super::ContextError;

/// Turns ignore-file text into patterns: BOM stripped, `#` comments only at
/// byte 0 (checked before trimming), lines trimmed, `!` kept with the space
/// after it removed, the rest `filepath.Clean`ed and one leading `/` dropped.
pub fn parse_ignore(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = if n == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = gopath::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        out.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    out
}

/// The ignore rules of one build and where they came from.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    /// The file they were read from; `None` when there is none.
    pub source: Option<PathBuf>,
    pub patterns: Vec<String>,
    pub matcher: PatternMatcher,
}

impl IgnoreRules {
    /// Rules from a pattern list (e.g. COPY `--exclude` values).
    pub fn from_patterns(patterns: Vec<String>) -> Result<Self, ContextError> {
        let matcher = PatternMatcher::new(&patterns)?;
        Ok(IgnoreRules {
            source: None,
            patterns,
            matcher,
        })
    }
}

/// Loads the ignore file for a build: `<Dockerfile>.dockerignore` beside the
/// Dockerfile wins over `<context>/.dockerignore` (BuildKit rule). A missing
/// file means no rules; an unreadable one or a bad pattern is an error.
pub fn load_ignore(context: &Path, dockerfile: Option<&Path>) -> Result<IgnoreRules, ContextError> {
    let mut candidates = Vec::new();
    if let Some(df) = dockerfile {
        let df = if df.is_absolute() {
            df.to_path_buf()
        } else {
            context.join(df)
        };
        if let Some(name) = df.file_name() {
            let mut n = name.to_os_string();
            n.push(".dockerignore");
            candidates.push(df.with_file_name(n));
        }
    }
    candidates.push(context.join(".dockerignore"));
    for path in candidates {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let patterns = parse_ignore(&text);
                let matcher =
                    PatternMatcher::new(&patterns).map_err(|e| ContextError::InIgnoreFile {
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
                return Ok(IgnoreRules {
                    source: Some(path),
                    patterns,
                    matcher,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ContextError::io("read ignore file", &path, e)),
        }
    }
    Ok(IgnoreRules::default())
}
