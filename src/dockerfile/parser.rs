//! The raw Dockerfile parser, line for line as BuildKit's
//! `frontend/dockerfile/parser` reads a file: directives, comments,
//! continuation lines (with the file's escape character), heredoc bodies,
//! then per-instruction argument splitting. Unlike BuildKit it does not stop
//! at the first error: a bad instruction is reported and skipped.

use super::ast::{Ast, Node, ParseError, Span, Warning};
use super::directives::{DirectiveScanner, Directives};
use super::heredoc::heredocs_from_line;
use super::line_parsers::{self as lp, Parsed};

/// BuildKit reads lines with a 64 KiB scanner buffer.
pub const MAX_LINE_LEN: usize = 65535;

/// Everything the raw parser found: the tree, directives, warnings and every error.
#[derive(Debug, Clone, Default)]
pub struct ParseOutput {
    pub ast: Ast,
    pub directives: Directives,
    pub warnings: Vec<Warning>,
    pub errors: Vec<ParseError>,
}

impl ParseOutput {
    /// The tree, or every error found.
    pub fn into_result(self) -> Result<Ast, Vec<ParseError>> {
        if self.errors.is_empty() {
            Ok(self.ast)
        } else {
            Err(self.errors)
        }
    }
}

/// Parses Dockerfile text. Never fails outright: errors are in the output.
pub fn parse(src: &str) -> ParseOutput {
    Parser::new(src).run()
}

/// Parses bytes; invalid UTF-8 is replaced with U+FFFD first.
pub fn parse_bytes(src: &[u8]) -> ParseOutput {
    parse(&String::from_utf8_lossy(src))
}

/// Splits after each `\n`, keeping the line endings (Go's `scanLines` variant).
fn physical_lines(src: &str) -> Vec<&str> {
    src.split_inclusive('\n').collect()
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

/// A line whose first non-blank character is `#`.
fn is_comment(raw: &str) -> bool {
    trim_newline(raw).trim_start().starts_with('#')
}

/// Removes a trailing escape character (and blanks after it) that continues
/// the line. A doubled escape (`\\`) at the end is literal.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line, true);
    };
    if before.is_empty() {
        return ("", false);
    }
    if before.ends_with(escape) {
        return (line, true);
    }
    (before, false)
}

