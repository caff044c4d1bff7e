//! One executor per step kind, run by the stage driver (`stage.rs`) on a
//! cache miss: each turns a typed plan step into layer entries. COPY/ADD
//! (`copy.rs`), RUN (`run.rs`) and WORKDIR (`workdir.rs`) write layers;
//! config edits are `engine::config::apply`.

mod copy;
mod run;
mod workdir;

use crate::store::LockedTempDir;

use super::run::{RunArea, StepDirs};

use super::resolver::SourceView;

/// Temp dirs and source views a step's layer entries name files in: typed
/// guards, dropped (and so removed) once the layer is written.
#[derive(Default)]
pub(crate) struct KeepAlive {
    pub temps: Vec<LockedTempDir>,
    pub views: Vec<SourceView>,
    /// The last RUN's dirs (upper, or the fallback's copy), removed by
    /// `remover` rather than on the stage's thread.
    pub run_step: Option<StepDirs>,
    /// Whether `run_step`'s upper dir may become its layer's snapshot
    /// (an overlay RUN) once the layer is written.
    pub upper_adoptable: bool,
    remover: Remover,
    /// The stage's RUN dir (`run::RunArea`), which every RUN step's dirs
    /// are in: declared after `remover`, so it is dropped (and removed)
    /// only once the remover has finished with them.
    pub run_area: Option<RunArea>,
}

impl KeepAlive {
    pub fn clear(&mut self) {
        self.temps.clear();
        self.views.clear();
        self.upper_adoptable = false;
        if let Some(step) = self.run_step.take() {
            self.remover.remove(step);
        }
    }
}

/// Removes RUN step dirs on a thread of its own, so the next step does not
/// wait for it: removing them right after the sandbox ends took 0.5-9 ms
/// a step (median ~4, docs/benchmarks.md, "Per RUN step"). Dropping it
/// (with the stage) waits for every removal, so no dir outlives the build;
/// the stage's RUN dir stays locked meanwhile, so no sweep takes it early.
#[derive(Default)]
struct Remover {
    tx: Option<crossbeam_channel::Sender<StepDirs>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Remover {
    fn remove(&mut self, step: StepDirs) {
        if self.tx.is_none() {
            let (tx, rx) = crossbeam_channel::unbounded::<StepDirs>();
            let spawned = std::thread::Builder::new()
                .name("run-dir-remover".into())
                .spawn(move || {
                    // Dropping a step's dirs removes them.
                    for step in rx {
                        drop(step);
                    }
                });
            // Without a thread the dirs are removed here, as before.
            let Ok(thread) = spawned else {
                return drop(step);
            };
            self.tx = Some(tx);
            self.thread = Some(thread);
        }
        if let Some(Err(e)) = self.tx.as_ref().map(|tx| tx.send(step)) {
            drop(e.into_inner());
        }
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once it is empty.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}
