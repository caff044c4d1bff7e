//! Adapter from the `dockerfile` parser's typed instructions to the
//! planner's `ir` shape (keyword, raw flags, typed arguments, span): the
//! planner keeps one flat view of flags (`--mount`, `--from`, …) and of
//! ENV/LABEL/COPY arguments so expansion and history code stay uniform.

use crate::dockerfile::{
    self, ast, instructions as di, Instruction as DInstruction, InstructionKind as DK,
};

use super::ir::{Flag, Form, Heredoc, Instruction, Kind, Span};
use super::{Finding, Problem};

/// A read Dockerfile: its instructions, or every syntax error; parser
/// warnings; and the source lines for rendering diagnostics.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// The parser's directives (escape character, `# syntax=`, `# check=`).
    pub directives: dockerfile::Directives,
    pub instructions: Vec<Instruction>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Finding>,
    pub lines: Vec<String>,
}

/// Parse Dockerfile text with the `dockerfile` parser.
pub fn read(text: &str) -> Parsed {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    let report = di::parse_dockerfile_report(text);
    let mut parsed = from_parts(
        &report.directives,
        &report.instructions,
        &report.warnings,
        lines,
    );
    parsed.errors = report.errors.iter().map(problem).collect();
    parsed
}

fn from_parts(
    directives: &dockerfile::Directives,
    instructions: &[DInstruction],
    warnings: &[ast::Warning],
    lines: Vec<String>,
) -> Parsed {
    Parsed {
        directives: directives.clone(),
        instructions: instructions.iter().map(convert).collect(),
        errors: Vec::new(),
        warnings: warnings
            .iter()
            .map(|w| Finding {
                rule: w.rule,
                span: Span::at(w.line, 1),
                message: if w.rule == "NoEmptyContinuation" {
                    "Empty continuation line".to_string()
                } else {
                    w.message.clone()
                },
            })
            .collect(),
        lines,
    }
}

fn problem(e: &ast::ParseError) -> Problem {
    Problem {
        span: Span {
            line: e.line,
            end_line: e.end_line,
            col: e.column.max(1),
        },
        message: e.message.clone(),
    }
}

/// Parse one ONBUILD trigger (`RUN make`) into an instruction.
pub fn parse_trigger(text: &str) -> Result<Instruction, Problem> {
    let df = dockerfile::parse_dockerfile(text).map_err(|e| {
        e.first().map(problem).unwrap_or_else(|| Problem {
            span: Span::default(),
            message: format!("invalid ONBUILD trigger {text:?}"),
        })
    })?;
    match df.instructions.as_slice() {
        [one] => Ok(convert(one)),
        _ => Err(Problem {
            span: Span::default(),
            message: "onbuild trigger should be a single expression".into(),
        }),
    }
}

fn span(s: ast::Span) -> Span {
    Span {
        line: s.start_line,
        end_line: s.end_line,
        col: s.column.max(1),
    }
}

/// The text after the keyword (BuildKit's `Original` minus the command).
fn rest_of(i: &DInstruction) -> String {
    let o = i.original.trim_start();
    match o.get(..i.keyword.len()) {
        Some(k) if k.eq_ignore_ascii_case(&i.keyword) => o[i.keyword.len()..].trim().to_string(),
        _ => o.trim().to_string(),
    }
}

fn flag(name: &str, value: Option<String>, col: usize) -> Flag {
    Flag {
        name: name.to_string(),
        value,
        col,
    }
}

fn form(c: &di::CommandLine) -> Form {
    if c.json {
        Form::Exec(c.args.clone())
    } else {
        Form::Shell(c.args.join(" "))
    }
}

fn heredocs(h: &[ast::Heredoc]) -> Vec<Heredoc> {
    h.iter()
        .map(|d| Heredoc {
            name: d.name.clone(),
            body: d.chomped(),
            expand: d.expand,
            chomp: d.chomp,
        })
        .collect()
}

