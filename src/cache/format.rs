//! The exported cache: an OCI image manifest (artifact type
//! `application/vnd.rbuild.cache.v1`) whose config blob is the map from
//! step keys to layers, and whose layers are every layer the map names.
//! Everything read here came from elsewhere: it is validated before use.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::CacheError;
use crate::oci::digest::sha256_digest as sha256;
use crate::oci::LayerRef;

pub use crate::oci::media::OCI_MANIFEST;
pub use crate::oci::media::RBUILD_CACHE_ARTIFACT as ARTIFACT_TYPE;
pub use crate::oci::media::RBUILD_CACHE_CONFIG as CONFIG_MEDIA_TYPE;
/// The image config field an inline cache travels in (BuildKit's is
/// `moby.buildkit.cache.v0`).
pub const INLINE_FIELD: &str = "rbuild.cache.v1";
/// The only map schema this rbuild reads and writes.
pub const SCHEMA: u32 = 1;
/// Bounds on what a map may hold: a map is read whole into memory.
pub const MAX_MAP_BYTES: u64 = 16 << 20;
pub const MAX_RECORDS: usize = 100_000;

use crate::oci::media::LAYER_TYPES;
use crate::oci::media::RBUILD_CHUNK_INDEX as CHUNK_INDEX;

/// The config blob: schema-versioned records (and cache mounts, filled by
/// the cache-mount exporter; entries this rbuild does not know are kept
/// as they are).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMap {
    pub schema: u32,
    pub records: Vec<MapRecord>,
    #[serde(default)]
    pub mounts: Vec<serde_json::Value>,
}

/// One step's result, found by its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapRecord {
    pub key: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub layer: Option<LayerRef>,
    /// The step's history time (RFC 3339): the same on every reuse, so the
    /// image digest is too.
    pub created: String,
    /// The step's place without its inputs (stage, position, instruction,
    /// platform): a build whose key misses finds "this step last time"
    /// by it. Absent in maps of older rbuilds (which ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// The layer's chunk index (`layer::chunkseed`), a blob of the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Desc>,
}

/// A descriptor of the artifact manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desc {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// The artifact manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    pub config: Desc,
    #[serde(default)]
    pub layers: Vec<Desc>,
}

