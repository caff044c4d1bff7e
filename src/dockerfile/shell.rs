//! Word expansion with BuildKit's rules: `$V`, `${V:-w}`, quotes, escapes.
//!
//! This mirrors the semantics of BuildKit's `frontend/dockerfile/shell` lexer
//! (not its code): the same operators, the same quirks (an escape at the end
//! of a word is dropped, `\` inside double quotes only escapes `"`, `$` and the
//! escape char, positional and special parameters are always unset), and the
//! same word splitting, where only text produced by `$` expansion or unquoted
//! literal text is split on whitespace. It is proven against BuildKit's own
//! test tables in `tests/integration/shell_corpus.rs`.
//!
//! A [`Lexer`] is immutable configuration; every call builds its own scanner,
//! so one lexer can be shared between threads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

#[path = "shell_pattern.rs"]
mod pattern;
use pattern::{pattern_regex, trim_prefix, trim_suffix, ReplaceTemplate};

/// A source of variable values. `None` means unset, `Some("")` means set to empty.
pub trait Env {
    fn lookup(&self, name: &str) -> Option<String>;
}

impl Env for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Ordered pairs, as ARG/ENV scopes accumulate them: the last definition wins.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.as_slice().lookup(name)
    }
}

/// Turns `KEY=VALUE` strings (image config `Env`, `--build-arg`) into pairs
/// usable as an [`Env`]; an entry without `=` is set to empty, like BuildKit.
pub fn env_pairs<I, S>(entries: I) -> Vec<(String, String)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    entries
        .into_iter()
        .map(|e| {
            let e = e.as_ref();
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

impl<T: Env + ?Sized> Env for &T {
    fn lookup(&self, name: &str) -> Option<String> {
        (**self).lookup(name)
    }
}

/// Which variable names a word referred to, split by whether they were set.
/// Feeds the UndefinedVar lint and cache keys that depend on the build args a step uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matches {
    pub matched: BTreeSet<String>,
    pub unmatched: BTreeSet<String>,
}

/// The full outcome of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded text, quotes removed, inner whitespace kept.
    pub result: String,
    /// The same text split into words the way an unquoted shell word would be.
    pub words: Vec<String>,
    pub matches: Matches,
}

/// What went wrong while expanding a word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellErrorKind {
    /// A `'` or `"` without its closing partner.
    UnterminatedQuote { quote: char },
    /// Input ended inside `${...}` or an operator word before `stop` was found.
    UnexpectedEnd { stop: char },
    /// `${` without its closing `}`.
    MissingBrace,
    /// `${V/pattern` without the `/` that ends the pattern.
    MissingSlash,
    /// `${}`, `${:...}`, `${{...}`.
    BadSubstitution,
    /// `${V:=w}`, `${V^}` and other operators BuildKit does not implement.
    UnsupportedModifier { modifier: String },
    /// `${V?msg}` with V unset or `${V:?msg}` with V unset or empty.
    Required { name: String, message: String },
    /// A `#`/`%`/`/` pattern with a bad escape.
    InvalidPattern { pattern: String, reason: String },
    /// `${` nested deeper than [`MAX_NESTING`] (each level costs stack).
    TooDeep { limit: usize },
    /// The expansion grew more than [`MAX_GROWTH`] bytes past the word.
    TooLong { limit: usize },
}

impl ShellErrorKind {
    /// A resource limit, not a syntax error: never rewritten as another error.
    fn is_limit(&self) -> bool {
        matches!(self, Self::TooDeep { .. } | Self::TooLong { .. })
    }
}

