//! The parts of manifests and indexes the client reads: media types,
//! descriptors, platforms, and choosing a platform from an index.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Everything we accept when fetching a manifest.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor, as manifests and indexes list them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An image platform (os/architecture/variant).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts
                    .get(2)
                    .map(|v| v.to_string())
                    .filter(|v| !v.is_empty()),
            }),
            _ => bail!("invalid platform {s:?}: expected os/arch[/variant], e.g. linux/arm64/v8"),
        }
    }

    /// The platform this program runs on, in OCI's names.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an index entry for `other` serves this (requested) platform.
    pub fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        // arm64's only variant is v8, so "none" and "v8" are the same.
        let norm = |v: &Option<String>| match (self.architecture.as_str(), v.as_deref()) {
            ("arm64", Some("v8")) | ("arm64", None) => None,
            (_, v) => v.map(str::to_string),
        };
        match &self.variant {
            None => true,
            Some(_) => norm(&self.variant) == norm(&other.variant),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A manifest or index, loosely parsed.
#[derive(Debug, Clone, Deserialize)]
pub struct Parsed {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    pub manifests: Option<Vec<Descriptor>>,
}

impl Parsed {
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        let p: Parsed = serde_json::from_slice(bytes)
            .with_context(|| format!("{what}: invalid manifest JSON"))?;
        if p.schema_version != 2 {
            bail!(
                "{what}: manifest schema version {} is not supported (only schema 2 / OCI)",
                p.schema_version
            );
        }
        if p.manifests.is_none() && p.config.is_none() {
            bail!("{what}: manifest has neither `config` nor `manifests`");
        }
        Ok(p)
    }

    pub fn is_index(&self) -> bool {
        self.manifests.is_some()
    }

    /// The media type to send as Content-Type when pushing.
    pub fn content_type(&self) -> &str {
        match (&self.media_type, self.is_index()) {
            (Some(m), _) if !m.is_empty() => m,
            (_, true) => OCI_INDEX,
            (_, false) => OCI_MANIFEST,
        }
    }
}

/// The index entry for `want` (first match in index order).
pub fn choose_platform<'a>(entries: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    entries
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(os: &str, arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 1,
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(str::to_string),
            }),
        }
    }

    #[test]
    fn chooses_os_arch_variant() {
        let list = vec![
            d("linux", "amd64", None, 1),
            d("linux", "arm", Some("v6"), 2),
            d("linux", "arm", Some("v7"), 3),
            d("linux", "arm64", Some("v8"), 4),
            d("windows", "amd64", None, 5),
        ];
        let pick = |s: &str| {
            choose_platform(&list, &Platform::parse(s).unwrap()).map(|x| x.digest.clone())
        };
        assert_eq!(pick("linux/amd64"), Some(list[0].digest.clone()));
        assert_eq!(pick("linux/arm/v7"), Some(list[2].digest.clone()));
        assert_eq!(pick("linux/arm64"), Some(list[3].digest.clone()));
        assert_eq!(pick("linux/arm64/v8"), Some(list[3].digest.clone()));
        assert_eq!(pick("windows/amd64"), Some(list[4].digest.clone()));
        assert_eq!(pick("linux/s390x"), None);
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("/amd64").is_err());
    }

    #[test]
    fn refuses_schema1_and_garbage() {
        assert!(Parsed::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, "x").is_err());
        assert!(Parsed::parse(b"nope", "x").is_err());
        let idx = Parsed::parse(br#"{"schemaVersion":2,"manifests":[]}"#, "x").unwrap();
        assert!(idx.is_index());
        assert_eq!(idx.content_type(), OCI_INDEX);
    }
}
