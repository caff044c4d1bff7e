//! The sandboxes running now, so an interrupt can end them from a signal
//! handler: a fixed table of pids, read and written with atomics only
//! (async-signal-safe, no lock).

use std::sync::atomic::{AtomicI32, Ordering};

/// More RUN steps than this at once (parallel stages) are simply not
/// listed: an interrupt then reaches them only through the terminal's
/// process group, or when they end.
const SLOTS: usize = 64;

static PIDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
/// The signal [`signal_all`] sent (0: none): a sandbox listed after it gets
/// it too, so one that was starting during the interrupt does not run on.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// A listed pid; unlisted on drop. Drop it before reaping the process, so
/// the pid cannot be recycled while listed.
pub(crate) struct Listed(Option<usize>);

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            PIDS[i].store(0, Ordering::SeqCst);
        }
    }
}

/// List `pid` (a sandbox's stage one: killing it ends the whole sandbox).
pub(crate) fn list(pid: u32) -> Listed {
    let Ok(pid) = i32::try_from(pid) else {
        return Listed(None);
    };
    let slot = PIDS.iter().position(|p| {
        p.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    });
    // Listed first, then checked: `signal_all` stores first, then reads
    // the table, so one of the two sees the other.
    let pending = PENDING.load(Ordering::SeqCst);
    if pending != 0 {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(pid, pending);
        }
    }
    Listed(slot)
}

/// Send `signal` to every listed sandbox, and to every one listed later.
/// Async-signal-safe.
pub fn signal_all(signal: i32) {
    PENDING.store(signal, Ordering::SeqCst);
    for p in &PIDS {
        let pid = p.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe; the pid is unreaped.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_takes_a_slot_until_dropped() {
        let pid = std::process::id();
        let a = list(pid);
        let i = a.0.expect("a free slot");
        assert_eq!(PIDS[i].load(Ordering::SeqCst), pid as i32);
        drop(a);
        assert_eq!(PIDS[i].load(Ordering::SeqCst), 0);
    }
}
