//! `--progress rawjson`: one JSON object per event, for tools.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{lock, Clock, Steps, JSON_PROGRESS_EVERY};
use crate::progress::{Event, Reporter};

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
    let event = steps.as_step_event(event, now);
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
        // `as_step_event` turned these into progress and log events.
        Event::Blob { .. } | Event::Retry { .. } => return None,
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
        Event::Blob { .. } | Event::Retry { .. } => return None,
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