impl fmt::Display for ShellErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnterminatedQuote { quote: '\'' } => {
                f.write_str("unexpected end of statement while looking for matching single-quote")
            }
            Self::UnterminatedQuote { .. } => {
                f.write_str("unexpected end of statement while looking for matching double-quote")
            }
            Self::UnexpectedEnd { stop } => write!(
                f,
                "unexpected end of statement while looking for matching {stop}"
            ),
            Self::MissingBrace => f.write_str("syntax error: missing '}'"),
            Self::MissingSlash => f.write_str("syntax error: missing '/' in ${}"),
            Self::BadSubstitution => f.write_str("syntax error: bad substitution"),
            Self::UnsupportedModifier { modifier } => {
                write!(f, "unsupported modifier ({modifier}) in substitution")
            }
            Self::Required { name, message } => write!(f, "{name}: {message}"),
            Self::InvalidPattern { pattern, reason } => {
                write!(f, "invalid pattern ({pattern}) in substitution: {reason}")
            }
            Self::TooDeep { limit } => {
                write!(f, "substitutions nested deeper than {limit} levels")
            }
            Self::TooLong { limit } => write!(
                f,
                "expanded value grows by more than {limit} bytes (a variable that repeats itself?)"
            ),
        }
    }
}

/// An expansion failure, naming the word that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ShellError {
    pub word: String,
    pub kind: ShellErrorKind,
}

impl fmt::Display for ShellError {
    /// BuildKit's text; a word that broke a limit is shortened, since it may
    /// be tens of kilobytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 60;
        if self.kind.is_limit() && self.word.chars().count() > SHOWN {
            let head: String = self.word.chars().take(SHOWN).collect();
            let more = self.word.chars().count() - SHOWN;
            return write!(
                f,
                "failed to process {head:?}… ({more} more characters): {}",
                self.kind
            );
        }
        write!(f, "failed to process {:?}: {}", self.word, self.kind)
    }
}

impl ShellError {
    /// The failure without the word, e.g. `FOO: must be set`.
    pub fn kind(&self) -> &ShellErrorKind {
        &self.kind
    }
}

/// BuildKit-compatible word expander. Fields mirror BuildKit's `Lex` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    /// Keep quote characters in the output (heredoc bodies and heredoc lines).
    pub raw_quotes: bool,
    /// Keep escape characters in the output (heredoc bodies and heredoc lines).
    pub raw_escapes: bool,
    /// Treat `'` and `"` as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written instead of expanding to "".
    pub skip_unset_env: bool,
}

type Result<T> = std::result::Result<T, ShellErrorKind>;

/// How deep `${V:-${W:-…}}` may nest. Expansion recurses once per level, so
/// without a bound a hostile word overflows the stack; real Dockerfiles
/// nest two or three levels.
pub const MAX_NESTING: usize = 64;

/// How many bytes one expansion may add to the word it expands. A chain of
/// `ARG B=$A$A` doubles per line; no environment value longer than this
/// could reach a RUN anyway (Linux caps one env string at 128 KiB).
pub const MAX_GROWTH: usize = 1 << 20;

impl Lexer {
    /// A lexer with the given escape char (`\` by default, `` ` `` via the
    /// `# escape=` directive) and no raw modes.
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// The lexer BuildKit uses to expand an unquoted heredoc body
    /// (`COPY <<EOF`): variables are expanded but quotes and escapes survive.
    pub fn heredoc_body() -> Self {
        Self {
            raw_quotes: true,
            raw_escapes: true,
            ..Self::new('\\')
        }
    }

