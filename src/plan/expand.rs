//! Word expansion as BuildKit's shell lexer does it for Dockerfile
//! instructions: `$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`,
//! `${V:?m}`, `${V?m}`, `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`, `${V/p/r}`,
//! single/double quotes and the escape character. It also reports which
//! variables were found and which were not, for UndefinedVar and for the
//! build args a step depends on.
//!
//! The `dockerfile::shell` module is the full implementation; this one is
//! the planner's adapter until it lands.

use std::collections::{BTreeMap, BTreeSet};

/// Expansion failed (bad syntax or `${V:?msg}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError(pub String);

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Variables a word referenced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matches {
    pub matched: BTreeSet<String>,
    pub unmatched: BTreeSet<String>,
}

/// Expand one word (quotes removed). Unset variables expand to "".
pub fn word(
    s: &str,
    env: &BTreeMap<String, String>,
    escape: char,
) -> Result<(String, Matches), ExpandError> {
    let mut lx = Lexer {
        chars: s.chars().collect(),
        pos: 0,
        env,
        escape,
        matches: Matches::default(),
    };
    let out = lx.process(false, None)?;
    Ok((out.concat(), lx.matches))
}

/// Expand and split into words on unquoted whitespace (EXPOSE).
pub fn words(
    s: &str,
    env: &BTreeMap<String, String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    let mut lx = Lexer {
        chars: s.chars().collect(),
        pos: 0,
        env,
        escape,
        matches: Matches::default(),
    };
    lx.process(true, None)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a BTreeMap<String, String>,
    escape: char,
    matches: Matches,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Process until end (or `stop` char, unconsumed). With `split`, returns
    /// whitespace-separated words; otherwise one element.
    fn process(&mut self, split: bool, stop: Option<char>) -> Result<Vec<String>, ExpandError> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                break;
            }
            self.pos += 1;
            if split && c.is_whitespace() {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            in_word = true;
            if c == self.escape {
                match self.next() {
                    Some(n) => cur.push(n),
                    None => cur.push(c),
                }
            } else if c == '\'' {
                cur.push_str(&self.single_quoted()?);
            } else if c == '"' {
                cur.push_str(&self.double_quoted()?);
            } else if c == '$' {
                cur.push_str(&self.dollar()?);
            } else {
                cur.push(c);
            }
        }
        if in_word || !split {
            out.push(cur);
        }
        Ok(out)
    }

    fn single_quoted(&mut self) -> Result<String, ExpandError> {
        let mut s = String::new();
        loop {
            match self.next() {
                Some('\'') => return Ok(s),
                Some(c) => s.push(c),
                None => {
                    return Err(ExpandError(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    ))
                }
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, ExpandError> {
        let mut s = String::new();
        loop {
            match self.next() {
                Some('"') => return Ok(s),
                Some('$') => s.push_str(&self.dollar()?),
                Some(c) if c == self.escape => match self.next() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => s.push(n),
                    Some(n) => {
                        s.push(c);
                        s.push(n);
                    }
                    None => s.push(c),
                },
                Some(c) => s.push(c),
                None => {
                    return Err(ExpandError(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    ))
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut n = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                n.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        n
    }

    fn lookup(&mut self, name: &str, record_miss: bool) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matches.matched.insert(name.to_string());
                Some(v.clone())
            }
            None => {
                if record_miss {
                    self.matches.unmatched.insert(name.to_string());
                }
                None
            }
        }
    }

    fn dollar(&mut self) -> Result<String, ExpandError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced()
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let n = self.name();
                Ok(self.lookup(&n, true).unwrap_or_default())
            }
            _ => Ok("$".to_string()),
        }
    }

    /// The word after a `${V<op>` up to the closing brace, expanded.
    fn operand(&mut self) -> Result<String, ExpandError> {
        let parts = self.process(false, Some('}'))?;
        if self.next() != Some('}') {
            return Err(ExpandError("syntax error: missing '}'".into()));
        }
        Ok(parts.concat())
    }

    fn braced(&mut self) -> Result<String, ExpandError> {
        let name = self.name();
        if name.is_empty() {
            return Err(ExpandError("syntax error: bad substitution".into()));
        }
        let Some(op) = self.next() else {
            return Err(ExpandError("syntax error: missing '}'".into()));
        };
        match op {
            '}' => Ok(self.lookup(&name, true).unwrap_or_default()),
            ':' => {
                let Some(op2) = self.next() else {
                    return Err(ExpandError("syntax error: missing '}'".into()));
                };
                let word = self.operand()?;
                let val = self.lookup(&name, false).filter(|v| !v.is_empty());
                match op2 {
                    '-' => Ok(val.unwrap_or(word)),
                    '+' => Ok(if val.is_some() { word } else { String::new() }),
                    '?' => val.ok_or_else(|| {
                        ExpandError(if word.is_empty() {
                            format!("{name}: parameter null or not set")
                        } else {
                            format!("{name}: {word}")
                        })
                    }),
                    _ => Err(ExpandError(format!(
                        "unsupported modifier ({op2}) in substitution"
                    ))),
                }
            }
            '-' | '+' | '?' => {
                let word = self.operand()?;
                let val = self.lookup(&name, false);
                match op {
                    '-' => Ok(val.unwrap_or(word)),
                    '+' => Ok(if val.is_some() { word } else { String::new() }),
                    _ => val.ok_or_else(|| {
                        ExpandError(if word.is_empty() {
                            format!("{name}: parameter not set")
                        } else {
                            format!("{name}: {word}")
                        })
                    }),
                }
            }
            '#' | '%' => {
                let longest = self.peek() == Some(op);
                if longest {
                    self.pos += 1;
                }
                let pat = self.operand()?;
                let val = self.lookup(&name, true).unwrap_or_default();
                Ok(trim_pattern(&val, &pat, op == '#', longest))
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let parts = self.process(false, Some('/'))?;
                let pat = parts.concat();
                let repl = if self.peek() == Some('/') {
                    self.pos += 1;
                    self.operand()?
                } else {
                    self.operand()?
                };
                let val = self.lookup(&name, true).unwrap_or_default();
                if pat.is_empty() {
                    return Ok(val);
                }
                Ok(if all {
                    val.replace(&pat, &repl)
                } else {
                    val.replacen(&pat, &repl, 1)
                })
            }
            _ => Err(ExpandError(format!(
                "unsupported modifier ({op}) in substitution"
            ))),
        }
    }
}