impl CacheMap {
    pub fn new(records: Vec<MapRecord>) -> CacheMap {
        CacheMap {
            schema: SCHEMA,
            records,
            mounts: Vec::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain structs of strings and numbers: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Every distinct layer the records name, in first-named order, then
    /// those of the saved cache mounts (`cache::mounts`).
    pub fn layers(&self) -> Vec<Desc> {
        let mut seen = HashSet::new();
        let mounts: Vec<crate::oci::LayerRef> = self
            .mounts
            .iter()
            .filter_map(|m| serde_json::from_value(m.get("layer")?.clone()).ok())
            .collect();
        let indexes = self.records.iter().filter_map(|r| r.chunks.clone());
        self.records
            .iter()
            .filter_map(|r| r.layer.as_ref())
            .chain(mounts.iter())
            .map(|l| Desc {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
            })
            .chain(indexes)
            .filter(|d| seen.insert(d.digest.clone()))
            .collect()
    }

    /// The artifact manifest for this map, whose config blob is `config`.
    pub fn manifest(&self, config: &[u8]) -> Vec<u8> {
        let m = ArtifactManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.to_string(),
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            config: Desc {
                media_type: CONFIG_MEDIA_TYPE.to_string(),
                digest: sha256(config),
                size: config.len() as u64,
            },
            layers: self.layers(),
        };
        serde_json::to_vec(&m).unwrap_or_default()
    }

    /// Parse and validate a map read from `source`. `listed` are the
    /// layers the manifest names (None for an inline map, whose layers
    /// are the image's own, passed in the same way by the caller).
    pub fn parse(
        bytes: &[u8],
        source: &str,
        listed: &[Desc],
        max_layer_size: u64,
    ) -> Result<CacheMap, CacheError> {
        if bytes.len() as u64 > MAX_MAP_BYTES {
            return Err(CacheError::invalid(
                source,
                format!(
                    "the cache map is {} bytes (limit {MAX_MAP_BYTES})",
                    bytes.len()
                ),
            ));
        }
        let map: CacheMap = serde_json::from_slice(bytes)
            .map_err(|e| CacheError::invalid(source, format!("the cache map is not valid: {e}")))?;
        map.validate(source, listed, max_layer_size)?;
        Ok(map)
    }

    fn validate(
        &self,
        source: &str,
        listed: &[Desc],
        max_layer_size: u64,
    ) -> Result<(), CacheError> {
        let bad = |problem: String| Err(CacheError::invalid(source, problem));
        if self.schema != SCHEMA {
            return bad(format!(
                "cache schema {} is not supported (this rbuild reads schema {SCHEMA})",
                self.schema
            ));
        }
        if self.records.len() > MAX_RECORDS {
            return bad(format!(
                "{} records (limit {MAX_RECORDS})",
                self.records.len()
            ));
        }
        let listed: BTreeMap<&str, &Desc> = listed.iter().map(|d| (d.digest.as_str(), d)).collect();
        for (i, r) in self.records.iter().enumerate() {
            if !is_hex64(&r.key) {
                return bad(format!(
                    "record {i}: key {:?} is not 64 hex digits",
                    clip(&r.key)
                ));
            }
            if crate::image::time::parse_rfc3339(&r.created).is_none() {
                return bad(format!(
                    "record {i}: created {:?} is not an RFC 3339 time",
                    clip(&r.created)
                ));
            }
            if let Some(slot) = r.slot.as_deref().filter(|s| !is_hex64(s)) {
                return bad(format!(
                    "record {i}: slot {:?} is not 64 hex digits",
                    clip(slot)
                ));
            }
            let Some(l) = &r.layer else { continue };
            if let Some(c) = &r.chunks {
                let ok = c.media_type == CHUNK_INDEX
                    && c.size <= crate::layer::MAX_INDEX_BYTES
                    && listed
                        .get(c.digest.as_str())
                        .is_some_and(|d| d.size == c.size);
                if !ok || !c.digest.strip_prefix("sha256:").is_some_and(is_hex64) {
                    return bad(format!(
                        "record {i}: chunk index {:?} ({} bytes) is not a listed {CHUNK_INDEX} blob",
                        clip(&c.digest),
                        c.size
                    ));
                }
            }
            for (what, d) in [("digest", &l.digest), ("diff_id", &l.diff_id)] {
                if !d.strip_prefix("sha256:").is_some_and(is_hex64) {
                    return bad(format!(
                        "record {i}: layer {what} {:?} is not sha256:<64 hex>",
                        clip(d)
                    ));
                }
            }
            if !LAYER_TYPES.contains(&l.media_type.as_str()) {
                return bad(format!(
                    "record {i}: {:?} is not a layer media type",
                    clip(&l.media_type)
                ));
            }
            if l.size > max_layer_size {
                return bad(format!(
                    "record {i}: layer {} is {} bytes, over the {max_layer_size}-byte layer limit",
                    l.digest, l.size
                ));
            }
            match listed.get(l.digest.as_str()) {
                Some(d) if d.size == l.size => {}
                _ => {
                    return bad(format!(
                        "record {i}: layer {} ({} bytes) is not among the cache's layers",
                        l.digest, l.size
                    ))
                }
            }
        }
        Ok(())
    }
}

impl ArtifactManifest {
    /// Parse a cache manifest read from `source`: an OCI image manifest
    /// whose config is a cache map.
    pub fn parse(bytes: &[u8], source: &str) -> Result<ArtifactManifest, CacheError> {
        let m: ArtifactManifest = serde_json::from_slice(bytes).map_err(|e| {
            CacheError::invalid(source, format!("not an rbuild cache manifest: {e}"))
        })?;
        if m.schema_version != 2 || m.media_type != OCI_MANIFEST {
            return Err(CacheError::invalid(source, "not an OCI image manifest"));
        }
        if m.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(CacheError::invalid(
                source,
                format!(
                    "its config is {:?}, not an rbuild cache map ({CONFIG_MEDIA_TYPE})",
                    clip(&m.config.media_type)
                ),
            ));
        }
        let digests = std::iter::once(&m.config).chain(&m.layers);
        for d in digests {
            if !d.digest.strip_prefix("sha256:").is_some_and(is_hex64) {
                return Err(CacheError::invalid(
                    source,
                    format!(
                        "descriptor digest {:?} is not sha256:<64 hex>",
                        clip(&d.digest)
                    ),
                ));
            }
        }
        if m.config.size > MAX_MAP_BYTES {
            return Err(CacheError::invalid(
                source,
                format!(
                    "the cache map is {} bytes (limit {MAX_MAP_BYTES})",
                    m.config.size
                ),
            ));
        }
        Ok(m)
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Untrusted text in a message: at most 80 characters of it.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: char, layer: Option<(&str, u64)>) -> MapRecord {
        MapRecord {
            key: key.to_string().repeat(64),
            parent: None,
            layer: layer.map(|(d, size)| LayerRef {
                digest: format!("sha256:{}", d.repeat(64)),
                diff_id: format!("sha256:{}", "f".repeat(64)),
                size,
                media_type: crate::oci::media::OCI_LAYER_GZIP.into(),
            }),
            created: "2026-01-01T00:00:00Z".into(),
            slot: None,
            chunks: None,
        }
    }

