//! The build renderers, driven with a manual clock: exact output per mode.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::progress::{BlobState, Event, Reporter, StepHandle, StepId, Stream, Unit};

/// A `Write` whose bytes the test can read after the reporter is done with it.
#[derive(Clone, Default)]
pub(super) struct Sink(Arc<Mutex<Vec<u8>>>);

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
    pub(super) fn text(&self) -> String {
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

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn started(id: StepId, name: &str) -> Event {
    Event::StepStarted {
        id,
        name: name.to_string(),
    }
}

pub(super) fn log(id: StepId, text: &str) -> Event {
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
fn auto_mode_picks_tty_only_on_a_terminal() {
    assert_eq!(resolve(Mode::Auto, true), Mode::Tty);
    assert_eq!(resolve(Mode::Auto, false), Mode::Plain);
    assert_eq!(resolve(Mode::Json, true), Mode::Json);
    assert_eq!(resolve(Mode::Tty, false), Mode::Tty);
}

/// A pull inside a build: its blobs' bytes add up into the step's progress
/// (throttled like any progress), and a retried attempt is a line of the
/// step's log as it happens.
#[test]
fn plain_sums_a_transfers_blobs_and_logs_its_retries() {
    let (r, sink, clock) = plain();
    let r: Arc<dyn Reporter> = Arc::new(r);
    let step = StepHandle::start(r.clone(), 1, "[internal] pull busybox");
    let t = step.transfer();
    t.blob("sha256:a", 0, 1_000_000, BlobState::Moving);
    t.blob("sha256:b", 500_000, 2_000_000, BlobState::Moving); // throttled
    t.retry("fetching blob sha256:a: 503 (attempt 1 of 3; retrying in 0.1 s)");
    clock.set(ms(1_500));
    t.blob("sha256:a", 1_000_000, 1_000_000, BlobState::Transferred);
    t.blob("sha256:b", 2_000_000, 2_000_000, BlobState::Transferred);
    r.event(Event::StepDone {
        id: 1,
        duration: ms(1_500),
    });
    assert_eq!(
        sink.text(),
        "#1 [internal] pull busybox\n\
         #1 0 B / 1.00 MB 0.0s\n\
         #1 0.000 fetching blob sha256:a: 503 (attempt 1 of 3; retrying in 0.1 s)\n\
         #1 1.50 MB / 3.00 MB 1.5s\n\
         #1 3.00 MB / 3.00 MB 1.5s done\n\
         #1 DONE 1.5s\n"
    );
}
