//! BuildKit-style plain lines (`--progress plain`, and whenever stderr is
//! not a terminal).

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use super::{format_progress, lock, secs, warnings_summary, Clock, Steps, PLAIN_PROGRESS_EVERY};
use crate::progress::{Event, Reporter, StepId, Unit};

/// BuildKit-style numbered lines for CI logs:
///
/// ```text
/// #2 [2/4] COPY . /app
/// #2 cache miss: source files changed
/// #2 0.123 some output line
/// #2 DONE 0.4s
/// ```
///
/// A header line repeats whenever output switches to another step, with a
/// blank line between blocks, so interleaved parallel steps stay readable.
pub struct PlainReporter {
    state: Mutex<PlainState>,
    clock: Box<dyn Clock>,
}

struct PlainState {
    out: Box<dyn Write + Send>,
    steps: Steps,
    current: Option<StepId>,
    wrote_any: bool,
    warnings: Vec<String>,
    finished: bool,
}

impl PlainReporter {
    pub fn new(out: Box<dyn Write + Send>, clock: Box<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(PlainState {
                out,
                steps: Steps::default(),
                current: None,
                wrote_any: false,
                warnings: Vec::new(),
                finished: false,
            }),
            clock,
        }
    }
}

impl PlainState {
    fn line(&mut self, text: &str) {
        // Ignored on purpose: see the module docs.
        let _ = writeln!(self.out, "{text}");
        self.wrote_any = true;
    }

    /// Starts a new block: a blank line after earlier output.
    fn new_block(&mut self, current: Option<StepId>) {
        if self.wrote_any {
            self.line("");
        }
        self.current = current;
    }

    /// Makes `id` the current step, printing its header if it was not.
    fn focus(&mut self, id: StepId, now: Duration) -> usize {
        let (number, header) = {
            let step = self.steps.get(id, now);
            (step.number, format!("#{} {}", step.number, step.name))
        };
        if self.current != Some(id) {
            self.new_block(Some(id));
            self.line(header.trim_end());
        }
        number
    }

    fn step_line(&mut self, id: StepId, text: &str, now: Duration) {
        let n = self.focus(id, now);
        self.line(&format!("#{n} {text}"));
    }

    fn flush_logs(&mut self, id: StepId, now: Duration) {
        let lines = self.steps.get(id, now).flush_partial(now);
        for l in lines {
            self.step_line(id, &l, now);
        }
    }

    fn progress_line(&mut self, id: StepId, progress: (u64, Option<u64>, Unit), now: Duration) {
        let (current, total, unit) = progress;
        let started = self.steps.get(id, now).started;
        let mut text = format!(
            "{} {:.1}s",
            format_progress(current, total, unit),
            secs(now.saturating_sub(started))
        );
        if total == Some(current) {
            text.push_str(" done");
        }
        self.step_line(id, &text, now);
    }

    fn event(&mut self, event: Event, now: Duration) {
        match self.steps.as_step_event(event, now) {
            Event::StepStarted { id, name } => {
                self.steps.start(id, &name, now);
                // Force the header even if this id was current before a restart.
                self.current = None;
                self.focus(id, now);
            }
            Event::StepCached { id, reason } => {
                let text = match reason {
                    Some(r) => format!("CACHED ({r})"),
                    None => "CACHED".to_string(),
                };
                self.step_line(id, &text, now);
            }
            Event::StepCacheMiss { id, reason } => {
                self.step_line(id, &format!("cache miss: {reason}"), now)
            }
            Event::StepLog { id, stream, bytes } => {
                let lines = self.steps.get(id, now).push_log(stream, &bytes, now);
                for l in lines {
                    self.step_line(id, &l, now);
                }
            }
            Event::StepProgress {
                id,
                current,
                total,
                unit,
            } => {
                if self.steps.get(id, now).note_progress(
                    current,
                    total,
                    unit,
                    now,
                    PLAIN_PROGRESS_EVERY,
                ) {
                    self.progress_line(id, (current, total, unit), now);
                }
            }
            Event::StepDone { id, duration } => {
                self.flush_logs(id, now);
                if let Some(p) = self.steps.get(id, now).unshown_progress() {
                    self.progress_line(id, p, now);
                }
                self.step_line(id, &format!("DONE {:.1}s", secs(duration)), now);
            }
            Event::StepFailed { id, error } => {
                self.flush_logs(id, now);
                self.steps.fail(id, &error, now);
                // The message itself is printed once, by the caller's final
                // `error:` line, which also says where (file:line, step).
                self.step_line(id, "ERROR", now);
            }
            Event::Warning { id, message } => {
                if let Some(id) = id {
                    self.step_line(id, &format!("WARNING: {message}"), now);
                }
                self.warnings.push(message);
            }
            // `as_step_event` turned these into progress and log lines.
            Event::Blob { .. } | Event::Retry { .. } => {}
            Event::BuildDone { digest, tags } => {
                self.new_block(None);
                self.line(&format!("writing image {digest} done"));
                for tag in tags {
                    self.line(&format!("naming to {tag} done"));
                }
            }
        }
    }

    fn finish(&mut self, now: Duration) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let mut ids: Vec<StepId> = self.steps.by_id.keys().copied().collect();
        ids.sort_by_key(|id| self.steps.by_id.get(id).map(|s| s.number));
        for id in ids {
            self.flush_logs(id, now);
        }
        for block in [
            self.steps.failure_summary(),
            warnings_summary(&self.warnings),
        ] {
            if !block.is_empty() {
                self.new_block(None);
                block.iter().for_each(|l| self.line(l));
            }
        }
        let _ = self.out.flush();
    }
}

impl Reporter for PlainReporter {
    fn event(&self, event: Event) {
        let now = self.clock.elapsed();
        let mut state = lock(&self.state);
        state.event(event, now);
        let _ = state.out.flush();
    }

    fn finish(&self) {
        let now = self.clock.elapsed();
        lock(&self.state).finish(now);
    }
}