    /// The lexer BuildKit uses to find `<<EOF` words on an instruction line:
    /// nothing is expanded or removed, only split into words.
    pub fn heredoc_line() -> Self {
        Self {
            skip_unset_env: true,
            ..Self::heredoc_body()
        }
    }

    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expands `word` to one string (quotes removed, whitespace kept).
    pub fn process_word(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> std::result::Result<String, ShellError> {
        self.process(word, env).map(|e| e.result)
    }

    /// Expands `word` and splits it into words; quoted or escaped whitespace does not split.
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> std::result::Result<Vec<String>, ShellError> {
        self.process(word, env).map(|e| e.words)
    }

    /// Expands `word` and reports which variable names were set and unset.
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> std::result::Result<(String, Matches), ShellError> {
        self.process(word, env).map(|e| (e.result, e.matches))
    }

    /// Expands `word`, returning the string, the split words and the matches.
    pub fn process(&self, word: &str, env: &dyn Env) -> std::result::Result<Expansion, ShellError> {
        let mut scanner = Scanner {
            lexer: self,
            env,
            chars: word.chars().collect(),
            pos: 0,
            raw_escapes: self.raw_escapes,
            matches: Matches::default(),
            depth: 0,
            max_len: word.len().saturating_add(MAX_GROWTH),
        };
        match scanner.process_until(None, self.raw_escapes) {
            Ok((result, words)) => Ok(Expansion {
                result,
                words,
                matches: scanner.matches,
            }),
            Err(kind) => Err(ShellError {
                word: word.to_string(),
                kind,
            }),
        }
    }
}

/// Accumulates words while scanning: literal whitespace ends a word, quoted
/// or escaped text never does, and empty words are never emitted.
#[derive(Default)]
struct WordSplitter {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl WordSplitter {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

/// One expansion in progress.
struct Scanner<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Env,
    chars: Vec<char>,
    pos: usize,
    /// Scoped: `#`/`%`/`/` operator words keep escapes so patterns can use them.
    raw_escapes: bool,
    matches: Matches,
    /// Open `${` levels.
    depth: usize,
    /// The longest any piece of the result may get (see [`MAX_GROWTH`]).
    max_len: usize,
}

impl Scanner<'_> {
    /// Fails once `s` is past the size cap, so a doubling chain stops early
    /// instead of exhausting memory.
    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.max_len {
            return Err(ShellErrorKind::TooLong { limit: MAX_GROWTH });
        }
        Ok(())
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn is_quote(&self, ch: char) -> bool {
        !self.lexer.skip_process_quotes && (ch == '\'' || ch == '"')
    }

    /// Processes text until `stop` (consumed) or, with `stop == None`, the end.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>)> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let out = self.process_until_inner(stop);
        self.raw_escapes = saved;
        out
    }

