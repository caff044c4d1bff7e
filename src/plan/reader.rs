//! Dockerfile text → planner instructions (`ir`), with every syntax error
//! collected rather than stopping at the first.
//!
//! This is the planner's own small reader so `rbuild check` and the planner
//! work on their own; it follows BuildKit's parser rules (directives,
//! continuations with comment and blank lines, heredocs, JSON-vs-shell form,
//! per-instruction argument splitting). The full `dockerfile` parser is the
//! reference implementation; see `docs` in the planner's report.

use super::ir::{Flag, Form, Heredoc, Instruction, Kind, Span};
use super::{Finding, Problem};

/// Parser directives found at the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub escape: char,
    pub syntax: Option<String>,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// What reading a Dockerfile gives: the instructions that parsed, every error
/// (with its position) and the parser-level warnings (empty continuations).
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Finding>,
    /// The source lines, for rendering diagnostics.
    pub lines: Vec<String>,
}

/// Read a whole Dockerfile.
pub fn read(text: &str) -> Parsed {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<String> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    let mut out = Parsed {
        directives: read_directives(&lines),
        lines: lines.clone(),
        ..Parsed::default()
    };
    let escape = out.directives.escape;
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let col = lines[i].chars().take_while(|c| c.is_whitespace()).count() + 1;
        let (logical, end, empty_cont) = join_continuations(&lines, &mut i, escape);
        let span = Span {
            line: start + 1,
            end_line: end + 1,
            col,
        };
        if empty_cont {
            out.warnings.push(Finding {
                rule: "NoEmptyContinuation",
                span,
                message: "Empty continuation line".to_string(),
            });
        }
        let logical = logical.trim().to_string();
        let (keyword, rest) = split_keyword(&logical);
        let heredocs = if allows_heredoc(keyword, rest) {
            read_heredocs(&lines, &mut i, rest)
        } else {
            Vec::new()
        };
        match parse_instruction(keyword, rest, span, heredocs, escape) {
            Ok(inst) => out.instructions.push(inst),
            Err(p) => out.errors.push(p),
        }
    }
    out
}

fn read_directives(lines: &[String]) -> Directives {
    let mut d = Directives::default();
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim();
        if n == 0 && t.starts_with("#!") {
            continue;
        }
        let Some(body) = t.strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = body.split_once('=') else {
            break;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().to_string();
        if k.is_empty() || k.contains(char::is_whitespace) {
            break;
        }
        match k.as_str() {
            "escape" if v == "`" => d.escape = '`',
            "syntax" => d.syntax = Some(v),
            "check" => d.check = Some(v),
            _ => {}
        }
    }
    d
}

/// Join a logical line starting at `lines[*i]`; leaves `*i` after it.
/// Returns the text, the index of its last physical line and whether a
/// blank line sat inside the continuation.
fn join_continuations(lines: &[String], i: &mut usize, escape: char) -> (String, usize, bool) {
    let mut buf = String::new();
    let mut empty = false;
    let mut end = *i;
    loop {
        let line = &lines[*i];
        end = (*i).max(end);
        let trimmed_end = line.trim_end_matches([' ', '\t']);
        let cont = trimmed_end.ends_with(escape);
        if cont {
            buf.push_str(&trimmed_end[..trimmed_end.len() - escape.len_utf8()]);
        } else {
            buf.push_str(line);
        }
        *i += 1;
        if !cont {
            break;
        }
        while *i < lines.len() {
            let t = lines[*i].trim();
            if t.is_empty() {
                empty = true;
            } else if !t.starts_with('#') {
                break;
            }
            *i += 1;
        }
        if *i >= lines.len() {
            break;
        }
    }
    (buf, end, empty)
}

fn split_keyword(line: &str) -> (&str, &str) {
    match line.find(char::is_whitespace) {
        Some(at) => (&line[..at], line[at..].trim_start()),
        None => (line, ""),
    }
}

