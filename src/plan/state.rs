//! BuildKit's per-stage dispatch state (environment, ARGs in scope, SHELL,
//! WORKDIR, once-per-stage instructions) and the size limits planning keeps:
//! the environment is indexed by name so planning stays linear in the file.

use std::collections::{HashMap, HashSet};

use crate::dockerfile::shell::Env;

use super::stage::{problem, DEFAULT_PATH};
use super::Span;
use super::{BaseConfig, Problem};

/// Which once-per-stage instructions were seen, and where.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    pub(super) cmd: Option<Span>,
    pub(super) entrypoint: Option<Span>,
    pub(super) healthcheck: Option<Span>,
}

/// The most bytes of ENV and ARG names and values one stage may hold. A
/// RUN gets all of them in its environment, which Linux caps at a few MiB
/// (`ARG_MAX`), so nothing larger could build; the cap stops a file that
/// copies a large value over and over from exhausting memory.
pub(super) const MAX_ENV_BYTES: usize = 8 << 20;

/// The most bytes the planned steps of one build may hold in total (their
/// expanded words, history text and build args). Each RUN carries every ARG
/// in scope, so a hostile file could otherwise make the plan quadratic in
/// its own size.
pub(super) const MAX_PLAN_BYTES: usize = 256 << 20;

/// The error for a plan past [`MAX_PLAN_BYTES`], at the line that crossed it.
pub(super) fn plan_too_big(span: Span) -> Problem {
    problem(
        span,
        format!(
            "the planned steps exceed {} MiB (expanded words, history, build args and stage environments); the Dockerfile repeats large values too often",
            MAX_PLAN_BYTES >> 20
        ),
    )
}

/// BuildKit's dispatch state for one stage.
#[derive(Clone, Debug)]
pub(super) struct State {
    /// The state's environment: ENV and ARG values, in order.
    env: Vec<(String, String)>,
    /// Position of each name in `env`, so lookups and updates cost the same
    /// with 50,000 variables as with 5.
    env_index: HashMap<String, usize>,
    /// Bytes of names and values in `env` (see [`MAX_ENV_BYTES`]).
    env_bytes: usize,
    /// ARGs in scope (`d.buildArgs`), with their values.
    pub(super) args: Vec<(String, Option<String>)>,
    /// The names in `args`.
    arg_names: HashSet<String>,
    pub(super) shell: Vec<String>,
    pub(super) workdir: String,
    /// Whether every variable of the base is known (scratch, a stage, or a
    /// base image whose config was given) — UndefinedVar needs this.
    pub(super) env_known: bool,
    pub(super) onbuild: Vec<String>,
    pub(super) seen: Seen,
    /// A WORKDIR was set in this Dockerfile (WorkdirRelativePath).
    pub(super) workdir_set: bool,
}

/// Word expansion reads the state directly: no copy of the environment
/// per word (which made 10,000 ENV lines take 39 s).
impl Env for State {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl State {
    pub(super) fn new(env_known: bool) -> Self {
        State {
            env: Vec::new(),
            env_index: HashMap::new(),
            env_bytes: 0,
            args: Vec::new(),
            arg_names: HashSet::new(),
            shell: Vec::new(),
            workdir: String::new(),
            env_known,
            onbuild: Vec::new(),
            seen: Seen::default(),
            workdir_set: false,
        }
    }

    pub(super) fn get(&self, k: &str) -> Option<&String> {
        self.env_index.get(k).map(|&i| &self.env[i].1)
    }

    pub(super) fn set(&mut self, k: &str, v: &str) {
        match self.env_index.get(k) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.env[i].1, v.to_string());
                self.env_bytes = self.env_bytes - old.len() + v.len();
            }
            None => {
                self.env_index.insert(k.to_string(), self.env.len());
                self.env.push((k.to_string(), v.to_string()));
                self.env_bytes += k.len() + v.len();
            }
        }
    }

    /// [`State::set`] for values from the Dockerfile, within [`MAX_ENV_BYTES`].
    pub(super) fn set_checked(&mut self, k: &str, v: &str, span: Span) -> Result<(), Problem> {
        self.set(k, v);
        if self.env_bytes > MAX_ENV_BYTES {
            return Err(problem(
                span,
                format!(
                    "the stage's ENV and ARG values exceed {} MiB (setting {k}); no RUN could receive such an environment",
                    MAX_ENV_BYTES >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Bytes of ENV and ARG values held, for the plan's size budget.
    pub(super) fn bytes(&self) -> usize {
        self.env_bytes
    }

    pub(super) fn push_arg(&mut self, k: &str, v: Option<String>) {
        self.arg_names.insert(k.to_string());
        self.args.push((k.to_string(), v));
    }

    pub(super) fn is_arg(&self, k: &str) -> bool {
        self.arg_names.contains(k)
    }

    pub(super) fn env_len(&self) -> usize {
        self.env.len()
    }

    pub(super) fn env_names(&self) -> Vec<&String> {
        self.env.iter().map(|(k, _)| k).collect()
    }

    pub(super) fn apply_config(&mut self, cfg: &BaseConfig) {
        for (k, v) in &cfg.env {
            self.set(k, v);
        }
        self.shell = cfg.shell.clone();
        self.workdir = cfg.workdir.clone();
        self.env_known = true;
    }

    pub(super) fn ensure_path(&mut self) {
        if self.get("PATH").is_none() {
            self.set("PATH", DEFAULT_PATH);
        }
    }
}
