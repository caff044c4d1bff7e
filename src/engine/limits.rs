//! Resource-limit flags of `rbuild build` (buildah's spellings and value
//! syntax) turned into the sandbox's [`Limits`] for every RUN step.

use crate::sandbox::{human_bytes, ulimit_names, Limits, SwapLimit, Ulimit};

/// podman's and buildah's default `--pids-limit` (containers.conf
/// `pids_limit`): enough for any build, not enough for a fork bomb to
/// exhaust the host.
pub const DEFAULT_PIDS_LIMIT: u64 = 2048;

/// The smallest `--memory` docker accepts; below it not even the sandbox's
/// own setup fits.
pub const MIN_MEMORY: u64 = 6 << 20;

/// The flags as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct LimitFlags {
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub cpus: Option<String>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub pids_limit: Option<i64>,
    pub ulimits: Vec<String>,
    pub shm_size: Option<String>,
}

/// A flag value rbuild cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag} {value:?}: {why}")]
pub struct LimitError {
    pub flag: &'static str,
    pub value: String,
    pub why: String,
}

fn invalid(flag: &'static str, value: impl ToString, why: impl Into<String>) -> LimitError {
    LimitError {
        flag,
        value: value.to_string(),
        why: why.into(),
    }
}

/// Checks every flag and builds the limits (with the default pids limit).
pub fn parse_limits(f: &LimitFlags) -> Result<Limits, LimitError> {
    let mut l = Limits::default();
    if let Some(m) = &f.memory {
        let n = parse_size(m).map_err(|why| invalid("--memory", m, why))?;
        if n < MIN_MEMORY {
            return Err(invalid("--memory", m, "the minimum is 6m"));
        }
        l.memory = Some(n);
    }
    if let Some(s) = &f.memory_swap {
        l.memory_swap = parse_swap(s, l.memory)?;
    }
    cpu(f, &mut l)?;
    for (flag, value, slot) in [
        ("--cpuset-cpus", &f.cpuset_cpus, &mut l.cpuset_cpus),
        ("--cpuset-mems", &f.cpuset_mems, &mut l.cpuset_mems),
    ] {
        if let Some(v) = value {
            let ok = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == '-');
            if !ok {
                return Err(invalid(flag, v, "expected a list like 0-3 or 0,2"));
            }
            *slot = Some(v.clone());
        }
    }
    match f.pids_limit {
        None => {
            l.pids = Some(DEFAULT_PIDS_LIMIT);
            l.pids_is_default = true;
        }
        Some(n) if n <= 0 => l.pids = None,
        Some(n) => l.pids = Some(n as u64),
    }
    for u in &f.ulimits {
        l.ulimits.push(parse_ulimit(u)?);
    }
    if let Some(s) = &f.shm_size {
        let n = parse_size(s).map_err(|why| invalid("--shm-size", s, why))?;
        if n == 0 {
            return Err(invalid("--shm-size", s, "must be greater than 0"));
        }
        l.shm_size = Some(n);
    }
    Ok(l)
}

fn parse_swap(s: &str, memory: Option<u64>) -> Result<SwapLimit, LimitError> {
    if s.trim() == "-1" {
        return Ok(SwapLimit::Unlimited);
    }
    let n = parse_size(s).map_err(|why| invalid("--memory-swap", s, why))?;
    match memory {
        None => Err(invalid(
            "--memory-swap",
            s,
            "it needs --memory (it is memory plus swap)",
        )),
        Some(m) if n < m => Err(invalid(
            "--memory-swap",
            s,
            "it is memory plus swap, so it must be at least --memory",
        )),
        Some(_) => Ok(SwapLimit::Bytes(n)),
    }
}

fn cpu(f: &LimitFlags, l: &mut Limits) -> Result<(), LimitError> {
    if let Some(p) = f.cpu_period {
        if !(1000..=1_000_000).contains(&p) {
            return Err(invalid("--cpu-period", p, "must be 1000-1000000 (µs)"));
        }
        l.cpu_period = Some(p as u64);
    }
    if let Some(q) = f.cpu_quota {
        if q < 1000 {
            return Err(invalid("--cpu-quota", q, "must be at least 1000 (µs)"));
        }
        l.cpu_quota = Some(q as u64);
    }
    if let Some(c) = &f.cpus {
        if f.cpu_quota.is_some() {
            return Err(invalid("--cpus", c, "give --cpus or --cpu-quota, not both"));
        }
        let cpus: f64 = c
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| invalid("--cpus", c, "expected a positive number like 0.5 or 2"))?;
        let period = l.cpu_period.unwrap_or(100_000);
        let quota = (cpus * period as f64).round() as u64;
        if quota < 1000 {
            return Err(invalid("--cpus", c, "too small: under 1 ms per period"));
        }
        l.cpu_period = Some(period);
        l.cpu_quota = Some(quota);
    }
    if let Some(s) = f.cpu_shares {
        if !(2..=262_144).contains(&s) {
            return Err(invalid(
                "--cpu-shares",
                s,
                "must be 2-262144 (1024 is normal)",
            ));
        }
        l.cpu_shares = Some(s as u64);
    }
    Ok(())
}

