//! `--cache-from`: the maps of the caches named, read up front (manifest
//! and map only), consulted in order after the local store; a hit's layer
//! stays remote until something needs its bytes, then it is fetched and
//! checked against its digest and diff_id.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;

use crate::oci::LayerRef;
use crate::oci::Reference;
use crate::registry::Settings;
use crate::store::{CacheRecord, Store};

use super::format::{ArtifactManifest, CacheMap, Desc, MapRecord, CONFIG_MEDIA_TYPE, INLINE_FIELD};
use super::spec::{CacheFrom, Location};
use super::{layout, remote, CacheError};

/// Where a cache's blobs are fetched from.
#[derive(Clone)]
enum Origin {
    Registry(Reference),
    Local(PathBuf),
}

/// One imported cache.
struct Source {
    /// How messages name it: the reference or directory as given.
    label: String,
    origin: Origin,
    records: HashMap<String, MapRecord>,
    /// Slot → key of the records that have a layer and a chunk index.
    slots: HashMap<String, String>,
    /// Its saved cache mounts (`"mounts"`), checked when the set is made.
    mounts: Vec<serde_json::Value>,
}

/// A remote cache hit: the record and the cache it came from.
#[derive(Debug, Clone)]
pub struct RemoteHit {
    pub record: MapRecord,
    pub source: String,
}

/// Every `--cache-from` of a build, in order.
#[derive(Default)]
pub struct RemoteCaches {
    sources: Vec<Source>,
    settings: Option<Settings>,
    /// Layers of hits not checked yet: (digest, claimed diff_id) → source
    /// index. Keyed by both: two records may claim different diff_ids for
    /// one blob, and each claim is checked.
    remote: Mutex<HashMap<(String, String), usize>>,
    /// Local records of hits, filed in the store once their layer's claim
    /// has been checked (a refused claim's records are never filed).
    pending: Mutex<HashMap<(String, String), Vec<CacheRecord>>>,
    /// Every layer of a hit: digest → the source it came from.
    origins: Mutex<HashMap<String, usize>>,
    /// (source, digest, diff_id) of records refused after a failed check.
    refused: Mutex<HashSet<(usize, String, String)>>,
    /// The caches' saved RUN cache mounts, restored on first use.
    mounts: super::mounts::MountSet,
}

impl RemoteCaches {
    /// Read each cache's manifest and map. A cache that cannot be read or
    /// fails validation is skipped with a warning through `warn`.
    pub fn load(from: &[CacheFrom], settings: &Settings, warn: &dyn Fn(String)) -> RemoteCaches {
        let mut sources = Vec::new();
        for f in from {
            let label = f.location.to_string();
            match read_source(&f.location, settings) {
                Ok((origin, map)) => sources.push(Source {
                    label,
                    origin,
                    slots: slots_of(&map.records),
                    records: map
                        .records
                        .into_iter()
                        .map(|r| (r.key.clone(), r))
                        .collect(),
                    mounts: map.mounts,
                }),
                Err(e) => warn(format!("--cache-from {label}: {e:#}; building without it")),
            }
        }
        let (mounts, origins) = mount_set(&sources, settings, warn);
        let origins = Mutex::new(origins);
        RemoteCaches {
            sources,
            settings: Some(settings.clone()),
            mounts,
            origins,
            ..RemoteCaches::default()
        }
    }

    /// The saved cache mounts, for the engine to restore from and to hear
    /// which mounts RUNs used.
    pub fn mounts(&self) -> &super::mounts::MountSet {
        &self.mounts
    }

    /// How many records the caches hold (for the build's log).
    pub fn record_count(&self) -> usize {
        self.sources.iter().map(|s| s.records.len()).sum()
    }

    /// The first cache holding `key` (records refused earlier skipped).
    pub fn lookup(&self, key: &str) -> Option<RemoteHit> {
        let refused = self.refused.lock().ok()?;
        for (i, s) in self.sources.iter().enumerate() {
            let Some(r) = s.records.get(key) else {
                continue;
            };
            if let Some(l) = &r.layer {
                if refused.contains(&(i, l.digest.clone(), l.diff_id.clone())) {
                    continue;
                }
                if let Ok(mut m) = self.remote.lock() {
                    m.entry((l.digest.clone(), l.diff_id.clone())).or_insert(i);
                }
                if let Ok(mut m) = self.origins.lock() {
                    m.entry(l.digest.clone()).or_insert(i);
                }
            }
            return Some(RemoteHit {
                record: r.clone(),
                source: s.label.clone(),
            });
        }
        None
    }

