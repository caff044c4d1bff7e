//! Progress events: how library code tells its caller what a build (or a
//! registry transfer) is doing, without printing anything itself.
//!
//! The build engine and the registry client describe what happens as
//! [`Event`]s and hand them to a [`Reporter`]; the caller decides how they
//! look (rbuild's renderers are in `cli::render`). Every reporter must be
//! thread-safe (stages build in parallel, blobs transfer in parallel) and
//! must never fail the build: a closed or full output is ignored.
//!
//! Protocol for the engine: send `StepStarted` once per step, then any number
//! of `StepCacheMiss`/`StepLog`/`StepProgress`/`Blob`/`Retry`/`Warning`, then
//! exactly one of `StepCached`, `StepDone` or `StepFailed`. Send `BuildDone`
//! after the image is written and call [`Reporter::finish`] once at the very
//! end, also when the build failed (it prints the failure and warning
//! summaries). [`StepHandle`] wraps this protocol for one step and times it.
//!
//! Registry transfers report through a [`Transfer`]: for each blob any
//! number of `Blob` events with [`BlobState::Moving`] and then exactly one
//! final `Blob` event (any other state), and a `Retry` event for each failed
//! attempt that will be tried again, all tagged with the step they belong to.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub fn as_str(self) -> &'static str {
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
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Files => "files",
        }
    }
}

/// What a [`Event::Blob`] report says about its blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    /// Bytes are being transferred (`done` of `total`); not final.
    Moving,
    /// Downloaded or uploaded in full and verified.
    Transferred,
    /// Already there (in the store on pull, in the registry on push).
    Exists,
    /// Push: mounted from another repository of the registry.
    Mounted,
    /// The transfer failed for good (after retries).
    Failed,
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
    /// One blob of a registry transfer made by step `id`: `done` of `total`
    /// bytes, and whether it is still moving or how it ended. Blobs move in
    /// parallel; the step's progress is the sum over its blobs.
    Blob {
        id: StepId,
        digest: String,
        done: u64,
        total: u64,
        state: BlobState,
    },
    /// An attempt of step `id` failed and will be retried: one line naming
    /// what failed and why (no secrets: the same text errors carry).
    Retry { id: StepId, message: String },
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

    /// Where a registry transfer made by this step reports.
    pub fn transfer(&self) -> Transfer {
        Transfer {
            reporter: self.reporter.clone(),
            id: self.id,
        }
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

/// Where a registry transfer reports: `Blob` and `Retry` events of one
/// step. Cloned into every transfer thread; it never ends the step (the
/// [`StepHandle`] it came from does).
#[derive(Clone)]
pub struct Transfer {
    reporter: Arc<dyn Reporter>,
    id: StepId,
}

impl Transfer {
    /// Reports for step `id` of `reporter` (see [`StepHandle::transfer`]).
    pub fn new(reporter: Arc<dyn Reporter>, id: StepId) -> Self {
        Self { reporter, id }
    }

    pub fn blob(&self, digest: &str, done: u64, total: u64, state: BlobState) {
        self.reporter.event(Event::Blob {
            id: self.id,
            digest: digest.to_string(),
            done,
            total,
            state,
        });
    }

    pub fn retry(&self, message: &str) {
        self.reporter.event(Event::Retry {
            id: self.id,
            message: message.to_string(),
        });
    }
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transfer(step {})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps every event, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Event>>);

    impl Reporter for Recorder {
        fn event(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
        fn finish(&self) {}
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let (kind, id) = match e {
                    Event::StepStarted { id, .. } => ("started", Some(id)),
                    Event::StepCached { id, .. } => ("cached", Some(id)),
                    Event::StepCacheMiss { id, .. } => ("cache_miss", Some(id)),
                    Event::StepLog { id, .. } => ("log", Some(id)),
                    Event::StepProgress { id, .. } => ("progress", Some(id)),
                    Event::Blob { id, .. } => ("blob", Some(id)),
                    Event::Retry { id, .. } => ("retry", Some(id)),
                    Event::StepDone { id, .. } => ("done", Some(id)),
                    Event::StepFailed { id, .. } => ("failed", Some(id)),
                    Event::Warning { id, .. } => ("warning", id.as_ref()),
                    Event::BuildDone { .. } => ("build_done", None),
                };
                format!("{kind}:{}", id.map_or("-".to_string(), |i| i.to_string()))
            })
            .collect()
    }

    #[test]
    fn step_handle_sends_the_protocol() {
        let rec = Arc::new(Recorder::default());
        let r: Arc<dyn Reporter> = rec.clone();
        let step = StepHandle::start(Arc::clone(&r), 9, "[1/2] RUN true");
        step.cache_miss("no cache");
        step.log(Stream::Stdout, b"x");
        step.progress(1, Some(2), Unit::Files);
        step.warn("w");
        step.done();
        StepHandle::start(Arc::clone(&r), 10, "[2/2] COPY a b").cached(None);
        StepHandle::start(Arc::clone(&r), 11, "[2/2] RUN false").failed("exit code: 1");
        assert_eq!(
            kinds(&rec.0.lock().unwrap()),
            [
                "started:9",
                "cache_miss:9",
                "log:9",
                "progress:9",
                "warning:9",
                "done:9",
                "started:10",
                "cached:10",
                "started:11",
                "failed:11"
            ]
        );
        NullReporter.event(Event::StepStarted {
            id: 1,
            name: "ignored".to_string(),
        });
    }

    #[test]
    fn transfers_report_as_events_of_their_step() {
        let rec = Arc::new(Recorder::default());
        let step = StepHandle::start(rec.clone(), 4, "[internal] pull x");
        let transfer = step.transfer();
        let t2 = transfer.clone();
        std::thread::spawn(move || t2.blob("sha256:a", 5, 10, BlobState::Moving))
            .join()
            .unwrap();
        transfer.retry("GET blob: 503 (attempt 1 of 2)");
        transfer.blob("sha256:a", 10, 10, BlobState::Transferred);
        step.done();
        let events = rec.0.lock().unwrap();
        assert_eq!(
            kinds(&events),
            ["started:4", "blob:4", "retry:4", "blob:4", "done:4"]
        );
        assert_eq!(
            events[3],
            Event::Blob {
                id: 4,
                digest: "sha256:a".to_string(),
                done: 10,
                total: 10,
                state: BlobState::Transferred
            }
        );
        assert_eq!(format!("{transfer:?}"), "Transfer(step 4)");
    }
}
