//! `rbuild check`: read, plan and lint a Dockerfile without building, and
//! report every problem as `FILE:LINE:COL: error: …` with the source line
//! and a caret under the column.
//!
//! Lints are BuildKit's `docker build --check` rules that need no build:
//! the syntactic ones live here (StageNameCasing, FromAsCasing,
//! DuplicateStageName, ReservedStageName, MaintainerDeprecated,
//! ConsistentInstructionCasing, NoEmptyContinuation); the ones BuildKit
//! finds while converting come from the planner (UndefinedVar,
//! UndefinedArgInFrom, LegacyKeyValueFormat, JSONArgsRecommended,
//! MultipleInstructionsDisallowed, WorkdirRelativePath,
//! SecretsUsedInArgOrEnv, RedundantTargetPlatform,
//! FromPlatformFlagConstDisallowed, InvalidDefaultArgInFrom).
//! `# check=skip=…;error=true` applies.

use std::collections::BTreeSet;

use crate::dockerfile::{Instruction, InstructionKind as DK};
use crate::plan::{self, Finding, Plan, PlanOptions, Problem, Span};

/// How `# check=` configured the linter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LintConfig {
    pub skip: BTreeSet<String>,
    pub skip_all: bool,
    pub error: bool,
}

/// Parse the `check` directive (`skip=A,B;error=true`), as BuildKit's
/// `ParseLintOptions`.
pub fn parse_lint_config(s: &str) -> Result<LintConfig, String> {
    let mut cfg = LintConfig::default();
    let s = s.trim();
    if s.is_empty() {
        return Ok(cfg);
    }
    for part in s.splitn(2, ';') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("invalid check option \"{part}\""));
        };
        match k.trim() {
            "skip" => {
                let v = v.trim();
                if v == "all" {
                    cfg.skip_all = true;
                } else {
                    cfg.skip = v.split(',').map(|r| r.trim().to_string()).collect();
                }
            }
            "error" => {
                cfg.error = match v.trim() {
                    "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                    "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                    _ => return Err(format!("failed to parse check option \"{part}\"")),
                }
            }
            other => return Err(format!("invalid check option \"{other}\"")),
        }
    }
    Ok(cfg)
}

/// The outcome of checking one Dockerfile.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Finding>,
    /// The plan, when the file planned without errors.
    pub plan: Option<Plan>,
    /// The file's lines, for rendering.
    pub lines: Vec<String>,
}

impl Report {
    /// Exit status for `rbuild check`.
    pub fn exit_code(&self) -> i32 {
        i32::from(!self.errors.is_empty())
    }
}

/// Check Dockerfile text. `opts.all_stages` is set when no target is given
/// (lint every stage, like BuildKit's lint subrequest).
pub fn check(text: &str, opts: &PlanOptions) -> Report {
    if text.is_empty() {
        return Report {
            errors: vec![Problem {
                span: Span::default(),
                message: plan::EMPTY_DOCKERFILE.to_string(),
            }],
            ..Report::default()
        };
    }
    let parsed = plan::read(text);
    let mut report = Report {
        lines: parsed.lines.clone(),
        errors: parsed.errors.clone(),
        ..Report::default()
    };
    let cfg = match parse_lint_config(
        parsed
            .directives
            .check
            .as_ref()
            .map_or("", |d| d.value.as_str()),
    ) {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(Problem {
                span: directive_span(&parsed.lines),
                message: format!("failed to parse check options: {e}"),
            });
            LintConfig::default()
        }
    };
    let mut warnings = parsed.warnings.clone();
    warnings.extend(static_lints(&parsed.instructions));
    if parsed.errors.is_empty() {
        let mut opts = opts.clone();
        opts.all_stages = opts.target.is_none();
        match plan::plan(&parsed, &opts) {
            Ok(p) => {
                warnings.extend(p.findings.iter().cloned());
                report.plan = Some(p);
            }
            Err(e) => {
                warnings.extend(e.findings);
                report.errors.extend(e.problems);
            }
        }
    }
    warnings.retain(|w| !cfg.skip_all && !cfg.skip.contains(w.rule));
    warnings.sort_by_key(|w| (w.span.start_line, w.span.column));
    warnings.dedup();
    if cfg.error && !warnings.is_empty() {
        let rules: BTreeSet<&str> = warnings.iter().map(|w| w.rule).collect();
        let rules: Vec<&str> = rules.into_iter().collect();
        report.errors.push(Problem {
            span: Span::default(),
            message: format!("lint violation found for rules: {}", rules.join(", ")),
        });
    }
    report
        .errors
        .sort_by_key(|e| (e.span.start_line, e.span.column));
    report.warnings = warnings;
    report
}

fn directive_span(lines: &[String]) -> Span {
    let line = lines
        .iter()
        .position(|l| l.to_ascii_lowercase().contains("check"))
        .map_or(1, |i| i + 1);
    Span::at(line, 1)
}

fn is_self_consistent(s: &str) -> bool {
    s == s.to_ascii_lowercase() || s == s.to_ascii_uppercase()
}

fn warn(rule: &'static str, span: Span, message: String) -> Finding {
    Finding {
        rule,
        span,
        message,
    }
}

