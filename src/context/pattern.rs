//! `.dockerignore` / `--exclude` matching with moby `patternmatcher`
//! semantics: last match wins, a matching parent directory covers its
//! children, `**` rules, regex metacharacters literal, and the same split
//! between errors at construction time and errors at match time.
//!
//! Upstream turns each pattern into a Go regexp; we compile to a small token
//! program instead (Rust's `regex` reads `[[]` and `&&` differently from Go)
//! and reproduce the regexp's meaning, including its exact/prefix/suffix
//! shortcuts, which change results for `**`-leading patterns.

use super::gopath::{self, Class};
use super::ContextError;

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    compiled: Result<Compiled, ()>,
}

#[derive(Debug, Clone)]
enum Compiled {
    Exact,
    Prefix,
    Suffix,
    Program(Vec<Tok>),
}

#[derive(Debug, Clone)]
enum Tok {
    Lit(char),
    /// `*`: any run of non-separators.
    Star,
    /// `?`: one non-separator.
    One,
    Class(Class),
    /// A `**/` inside a pattern: zero or more whole directories.
    AnyDirs,
    /// A trailing `**` after other wildcards: anything.
    AnyAll,
    /// A raw `^`, which upstream leaves as a regexp anchor.
    Start,
}

impl Pattern {
    /// The cleaned pattern text, without the leading `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` exception (re-inclusion).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// How upstream would match this pattern: `"exact"`, `"prefix"`,
    /// `"suffix"` or `"regexp"` (`"invalid"` if it cannot compile).
    pub fn match_kind(&self) -> &'static str {
        match &self.compiled {
            Ok(Compiled::Exact) => "exact",
            Ok(Compiled::Prefix) => "prefix",
            Ok(Compiled::Suffix) => "suffix",
            Ok(Compiled::Program(_)) => "regexp",
            Err(()) => "invalid",
        }
    }

    fn matches(&self, path: &str) -> Result<bool, ContextError> {
        let bad = || ContextError::BadPattern {
            pattern: self.display(),
        };
        let p = &self.cleaned;
        match self.compiled.as_ref().map_err(|_| bad())? {
            Compiled::Exact => Ok(path == p),
            Compiled::Prefix => Ok(path.starts_with(&p[..p.len() - 2])),
            Compiled::Suffix => {
                let suffix = &p[2..];
                Ok(path.ends_with(suffix) || (suffix.starts_with('/') && path == &suffix[1..]))
            }
            Compiled::Program(toks) => Ok(run_program(toks, path)),
        }
    }

    fn display(&self) -> String {
        if self.exclusion {
            format!("!{}", self.cleaned)
        } else {
            self.cleaned.clone()
        }
    }
}

/// Per-pattern results for a directory, handed to its children so they need
/// not re-test patterns the directory already matched.
#[derive(Debug, Clone, Default)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// When a walk may skip an excluded directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PruneRule {
    /// Docker's classic builder and buildah: descend only if some exception
    /// literally starts with `<dir>/`. The buildah conformance corpus
    /// (e.g. `integration1` must fail) expects this.
    #[default]
    Classic,
    /// Current BuildKit (fsutil `filterFS`): as `Classic` while every
    /// exception is a plain path (a trailing `/*` or `/**` allowed), but
    /// once any exception holds a wildcard, excluded directories are always
    /// walked, so `!**/keep` reaches into them.
    BuildKit,
}

/// An ordered list of patterns; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
    prune: PruneRule,
}

