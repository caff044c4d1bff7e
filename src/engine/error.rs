//! The build's typed failures and their classes.
//!
//! Errors travel up through `anyhow` (each layer adds what it was doing),
//! but every cause a user can act on is a typed value somewhere in the
//! chain: a rendered Dockerfile diagnostic (`check::Diagnostics`), a failed
//! step ([`StepError`], wrapping what went wrong in it, e.g. [`RunFailed`]),
//! a registry answer or transfer (`registry::RegistryError`, `ApiError`,
//! `TransferError`, a `reqwest` error), a store that is unsafe or corrupt
//! (`store::StoreError`), a build context problem (`context::ContextError`,
//! [`ContextFailure`]). [`classify`] reads the chain and names the class;
//! the CLI turns the class into an exit code (docs/cli.md, "Exit codes").

use std::fmt;
use std::sync::Arc;

/// What kind of failure ended a command. The CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The Dockerfile does not parse or plan (`FILE:LINE:COL`).
    Dockerfile,
    /// A step ran and failed: RUN exited non-zero or was killed, a COPY
    /// source is missing, USER/--chown names an unknown user.
    Step,
    /// Talking to a registry failed: network, TLS, auth, an error answer,
    /// a refused transfer.
    Registry,
    /// The store is unsafe to use or holds corrupt state.
    Store,
    /// The build context (or the Dockerfile file) cannot be read or fetched.
    Context,
    /// The build was interrupted (SIGINT/SIGTERM reached the step).
    Interrupted,
    /// Anything else (a bug, an unexpected I/O error).
    Other,
}

/// A step of the Dockerfile failed. Displays as `FILE:LINE: INSTRUCTION
/// TEXT`; the cause follows in the chain (`{:#}` prints both), typed.
#[derive(Debug)]
pub struct StepError {
    /// The Dockerfile's name as the user gave it.
    pub file: String,
    pub line: usize,
    /// The instruction as written, e.g. `RUN make all`.
    pub instruction: String,
    pub source: anyhow::Error,
}

impl StepError {
    pub fn new(file: &str, line: usize, instruction: String, source: anyhow::Error) -> Self {
        StepError {
            file: file.to_string(),
            line,
            instruction,
            source,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.instruction)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // `anyhow::Error` derefs to its outermost error itself, so the
        // typed causes below stay reachable by `downcast_ref`.
        Some(&*self.source)
    }
}

/// A RUN step's process did not succeed.
#[derive(Debug, thiserror::Error)]
#[error("process {argv:?} did not complete successfully: exit code: {exit_code}{note}")]
pub struct RunFailed {
    /// The command line, joined by spaces.
    pub argv: String,
    /// Its exit status; 128+N when signal N killed it.
    pub exit_code: i32,
    /// More about why (e.g. a full filesystem), starting with a newline.
    pub note: String,
}

impl RunFailed {
    /// Whether an interrupt (SIGINT, SIGTERM or SIGHUP) ended the process.
    pub fn interrupted(&self) -> bool {
        [libc::SIGINT, libc::SIGTERM, libc::SIGHUP].contains(&(self.exit_code - 128))
    }
}

/// An error with a hint that belongs after its whole chain (`{:#}` prints
/// the chain, then the `hint:` line). The chain ends here for `source()`,
/// so the hint is not printed in the middle of it; [`classify`] still looks
/// inside.
#[derive(Debug)]
pub struct Hinted {
    pub source: anyhow::Error,
    pub hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}\nhint: {}", self.source, self.hint)
    }
}

impl std::error::Error for Hinted {}

/// The build context or the Dockerfile could not be read or fetched. Reads
/// as the error it wraps; shared, because every step that needs the
/// context gets the one scan's error.
#[derive(Debug, Clone)]
pub struct ContextFailure(pub Arc<anyhow::Error>);

impl ContextFailure {
    pub fn wrap(err: anyhow::Error) -> anyhow::Error {
        anyhow::Error::new(ContextFailure(Arc::new(err)))
    }
}

impl fmt::Display for ContextFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl std::error::Error for ContextFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The exit status for an interrupted build: 128 + the signal (130 for
/// SIGINT), as shells report a process the signal ended.
pub fn interrupt_exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|c| {
            c.downcast_ref::<super::cancel::Interrupted>()
                .map(|i| i.exit_code())
                .or_else(|| c.downcast_ref::<RunFailed>().map(|r| r.exit_code))
        })
        .unwrap_or(128 + libc::SIGINT)
}

/// The class of `err`, read from the typed causes in its chain.
///
/// A store, registry or context-scan cause wins over the step it happened
/// in (the step is not at fault, and a registry error may be worth
/// retrying); a context error of the step's own (a COPY source is missing)
/// is the step's failure.
pub fn classify(err: &anyhow::Error) -> ErrorKind {
    let (mut step, mut root, mut fallback) = (false, None, None);
    // The chain, with each `Hinted`'s own chain spliced in.
    let mut causes: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next.take() {
        for cause in e.chain() {
            causes.push(cause);
            if let Some(h) = cause.downcast_ref::<Hinted>() {
                next = Some(&h.source);
            }
        }
    }
    for cause in causes {
        if cause.is::<StepError>() {
            step = true;
        } else if let Some(kind) = root_kind(cause) {
            root = Some(match (root, kind) {
                // The innermost store/registry cause decides, except that
                // an interrupt always does.
                (Some(ErrorKind::Interrupted), _) => ErrorKind::Interrupted,
                _ => kind,
            });
        } else if fallback.is_none() {
            fallback = outer_kind(cause);
        }
    }
    match (root, step, fallback) {
        (Some(kind), _, _) => kind,
        (None, true, _) => ErrorKind::Step,
        (None, false, Some(kind)) => kind,
        (None, false, None) => ErrorKind::Other,
    }
}