    fn process_until_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = WordSplitter::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            if ch == '$' {
                let value = self.dollar()?;
                result.push_str(&value);
                self.check_len(result.len())?;
                words.add_string(&value);
            } else if self.is_quote(ch) {
                let value = if ch == '\'' {
                    self.single_quoted()?
                } else {
                    self.double_quoted()?
                };
                result.push_str(&value);
                self.check_len(result.len())?;
                words.add_raw_string(&value);
            } else {
                self.pos += 1;
                if ch == self.lexer.escape {
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    // An escape at the very end is dropped, as BuildKit does.
                    let Some(escaped) = self.next() else { break };
                    words.add_raw_char(escaped);
                    result.push(escaped);
                } else {
                    words.add_char(ch);
                    result.push(ch);
                }
            }
        }
        match stop {
            Some(stop) => Err(ShellErrorKind::UnexpectedEnd { stop }),
            None => Ok((result, words.finish())),
        }
    }

    /// `'...'`: everything literal, no escapes at all.
    fn single_quoted(&mut self) -> Result<String> {
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ShellErrorKind::UnterminatedQuote { quote: '\'' }),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    /// `"..."`: `$` expands; the escape char only escapes `"`, `$` and itself.
    fn double_quoted(&mut self) -> Result<String> {
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ShellErrorKind::UnterminatedQuote { quote: '"' }),
                Some('"') => {
                    self.pos += 1;
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    result.push_str(&value);
                    self.check_len(result.len())?;
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // Dropped; the loop then reports the missing quote.
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                ch = next;
                                self.pos += 1;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    /// `$NAME`, `${NAME}` or `${NAME<op>word}`; the scanner is on the `$`.
    fn dollar(&mut self) -> Result<String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            return Ok(self.simple_reference());
        }
        if self.depth >= MAX_NESTING {
            return Err(ShellErrorKind::TooDeep { limit: MAX_NESTING });
        }
        self.depth += 1;
        let out = self.braced();
        self.depth -= 1;
        out
    }

    /// `${…}` after the brace.
    fn braced(&mut self) -> Result<String> {
        self.pos += 1;
        match self.peek() {
            None => return Err(ShellErrorKind::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellErrorKind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.name();
        match self.next() {
            Some('}') => {
                let value = self.lookup(&name);
                Ok(match value {
                    None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                    value => value.unwrap_or_default(),
                })
            }
            Some(':') => {
                let op = self.next();
                let mut spelled = String::from(":");
                spelled.extend(op);
                self.modifier(&name, op, spelled, true)
            }
            Some(op @ ('+' | '-' | '?' | '#' | '%')) => {
                self.modifier(&name, Some(op), op.to_string(), false)
            }
            Some('/') => self.substitute(&name),
            // BuildKit reports an "unsupported modifier" here; the missing brace is the real problem.
            None => Err(ShellErrorKind::MissingBrace),
            Some(other) => Err(ShellErrorKind::UnsupportedModifier {
                modifier: other.to_string(),
            }),
        }
    }

    /// `$NAME` without braces; a lone `$` stays literal.
    fn simple_reference(&mut self) -> String {
        let name = self.name();
        if name.is_empty() {
            return "$".to_string();
        }
        match self.lookup(&name) {
            None if self.lexer.skip_unset_env => format!("${name}"),
            value => value.unwrap_or_default(),
        }
    }

    /// `${NAME<op>word}` for the operators that take one word (`-+?#%`, with
    /// or without `:`). `null_is_unset` is the `:` form.
    fn modifier(
        &mut self,
        name: &str,
        op: Option<char>,
        spelled: String,
        null_is_unset: bool,
    ) -> Result<String> {
        let raw = matches!(op, Some('#' | '%'));
        let word = match self.process_until(Some('}'), raw) {
            Ok((word, _)) => word,
            Err(e) if !e.is_limit() && self.peek().is_none() => {
                return Err(ShellErrorKind::MissingBrace)
            }
            Err(e) => return Err(e),
        };
        let value = self.lookup(name);
        let Some(value) = value else {
            if self.lexer.skip_unset_env {
                return Ok(format!("${{{name}{spelled}{word}}}"));
            }
            return unset_modifier(name, op, &spelled, word);
        };
        let empty = null_is_unset && value.is_empty();
        match op {
            Some('-') => Ok(if empty { word } else { value }),
            Some('+') => Ok(if empty { String::new() } else { word }),
            Some('?') if empty => required(name, word, "is not allowed to be empty"),
            Some('?') => Ok(value),
            Some(op @ ('#' | '%')) => {
                // A doubled operator (`##`, `%%`) asks for the longest match.
                let (pattern, greedy) = match word.strip_prefix(op) {
                    Some(rest) => (rest.to_string(), true),
                    None => (word, false),
                };
                if op == '%' {
                    trim_suffix(&pattern, &value, greedy)
                } else {
                    trim_prefix(&pattern, &value, greedy)
                }
            }
            _ => Err(ShellErrorKind::UnsupportedModifier { modifier: spelled }),
        }
    }

    /// `${NAME/pattern/replacement}` and `${NAME//pattern/replacement}`.
    fn substitute(&mut self, name: &str) -> Result<String> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.pos += 1;
        }
        let pattern = match self.process_until(Some('/'), true) {
            Ok((p, _)) => p,
            Err(e) if !e.is_limit() && self.peek().is_none() => {
                return Err(ShellErrorKind::MissingSlash)
            }
            Err(e) => return Err(e),
        };
        let replacement = match self.process_until(Some('}'), true) {
            Ok((r, _)) => r,
            Err(e) if !e.is_limit() && self.peek().is_none() => {
                return Err(ShellErrorKind::MissingBrace)
            }
            Err(e) => return Err(e),
        };
        let value = match self.lookup(name) {
            None if self.lexer.skip_unset_env => {
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            value => value.unwrap_or_default(),
        };
        let re = pattern_regex(&pattern, true, false)?;
        if replace_all {
            // BuildKit uses Go's ReplaceAllString, which expands `$n`/`${n}`
            // in the replacement. The template is parsed once (not once per
            // match: a long replacement over many empty matches cost
            // O(matches × template), found by fuzzing), and the result is
            // built by hand so the size cap applies while it grows:
            // `${V//?/$V}` squares V's length.
            let template = ReplaceTemplate::parse(&replacement);
            let mut out = String::new();
            let mut last = 0;
            for m in re.find_iter(&value) {
                out.push_str(&value[last..m.start()]);
                template.expand(m.as_str(), &mut out);
                self.check_len(out.len())?;
                last = m.end();
            }
            out.push_str(&value[last..]);
            return Ok(out);
        }
        Ok(match re.find(&value) {
            Some(m) => format!(
                "{}{}{}",
                &value[..m.start()],
                replacement,
                &value[m.end()..]
            ),
            None => value,
        })
    }

    /// A variable name: letters, digits and `_`; or a run of digits
    /// (positional); or one special parameter char. May be empty.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.peek().filter(|c| is_digit(*c)) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.pos += 1;
                return ch.to_string();
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        let value = self.env.lookup(name);
        let set = if value.is_some() {
            &mut self.matches.matched
        } else {
            &mut self.matches.unmatched
        };
        set.insert(name.to_string());
        value
    }
}

