//! `--push`: each layer the build writes for the image it pushes is
//! uploaded as soon as it is stored, on a thread of its own, while the
//! steps after it run; the push at the end then finds it in the registry
//! (its HEAD answers 200) and uploads only what is left, and the manifest.
//! A CI job's new layer (hundreds of MB) otherwise waits for the last step.
//!
//! Only blobs go early, never a manifest: a build that fails after an
//! early upload tags nothing (the registry keeps an unreferenced blob,
//! which its garbage collection removes). An early upload that fails is
//! forgotten: the push uploads the blob as it always did. A build that
//! ends (failed, interrupted) cancels the uploads in flight — their bodies
//! stop with an error, so the registry never commits them — and waits for
//! their threads. (An upload's `upload-read` thread, `registry::big_body`,
//! is not joined: it ends at its next piece once the request is gone.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::oci::{LayerRef, Reference};
use crate::plan::{Base, Plan};
use crate::registry::Settings;

/// The uploads of one build.
#[derive(Default)]
pub(crate) struct EarlyPush {
    /// Where the image goes: each `-t` of `--push`, once per repository.
    dests: Vec<Reference>,
    /// Stage labels whose layers are the image's (the target and the
    /// stages it is built `FROM`); another stage's layers are not pushed.
    stages: HashSet<String>,
    settings: Settings,
    cancel: Arc<AtomicBool>,
    uploads: Mutex<Vec<JoinHandle<bool>>>,
    started: Mutex<HashSet<String>>,
    /// Layers committed through a stream (`EarlyPush::stream`).
    streams_committed: Arc<AtomicUsize>,
}

impl EarlyPush {
    /// Nothing to do unless the build pushes (tags that do not parse are
    /// reported by the push itself).
    pub(crate) fn new(req: &super::BuildRequest, plan: &Plan, cache_scope: &str) -> Self {
        if !req.push {
            return EarlyPush::default();
        }
        let mut dests: Vec<Reference> = Vec::new();
        for t in &req.tags {
            if let Ok(r) = Reference::parse(t) {
                if !dests
                    .iter()
                    .any(|d| d.registry == r.registry && d.repository == r.repository)
                {
                    dests.push(r);
                }
            }
        }
        // The target and its FROM chain: at most one step per stage, so
        // the walk ends even for a plan whose chain repeated (the planner
        // only lets a stage build on an earlier one).
        let mut stages = HashSet::new();
        let mut at = Some(plan.target);
        for _ in 0..plan.stages.len() {
            let Some(i) = at.filter(|i| *i < plan.stages.len()) else {
                break;
            };
            let stage = &plan.stages[i];
            stages.insert(format!(
                "{cache_scope}/{}",
                super::build::stage_label(stage)
            ));
            at = match stage.base {
                Base::Stage(b) => Some(b),
                _ => None,
            };
        }
        EarlyPush {
            dests,
            stages,
            settings: req.registry.clone(),
            cancel: Arc::default(),
            uploads: Mutex::default(),
            started: Mutex::default(),
            streams_committed: Arc::default(),
        }
    }

    /// Whether the step `step_id`'s layers are the pushed image's.
    fn pushes(&self, step_id: &str) -> bool {
        let stage = step_id.rsplit_once('/').map_or("", |(s, _)| s);
        !self.dests.is_empty() && self.stages.contains(stage)
    }

    /// The step `step_id` stored `layer`: start sending it when it is one
    /// of the pushed image's.
    pub(crate) fn layer_written(
        &self,
        store: &crate::store::Store,
        step_id: &str,
        layer: &LayerRef,
    ) {
        self.send(store, step_id, layer, 0);
    }

    /// Uploads `layer` to the destinations from `first` on (those before
    /// it got it streamed).
    fn send(&self, store: &crate::store::Store, step_id: &str, layer: &LayerRef, first: usize) {
        if !self.pushes(step_id) {
            return;
        }
        let fresh = self
            .started
            .lock()
            .is_ok_and(|mut s| s.insert(layer.digest.clone()));
        if !fresh {
            return;
        }
        for dest in self.dests.iter().skip(first) {
            let (store, dest, settings) = (store.clone(), dest.clone(), self.settings.clone());
            let (digest, size, cancel) = (layer.digest.clone(), layer.size, self.cancel.clone());
            let thread = std::thread::Builder::new()
                .name("early-push".into())
                .spawn(move || {
                    // A failure is left to the push at the end.
                    let r = crate::registry::upload_blob(
                        &store, &digest, size, &dest, &settings, cancel,
                    );
                    matches!(r, Ok(crate::registry::BlobOutcome::Uploaded))
                });
            if let (Ok(t), Ok(mut u)) = (thread, self.uploads.lock()) {
                u.push(t);
            }
        }
    }

