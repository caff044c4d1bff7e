//! Resource limits of a RUN step: what the caller asks for ([`Limits`]),
//! and the process limits (`setrlimit`) the command's process applies to
//! itself before exec. The cgroup side lives in `cgroup.rs`.

use anyhow::{Context, Result};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use serde::{Deserialize, Serialize};

/// Bounds on one RUN step. [`Default`] bounds nothing (no cgroup is made);
/// `rbuild build` adds a default pids limit (see `engine::limits`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory in bytes (`--memory`).
    pub memory: Option<u64>,
    /// Memory plus swap (`--memory-swap`).
    pub memory_swap: SwapLimit,
    /// CPU time per period, in microseconds (`--cpu-quota`, `--cpus`).
    pub cpu_quota: Option<u64>,
    /// The quota's period in microseconds (`--cpu-period`; kernel default 100000).
    pub cpu_period: Option<u64>,
    /// Relative CPU weight, docker's scale 2..262144 (`--cpu-shares`).
    pub cpu_shares: Option<u64>,
    /// CPUs the step may run on, e.g. `0-1` or `0,2` (`--cpuset-cpus`).
    pub cpuset_cpus: Option<String>,
    /// Memory nodes (`--cpuset-mems`).
    pub cpuset_mems: Option<String>,
    /// Most processes and threads at once (`--pids-limit`); `None`: no bound.
    pub pids: Option<u64>,
    /// The pids limit is rbuild's default, not the user's: when it cannot
    /// be applied the build says nothing (the user asked for nothing).
    pub pids_is_default: bool,
    /// `setrlimit`s for the command (`--ulimit`).
    pub ulimits: Vec<Ulimit>,
    /// Size of the `/dev/shm` tmpfs in bytes (`--shm-size`; default 64 MiB).
    pub shm_size: Option<u64>,
}

impl Limits {
    /// Whether any limit needs a cgroup.
    pub fn needs_cgroup(&self) -> bool {
        self.memory.is_some()
            || self.memory_swap != SwapLimit::Default
            || self.cpu_quota.is_some()
            || self.cpu_period.is_some()
            || self.cpu_shares.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some()
            || self.pids.is_some()
    }

    /// The memory-plus-swap bound to write, in bytes; `None` for no bound.
    /// Unset with `--memory` gives docker's default: swap as large as the
    /// memory limit (twice the memory in total).
    pub fn memory_and_swap(&self) -> Option<u64> {
        match (self.memory_swap, self.memory) {
            (SwapLimit::Bytes(n), _) => Some(n),
            (SwapLimit::Unlimited, _) | (SwapLimit::Default, None) => None,
            (SwapLimit::Default, Some(m)) => Some(m.saturating_mul(2)),
        }
    }
}

/// `--memory-swap`: docker's meaning (memory plus swap, `-1` unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwapLimit {
    /// Not given: twice `--memory` when that is set.
    #[default]
    Default,
    /// `-1`: swap without bound.
    Unlimited,
    /// Memory plus swap, in bytes.
    Bytes(u64),
}

/// One `--ulimit NAME=SOFT[:HARD]`; `u64::MAX` is unlimited (docker's -1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Docker's name: `nofile`, `nproc`, `core`, …
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Docker's `--ulimit` names and the resources they set.
const ULIMITS: [(&str, Resource); 15] = [
    ("core", Resource::RLIMIT_CORE),
    ("cpu", Resource::RLIMIT_CPU),
    ("data", Resource::RLIMIT_DATA),
    ("fsize", Resource::RLIMIT_FSIZE),
    ("locks", Resource::RLIMIT_LOCKS),
    ("memlock", Resource::RLIMIT_MEMLOCK),
    ("msgqueue", Resource::RLIMIT_MSGQUEUE),
    ("nice", Resource::RLIMIT_NICE),
    ("nofile", Resource::RLIMIT_NOFILE),
    ("nproc", Resource::RLIMIT_NPROC),
    ("rss", Resource::RLIMIT_RSS),
    ("rtprio", Resource::RLIMIT_RTPRIO),
    ("rttime", Resource::RLIMIT_RTTIME),
    ("sigpending", Resource::RLIMIT_SIGPENDING),
    ("stack", Resource::RLIMIT_STACK),
];

/// The names `--ulimit` accepts, for error messages.
pub fn ulimit_names() -> Vec<&'static str> {
    ULIMITS.iter().map(|(n, _)| *n).collect()
}

fn resource(name: &str) -> Option<Resource> {
    ULIMITS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

/// Applies `ulimits` to the calling process (the command's, before it drops
/// its capabilities: raising a hard limit needs CAP_SYS_RESOURCE).
pub fn apply_ulimits(ulimits: &[Ulimit]) -> Result<()> {
    for u in ulimits {
        let res = resource(&u.name)
            .with_context(|| format!("--ulimit {}: unknown limit name", u.name))?;
        let raw = |v: u64| if v == u64::MAX { RLIM_INFINITY } else { v };
        if let Err(err) = setrlimit(res, raw(u.soft), raw(u.hard)) {
            let (_, current_hard) = getrlimit(res).unwrap_or((0, 0));
            return Err(err).with_context(|| {
                format!(
                    "--ulimit {}={}:{}: cannot set it (the hard limit here is {}; \
                     raising it needs root outside any user namespace)",
                    u.name,
                    show(u.soft),
                    show(u.hard),
                    show(current_hard)
                )
            });
        }
    }
    Ok(())
}

fn show(v: u64) -> String {
    if v == u64::MAX || v == RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        v.to_string()
    }
}

/// `n` bytes in words: `64 MiB`, `1.5 GiB`, `512 bytes`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_defaults_to_twice_the_memory() {
        let mut l = Limits {
            memory: Some(64 << 20),
            ..Limits::default()
        };
        assert_eq!(l.memory_and_swap(), Some(128 << 20));
        l.memory_swap = SwapLimit::Unlimited;
        assert_eq!(l.memory_and_swap(), None);
        l.memory_swap = SwapLimit::Bytes(100 << 20);
        assert_eq!(l.memory_and_swap(), Some(100 << 20));
        assert!(l.needs_cgroup());
        assert!(!Limits::default().needs_cgroup());
    }

    #[test]
    fn ulimit_names_are_dockers() {
        assert_eq!(ulimit_names().len(), 15);
        assert!(resource("nofile").is_some());
        assert!(resource("as").is_none());
    }

    #[test]
    fn bytes_in_words() {
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(100), "100 bytes");
    }
}
