//! Progress output: a live TTY view, BuildKit-style plain lines, JSON events.
//!
//! The build engine describes what happens as [`Event`]s and hands them to a
//! [`Reporter`]; this module decides how they look. Every reporter is
//! thread-safe (stages build in parallel) and writes to stderr by default,
//! because stdout is kept for pipeable data. Output errors are ignored on
//! purpose: a closed or full stderr must never fail a build.
//!
//! Protocol for the engine: send `StepStarted` once per step, then any number
//! of `StepCacheMiss`/`StepLog`/`StepProgress`/`Warning`, then exactly one of
//! `StepCached`, `StepDone` or `StepFailed`. Send `BuildDone` after the image
//! is written and call [`Reporter::finish`] once at the very end, also when
//! the build failed (it prints the failure and warning summaries).
//! [`StepHandle`] wraps this protocol for one step and times it.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{DecimalBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};

/// The engine's identifier for a step; any value unique within one build.
/// Plain output numbers steps `#1`, `#2`, … in the order they start.
pub type StepId = u64;

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What a [`Event::StepProgress`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Files,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Files => "files",
        }
    }
}

/// Something that happened during a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step began; `name` is what users see, e.g. `[stage 2/3] COPY . /app`.
    StepStarted { id: StepId, name: String },
    /// The step's result came from the cache (terminal).
    StepCached { id: StepId, reason: Option<String> },
    /// The step must run; `reason` says why the cache did not apply.
    StepCacheMiss { id: StepId, reason: String },
    /// Raw output of a running command; need not end at a line break.
    StepLog {
        id: StepId,
        stream: Stream,
        bytes: Vec<u8>,
    },
    /// Work done so far on a long step (hashing a context, compressing a layer).
    StepProgress {
        id: StepId,
        current: u64,
        total: Option<u64>,
        unit: Unit,
    },
    /// The step finished successfully (terminal).
    StepDone { id: StepId, duration: Duration },
    /// The step failed (terminal).
    StepFailed { id: StepId, error: String },
    /// A lint or build warning, optionally tied to a step.
    Warning { id: Option<StepId>, message: String },
    /// The image was written.
    BuildDone { digest: String, tags: Vec<String> },
}

/// Receives build events and renders them.
pub trait Reporter: Send + Sync {
    fn event(&self, event: Event);
    /// Flushes partial output and prints the failure and warning summaries.
    fn finish(&self);
}

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

/// Discards everything (library use, `--quiet`, tests of other modules).
pub struct NullReporter;

impl Reporter for NullReporter {
    fn event(&self, _event: Event) {}
    fn finish(&self) {}
}

/// One running step: saves the engine from repeating the id and measures the
/// duration for `StepDone`. Ends with `cached`, `done` or `failed`, which
/// consume the handle so a step cannot end twice.
pub struct StepHandle {
    reporter: Arc<dyn Reporter>,
    id: StepId,
    started: Instant,
}

impl StepHandle {
    /// Sends `StepStarted`.
    pub fn start(reporter: Arc<dyn Reporter>, id: StepId, name: impl Into<String>) -> Self {
        reporter.event(Event::StepStarted {
            id,
            name: name.into(),
        });
        Self {
            reporter,
            id,
            started: Instant::now(),
        }
    }

    pub fn id(&self) -> StepId {
        self.id
    }

    pub fn cache_miss(&self, reason: impl Into<String>) {
        self.reporter.event(Event::StepCacheMiss {
            id: self.id,
            reason: reason.into(),
        });
    }

    pub fn log(&self, stream: Stream, bytes: &[u8]) {
        self.reporter.event(Event::StepLog {
            id: self.id,
            stream,
            bytes: bytes.to_vec(),
        });
    }

    pub fn progress(&self, current: u64, total: Option<u64>, unit: Unit) {
        self.reporter.event(Event::StepProgress {
            id: self.id,
            current,
            total,
            unit,
        });
    }

    pub fn warn(&self, message: impl Into<String>) {
        self.reporter.event(Event::Warning {
            id: Some(self.id),
            message: message.into(),
        });
    }

    pub fn cached(self, reason: Option<String>) {
        self.reporter.event(Event::StepCached {
            id: self.id,
            reason,
        });
    }

    /// Sends `StepDone` with the time since `start`.
    pub fn done(self) {
        self.reporter.event(Event::StepDone {
            id: self.id,
            duration: self.started.elapsed(),
        });
    }

