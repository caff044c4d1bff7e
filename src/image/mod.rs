//! OCI image config, manifest and index; history; docker-archive and OCI
//! layout export.
//!
//! The engine builds an [`ImageConfig`] step by step ([`ImageConfig::add_layer`]
//! keeps `rootfs.diff_ids` and `history` in step), then [`commit_image`]
//! writes config and manifest blobs and returns the descriptor to tag.

mod canonical;
mod config;
mod export;
pub mod import;
mod manifest;
pub mod time;

pub use canonical::to_canonical_json;
pub use config::{Empty, HealthConfig, HistoryEntry, ImageConfig, RootFs, RunConfig};
pub use export::{export_docker_archive, export_oci_layout};
pub use manifest::{
    annotate_manifest, commit_image, convert_image, descriptor, find_image, load_image,
    short_digest, Image, ImageFormat,
};