fn allows_heredoc(keyword: &str, rest: &str) -> bool {
    let k = keyword.to_ascii_uppercase();
    match k.as_str() {
        "RUN" | "COPY" | "ADD" => rest.contains("<<"),
        "ONBUILD" => {
            let (inner, r) = split_keyword(rest);
            matches!(inner.to_ascii_uppercase().as_str(), "RUN" | "COPY" | "ADD")
                && r.contains("<<")
        }
        _ => false,
    }
}

/// Heredoc markers (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`) in a line.
fn heredoc_markers(rest: &str) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    for word in rest.split_whitespace() {
        let w = word.trim_start_matches(|c: char| c.is_ascii_digit());
        let Some(after) = w.strip_prefix("<<") else {
            continue;
        };
        if after.starts_with('<') {
            continue;
        }
        let (chomp, after) = match after.strip_prefix('-') {
            Some(a) => (true, a),
            None => (false, after),
        };
        let quoted = after.contains(['"', '\'']);
        let name: String = after
            .chars()
            .filter(|c| *c != '"' && *c != '\'')
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .collect();
        if !name.is_empty() {
            out.push((name, !quoted, chomp));
        }
    }
    out
}

fn read_heredocs(lines: &[String], i: &mut usize, rest: &str) -> Vec<Heredoc> {
    let mut out = Vec::new();
    for (name, expand, chomp) in heredoc_markers(rest) {
        let mut body = String::new();
        while *i < lines.len() {
            let line = &lines[*i];
            *i += 1;
            let cmp = if chomp {
                line.trim_start_matches('\t')
            } else {
                line.as_str()
            };
            if cmp == name {
                break;
            }
            body.push_str(if chomp { cmp } else { line });
            body.push('\n');
        }
        out.push(Heredoc {
            name,
            body,
            expand,
            chomp,
        });
    }
    out
}

fn err(span: Span, message: impl Into<String>) -> Problem {
    Problem {
        span,
        message: message.into(),
    }
}

const KEYWORDS: &[&str] = &[
    "FROM",
    "ARG",
    "ENV",
    "LABEL",
    "RUN",
    "CMD",
    "ENTRYPOINT",
    "SHELL",
    "COPY",
    "ADD",
    "WORKDIR",
    "USER",
    "VOLUME",
    "EXPOSE",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "ONBUILD",
    "MAINTAINER",
];

fn allowed_flags(name: &str) -> &'static [&'static str] {
    match name {
        "FROM" => &["platform"],
        "RUN" => &["mount", "network", "security", "device"],
        "COPY" => &["from", "chown", "chmod", "link", "parents", "exclude"],
        "ADD" => &[
            "chown",
            "chmod",
            "link",
            "keep-git-dir",
            "checksum",
            "exclude",
            "unpack",
        ],
        "HEALTHCHECK" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    }
}

/// Parse one instruction (keyword and the text after it).
pub fn parse_instruction(
    keyword: &str,
    rest: &str,
    span: Span,
    heredocs: Vec<Heredoc>,
    escape: char,
) -> Result<Instruction, Problem> {
    let name = keyword.to_ascii_uppercase();
    if !KEYWORDS.contains(&name.as_str()) {
        return Err(err(span, format!("unknown instruction: {keyword}")));
    }
    let flag_base = span.col + keyword.chars().count() + 1;
    let (flags, args) = extract_flags(rest, flag_base);
    let allowed = allowed_flags(&name);
    if let Some(bad) = flags.iter().find(|f| !allowed.contains(&f.name.as_str())) {
        return Err(err(
            Span::at(span.line, bad.col),
            format!("unknown flag: {}", bad.name),
        ));
    }
    let kind = parse_kind(&name, args, span, heredocs, escape)?;
    Ok(Instruction {
        keyword: keyword.to_string(),
        original: rest.to_string(),
        span,
        flags,
        kind,
    })
}

