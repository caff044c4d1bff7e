//! Manifests: OCI or docker schema2 media types, writing an image (config +
//! manifest blobs) into the store, and reading one back by name or ID.

use anyhow::Context;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType};

use super::canonical::to_canonical_json;
use super::config::ImageConfig;
use crate::oci::media::{self, DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST};
use crate::oci::{Compression, Platform};
use crate::store::{BlobInfo, Store};

/// Which family of media types an image is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    #[default]
    Oci,
    Docker,
}

impl ImageFormat {
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_MANIFEST,
            ImageFormat::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn config_media_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_CONFIG,
            ImageFormat::Docker => DOCKER_CONFIG,
        }
    }

    /// The layer media type; docker schema2 has no zstd type.
    pub fn layer_media_type(self, compression: Compression) -> anyhow::Result<&'static str> {
        Ok(match self {
            ImageFormat::Oci => compression.oci_media_type(),
            ImageFormat::Docker => compression.docker_media_type()?,
        })
    }
}

/// A descriptor for a blob in the store.
pub fn descriptor(media_type: &str, blob: &BlobInfo) -> anyhow::Result<Descriptor> {
    let digest: oci_spec::image::Digest = blob
        .digest
        .parse()
        .with_context(|| format!("parsing digest {}", blob.digest))?;
    Ok(Descriptor::new(
        MediaType::from(media_type),
        blob.size,
        digest,
    ))
}

/// Write `config` and a manifest over `layers` (their media types are
/// rewritten for `format`) into the store; returns the manifest descriptor,
/// ready for [`Store::tag`].
pub fn commit_image(
    store: &Store,
    format: ImageFormat,
    config: &ImageConfig,
    layers: &[Descriptor],
) -> anyhow::Result<Descriptor> {
    anyhow::ensure!(
        config.rootfs.diff_ids.len() == layers.len(),
        "image has {} diff_ids but {} layers",
        config.rootfs.diff_ids.len(),
        layers.len()
    );
    anyhow::ensure!(
        config.is_consistent(),
        "image history does not match its layers"
    );
    let config_blob = store
        .put_blob(&config.to_json()?)
        .context("writing image config")?;
    write_manifest(store, format, &config_blob, layers)
}

/// Write a manifest for `config` + `layers` with `format`'s media types.
fn write_manifest(
    store: &Store,
    format: ImageFormat,
    config_blob: &BlobInfo,
    layers: &[Descriptor],
) -> anyhow::Result<Descriptor> {
    let mut layer_descs = Vec::with_capacity(layers.len());
    for layer in layers {
        let comp = Compression::from_media_type(layer.media_type().as_ref())
            .with_context(|| format!("layer {}", layer.digest()))?;
        let mut d = layer.clone();
        d.set_media_type(MediaType::from(format.layer_media_type(comp)?));
        layer_descs.push(d);
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(format.manifest_media_type()))
        .config(descriptor(format.config_media_type(), config_blob)?)
        .layers(layer_descs)
        .build()
        .context("building the image manifest")?;
    let manifest_blob = store
        .put_blob(&to_canonical_json(&manifest)?)
        .context("writing image manifest")?;
    descriptor(format.manifest_media_type(), &manifest_blob)
}

/// The same image (same config and layer blobs) under `format`'s media
/// types: a new manifest blob, not tagged. Tags in the store should name OCI
/// manifests (skopeo and umoci skip docker-typed `index.json` entries), so
/// pull converts to OCI and push/export converts to docker when asked.
pub fn convert_image(
    store: &Store,
    image: &Image,
    format: ImageFormat,
) -> anyhow::Result<Descriptor> {
    let config_blob = BlobInfo {
        digest: image.config_digest.clone(),
        size: image.manifest.config().size(),
    };
    write_manifest(store, format, &config_blob, image.manifest.layers())
        .with_context(|| format!("converting image {}", image.config_digest))
}

/// An image read back from the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest's descriptor (digest = what a registry calls the image).
    pub manifest_desc: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfig,
    /// `sha256:…` of the config: docker's image ID.
    pub config_digest: String,
}

impl Image {
    /// docker's short image ID: 12 hex chars of the config digest.
    pub fn short_id(&self) -> String {
        short_digest(&self.config_digest)
    }
}

