//! Go path semantics that `.dockerignore` and COPY sources depend on:
//! `filepath.Clean` and `filepath.Match` (with its syntax rules), written
//! from the Go documentation so patterns behave as they do in Docker.

/// Go's `filepath.Clean` for `/`-separated paths: drops empty and `.`
/// elements, resolves `..` lexically, keeps a leading `/`, and returns `.`
/// for an empty result.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|p| *p != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Cleans a path as if it were rooted at `/`, then drops the root, so `..`
/// can never climb above the context. Returns `""` for the root itself.
pub fn clean_in_root(path: &str) -> String {
    let c = clean(&format!("/{path}"));
    c.trim_start_matches('/').to_string()
}

/// A character class of a glob: `[^a-c\]x]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub negated: bool,
    pub ranges: Vec<(char, char)>,
}

impl Class {
    pub fn contains(&self, c: char) -> bool {
        let hit = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        hit != self.negated
    }
}

/// Reads one class member the way Go's `filepath.Match` does: `-` and `]`
/// cannot start a member, `\` escapes, and something must follow it.
fn class_member(chars: &[char], i: &mut usize) -> Option<char> {
    let c = *chars.get(*i)?;
    if c == '-' || c == ']' {
        return None;
    }
    let c = if c == '\\' {
        *i += 1;
        *chars.get(*i)?
    } else {
        c
    };
    *i += 1;
    // Go rejects a class that ends right after a member.
    if *i >= chars.len() {
        return None;
    }
    Some(c)
}

/// Parses a class body per `filepath.Match` (after the opening `[`).
/// Returns the class and how many chars it used, including the `]`.
fn parse_go_class(chars: &[char]) -> Option<(Class, usize)> {
    let mut i = 0;
    let negated = chars.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Some((Class { negated, ranges }, i + 1));
        }
        let lo = class_member(chars, &mut i)?;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            i += 1;
            hi = class_member(chars, &mut i)?;
        }
        ranges.push((lo, hi));
    }
}

/// The syntax check Go's `filepath.Match` performs: a trailing `\` and any
/// malformed class (`[`, `[^`, `[]a]`, `[-]`, `[x-]`, `[a-b-c]`…) are errors.
pub fn validate_glob(pattern: &str) -> bool {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return false;
                }
                i += 2;
            }
            '[' => match parse_go_class(&chars[i + 1..]) {
                Some((_, used)) => i += 1 + used,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

/// Go's `filepath.Match`: `*` is any run of non-`/`, `?` one non-`/` rune,
/// `[...]` a class, `\x` a literal `x`; `**` is just two `*`. `None` means
/// the pattern is malformed.
pub fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    if !validate_glob(pattern) {
        return None;
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    Some(glob_at(&glob_tokens(&p), &s))
}

enum GlobTok {
    Star,
    One,
    Class(Class),
    Lit(char),
}

/// A validated pattern as tokens.
fn glob_tokens(p: &[char]) -> Vec<GlobTok> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => toks.push(GlobTok::Star),
            '?' => toks.push(GlobTok::One),
            '[' => match parse_go_class(&p[i + 1..]) {
                Some((class, used)) => {
                    toks.push(GlobTok::Class(class));
                    i += used;
                }
                None => toks.push(GlobTok::Lit('[')),
            },
            '\\' if i + 1 < p.len() => {
                toks.push(GlobTok::Lit(p[i + 1]));
                i += 1;
            }
            c => toks.push(GlobTok::Lit(c)),
        }
        i += 1;
    }
    toks
}

/// Runs the tokens as an NFA over `s`: O(pattern × name) time and no
/// recursion, where backtracking over `*a*a*a…` took exponential time.
fn glob_at(toks: &[GlobTok], s: &[char]) -> bool {
    let n = toks.len();
    // live[t]: the first t tokens can match the text consumed so far.
    let mut live = vec![false; n + 1];
    live[0] = true;
    let close = |live: &mut [bool]| {
        for t in 0..n {
            if live[t] && matches!(toks[t], GlobTok::Star) {
                live[t + 1] = true;
            }
        }
    };
    close(&mut live);
    for &c in s {
        let mut next = vec![false; n + 1];
        for t in (0..n).filter(|&t| live[t]) {
            match &toks[t] {
                GlobTok::Star if c != '/' => next[t] = true,
                GlobTok::One if c != '/' => next[t + 1] = true,
                GlobTok::Class(class) if class.contains(c) => next[t + 1] = true,
                GlobTok::Lit(l) if *l == c => next[t + 1] = true,
                _ => {}
            }
        }
        close(&mut next);
        if !next.contains(&true) {
            return false;
        }
        live = next;
    }
    live[n]
}

/// Whether a path element holds an unescaped glob metacharacter
/// (BuildKit only treats a COPY source as a wildcard when it does).
pub fn has_wildcards(name: &str) -> bool {
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Removes glob escapes: `n\?pe` → `n?pe`.
pub fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        assert_eq!(clean("a//b"), "a/b");
        assert_eq!(clean("./a"), "a");
        assert_eq!(clean("a/../b"), "b");
        assert_eq!(clean("a/"), "a");
        assert_eq!(clean("../a"), "../a");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean(""), ".");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean_in_root("../../etc/passwd"), "etc/passwd");
        assert_eq!(clean_in_root("."), "");
    }

    #[test]
    fn glob_matches_go_filepath_match() {
        assert_eq!(glob_match("*.b", "file.b"), Some(true));
        assert_eq!(glob_match("*", "a/b"), Some(false));
        assert_eq!(glob_match("**/*.txt", "b/x.txt"), Some(true));
        assert_eq!(glob_match("**/*.txt", "x.txt"), Some(false));
        assert_eq!(glob_match("[[]xyz]", "[xyz]"), Some(true));
        assert_eq!(glob_match("n\\?pe", "nope"), Some(false));
        assert_eq!(glob_match("n\\?pe", "n?pe"), Some(true));
        assert_eq!(glob_match("[", "a"), None);
        assert_eq!(glob_match("a\\", "a"), None);
        assert!(has_wildcards("a*"));
        assert!(!has_wildcards("n\\?pe"));
    }

    #[test]
    fn many_stars_match_without_backtracking_blowup() {
        // Backtracking took 2^n steps here; the NFA answers at once.
        let pattern = "*a".repeat(40) + "b";
        let name = "a".repeat(200);
        assert_eq!(glob_match(&pattern, &name), Some(false));
        assert_eq!(glob_match(&pattern, &(name.clone() + "b")), Some(true));
        let long = "*".repeat(100_000);
        assert_eq!(glob_match(&long, "abc"), Some(true));
        assert_eq!(glob_match(&long, "a/c"), Some(false));
    }
}
