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
use std::sync::atomic::{AtomicBool, Ordering};
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
        }
    }

    /// The step `step_id` stored `layer`: start sending it when it is one
    /// of the pushed image's.
    pub(crate) fn layer_written(
        &self,
        store: &crate::store::Store,
        step_id: &str,
        layer: &LayerRef,
    ) {
        let stage = step_id.rsplit_once('/').map_or("", |(s, _)| s);
        if self.dests.is_empty() || !self.stages.contains(stage) {
            return;
        }
        let fresh = self
            .started
            .lock()
            .is_ok_and(|mut s| s.insert(layer.digest.clone()));
        if !fresh {
            return;
        }
        for dest in &self.dests {
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
