//! Caches that travel between machines.
//!
//! `mounts`: the contents of `RUN --mount=type=cache` dirs, saved as layers
//! in an exported cache and restored into a fresh store.

pub mod mounts;