/// `NAME=SOFT[:HARD]`, `-1` for unlimited; HARD defaults to SOFT.
pub fn parse_ulimit(spec: &str) -> Result<Ulimit, LimitError> {
    let bad = |why: String| invalid("--ulimit", spec, why);
    let (name, values) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOFT[:HARD]".into()))?;
    if !ulimit_names().contains(&name) {
        return Err(bad(format!(
            "unknown limit {name:?} (one of {})",
            ulimit_names().join(", ")
        )));
    }
    let (soft, hard) = values.split_once(':').unwrap_or((values, values));
    let num = |v: &str| -> Result<u64, LimitError> {
        match v.trim().parse::<i64>() {
            Ok(-1) => Ok(u64::MAX),
            Ok(n) if n >= 0 => Ok(n as u64),
            _ => Err(bad(format!("{v:?} is not a number (or -1 for unlimited)"))),
        }
    };
    let (soft, hard) = (num(soft)?, num(hard)?);
    if soft > hard {
        return Err(bad("the soft limit is above the hard limit".into()));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// docker's sizes: a number (fractions allowed) with an optional unit
/// `b`, `k`, `m`, `g`, `t` (binary: 1k = 1024), optionally followed by `b`
/// or `ib`, any case: `64m`, `1.5g`, `512MiB`, `1000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or("expected a size like 64m or 1g")?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} (b, k, m, g, t)")),
    };
    let bytes = value * mult as f64;
    if bytes >= u64::MAX as f64 {
        return Err("too large".into());
    }
    Ok(bytes as u64)
}

/// Below this much free space the store's filesystem counts as full.
const FULL_BELOW: u64 = 4 << 20;

/// When the filesystem holding `dir` (a RUN step's upper dir inside the
/// store at `store_root`) has next to no space left, a note saying so for
/// the step's error, with what to do.
pub fn full_filesystem_note(store_root: &std::path::Path, dir: &std::path::Path) -> Option<String> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let block = st.fragment_size() as u64;
    // Real root may use the blocks ext4 reserves; anyone else may not.
    let privileged = nix::unistd::geteuid().is_root() && !crate::sandbox::in_user_namespace();
    let free = if privileged {
        st.blocks_free() as u64
    } else {
        st.blocks_available() as u64
    } * block;
    let total = st.blocks() as u64 * block;
    (free < FULL_BELOW).then(|| {
        format!(
            "the filesystem holding the store ({}) is full: {} free of {}; \
             the step's files were removed\nhint: free space there, or build with \
             --root on a larger filesystem",
            store_root.display(),
            human_bytes(free),
            human_bytes(total)
        )
    })
}