/// The rules BuildKit checks while parsing, before any build.
pub fn static_lints(insts: &[Instruction]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for inst in insts {
        match &inst.kind {
            DK::From(crate::dockerfile::instructions::From {
                name: Some(name),
                as_keyword,
                ..
            }) => {
                if name.to_ascii_lowercase() != *name {
                    out.push(warn(
                        "StageNameCasing",
                        inst.span,
                        format!("Stage name '{name}' should be lowercase"),
                    ));
                }
                if let Some(as_kw) = as_keyword {
                    let from = &inst.keyword;
                    let from_lower = from.to_ascii_lowercase() == *from;
                    let from_upper = from.to_ascii_uppercase() == *from;
                    let mismatch = (from_lower && as_kw.to_ascii_lowercase() != *as_kw)
                        || (from_upper && !from_lower && as_kw.to_ascii_uppercase() != *as_kw);
                    if mismatch {
                        out.push(warn(
                            "FromAsCasing",
                            inst.span,
                            format!("'{as_kw}' and '{from}' keywords' casing do not match"),
                        ));
                    }
                }
                let lower = name.to_ascii_lowercase();
                if lower == "context" || lower == "scratch" {
                    out.push(warn(
                        "ReservedStageName",
                        inst.span,
                        format!(
                            "Stage name should not use the same name as reserved stage \"{lower}\""
                        ),
                    ));
                }
                if !names.insert(lower.clone()) {
                    out.push(warn(
                        "DuplicateStageName",
                        inst.span,
                        format!("Duplicate stage name \"{lower}\", stage names should be unique"),
                    ));
                }
            }
            DK::Maintainer(_) => out.push(warn(
                "MaintainerDeprecated",
                inst.span,
                "Maintainer instruction is deprecated in favor of using label".to_string(),
            )),
            _ => {}
        }
    }
    out.extend(casing_lints(insts));
    out
}

/// ConsistentInstructionCasing: each keyword all-lower or all-upper, and
/// matching the file's majority.
fn casing_lints(insts: &[Instruction]) -> Vec<Finding> {
    let (mut lower, mut upper) = (0, 0);
    for i in insts {
        if is_self_consistent(&i.keyword) {
            if i.keyword.to_ascii_lowercase() == i.keyword {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    insts
        .iter()
        .filter_map(|i| {
            let k = &i.keyword;
            let want = if majority_lower && k.to_ascii_lowercase() != *k {
                "lowercase"
            } else if !majority_lower && k.to_ascii_uppercase() != *k {
                "uppercase"
            } else {
                return None;
            };
            Some(warn(
                "ConsistentInstructionCasing",
                i.span,
                format!("Command '{k}' should match the case of the command majority ({want})"),
            ))
        })
        .collect()
}

/// How many characters of the source line a diagnostic shows.
const SHOWN_LINE: usize = 200;

/// Dockerfile problems already rendered as `FILE:LINE:COL: error: …` with
/// carets: the CLI prints them as they are, without another `error:`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Diagnostics(pub String);

/// Render one diagnostic with its source line and a caret.
pub fn render(file: &str, lines: &[String], span: Span, severity: &str, message: &str) -> String {
    if span.start_line == 0 {
        return format!("{file}: {severity}: {message}\n");
    }
    let src = lines.get(span.start_line - 1);
    // Spans count bytes; people and editors count characters (a caret
    // after `é` sat one place to the right per multibyte character).
    let byte_col = span.column.max(1);
    let col = src
        .and_then(|l| l.get(..byte_col - 1))
        .map_or(byte_col, |before| before.chars().count() + 1);
    let mut out = format!("{file}:{}:{col}: {severity}: {message}\n", span.start_line);
    if let Some(src) = src {
        let num = span.start_line.to_string();
        // A hostile line can be 64 KiB: show its start only.
        let mut shown: String = src.chars().take(SHOWN_LINE).collect();
        if shown.len() < src.len() {
            shown.push('…');
        }
        out.push_str(&format!("  {num} | {shown}\n"));
        if col <= SHOWN_LINE {
            let pad: String = src
                .chars()
                .take(col - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("  {} | {pad}^\n", " ".repeat(num.len())));
        }
    }
    out
}

/// Every error, then every warning, rendered.
pub fn render_report(file: &str, report: &Report) -> String {
    let mut out = String::new();
    for e in &report.errors {
        out.push_str(&render(file, &report.lines, e.span, "error", &e.message));
    }
    for w in &report.warnings {
        let msg = format!("{}: {}", w.rule, w.message);
        out.push_str(&render(file, &report.lines, w.span, "warning", &msg));
    }
    out
}

/// The success summary: each stage, then its steps.
pub fn summary(plan: &Plan) -> String {
    let mut out = String::new();
    for st in &plan.stages {
        let name = st
            .name
            .as_ref()
            .map(|n| format!(" \"{n}\""))
            .unwrap_or_default();
        let target = if std::ptr::eq(st, &plan.stages[plan.target]) {
            " [target]"
        } else {
            ""
        };
        let n = st.steps.len();
        let s = if n == 1 { "" } else { "s" };
        out.push_str(&format!(
            "stage {}{name} FROM {} ({n} step{s}){target}\n",
            st.index, st.base_name
        ));
        if let Some(f) = &st.from_display {
            out.push_str(&format!("  {f}\n"));
        }
        for step in &st.steps {
            let line = match &step.display_name {
                Some(d) => d.clone(),
                None => plan::history::uppercase_cmd(
                    format!("{} {}", step.keyword, step.original).trim(),
                ),
            };
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
