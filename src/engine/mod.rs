//! The build engine: schedules the plan's steps, looks up the cache, and
//! wires context, layers, sandbox, store and image together.

pub mod build;
mod cache_io;
pub mod cachekey;
pub mod cachemounts;
pub mod config;
pub mod context_source;
pub mod copy;
pub mod copydest;
pub mod limits;
pub mod mountpoints;
mod named_context;
pub mod options;
mod outputs;
pub mod rootfs;
pub mod snapfill;
pub mod snapshot;
pub mod sources;
pub mod stageview;
pub mod step;
pub mod users;

pub use build::{build, BuildOutcome, BuildRequest, PullPolicy};
pub mod run;