/// A step error caused by a full disk (ENOSPC anywhere in the chain, e.g.
/// while writing the layer) gets a `hint:` naming the store's filesystem,
/// unless the error already says so.
pub fn with_disk_full_hint(err: anyhow::Error, store_root: &std::path::Path) -> anyhow::Error {
    let enospc = err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
            || c.to_string().contains("No space left on device")
    });
    let text = format!("{err:#}");
    if !enospc || text.contains("the filesystem holding the store") {
        return err;
    }
    // Hinted keeps the typed causes (the cli still classifies by them).
    anyhow::Error::new(super::error::Hinted {
        source: err,
        hint: format!(
            "the filesystem holding the store ({}) is full: free space there, \
             or build with --root on a larger filesystem",
            store_root.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_errors_get_a_hint_once() {
        let root = std::path::Path::new("/var/lib/rbuild");
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let err = anyhow::Error::new(io).context("writing the layer");
        let text = format!("{:#}", with_disk_full_hint(err, root));
        assert!(
            text.starts_with("writing the layer: No space left on device"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "hint: the filesystem holding the store (/var/lib/rbuild) is full: \
                 free space there, or build with --root on a larger filesystem"
            ),
            "{text}"
        );
        let again = format!("{:#}", with_disk_full_hint(anyhow::anyhow!("{text}"), root));
        assert_eq!(again, text, "no second hint");
        let other = anyhow::anyhow!("exit code: 1");
        assert_eq!(
            format!("{:#}", with_disk_full_hint(other, root)),
            "exit code: 1"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10kb"), Ok(10 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("100b"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("10x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-5m").is_err());
    }

    fn flags() -> LimitFlags {
        LimitFlags::default()
    }

    #[test]
    fn defaults_bound_pids_only() {
        let l = parse_limits(&flags()).unwrap();
        assert_eq!(l.pids, Some(DEFAULT_PIDS_LIMIT));
        assert!(l.pids_is_default);
        assert_eq!(l.memory, None);
        for off in [0, -1] {
            let f = LimitFlags {
                pids_limit: Some(off),
                ..flags()
            };
            assert_eq!(parse_limits(&f).unwrap().pids, None);
        }
    }

    #[test]
    fn cpus_become_quota_and_period() {
        let f = LimitFlags {
            cpus: Some("0.5".into()),
            ..flags()
        };
        let l = parse_limits(&f).unwrap();
        assert_eq!((l.cpu_quota, l.cpu_period), (Some(50_000), Some(100_000)));
        let f = LimitFlags {
            cpus: Some("1.5".into()),
            cpu_period: Some(10_000),
            ..flags()
        };
        let l = parse_limits(&f).unwrap();
        assert_eq!((l.cpu_quota, l.cpu_period), (Some(15_000), Some(10_000)));
        for bad in ["0", "-1", "x", "NaN"] {
            let f = LimitFlags {
                cpus: Some(bad.into()),
                ..flags()
            };
            let err = parse_limits(&f).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid --cpus \"{bad}\"")),
                "{err}"
            );
        }
    }

    #[test]
    fn memory_and_swap_rules() {
        let f = LimitFlags {
            memory: Some("1m".into()),
            ..flags()
        };
        assert!(parse_limits(&f).unwrap_err().why.contains("minimum is 6m"));
        let f = LimitFlags {
            memory_swap: Some("1g".into()),
            ..flags()
        };
        assert!(parse_limits(&f).unwrap_err().why.contains("needs --memory"));
        let f = LimitFlags {
            memory: Some("1g".into()),
            memory_swap: Some("512m".into()),
            ..flags()
        };
        assert!(parse_limits(&f)
            .unwrap_err()
            .why
            .contains("at least --memory"));
        let f = LimitFlags {
            memory: Some("32m".into()),
            memory_swap: Some("-1".into()),
            ..flags()
        };
        let l = parse_limits(&f).unwrap();
        assert_eq!(l.memory, Some(32 << 20));
        assert_eq!(l.memory_swap, SwapLimit::Unlimited);
    }

    #[test]
    fn ulimits() {
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 2048));
        let u = parse_ulimit("core=-1").unwrap();
        assert_eq!((u.soft, u.hard), (u64::MAX, u64::MAX));
        let err = parse_ulimit("files=10").unwrap_err().to_string();
        assert!(
            err.contains("unknown limit \"files\"") && err.contains("nofile"),
            "{err}"
        );
        assert!(parse_ulimit("nofile=20:10")
            .unwrap_err()
            .why
            .contains("above the hard"));
        assert!(parse_ulimit("nofile").is_err());
        assert!(parse_ulimit("nofile=ten").is_err());
    }

    #[test]
    fn cpu_ranges_and_sets() {
        for f in [
            LimitFlags {
                cpu_shares: Some(1),
                ..flags()
            },
            LimitFlags {
                cpu_period: Some(10),
                ..flags()
            },
            LimitFlags {
                cpu_quota: Some(10),
                ..flags()
            },
            LimitFlags {
                cpuset_cpus: Some("all".into()),
                ..flags()
            },
            LimitFlags {
                cpus: Some("1".into()),
                cpu_quota: Some(5000),
                ..flags()
            },
            LimitFlags {
                shm_size: Some("0".into()),
                ..flags()
            },
        ] {
            assert!(parse_limits(&f).is_err(), "{f:?}");
        }
        let f = LimitFlags {
            cpuset_cpus: Some("0-1".into()),
            shm_size: Some("1m".into()),
            ..flags()
        };
        let l = parse_limits(&f).unwrap();
        assert_eq!(l.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(l.shm_size, Some(1 << 20));
    }
}