/// The first 12 hex chars of a digest.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

fn is_index(media_type: &str, json: &serde_json::Value) -> bool {
    media::is_index(media_type) || json.get("manifests").is_some()
}

/// Load the image a manifest (or index: the host platform's entry) names.
pub fn load_image(store: &Store, desc: &Descriptor) -> anyhow::Result<Image> {
    let digest = desc.digest().to_string();
    let bytes = store.read_blob(&digest)?;
    // Blobs are verified when written: one that no longer parses is damage.
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt_blob(store, &digest, "manifest", e))?;
    if is_index(desc.media_type().as_ref(), &json) {
        let index: ImageIndex =
            serde_json::from_value(json).with_context(|| format!("parsing index {digest}"))?;
        let chosen = pick_platform(&index)
            .with_context(|| format!("index {digest} has no {} image", Platform::host()))?;
        return load_image(store, &chosen);
    }
    let manifest: ImageManifest =
        serde_json::from_value(json).with_context(|| format!("parsing manifest {digest}"))?;
    let config_digest = manifest.config().digest().to_string();
    let config_bytes = store.read_blob(&config_digest)?;
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&config_bytes) {
        return Err(corrupt_blob(store, &config_digest, "image config", e));
    }
    let config = ImageConfig::from_json(&config_bytes)
        .with_context(|| format!("parsing image config {config_digest}"))?;
    Ok(Image {
        manifest_desc: desc.clone(),
        manifest,
        config,
        config_digest,
    })
}

/// A stored blob that no longer reads as JSON: corrupt store state.
fn corrupt_blob(store: &Store, digest: &str, what: &str, e: serde_json::Error) -> anyhow::Error {
    match store.blob_path(digest) {
        Ok(path) => crate::store::StoreError::Corrupt {
            what: "blob",
            path,
            why: format!("the {what} {digest} does not parse: {e}"),
            hint: "it changed after rbuild wrote and verified it: `rbuild rmi` the image \
                   and build or pull it again (and check the disk)",
        }
        .into(),
        Err(p) => p,
    }
}

fn pick_platform(index: &ImageIndex) -> Option<Descriptor> {
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux"
                    && p.architecture().to_string() == Platform::host().arch
            })
        })
        .cloned()
}

/// Find an image by tag (`app` means `app:latest`), else by image-ID prefix
/// (`sha256:…` or at least 4 hex chars of the config digest).
pub fn find_image(store: &Store, name: &str) -> anyhow::Result<Image> {
    // A name the index could not hold is not there; any other failure to
    // read the index (a corrupt one) is an error, not "no such image".
    if crate::store::lookup_name(name).is_ok() {
        if let Some(desc) = store.resolve(name)? {
            return load_image(store, &desc);
        }
    }
    let prefix = name.strip_prefix("sha256:").unwrap_or(name);
    let hexlike = prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit());
    if hexlike {
        for (_, desc) in store.tags()? {
            let Ok(image) = load_image(store, &desc) else {
                continue;
            };
            if image
                .config_digest
                .trim_start_matches("sha256:")
                .starts_with(prefix)
            {
                return Ok(image);
            }
        }
    }
    anyhow::bail!("no such image: {name}\nhint: `rbuild images` lists the stored images")
}

/// The manifest under `desc` with `annotations` added (`--annotation`), as
/// a new blob; only OCI manifests have annotations.
pub fn annotate_manifest(
    store: &Store,
    desc: &Descriptor,
    annotations: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Descriptor> {
    if annotations.is_empty() {
        return Ok(desc.clone());
    }
    let media = desc.media_type().to_string();
    anyhow::ensure!(
        media == OCI_MANIFEST,
        "--annotation needs an OCI manifest (--format oci); docker manifests have no annotations"
    );
    let digest = desc.digest().to_string();
    let mut doc: serde_json::Value = serde_json::from_slice(&store.read_blob(&digest)?)
        .with_context(|| format!("reading manifest {digest}"))?;
    let map = doc
        .as_object_mut()
        .context("the manifest is not a JSON object")?
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    for (k, v) in annotations {
        map[k] = serde_json::Value::String(v.clone());
    }
    let blob = store
        .put_blob(&to_canonical_json(&doc)?)
        .context("writing the annotated manifest")?;
    descriptor(&media, &blob)
}
