//! The live terminal view (`--progress tty`, and `auto` on a terminal).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{format_progress, lock, secs, warnings_summary, Clock, Steps};
use crate::progress::{Event, Reporter, StepId, Unit};

const RUNNING_TEMPLATE: &str = "{spinner:.cyan} {prefix:.bold} {wide_msg:.dim} {elapsed:>4}";
const BYTES_TEMPLATE: &str =
    "{spinner:.cyan} {prefix:.bold} {bytes}/{total_bytes} ({bytes_per_sec}) {wide_msg:.dim} {elapsed:>4}";
const BYTES_NO_TOTAL_TEMPLATE: &str =
    "{spinner:.cyan} {prefix:.bold} {bytes} ({bytes_per_sec}) {wide_msg:.dim} {elapsed:>4}";
const FILES_TEMPLATE: &str =
    "{spinner:.cyan} {prefix:.bold} {pos}/{len} files {wide_msg:.dim} {elapsed:>4}";
const FILES_NO_TOTAL_TEMPLATE: &str =
    "{spinner:.cyan} {prefix:.bold} {pos} files {wide_msg:.dim} {elapsed:>4}";
const DONE_TEMPLATE: &str = "{prefix:.bold} {msg:.green}";
const FAILED_TEMPLATE: &str = "{prefix:.bold} {msg:.red}";

/// Templates are constants, so a parse failure is a bug; fall back to the
/// default look rather than panicking mid-build.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A live view: one line per step with a spinner, the latest output line,
/// byte counts and throughput while hashing or compressing, and `CACHED` /
/// `DONE 0.4s` / `ERROR` marks when a step ends.
pub struct TtyReporter {
    multi: MultiProgress,
    state: Mutex<TtyState>,
    /// Where the closing summary goes once the bars stop redrawing, so it
    /// ends up below them rather than above.
    summary: Mutex<Box<dyn Write + Send>>,
    clock: Box<dyn Clock>,
}

#[derive(Default)]
struct TtyState {
    steps: Steps,
    bars: HashMap<StepId, ProgressBar>,
    warnings: Vec<String>,
    /// `writing image …` / `naming to …`, printed by `finish` below the bars.
    result: Vec<String>,
    finished: bool,
}

impl TtyReporter {
    /// Bars draw to `target` (normally `ProgressDrawTarget::stderr()`); the
    /// final summary is written to `summary` (normally stderr).
    pub fn new(
        target: ProgressDrawTarget,
        summary: Box<dyn Write + Send>,
        clock: Box<dyn Clock>,
    ) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(target),
            state: Mutex::new(TtyState::default()),
            summary: Mutex::new(summary),
            clock,
        }
    }

    fn bar(&self, state: &mut TtyState, id: StepId, now: Duration) -> ProgressBar {
        if let Some(bar) = state.bars.get(&id) {
            return bar.clone();
        }
        let step = state.steps.get(id, now);
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(style(RUNNING_TEMPLATE));
        bar.set_prefix(format!("#{} {}", step.number, step.name));
        bar.enable_steady_tick(Duration::from_millis(120));
        state.bars.insert(id, bar.clone());
        bar
    }

    fn println(&self, line: &str) {
        // Ignored on purpose: see the module docs.
        let _ = self.multi.println(line);
    }

    fn handle(&self, state: &mut TtyState, event: Event, now: Duration) {
        match state.steps.as_step_event(event, now) {
            Event::StepStarted { id, name } => {
                state.steps.start(id, &name, now);
                let bar = self.bar(state, id, now);
                let number = state.steps.get(id, now).number;
                bar.set_prefix(format!("#{number} {name}"));
            }
            Event::StepCached { id, reason } => {
                let bar = self.bar(state, id, now);
                bar.set_style(style(DONE_TEMPLATE));
                let msg = match reason {
                    Some(r) => format!("CACHED ({r})"),
                    None => "CACHED".to_string(),
                };
                bar.finish_with_message(msg);
            }
            Event::StepCacheMiss { id, reason } => {
                self.bar(state, id, now)
                    .set_message(format!("cache miss: {reason}"));
            }
            Event::StepLog { id, stream, bytes } => {
                let lines = state.steps.get(id, now).push_log(stream, &bytes, now);
                if let Some(last) = lines.last() {
                    self.bar(state, id, now).set_message(last.clone());
                }
            }
            Event::StepProgress {
                id,
                current,
                total,
                unit,
            } => {
                state.steps.get(id, now).progress = Some((current, total, unit));
                let bar = self.bar(state, id, now);
                let template = match (unit, total.is_some()) {
                    (Unit::Bytes, true) => BYTES_TEMPLATE,
                    (Unit::Bytes, false) => BYTES_NO_TOTAL_TEMPLATE,
                    (Unit::Files, true) => FILES_TEMPLATE,
                    (Unit::Files, false) => FILES_NO_TOTAL_TEMPLATE,
                };
                bar.set_style(style(template));
                if let Some(total) = total {
                    bar.set_length(total);
                }
                bar.set_position(current);
            }
            Event::StepDone { id, duration } => {
                let step = state.steps.get(id, now);
                step.flush_partial(now);
                let mut msg = format!("DONE {:.1}s", secs(duration));
                if let Some((current, total, unit)) = step.progress {
                    msg = format!("{} {msg}", format_progress(current, total, unit));
                }
                let bar = self.bar(state, id, now);
                bar.set_style(style(DONE_TEMPLATE));
                bar.finish_with_message(msg);
            }
            Event::StepFailed { id, error } => {
                state.steps.get(id, now).flush_partial(now);
                state.steps.fail(id, &error, now);
                let bar = self.bar(state, id, now);
                bar.set_style(style(FAILED_TEMPLATE));
                bar.abandon_with_message("ERROR");
            }
            Event::Warning { id, message } => {
                let line = match id {
                    Some(id) => format!("#{} WARNING: {message}", state.steps.get(id, now).number),
                    None => format!("WARNING: {message}"),
                };
                self.println(&line);
                state.warnings.push(message);
            }
            // `as_step_event` turned these into progress and log lines.
            Event::Blob { .. } | Event::Retry { .. } => {}
            Event::BuildDone { digest, tags } => {
                state.result.push(format!("writing image {digest} done"));
                state
                    .result
                    .extend(tags.iter().map(|t| format!("naming to {t} done")));
            }
        }
    }
}

