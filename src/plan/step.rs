//! The planner's output for one instruction: a typed step whose every value
//! was expanded and checked at plan time (so `rbuild check` reports what a
//! build would reject), and which the engine executes without reading flags
//! by name or parsing text a second time.

use std::collections::BTreeMap;

use crate::dockerfile::instructions::SourceContent;
use crate::dockerfile::{Heredoc, Span};

pub use crate::dockerfile::mount::{CacheSharing, Mount, MountType};

pub use super::history::Health;
use super::Base;

/// RUN/CMD/ENTRYPOINT/HEALTHCHECK CMD argument form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// Shell form: one command line, run through the stage's SHELL.
    Shell(String),
    /// Exec (JSON) form.
    Exec(Vec<String>),
}

/// One step of a stage, ready for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    /// The keyword as written (`run`, `RUN`).
    pub keyword: String,
    /// The instruction's text after the keyword, as written (for messages).
    pub original: String,
    /// Where the instruction is (for an inherited ONBUILD trigger: the FROM).
    pub span: Span,
    /// The build args (ARGs in scope) this step depends on: all of them for
    /// RUN (they are in its environment), else the ones its words used.
    pub build_args: BTreeMap<String, String>,
    /// BuildKit's progress name (`[stage-0 2/4] COPY . /app`), for steps
    /// that have one (ADD, COPY, RUN, WORKDIR).
    pub display_name: Option<String>,
    /// The image-history `created_by`; `None` for ONBUILD.
    pub created_by: Option<String>,
    /// Whether the history entry is `empty_layer`.
    pub empty_layer: bool,
    /// This step is a trigger inherited through ONBUILD.
    pub from_onbuild: bool,
}

impl Step {
    /// The upper-case instruction name (`RUN`).
    pub fn name(&self) -> String {
        self.keyword.to_ascii_uppercase()
    }

    /// The stages and images this step reads files from.
    pub fn sources(&self) -> Vec<&Base> {
        match &self.kind {
            StepKind::Copy(c) => c.from.iter().collect(),
            StepKind::Run(r) => r.mounts.iter().filter_map(|m| m.from.as_ref()).collect(),
            _ => Vec::new(),
        }
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    Run(RunStep),
    /// COPY and ADD.
    Copy(CopyStep),
    /// The path as written after expansion (relative paths join the
    /// stage's working directory at build time).
    Workdir(String),
    /// Everything that only changes the image config (and ARG, which
    /// changes nothing but the cache key chain).
    Config(ConfigEdit),
}

/// `RUN --network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The build's `--network`.
    Default,
    None,
    Host,
}

impl Network {
    /// The flag's value as written (what the cache key records).
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

/// One `RUN --mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    /// The spec after expansion, as written (part of the cache key).
    pub spec: String,
    pub mount: Mount,
    /// Where `from=` points, resolved.
    pub from: Option<Base>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStep {
    /// The command (RUN text is left to the shell: not expanded).
    pub cmd: Form,
    pub heredocs: Vec<Heredoc>,
    pub mounts: Vec<RunMount>,
    /// `--network`, when given.
    pub network: Option<Network>,
    /// The environment ARG values add (in declaration order).
    pub arg_env: Vec<(String, String)>,
    /// Proxy build args (`HTTP_PROXY`…), never in history or cache keys.
    pub proxy_env: BTreeMap<String, String>,
}

/// COPY or ADD with every word expanded and every flag checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStep {
    pub is_add: bool,
    pub sources: Vec<String>,
    /// Heredoc sources (`COPY <<EOF /dest`), bodies expanded when unquoted.
    pub contents: Vec<SourceContent>,
    pub dest: String,
    /// `--from`, resolved (COPY only).
    pub from: Option<Base>,
    /// `--chown`, expanded; names are resolved against the stage's
    /// `/etc/passwd` at build time.
    pub chown: Option<String>,
    /// `--chmod`, parsed (octal, at most 07777).
    pub chmod: Option<u32>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    /// ADD `--checksum`, checked to be a `sha256:` digest.
    pub checksum: Option<String>,
    /// ADD: extract local archives (`--unpack=false` turns it off).
    pub unpack: bool,
}

/// A change to the image config, every value final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigEdit {
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Cmd(Form),
    Entrypoint(Form),
    Shell(Vec<String>),
    User(String),
    Volume(Vec<String>),
    /// Port specs (`80/tcp`), ranges expanded, deduplicated.
    Expose(Vec<String>),
    StopSignal(String),
    Healthcheck(Health),
    /// An ONBUILD expression recorded in the config.
    Onbuild(String),
    Maintainer(String),
    /// ARG: nothing in the config; its values are in later steps' build args.
    Arg(Vec<(String, Option<String>)>),
}
