//! `--build-context NAME=DIR`: a local directory used where the Dockerfile
//! names NAME (`FROM NAME`, `COPY --from=NAME`). rbuild turns the directory
//! into a one-layer image in the store (untagged, owners 0:0, no `created`
//! time, so the same files give the same digest and the steps using it stay
//! cached), which the rest of the engine handles like any other image.

use std::path::Path;

use anyhow::Context;

use crate::image::{self, HistoryEntry, ImageConfig, ImageFormat};
use crate::layer::{entries_from_dir, write_layer, DirOptions, WriteOptions};
use crate::store::Store;

use super::build::BuildRequest;

/// The image holding `dir`'s files at its root.
pub(crate) fn image_from_dir(
    store: &Store,
    req: &BuildRequest,
    dir: &Path,
) -> anyhow::Result<image::Image> {
    let entries = entries_from_dir(
        dir,
        &DirOptions {
            prefix: String::new(),
            chown: Some((0, 0)),
        },
    )
    .with_context(|| format!("reading build context directory {}", dir.display()))?;
    let mut blob = store.blob_writer()?;
    let opts = WriteOptions {
        compression: req.compression,
        source_date_epoch: req.source_date_epoch,
        threads: 0,
        chunk_cache: None,
        known_files: None,
    };
    let info = write_layer(entries, &mut blob, &opts)
        .with_context(|| format!("writing {} as a layer", dir.display()))?;
    let stored = blob
        .commit_verified(&info.digest, Some(info.size))
        .context("storing the context layer")?;
    let mut config = ImageConfig::for_host();
    config.created = None;
    config.add_layer(
        &info.diff_id,
        HistoryEntry {
            // Not the host path: it would be in the digest that keys every
            // step using this context, so another checkout never hit.
            created_by: Some("build context".to_string()),
            ..HistoryEntry::default()
        },
    );
    let layer = image::descriptor(info.media_type, &stored)?;
    let manifest = image::commit_image(store, ImageFormat::Oci, &config, &[layer])?;
    image::load_image(store, &manifest)
}