fn parse_kind(
    name: &str,
    args: &str,
    span: Span,
    heredocs: Vec<Heredoc>,
    escape: char,
) -> Result<Kind, Problem> {
    let need_one = |what: &str| -> Result<String, Problem> {
        if args.is_empty() {
            Err(err(span, format!("{what} requires exactly one argument")))
        } else {
            Ok(args.to_string())
        }
    };
    Ok(match name {
        "FROM" => parse_from(args, span)?,
        "ARG" => {
            let words = split_words(args, escape);
            if words.is_empty() {
                return Err(err(span, "ARG requires at least one argument"));
            }
            Kind::Arg(
                words
                    .into_iter()
                    .map(|w| match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w, None),
                    })
                    .collect(),
            )
        }
        "ENV" | "LABEL" => {
            let (pairs, legacy) = parse_name_val(name, args, span, escape)?;
            if name == "ENV" {
                Kind::Env { pairs, legacy }
            } else {
                Kind::Label { pairs, legacy }
            }
        }
        "RUN" => Kind::Run {
            cmd: parse_form(name, args, span)?,
            heredocs,
        },
        "CMD" => Kind::Cmd(parse_form(name, args, span)?),
        "ENTRYPOINT" => Kind::Entrypoint(parse_form(name, args, span)?),
        "SHELL" => match parse_form(name, args, span)? {
            Form::Exec(v) if !v.is_empty() => Kind::Shell(v),
            _ => return Err(err(span, "SHELL requires the arguments to be in JSON form")),
        },
        "COPY" | "ADD" => {
            let mut words = json_or_fields(args);
            let heredoc_words = |w: &String| {
                let t = w.trim_start_matches(|c: char| c.is_ascii_digit());
                t.starts_with("<<") && !heredocs.is_empty()
            };
            words.retain(|w| !heredoc_words(w));
            let total = words.len() + heredocs.len();
            if total < 2 || words.is_empty() {
                return Err(err(
                    span,
                    format!("{name} requires at least two arguments, but only one was provided. Destination could not be determined"),
                ));
            }
            let dest = words.pop().unwrap_or_default();
            if name == "COPY" {
                Kind::Copy {
                    sources: words,
                    dest,
                    heredocs,
                }
            } else {
                Kind::Add {
                    sources: words,
                    dest,
                    heredocs,
                }
            }
        }
        "WORKDIR" => Kind::Workdir(need_one("WORKDIR")?),
        "USER" => Kind::User(need_one("USER")?),
        "STOPSIGNAL" => Kind::StopSignal(need_one("STOPSIGNAL")?),
        "MAINTAINER" => Kind::Maintainer(need_one("MAINTAINER")?),
        "VOLUME" => {
            let v = json_or_fields(args);
            if v.is_empty() {
                return Err(err(span, "VOLUME requires at least one argument"));
            }
            Kind::Volume(v)
        }
        "EXPOSE" => {
            let v: Vec<String> = args.split_whitespace().map(String::from).collect();
            if v.is_empty() {
                return Err(err(span, "EXPOSE requires at least one argument"));
            }
            Kind::Expose(v)
        }
        "HEALTHCHECK" => {
            let (word, rest) = split_keyword(args);
            match word.to_ascii_uppercase().as_str() {
                "NONE" if rest.is_empty() => Kind::Healthcheck(None),
                "CMD" if !rest.is_empty() => Kind::Healthcheck(Some(parse_form(name, rest, span)?)),
                _ => {
                    return Err(err(
                        span,
                        "HEALTHCHECK requires either NONE or CMD and a command",
                    ))
                }
            }
        }
        "ONBUILD" => {
            let (inner_kw, inner_rest) = split_keyword(args);
            let upper = inner_kw.to_ascii_uppercase();
            if matches!(upper.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                return Err(err(
                    span,
                    format!("{upper} isn't allowed as an ONBUILD trigger"),
                ));
            }
            if inner_kw.is_empty() {
                return Err(err(span, "ONBUILD requires at least one argument"));
            }
            let inner = parse_instruction(inner_kw, inner_rest, span, heredocs, escape)?;
            Kind::Onbuild {
                expression: args.to_string(),
                inner: Box::new(inner),
            }
        }
        _ => return Err(err(span, format!("unknown instruction: {name}"))),
    })
}