    /// Make sure the store holds each of `layers`: a layer a remote hit
    /// brought is fetched, then checked against its diff_id. A mismatch
    /// refuses every record of that cache naming that layer and returns
    /// [`CacheError::Tampered`]: the caller builds again without them.
    pub fn ensure_local(&self, store: &Store, layers: &[LayerRef]) -> anyhow::Result<()> {
        self.ensure_local_noting(store, layers, &|_| {})
    }

    /// [`RemoteCaches::ensure_local`], telling `note` about each download.
    /// Layers are fetched and checked in parallel; a refusal is reported
    /// before any other error (the build can go on without the record).
    pub fn ensure_local_noting(
        &self,
        store: &Store,
        layers: &[LayerRef],
        note: &(dyn Fn(String) + Sync),
    ) -> anyhow::Result<()> {
        use rayon::prelude::*;
        // Nothing remote (no --cache-from, or every claim checked): the
        // common case costs one lock.
        if self.remote.lock().map(|m| m.is_empty()).unwrap_or(true) {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let todo: Vec<&LayerRef> = layers
            .iter()
            .filter(|l| seen.insert((l.digest.as_str(), l.diff_id.as_str())))
            .collect();
        let mut errors: Vec<anyhow::Error> = todo
            .par_iter()
            .filter_map(|l| self.check_one(store, l, note).err())
            .collect();
        errors.sort_by_key(|e| !Self::is_refusal(e));
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Fetch one claimed layer if the store lacks it, then check its diff_id.
    fn check_one(
        &self,
        store: &Store,
        l: &LayerRef,
        note: &(dyn Fn(String) + Sync),
    ) -> anyhow::Result<()> {
        let claim = (l.digest.clone(), l.diff_id.clone());
        let found = self.remote.lock().ok().and_then(|m| m.get(&claim).copied());
        let Some(i) = found else { return Ok(()) };
        let s = &self.sources[i];
        let actual = if store.has_blob(&l.digest) {
            let file = store.open_blob(&l.digest)?;
            remote::diff_id_of(file)
                .with_context(|| format!("cache {}: reading layer {}", s.label, l.digest))?
        } else {
            note(format!(
                "fetching layer {} ({} bytes) from cache {}",
                l.digest, l.size, s.label
            ));
            match self.fetch(s, store, l) {
                Ok(actual) => actual,
                // Bytes that are not the blob: the record is refused and
                // its step runs, as for a layer that is not its diff_id
                // (it failed the build).
                Err(e) if e.chain().any(|c| c.is::<crate::store::BlobError>()) => {
                    "none (bytes that do not match the layer's digest and size)".to_string()
                }
                Err(e) => return Err(e),
            }
        };
        if let Ok(mut m) = self.remote.lock() {
            m.remove(&claim);
        }
        let records = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&claim))
            .unwrap_or_default();
        if actual == l.diff_id {
            // Best effort: a record only saves later builds a lookup.
            for r in records {
                let _ = store.cache_put(&r);
            }
            return Ok(());
        }
        if let Ok(mut r) = self.refused.lock() {
            r.insert((i, l.digest.clone(), l.diff_id.clone()));
        }
        Err(CacheError::Tampered {
            source_name: s.label.clone(),
            digest: l.digest.clone(),
            expected: l.diff_id.clone(),
            actual,
        }
        .into())
    }

    /// Fetch a layer into the store; returns its actual diff_id.
    fn fetch(&self, s: &Source, store: &Store, l: &LayerRef) -> anyhow::Result<String> {
        match &s.origin {
            Origin::Registry(r) => {
                let settings = self.settings.clone().unwrap_or_default();
                remote::fetch_layer_checked(store, &settings, r, &l.digest, l.size)
            }
            Origin::Local(dir) => {
                let path = layout::blob_path(dir, &l.digest)?;
                let f = layout::open_file(&path).with_context(|| format!("cache {}", s.label))?;
                // One byte over: a longer file fails the digest and size check.
                let mut f = std::io::Read::take(f, l.size.saturating_add(1));
                remote::copy_checking(&mut f, store, &l.digest, l.size)
                    .with_context(|| format!("cache {}: layer {}", s.label, l.digest))
            }
        }
    }

    /// Where a layer of a hit can be copied from when the store lacks it:
    /// `(registry, repository)` for a registry cache.
    pub fn registry_of(&self, digest: &str) -> Option<(String, String)> {
        let i = *self.origins.lock().ok()?.get(digest)?;
        match &self.sources[i].origin {
            Origin::Registry(r) => Some((r.registry.clone(), r.repository.clone())),
            Origin::Local(_) => None,
        }
    }

