//! The build engine: schedules the plan's steps, looks up the cache, and
//! wires context, layers, sandbox, store and image together.

pub mod build;
pub mod cachekey;
pub mod config;
pub mod context_source;
pub mod copy;
pub mod copydest;
mod exec;
pub mod limits;
pub mod mountpoints;
mod named_context;
pub mod options;
mod outputs;
mod resolver;
pub mod rootfs;
pub mod snapfill;
pub mod snapshot;
pub mod sources;
mod stage;
pub mod stageview;
pub mod stepkeys;
pub mod users;

pub use build::{build, BuildOutcome, BuildRequest, PullPolicy};
pub mod run;