impl PatternMatcher {
    /// Builds a matcher. Patterns are trimmed, empty ones dropped, each is
    /// `filepath.Clean`ed; a lone `!` and Go-malformed globs are errors.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, ContextError> {
        let mut pm = PatternMatcher::default();
        for raw in patterns {
            let p = raw.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let mut p = gopath::clean(p);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(ContextError::LoneExclusion);
                }
                p.remove(0);
                pm.exclusions = true;
            }
            if !gopath::validate_glob(&p) {
                return Err(ContextError::BadPattern {
                    pattern: raw.as_ref().trim().to_string(),
                });
            }
            let compiled = compile(&p);
            pm.patterns.push(Pattern {
                cleaned: p,
                exclusion,
                compiled,
            });
        }
        Ok(pm)
    }

    /// Chooses how [`PatternMatcher::may_reinclude_below`] prunes.
    pub fn set_prune_rule(&mut self, rule: PruneRule) {
        self.prune = rule;
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` (clean, `/`-separated, relative) is excluded, checking
    /// the path and each of its parents (moby `MatchesOrParentMatches`).
    pub fn matches(&self, path: &str) -> Result<bool, ContextError> {
        let parents = parent_prefixes(path);
        let mut matched = false;
        for pat in &self.patterns {
            if pat.exclusion != matched {
                continue;
            }
            let mut hit = pat.matches(path)?;
            if !hit {
                // Upstream ignores errors on the parent checks.
                hit = parents.iter().any(|d| pat.matches(d).unwrap_or(false));
            }
            if hit {
                matched = !pat.exclusion;
            }
        }
        Ok(matched)
    }

    /// Incremental form for tree walks (moby `MatchesUsingParentResults`):
    /// pass the parent directory's [`MatchInfo`] (or the default one when
    /// unknown) and get this path's verdict and info for its children.
    pub fn matches_with_parent(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), ContextError> {
        let known = !parent.parent_matched.is_empty();
        if known && parent.parent_matched.len() != self.patterns.len() {
            return Err(ContextError::Internal(
                "parent match info does not fit this matcher".into(),
            ));
        }
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        let mut matched = false;
        for (i, pat) in self.patterns.iter().enumerate() {
            let mut hit = known && parent.parent_matched[i];
            if !hit {
                if pat.exclusion != matched {
                    continue;
                }
                hit = pat.matches(path)?;
                if !hit && !known {
                    hit = parent_prefixes(path)
                        .iter()
                        .any(|d| pat.matches(d).unwrap_or(false));
                }
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pat.exclusion;
            }
        }
        Ok((matched, info))
    }

    /// For an excluded directory: whether some exception could re-include
    /// something below it, so the walk must descend. Under
    /// [`PruneRule::Classic`] this is the literal prefix test
    /// (`<exception>/` starts with `<dir>/`), so an exception with a
    /// wildcard in an earlier element (`!*/sub1*`, `!**/x`) does not reach
    /// into an excluded directory; see [`PruneRule`] for BuildKit's rule.
    pub fn may_reinclude_below(&self, dir: &str) -> bool {
        if !self.exclusions {
            return false;
        }
        let exceptions = self.patterns.iter().filter(|p| p.exclusion);
        if self.prune == PruneRule::BuildKit
            && exceptions
                .clone()
                .any(|p| has_glob_chars(trim_trailing_glob(&p.cleaned)))
        {
            return true;
        }
        let dir_slash = format!("{dir}/");
        exceptions
            .map(|p| trim_trailing_glob(&p.cleaned))
            .any(|p| format!("{p}/").starts_with(&dir_slash))
    }
}

/// Convenience form of [`PatternMatcher::matches`] that builds the matcher,
/// cleans `path`, and never excludes the root `.`.
pub fn matches_or_parent_matches<S: AsRef<str>>(
    path: &str,
    patterns: &[S],
) -> Result<bool, ContextError> {
    let pm = PatternMatcher::new(patterns)?;
    let path = gopath::clean(path);
    if path == "." {
        return Ok(false);
    }
    pm.matches(&path)
}

/// `a/b/*` and `a/b/**` → `a/b` (fsutil's `patternWithoutTrailingGlob`).
fn trim_trailing_glob(p: &str) -> &str {
    let p = p.strip_suffix("/**").unwrap_or(p);
    p.strip_suffix("/*").unwrap_or(p)
}

fn has_glob_chars(p: &str) -> bool {
    p.contains(['*', '[', ']', '?', '^', '\\'])
}

/// `a/b/c` → `["a", "a/b"]`.
fn parent_prefixes(path: &str) -> Vec<&str> {
    path.match_indices('/').map(|(i, _)| &path[..i]).collect()
}

/// Mirrors upstream's pattern → regexp translation, including how it picks
/// exact / prefix / suffix matching.
fn compile(pattern: &str) -> Result<Compiled, ()> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Program,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut kind = Kind::Exact;
    let mut i = 0;
    let mut step = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                // `**/**/` means what one `**/` does, and `**/` then a
                // final `**` what the `**` does: folding them keeps the
                // program (and its live states) small for `******…`.
                if matches!(toks.last(), Some(Tok::AnyDirs)) {
                    toks.pop();
                }
                if i >= chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        toks.push(Tok::AnyAll);
                        kind = Kind::Program;
                    }
                } else {
                    toks.push(Tok::AnyDirs);
                    kind = Kind::Program;
                }
                if step == 0 {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                toks.push(Tok::Star);
                kind = Kind::Program;
            }
            '?' => {
                toks.push(Tok::One);
                kind = Kind::Program;
            }
            '\\' => match chars.get(i) {
                Some(&next) => {
                    toks.push(Tok::Lit(next));
                    i += 1;
                    kind = Kind::Program;
                }
                None => toks.push(Tok::Lit('\\')),
            },
            '[' => {
                let (class, used) = parse_regexp_class(&chars[i..])?;
                toks.push(Tok::Class(class));
                i += used;
                kind = Kind::Program;
            }
            ']' => {
                toks.push(Tok::Lit(']'));
                kind = Kind::Program;
            }
            '^' => toks.push(Tok::Start),
            c => toks.push(Tok::Lit(c)),
        }
        step += 1;
    }
    Ok(match kind {
        Kind::Exact => Compiled::Exact,
        Kind::Prefix => Compiled::Prefix,
        Kind::Suffix => Compiled::Suffix,
        Kind::Program => Compiled::Program(toks),
    })
}

/// A class as Go's regexp parser reads it (after `[`): `]` first is
/// literal, `\x` escapes, `a-z` ranges must ascend (upstream's
/// `[Local-Only]` fails here, at match time). `*`/`?` inside a class are
/// taken literally (upstream would splice regexp text into the class).
fn parse_regexp_class(chars: &[char]) -> Result<(Class, usize), ()> {
    let mut i = 0;
    let negated = chars.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i).ok_or(())?;
        if c == ']' && !first {
            return Ok((Class { negated, ranges }, i + 1));
        }
        first = false;
        let lo = read_class_char(chars, &mut i)?;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
            i += 1;
            let hi = read_class_char(chars, &mut i)?;
            if hi < lo {
                return Err(());
            }
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
}

fn read_class_char(chars: &[char], i: &mut usize) -> Result<char, ()> {
    let c = *chars.get(*i).ok_or(())?;
    *i += 1;
    if c == '\\' {
        let e = *chars.get(*i).ok_or(())?;
        *i += 1;
        return Ok(e);
    }
    Ok(c)
}

/// Anchored match of a token program, run as a set of NFA states over the
/// path's characters: time O(live states × path), no recursion, so a
/// pattern of 100,000 `*` neither overflows the stack nor allocates a memo
/// table per path. State `2t` is "before token t"; `2t + 1` is "inside the
/// `**/` at t", which has consumed something and must end with a `/`.
fn run_program(toks: &[Tok], path: &str) -> bool {
    let mut set = StateSet::new(2 * (toks.len() + 1));
    let mut cur = Vec::new();
    set.add(&mut cur, 0);
    close(toks, &mut set, &mut cur, true);
    for h in path.chars() {
        set.clear();
        let mut next = Vec::new();
        for &state in &cur {
            let (t, inside) = (state / 2, state % 2 == 1);
            let Some(tok) = toks.get(t) else { continue };
            let to = match tok {
                Tok::Lit(l) if !inside && h == *l => Some(state + 2),
                Tok::One if h != '/' => Some(state + 2),
                Tok::Class(cl) if cl.contains(h) => Some(state + 2),
                Tok::Star if h != '/' => Some(state),
                Tok::AnyAll => Some(state),
                Tok::AnyDirs => {
                    set.add(&mut next, 2 * t + 1);
                    (h == '/').then_some(2 * t + 2)
                }
                _ => None,
            };
            if let Some(to) = to {
                set.add(&mut next, to);
            }
        }
        if next.is_empty() {
            return false;
        }
        close(toks, &mut set, &mut next, false);
        cur = next;
    }
    cur.contains(&(2 * toks.len()))
}

/// Membership for one step's state list, cleared in O(1) by generation.
struct StateSet {
    stamp: Vec<u32>,
    generation: u32,
}

impl StateSet {
    fn new(n: usize) -> Self {
        StateSet {
            stamp: vec![0; n],
            generation: 1,
        }
    }

    fn clear(&mut self) {
        self.generation += 1;
    }

    fn add(&mut self, list: &mut Vec<usize>, state: usize) {
        if self.stamp[state] != self.generation {
            self.stamp[state] = self.generation;
            list.push(state);
        }
    }
}

/// Adds the states reachable without consuming a character: past a `*`,
/// `**` or `**/` matching nothing, and past `^` at the start of the path.
/// Only "before" states (even numbers) have such moves.
fn close(toks: &[Tok], set: &mut StateSet, list: &mut Vec<usize>, at_start: bool) {
    let mut i = 0;
    while i < list.len() {
        let state = list[i];
        i += 1;
        if state % 2 == 1 {
            continue;
        }
        let skip = match toks.get(state / 2) {
            Some(Tok::Star | Tok::AnyAll | Tok::AnyDirs) => true,
            Some(Tok::Start) => at_start,
            _ => false,
        };
        if skip {
            set.add(list, state + 2);
        }
    }
}