    /// Note in the store's blob locations which registry repository holds
    /// each remote layer, so a push to that registry mounts it from there
    /// instead of downloading and uploading it.
    pub fn save_locations(&self, store: &Store) -> anyhow::Result<()> {
        let remote: Vec<String> = match self.origins.lock() {
            Ok(m) => m.keys().cloned().collect(),
            Err(_) => return Ok(()),
        };
        let mut any = false;
        let loc = crate::registry::BlobLocations::load(&store.blob_locations_file()?)?;
        for d in remote {
            if let Some((reg, repo)) = self.registry_of(&d) {
                loc.record(&d, &reg, &repo);
                any = true;
            }
        }
        if any {
            loc.save()?;
        }
        Ok(())
    }

    /// File `rec` (a hit's record) in the local store: now when it has no
    /// layer, else once its layer is fetched and checked, so later builds
    /// in this store hit without the remote cache.
    pub fn file_when_checked(&self, store: &Store, rec: CacheRecord) {
        let Some(l) = &rec.layer else {
            let _ = store.cache_put(&rec);
            return;
        };
        let claim = (l.digest.clone(), l.diff_id.clone());
        if let Ok(mut p) = self.pending.lock() {
            p.entry(claim).or_default().push(rec);
        }
    }

    /// The earlier layer and chunk index of the step in `slot`, from the
    /// first cache that has one.
    pub fn seed_source(&self, slot: &str) -> Option<SeedSource> {
        self.sources.iter().find_map(|s| {
            let r = s.records.get(s.slots.get(slot)?)?;
            Some(SeedSource {
                label: s.label.clone(),
                layer: r.layer.clone()?,
                index: r.chunks.clone()?,
                origin: s.origin.clone(),
                settings: self.settings.clone().unwrap_or_default(),
            })
        })
    }

    /// Make sure the store holds the small blob `d` (a chunk index a
    /// remote record names), fetching it from the cache that named it.
    pub fn fetch_small(&self, store: &Store, d: &Desc) -> anyhow::Result<()> {
        if store.has_blob(&d.digest) {
            return Ok(());
        }
        let s = self
            .sources
            .iter()
            .find(|s| s.records.values().any(|r| r.chunks.as_ref() == Some(d)))
            .with_context(|| format!("no cache names blob {}", d.digest))?;
        let settings = self.settings.clone().unwrap_or_default();
        fetch_small_from(&s.origin, &settings, store, d)
            .with_context(|| format!("cache {}: blob {}", s.label, d.digest))
    }

    /// Whether an error is a refused layer (the build may run again).
    pub fn is_refusal(e: &anyhow::Error) -> bool {
        e.chain().any(|c| {
            matches!(
                c.downcast_ref::<CacheError>(),
                Some(CacheError::Tampered { .. })
            )
        })
    }