fn parse_from(args: &str, span: Span) -> Result<Kind, Problem> {
    let words: Vec<&str> = args.split_whitespace().collect();
    match words.as_slice() {
        [image] => Ok(Kind::From {
            image: image.to_string(),
            name: None,
            as_keyword: None,
        }),
        [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let lower = name.to_ascii_lowercase();
            let valid = lower.starts_with(|c: char| c.is_ascii_lowercase())
                && lower
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !valid {
                return Err(err(
                    span,
                    format!("invalid name for build stage: \"{name}\", name can't start with a number or contain symbols"),
                ));
            }
            Ok(Kind::From {
                image: image.to_string(),
                name: Some(name.to_string()),
                as_keyword: Some(as_kw.to_string()),
            })
        }
        _ => Err(err(span, "FROM requires either one or three arguments")),
    }
}

/// `ENV k=v k2=v2` or the legacy `ENV k v`.
fn parse_name_val(
    name: &str,
    args: &str,
    span: Span,
    escape: char,
) -> Result<(Vec<(String, String)>, bool), Problem> {
    let words = split_words(args, escape);
    let Some(first) = words.first() else {
        return Err(err(span, format!("{name} requires at least one argument")));
    };
    if !first.contains('=') {
        let (k, v) = split_keyword(args);
        if v.is_empty() {
            return Err(err(span, format!("{name} must have two arguments")));
        }
        return Ok((vec![(k.to_string(), v.to_string())], true));
    }
    let mut pairs = Vec::new();
    for w in words {
        match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => pairs.push((k.to_string(), v.to_string())),
            _ => {
                return Err(err(
                    span,
                    format!(
                        "Syntax error - can't find = in \"{w}\". Must be of the form: name=value"
                    ),
                ))
            }
        }
    }
    Ok((pairs, false))
}

/// JSON array of strings → exec form; anything else → shell form.
fn parse_form(name: &str, args: &str, span: Span) -> Result<Form, Problem> {
    if args.starts_with('[') {
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(args)
        {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) => out.push(s),
                    other => {
                        return Err(err(
                            span,
                            format!("{name}: JSON array element is not a string: {other}"),
                        ))
                    }
                }
            }
            return Ok(Form::Exec(out));
        }
    }
    Ok(Form::Shell(args.to_string()))
}

fn json_or_fields(args: &str) -> Vec<String> {
    if args.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(args) {
            return v;
        }
    }
    args.split_whitespace().map(String::from).collect()
}

