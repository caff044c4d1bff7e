//! The build engine: schedules the plan's steps, looks up the cache, and
//! wires context, layers, sandbox, store and image together.

mod bases;
pub mod build;
mod buildrecord;
mod cache_io;
pub mod cachekey;
pub mod cachemounts;
pub mod cancel;
pub mod config;
pub mod context_source;
pub mod copy;
pub mod copydest;
mod early_push;
pub mod error;
mod exec;
pub mod limits;
pub mod mountpoints;
mod named_context;
pub mod options;
mod outputs;
mod resolver;
pub mod rootfs;
pub mod snapfill;
mod snapfill_copy;
mod snapfill_delta;
pub mod snapshot;
pub mod sources;
mod stage;
mod stage_write;
pub mod stageview;
pub mod stepkeys;
pub mod users;

pub use build::{build, BuildOutcome, BuildRequest, PullPolicy};
pub use error::{classify, ErrorKind, StepError};
pub mod run;
mod runarea;