    pub fn failed(self, error: impl Into<String>) {
        self.reporter.event(Event::StepFailed {
            id: self.id,
            error: error.into(),
        });
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

// ---------------------------------------------------------------------------
// Plain

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
        match event {
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

// ---------------------------------------------------------------------------
// JSON

/// One JSON object per line with a `type` field, e.g.
/// `{"type":"step_done","elapsed_ms":1200,"id":3,"duration_ms":400}`.
/// `elapsed_ms` is time since the build started. Log chunks are passed on
/// as they come (`text`, or `data_base64` when not UTF-8).
pub struct JsonReporter {
    state: Mutex<JsonState>,
    clock: Box<dyn Clock>,
}

struct JsonState {
    out: Box<dyn Write + Send>,
    steps: Steps,
}

impl JsonReporter {
    pub fn new(out: Box<dyn Write + Send>, clock: Box<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(JsonState {
                out,
                steps: Steps::default(),
            }),
            clock,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The event as a JSON object, or `None` when throttled away.
fn event_json(steps: &mut Steps, event: Event, now: Duration) -> Option<Map<String, Value>> {
    let mut obj = Map::new();
    let mut put = |k: &str, v: Value| {
        obj.insert(k.to_string(), v);
    };
    let kind = match &event {
        Event::StepStarted { .. } => "step_started",
        Event::StepCached { .. } => "step_cached",
        Event::StepCacheMiss { .. } => "step_cache_miss",
        Event::StepLog { .. } => "step_log",
        Event::StepProgress { .. } => "step_progress",
        Event::StepDone { .. } => "step_done",
        Event::StepFailed { .. } => "step_failed",
        Event::Warning { .. } => "warning",
        Event::BuildDone { .. } => "build_done",
    };
    put("type", json!(kind));
    put("elapsed_ms", json!(millis(now)));
    match event {
        Event::StepStarted { id, name } => {
            steps.start(id, &name, now);
            put("id", json!(id));
            put("name", json!(name));
        }
        Event::StepCached { id, reason } => {
            put("id", json!(id));
            if let Some(reason) = reason {
                put("reason", json!(reason));
            }
        }
        Event::StepCacheMiss { id, reason } => {
            put("id", json!(id));
            put("reason", json!(reason));
        }
        Event::StepLog { id, stream, bytes } => {
            put("id", json!(id));
            put("stream", json!(stream.as_str()));
            match String::from_utf8(bytes) {
                Ok(text) => put("text", json!(text)),
                Err(e) => {
                    use base64::Engine as _;
                    let data = base64::engine::general_purpose::STANDARD.encode(e.into_bytes());
                    put("data_base64", json!(data));
                }
            }
        }
        Event::StepProgress {
            id,
            current,
            total,
            unit,
        } => {
            if !steps
                .get(id, now)
                .note_progress(current, total, unit, now, JSON_PROGRESS_EVERY)
            {
                return None;
            }
            put("id", json!(id));
            put("current", json!(current));
            if let Some(total) = total {
                put("total", json!(total));
            }
            put("unit", json!(unit.as_str()));
        }
        Event::StepDone { id, duration } => {
            put("id", json!(id));
            put("duration_ms", json!(millis(duration)));
        }
        Event::StepFailed { id, error } => {
            put("id", json!(id));
            put("error", json!(error));
        }
        Event::Warning { id, message } => {
            if let Some(id) = id {
                put("id", json!(id));
            }
            put("message", json!(message));
        }
        Event::BuildDone { digest, tags } => {
            put("digest", json!(digest));
            put("tags", json!(tags));
        }
    }
    Some(obj)
}

impl Reporter for JsonReporter {
    fn event(&self, event: Event) {
        let now = self.clock.elapsed();
        let mut state = lock(&self.state);
        if let Some(obj) = event_json(&mut state.steps, event, now) {
            let line = Value::Object(obj).to_string();
            let _ = writeln!(state.out, "{line}");
            let _ = state.out.flush();
        }
    }

    fn finish(&self) {
        let _ = lock(&self.state).out.flush();
    }
}

// ---------------------------------------------------------------------------
// TTY

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
        match event {
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
    use super::*;

    /// A `Write` whose bytes the test can read after the reporter is done with it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).unwrap()
        }
    }

    fn plain() -> (PlainReporter, Sink, ManualClock) {
        let sink = Sink::default();
        let clock = ManualClock::default();
        let r = PlainReporter::new(Box::new(sink.clone()), Box::new(clock.clone()));
        (r, sink, clock)
    }

    fn json() -> (JsonReporter, Sink, ManualClock) {
        let sink = Sink::default();
        let clock = ManualClock::default();
        let r = JsonReporter::new(Box::new(sink.clone()), Box::new(clock.clone()));
        (r, sink, clock)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn started(id: StepId, name: &str) -> Event {
        Event::StepStarted {
            id,
            name: name.to_string(),
        }
    }

    fn log(id: StepId, text: &str) -> Event {
        Event::StepLog {
            id,
            stream: Stream::Stdout,
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn plain_renders_a_sequential_build() {
        let (r, sink, clock) = plain();
        r.event(started(10, "[1/3] FROM busybox"));
        r.event(Event::StepCached {
            id: 10,
            reason: None,
        });
        clock.set(ms(100));
        r.event(started(20, "[2/3] RUN make"));
        r.event(Event::StepCacheMiss {
            id: 20,
            reason: "build arg VERSION changed".to_string(),
        });
        clock.set(ms(223));
        r.event(log(20, "compiling\nlinking"));
        clock.set(ms(500));
        r.event(Event::StepDone {
            id: 20,
            duration: ms(400),
        });
        r.event(Event::BuildDone {
            digest: "sha256:abc".to_string(),
            tags: vec!["app:1".to_string()],
        });
        r.finish();
        assert_eq!(
            sink.text(),
            "#1 [1/3] FROM busybox\n\
             #1 CACHED\n\
             \n\
             #2 [2/3] RUN make\n\
             #2 cache miss: build arg VERSION changed\n\
             #2 0.123 compiling\n\
             #2 0.400 linking\n\
             #2 DONE 0.4s\n\
             \n\
             writing image sha256:abc done\n\
             naming to app:1 done\n"
        );
    }

    #[test]
    fn plain_repeats_headers_when_parallel_steps_interleave() {
        let (r, sink, _clock) = plain();
        r.event(started(1, "[a 1/2] RUN x"));
        r.event(started(2, "[b 1/2] RUN y"));
        r.event(log(1, "from a\n"));
        r.event(log(2, "from b\n"));
        r.event(Event::StepDone {
            id: 1,
            duration: ms(60),
        });
        assert_eq!(
            sink.text(),
            "#1 [a 1/2] RUN x\n\n#2 [b 1/2] RUN y\n\n#1 [a 1/2] RUN x\n#1 0.000 from a\n\n\
             #2 [b 1/2] RUN y\n#2 0.000 from b\n\n#1 [a 1/2] RUN x\n#1 DONE 0.1s\n"
        );
    }

    #[test]
    fn plain_summarises_failures_and_warnings_at_finish() {
        let (r, sink, clock) = plain();
        r.event(Event::Warning {
            id: None,
            message: "UndefinedVar: $FOO (line 3)".to_string(),
        });
        r.event(started(7, "[2/2] RUN false"));
        clock.set(ms(250));
        r.event(Event::StepLog {
            id: 7,
            stream: Stream::Stderr,
            bytes: b"oops\r\nno newline".to_vec(),
        });
        r.event(Event::StepFailed {
            id: 7,
            error: "exit code: 1".to_string(),
        });
        r.finish();
        r.finish();
        assert_eq!(
            sink.text(),
            "#1 [2/2] RUN false\n\
             #1 0.250 oops\n\
             #1 0.250 no newline\n\
             #1 ERROR\n\
             \n\
             ------\n \
             > [2/2] RUN false:\n\
             0.250 oops\n\
             0.250 no newline\n\
             ------\n\
             \n\
             1 warning found:\n \
             - UndefinedVar: $FOO (line 3)\n"
        );
    }

    #[test]
    fn plain_throttles_progress_and_shows_the_final_amount() {
        let (r, sink, clock) = plain();
        r.event(started(1, "[internal] load build context"));
        let progress = |current| Event::StepProgress {
            id: 1,
            current,
            total: None,
            unit: Unit::Bytes,
        };
        r.event(progress(1_000));
        clock.set(ms(500));
        r.event(progress(2_000_000)); // throttled: less than a second later
        clock.set(ms(1_200));
        r.event(progress(3_500_000));
        clock.set(ms(1_300));
        r.event(progress(4_000_000)); // throttled, but shown before DONE
        r.event(Event::StepDone {
            id: 1,
            duration: ms(1_300),
        });
        assert_eq!(
            sink.text(),
            "#1 [internal] load build context\n\
             #1 1.00 kB 0.0s\n\
             #1 3.50 MB 1.2s\n\
             #1 4.00 MB 1.3s\n\
             #1 DONE 1.3s\n"
        );
    }

    #[test]
    fn plain_marks_completed_progress_done() {
        let (r, sink, _clock) = plain();
        r.event(started(1, "hash"));
        for current in [0, 5] {
            r.event(Event::StepProgress {
                id: 1,
                current,
                total: Some(5),
                unit: Unit::Files,
            });
        }
        assert_eq!(
            sink.text(),
            "#1 hash\n#1 0 files / 5 files 0.0s\n#1 5 files / 5 files 0.0s done\n"
        );
    }

    #[test]
    fn json_emits_one_typed_object_per_line() {
        let (r, sink, clock) = json();
        r.event(started(3, "[1/1] COPY . /app"));
        r.event(Event::StepCacheMiss {
            id: 3,
            reason: "new file".to_string(),
        });
        clock.set(ms(1_500));
        r.event(log(3, "hi\n"));
        r.event(Event::StepLog {
            id: 3,
            stream: Stream::Stderr,
            bytes: vec![0xff, b'a'],
        });
        r.event(Event::StepProgress {
            id: 3,
            current: 10,
            total: Some(20),
            unit: Unit::Bytes,
        });
        r.event(Event::StepProgress {
            id: 3,
            current: 15,
            total: Some(20),
            unit: Unit::Bytes,
        }); // throttled
        r.event(Event::StepDone {
            id: 3,
            duration: ms(1_500),
        });
        r.event(Event::StepCached {
            id: 4,
            reason: Some("same key".to_string()),
        });
        r.event(Event::Warning {
            id: None,
            message: "careful".to_string(),
        });
        r.event(Event::StepFailed {
            id: 5,
            error: "boom".to_string(),
        });
        r.event(Event::BuildDone {
            digest: "sha256:d".to_string(),
            tags: vec!["a:1".to_string(), "b:2".to_string()],
        });
        r.finish();
        let expected = [
            r#"{"type":"step_started","elapsed_ms":0,"id":3,"name":"[1/1] COPY . /app"}"#,
            r#"{"type":"step_cache_miss","elapsed_ms":0,"id":3,"reason":"new file"}"#,
            r#"{"type":"step_log","elapsed_ms":1500,"id":3,"stream":"stdout","text":"hi\n"}"#,
            r#"{"type":"step_log","elapsed_ms":1500,"id":3,"stream":"stderr","data_base64":"/2E="}"#,
            r#"{"type":"step_progress","elapsed_ms":1500,"id":3,"current":10,"total":20,"unit":"bytes"}"#,
            r#"{"type":"step_done","elapsed_ms":1500,"id":3,"duration_ms":1500}"#,
            r#"{"type":"step_cached","elapsed_ms":1500,"id":4,"reason":"same key"}"#,
            r#"{"type":"warning","elapsed_ms":1500,"message":"careful"}"#,
            r#"{"type":"step_failed","elapsed_ms":1500,"id":5,"error":"boom"}"#,
            r#"{"type":"build_done","elapsed_ms":1500,"digest":"sha256:d","tags":["a:1","b:2"]}"#,
        ];
        assert_eq!(sink.text(), expected.join("\n") + "\n");
    }

    #[test]
    fn reporters_are_safe_to_share_between_threads() {
        let (r, sink, _clock) = plain();
        let r: Arc<dyn Reporter> = Arc::new(r);
        let handles: Vec<_> = (0..4u64)
            .map(|id| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    r.event(started(id, &format!("step {id}")));
                    for i in 0..50 {
                        r.event(log(id, &format!("line {i}\n")));
                    }
                    r.event(Event::StepDone {
                        id,
                        duration: ms(1),
                    });
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        r.finish();
        let text = sink.text();
        // Every line is whole: a header, a log line, DONE, or a block separator.
        let log_lines = text.lines().filter(|l| l.contains(" 0.000 line ")).count();
        assert_eq!(log_lines, 200);
        assert_eq!(
            text.lines().filter(|l| l.ends_with(" DONE 0.0s")).count(),
            4
        );
        assert!(text
            .lines()
            .all(|l| l.is_empty() || (l.starts_with('#') && !l[1..].contains('#'))));
    }

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

    #[test]
    fn step_handle_sends_the_protocol() {
        let (r, sink, _clock) = json();
        let r: Arc<dyn Reporter> = Arc::new(r);
        let step = StepHandle::start(Arc::clone(&r), 9, "[1/2] RUN true");
        step.cache_miss("no cache");
        step.log(Stream::Stdout, b"x");
        step.progress(1, Some(2), Unit::Files);
        step.warn("w");
        step.done();
        StepHandle::start(Arc::clone(&r), 10, "[2/2] COPY a b").cached(None);
        StepHandle::start(Arc::clone(&r), 11, "[2/2] RUN false").failed("exit code: 1");
        let types: Vec<String> = sink
            .text()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!("{}:{}", v["type"].as_str().unwrap(), v["id"])
            })
            .collect();
        assert_eq!(
            types,
            [
                "step_started:9",
                "step_cache_miss:9",
                "step_log:9",
                "step_progress:9",
                "warning:9",
                "step_done:9",
                "step_started:10",
                "step_cached:10",
                "step_started:11",
                "step_failed:11"
            ]
        );
        NullReporter.event(started(1, "ignored"));
    }

    #[test]
    fn auto_mode_picks_tty_only_on_a_terminal() {
        assert_eq!(resolve(Mode::Auto, true), Mode::Tty);
        assert_eq!(resolve(Mode::Auto, false), Mode::Plain);
        assert_eq!(resolve(Mode::Json, true), Mode::Json);
        assert_eq!(resolve(Mode::Tty, false), Mode::Tty);
    }
}
