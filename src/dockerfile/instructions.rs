//! Typed instructions (like BuildKit's `instructions` package): each raw
//! [`Node`] becomes an [`Instruction`] with its checked flags and arguments.
//! Values that may hold variables stay raw strings; the planner expands them
//! with the `shell` module. What lint rules need (keyword as written, legacy
//! ENV/LABEL form, JSON vs shell form, `AS` casing) is kept.

use super::ast::{Heredoc, Node, ParseError, Span, Warning};
use super::directives::Directives;
use super::flags::{parse_flags, FlagKind, Flags};
use super::heredoc::parse_heredoc;
use super::mount::{check_unexpanded, parse_mount};
use super::parser::parse;
use std::time::Duration;

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    pub warnings: Vec<Warning>,
}

/// One instruction with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub kind: InstructionKind,
    /// The keyword as written (`run`, `RUN`, `Run`).
    pub keyword: String,
    /// The logical line (continuations joined, comments dropped).
    pub original: String,
    pub span: Span,
}

/// A command line of RUN/CMD/ENTRYPOINT (and HEALTHCHECK CMD).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandLine {
    /// Exec form: the JSON array; shell form: one string.
    pub args: Vec<String>,
    /// True for the JSON (exec) form.
    pub json: bool,
}

/// One `key=value` (or legacy `key value`) of ENV or LABEL; the value is raw:
/// quotes and escapes are removed when the planner expands it as one word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// ENV and LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValues {
    pub pairs: Vec<KeyValue>,
    /// Written in the legacy `KEY value` form (LegacyKeyValueFormat lint).
    pub legacy: bool,
}

/// One name of an ARG line, with its raw default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    // Stage names compare case-insensitively: use [`From::stage_name`].
    /// Image reference or stage name, raw (may hold `$VARS`).
    pub image: String,
    pub platform: Option<String>,
    /// Stage name as written (not lower-cased).
    pub name: Option<String>,
    /// The `AS` keyword as written (FromAsCasing lint).
    pub as_keyword: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub command: CommandLine,
    pub heredocs: Vec<Heredoc>,
    /// Raw `--mount=` values; the planner expands and calls [`parse_mount`].
    pub mounts: Vec<String>,
    /// `default`, `none` or `host` (raw).
    pub network: Option<String>,
    /// `insecure` or `sandbox` (raw).
    pub security: Option<String>,
}

/// A COPY/ADD source written inline as a heredoc (`COPY <<EOF /dest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    /// The heredoc name, used as the file name.
    pub path: String,
    /// The body, with leading TABs already removed for `<<-`.
    pub data: String,
    /// Expand variables in `data` (the marker was not quoted).
    pub expand: bool,
}