    /// Copy a layer into `to` (an export to a directory): from the store,
    /// after fetching and checking it when only a remote cache has it.
    pub fn copy_layer_to(
        &self,
        store: &Store,
        d: &Desc,
        to: &std::path::Path,
    ) -> anyhow::Result<()> {
        let claims: Vec<LayerRef> = match self.remote.lock() {
            Ok(m) => m
                .keys()
                .filter(|(digest, _)| *digest == d.digest)
                .map(|(digest, diff_id)| LayerRef {
                    digest: digest.clone(),
                    diff_id: diff_id.clone(),
                    size: d.size,
                    media_type: d.media_type.clone(),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        self.ensure_local(store, &claims)?;
        layout::copy_file_atomic(&store.blob_path(&d.digest)?, to)
    }
}

/// Slot → key of each record with a layer and a chunk index (the first
/// of a slot wins).
fn slots_of(records: &[MapRecord]) -> HashMap<String, String> {
    let mut slots = HashMap::new();
    for r in records {
        if let (Some(slot), Some(_), Some(_)) = (&r.slot, &r.layer, &r.chunks) {
            slots.entry(slot.clone()).or_insert_with(|| r.key.clone());
        }
    }
    slots
}

/// Where a missed step's earlier layer and its chunk index can be fetched
/// from (`RemoteCaches::seed_source`), detached from the caches so a
/// thread of its own can fetch them while the step runs.
pub struct SeedSource {
    /// The cache, as messages name it.
    pub label: String,
    pub layer: LayerRef,
    pub index: Desc,
    origin: Origin,
    settings: Settings,
}

impl SeedSource {
    /// The chunk index (small, digest-checked).
    pub fn fetch_index(&self, store: &Store) -> anyhow::Result<Vec<u8>> {
        fetch_small_from(&self.origin, &self.settings, store, &self.index)?;
        let bytes = std::fs::read(store.blob_path(&self.index.digest)?)?;
        Ok(bytes)
    }

    /// The layer blob into the store, checked against its digest and
    /// size only: it is read for its chunks, each verified on its own,
    /// never used as a layer on this claim (a record naming it as one
    /// still gets its diff_id checked).
    pub fn fetch_layer(&self, store: &Store) -> anyhow::Result<()> {
        let l = &self.layer;
        if store.has_blob(&l.digest) {
            return Ok(());
        }
        match &self.origin {
            Origin::Registry(r) => {
                remote::fetch_blob_into(store, &self.settings, r, &l.digest, l.size)
            }
            Origin::Local(dir) => copy_from_dir(dir, store, &l.digest, l.size),
        }
        .with_context(|| format!("cache {}: layer {}", self.label, l.digest))
    }
}

impl SeedSource {
    /// Hands the layer's bytes, as they arrive from the cache, to
    /// `consume` (which stores and verifies them), retrying a download
    /// that broke off: the seeding checks chunks while the layer arrives.
    pub fn stream_layer<T>(
        &self,
        consume: &dyn Fn(&mut dyn std::io::Read) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let l = &self.layer;
        match &self.origin {
            Origin::Registry(r) => {
                remote::fetch_with(&self.settings, r, &l.digest, l.size, consume)
            }
            Origin::Local(dir) => {
                let path = layout::blob_path(dir, &l.digest)?;
                let f = layout::open_file(&path)?;
                // One byte over: a longer file fails the size check.
                consume(&mut std::io::Read::take(f, l.size.saturating_add(1)))
            }
        }
        .with_context(|| format!("cache {}: layer {}", self.label, l.digest))
    }
}

/// Copy the blob `digest` of the layout `dir` into the store, verified.
fn copy_from_dir(
    dir: &std::path::Path,
    store: &Store,
    digest: &str,
    size: u64,
) -> anyhow::Result<()> {
    let path = layout::blob_path(dir, digest)?;
    let f = layout::open_file(&path)?;
    let mut f = std::io::Read::take(f, size.saturating_add(1));
    let mut w = store.blob_writer()?;
    std::io::copy(&mut f, &mut w).with_context(|| format!("copying {}", path.display()))?;
    w.commit_verified(digest, Some(size))?;
    Ok(())
}

/// A small blob (a chunk index) of a cache into the store, verified.
fn fetch_small_from(
    origin: &Origin,
    settings: &Settings,
    store: &Store,
    d: &Desc,
) -> anyhow::Result<()> {
    if store.has_blob(&d.digest) {
        return Ok(());
    }
    if d.size > crate::layer::MAX_INDEX_BYTES {
        anyhow::bail!(
            "blob {} is {} bytes (limit {})",
            d.digest,
            d.size,
            crate::layer::MAX_INDEX_BYTES
        );
    }
    match origin {
        Origin::Registry(r) => {
            let bytes = remote::fetch_small_blob(settings, r, &d.digest, d.size)?;
            store.put_blob(&bytes)?;
            Ok(())
        }
        Origin::Local(dir) => copy_from_dir(dir, store, &d.digest, d.size),
    }
}

/// The manifest and map of one cache.
fn read_source(loc: &Location, settings: &Settings) -> anyhow::Result<(Origin, CacheMap)> {
    let label = loc.to_string();
    match loc {
        Location::Local(dir) => {
            let bytes = layout::read_manifest(dir)?;
            let m = ArtifactManifest::parse(&bytes, &label)?;
            let map = layout::read_small(dir, &m.config.digest)?;
            let map = CacheMap::parse(&map, &label, &m.layers, settings.max_layer_size)?;
            Ok((Origin::Local(dir.clone()), map))
        }
        Location::Registry(r) => {
            let reference = remote::parse_reference(r)?;
            let fetched = remote::fetch_manifest(settings, &reference)?;
            let map = registry_map(settings, &reference, &fetched.bytes, &label)?;
            Ok((Origin::Registry(reference), map))
        }
        Location::Inline => {
            Err(CacheError::invalid(&label, "inline is not a --cache-from source").into())
        }
    }
}

/// A registry cache is an rbuild cache artifact, or an image whose config
/// carries an inline map.
fn registry_map(
    settings: &Settings,
    reference: &Reference,
    manifest: &[u8],
    label: &str,
) -> anyhow::Result<CacheMap> {
    let v: serde_json::Value = serde_json::from_slice(manifest)
        .map_err(|e| CacheError::invalid(label, format!("the manifest is not JSON: {e}")))?;
    if v.get("manifests").is_some() {
        return Err(CacheError::invalid(
            label,
            "an image index, not an rbuild cache (rbuild's cache is an image manifest; a BuildKit \
             cache or a multi-platform image is not one)",
        )
        .into());
    }
    if v["config"]["mediaType"].as_str() == Some(CONFIG_MEDIA_TYPE) {
        let m = ArtifactManifest::parse(manifest, label)?;
        let map = remote::fetch_small_blob(settings, reference, &m.config.digest, m.config.size)?;
        return Ok(CacheMap::parse(
            &map,
            label,
            &m.layers,
            settings.max_layer_size,
        )?);
    }
    // An image: its config's inline field, its layers the ones listed.
    let (Some(digest), Some(size)) = (v["config"]["digest"].as_str(), v["config"]["size"].as_u64())
    else {
        return Err(CacheError::invalid(label, "the manifest has no config").into());
    };
    let layers: Vec<Desc> = serde_json::from_value(v["layers"].clone())
        .map_err(|e| CacheError::invalid(label, format!("the manifest's layers: {e}")))?;
    let config = remote::fetch_small_blob(settings, reference, digest, size)?;
    let config: serde_json::Value = serde_json::from_slice(&config)
        .map_err(|e| CacheError::invalid(label, format!("the image config is not JSON: {e}")))?;
    let Some(inline) = config.get(INLINE_FIELD) else {
        return Err(CacheError::invalid(
            label,
            format!("neither an rbuild cache nor an image with an inline cache (no {INLINE_FIELD} in its config)\nhint: push it with --cache-to type=inline"),
        )
        .into());
    };
    let bytes = serde_json::to_vec(inline).unwrap_or_default();
    Ok(CacheMap::parse(
        &bytes,
        label,
        &layers,
        settings.max_layer_size,
    )?)
}

/// The saved cache mounts of all sources, the first source's entry winning
/// for an id and platform; a blob is fetched from the source that named it.
/// Also the source index of each valid entry's blob (a push or an export
/// to that registry mounts it from there, as record layers).
fn mount_set(
    sources: &[Source],
    settings: &Settings,
    warn: &dyn Fn(String),
) -> (super::mounts::MountSet, HashMap<String, usize>) {
    use super::mounts::{MountSet, PackedMount};
    let mut entries = Vec::new();
    let mut by_digest: HashMap<String, (String, Origin)> = HashMap::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, s) in sources.iter().enumerate() {
        for v in &s.mounts {
            match serde_json::from_value::<PackedMount>(v.clone()) {
                Ok(p) => {
                    by_digest
                        .entry(p.layer.digest.clone())
                        .or_insert_with(|| (s.label.clone(), s.origin.clone()));
                    index.entry(p.layer.digest.clone()).or_insert(i);
                    entries.push(p);
                }
                Err(e) => warn(format!(
                    "--cache-from {}: a cache mount entry is not one ({e}); skipped",
                    s.label
                )),
            }
        }
    }
    let settings = settings.clone();
    let fetch = move |store: &Store, p: &PackedMount| -> anyhow::Result<()> {
        let (label, origin) = by_digest
            .get(&p.layer.digest)
            .with_context(|| format!("no cache holds layer {}", p.layer.digest))?;
        let digest = &p.layer.digest;
        match origin {
            Origin::Registry(r) => {
                remote::fetch_blob_into(store, &settings, r, digest, p.layer.size)
            }
            Origin::Local(dir) => {
                let path = layout::blob_path(dir, digest)?;
                let f = layout::open_file(&path).with_context(|| format!("cache {label}"))?;
                let mut f = std::io::Read::take(f, p.layer.size.saturating_add(1));
                let mut w = store.blob_writer()?;
                std::io::copy(&mut f, &mut w)
                    .with_context(|| format!("cache {label}: copying {}", path.display()))?;
                w.commit_verified(digest, Some(p.layer.size))?;
                Ok(())
            }
        }
        .with_context(|| format!("cache {label}: cache mount {}", p.id))
    };
    let (set, errors) = MountSet::new(entries, Box::new(fetch));
    for e in errors {
        warn(format!("--cache-from: {e}; skipped"));
    }
    index.retain(|d, _| set.entries().iter().any(|e| &e.layer.digest == d));
    (set, index)
}