    #[test]
    fn a_map_round_trips_through_its_manifest() {
        let map = CacheMap::new(vec![
            record('a', Some(("1", 10))),
            record('b', Some(("1", 10))),
            record('c', None),
        ]);
        let bytes = map.to_bytes();
        let manifest = ArtifactManifest::parse(&map.manifest(&bytes), "t").unwrap();
        assert_eq!(manifest.layers.len(), 1, "layers are deduplicated");
        assert_eq!(manifest.artifact_type.as_deref(), Some(ARTIFACT_TYPE));
        assert_eq!(manifest.config.digest, sha256(&bytes));
        let back = CacheMap::parse(&bytes, "t", &manifest.layers, u64::MAX).unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn a_chunk_index_is_listed_and_old_maps_still_parse() {
        let index = Desc {
            media_type: CHUNK_INDEX.into(),
            digest: format!("sha256:{}", "9".repeat(64)),
            size: 77,
        };
        let map = CacheMap::new(vec![MapRecord {
            slot: Some("5".repeat(64)),
            chunks: Some(index.clone()),
            ..record('a', Some(("1", 10)))
        }]);
        let layers = map.layers();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[1], index);
        let back = CacheMap::parse(&map.to_bytes(), "t", &layers, u64::MAX).unwrap();
        assert_eq!(back, map);
        // A map without the new fields (an older rbuild's) reads as before.
        let old = br#"{"schema":1,"records":[{"key":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","parent":null,"layer":null,"created":"2026-01-01T00:00:00Z"}]}"#;
        let m = CacheMap::parse(old, "t", &[], u64::MAX).unwrap();
        assert_eq!(
            (m.records[0].slot.clone(), m.records[0].chunks.clone()),
            (None, None)
        );
    }

    #[test]
    fn bad_maps_are_refused_with_the_reason() {
        let listed = CacheMap::new(vec![record('a', Some(("1", 10)))]).layers();
        let mut cases: Vec<(CacheMap, &str)> = vec![
            (
                CacheMap {
                    schema: 2,
                    ..CacheMap::new(vec![])
                },
                "schema 2",
            ),
            (
                CacheMap::new(vec![MapRecord {
                    key: "../x".into(),
                    ..record('a', None)
                }]),
                "not 64 hex",
            ),
            (
                CacheMap::new(vec![record('a', Some(("2", 10)))]),
                "not among the cache's layers",
            ),
            (
                CacheMap::new(vec![record('a', Some(("1", 11)))]),
                "not among the cache's layers",
            ),
            (
                CacheMap::new(vec![record('a', Some(("Z", 10)))]),
                "not sha256:<64 hex>",
            ),
            (
                CacheMap::new(vec![MapRecord {
                    created: "yesterday".into(),
                    ..record('a', None)
                }]),
                "RFC 3339",
            ),
        ];
        let index = |size| Desc {
            media_type: CHUNK_INDEX.into(),
            digest: format!("sha256:{}", "9".repeat(64)),
            size,
        };
        let with_index = |size| MapRecord {
            chunks: Some(index(size)),
            ..record('a', Some(("1", 10)))
        };
        cases.push((CacheMap::new(vec![with_index(5)]), "chunk index"));
        cases.push((
            CacheMap::new(vec![MapRecord {
                slot: Some("zz".into()),
                ..record('a', None)
            }]),
            "slot",
        ));
        for (map, want) in cases {
            let err = CacheMap::parse(&map.to_bytes(), "reg/c:1", &listed, u64::MAX)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want) && err.contains("reg/c:1"), "{err}");
        }
        let big = CacheMap::new(vec![record('a', Some(("1", 10)))]);
        let err = CacheMap::parse(&big.to_bytes(), "c", &listed, 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer limit"), "{err}");
        assert!(CacheMap::parse(b"{", "c", &listed, 5).is_err());
    }
}
