//! rbuild: a daemonless OCI image builder.
//!
//! Data flows one way: `dockerfile` (text → AST) → `plan` (AST → stages and
//! steps) → `engine` (steps → layers, using `context`, `layer`, `sandbox`,
//! `store`, `image`, `registry`) → `store` (an OCI image layout on disk).
//! `docs/architecture.md` describes each module and what it must not know.

pub mod cache;
pub mod check;
pub mod cli;
pub mod context;
pub mod dockerfile;
pub mod engine;
pub mod image;
pub mod layer;
pub mod oci;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod sandbox;
pub mod store;
