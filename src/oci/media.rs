//! Every media type rbuild reads or writes, defined once. OCI types first,
//! then docker schema 2's, which rbuild reads and can write
//! (`--format docker`).

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// rbuild's exported build cache (`docs/cache.md`): the artifact type of
/// its manifest and the media type of its config blob (the key → layer map).
pub const RBUILD_CACHE_ARTIFACT: &str = "application/vnd.rbuild.cache.v1";
pub const RBUILD_CACHE_CONFIG: &str = "application/vnd.rbuild.cache.config.v1+json";
/// A layer's chunk index in an exported cache (`layer::chunkseed`: which
/// compressed chunk sits where, so a fresh store can reuse them).
pub const RBUILD_CHUNK_INDEX: &str = "application/vnd.rbuild.cache.chunks.v1";

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Layer media types rbuild can unpack and re-label; any other type is
/// refused rather than guessed (an unknown type stored as a plain tar
/// makes a broken image).
pub const LAYER_TYPES: &[&str] = &[
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER,
];

/// Manifest and index types, in the order a registry is asked for them
/// (the `Accept` header of a manifest request).
pub const MANIFEST_TYPES: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Whether a manifest media type is an index (OCI index or docker list).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}
