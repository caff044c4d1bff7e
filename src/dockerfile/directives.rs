//! Parser directives (`# syntax=`, `# escape=`, `# check=`): read only from
//! the leading comment lines, stopping at the first line that is not one.
//! Also BuildKit's `DetectSyntax`, which additionally looks past a `#!`
//! shebang and accepts `// syntax=` and a leading JSON object.

use regex::Regex;
use std::sync::OnceLock;

/// One directive as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name (`syntax`, `escape`, `check`).
    pub name: String,
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// The directives of a file and the escape character they select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `\` by default, or `` ` `` after `# escape=`` ` ``.
    pub escape: char,
    pub syntax: Option<Directive>,
    pub check: Option<Directive>,
    pub escape_directive: Option<Directive>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
            escape_directive: None,
        }
    }
}

fn directive_re(prefix: &str) -> Regex {
    // RE2's `\s` is ASCII `[\t\n\f\r ]`, spelled out so Rust matches the same.
    let re = format!(
        r"^{prefix}[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*$"
    );
    Regex::new(&re).unwrap_or_else(|e| unreachable!("static directive regex: {e}"))
}

fn hash_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| directive_re("#"))
}

fn slash_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| directive_re("//"))
}

/// Scans leading lines for directives, one line at a time.
#[derive(Debug, Default)]
pub(crate) struct DirectiveScanner {
    pub done: bool,
    pub found: Directives,
}

impl DirectiveScanner {
    /// Looks at one line (newline and leading whitespace already trimmed).
    /// Errors: a repeated directive or an invalid escape character.
    pub fn scan(&mut self, line: &str, line_no: usize) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        let Some(m) = hash_re().captures(line) else {
            self.done = true;
            return Ok(());
        };
        let name = m[1].to_ascii_lowercase();
        let value = m[2].to_string();
        let slot = match name.as_str() {
            "syntax" => &mut self.found.syntax,
            "check" => &mut self.found.check,
            "escape" => &mut self.found.escape_directive,
            _ => {
                self.done = true;
                return Ok(());
            }
        };
        if slot.is_some() {
            return Err(format!("only one {name} parser directive can be used"));
        }
        *slot = Some(Directive {
            name: name.clone(),
            value: value.clone(),
            line: line_no,
        });
        if name == "escape" {
            match value.as_str() {
                "\\" => self.found.escape = '\\',
                "`" => self.found.escape = '`',
                _ => {
                    return Err(format!(
                        "invalid escape token '{value}' does not match ` or \\"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// The frontend image a Dockerfile asks for, as BuildKit's `DetectSyntax`
/// finds it: `(reference, full value, 1-based line)`. The reference is the
/// value up to the first space (`docker/dockerfile:1 // opts` → `docker/dockerfile:1`).
pub fn detect_syntax(src: &str) -> Option<(String, String, usize)> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let (src, first_line) = match src.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => (rest, 2),
        None if src.starts_with("#!") => ("", 2),
        _ => (src, 1),
    };
    for re in [hash_re(), slash_re()] {
        for (i, line) in src.lines().enumerate() {
            let Some(m) = re.captures(line) else { break };
            let name = m[1].to_ascii_lowercase();
            if !matches!(name.as_str(), "syntax" | "check" | "escape") {
                break;
            }
            if name == "syntax" {
                let full = m[2].to_string();
                let reference = full.split(' ').next().unwrap_or("").to_string();
                return Some((reference, full, first_line + i));
            }
        }
    }
    let v: serde_json::Value = serde_json::from_str(src).ok()?;
    let s = v.get("syntax")?.as_str()?;
    Some((s.to_string(), s.to_string(), first_line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(lines: &[&str]) -> Result<Directives, String> {
        let mut s = DirectiveScanner::default();
        for (i, l) in lines.iter().enumerate() {
            s.scan(l, i + 1)?;
        }
        Ok(s.found)
    }

    #[test]
    fn names_are_case_insensitive() {
        let d = scan_all(&["# EScape=`"]).unwrap();
        assert_eq!(d.escape, '`');
        let d = scan_all(&["#escape=`"]).unwrap();
        assert_eq!(d.escape, '`');
    }

    #[test]
    fn unknown_keys_stop_scanning() {
        let d = scan_all(&["# foo = bar", "# escape=`"]).unwrap();
        assert_eq!(d.escape, '\\');
    }

    #[test]
    fn scanning_stops_at_blank_or_other_line() {
        assert_eq!(scan_all(&["", "# escape=`"]).unwrap().escape, '\\');
        assert_eq!(scan_all(&["FROM x", "# escape=`"]).unwrap().escape, '\\');
        assert_eq!(scan_all(&["# comment", "# escape=`"]).unwrap().escape, '\\');
    }

    #[test]
    fn check_with_spaces_and_syntax() {
        let d = scan_all(&["# syntax=docker/dockerfile:1", "# check = skip=all"]).unwrap();
        assert_eq!(d.check.unwrap().value, "skip=all");
        assert_eq!(d.syntax.unwrap().value, "docker/dockerfile:1");
    }

    #[test]
    fn repeated_or_invalid_is_an_error() {
        assert!(scan_all(&["# escape=`", "# escape=\\"]).is_err());
        assert!(scan_all(&["# escape=x"]).is_err());
    }

    #[test]
    fn syntax_detection() {
        let s = |src: &str| detect_syntax(src).map(|t| t.0);
        assert_eq!(s("# syntax=foo\nFROM x"), Some("foo".into()));
        assert_eq!(
            s("#!/usr/bin/env docker\n# syntax=foo\n"),
            Some("foo".into())
        );
        assert_eq!(s("\n# syntax=foo\n"), None);
        assert_eq!(s("//syntax=foo\n"), Some("foo".into()));
        assert_eq!(s("{\"syntax\": \"foo\"}"), Some("foo".into()));
        assert_eq!(s("\u{feff}# syntax=foo"), Some("foo".into()));
        let full = detect_syntax("# syntax = foo // opts\n").unwrap();
        assert_eq!((full.0.as_str(), full.1.as_str()), ("foo", "foo // opts"));
        assert_eq!(s("# check=skip=all\n# syntax=bar\n"), Some("bar".into()));
    }
}
