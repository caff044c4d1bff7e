//! The parts of manifests and indexes the client reads: descriptors,
//! limits, and choosing a platform from an index.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::settings::Settings;
use crate::oci::digest::is_valid_digest;
use crate::oci::media::{LAYER_TYPES, OCI_INDEX, OCI_MANIFEST};
use crate::oci::Platform;

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
        // Digests end up in URLs and store paths: check them all first.
        let all = p.config.iter().map(|d| ("config", d));
        let all = all.chain(p.layers.iter().map(|d| ("layer", d)));
        let all = all.chain(p.manifests.iter().flatten().map(|d| ("manifest", d)));
        for (i, (kind, d)) in all.enumerate() {
            if !is_valid_digest(&d.digest) {
                bail!(
                    "{what}: descriptor {i} ({kind}) has an invalid digest {:?}: expected \
                     sha256:<64 hex> or sha512:<128 hex>",
                    d.digest.chars().take(150).collect::<String>()
                );
            }
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

/// Refuse an image manifest over the layer limits or with a layer type
/// rbuild cannot handle, before any blob is fetched.
pub fn check_limits(p: &Parsed, settings: &Settings, what: &str) -> Result<()> {
    if p.layers.len() > settings.max_layers {
        bail!(
            "{what}: the image has {} layers, more than the limit of {}\n\
             hint: raise it with --max-layers",
            p.layers.len(),
            settings.max_layers
        );
    }
    if let Some(c) = &p.config {
        if c.size > super::blobs::MAX_SMALL_BLOB {
            bail!(
                "{what}: the image config is declared as {} bytes, more than {}",
                c.size,
                super::blobs::MAX_SMALL_BLOB
            );
        }
    }
    for (i, l) in p.layers.iter().enumerate() {
        if !LAYER_TYPES.contains(&l.media_type.as_str()) {
            bail!(
                "{what}: layer {i} ({}) has media type {:?}, which rbuild cannot unpack \
                 (known: {})",
                l.digest,
                l.media_type.chars().take(150).collect::<String>(),
                LAYER_TYPES.join(", ")
            );
        }
        if l.size > settings.max_layer_size {
            bail!(
                "{what}: layer {i} ({}) is declared as {} bytes, more than the limit of {}\n\
                 hint: raise it with --max-layer-size",
                l.digest,
                l.size,
                settings.max_layer_size
            );
        }
    }
    Ok(())
}

/// Check that an image config lists one valid diff_id per layer.
pub fn check_diff_ids(config: &[u8], layers: usize) -> Result<()> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: Option<RootFs>,
    }
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Option<Vec<String>>,
    }
    let c: Config = serde_json::from_slice(config).context("invalid JSON")?;
    let ids = c.rootfs.and_then(|r| r.diff_ids).unwrap_or_default();
    if ids.len() != layers {
        bail!(
            "it lists {} diff_ids for {layers} layers: the image is broken",
            ids.len()
        );
    }
    if let Some(bad) = ids.iter().find(|d| !is_valid_digest(d)) {
        bail!(
            "invalid diff_id {:?}",
            bad.chars().take(150).collect::<String>()
        );
    }
    Ok(())
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
                arch: arch.into(),
                variant: variant.unwrap_or_default().into(),
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
    fn refuses_bad_digests_types_and_counts() {
        let m = |digest: &str, mt: &str| {
            format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{h}","size":2}},"layers":[{{"mediaType":"{mt}","digest":"{digest}","size":3}}]}}"#,
                h = "a".repeat(64)
            )
        };
        let gz = crate::oci::media::OCI_LAYER_GZIP;
        let good = format!("sha256:{}", "b".repeat(64));
        let err = Parsed::parse(m("sha256:../../x", gz).as_bytes(), "p").unwrap_err();
        assert!(format!("{err}").contains("invalid digest"), "{err}");
        assert!(Parsed::parse(m(&good.to_uppercase(), gz).as_bytes(), "p").is_err());
        let p = Parsed::parse(m(&good, gz).as_bytes(), "p").unwrap();
        let s = Settings::default();
        check_limits(&p, &s, "p").unwrap();
        let p = Parsed::parse(m(&good, "application/x-foo").as_bytes(), "p").unwrap();
        let err = check_limits(&p, &s, "p").unwrap_err();
        assert!(format!("{err}").contains("application/x-foo"), "{err}");
        let p = Parsed::parse(m(&good, gz).as_bytes(), "p").unwrap();
        let tight = Settings {
            max_layers: 0,
            ..Settings::default()
        };
        let err = check_limits(&p, &tight, "p").unwrap_err();
        assert!(format!("{err}").contains("--max-layers"), "{err}");
        let cfg = format!(r#"{{"rootfs":{{"diff_ids":["{good}"]}}}}"#);
        check_diff_ids(cfg.as_bytes(), 1).unwrap();
        assert!(check_diff_ids(cfg.as_bytes(), 2).is_err());
        assert!(check_diff_ids(br#"{"rootfs":{"diff_ids":["sha256:.."]}}"#, 1).is_err());
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