/// COPY and ADD: which flags apply is decided by [`InstructionKind`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copy {
    /// Source paths as written (raw), without heredoc markers.
    pub sources: Vec<String>,
    /// Heredoc sources, in the order their markers appear.
    pub contents: Vec<SourceContent>,
    pub dest: String,
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub excludes: Vec<String>,
    pub parents: bool,
    /// ADD only.
    pub checksum: Option<String>,
    /// ADD only.
    pub keep_git_dir: bool,
    /// ADD only: `Some(false)` for `--unpack=false`.
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    None,
    Cmd {
        command: CommandLine,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum InstructionKind {
    From(From),
    Run(Run),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    /// Always the JSON form.
    Shell(Vec<String>),
    Env(KeyValues),
    Arg(Vec<ArgDecl>),
    Label(KeyValues),
    Expose(Vec<String>),
    User(String),
    Workdir(String),
    Volume {
        paths: Vec<String>,
        json: bool,
    },
    StopSignal(String),
    Healthcheck(Healthcheck),
    /// ONBUILD: `expression` is what BuildKit stores in the image config (the
    /// text after `ONBUILD`, heredoc bodies appended); `trigger` is that text
    /// typed now. BuildKit only checks a trigger when a child build runs it, so
    /// a trigger that does not type is not an error of this Dockerfile.
    Onbuild {
        expression: String,
        trigger: Result<Box<Instruction>, ParseError>,
    },
    Copy(Copy),
    Add(Copy),
    Maintainer(String),
}

/// Everything found in a Dockerfile, whether or not it had errors: what
/// `rbuild check` reports. Instructions that failed to type are left out.
#[derive(Debug, Clone)]
pub struct Report {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    pub warnings: Vec<Warning>,
    /// Every error, ordered by line and column.
    pub errors: Vec<ParseError>,
}

/// Parses and types a Dockerfile, collecting every error and warning.
pub fn parse_dockerfile_report(src: &str) -> Report {
    let out = parse(src);
    let mut errors = out.errors;
    let mut instructions = Vec::new();
    for node in &out.ast.children {
        match instruction_from_node(node) {
            Ok(i) => instructions.push(i),
            Err(e) => errors.push(e),
        }
    }
    errors.sort_by_key(|e| (e.line, e.column));
    Report {
        directives: out.directives,
        instructions,
        warnings: out.warnings,
        errors,
    }
}

/// Parses and types a Dockerfile. Returns every error found.
pub fn parse_dockerfile(src: &str) -> Result<Dockerfile, Vec<ParseError>> {
    let r = parse_dockerfile_report(src);
    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    Ok(Dockerfile {
        directives: r.directives,
        instructions: r.instructions,
        warnings: r.warnings,
    })
}

fn err(node: &Node, message: impl Into<String>) -> ParseError {
    ParseError {
        line: node.span.start_line,
        column: node.span.column,
        end_line: node.span.end_line,
        message: message.into(),
    }
}

fn no_flags(node: &Node) -> Result<Flags, ParseError> {
    parse_flags(node, &[])
}

fn at_least_one(node: &Node) -> Result<(), ParseError> {
    if node.args.is_empty() {
        return Err(err(
            node,
            format!(
                "{} requires at least one argument",
                node.command().to_uppercase()
            ),
        ));
    }
    Ok(())
}

fn exactly_one(node: &Node) -> Result<String, ParseError> {
    match node.args.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(err(
            node,
            format!(
                "{} requires exactly one argument",
                node.command().to_uppercase()
            ),
        )),
    }
}

/// Types one raw node.
pub fn instruction_from_node(node: &Node) -> Result<Instruction, ParseError> {
    let kind = match node.command().as_str() {
        "from" => InstructionKind::From(parse_from(node)?),
        "run" => InstructionKind::Run(parse_run(node)?),
        "cmd" => {
            no_flags(node)?;
            InstructionKind::Cmd(command_line(node))
        }
        "entrypoint" => {
            no_flags(node)?;
            InstructionKind::Entrypoint(command_line(node))
        }
        "shell" => {
            no_flags(node)?;
            at_least_one(node)?;
            if !node.json {
                return Err(err(node, "SHELL requires the arguments to be in JSON form"));
            }
            InstructionKind::Shell(node.args.clone())
        }
        "env" => InstructionKind::Env(parse_key_values(node)?),
        "label" => InstructionKind::Label(parse_key_values(node)?),
        "arg" => InstructionKind::Arg(parse_arg(node)?),
        "expose" => {
            no_flags(node)?;
            at_least_one(node)?;
            InstructionKind::Expose(node.args.clone())
        }
        "user" => {
            no_flags(node)?;
            InstructionKind::User(exactly_one(node)?)
        }
        "workdir" => {
            no_flags(node)?;
            InstructionKind::Workdir(exactly_one(node)?)
        }
        // BuildKit does not check flags on STOPSIGNAL.
        "stopsignal" => InstructionKind::StopSignal(exactly_one(node)?),
        "maintainer" => {
            no_flags(node)?;
            InstructionKind::Maintainer(exactly_one(node)?)
        }
        "volume" => {
            no_flags(node)?;
            at_least_one(node)?;
            let paths: Vec<String> = node.args.iter().map(|p| p.trim().to_string()).collect();
            if paths.iter().any(String::is_empty) {
                return Err(err(node, "VOLUME specified can not be an empty string"));
            }
            InstructionKind::Volume {
                paths,
                json: node.json,
            }
        }
        "healthcheck" => InstructionKind::Healthcheck(parse_healthcheck(node)?),
        "onbuild" => parse_onbuild(node)?,
        "copy" => InstructionKind::Copy(parse_copy(node, false)?),
        "add" => InstructionKind::Add(parse_copy(node, true)?),
        _ => {
            let message = format!("unknown instruction: {}", node.keyword);
            let message =
                super::suggest::wrap(message, &node.keyword, super::suggest::INSTRUCTIONS, false);
            return Err(err(node, message));
        }
    };
    Ok(Instruction {
        kind,
        keyword: node.keyword.clone(),
        original: node.original.clone(),
        span: node.span,
    })
}