/// The result of a one-word modifier when the variable is unset.
fn unset_modifier(name: &str, op: Option<char>, spelled: &str, word: String) -> Result<String> {
    match op {
        Some('-') => Ok(word),
        Some('+') => Ok(String::new()),
        Some('?') => required(name, word, "is not allowed to be unset"),
        // Trimming an unset (empty) value yields empty, after validating the pattern.
        Some(op @ ('#' | '%')) => {
            let pattern = word.strip_prefix(op).unwrap_or(&word);
            pattern_regex(pattern, true, true).map(|_| String::new())
        }
        _ => Err(ShellErrorKind::UnsupportedModifier {
            modifier: spelled.to_string(),
        }),
    }
}

fn required(name: &str, word: String, default_message: &str) -> Result<String> {
    let message = if word.is_empty() {
        default_message.to_string()
    } else {
        word
    };
    Err(ShellErrorKind::Required {
        name: name.to_string(),
        message,
    })
}

/// Go's `unicode.IsDigit`: the Nd category (Rust's `is_numeric` is wider).
fn is_digit(ch: char) -> bool {
    ch.is_ascii_digit() || (!ch.is_ascii() && unicode_class(ch, &NON_ASCII_DIGIT))
}

/// Go's `unicode.IsLetter`: the L categories (Rust's `is_alphabetic` also
/// admits combining vowel signs and letter-like numerals).
fn is_letter(ch: char) -> bool {
    ch.is_ascii_alphabetic() || (!ch.is_ascii() && unicode_class(ch, &NON_ASCII_LETTER))
}

static NON_ASCII_DIGIT: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^\p{Nd}$").ok());
static NON_ASCII_LETTER: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^\p{L}$").ok());

/// Exact Unicode category tests via the regex crate's tables; ASCII never gets here.
fn unicode_class(ch: char, class: &LazyLock<Option<Regex>>) -> bool {
    let mut buf = [0u8; 4];
    class
        .as_ref()
        .is_some_and(|re| re.is_match(ch.encode_utf8(&mut buf)))
}

/// POSIX special parameters; never set in a Dockerfile, so they expand to "".
fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

#[cfg(test)]
#[path = "shell_tests.rs"]
mod tests;
