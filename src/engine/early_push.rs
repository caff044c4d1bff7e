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
//! their threads: nothing outlives the build.

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
        // The target and its FROM chain (bounded: a chain never repeats).
        let mut stages = HashSet::new();
        let mut at = Some(plan.target);
        while let Some(i) =
            at.filter(|i| stages.len() <= plan.stages.len() && *i < plan.stages.len())
        {
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
        let queued = Arc::new(AtomicUsize::new(0));
        let reader = PieceReader {
            rx,
            piece: Vec::new(),
            at: 0,
            queued: queued.clone(),
        };
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
            queued,
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

/// The most written bytes a stream holds before the upload takes them; a
/// registry slower than the write makes the stream give up (the stored
/// blob is uploaded after the write instead), never the write wait.
const STREAM_QUEUE_MAX: usize = 256 << 20;

enum Piece {
    Data(Vec<u8>),
    End,
}

/// The writing side of a streamed layer upload (`EarlyPush::stream`).
/// Dropped without [`EarlyPush::streamed`], the upload is abandoned.
pub(crate) struct LayerStream {
    tx: Option<crossbeam_channel::Sender<Piece>>,
    decide: Option<crossbeam_channel::Sender<LayerRef>>,
    queued: Arc<AtomicUsize>,
}

impl LayerStream {
    /// Bytes of the blob, in order, as they are written.
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        let Some(tx) = &self.tx else { return };
        let queued = self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        if queued + bytes.len() > STREAM_QUEUE_MAX || tx.send(Piece::Data(bytes.to_vec())).is_err()
        {
            // The body stops with an error: the session is never committed.
            self.tx = None;
        }
    }

    /// The blob is complete.
    pub(crate) fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Piece::End);
        }
    }
}

/// The upload's body: the pieces as the writer sends them; an error when
/// the writer gave up or went away before the end.
struct PieceReader {
    rx: crossbeam_channel::Receiver<Piece>,
    piece: Vec<u8>,
    at: usize,
    queued: Arc<AtomicUsize>,
}

impl std::io::Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(Piece::Data(d)) => {
                    self.queued.fetch_sub(d.len(), Ordering::Relaxed);
                    self.piece = d;
                    self.at = 0;
                }
                Ok(Piece::End) => return Ok(0),
                Err(_) => return Err(std::io::Error::other("the layer write stopped")),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