impl Reporter for TtyReporter {
    fn event(&self, event: Event) {
        let now = self.clock.elapsed();
        let mut state = lock(&self.state);
        self.handle(&mut state, event, now);
    }

    fn finish(&self) {
        let now = self.clock.elapsed();
        let mut state = lock(&self.state);
        if std::mem::replace(&mut state.finished, true) {
            return;
        }
        // Steps that never ended (the build stopped early) stop spinning.
        for bar in state.bars.values().filter(|b| !b.is_finished()) {
            bar.abandon();
        }
        let ids: Vec<StepId> = state.steps.by_id.keys().copied().collect();
        for id in ids {
            state.steps.get(id, now).flush_partial(now);
        }
        // The bars are drawn in their final state; stop redrawing so the
        // summary can be written below them.
        self.multi.set_draw_target(ProgressDrawTarget::hidden());
        let blocks = [
            state.result.clone(),
            state.steps.failure_summary(),
            warnings_summary(&state.warnings),
        ];
        let mut out = lock(&self.summary);
        for block in blocks.iter().filter(|b| !b.is_empty()) {
            let _ = writeln!(out);
            for line in block {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{log, ms, started, Sink};
    use super::super::ManualClock;
    use super::*;

    #[test]
    fn tty_marks_steps_cached_done_and_failed() {
        let clock = ManualClock::default();
        let sink = Sink::default();
        let r = TtyReporter::new(
            ProgressDrawTarget::hidden(),
            Box::new(sink.clone()),
            Box::new(clock.clone()),
        );
        r.event(started(1, "[1/3] FROM alpine"));
        r.event(Event::StepCached {
            id: 1,
            reason: None,
        });
        r.event(started(2, "[2/3] COPY . /app"));
        r.event(Event::StepProgress {
            id: 2,
            current: 1_500_000,
            total: Some(3_000_000),
            unit: Unit::Bytes,
        });
        r.event(Event::StepDone {
            id: 2,
            duration: ms(2_000),
        });
        r.event(started(3, "[3/3] RUN make"));
        r.event(log(3, "building\n"));
        r.event(Event::StepFailed {
            id: 3,
            error: "exit code: 2".to_string(),
        });
        let state = lock(&r.state);
        let bar = |id| state.bars.get(&id).unwrap();
        assert_eq!(bar(1).prefix(), "#1 [1/3] FROM alpine");
        assert_eq!(bar(1).message(), "CACHED");
        assert!(bar(1).is_finished());
        assert_eq!(bar(2).message(), "1.50 MB / 3.00 MB DONE 2.0s");
        assert_eq!(bar(2).length(), Some(3_000_000));
        assert_eq!(bar(3).message(), "ERROR");
        assert!(bar(3).is_finished());
        drop(state);
        r.event(Event::BuildDone {
            digest: "sha256:d".to_string(),
            tags: vec![],
        });
        r.finish();
        assert_eq!(
            sink.text(),
            "\nwriting image sha256:d done\n\n------\n > [3/3] RUN make:\n0.000 building\n------\n"
        );
    }

    #[test]
    fn tty_templates_parse() {
        for t in [
            RUNNING_TEMPLATE,
            BYTES_TEMPLATE,
            BYTES_NO_TOTAL_TEMPLATE,
            FILES_TEMPLATE,
            FILES_NO_TOTAL_TEMPLATE,
            DONE_TEMPLATE,
            FAILED_TEMPLATE,
        ] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }
}