fn copy_parts(c: &di::Copy, col: usize) -> (Vec<String>, Vec<Flag>) {
    let sources = c.sources.clone();
    let mut flags = Vec::new();
    let mut opt = |n: &str, v: &Option<String>| {
        if let Some(v) = v {
            flags.push(flag(n, Some(v.clone()), col));
        }
    };
    opt("from", &c.from);
    opt("chown", &c.chown);
    opt("chmod", &c.chmod);
    opt("checksum", &c.checksum);
    if c.link {
        flags.push(flag("link", None, col));
    }
    if c.parents {
        flags.push(flag("parents", None, col));
    }
    if c.keep_git_dir {
        flags.push(flag("keep-git-dir", None, col));
    }
    if let Some(u) = c.unpack {
        flags.push(flag("unpack", Some(u.to_string()), col));
    }
    for e in &c.excludes {
        flags.push(flag("exclude", Some(e.clone()), col));
    }
    (sources, flags)
}

/// Convert one typed instruction.
pub fn convert(i: &DInstruction) -> Instruction {
    let sp = span(i.span);
    let col = sp.col;
    let mut flags = Vec::new();
    let kind = match &i.kind {
        DK::From(f) => {
            if let Some(p) = &f.platform {
                flags.push(flag("platform", Some(p.clone()), col));
            }
            Kind::From {
                image: f.image.clone(),
                name: f.name.clone(),
                as_keyword: f.as_keyword.clone(),
            }
        }
        DK::Run(r) => {
            for m in &r.mounts {
                flags.push(flag("mount", Some(m.clone()), col));
            }
            if let Some(n) = &r.network {
                flags.push(flag("network", Some(n.clone()), col));
            }
            if let Some(s) = &r.security {
                flags.push(flag("security", Some(s.clone()), col));
            }
            Kind::Run {
                cmd: form(&r.command),
                heredocs: heredocs(&r.heredocs),
            }
        }
        DK::Cmd(c) => Kind::Cmd(form(c)),
        DK::Entrypoint(c) => Kind::Entrypoint(form(c)),
        DK::Shell(v) => Kind::Shell(v.clone()),
        DK::Env(kv) | DK::Label(kv) => {
            let pairs = kv
                .pairs
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect();
            if matches!(i.kind, DK::Env(_)) {
                Kind::Env {
                    pairs,
                    legacy: kv.legacy,
                }
            } else {
                Kind::Label {
                    pairs,
                    legacy: kv.legacy,
                }
            }
        }
        DK::Arg(args) => Kind::Arg(
            args.iter()
                .map(|a| (a.name.clone(), a.default.clone()))
                .collect(),
        ),
        DK::Expose(p) => Kind::Expose(p.clone()),
        DK::User(u) => Kind::User(u.clone()),
        DK::Workdir(w) => Kind::Workdir(w.clone()),
        DK::Volume { paths, .. } => Kind::Volume(paths.clone()),
        DK::StopSignal(s) => Kind::StopSignal(s.clone()),
        DK::Healthcheck(di::Healthcheck::None) => Kind::Healthcheck(None),
        DK::Healthcheck(di::Healthcheck::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        }) => {
            for (n, d) in [
                ("interval", interval),
                ("timeout", timeout),
                ("start-period", start_period),
                ("start-interval", start_interval),
            ] {
                if let Some(d) = d {
                    flags.push(flag(n, Some(format!("{}ns", d.as_nanos())), col));
                }
            }
            if let Some(r) = retries {
                flags.push(flag("retries", Some(r.to_string()), col));
            }
            Kind::Healthcheck(Some(form(command)))
        }
        DK::Onbuild {
            expression,
            trigger,
        } => Kind::Onbuild {
            expression: expression.clone(),
            inner: match trigger {
                Ok(t) => Ok(Box::new(convert(t))),
                Err(e) => Err(problem(e)),
            },
        },
        DK::Copy(c) | DK::Add(c) => {
            let (sources, f) = copy_parts(c, col);
            flags = f;
            let heredocs = c
                .contents
                .iter()
                .map(|h| Heredoc {
                    name: h.path.clone(),
                    body: h.data.clone(),
                    expand: h.expand,
                    chomp: false,
                })
                .collect();
            if matches!(i.kind, DK::Copy(_)) {
                Kind::Copy {
                    sources,
                    dest: c.dest.clone(),
                    heredocs,
                }
            } else {
                Kind::Add {
                    sources,
                    dest: c.dest.clone(),
                    heredocs,
                }
            }
        }
        DK::Maintainer(m) => Kind::Maintainer(m.clone()),
    };
    Instruction {
        keyword: i.keyword.clone(),
        original: rest_of(i),
        span: sp,
        flags,
        kind,
    }
}
