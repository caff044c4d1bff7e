//! The raw syntax tree: one [`Node`] per instruction, with its flags, its
//! arguments as BuildKit's line parsers split them, heredocs and source span.
//! Also the dumper that prints the tree in BuildKit's test `result` format.

use std::fmt;

/// A heredoc attached to a RUN/COPY/ADD instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The terminator word with quotes removed (`<<"EOF"` → `EOF`).
    pub name: String,
    /// The descriptor written before `<<` (`3<<EOF` → 3), 0 when absent.
    pub file_descriptor: u32,
    /// False when any part of the marker was quoted: the body is not expanded.
    pub expand: bool,
    /// `<<-`: leading TABs are stripped from body lines (see [`Heredoc::chomped`]).
    pub chomp: bool,
    /// The body exactly as written, each line with its line ending.
    pub content: String,
}

impl Heredoc {
    /// The body as the build uses it: with `<<-`, leading TABs of every line removed.
    pub fn chomped(&self) -> String {
        if self.chomp {
            chomp_heredoc_content(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Removes leading TABs from every line (BuildKit's `ChompHeredocContent`).
pub fn chomp_heredoc_content(src: &str) -> String {
    src.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// Where a node sits in the source: 1-based lines (inclusive) and the 1-based
/// column of its keyword on the start line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start_line: usize,
    pub end_line: usize,
    pub column: usize,
}

impl Span {
    /// A one-line span at `line:column`.
    pub fn at(line: usize, column: usize) -> Self {
        Span {
            start_line: line,
            end_line: line,
            column,
        }
    }
}

/// One instruction as the raw parser sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The keyword exactly as written (`run`, `Run`, `RUN`).
    pub keyword: String,
    /// `--name[=value]` words before the arguments, as written (quotes removed).
    pub flags: Vec<String>,
    /// Byte offset in `original` of each flag (for error columns).
    pub flag_offsets: Vec<usize>,
    /// Arguments as split by the instruction's line parser (BuildKit's `Next` chain).
    pub args: Vec<String>,
    /// ONBUILD's wrapped instruction.
    pub sub: Option<Box<Node>>,
    /// The arguments were a JSON array of strings (exec form).
    pub json: bool,
    /// The whole logical line after joining continuations and dropping comments.
    pub original: String,
    pub heredocs: Vec<Heredoc>,
    pub span: Span,
    /// Byte offset in `original` where the text of the first physical line ends;
    /// used to turn offsets in `original` into columns.
    pub first_line_len: usize,
    /// Comment lines directly above the instruction, without the `#`.
    pub prev_comment: Vec<String>,
}

impl Node {
    /// The keyword in lower case, as BuildKit dispatches on it.
    pub fn command(&self) -> String {
        self.keyword.to_ascii_lowercase()
    }

    /// The 1-based column of byte `offset` of `original`, when it lies on the
    /// first physical line; otherwise the keyword's column.
    pub fn column_of(&self, offset: usize) -> usize {
        if offset < self.first_line_len {
            self.span.column + offset
        } else {
            self.span.column
        }
    }

    /// BuildKit's `Node.Dump` for one instruction (without the surrounding parentheses).
    pub fn dump(&self) -> String {
        let mut s = self.command();
        if !self.flags.is_empty() {
            s.push(' ');
            s.push_str(&go_quote_list(&self.flags));
        }
        for a in &self.args {
            s.push(' ');
            s.push_str(&go_quote(a));
        }
        if let Some(sub) = &self.sub {
            s.push_str(" (");
            s.push_str(&sub.dump());
            s.push(')');
        }
        s.trim().to_string()
    }
}

/// The parsed file: its instructions in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ast {
    pub children: Vec<Node>,
    /// First and last line covered by any instruction (0 when empty).
    pub start_line: usize,
    pub end_line: usize,
}

impl Ast {
    pub(crate) fn add_child(&mut self, child: Node) {
        if self.children.is_empty() {
            self.start_line = child.span.start_line;
        }
        self.end_line = child.span.end_line;
        self.children.push(child);
    }

    /// BuildKit's `AST.Dump()`: one `(…)` line per instruction, trimmed.
    /// Upstream's test `result` files hold this plus a final newline.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for c in &self.children {
            s.push('(');
            s.push_str(&c.dump());
            s.push_str(")\n");
        }
        s.trim().to_string()
    }
}

/// Go's `fmt.Sprintf("%q", []string)`: `["a" "b"]`.
pub fn go_quote_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", inner.join(" "))
}

/// Go's `strconv.Quote`: printable characters stay, `"` and `\` are escaped,
/// the rest become `\n`-style, `\xNN`, `\uNNNN` or `\UNNNNNNNN` escapes.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if go_is_print(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint`: graphic characters and the
/// ASCII space; other spaces, controls and format characters are not printable.
fn go_is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xD800..=0xDFFF
        | 0xFEFF | 0xFFF9..=0xFFFB | 0xE000..=0xF8FF | 0xFFFE | 0xFFFF
        | 0xF0000..=0x10FFFF | 0xE0001 | 0xE0020..=0xE007F)
}

/// Something wrong in the Dockerfile, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line where the offending instruction starts.
    pub line: usize,
    /// 1-based column of what the error points at (1 when unknown).
    pub column: usize,
    /// Last line of the offending instruction.
    pub end_line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A non-fatal finding, named after the BuildKit lint rule it corresponds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub rule: &'static str,
    pub message: String,
    pub line: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\u{0}\x01\t\n"), r#""\x00\x01\t\n""#);
        assert_eq!(go_quote("♥ ☃"), "\"♥ ☃\"");
        assert_eq!(go_quote("\u{a0}\u{feff}"), r#""\u00a0\ufeff""#);
        assert_eq!(go_quote("\x7f"), r#""\x7f""#);
    }

    #[test]
    fn chomp_strips_leading_tabs_per_line() {
        assert_eq!(
            chomp_heredoc_content("\thello\n\tworld\n"),
            "hello\nworld\n"
        );
        assert_eq!(chomp_heredoc_content("\t\ta \tb\n  c\n"), "a \tb\n  c\n");
    }
}