/// BuildKit's `parseWords`: split on whitespace outside quotes; quotes and
/// escapes stay in the words (expansion removes them later).
pub fn split_words(s: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            word.push(c);
            if let Some(n) = chars.next() {
                word.push(n);
            }
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Leading `--name[=value]` words; returns them and the remaining text.
fn extract_flags(rest: &str, base_col: usize) -> (Vec<Flag>, &str) {
    let mut flags = Vec::new();
    let mut pos = 0;
    let bytes = rest.as_bytes();
    loop {
        while pos < bytes.len() && (bytes[pos] == b' ' || bytes[pos] == b'\t') {
            pos += 1;
        }
        if !rest[pos..].starts_with("--") {
            break;
        }
        let start = pos;
        let mut quote: Option<u8> = None;
        let mut word = String::new();
        while pos < bytes.len() {
            let b = bytes[pos];
            match quote {
                Some(q) if b == q => quote = None,
                None if b == b'"' || b == b'\'' => quote = Some(b),
                None if b == b' ' || b == b'\t' => break,
                _ => {
                    let ch_len = rest[pos..].chars().next().map_or(1, char::len_utf8);
                    word.push_str(&rest[pos..pos + ch_len]);
                    pos += ch_len;
                    continue;
                }
            }
            pos += 1;
        }
        let body = &word[2..];
        if body.is_empty() {
            break;
        }
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        flags.push(Flag {
            name,
            value,
            col: base_col + rest[..start].chars().count(),
        });
    }
    (flags, rest[pos..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_blank_lines() {
        let p = read("FROM alpine\nRUN echo a \\\n# c\n\n  b\nCMD x\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.instructions.len(), 3);
        assert_eq!(p.instructions[1].span.line, 2);
        assert_eq!(p.instructions[1].span.end_line, 5);
        assert_eq!(
            p.instructions[1].kind,
            Kind::Run {
                cmd: Form::Shell("echo a   b".into()),
                heredocs: vec![]
            }
        );
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(p.warnings[0].rule, "NoEmptyContinuation");
    }

    #[test]
    fn escape_directive_and_json_forms() {
        let p = read("# escape=`\nFROM x\nRUN [\"a\", \"b\"]\nCMD [bad json\nSHELL [\"pwsh\"]\nRUN a `\n b\n");
        assert_eq!(p.directives.escape, '`');
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            p.instructions[1].kind,
            Kind::Run {
                cmd: Form::Exec(vec!["a".into(), "b".into()]),
                heredocs: vec![]
            }
        );
        assert_eq!(
            p.instructions[2].kind,
            Kind::Cmd(Form::Shell("[bad json".into()))
        );
        assert_eq!(
            p.instructions[4].kind,
            Kind::Run {
                cmd: Form::Shell("a  b".into()),
                heredocs: vec![]
            }
        );
    }

    #[test]
    fn heredocs_are_read_after_the_line() {
        let p = read("FROM x\nRUN <<EOF\necho hi\nEOF\nCOPY <<-'A' /a\n\tbody $X\n\tA\nUSER me\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.instructions.len(), 4);
        match &p.instructions[1].kind {
            Kind::Run { heredocs, .. } => assert_eq!(heredocs[0].body, "echo hi\n"),
            other => panic!("{other:?}"),
        }
        match &p.instructions[2].kind {
            Kind::Copy {
                sources,
                dest,
                heredocs,
            } => {
                assert!(sources.is_empty());
                assert_eq!(dest, "/a");
                assert_eq!(heredocs[0].body, "body $X\n");
                assert!(!heredocs[0].expand);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_error_is_collected_with_its_position() {
        let p = read("FROM x\nFOO bar\nCOPY --bogus=1 a b\nFROM a b\nENV\n");
        let got: Vec<(usize, usize, &str)> = p
            .errors
            .iter()
            .map(|e| (e.span.line, e.span.col, e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, 1, "unknown instruction: FOO"),
                (3, 6, "unknown flag: bogus"),
                (4, 1, "FROM requires either one or three arguments"),
                (5, 1, "ENV requires at least one argument"),
            ]
        );
    }

    #[test]
    fn env_forms_and_flags() {
        let p = read("FROM --platform=$BUILDPLATFORM x AS b\nENV A=1 B=\"two words\"\nENV C c d\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let from = &p.instructions[0];
        assert_eq!(
            from.flag("platform")
                .and_then(|f| f.value.clone())
                .as_deref(),
            Some("$BUILDPLATFORM")
        );
        assert_eq!(
            p.instructions[1].kind,
            Kind::Env {
                pairs: vec![
                    ("A".into(), "1".into()),
                    ("B".into(), "\"two words\"".into())
                ],
                legacy: false
            }
        );
        assert_eq!(
            p.instructions[2].kind,
            Kind::Env {
                pairs: vec![("C".into(), "c d".into())],
                legacy: true
            }
        );
    }
}
