//! How progress looks: renderers of the `progress` event protocol.
//!
//! `plain` writes BuildKit-style numbered lines for CI logs, `tty` a live
//! view with a bar per step, `rawjson` one JSON object per event, and
//! `transfer` the per-blob lines or bars of `rbuild pull`/`push`. All of
//! them write to stderr by default, because stdout is kept for pipeable
//! data. Output errors are ignored on purpose: a closed or full stderr
//! must never fail a build.
//!
//! This module holds what the build renderers share: the mode choice, an
//! injectable clock, and per-step bookkeeping (log lines split and stamped,
//! progress throttled, a failed step's last lines kept for the summary).

mod plain;
mod rawjson;
pub mod transfer;
mod tty;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{DecimalBytes, ProgressDrawTarget};

use crate::progress::{Event, NullReporter, Reporter, StepId, Stream, Unit};

pub use plain::PlainReporter;
pub use rawjson::JsonReporter;
pub use tty::TtyReporter;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `Tty` when stderr is a terminal, else `Plain`.
    Auto,
    Tty,
    Plain,
    Json,
    /// Nothing at all.
    Quiet,
}

/// A reporter for `mode` writing to stderr.
pub fn reporter(mode: Mode) -> Arc<dyn Reporter> {
    match resolve(mode, std::io::stderr().is_terminal()) {
        Mode::Tty => Arc::new(TtyReporter::new(
            ProgressDrawTarget::stderr(),
            Box::new(std::io::stderr()),
            Box::new(SystemClock::default()),
        )),
        Mode::Quiet => Arc::new(NullReporter),
        Mode::Json => Arc::new(JsonReporter::new(
            Box::new(std::io::stderr()),
            Box::new(SystemClock::default()),
        )),
        _ => Arc::new(PlainReporter::new(
            Box::new(std::io::stderr()),
            Box::new(SystemClock::default()),
        )),
    }
}

/// The concrete mode `Auto` stands for, given whether stderr is a terminal.
fn resolve(mode: Mode, stderr_is_terminal: bool) -> Mode {
    match mode {
        Mode::Auto if stderr_is_terminal => Mode::Tty,
        Mode::Auto => Mode::Plain,
        other => other,
    }
}

/// Time since the build started; injectable so output is reproducible in tests.
pub trait Clock: Send + Sync {
    fn elapsed(&self) -> Duration;
}

