//! The image config: OCI's fields plus docker's `Healthcheck`, `Shell` and
//! `OnBuild`, written inside `config` the way BuildKit does. We keep our own
//! serde types rather than `oci_spec::image::ImageConfiguration` because that
//! type drops those docker fields and serializes maps in hash order, which
//! would make digests unstable. Maps here are `BTreeMap`s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::canonical::to_canonical_json;
use crate::oci::Platform;

/// Go's `map[string]struct{}` value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// docker's health check (durations in nanoseconds, as docker writes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

/// Docker writes `null` for empty lists and maps; read it as empty.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// How a container runs: the `config` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
}

impl RunConfig {
    /// Set `KEY=value` in `Env`, replacing an existing `KEY`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        let prefix = format!("{key}=");
        match self
            .env
            .iter()
            .position(|e| e.starts_with(&prefix) || e == key)
        {
            Some(i) => self.env[i] = entry,
            None => self.env.push(entry),
        }
    }
}

/// `rootfs`: the uncompressed layer digests, first to last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub typ: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            typ: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl HistoryEntry {
    /// An entry created now (or at `SOURCE_DATE_EPOCH`) by `created_by`.
    pub fn new(created_by: &str) -> HistoryEntry {
        HistoryEntry {
            created: Some(super::time::created_now()),
            created_by: Some(created_by.to_string()),
            ..HistoryEntry::default()
        }
    }
}

/// The image config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub config: RunConfig,
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<HistoryEntry>,
    /// rbuild's inline build cache (`--cache-to type=inline`, read back by
    /// `--cache-from IMAGE`), where BuildKit keeps `moby.buildkit.cache.v0`.
    #[serde(
        default,
        rename = "rbuild.cache.v1",
        skip_serializing_if = "Option::is_none"
    )]
    pub inline_cache: Option<serde_json::Value>,
}

impl ImageConfig {
    /// An empty image (`FROM scratch`) for the host platform.
    pub fn for_host() -> ImageConfig {
        let host = Platform::host();
        ImageConfig {
            created: Some(super::time::created_now()),
            architecture: host.arch,
            os: host.os,
            variant: (!host.variant.is_empty()).then_some(host.variant),
            ..ImageConfig::default()
        }
    }

    pub fn from_json(bytes: &[u8]) -> anyhow::Result<ImageConfig> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Canonical JSON: the bytes whose digest is the image ID.
    pub fn to_json(&self) -> anyhow::Result<Vec<u8>> {
        to_canonical_json(self)
    }

    /// Append a layer and its history entry together, so `rootfs.diff_ids`
    /// and the non-empty `history` entries never drift apart.
    pub fn add_layer(&mut self, diff_id: &str, mut history: HistoryEntry) {
        history.empty_layer = false;
        self.rootfs.diff_ids.push(diff_id.to_string());
        self.history.push(history);
    }

    /// Record a metadata-only step (ENV, CMD, …): history without a layer.
    pub fn add_empty_layer(&mut self, mut history: HistoryEntry) {
        history.empty_layer = true;
        self.history.push(history);
    }

    /// Each history entry with the index of its layer (None if empty).
    /// Images with no history get one synthetic entry per layer.
    pub fn history_with_layers(&self) -> Vec<(HistoryEntry, Option<usize>)> {
        if self.history.is_empty() {
            return (0..self.rootfs.diff_ids.len())
                .map(|i| (HistoryEntry::default(), Some(i)))
                .collect();
        }
        let mut next = 0;
        self.history
            .iter()
            .map(|h| {
                if h.empty_layer {
                    (h.clone(), None)
                } else {
                    next += 1;
                    (h.clone(), Some(next - 1))
                }
            })
            .collect()
    }

    /// Give a base image's layers the history entries it lacks (`history`
    /// is optional in the OCI spec), so layers added on top keep history
    /// and diff_ids in step. The missing entries are the oldest layers;
    /// BuildKit fills the gap the same way.
    pub fn fill_missing_history(&mut self) {
        let with_layer = self.history.iter().filter(|h| !h.empty_layer).count();
        let missing = self.rootfs.diff_ids.len().saturating_sub(with_layer);
        if missing > 0 {
            let filler = (0..missing).map(|_| HistoryEntry::default());
            self.history.splice(0..0, filler);
        }
    }

    /// Whether history and diff_ids agree (non-empty entries == layers).
    pub fn is_consistent(&self) -> bool {
        self.history.is_empty()
            || self.history.iter().filter(|h| !h.empty_layer).count() == self.rootfs.diff_ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_history_stay_in_sync() {
        let mut c = ImageConfig::for_host();
        c.add_empty_layer(HistoryEntry::new("ENV A=1"));
        c.add_layer(
            &format!("sha256:{}", "1".repeat(64)),
            HistoryEntry::new("COPY . /"),
        );
        c.add_empty_layer(HistoryEntry::new("CMD [\"sh\"]"));
        assert!(c.is_consistent());
        let rows = c.history_with_layers();
        assert_eq!(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            vec![None, Some(0), None]
        );
    }

    #[test]
    fn a_base_without_history_gets_one_entry_per_layer() {
        let mut c = ImageConfig::for_host();
        c.rootfs.diff_ids = vec![format!("sha256:{}", "1".repeat(64)); 2];
        c.fill_missing_history();
        c.add_layer(
            &format!("sha256:{}", "2".repeat(64)),
            HistoryEntry::new("COPY . /"),
        );
        assert!(c.is_consistent());
        assert_eq!(c.history.len(), 3);
        assert_eq!(c.history[2].created_by.as_deref(), Some("COPY . /"));
        c.fill_missing_history();
        assert_eq!(c.history.len(), 3, "nothing added when complete");
    }

    #[test]
    fn config_json_is_canonical_and_has_docker_fields() {
        let mut c = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..ImageConfig::default()
        };
        c.config.exposed_ports.insert("80/tcp".into(), Empty {});
        c.config.labels.insert("b".into(), "2".into());
        c.config.labels.insert("a".into(), "1".into());
        c.config.healthcheck = Some(HealthConfig {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: 30_000_000_000,
            retries: 3,
            ..HealthConfig::default()
        });
        c.config.set_env("PATH", "/bin");
        c.config.set_env("PATH", "/usr/bin");
        let json = String::from_utf8(c.to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"architecture":"amd64","config":{"Env":["PATH=/usr/bin"],"ExposedPorts":{"80/tcp":{}},"Healthcheck":{"Interval":30000000000,"Retries":3,"Test":["CMD-SHELL","true"]},"Labels":{"a":"1","b":"2"}},"os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#
        );
        assert_eq!(ImageConfig::from_json(json.as_bytes()).unwrap(), c);
        let docker = r#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Labels":null,"Volumes":null,"Cmd":["sh"],"Hostname":""},"rootfs":{"type":"layers","diff_ids":null},"history":null,"docker_version":"20"}"#;
        let parsed = ImageConfig::from_json(docker.as_bytes()).unwrap();
        assert_eq!(parsed.config.cmd, Some(vec!["sh".to_string()]));
        assert!(parsed.config.env.is_empty() && parsed.rootfs.diff_ids.is_empty());
    }
}