impl Instruction {
    /// The upper-case instruction name (`RUN`).
    pub fn name(&self) -> String {
        self.keyword.to_ascii_uppercase()
    }

    /// The text after the keyword, as written (BuildKit's `Original` minus
    /// the command), continuations joined.
    pub fn args_text(&self) -> String {
        let o = self.original.trim_start();
        match o.get(..self.keyword.len()) {
            Some(k) if k.eq_ignore_ascii_case(&self.keyword) => {
                o[self.keyword.len()..].trim().to_string()
            }
            _ => o.trim().to_string(),
        }
    }
}

fn command_line(node: &Node) -> CommandLine {
    CommandLine {
        args: node.args.clone(),
        json: node.json,
    }
}

impl From {
    /// The stage name as BuildKit uses it (lower-cased).
    pub fn stage_name(&self) -> Option<String> {
        self.name.as_ref().map(|n| n.to_ascii_lowercase())
    }
}

fn parse_from(node: &Node) -> Result<From, ParseError> {
    let flags = parse_flags(node, &[("platform", FlagKind::String)])?;
    let (image, name, as_keyword) = match node.args.as_slice() {
        [image] => (image.clone(), None, None),
        [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            (image.clone(), Some(name.clone()), Some(as_kw.clone()))
        }
        [_, _, _] => return Err(err(node, "Third argument must be AS")),
        _ => return Err(err(node, "FROM requires either one or three arguments")),
    };
    if let Some(n) = &name {
        if !valid_stage_name(n) {
            return Err(err(
                node,
                format!("invalid name for build stage: \"{n}\", name can't start with a number or contain symbols"),
            ));
        }
    }
    Ok(From {
        image,
        platform: flags.string("platform"),
        name,
        as_keyword,
    })
}

/// BuildKit's stage name rule: `^[a-z][a-z0-9-_.]*$` after lower-casing.
fn valid_stage_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let mut chars = lower.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn parse_run(node: &Node) -> Result<Run, ParseError> {
    let flags = parse_flags(
        node,
        &[
            ("mount", FlagKind::Strings),
            ("network", FlagKind::String),
            ("security", FlagKind::String),
        ],
    )?;
    if node.args.is_empty() && node.heredocs.is_empty() {
        return Err(err(node, "RUN requires at least one argument"));
    }
    let mounts = flags.strings("mount");
    // Mounts without variables can be checked now, with a precise location.
    for (i, m) in mounts.iter().enumerate() {
        check_unexpanded(m).map_err(|e| flag_err(node, "mount", i, e))?;
        if !m.contains('$') {
            parse_mount(m).map_err(|e| flag_err(node, "mount", i, e))?;
        }
    }
    let network = flags.string("network");
    if let Some(n) = network.as_deref().filter(|n| !n.contains('$')) {
        if !matches!(n, "default" | "none" | "host") {
            return Err(flag_err(
                node,
                "network",
                0,
                format!("unsupported network mode \"{n}\""),
            ));
        }
    }
    let security = flags.string("security");
    if let Some(s) = security.as_deref().filter(|s| !s.contains('$')) {
        if !matches!(s, "insecure" | "sandbox") {
            return Err(flag_err(
                node,
                "security",
                0,
                format!("unsupported security mode \"{s}\""),
            ));
        }
    }
    Ok(Run {
        command: command_line(node),
        heredocs: node.heredocs.clone(),
        mounts,
        network,
        security,
    })
}

