//! The OCI vocabulary the rest of rbuild speaks: sha256 digests
//! ([`digest`]), media types ([`media`]), layer [`Compression`], image
//! [`Platform`]s with the one host table, docker image [`Reference`]s, and
//! the identity of a layer ([`LayerRef`]).
//!
//! It sits below `layer`, `image`, `store`, `registry` and `plan` and
//! imports none of them: each of those used to carry its own copy of some
//! of this (three sha256 helpers, media types in three places, two
//! compression enums, two platform types with three host tables that
//! disagreed on arm64), and copies drift.

pub mod digest;
pub mod media;
pub mod reference;

mod compression;
mod platform;

pub use compression::Compression;
pub use platform::Platform;
pub use reference::{Reference, ReferenceError};

use serde::{Deserialize, Serialize};

/// The content of an OCI image layout's `oci-layout` marker file.
pub const IMAGE_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The annotation an image layout's `index.json` names a tag with.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One layer of an image as rbuild tracks it: the blob (digest, size,
/// media type, as a manifest descriptor names it) and the digest of its
/// uncompressed tar (the config's `rootfs.diff_ids` entry). A stage keeps
/// a list of these and a cache record stores one, so the engine and the
/// store share the type (it lives here because it is plain OCI
/// vocabulary, and `store` may not import `engine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Compressed blob digest (`sha256:…`).
    pub digest: String,
    /// Uncompressed tar digest.
    pub diff_id: String,
    /// Blob size in bytes.
    pub size: u64,
    pub media_type: String,
}

/// Why a piece of OCI vocabulary was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    #[error(
        "layer media type {0:?} is not one rbuild can use (known: {known})",
        known = media::LAYER_TYPES.join(", ")
    )]
    UnknownLayerType(String),
    #[error("docker image format has no zstd layers; use the OCI format")]
    DockerZstd,
    #[error("{codec} compression level is {min}-{max}, not {level}")]
    CompressionLevel {
        codec: &'static str,
        level: i32,
        min: i32,
        max: i32,
    },
    #[error("invalid platform {0:?}: expected os/arch[/variant] (e.g. linux/arm64/v8) or an architecture")]
    Platform(String),
}