    /// A layer about to be written by the step `step_id`, streamed to the
    /// first destination while it is written (`registry::stream`), when
    /// it is one of the pushed image's. Only a layer the step writes is
    /// streamed: it is new in this build, so the HEAD that would skip it
    /// (impossible before its digest is known) would rarely find it.
    pub(crate) fn stream(&self, store: &crate::store::Store, step_id: &str) -> Option<LayerStream> {
        if !self.pushes(step_id) {
            return None;
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Piece>();
        let (decide, decided) = crossbeam_channel::bounded::<LayerRef>(1);
        let reader = PieceReader::new(rx);
        let (store, dest, settings) = (store.clone(), self.dests[0].clone(), self.settings.clone());
        let (cancel, committed) = (self.cancel.clone(), self.streams_committed.clone());
        let thread = std::thread::Builder::new()
            .name("stream-push".into())
            .spawn(move || {
                let mut kept: Option<LayerRef> = None;
                let streamed = crate::registry::upload_streamed(
                    &settings,
                    &dest,
                    Box::new(reader),
                    cancel.clone(),
                    || {
                        kept = decided.recv().ok();
                        kept.as_ref().map(|l| l.digest.clone())
                    },
                );
                if let Ok(crate::registry::Streamed::Committed) = streamed {
                    committed.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                // The stream failed before or at the commit: the stored
                // blob goes the usual way (HEAD first, retries).
                let layer = match (streamed, kept) {
                    (Err(_), None) => decided.recv().ok(),
                    (_, kept) => kept,
                };
                layer.is_some_and(|l| {
                    let r = crate::registry::upload_blob(
                        &store, &l.digest, l.size, &dest, &settings, cancel,
                    );
                    matches!(r, Ok(crate::registry::BlobOutcome::Uploaded))
                })
            })
            .ok()?;
        if let Ok(mut u) = self.uploads.lock() {
            u.push(thread);
        }
        Some(LayerStream {
            tx: Some(tx),
            decide: Some(decide),
            announced: 0,
        })
    }

    /// The streamed layer was stored as `layer`: the stream commits it
    /// under the digest its writer computed, and the other destinations
    /// get it the usual way.
    pub(crate) fn streamed(
        &self,
        store: &crate::store::Store,
        step_id: &str,
        mut stream: LayerStream,
        layer: &LayerRef,
    ) {
        if let Some(d) = stream.decide.take() {
            let _ = d.send(layer.clone());
        }
        self.send(store, step_id, layer, 1);
    }

    /// How many of the uploads [`EarlyPush::wait`] counted were streamed
    /// while their layer was written.
    pub(crate) fn streamed_count(&self) -> usize {
        self.streams_committed.load(Ordering::Relaxed)
    }

    /// Waits for the uploads started so far (before the push); returns
    /// how many blobs they uploaded.
    pub(crate) fn wait(&self) -> usize {
        let threads: Vec<JoinHandle<bool>> = match self.uploads.lock() {
            Ok(mut u) => u.drain(..).collect(),
            Err(_) => return 0,
        };
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or(false))
            .filter(|uploaded| *uploaded)
            .count()
    }
}

impl Drop for EarlyPush {
    /// The build is over: whatever is still uploading is abandoned.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.wait();
    }
}

/// What the writing side tells the upload: the blob's temp file, then how
/// far it has been written (flushed into the file), then its end. The
/// upload reads the bytes back from the file (from the page cache, as it
/// was just written), so a registry slower than the write costs no memory
/// and never makes the stream give up: before, every byte was copied into
/// a queue (up to 256 MiB) that a fresh CI runner's fast seeded write
/// filled, taking the job's peak RSS past 250 MB.
enum Piece {
    File(std::fs::File),
    Upto(u64),
    End(u64),
}

/// The writing side of a streamed layer upload (`EarlyPush::stream`).
/// Dropped without [`EarlyPush::streamed`], the upload is abandoned.
pub(crate) struct LayerStream {
    tx: Option<crossbeam_channel::Sender<Piece>>,
    decide: Option<crossbeam_channel::Sender<LayerRef>>,
    /// The length last announced.
    announced: u64,
}

impl LayerStream {
    /// The blob being written: the upload reads it back from `file`.
    pub(crate) fn attach(&mut self, file: std::fs::File) {
        self.send(Piece::File(file));
    }