/// Wall-clock time since the reporter was created.
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for SystemClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn set(&self, at: Duration) {
        let millis = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        self.0.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn elapsed(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// How many log lines of a step are kept for its failure summary.
const LOG_TAIL_LINES: usize = 10;
/// Minimum time between two progress lines of one step in plain output.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Minimum time between two progress events of one step in JSON output.
const JSON_PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Progress output must keep working after a panic on another thread.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Renderer-independent bookkeeping for one step.
#[derive(Default)]
struct StepState {
    number: usize,
    name: String,
    started: Duration,
    /// Bytes after the last line break, per stream.
    partial: HashMap<Stream, Vec<u8>>,
    /// The last log lines, prefixed with their time since the step started.
    tail: VecDeque<String>,
    progress: Option<(u64, Option<u64>, Unit)>,
    /// When a progress update was last rendered, and at which position.
    progress_shown: Option<(Duration, u64)>,
    error: Option<String>,
    /// (done, total) per blob of a registry transfer, by digest.
    blobs: BTreeMap<String, (u64, u64)>,
}

impl StepState {
    /// Splits `bytes` into complete lines, keeping the rest for later.
    fn push_log(&mut self, stream: Stream, bytes: &[u8], now: Duration) -> Vec<String> {
        let buf = self.partial.entry(stream).or_default();
        buf.extend_from_slice(bytes);
        let Some(last_break) = buf.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = buf.split_off(last_break + 1);
        let complete = std::mem::replace(buf, rest);
        let lines: Vec<String> = complete[..complete.len() - 1]
            .split(|b| *b == b'\n')
            .map(decode_line)
            .collect();
        lines.into_iter().map(|l| self.remember(l, now)).collect()
    }

    /// Returns any unterminated output as final lines.
    fn flush_partial(&mut self, now: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(buf) = self.partial.remove(&stream).filter(|b| !b.is_empty()) {
                lines.push(self.remember(decode_line(&buf), now));
            }
        }
        lines
    }

    /// Formats a line as `<seconds since step start> <text>` and keeps it in the tail.
    fn remember(&mut self, line: String, now: Duration) -> String {
        let stamped = format!("{:.3} {line}", secs(now.saturating_sub(self.started)));
        if self.tail.len() == LOG_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(stamped.clone());
        stamped
    }

    /// Records a progress update; true when it should be rendered now.
    fn note_progress(
        &mut self,
        current: u64,
        total: Option<u64>,
        unit: Unit,
        now: Duration,
        every: Duration,
    ) -> bool {
        self.progress = Some((current, total, unit));
        let complete = total == Some(current);
        let due = match self.progress_shown {
            None => true,
            Some((at, shown)) => shown != current && (complete || now.saturating_sub(at) >= every),
        };
        if due {
            self.progress_shown = Some((now, current));
        }
        due
    }

    /// The last progress position if it was never rendered.
    fn unshown_progress(&self) -> Option<(u64, Option<u64>, Unit)> {
        let (current, total, unit) = self.progress?;
        match self.progress_shown {
            Some((_, shown)) if shown == current => None,
            _ => Some((current, total, unit)),
        }
    }
}

fn decode_line(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Steps by engine id, numbered in the order they are first seen.
#[derive(Default)]
struct Steps {
    by_id: HashMap<StepId, StepState>,
    /// Failed steps in failure order, for the summary.
    failed: Vec<StepId>,
}

impl Steps {
    fn get(&mut self, id: StepId, now: Duration) -> &mut StepState {
        let next = self.by_id.len() + 1;
        self.by_id.entry(id).or_insert_with(|| StepState {
            number: next,
            started: now,
            ..StepState::default()
        })
    }

    fn start(&mut self, id: StepId, name: &str, now: Duration) -> &mut StepState {
        let step = self.get(id, now);
        step.name = name.to_string();
        step.started = now;
        step
    }

    fn fail(&mut self, id: StepId, error: &str, now: Duration) -> &mut StepState {
        if !self.failed.contains(&id) {
            self.failed.push(id);
        }
        let step = self.get(id, now);
        step.error = Some(error.to_string());
        step
    }

    /// A registry transfer's events in the terms of a build step: a blob's
    /// bytes add up with the step's other blobs (they move in parallel) into
    /// one `StepProgress`, and a retried attempt is a line of the step's
    /// log, shown as it happens (a slow registry is not silent until it
    /// fails). Other events pass unchanged.
    fn as_step_event(&mut self, event: Event, now: Duration) -> Event {
        match event {
            Event::Blob {
                id,
                digest,
                done,
                total,
                ..
            } => {
                let step = self.get(id, now);
                step.blobs.insert(digest, (done, total));
                let (current, total) = step
                    .blobs
                    .values()
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                Event::StepProgress {
                    id,
                    current,
                    total: Some(total),
                    unit: Unit::Bytes,
                }
            }
            Event::Retry { id, message } => Event::StepLog {
                id,
                stream: Stream::Stderr,
                bytes: format!("{message}\n").into_bytes(),
            },
            other => other,
        }
    }

    /// `------` blocks naming each failed step with its last output lines.
    fn failure_summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        for step in self.failed.iter().filter_map(|id| self.by_id.get(id)) {
            out.push("------".to_string());
            out.push(format!(" > {}:", step.name));
            out.extend(step.tail.iter().cloned());
            out.push("------".to_string());
        }
        out
    }
}

fn format_amount(n: u64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => DecimalBytes(n).to_string(),
        Unit::Files => format!("{n} files"),
    }
}

/// `1.50 MB / 3.00 MB` or `12 files`.
fn format_progress(current: u64, total: Option<u64>, unit: Unit) -> String {
    match total {
        Some(total) => format!(
            "{} / {}",
            format_amount(current, unit),
            format_amount(total, unit)
        ),
        None => format_amount(current, unit),
    }
}

fn warnings_summary(warnings: &[String]) -> Vec<String> {
    if warnings.is_empty() {
        return Vec::new();
    }
    let noun = if warnings.len() == 1 {
        "warning"
    } else {
        "warnings"
    };
    let mut out = vec![format!("{} {noun} found:", warnings.len())];
    out.extend(warnings.iter().map(|w| format!(" - {w}")));
    out
}
