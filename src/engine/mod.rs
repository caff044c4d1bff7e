//! The build engine: schedules the plan's steps, looks up the cache, and
//! wires context, layers, sandbox, store and image together.

pub mod cachekey;
pub mod copy;
pub mod copydest;
pub mod options;
pub mod rootfs;
pub mod users;
