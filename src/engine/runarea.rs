//! A stage's RUN dir, `tmp/run-X` (a locked store temp dir), made at its
//! first RUN and removed with the stage. Every RUN of the stage shares the
//! sandbox's state dir `sandbox/` (only ever a mount point: each sandbox
//! mounts its private tmpfs over it inside its own mount namespace) and
//! two overlay work dirs `work-0/`, `work-1/`, used in turn; a step adds
//! `upper-N` (its overlay upper dir, which often becomes its layer's
//! snapshot) and, only when it needs one, `scratch-N` (a copied rootfs,
//! rw bind mounts). So a RUN makes one dir of its own on the store's disk
//! instead of five (RUN dir, upper, work dir, state dir, and the kernel's
//! `work/work`), on a filesystem where making inodes right after deletions
//! is slow (docs/benchmarks.md, "Per-RUN disk churn").
//!
//! A work dir must be emptied between mounts (a `volatile` overlay leaves
//! `work/incompat/volatile`, which the next mount refuses), and emptying
//! it on the step's path cost 0.5-9 ms a step: the step's dirs are removed
//! off that path (`exec::KeepAlive`'s remover), the work dir with them,
//! and the step after next waits for its work dir only if that removal
//! has not finished yet (it rarely has not: a layer write lies between).

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::Context;

use crate::sandbox;
use crate::store::{LockedTempDir, Store};

/// The overlay upper dir's name in a RUN dir (with `-N`).
const UPPER: &str = "upper";

/// Which of the two work dirs are empty, and a wakeup when one becomes so.
#[derive(Default)]
struct WorkDirs {
    clean: Mutex<[bool; 2]>,
    ready: Condvar,
}

pub struct RunArea {
    dir: LockedTempDir,
    steps: u32,
    work: Arc<WorkDirs>,
}

/// One step's dirs in a [`RunArea`], removed (best effort, as the store's
/// sweep of temp dirs reports what it cannot remove) when dropped, and its
/// work dir emptied for the step after next.
pub struct StepDirs {
    pub upper: PathBuf,
    pub scratch: PathBuf,
    pub work: PathBuf,
    slot: usize,
    dirs: Arc<WorkDirs>,
}

impl Drop for StepDirs {
    fn drop(&mut self) {
        for dir in [&self.upper, &self.scratch] {
            // Absent when adopted as a snapshot, or never made.
            let _ = std::fs::remove_dir_all(dir);
        }
        sandbox::clean_workdir(&self.work);
        let mut clean = self.dirs.clean.lock().unwrap_or_else(|e| e.into_inner());
        clean[self.slot] = true;
        self.dirs.ready.notify_all();
    }
}

impl RunArea {
    pub fn new(store: &Store) -> anyhow::Result<RunArea> {
        let dir = store.temp_dir("run-").context("creating RUN dirs")?;
        for sub in ["work-0", "work-1", "sandbox"] {
            let p = dir.path().join(sub);
            std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let work = Arc::new(WorkDirs {
            clean: Mutex::new([true, true]),
            ready: Condvar::new(),
        });
        Ok(RunArea {
            dir,
            steps: 0,
            work,
        })
    }

    /// The locked temp dir every step dir is in.
    pub fn holder(&self) -> &LockedTempDir {
        &self.dir
    }

    /// The sandbox state dir every step uses.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("sandbox")
    }

    /// The next step's dirs (none made yet), once its work dir is empty:
    /// the step two before has handed its dirs to the remover by now (the
    /// stage clears them after every step), so this waits for that removal
    /// at most.
    pub fn next_step(&mut self) -> StepDirs {
        self.steps += 1;
        let slot = (self.steps % 2) as usize;
        let mut clean = self.work.clean.lock().unwrap_or_else(|e| e.into_inner());
        while !clean[slot] {
            clean = self
                .work
                .ready
                .wait(clean)
                .unwrap_or_else(|e| e.into_inner());
        }
        clean[slot] = false;
        StepDirs {
            upper: self.dir.path().join(format!("{UPPER}-{}", self.steps)),
            scratch: self.dir.path().join(format!("scratch-{}", self.steps)),
            work: self.dir.path().join(format!("work-{slot}")),
            slot,
            dirs: self.work.clone(),
        }
    }
}

impl Drop for RunArea {
    fn drop(&mut self) {
        // Each step's drop has emptied its work dir; this covers a step
        // whose dirs outlived their drop (the kernel leaves `work/work`
        // mode 000, which a caller without root could not remove): the
        // rest goes with the dir's guard.
        for slot in 0..2 {
            sandbox::clean_workdir(&self.dir.path().join(format!("work-{slot}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_take_the_work_dirs_in_turn_and_wait_for_their_cleaning() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let mut area = RunArea::new(&store).unwrap();
        let one = area.next_step();
        let two = area.next_step();
        assert_ne!(one.work, two.work);
        std::fs::create_dir_all(one.work.join("work/incompat/volatile")).unwrap();
        std::fs::create_dir(&one.upper).unwrap();
        let (upper, work) = (one.upper.clone(), one.work.clone());
        // The third step waits until the first one's dirs are gone.
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(one);
        });
        let three = area.next_step();
        assert_eq!(three.work, work);
        assert!(!upper.exists());
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "emptied");
        t.join().unwrap();
        drop((two, three));
    }
}
