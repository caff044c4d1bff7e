//! `--cache-to`: the records a build used, written as the cache artifact
//! to a registry or a directory (or, `type=inline`, as a map for the
//! image config).

use std::sync::Mutex;

use anyhow::Context;

use crate::registry::{BlobLocations, PushOptions, Settings};
use crate::store::Store;

use super::format::{CacheMap, Desc, MapRecord};
use super::import::RemoteCaches;
use super::spec::{CacheTo, Location, Mode};
use super::{layout, remote};

/// Every layer step's record, in the order steps finished, with the step
/// id (`SCOPE/STAGE/N`) that says which stage it belongs to.
#[derive(Default)]
pub struct UsedRecords {
    inner: Mutex<Vec<(String, MapRecord)>>,
}

impl UsedRecords {
    pub fn note(&self, step_id: &str, record: MapRecord) {
        if let Ok(mut v) = self.inner.lock() {
            v.push((step_id.to_string(), record));
        }
    }

    /// `mode=min`: the records of the stages whose step ids start with one
    /// of `result_stages` (the target and the stages it is built FROM: what
    /// made the result's layers); `mode=max`: all. Each key once.
    pub fn select(&self, mode: Mode, result_stages: &[String]) -> Vec<MapRecord> {
        let Ok(v) = self.inner.lock() else {
            return Vec::new();
        };
        let mut seen = std::collections::HashSet::new();
        v.iter()
            .filter(|(id, _)| mode == Mode::Max || result_stages.iter().any(|p| id.starts_with(p)))
            .filter(|(_, r)| seen.insert(r.key.clone()))
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// What one export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub location: String,
    pub records: usize,
    pub layers: usize,
}

/// The inline map for the image config: the `mode=min` records whose
/// layers are among `image_layers` (or that have none).
pub fn inline_map(
    used: &UsedRecords,
    result_stages: &[String],
    image_layers: &[String],
) -> serde_json::Value {
    let records: Vec<MapRecord> = used
        .select(Mode::Min, result_stages)
        .into_iter()
        .filter(|r| {
            r.layer
                .as_ref()
                .is_none_or(|l| image_layers.contains(&l.digest))
        })
        // The image carries only its layers: no chunk index blobs.
        .map(|r| MapRecord { chunks: None, ..r })
        .collect();
    serde_json::to_value(CacheMap::new(records)).unwrap_or_default()
}

/// Write one `--cache-to` (not `type=inline`, which the image carries).
pub fn export(
    store: &Store,
    caches: &RemoteCaches,
    to: &CacheTo,
    used: &UsedRecords,
    result_stages: &[String],
    settings: &Settings,
    mounts: &[super::mounts::PackedMount],
) -> anyhow::Result<Exported> {
    let mut records = used.select(to.mode, result_stages);
    attach_chunk_indexes(store, caches, &mut records);
    let mut map = CacheMap::new(records);
    map.mounts = mounts
        .iter()
        .filter_map(|m| serde_json::to_value(m).ok())
        .collect();
    let config = map.to_bytes();
    let manifest = map.manifest(&config);
    let layers = map.layers();
    let label = to.location.to_string();
    match &to.location {
        Location::Local(dir) => {
            layout::write(dir, &manifest, &config, &layers, &|d, path| {
                caches.copy_layer_to(store, d, path)
            })
            .with_context(|| format!("writing {}", dir.display()))?;
        }
        Location::Registry(r) => {
            let dest = remote::parse_reference(r)?;
            // A layer only a remote cache has: mounted from it when it is
            // on the same registry, else fetched to be uploaded.
            let missing: Vec<crate::oci::LayerRef> = map
                .records
                .iter()
                .filter_map(|r| r.layer.clone())
                .filter(|l| !store.has_blob(&l.digest))
                .filter(|l| {
                    caches
                        .registry_of(&l.digest)
                        .is_none_or(|(reg, _)| reg != dest.registry)
                })
                .collect();
            caches.ensure_local(store, &missing)?;
            store.put_blob(&config).context("storing the cache map")?;
            let desc = store
                .put_blob(&manifest)
                .context("storing the cache manifest")?;
            let loc = BlobLocations::load(&store.blob_locations_file()?)?;
            let opts = PushOptions {
                mount_from: Vec::new(),
                locations: Some(&loc),
                progress: None,
                cancel: None,
            };
            // Every blob first, the manifest last: a racing export's
            // manifest names only blobs that are there, so the ref always
            // names one whole cache.
            crate::registry::push(store, &desc.digest, &dest, settings, &opts)?;
            loc.save()?;
        }
        Location::Inline => {}
    }
    Ok(Exported {
        location: label,
        records: map.records.len(),
        layers: layers.len(),
    })
}

/// Each layer record's chunk index as a blob of the store: the one this
/// store wrote with the layer, or the one the remote record came with
/// (fetched if needed: it is small). A record whose index cannot be had
/// goes without one (a later build compresses that layer's chunks anew).
fn attach_chunk_indexes(store: &Store, caches: &RemoteCaches, records: &mut [MapRecord]) {
    let chunk_cache = super::chunk_cache_reader(store);
    for r in records.iter_mut() {
        let Some(layer) = &r.layer else { continue };
        let local = chunk_cache
            .as_ref()
            .and_then(|c| crate::layer::local_index(c, &layer.digest));
        r.chunks = match (local, r.chunks.take()) {
            (Some(bytes), _) => store.put_blob(&bytes).ok().map(|d| Desc {
                media_type: crate::oci::media::RBUILD_CHUNK_INDEX.to_string(),
                digest: d.digest,
                size: d.size,
            }),
            (None, Some(d)) => caches.fetch_small(store, &d).ok().map(|()| d),
            (None, None) => None,
        };
    }
}