/// An error about the `nth` occurrence of flag `name`, at its column.
fn flag_err(node: &Node, name: &str, nth: usize, message: String) -> ParseError {
    let prefix = format!("--{name}");
    let offset = node
        .flags
        .iter()
        .zip(&node.flag_offsets)
        .filter(|(f, _)| f.starts_with(&prefix))
        .nth(nth)
        .map(|(_, &o)| o)
        .unwrap_or(usize::MAX);
    ParseError {
        column: node.column_of(offset),
        ..err(node, message)
    }
}

fn parse_key_values(node: &Node) -> Result<KeyValues, ParseError> {
    no_flags(node)?;
    at_least_one(node)?;
    let legacy = node.args.get(2).is_some_and(|s| s.is_empty());
    let mut pairs = Vec::new();
    for c in node.args.chunks(3) {
        if c[0].is_empty() {
            let what = node.command().to_uppercase();
            return Err(err(node, format!("{what} names can not be blank")));
        }
        pairs.push(KeyValue {
            key: c[0].clone(),
            value: c.get(1).cloned().unwrap_or_default(),
        });
    }
    Ok(KeyValues { pairs, legacy })
}

fn parse_arg(node: &Node) -> Result<Vec<ArgDecl>, ParseError> {
    no_flags(node)?;
    at_least_one(node)?;
    node.args
        .iter()
        .map(|a| {
            let (name, default) = match a.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (a.clone(), None),
            };
            if name.is_empty() {
                return Err(err(node, "ARG names can not be blank"));
            }
            Ok(ArgDecl { name, default })
        })
        .collect()
}

fn parse_healthcheck(node: &Node) -> Result<Healthcheck, ParseError> {
    // BuildKit checks flags only for CMD (and unknown types), not for NONE.
    if node
        .args
        .first()
        .is_some_and(|t| t.eq_ignore_ascii_case("none"))
    {
        if node.args.len() > 1 {
            return Err(err(node, "HEALTHCHECK NONE takes no arguments"));
        }
        return Ok(Healthcheck::None);
    }
    let d = FlagKind::String;
    let flags = parse_flags(
        node,
        &[
            ("interval", d),
            ("timeout", d),
            ("start-period", d),
            ("start-interval", d),
            ("retries", d),
        ],
    )?;
    let Some(typ) = node.args.first() else {
        return Err(err(node, "HEALTHCHECK requires at least one argument"));
    };
    match typ.to_ascii_uppercase().as_str() {
        "NONE" => {
            if node.args.len() > 1 {
                return Err(err(node, "HEALTHCHECK NONE takes no arguments"));
            }
            Ok(Healthcheck::None)
        }
        "CMD" => {
            if node.args.len() < 2 {
                return Err(err(node, "Missing command after HEALTHCHECK CMD"));
            }
            let dur = |name: &str| -> Result<Option<Duration>, ParseError> {
                let Some(v) = flags.string(name) else {
                    return Ok(None);
                };
                let d = parse_go_duration(&v).map_err(|e| flag_err(node, name, 0, e))?;
                if d != Duration::ZERO && d < Duration::from_millis(1) {
                    return Err(flag_err(
                        node,
                        name,
                        0,
                        format!("Interval \"{name}\" cannot be less than 1ms"),
                    ));
                }
                Ok(Some(d))
            };
            let retries = match flags.string("retries") {
                None => None,
                Some(r) => Some(r.parse::<u32>().map_err(|_| {
                    flag_err(
                        node,
                        "retries",
                        0,
                        format!("invalid --retries value \"{r}\": must be a non-negative integer"),
                    )
                })?),
            };
            Ok(Healthcheck::Cmd {
                command: CommandLine {
                    args: node.args[1..].to_vec(),
                    json: node.json,
                },
                interval: dur("interval")?,
                timeout: dur("timeout")?,
                start_period: dur("start-period")?,
                start_interval: dur("start-interval")?,
                retries,
            })
        }
        _ => Err(err(
            node,
            format!(
                "Unknown type \"{}\" in HEALTHCHECK (try CMD)",
                typ.to_uppercase()
            ),
        )),
    }
}

