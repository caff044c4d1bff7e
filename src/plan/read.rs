//! Reading a Dockerfile for planning: the `dockerfile` parser's typed
//! instructions, its errors and warnings as planner problems and findings,
//! and the source lines for rendering diagnostics.

use crate::dockerfile::{self, ast, Instruction, Span};

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
    let report = dockerfile::parse_dockerfile_report(text);
    Parsed {
        directives: report.directives,
        instructions: report.instructions,
        errors: report.errors.iter().map(problem).collect(),
        warnings: report
            .warnings
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

/// A parse error as a planner problem (column at least 1).
pub(super) fn problem(e: &ast::ParseError) -> Problem {
    Problem {
        span: Span {
            start_line: e.line,
            end_line: e.end_line,
            column: e.column.max(1),
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
        [one] => Ok(one.clone()),
        _ => Err(Problem {
            span: Span::default(),
            message: "onbuild trigger should be a single expression".into(),
        }),
    }
}