/// Causes that decide the class even inside a step.
fn root_kind(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    use crate::registry::{body::TransferError, ApiError, RegistryError};
    if cause.is::<super::cancel::Interrupted>()
        || cause
            .downcast_ref::<RunFailed>()
            .is_some_and(RunFailed::interrupted)
    {
        return Some(ErrorKind::Interrupted);
    }
    if cause.is::<crate::store::StoreError>() {
        return Some(ErrorKind::Store);
    }
    if cause.is::<ContextFailure>() {
        return Some(ErrorKind::Context);
    }
    if cause.is::<RegistryError>()
        || cause.is::<ApiError>()
        || cause.is::<TransferError>()
        || cause.is::<reqwest::Error>()
    {
        return Some(ErrorKind::Registry);
    }
    None
}

/// Causes that decide the class only outside a step.
fn outer_kind(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    if cause.is::<DockerfileErrors>() || cause.is::<crate::plan::PlanError>() {
        return Some(ErrorKind::Dockerfile);
    }
    if cause.is::<crate::context::ContextError>() {
        return Some(ErrorKind::Context);
    }
    None
}

/// The Dockerfile did not plan: every problem with its position, and the
/// text the positions point into, so the CLI can render each with its
/// source line and a caret. (Rendering is the CLI's: the engine only
/// reports.)
#[derive(Debug)]
pub struct DockerfileErrors {
    pub file: String,
    pub lines: Vec<String>,
    pub problems: Vec<crate::plan::Problem>,
}

impl std::fmt::Display for DockerfileErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self
            .problems
            .iter()
            .map(|p| {
                format!(
                    "{}:{}:{}: {}",
                    self.file,
                    p.span.start_line,
                    p.span.column.max(1),
                    p.message
                )
            })
            .collect();
        f.write_str(&shown.join("\n"))
    }
}

impl std::error::Error for DockerfileErrors {}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn step(source: anyhow::Error) -> anyhow::Error {
        anyhow::Error::new(StepError::new("Dockerfile", 3, "RUN x".into(), source))
    }

    fn run_failed(code: i32) -> anyhow::Error {
        anyhow::Error::new(RunFailed {
            argv: "/bin/sh -c x".into(),
            exit_code: code,
            note: String::new(),
        })
    }

    #[test]
    fn a_failed_run_is_a_step_failure_and_reads_once() {
        let err = step(run_failed(3));
        assert_eq!(classify(&err), ErrorKind::Step);
        assert_eq!(
            format!("{err:#}"),
            "Dockerfile:3: RUN x: process \"/bin/sh -c x\" did not complete successfully: exit code: 3"
        );
        assert!(err.chain().any(|c| c.is::<RunFailed>()));
    }

    #[test]
    fn a_hinted_error_prints_its_hint_last_and_keeps_its_class() {
        let corrupt = crate::store::StoreError::Corrupt {
            what: "index",
            path: "/s/index.json".into(),
            why: "EOF".into(),
            hint: "h",
        };
        let inner = anyhow::Error::new(corrupt).context("reading");
        let err = anyhow::Error::new(Hinted {
            source: inner,
            hint: "free space".into(),
        })
        .context("COPY");
        assert!(
            format!("{err:#}").ends_with("\nhint: free space"),
            "{err:#}"
        );
        assert_eq!(classify(&err), ErrorKind::Store);
    }

    #[test]
    fn an_interrupted_run_is_interrupted() {
        let err = step(run_failed(128 + libc::SIGINT));
        assert_eq!(classify(&err), ErrorKind::Interrupted);
        let err = step(run_failed(128 + libc::SIGKILL));
        assert_eq!(classify(&err), ErrorKind::Step);
    }

    #[test]
    fn store_and_registry_causes_win_over_the_step() {
        let corrupt = crate::store::StoreError::Corrupt {
            what: "index",
            path: "/s/index.json".into(),
            why: "EOF".into(),
            hint: "h",
        };
        let err = step(anyhow::Error::new(corrupt).context("resolving app"));
        assert_eq!(classify(&err), ErrorKind::Store);
        let net = crate::registry::RegistryError::wrap(anyhow::anyhow!("pulling r.io/a"));
        assert_eq!(classify(&step(net)), ErrorKind::Registry);
    }

    #[test]
    fn context_errors_are_the_steps_inside_one_and_the_contexts_outside() {
        let missing = || crate::context::ContextError::NotFound { src: "a".into() };
        assert_eq!(
            classify(&step(anyhow::Error::new(missing()))),
            ErrorKind::Step
        );
        let outside = anyhow::Error::new(missing()).context("scanning");
        assert_eq!(classify(&outside), ErrorKind::Context);
        let df = Err::<(), _>(DockerfileErrors {
            file: "D".into(),
            lines: vec!["x".into()],
            problems: Vec::new(),
        })
        .context("planning")
        .unwrap_err();
        assert_eq!(classify(&df), ErrorKind::Dockerfile);
        assert_eq!(classify(&anyhow::anyhow!("other")), ErrorKind::Other);
    }
}
