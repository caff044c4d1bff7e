//! Word expansion for the planner, through the `dockerfile::shell` lexer
//! (BuildKit's rules): one word with quotes removed, a word split into
//! words (EXPOSE), and the raw modes BuildKit uses for progress names of RUN
//! (quotes kept, unset variables left as written) and heredoc bodies.

pub use crate::dockerfile::shell::Matches;
use crate::dockerfile::shell::{Env, Lexer};

/// Expansion failed (bad syntax or `${V:?msg}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError(pub String);

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(e: crate::dockerfile::shell::ShellError) -> ExpandError {
    ExpandError(e.to_string())
}

/// Expand one word (quotes removed); reports the variables it referenced.
pub fn word(s: &str, env: &dyn Env, escape: char) -> Result<(String, Matches), ExpandError> {
    Lexer::new(escape)
        .process_word_with_matches(s, env)
        .map_err(err)
}

/// Expand and split into words on unquoted whitespace (EXPOSE).
pub fn words(s: &str, env: &dyn Env, escape: char) -> Result<Vec<String>, ExpandError> {
    Lexer::new(escape).process_words(s, env).map_err(err)
}

/// BuildKit's RUN progress-name lexer: quotes kept, unset variables kept as
/// written; the text itself on error.
pub fn display_raw(s: &str, env: &dyn Env, escape: char) -> String {
    let mut lx = Lexer::new(escape);
    lx.raw_quotes = true;
    lx.skip_unset_env = true;
    lx.process_word(s, env).unwrap_or_else(|_| s.to_string())
}

/// An unquoted heredoc body, as BuildKit's `ExpandRaw` does it: a backslash
/// lexer with `SkipProcessQuotes`, so quotes are plain characters.
pub fn heredoc_body(s: &str, env: &dyn Env) -> Result<String, ExpandError> {
    let mut lx = Lexer::new('\\');
    lx.skip_process_quotes = true;
    lx.process_word(s, env).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env() -> BTreeMap<String, String> {
        [("A", "1"), ("P", "/usr/local/bin")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_and_reports_matches() {
        let (w, m) = word("$A ${P##*/} '$A' $B", &env(), '\\').expect("expands");
        assert_eq!(w, "1 bin $A ");
        assert!(m.matched.contains("A") && m.unmatched.contains("B"));
        assert_eq!(
            words("80 \"$A 2\"", &env(), '\\').expect("splits"),
            vec!["80", "1 2"]
        );
        assert_eq!(display_raw("echo \"$A\" $B", &env(), '\\'), "echo \"1\" $B");
        assert_eq!(
            heredoc_body("x='$A'\n", &env()).expect("expands"),
            "x='1'\n"
        );
    }
}