struct Parser<'a> {
    lines: Vec<&'a str>,
    next: usize,
    /// Number of physical lines consumed so far (= 1-based number of the last one).
    line_no: usize,
    directives: DirectiveScanner,
    out: ParseOutput,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            lines: physical_lines(src),
            next: 0,
            line_no: 0,
            directives: DirectiveScanner::default(),
            out: ParseOutput::default(),
        }
    }

    fn error(&mut self, line: usize, end_line: usize, column: usize, message: String) {
        self.out.errors.push(ParseError {
            line,
            column,
            end_line,
            message,
        });
    }

    /// The next physical line, or None at EOF. Over-long lines are reported
    /// and replaced by an empty line so line numbers stay right.
    fn next_line(&mut self) -> Option<&'a str> {
        let raw = *self.lines.get(self.next)?;
        self.next += 1;
        self.line_no += 1;
        if trim_newline(raw).len() > MAX_LINE_LEN {
            let n = self.line_no;
            self.error(
                n,
                n,
                1,
                format!("dockerfile line greater than max allowed size of {MAX_LINE_LEN}"),
            );
            return Some("\n");
        }
        if self.line_no == 1 {
            return Some(raw.strip_prefix('\u{feff}').unwrap_or(raw));
        }
        Some(raw)
    }

    /// Newline trimmed, optionally left-trimmed; directive scan; `#` lines emptied.
    fn process_line(&mut self, raw: &'a str, strip_left: bool) -> &'a str {
        let mut token = trim_newline(raw);
        if strip_left {
            token = token.trim_start();
        }
        let n = self.line_no;
        if let Err(e) = self.directives.scan(token, n) {
            self.error(n, n, 1, e);
        }
        if token.starts_with('#') {
            ""
        } else {
            token
        }
    }

    fn run(mut self) -> ParseOutput {
        let mut comments: Vec<String> = Vec::new();
        while let Some(raw) = self.next_line() {
            if is_comment(raw) {
                let text = trim_newline(raw);
                comments.push(text.get(1..).unwrap_or("").trim().to_string());
            } else if trim_newline(raw).trim().is_empty() {
                comments.clear();
            }
            let column = raw.len() - raw.trim_start().len() + 1;
            let processed = self.process_line(raw, true);
            let start_line = self.line_no;
            let escape = self.directives.found.escape;
            let (first, mut eol) = trim_continuation(processed, escape);
            if eol && first.is_empty() {
                continue;
            }
            let mut line = first.to_string();
            let first_line_len = line.len();
            let mut has_empty = false;
            while !eol {
                let Some(raw) = self.next_line() else { break };
                let processed = self.process_line(raw, false);
                if is_comment(raw) {
                    continue;
                }
                if processed.trim_start().is_empty() {
                    has_empty = true;
                    continue;
                }
                let (part, e) = trim_continuation(processed, escape);
                line.push_str(part);
                eol = e;
            }
            if has_empty {
                self.out.warnings.push(Warning {
                    rule: "NoEmptyContinuation",
                    message: format!("Empty continuation line found in: {line}"),
                    line: self.line_no,
                });
            }
            let span = Span {
                start_line,
                end_line: self.line_no,
                column,
            };
            let (mut node, failure) = new_node_from_line(&line, escape);
            if let Some(msg) = failure {
                self.error(start_line, self.line_no, column, msg);
                // Still consume heredoc bodies so they are not read as instructions.
                node.span = span;
                let _ = self.read_heredocs(&mut node);
                comments.clear();
                continue;
            }
            node.span = span;
            node.first_line_len = first_line_len;
            node.prev_comment = std::mem::take(&mut comments);
            if self.read_heredocs(&mut node) {
                node.span.end_line = self.line_no;
                self.out.ast.add_child(node);
            }
        }
        if self.out.ast.children.is_empty() && self.out.errors.is_empty() {
            let n = self.line_no.max(1);
            self.error(n, n, 1, "file with no instructions".to_string());
        }
        self.out.directives = self.directives.found.clone();
        self.out
    }

    /// Reads the bodies of the node's heredocs, if it can have any.
    /// Returns false (after reporting) when a marker is bad or a body unterminated.
    fn read_heredocs(&mut self, node: &mut Node) -> bool {
        if !can_contain_heredoc(node) || !node.original.contains("<<") {
            return true;
        }
        let start = node.span.start_line;
        let docs = match heredocs_from_line(&node.original) {
            Ok(d) => d,
            Err(e) => {
                let n = self.line_no;
                self.error(start, n, node.span.column, e);
                return false;
            }
        };
        for mut doc in docs {
            let mut terminated = false;
            while let Some(raw) = self.next_line() {
                let mut candidate = trim_newline(raw);
                if doc.chomp {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == doc.name {
                    terminated = true;
                    break;
                }
                doc.content.push_str(raw);
            }
            if !terminated {
                let n = self.line_no;
                self.error(
                    start,
                    n,
                    node.span.column,
                    format!("unterminated heredoc {}", doc.name),
                );
                return false;
            }
            node.heredocs.push(doc);
        }
        true
    }
}

/// RUN, COPY and ADD in shell form (also wrapped in ONBUILD) may have heredocs.
fn can_contain_heredoc(node: &Node) -> bool {
    let n = match (&node.sub, node.command().as_str()) {
        (Some(sub), "onbuild") => sub.as_ref(),
        _ => node,
    };
    matches!(n.command().as_str(), "run" | "copy" | "add") && !n.json
}

/// Builds a node from one logical line. On error, the message comes with
/// what could be built (keyword and flags) so the caller can skip heredoc bodies.
/// How deep `ONBUILD ONBUILD …` is parsed. BuildKit recurses once per
/// keyword (Go's stacks grow); here 8,000 of them overflowed the stack.
/// Chaining is an error anyway (the typed layer reports it), so past this
/// depth the line is refused outright.
pub const MAX_ONBUILD_NESTING: usize = 16;

pub(crate) fn new_node_from_line(line: &str, escape: char) -> (Node, Option<String>) {
    node_from_line(line, escape, 0)
}

fn node_from_line(line: &str, escape: char, depth: usize) -> (Node, Option<String>) {
    let (cmd, flags, args, args_off) = lp::split_command(line);
    let mut node = Node {
        keyword: cmd,
        flag_offsets: flags.iter().map(|f| f.1).collect(),
        flags: flags.into_iter().map(|f| f.0).collect(),
        original: line.to_string(),
        ..Node::default()
    };
    let parsed: Result<Parsed, String> = match node.command().as_str() {
        "add" | "copy" | "volume" => lp::parse_maybe_json_to_list(&args),
        "arg" => Ok(lp::parse_name_or_name_val(&args, escape)),
        "cmd" | "entrypoint" | "run" | "shell" => lp::parse_maybe_json(&args),
        "env" => lp::parse_name_val(&args, "ENV", escape),
        "label" => lp::parse_name_val(&args, "LABEL", escape),
        "expose" | "from" => Ok(lp::parse_strings_whitespace_delimited(&args)),
        "healthcheck" => lp::parse_health_config(&args),
        "maintainer" | "stopsignal" | "user" | "workdir" => Ok(lp::parse_string(&args)),
        "onbuild" => Ok(Parsed {
            sub_line: (!args.is_empty()).then(|| args.clone()),
            ..Parsed::default()
        }),
        // BuildKit keeps unknown instructions with one empty argument; the
        // typed layer rejects them.
        _ => Ok(Parsed {
            args: vec![String::new()],
            ..Parsed::default()
        }),
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return (node, Some(e)),
    };
    node.args = parsed.args;
    node.json = parsed.json;
    if let Some(sub_line) = parsed.sub_line {
        // Offsets in the wrapped instruction are made relative to the whole line.
        let shift = |mut sub: Node| {
            sub.flag_offsets.iter_mut().for_each(|o| *o += args_off);
            Box::new(sub)
        };
        if depth >= MAX_ONBUILD_NESTING {
            let msg = format!(
                "ONBUILD nested more than {MAX_ONBUILD_NESTING} levels (chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed)"
            );
            return (node, Some(msg));
        }
        let (sub, failure) = node_from_line(&sub_line, escape, depth + 1);
        node.sub = Some(shift(sub));
        return (node, failure);
    }
    (node, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> Ast {
        let out = parse(src);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        out.ast
    }

    #[test]
    fn onbuild_chains_are_bounded() {
        let src = format!("FROM a\n{}RUN x\n", "ONBUILD ".repeat(8000));
        let out = parse(&src);
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert_eq!(out.errors[0].line, 2);
        assert!(out.errors[0].message.contains("nested more than 16"));
        // Two levels still parse; the typed layer refuses the chain.
        let out = parse("FROM a\nONBUILD ONBUILD RUN x\n");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(trim_continuation("a \\", '\\'), ("a ", false));
        assert_eq!(trim_continuation("a \\  \t", '\\'), ("a ", false));
        assert_eq!(trim_continuation("a \\\\", '\\'), ("a \\\\", true));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a `", '`'), ("a ", false));
        assert_eq!(trim_continuation("a \\", '`'), ("a \\", true));
    }

    #[test]
    fn crlf_and_continuation_at_eof() {
        let ast = ok("FROM a\r\nRUN x \\\r\n  y\r\nRUN z \\");
        assert_eq!(ast.dump(), "(from \"a\")\n(run \"x   y\")\n(run \"z\")");
        assert_eq!(ast.children[1].span.start_line, 2);
        assert_eq!(ast.children[1].span.end_line, 3);
    }

    #[test]
    fn keyword_case_is_kept() {
        let ast = ok("from a\nRun echo");
        assert_eq!(ast.children[1].keyword, "Run");
        assert_eq!(ast.dump(), "(from \"a\")\n(run \"echo\")");
    }

    #[test]
    fn comments_inside_continuations_are_dropped_without_warning() {
        let out = parse("FROM a\nRUN a \\\n# c\n  b\n");
        assert!(out.warnings.is_empty());
        assert_eq!(out.ast.children[1].args, vec!["a   b"]);
    }

    #[test]
    fn empty_continuation_warns_once_per_instruction() {
        let out = parse("FROM a\nRUN a \\\n\n\\\n\n b\nRUN c \\\n\n d\n");
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
        assert_eq!(out.warnings[0].rule, "NoEmptyContinuation");
        assert!(out.warnings[0]
            .message
            .starts_with("Empty continuation line found in: RUN a"));
    }

    #[test]
    fn long_line_is_an_error_and_parsing_continues() {
        let src = format!("FROM a\nRUN {}\nRUN [1]\nENV X\n", "x".repeat(70000));
        let out = parse(&src);
        let lines: Vec<usize> = out.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert!(out.errors[0].message.contains("max allowed size of 65535"));
        let exact = format!("FROM a\nRUN {}\n", "x".repeat(MAX_LINE_LEN - 4));
        assert!(parse(&exact).errors.is_empty());
    }

    #[test]
    fn bom_and_directives() {
        let out = parse("\u{feff}# escape=`\nFROM a\nRUN a `\n  b\n");
        assert!(out.errors.is_empty());
        assert_eq!(out.directives.escape, '`');
        assert_eq!(out.ast.children[1].args, vec!["a   b"]);
        assert_eq!(out.directives.escape_directive.unwrap().line, 1);
    }

    #[test]
    fn escape_after_shebang_or_comment_is_ignored() {
        let out = parse("#!/bin/x\n# escape=`\nFROM a\n");
        assert_eq!(out.directives.escape, '\\');
    }

    #[test]
    fn heredocs_are_read_with_bodies() {
        let src = "FROM a\nUSER <<INVALID\nINVALID\nRUN <<EMPTY\nEMPTY\nRUN 3<<EMPTY2\nEMPTY2\nRUN \"<<NOHEREDOC\"\n\
RUN <<-UNINDENT2\n\tbaz\n\tquux\n\tUNINDENT2\nRUN <<-'NOEXPAND'\n\tdon't $X\nNOEXPAND\n\
RUN <<COMMENT\n# internal\necho a # trailing\nCOMMENT\n\
RUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n\
COPY <<X <<Y /dest\nY\nX\nX\nY\nRUN [\"<<EOF\"]\n";
        let ast = ok(src);
        let kw: Vec<String> = ast.children.iter().map(|n| n.command()).collect();
        assert_eq!(
            kw,
            vec![
                "from", "user", "invalid", "run", "run", "run", "run", "run", "run", "run", "copy",
                "run"
            ]
        );
        let c = &ast.children;
        assert!(c[1].heredocs.is_empty());
        assert_eq!(c[3].heredocs[0].name, "EMPTY");
        assert_eq!(c[3].heredocs[0].content, "");
        assert_eq!(c[4].heredocs[0].file_descriptor, 3);
        assert!(c[5].heredocs.is_empty());
        assert_eq!(c[6].heredocs[0].content, "\tbaz\n\tquux\n");
        assert_eq!(c[6].heredocs[0].chomped(), "baz\nquux\n");
        assert!(!c[7].heredocs[0].expand);
        assert_eq!(c[8].heredocs[0].content, "# internal\necho a # trailing\n");
        assert_eq!(c[9].flags, vec!["--mount=type=cache,target=/foo"]);
        assert_eq!(c[9].heredocs[0].content, "echo hello\n");
        assert_eq!(c[10].heredocs[0].name, "X");
        assert_eq!(c[10].heredocs[0].content, "Y\n");
        assert_eq!(c[10].heredocs[1].content, "X\n");
        assert!(c[11].heredocs.is_empty());
        assert_eq!((c[10].span.start_line, c[10].span.end_line), (23, 27));
    }

    #[test]
    fn onbuild_heredoc_and_unterminated() {
        let ast = ok("FROM a\nONBUILD RUN <<E\nx\nE\n");
        assert_eq!(ast.children[1].heredocs[0].content, "x\n");
        let out = parse("FROM a\nRUN <<E\nx\n");
        assert_eq!(out.errors.len(), 1);
        assert!(out.errors[0].message.contains("unterminated heredoc"));
        let out = parse("FROM a\nRUN <<'E\n");
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let out = parse("FROM a\nENV X\nCMD [1]\nLABEL a=b c\nRUN ok\n");
        let lines: Vec<usize> = out.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert_eq!(out.ast.children.len(), 2);
        assert_eq!(
            out.errors[0].to_string(),
            "line 2:1: ENV must have two arguments"
        );
    }

    #[test]
    fn empty_files_fail() {
        assert_eq!(parse("").errors[0].message, "file with no instructions");
        assert_eq!(
            parse("# a\n\n").errors[0].message,
            "file with no instructions"
        );
    }

    #[test]
    fn prev_comments_are_kept() {
        let ast = ok("# hello\n# world\nFROM a\n");
        assert_eq!(ast.children[0].prev_comment, vec!["hello", "world"]);
    }
}
