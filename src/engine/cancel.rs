//! Interrupting a build: the first SIGINT, SIGTERM or SIGHUP asks the build
//! to stop; a second one (a second later or more) ends the process at once.
//!
//! Dying of the first signal would leave the build's temp dirs and RUN
//! work dirs behind (the next `Store::open` sweeps them) and the terminal
//! mid-redraw. Instead the signal is noted; every stage checks at each step
//! boundary and unwinds with [`Interrupted`], so the guards clean up and the
//! CLI exits with 128 + the signal (130 for Ctrl-C). The RUN steps in
//! progress get the signal too (`sandbox::running`), so they end at once.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// The signal that asked the build to stop (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// When it came (CLOCK_MONOTONIC, ms).
static FIRST_MS: AtomicU64 = AtomicU64::new(0);
/// Signals this soon after the first are the same interrupt arriving twice
/// (a terminal's Ctrl-C reaches the process group, and rbuild's user
/// namespace parent forwards it too), not a second request.
const SAME_INTERRUPT_MS: u64 = 1000;

/// The build was interrupted by `signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.signal))]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    /// The exit status shells use for a process this signal ended.
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

/// CLOCK_MONOTONIC in ms (clock_gettime is async-signal-safe).
fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer; async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe calls here: atomics, clock_gettime(), kill(),
    // signal(), raise().
    let now = now_ms().max(1);
    if let Err(first) = FIRST_MS.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
        if now.saturating_sub(first) < SAME_INTERRUPT_MS {
            return;
        }
        // SAFETY: resetting a disposition and raising are async-signal-safe.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
        return;
    }
    SIGNAL.store(signal, Ordering::SeqCst);
    // A signal sent to rbuild alone (not its process group) ends the RUN
    // steps in progress too, so the build does not wait for them.
    crate::sandbox::running::signal_all(signal);
}

/// Catch SIGINT, SIGTERM and SIGHUP for the rest of the process (the CLI
/// calls this for builds). Processes rbuild execs get the default
/// dispositions back (exec resets caught signals).
pub fn install() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches an atomic and async-signal-safe calls.
        // A failure leaves the default (the process dies of the signal).
        let _ = unsafe { sigaction(s, &action) };
    }
}

/// `Err(Interrupted)` once a signal asked the build to stop.
pub fn check() -> Result<(), Interrupted> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        signal => Err(Interrupted { signal }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_signal_and_its_exit_code() {
        let i = Interrupted {
            signal: libc::SIGINT,
        };
        assert_eq!(i.to_string(), "interrupted by SIGINT");
        assert_eq!(i.exit_code(), 130);
        assert_eq!(
            Interrupted {
                signal: libc::SIGTERM
            }
            .exit_code(),
            143
        );
    }
}
