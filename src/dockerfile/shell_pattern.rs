//! Shell patterns of `${V#p}`, `${V%p}` and `${V/p/r}`: pattern → regex,
//! prefix and suffix trimming, and Go's replacement-template rules.

use regex::Regex;

use super::{Result, ShellErrorKind};

/// A `${V//p/r}` replacement as Go's `Regexp.Expand` reads it: `$$` is a
/// `$`, `$name` / `${name}` a capture group (the longest run of letters,
/// digits and `_`), a `$` with no valid name after it stays as it is.
/// [`pattern_regex`] makes no groups but the whole match (`$0`), so every
/// other reference expands to nothing and is dropped here.
pub(super) struct ReplaceTemplate {
    parts: Vec<TemplatePart>,
    /// The output for an empty match: the literal parts alone.
    pub(super) for_empty: String,
}

enum TemplatePart {
    Literal(String),
    WholeMatch,
}

impl ReplaceTemplate {
    pub(super) fn parse(template: &str) -> ReplaceTemplate {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut parts: Vec<TemplatePart> = Vec::new();
        let mut lit = String::new();
        let mut rest = template;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, used) = if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) if end > 0 && braced[..end].chars().all(is_name) => {
                        (Some(&braced[..end]), end + 2)
                    }
                    _ => (None, 0),
                }
            } else {
                let end = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
                ((end > 0).then(|| &after[..end]), end)
            };
            match name {
                _ if after.starts_with('$') => {
                    lit.push('$');
                    rest = &after[1..];
                    continue;
                }
                None => {
                    lit.push('$');
                    rest = after;
                    continue;
                }
                Some(n) => {
                    if n.parse::<usize>() == Ok(0) {
                        if !lit.is_empty() {
                            parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
                        }
                        parts.push(TemplatePart::WholeMatch);
                    }
                    rest = &after[used..];
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(TemplatePart::Literal(lit));
        }
        let for_empty = parts
            .iter()
            .filter_map(|p| match p {
                TemplatePart::Literal(l) => Some(l.as_str()),
                TemplatePart::WholeMatch => None,
            })
            .collect();
        ReplaceTemplate { parts, for_empty }
    }

    /// Appends the expansion for one match: work in proportion to what is
    /// appended (an empty match takes the precomputed literals).
    pub(super) fn expand(&self, matched: &str, out: &mut String) {
        if matched.is_empty() {
            out.push_str(&self.for_empty);
            return;
        }
        for part in &self.parts {
            match part {
                TemplatePart::Literal(l) => out.push_str(l),
                TemplatePart::WholeMatch => out.push_str(matched),
            }
        }
    }
}

/// Converts a shell pattern (`*`, `?`, `\` escapes; no bracket expressions,
/// as in BuildKit) to a regex. `\}` and `\/` lose their backslash because
/// there it only protected the `${}` syntax.
pub(super) fn pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex> {
    let invalid = |reason: String| ShellErrorKind::InvalidPattern {
        pattern: pattern.to_string(),
        reason,
    };
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = pattern.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(esc @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(esc);
                    }
                    Some(other) => return Err(invalid(format!("invalid escape '\\{other}'"))),
                    None => return Err(invalid("trailing escape".to_string())),
                }
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                out.push('\\');
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    Regex::new(&out).map_err(|e| invalid(e.to_string()))
}

/// `${V#p}` / `${V##p}`: drop the shortest / longest prefix matching `pattern`.
pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String> {
    let re = pattern_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// `${V%p}` / `${V%%p}`: a regex cannot find the shortest *rightmost* match,
/// so both the value and the pattern are reversed and the prefix trimmed.
pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String> {
    let reversed = trim_prefix(&reverse_pattern(pattern), &reverse(value), greedy)?;
    Ok(reverse(&reversed))
}

fn reverse(s: &str) -> String {
    s.chars().rev().collect()
}

/// Reverses a pattern while keeping each `\x` escape pair in order.
pub(super) fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let len = if chars[i] == '\\' && i + 1 < chars.len() {
            2
        } else {
            1
        };
        units.push(&chars[i..i + len]);
        i += len;
    }
    units.iter().rev().flat_map(|u| u.iter()).collect()
}
