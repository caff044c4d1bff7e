//! One executor per step kind, run by the stage driver (`stage.rs`) on a
//! cache miss: each turns a typed plan step into layer entries. COPY/ADD
//! (`copy.rs`), RUN (`run.rs`) and WORKDIR (`workdir.rs`) write layers;
//! config edits are `engine::config::apply`.

mod copy;
mod run;
mod workdir;

use crate::store::LockedTempDir;

use super::resolver::SourceView;

/// Temp dirs and source views a step's layer entries name files in: typed
/// guards, dropped (and so removed) once the layer is written.
#[derive(Default)]
pub(crate) struct KeepAlive {
    pub temps: Vec<LockedTempDir>,
    pub views: Vec<SourceView>,
    /// RUN dirs (upper, overlay work dir, or the fallback's copy), removed
    /// by `remover` rather than on the stage's thread.
    pub run_dirs: Vec<LockedTempDir>,
    /// The last RUN's overlay upper dir (inside the last of `run_dirs`),
    /// which may become its layer's snapshot once the layer is written.
    pub upper: Option<std::path::PathBuf>,
    remover: Remover,
}

impl KeepAlive {
    pub fn clear(&mut self) {
        self.temps.clear();
        self.views.clear();
        self.upper = None;
        for dir in self.run_dirs.drain(..) {
            self.remover.remove(dir);
        }
    }
}

/// Removes RUN dirs on a thread of its own, so the next step does not wait
/// for it: emptying the overlay's work dir right after the sandbox ends
/// took 0.5-9 ms a step (median ~4, docs/benchmarks.md, "Per RUN step").
/// Dropping it (with the stage) waits for every removal, so no dir
/// outlives the build; each stays locked, so no sweep takes it early.
#[derive(Default)]
struct Remover {
    tx: Option<crossbeam_channel::Sender<LockedTempDir>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Remover {
    fn remove(&mut self, dir: LockedTempDir) {
        if self.tx.is_none() {
            let (tx, rx) = crossbeam_channel::unbounded::<LockedTempDir>();
            let spawned = std::thread::Builder::new()
                .name("run-dir-remover".into())
                .spawn(move || {
                    for dir in rx {
                        super::run::remove_run_dir(dir);
                    }
                });
            // Without a thread the dir is removed here, as before.
            let Ok(thread) = spawned else {
                return super::run::remove_run_dir(dir);
            };
            self.tx = Some(tx);
            self.thread = Some(thread);
        }
        if let Some(Err(e)) = self.tx.as_ref().map(|tx| tx.send(dir)) {
            super::run::remove_run_dir(e.into_inner());
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
