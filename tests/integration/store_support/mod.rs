//! Shared by the store/image tests: a real gzip'd layer made with `tar` and
//! `flate2`, and a small image written into a real store.
#![allow(dead_code)]

use std::io::Write;

use oci_spec::image::Descriptor;
use rbuild::image::{commit_image, descriptor, HistoryEntry, ImageConfig, ImageFormat};
use rbuild::oci::digest::sha256_digest;
use rbuild::oci::media::OCI_LAYER_GZIP;
use rbuild::store::Store;

/// A gzip'd tar holding `files`, and its diff_id.
pub fn layer_tar_gz(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_000_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, *data).unwrap();
    }
    let plain = tar.into_inner().unwrap();
    let diff_id = sha256_digest(&plain);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Write an image with one layer per entry of `layers` plus an empty-layer
/// CMD step, all created at `created`; tag it `name`. Returns the manifest.
pub fn make_image(
    store: &Store,
    name: &str,
    layers: &[&[(&str, &[u8])]],
    created: &str,
) -> Descriptor {
    let mut config = ImageConfig::for_host();
    config.created = Some(created.to_string());
    let mut descs = Vec::new();
    for (i, files) in layers.iter().enumerate() {
        let (gz, diff_id) = layer_tar_gz(files);
        let mut w = store.blob_writer().unwrap();
        w.write_all(&gz).unwrap();
        let blob = w.commit().unwrap();
        descs.push(descriptor(OCI_LAYER_GZIP, &blob).unwrap());
        let history = HistoryEntry {
            created: Some(created.to_string()),
            created_by: Some(format!("COPY layer{i} / # buildkit")),
            ..HistoryEntry::default()
        };
        config.add_layer(&diff_id, history);
    }
    config.config.cmd = Some(vec!["/bin/sh".into()]);
    config.add_empty_layer(HistoryEntry {
        created: Some(created.to_string()),
        created_by: Some("CMD [\"/bin/sh\"]".into()),
        comment: Some("buildkit.dockerfile.v0".into()),
        ..HistoryEntry::default()
    });
    let manifest = commit_image(store, ImageFormat::Oci, &config, &descs).unwrap();
    store.tag(name, &manifest).unwrap();
    manifest
}