/// `${V#p}`/`${V##p}`/`${V%p}`/`${V%%p}` with `*` and `?` wildcards.
fn trim_pattern(val: &str, pat: &str, prefix: bool, longest: bool) -> String {
    let cuts: Vec<usize> = val
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(val.len()))
        .collect();
    let candidates: Box<dyn Iterator<Item = &usize>> = match (prefix, longest) {
        (true, false) | (false, true) => Box::new(cuts.iter()),
        _ => Box::new(cuts.iter().rev()),
    };
    for &cut in candidates {
        let (part, keep) = if prefix {
            (&val[..cut], &val[cut..])
        } else {
            (&val[cut..], &val[..cut])
        };
        if glob_match(pat, part) {
            return keep.to_string();
        }
    }
    val.to_string()
}

fn glob_match(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| go(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("A", "1"), ("P", "/usr/local/bin"), ("E", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn w(s: &str) -> String {
        word(s, &env(), '\\').expect("expands").0
    }

    #[test]
    fn operators() {
        assert_eq!(w("$A ${A} x$A"), "1 1 x1");
        assert_eq!(w("${X:-d} ${E:-d} ${E-d} ${A:+y} ${X:+y}"), "d d  y ");
        assert_eq!(
            w("${P#*/} ${P##*/} ${P%/*} ${P%%/*}"),
            "usr/local/bin bin /usr/local "
        );
        assert_eq!(
            w("${P/local/l} 'a $A' \"b $A\" \\$A $"),
            "/usr/l/bin a $A b 1 $A $"
        );
        assert_eq!(
            word("${X:?must be set}", &env(), '\\').unwrap_err().0,
            "X: must be set"
        );
    }

    #[test]
    fn matches_are_reported() {
        let (_, m) = word("$A $B ${C:-x}", &env(), '\\').expect("expands");
        assert_eq!(m.matched.into_iter().collect::<Vec<_>>(), vec!["A"]);
        assert_eq!(m.unmatched.into_iter().collect::<Vec<_>>(), vec!["B"]);
    }

    #[test]
    fn words_split_outside_quotes() {
        assert_eq!(
            words("80/tcp \"$A 2\" $A", &env(), '\\').expect("expands"),
            vec!["80/tcp", "1 2", "1"]
        );
    }
}