/// Parses a Go duration (`1h30m`, `1.5s`, `300ms`, `0`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration \"{s}\"");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[u_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

fn parse_onbuild(node: &Node) -> Result<InstructionKind, ParseError> {
    no_flags(node)?;
    let Some(sub) = node.sub.as_deref() else {
        return Err(err(node, "ONBUILD requires at least one argument"));
    };
    let trigger_kw = sub.keyword.to_uppercase();
    match trigger_kw.as_str() {
        "ONBUILD" => {
            let msg = "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed";
            return Err(err(node, msg));
        }
        "FROM" | "MAINTAINER" => {
            let msg = format!("{trigger_kw} isn't allowed as an ONBUILD trigger");
            return Err(err(node, msg));
        }
        _ => {}
    }
    let mut expression = strip_onbuild_keyword(&node.original).to_string();
    for doc in &node.heredocs {
        expression.push('\n');
        expression.push_str(&doc.content);
        expression.push_str(&doc.name);
    }
    // The wrapped node shares the line; heredocs were read for the ONBUILD node.
    let mut sub = sub.clone();
    sub.span = node.span;
    sub.first_line_len = node.first_line_len;
    sub.heredocs = node.heredocs.clone();
    Ok(InstructionKind::Onbuild {
        expression,
        trigger: instruction_from_node(&sub).map(Box::new),
    })
}

/// The text after the `ONBUILD` keyword and the blanks that follow it.
fn strip_onbuild_keyword(original: &str) -> &str {
    let t = original.trim_start();
    match t.get(..7) {
        Some(kw) if kw.eq_ignore_ascii_case("onbuild") => t[7..].trim_start(),
        _ => t,
    }
}

fn parse_copy(node: &Node, is_add: bool) -> Result<Copy, ParseError> {
    use FlagKind::*;
    let mut allowed = vec![
        ("chown", String),
        ("chmod", String),
        ("link", Bool),
        ("exclude", Strings),
    ];
    if is_add {
        allowed.extend([
            ("checksum", String),
            ("keep-git-dir", Bool),
            ("unpack", Bool),
        ]);
    } else {
        allowed.extend([("from", String), ("parents", Bool)]);
    }
    let flags = parse_flags(node, &allowed)?;
    let name = node.command().to_uppercase();
    let (dest, sources) = match node.args.split_last() {
        Some((dest, sources)) if !sources.is_empty() => (dest, sources),
        _ => {
            let msg = format!("{name} requires at least two arguments, but only one was provided. Destination could not be determined");
            return Err(err(node, msg));
        }
    };
    if parse_heredoc(dest).ok().flatten().is_some() {
        return Err(err(
            node,
            format!("{name} cannot accept a heredoc as a destination"),
        ));
    }
    let mut paths = Vec::new();
    let mut contents = Vec::new();
    for src in sources {
        match parse_heredoc(src).ok().flatten() {
            Some(h) if !node.json => {
                let Some(doc) = node.heredocs.iter().find(|d| d.name == h.name) else {
                    return Err(err(node, format!("{name}: no body for heredoc {src}")));
                };
                contents.push(SourceContent {
                    path: h.name.clone(),
                    data: doc.chomped(),
                    expand: h.expand,
                });
            }
            _ => paths.push(src.clone()),
        }
    }
    Ok(Copy {
        sources: paths,
        contents,
        dest: dest.clone(),
        json: node.json,
        heredocs: node.heredocs.clone(),
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link"),
        excludes: flags.strings("exclude"),
        parents: flags.bool("parents"),
        checksum: flags.string("checksum"),
        keep_git_dir: flags.bool("keep-git-dir"),
        unpack: flags.string("unpack").map(|v| v == "true"),
    })
}

#[cfg(test)]
#[path = "instructions_tests.rs"]
mod tests;
