//! Transfer progress of `rbuild pull` and `rbuild push` on stderr: a bar
//! per blob on a terminal (blobs move in parallel), else one line per
//! finished blob, and each retried attempt as a `warning:` line as it
//! happens. Sizes only, never URLs. Only `Blob` and `Retry` events show;
//! the step around the transfer is the command itself.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::lock;
use crate::progress::{BlobState, Event, Reporter};

/// The reporter for a transfer whose moved blobs are called `verb`
/// ("pulled", "pushed").
pub fn reporter(verb: &'static str) -> Arc<dyn Reporter> {
    if std::io::stderr().is_terminal() {
        Arc::new(BarsReporter::new(verb, ProgressDrawTarget::stderr()))
    } else {
        Arc::new(LinesReporter::new(verb, Box::new(std::io::stderr())))
    }
}

/// The word for how a blob ended: `verb` only when its bytes really moved;
/// `None` while they are still moving.
fn outcome_word(verb: &'static str, state: BlobState) -> Option<&'static str> {
    match state {
        BlobState::Moving => None,
        BlobState::Transferred => Some(verb),
        BlobState::Exists => Some("exists"),
        BlobState::Mounted => Some("mounted"),
        BlobState::Failed => Some("failed"),
    }
}

/// The one line a non-terminal gets per blob, at its final report.
fn blob_line(verb: &'static str, digest: &str, total: u64, state: BlobState) -> Option<String> {
    let word = outcome_word(verb, state)?;
    let short = digest.get(..19).unwrap_or(digest);
    Some(match state {
        BlobState::Failed => format!("{word} {short}"),
        _ => format!("{word} {short} {total} bytes"),
    })
}

/// One line per finished blob, for logs.
pub struct LinesReporter {
    verb: &'static str,
    out: Mutex<Box<dyn Write + Send>>,
}

impl LinesReporter {
    pub fn new(verb: &'static str, out: Box<dyn Write + Send>) -> Self {
        Self {
            verb,
            out: Mutex::new(out),
        }
    }
}

impl Reporter for LinesReporter {
    fn event(&self, event: Event) {
        let line = match event {
            Event::Blob {
                digest,
                total,
                state,
                ..
            } => blob_line(self.verb, &digest, total, state),
            Event::Retry { message, .. } => Some(format!("warning: {message}")),
            _ => None,
        };
        if let Some(line) = line {
            // Ignored on purpose: see the module docs of `render`.
            let _ = writeln!(lock(&self.out), "{line}");
        }
    }

    fn finish(&self) {
        let _ = lock(&self.out).flush();
    }
}

/// A bar per blob, on a terminal.
struct BarsReporter {
    verb: &'static str,
    multi: MultiProgress,
    style: ProgressStyle,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl BarsReporter {
    fn new(verb: &'static str, target: ProgressDrawTarget) -> Self {
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        Self {
            verb,
            multi: MultiProgress::with_draw_target(target),
            style,
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn blob(&self, digest: String, done: u64, total: u64, state: BlobState) {
        let short = digest.get(7..19).unwrap_or(&digest).to_string();
        let mut bars = lock(&self.bars);
        let bar = bars.entry(digest).or_insert_with(|| {
            let b = self.multi.add(ProgressBar::new(total));
            b.set_style(self.style.clone());
            b.set_prefix(format!("{} {short}", self.verb));
            b
        });
        bar.set_length(total);
        bar.set_position(done);
        if let Some(word) = outcome_word(self.verb, state) {
            bar.set_prefix(format!("{word} {short}"));
            bar.finish();
        }
    }
}

impl Reporter for BarsReporter {
    fn event(&self, event: Event) {
        match event {
            Event::Blob {
                digest,
                done,
                total,
                state,
                ..
            } => self.blob(digest, done, total, state),
            // Above the bars, so they keep drawing below it.
            Event::Retry { message, .. } => {
                let _ = self.multi.println(format!("warning: {message}"));
            }
            _ => {}
        }
    }

    fn finish(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::StepHandle;

    #[test]
    fn one_line_per_blob_naming_what_happened() {
        let at = |state| blob_line("pulled", "sha256:0123456789abcdef0123", 10, state);
        // Bytes moving, even all of them, are not yet an outcome.
        assert_eq!(at(BlobState::Moving), None);
        assert_eq!(
            at(BlobState::Transferred).as_deref(),
            Some("pulled sha256:0123456789ab 10 bytes")
        );
        assert_eq!(
            at(BlobState::Exists).as_deref(),
            Some("exists sha256:0123456789ab 10 bytes")
        );
        assert_eq!(
            at(BlobState::Mounted).as_deref(),
            Some("mounted sha256:0123456789ab 10 bytes")
        );
        assert_eq!(
            at(BlobState::Failed).as_deref(),
            Some("failed sha256:0123456789ab")
        );
    }

    #[test]
    fn lines_show_finished_blobs_and_retries_only() {
        let sink = super::super::tests::Sink::default();
        let r: Arc<dyn Reporter> = Arc::new(LinesReporter::new("pushed", Box::new(sink.clone())));
        let step = StepHandle::start(r.clone(), 1, "push x");
        let t = step.transfer();
        t.blob("sha256:aaaaaaaaaaaaaaaaaaaaaa", 5, 10, BlobState::Moving);
        t.retry("uploading blob: 503 (attempt 1 of 2; retrying in 0.1 s)");
        t.blob(
            "sha256:aaaaaaaaaaaaaaaaaaaaaa",
            10,
            10,
            BlobState::Transferred,
        );
        t.blob("sha256:bbbbbbbbbbbbbbbbbbbbbb", 3, 3, BlobState::Mounted);
        step.done();
        r.finish();
        assert_eq!(
            sink.text(),
            "warning: uploading blob: 503 (attempt 1 of 2; retrying in 0.1 s)\n\
             pushed sha256:aaaaaaaaaaaa 10 bytes\n\
             mounted sha256:bbbbbbbbbbbb 3 bytes\n"
        );
    }

    #[test]
    fn bars_name_each_blob_and_finish_at_its_outcome() {
        let r = BarsReporter::new("pulled", ProgressDrawTarget::hidden());
        let a = "sha256:0123456789abcdef0123";
        r.event(Event::Blob {
            id: 1,
            digest: a.to_string(),
            done: 4,
            total: 10,
            state: BlobState::Moving,
        });
        {
            let bars = lock(&r.bars);
            assert_eq!(bars[a].prefix(), "pulled 0123456789ab");
            assert_eq!(bars[a].position(), 4);
            assert!(!bars[a].is_finished());
        }
        r.event(Event::Blob {
            id: 1,
            digest: a.to_string(),
            done: 10,
            total: 10,
            state: BlobState::Exists,
        });
        let bars = lock(&r.bars);
        assert_eq!(bars[a].prefix(), "exists 0123456789ab");
        assert!(bars[a].is_finished());
    }
}