    /// The first `len` bytes of the blob are in its file.
    pub(crate) fn advance(&mut self, len: u64) {
        if len > self.announced {
            self.announced = len;
            self.send(Piece::Upto(len));
        }
    }

    /// The blob is complete: `len` bytes, all in its file.
    pub(crate) fn end(&mut self, len: u64) {
        self.send(Piece::End(len));
        self.tx = None;
    }

    /// Gives up the stream: the body stops with an error, so the session
    /// is never committed (the stored blob is uploaded the usual way).
    pub(crate) fn give_up(&mut self) {
        self.tx = None;
    }

    fn send(&mut self, piece: Piece) {
        if let Some(tx) = &self.tx {
            if tx.send(piece).is_err() {
                self.tx = None;
            }
        }
    }
}

/// The upload's body: the blob's bytes, read back from its file as the
/// writer announces them; an error when the writer gave up or went away
/// before the end.
struct PieceReader {
    rx: crossbeam_channel::Receiver<Piece>,
    file: Option<std::fs::File>,
    /// Bytes of the blob read so far.
    at: u64,
    /// Bytes announced as in the file.
    avail: u64,
    ended: bool,
}

impl PieceReader {
    fn new(rx: crossbeam_channel::Receiver<Piece>) -> PieceReader {
        PieceReader {
            rx,
            file: None,
            at: 0,
            avail: 0,
            ended: false,
        }
    }
}

impl std::io::Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            if self.at < self.avail {
                let Some(file) = &self.file else {
                    return Err(std::io::Error::other("a layer stream without its file"));
                };
                let want = usize::try_from(self.avail - self.at).unwrap_or(usize::MAX);
                let len = buf.len().min(want);
                let n = file.read_at(&mut buf[..len], self.at)?;
                if n == 0 {
                    return Err(std::io::Error::other(
                        "the layer file is shorter than written",
                    ));
                }
                self.at += n as u64;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::File(f)) => self.file = Some(f),
                Ok(Piece::Upto(n)) => self.avail = n,
                Ok(Piece::End(n)) => {
                    self.avail = n;
                    self.ended = true;
                }
                Err(_) => return Err(std::io::Error::other("the layer write stopped")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pair() -> (LayerStream, PieceReader) {
        let (tx, rx) = crossbeam_channel::unbounded::<Piece>();
        let (decide, _) = crossbeam_channel::bounded::<LayerRef>(1);
        let stream = LayerStream {
            tx: Some(tx),
            decide: Some(decide),
            announced: 0,
        };
        let reader = PieceReader::new(rx);
        (stream, reader)
    }

    /// A stream attached to a file holding `bytes` (kept while the dir is).
    fn over(bytes: &[u8]) -> (tempfile::TempDir, LayerStream, PieceReader) {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("blob");
        std::fs::write(&path, bytes).unwrap();
        let (mut stream, reader) = pair();
        stream.attach(std::fs::File::open(&path).unwrap());
        (t, stream, reader)
    }

    #[test]
    fn the_body_is_the_file_as_announced_and_ends_with_it() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("blob");
        let mut w = std::fs::File::create(&path).unwrap();
        let (mut stream, mut reader) = pair();
        stream.attach(std::fs::File::open(&path).unwrap());
        w.write_all(b"first part|").unwrap();
        // Bytes written but not announced are not read yet.
        w.write_all(b"second").unwrap();
        stream.advance(11);
        let mut buf = [0u8; 64];
        let n = reader.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first part|");
        // An announcement never goes back.
        stream.advance(5);
        stream.end(17);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"second");
    }

    #[test]
    fn a_writer_gone_before_the_end_fails_the_body() {
        let (_t, mut stream, mut reader) = over(b"0123456789");
        stream.advance(4);
        drop(stream);
        let mut all = Vec::new();
        let err = reader.read_to_end(&mut all).unwrap_err();
        assert_eq!(all, b"0123");
        assert!(err.to_string().contains("the layer write stopped"), "{err}");
    }

    #[test]
    fn a_file_shorter_than_announced_fails_the_body() {
        let (_t, mut stream, mut reader) = over(b"abc");
        stream.end(10);
        let mut all = Vec::new();
        let err = reader.read_to_end(&mut all).unwrap_err();
        assert!(err.to_string().contains("shorter than written"), "{err}");
    }

    #[test]
    fn a_given_up_stream_fails_the_body() {
        let (mut stream, mut reader) = pair();
        stream.give_up();
        stream.advance(3);
        let mut buf = [0u8; 8];
        assert!(reader.read(&mut buf).is_err());
    }
}
