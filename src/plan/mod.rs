//! From Dockerfile instructions to a build plan, as BuildKit's
//! `dockerfile2llb` decides it before executing anything: stages and their
//! bases, global and per-stage ARG scoping, build args, predefined platform
//! and proxy ARGs, `--target` pruning to the stages the target needs, ONBUILD
//! triggers, and every step with its words already expanded, the build args
//! it used, its progress name and its image-history `created_by` text.
//!
//! Planning also yields the lint findings BuildKit reports while converting
//! (UndefinedVar, UndefinedArgInFrom, LegacyKeyValueFormat,
//! JSONArgsRecommended, MultipleInstructionsDisallowed); `check` adds the
//! purely syntactic ones.

mod checks;
mod dispatch;
pub mod expand;
pub mod history;
mod lints;
pub mod read;
mod stage;
mod state;
pub mod step;

use std::collections::{BTreeMap, BTreeSet};

pub use crate::dockerfile::{parse_mount, Heredoc, Span};
pub use read::{read, Parsed};
pub use stage::{predefined_args, PROXY_ARGS};
pub use step::{
    CacheSharing, ConfigEdit, CopyStep, Form, Health, Mount, MountType, Network, RunMount, RunStep,
    Step, StepKind,
};

/// An error at a position in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub span: Span,
    pub message: String,
}

/// A lint warning (BuildKit rule name and message) at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static str,
    pub span: Span,
    pub message: String,
}

/// Build and target platforms are the OCI vocabulary's.
pub use crate::oci::Platform;

/// What the engine knows about an external base image's config; lets the
/// planner expand with its ENV, use its SHELL/WORKDIR and run its ONBUILD
/// triggers. Without it, only `PATH` is assumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseConfig {
    pub env: Vec<(String, String)>,
    pub shell: Vec<String>,
    pub workdir: String,
    pub onbuild: Vec<String>,
}

/// Inputs to planning besides the Dockerfile.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// `--build-arg` values (see `engine::options::parse_build_args`).
    pub build_args: BTreeMap<String, String>,
    /// `--target`; default: the last stage.
    pub target: Option<String>,
    /// Build and target platform.
    pub platform: Platform,
    /// Plan every stage, not only the ones the target needs (lint mode).
    pub all_stages: bool,
    /// Configs of external base images, keyed by normalized reference
    /// (`docker.io/library/alpine:3.19`).
    pub base_configs: BTreeMap<String, BaseConfig>,
    /// `--platform`: the target platform when it is not `platform` (then
    /// `TARGET*` args differ from `BUILD*`).
    pub target_platform: Option<Platform>,
    /// `--build-context NAME=…` names (lowercase): a stage with such a name
    /// is not what FROM/--from NAME refers to; the named context is.
    pub replaced_stages: BTreeSet<String>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            build_args: BTreeMap::new(),
            target: None,
            // BuildKit plans with the normalized host: no arm64 variant.
            platform: Platform::host().normalized(),
            all_stages: false,
            base_configs: BTreeMap::new(),
            target_platform: None,
            replaced_stages: BTreeSet::new(),
        }
    }
}

/// What a stage (or a `COPY --from`/`RUN --mount from=`) starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    /// Index into [`Plan::stages`].
    Stage(usize),
    /// A normalized image reference.
    Image(String),
}

/// One stage of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStage {
    /// Position of the stage in the Dockerfile (0-based).
    pub index: usize,
    /// The `AS` name, lower-cased.
    pub name: Option<String>,
    /// The name in progress output: the `AS` name, `stage-N`, or empty when
    /// the Dockerfile has one stage.
    pub progress_name: String,
    pub base: Base,
    /// The FROM image name after ARG expansion, as written (`golang:1.22`).
    pub base_name: String,
    /// `FROM --platform=…` after expansion.
    pub platform: Option<Platform>,
    pub span: Span,
    /// Progress name of pulling the base (`[stage-0 1/3] FROM docker.io/…`).
    pub from_display: Option<String>,
    pub steps: Vec<Step>,
    /// ONBUILD expressions this stage records in its image config.
    pub onbuild: Vec<String>,
}

/// The build plan: the stages the target needs, in Dockerfile order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub stages: Vec<PlannedStage>,
    /// Index into `stages` of the stage whose image is the result.
    pub target: usize,
    /// Lint findings seen while planning.
    pub findings: Vec<Finding>,
    /// External images the plan needs (bases and `--from` sources).
    pub images: Vec<String>,
}

/// Planning failed; every error found is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub problems: Vec<Problem>,
    pub findings: Vec<Finding>,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msgs: Vec<String> = self
            .problems
            .iter()
            .map(|p| format!("line {}: {}", p.span.start_line, p.message))
            .collect();
        f.write_str(&msgs.join("; "))
    }
}

impl std::error::Error for PlanError {}

/// Plan a parsed Dockerfile.
pub fn plan(parsed: &Parsed, opts: &PlanOptions) -> Result<Plan, PlanError> {
    stage::plan(&parsed.instructions, parsed.directives.escape, opts)
}

/// BuildKit's error for an empty file.
pub const EMPTY_DOCKERFILE: &str = "the Dockerfile cannot be empty";

/// Read and plan Dockerfile text; syntax errors come back as a `PlanError`.
pub fn plan_text(text: &str, opts: &PlanOptions) -> Result<Plan, PlanError> {
    if text.is_empty() {
        return Err(PlanError {
            problems: vec![Problem {
                span: Span::default(),
                message: EMPTY_DOCKERFILE.to_string(),
            }],
            findings: Vec::new(),
        });
    }
    let parsed = read(text);
    if !parsed.errors.is_empty() {
        return Err(PlanError {
            problems: parsed.errors,
            findings: parsed.warnings,
        });
    }
    plan(&parsed, opts)
}

/// Normalize an image reference like Docker does (`alpine` →
/// `docker.io/library/alpine:latest`); `None` when it is not a valid
/// reference.
pub fn normalize_reference(name: &str) -> Option<String> {
    crate::oci::Reference::parse(name)
        .ok()
        .map(|r| r.to_string())
}

#[cfg(test)]
mod tests;
