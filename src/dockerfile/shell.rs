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

/// A `${V//p/r}` replacement as Go's `Regexp.Expand` reads it: `$$` is a
/// `$`, `$name` / `${name}` a capture group (the longest run of letters,
/// digits and `_`), a `$` with no valid name after it stays as it is.
/// [`pattern_regex`] makes no groups but the whole match (`$0`), so every
/// other reference expands to nothing and is dropped here.
struct ReplaceTemplate {
    parts: Vec<TemplatePart>,
    /// The output for an empty match: the literal parts alone.
    for_empty: String,
}

enum TemplatePart {
    Literal(String),
    WholeMatch,
}

impl ReplaceTemplate {
    fn parse(template: &str) -> ReplaceTemplate {
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
    fn expand(&self, matched: &str, out: &mut String) {
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
fn pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex> {
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
fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String> {
    let re = pattern_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// `${V%p}` / `${V%%p}`: a regex cannot find the shortest *rightmost* match,
/// so both the value and the pattern are reversed and the prefix trimmed.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String> {
    let reversed = trim_prefix(&reverse_pattern(pattern), &reverse(value), greedy)?;
    Ok(reverse(&reversed))
}

fn reverse(s: &str) -> String {
    s.chars().rev().collect()
}

/// Reverses a pattern while keeping each `\x` escape pair in order.
fn reverse_pattern(pattern: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expand(word: &str, pairs: &[(&str, &str)]) -> std::result::Result<String, ShellError> {
        Lexer::new('\\').process_word(word, &env(pairs))
    }

    fn ok(word: &str, pairs: &[(&str, &str)]) -> String {
        match expand(word, pairs) {
            Ok(s) => s,
            Err(e) => panic!("{word:?} failed: {e}"),
        }
    }

    #[test]
    fn plain_and_braced_references() {
        let e = [("A", "x"), ("EMPTY", "")];
        assert_eq!(ok("$A-${A}_$A_", &e), "x-x_");
        assert_eq!(ok("${EMPTY}|$MISSING|", &e), "||");
        assert_eq!(ok("a$", &e), "a$");
        assert_eq!(ok("$1$@$#x", &e), "x");
    }

    #[test]
    fn default_and_alternative_operators() {
        let e = [("SET", "v"), ("EMPTY", "")];
        assert_eq!(ok("${SET:-d} ${EMPTY:-d} ${NO:-d}", &e), "v d d");
        assert_eq!(ok("${SET-d} ${EMPTY-d} ${NO-d}", &e), "v  d");
        assert_eq!(ok("${SET:+a} ${EMPTY:+a} ${NO:+a}", &e), "a  ");
        assert_eq!(ok("${SET+a} ${EMPTY+a} ${NO+a}", &e), "a a ");
        assert_eq!(ok("${NO:-${SET}x}", &e), "vx");
    }

    #[test]
    fn required_operators_report_name_and_message() {
        let e = [("SET", "v"), ("EMPTY", ""), ("ARG", "x")];
        assert_eq!(ok("${SET:?m}${EMPTY?m}", &e), "v");
        let err = expand("${FOO:?must be set}", &e).unwrap_err();
        assert_eq!(err.kind().to_string(), "FOO: must be set");
        assert_eq!(
            err.to_string(),
            "failed to process \"${FOO:?must be set}\": FOO: must be set"
        );
        let err = expand("${EMPTY:?message $ARG}", &e).unwrap_err();
        assert_eq!(err.kind().to_string(), "EMPTY: message x");
        let err = expand("${NO?}", &e).unwrap_err();
        assert_eq!(err.kind().to_string(), "NO: is not allowed to be unset");
        let err = expand("${EMPTY:?}", &e).unwrap_err();
        assert_eq!(err.kind().to_string(), "EMPTY: is not allowed to be empty");
    }

    #[test]
    fn prefix_and_suffix_trimming() {
        let e = [("F", "xxyy"), ("X", "x"), ("P", "a***yy*"), ("S", "xx**")];
        assert_eq!(ok("${F#*x*y}", &e), "y");
        assert_eq!(ok("${F#*}", &e), "xxyy");
        assert_eq!(ok("${F#$X}", &e), "xyy");
        assert_eq!(ok("${F##*x}", &e), "yy");
        assert_eq!(ok("${F#}|${F##}|${F%}", &e), "xxyy|xxyy|xxyy");
        assert_eq!(ok("${F%y*}", &e), "xxy");
        assert_eq!(ok("${F%%y*}", &e), "xx");
        assert_eq!(ok("${S%%\\**}", &e), "xx");
        assert_eq!(ok("${P%%\\**\\*}", &e), "a");
        assert_eq!(ok("${NOPE#x}", &e), "");
    }

    #[test]
    fn trimming_handles_regex_metacharacters_and_escapes() {
        let e = [("FOO", "()[]{}^$.*?|\\x"), ("Q", "???y")];
        assert_eq!(ok("${FOO#()[]{\\}^$.\\*\\?|\\\\}", &e), "x");
        assert_eq!(ok("${Q#?\\?}", &e), "?y");
        let err = expand("${Q#\\x}", &e).unwrap_err();
        assert!(
            matches!(err.kind, ShellErrorKind::InvalidPattern { .. }),
            "{err}"
        );
    }

    #[test]
    fn pattern_substitution_first_and_all() {
        let e = [
            ("FOO", "/foo*/*/*.txt"),
            ("NEEDLE", "\\*/"),
            ("T", "/tmp/tmp/bar.txt"),
            ("SLASH", "/tmp"),
            ("U", "http://google.de"),
        ];
        assert_eq!(
            ok("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", &e),
            "/foo.*/*.txt - /foo..*.txt"
        );
        assert_eq!(
            ok("${T/$SLASH/} - ${T//$SLASH/}", &e),
            "/tmp/bar.txt - /bar.txt"
        );
        assert_eq!(
            ok("${U/http:\\/\\//https:\\/\\/}", &e),
            "https:\\/\\/google.de"
        );
        assert_eq!(ok("${T//\\//\\/}", &e), "\\/tmp\\/tmp\\/bar.txt");
        assert_eq!(ok("${T///}", &e), "/tmp/tmp/bar.txt");
        assert_eq!(ok("${U/$NONE/ww}", &e), "wwhttp://google.de");
        assert!(expand("${T//ww}", &e).is_err());
        assert!(expand("${T//}", &e).is_err());
    }

    #[test]
    fn replacement_templates_expand_as_the_regex_crate_does() {
        let re = regex::Regex::new("b+").unwrap();
        let empty = regex::Regex::new("").unwrap();
        for t in [
            "$0", "${0}x", "$$", "a$1b", "$x", "$", "${", "x$0y$$z", "$00", "$0a", "$$$0", "${0",
            "plain", "", "$_", "${name}", "$9$9$9",
        ] {
            for hay in ["abbbc", "ac"] {
                let mut want = String::new();
                let mut got = String::new();
                let parsed = ReplaceTemplate::parse(t);
                match re.captures(hay) {
                    Some(caps) => {
                        caps.expand(t, &mut want);
                        parsed.expand(caps.get(0).unwrap().as_str(), &mut got);
                    }
                    None => {
                        // An empty match: what `${V//*/t}` gives at an empty position.
                        empty.captures("").unwrap().expand(t, &mut want);
                        parsed.expand("", &mut got);
                    }
                }
                assert_eq!(got, want, "template {t:?} on {hay:?}");
            }
        }
        // Go's Expand (BuildKit's) keeps an empty `${}` as text, where the
        // regex crate expands it to nothing: Go's rule wins.
        // The same for a braced name with other characters than letters,
        // digits and `_`.
        for t in ["a${}b", "a${ 0}b"] {
            let mut got = String::new();
            ReplaceTemplate::parse(t).expand("x", &mut got);
            assert_eq!(got, t);
        }
    }

    /// Found by the `word` fuzz target: a 400-byte word whose replace-all
    /// expansions took 12 s of CPU (the template was re-read per match).
    #[test]
    fn fuzz_slow_replace_all_input_expands() {
        let data = include_bytes!("../../testdata/fuzz/word-slow-replace-all.bin");
        let word = String::from_utf8_lossy(data);
        let env: Vec<(String, String)> = [("A", "a b"), ("B", ""), ("P", "/usr/bin"), ("X", "*?")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for escape in ['\\', '`'] {
            let _ = Lexer::new(escape).process(&word, &env);
        }
    }

    #[test]
    fn unsupported_and_malformed_substitutions_fail() {
        for bad in [
            "${}", "${:-x}", "${{A}", "${A:=x}", "${A=x}", "${A", "${A:-x", "${.}", "${A:x}",
        ] {
            assert!(expand(bad, &[("A", "1")]).is_err(), "{bad:?} should fail");
        }
        assert_eq!(
            expand("${A:=x}", &[]).unwrap_err().kind,
            ShellErrorKind::UnsupportedModifier {
                modifier: ":=".to_string()
            }
        );
        assert_eq!(
            expand("${A", &[]).unwrap_err().kind,
            ShellErrorKind::MissingBrace
        );
    }

    #[test]
    fn quotes_and_backslash_escape() {
        let e = [("A", "x")];
        assert_eq!(ok(r#"'$A' "$A" \$A "\$A" "\a""#, &e), r#"$A x $A $A \a"#);
        assert_eq!(ok(r#""a\"b" a\"b"#, &e), r#"a"b a"b"#);
        assert!(expand("'open", &e).is_err());
        assert!(expand("\"open", &e).is_err());
        assert_eq!(ok("trailing\\", &e), "trailing");
    }

    #[test]
    fn backtick_escape_char_replaces_backslash() {
        let lexer = Lexer::new('`');
        let e = env(&[("A", "x")]);
        assert_eq!(lexer.process_word(r"C:\path\$A", &e).unwrap(), r"C:\path\x");
        assert_eq!(lexer.process_word("`$A", &e).unwrap(), "$A");
        assert_eq!(lexer.process_word("\"a`\"b\"", &e).unwrap(), "a\"b");
        assert_eq!(lexer.process_words("a` b c", &e).unwrap(), vec!["a b", "c"]);
    }

    #[test]
    fn words_split_only_unquoted_whitespace() {
        let e = env(&[("S", " a  b ")]);
        let l = Lexer::new('\\');
        assert_eq!(
            l.process_words("x$S\"$S\"y", &e).unwrap(),
            vec!["x", "a", "b", " a  b y"]
        );
        assert_eq!(l.process_words("'' a", &e).unwrap(), vec!["a"]);
    }

    #[test]
    fn matches_record_set_and_unset_names() {
        let e = env(&[("FOO", "xxx"), ("BAR", "")]);
        let (out, m) = Lexer::new('\\')
            .process_word_with_matches("${FOO-a} ${BAR-b} ${BAZ-c}", &e)
            .unwrap();
        assert_eq!(out, "xxx  c");
        assert_eq!(
            m.matched,
            BTreeSet::from(["FOO".to_string(), "BAR".to_string()])
        );
        assert_eq!(m.unmatched, BTreeSet::from(["BAZ".to_string()]));
    }

    #[test]
    fn env_impls_agree_and_last_pair_wins() {
        let pairs = vec![
            ("A".to_string(), "1".to_string()),
            ("A".to_string(), "2".to_string()),
        ];
        let l = Lexer::new('\\');
        assert_eq!(l.process_word("$A", &pairs).unwrap(), "2");
        assert_eq!(l.process_word("$A", &pairs.as_slice()).unwrap(), "2");
        let map: HashMap<String, String> = pairs.into_iter().collect();
        assert_eq!(l.process_word("$A", &map).unwrap(), "2");
    }

    #[test]
    fn heredoc_modes_keep_quotes_and_escapes() {
        let e = env(&[("A", "x")]);
        let body = Lexer::heredoc_body();
        assert_eq!(
            body.process_word("echo \"$A\" '$A' \\$A", &e).unwrap(),
            "echo \"x\" '$A' \\$A"
        );
        let line = Lexer::heredoc_line();
        assert_eq!(
            line.process_words("COPY <<\"EOF\" $UNSET ${B:-x} /dst", &e)
                .unwrap(),
            vec!["COPY", "<<\"EOF\"", "$UNSET", "${B:-x}", "/dst"]
        );
    }

    #[test]
    fn skip_unset_env_keeps_references() {
        let mut l = Lexer::new('\\');
        l.skip_unset_env = true;
        let e = env(&[("A", "x")]);
        assert_eq!(
            l.process_word("$A $B ${C} ${D:-d} ${E/a/b}", &e).unwrap(),
            "x $B ${C} ${D:-d} ${E/a/b}"
        );
    }

    #[test]
    fn platform_release_name_uses_optional_variant() {
        let word = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let base = [("VERSION", "v1.2.3"), ("TARGETOS", "linux")];
        let with = |extra: &[(&str, &str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            ok(word, &all)
        };
        assert_eq!(
            with(&[("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")]),
            "something-v1.2.3.linux-arm-v7.tar.gz"
        );
        assert_eq!(
            with(&[("TARGETARCH", "arm64"), ("TARGETVARIANT", "")]),
            "something-v1.2.3.linux-arm64.tar.gz"
        );
        assert_eq!(
            with(&[("TARGETARCH", "arm64")]),
            "something-v1.2.3.linux-arm64.tar.gz"
        );
    }

    #[test]
    fn env_pairs_parse_key_value_lists() {
        let pairs = env_pairs(["A=1", "B", "C=x=y", "A=2"]);
        let l = Lexer::new('\\');
        assert_eq!(
            l.process_word("$A|${B-unset}|$C", &pairs).unwrap(),
            "2||x=y"
        );
    }

    #[test]
    fn names_use_go_letter_and_digit_classes() {
        let e = [("한국", "k"), ("x٣", "arabic-digit"), ("v", "V")];
        assert_eq!(ok("$한국!", &e), "k!");
        assert_eq!(ok("$x٣.", &e), "arabic-digit.");
        // U+0903 (a Devanagari vowel sign) is Alphabetic but not a letter, so the name ends before it.
        assert_eq!(ok("$v\u{0903}", &e), "V\u{0903}");
        // U+2162 (Roman numeral three) is a numeral but not a decimal digit.
        assert_eq!(ok("$v\u{2162}", &e), "V\u{2162}");
        assert!(
            is_digit('٣') && !is_digit('\u{2162}') && is_letter('한') && !is_letter('\u{0903}')
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let word = "${a:-".repeat(9000);
        let err = expand(&word, &[]).unwrap_err();
        assert_eq!(err.kind, ShellErrorKind::TooDeep { limit: MAX_NESTING });
        let text = err.to_string();
        assert!(text.contains("nested deeper than 64 levels"), "{text}");
        assert!(text.len() < 300, "the word is shortened: {text}");
        // Closed, just at and just over the limit.
        let nest = |n: usize| format!("{}x{}", "${a:-".repeat(n), "}".repeat(n));
        assert_eq!(ok(&nest(MAX_NESTING), &[]), "x");
        assert!(expand(&nest(MAX_NESTING + 1), &[]).is_err());
        // Inside double quotes too.
        assert!(expand(&format!("\"{}\"", nest(MAX_NESTING + 1)), &[]).is_err());
    }

    #[test]
    fn growth_past_the_cap_is_an_error() {
        // (Values are never printed: a failure message would be megabytes.)
        let too_long = |r: std::result::Result<String, ShellError>| matches!(r, Err(e) if e.kind == ShellErrorKind::TooLong { limit: MAX_GROWTH });
        let big = "x".repeat(MAX_GROWTH / 2 + 10);
        let e = [("A", big.as_str())];
        assert!(expand("$A", &e).is_ok_and(|v| v.len() == big.len()));
        assert!(too_long(expand("$A$A", &e)));
        assert!(too_long(expand("\"$A$A\"", &e)));
        // `${V//?/$V}` would square the length: stopped while it grows.
        let mid = "y".repeat(2000);
        assert!(too_long(expand("${M//?/$M}", &[("M", mid.as_str())])));
        assert_eq!(ok("${M//y/ab}", &[("M", "yy")]), "abab");
    }

    #[test]
    fn reverse_pattern_keeps_escape_pairs() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("👽\\🚀🖖"), "🖖\\🚀👽");
    }

    #[test]
    fn pattern_regex_escapes_metacharacters() {
        let re = pattern_regex("(()[]{\\}^$.\\*\\?|\\\\", true, true).unwrap();
        assert_eq!(re.as_str(), "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\");
        for bad in ["\\", "\\x", "\\\\\\"] {
            assert!(pattern_regex(bad, true, true).is_err(), "{bad:?}");
        }
    }
}
