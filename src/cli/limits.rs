//! Resource-limit flags of `rbuild build`, spelled as buildah spells them.

use clap::Args;

use crate::engine::limits::LimitFlags;

#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// Memory limit of each RUN step (e.g. 512m, 2g); the step is killed
    /// when it needs more.
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Memory plus swap of each RUN step (-1: unlimited swap; default:
    /// twice --memory).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CPUs each RUN step may use (e.g. 0.5, 2): sets the quota per period.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// CPU time (µs) each RUN step gets per --cpu-period.
    #[arg(long, value_name = "USEC")]
    pub cpu_quota: Option<i64>,
    /// The CPU quota's period in µs (default 100000).
    #[arg(long, value_name = "USEC")]
    pub cpu_period: Option<i64>,
    /// Relative CPU weight (2-262144, normal 1024).
    #[arg(short = 'c', long, value_name = "SHARES")]
    pub cpu_shares: Option<i64>,
    /// CPUs each RUN step may run on (e.g. 0-1, 0,2).
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes each RUN step may use (e.g. 0).
    #[arg(long, value_name = "LIST")]
    pub cpuset_mems: Option<String>,
    /// Most processes at once in each RUN step (default 2048; 0 or -1: no limit).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// A process limit for RUN steps: NAME=SOFT[:HARD] (e.g. nofile=1024:2048); repeatable.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// Size of /dev/shm in RUN steps (default 64m).
    #[arg(long, value_name = "SIZE")]
    pub shm_size: Option<String>,
}

impl LimitArgs {
    pub fn flags(&self) -> LimitFlags {
        LimitFlags {
            memory: self.memory.clone(),
            memory_swap: self.memory_swap.clone(),
            cpus: self.cpus.clone(),
            cpu_quota: self.cpu_quota,
            cpu_period: self.cpu_period,
            cpu_shares: self.cpu_shares,
            cpuset_cpus: self.cpuset_cpus.clone(),
            cpuset_mems: self.cpuset_mems.clone(),
            pids_limit: self.pids_limit,
            ulimits: self.ulimits.clone(),
            shm_size: self.shm_size.clone(),
        }
    }
}
