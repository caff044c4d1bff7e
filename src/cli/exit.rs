//! The one place a failed command becomes a message and an exit code.
//!
//! Library code returns typed errors (carried in `anyhow` chains, with the
//! context each layer adds); [`report`] prints the chain once, moves every
//! `hint:` line to the end (each once), adds a hint where the error type
//! implies something to do, and picks the exit code of the error's class
//! (`engine::classify`). The codes are documented in docs/cli.md.

use std::fmt;

use crate::engine::ErrorKind;

/// Exit codes, one per class of failure (docs/cli.md, "Exit codes").
pub mod code {
    /// An error outside the classes below (a bug, an unexpected I/O error).
    pub const OTHER: i32 = 1;
    /// Bad arguments: clap's own code, also for flag values rbuild refuses.
    pub const USAGE: i32 = 2;
    /// The Dockerfile does not parse or plan; `rbuild check` found errors.
    pub const DOCKERFILE: i32 = 3;
    /// A build step failed (RUN, COPY/ADD, WORKDIR, USER lookups).
    pub const STEP: i32 = 4;
    /// A registry, the network or authentication failed.
    pub const REGISTRY: i32 = 5;
    /// The store is unsafe to use or its state is corrupt.
    pub const STORE: i32 = 6;
    /// The build context or the Dockerfile file cannot be read or fetched.
    pub const CONTEXT: i32 = 7;
    /// Interrupted by Ctrl-C: 128 + SIGINT, as shells report it (SIGTERM
    /// gives 143, SIGHUP 129).
    pub const INTERRUPTED: i32 = 130;
}

/// A command-line value rbuild refuses (after clap accepted its shape):
/// exits like clap's own usage errors. Reads as the error it wraps.
#[derive(Debug)]
pub struct UsageError(pub anyhow::Error);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for UsageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Mark `err` as a usage error.
pub fn usage(err: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(UsageError(err))
}

/// The exit code for `err`.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match crate::engine::classify(err) {
        ErrorKind::Interrupted => crate::engine::error::interrupt_exit_code(err),
        ErrorKind::Store => code::STORE,
        ErrorKind::Registry => code::REGISTRY,
        ErrorKind::Step => code::STEP,
        ErrorKind::Dockerfile => code::DOCKERFILE,
        ErrorKind::Context => code::CONTEXT,
        ErrorKind::Other if err.chain().any(|c| c.is::<UsageError>()) => code::USAGE,
        ErrorKind::Other => code::OTHER,
    }
}

/// Print `err` (once) and return its exit code.
pub fn report(err: &anyhow::Error) -> i32 {
    eprintln!("{}", render(err));
    exit_code(err)
}

/// The text of a failed command: `error: ` and the chain joined by `: `,
/// then the hints. Rendered Dockerfile diagnostics already carry
/// `FILE:LINE:COL: error:` and print as they are.
pub fn render(err: &anyhow::Error) -> String {
    if err.chain().count() == 1 {
        if let Some(d) = err.downcast_ref::<crate::check::Diagnostics>() {
            return d.to_string();
        }
        if let Some(d) = err.downcast_ref::<crate::engine::error::DockerfileErrors>() {
            let rendered: Vec<String> = d
                .problems
                .iter()
                .map(|p| crate::check::render(&d.file, &d.lines, p.span, "error", &p.message))
                .collect();
            return rendered.join("\n").trim_end().to_string();
        }
    }
    let mut parts: Vec<String> = Vec::new();
    let mut hints: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let mut lines = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("hint: ") {
                Some(h) => push_once(&mut hints, h.to_string()),
                None => lines.push(line),
            }
        }
        let text = lines.join("\n");
        // A layer that only repeats its cause (or is empty) adds nothing.
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    if hints.is_empty() {
        if let Some(h) = implied_hint(err) {
            hints.push(h);
        }
    }
    let mut out = format!("error: {}", parts.join(": "));
    for h in hints {
        out.push_str("\nhint: ");
        out.push_str(&h);
    }
    out
}

fn push_once(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// A hint the error's type implies, for errors whose message (kept as
/// BuildKit words it) has none.
fn implied_hint(err: &anyhow::Error) -> Option<String> {
    use crate::engine::users::UserError;
    let user = err.chain().find_map(|c| c.downcast_ref::<UserError>())?;
    Some(match user {
        UserError::UnknownUser(_) => "create the user in an earlier step (e.g. RUN adduser), \
                                      or give a numeric uid"
            .to_string(),
        UserError::UnknownGroup(_) => "create the group in an earlier step (e.g. RUN addgroup), \
                                       or give a numeric gid"
            .to_string(),
        UserError::Empty(_) => "name a user: USER name[:group] or uid[:gid]".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn hints_move_to_the_end_once() {
        let err = Err::<(), _>(anyhow::anyhow!("it broke\nhint: do x"))
            .context("while y")
            .context("while z\nhint: do x")
            .unwrap_err();
        assert_eq!(
            render(&err),
            "error: while z: while y: it broke\nhint: do x"
        );
    }

    #[test]
    fn usage_errors_exit_2_and_read_as_themselves() {
        let err = usage(anyhow::anyhow!(
            "--compression-level for gzip is 0-9, not 12"
        ));
        assert_eq!(exit_code(&err), code::USAGE);
        assert_eq!(
            render(&err),
            "error: --compression-level for gzip is 0-9, not 12"
        );
        assert_eq!(exit_code(&anyhow::anyhow!("x")), code::OTHER);
    }

    #[test]
    fn an_unknown_user_in_a_step_gets_a_hint() {
        let e = crate::engine::users::UserError::UnknownUser("app".into());
        let err = anyhow::Error::new(crate::engine::StepError::new(
            "Dockerfile",
            2,
            "USER app".into(),
            anyhow::Error::new(e).context("resolving USER app"),
        ));
        assert_eq!(exit_code(&err), code::STEP);
        assert_eq!(
            render(&err),
            "error: Dockerfile:2: USER app: resolving USER app: unable to find user app: \
             no matching entries in passwd file\nhint: create the user in an earlier step \
             (e.g. RUN adduser), or give a numeric uid"
        );
    }
}
