//! Tags: `index.json` entries, one manifest descriptor per name, named by
//! the `org.opencontainers.image.ref.name` annotation holding the full name
//! (`app:v1`), which is what `skopeo oci:ROOT:app:v1` and umoci look up.

use std::collections::HashMap;
use std::fs;

use anyhow::Context;
use oci_spec::image::{Descriptor, ImageIndex};

use super::Store;

/// The annotation naming a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Normalize an image name for storage and lookup: `app` → `app:latest`;
/// names with a tag or digest are kept as given. The registry module may
/// replace this with full docker.io normalization.
pub fn normalize_tag(name: &str) -> anyhow::Result<String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b))
        && !name.starts_with(['/', ':', '@', '.', '-'])
        && !name.ends_with([':', '/', '@']);
    if !valid {
        anyhow::bail!("invalid image name {name:?}");
    }
    if name.contains('@') {
        return Ok(name.to_string());
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        Ok(name.to_string())
    } else {
        Ok(format!("{name}:latest"))
    }
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

impl Store {
    fn read_index(&self) -> anyhow::Result<ImageIndex> {
        let path = self.index_path();
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    fn write_index(&self, index: &ImageIndex) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(index).context("encoding index.json")?;
        self.atomic_write(&self.index_path(), &bytes)
    }

    /// Read-modify-write `index.json` under the store lock.
    fn update_index<T>(&self, f: impl FnOnce(&mut ImageIndex) -> T) -> anyhow::Result<T> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let out = f(&mut index);
        self.write_index(&index)?;
        Ok(out)
    }

    /// Point `name` (normalized) at `manifest`, replacing any previous target.
    /// Every error says `tagging NAME` once (callers add no such context).
    pub fn tag(&self, name: &str, manifest: &Descriptor) -> anyhow::Result<()> {
        let name = normalize_tag(name)?;
        self.tag_normalized(&name, manifest)
            .with_context(|| format!("tagging {name}"))
    }

    fn tag_normalized(&self, name: &str, manifest: &Descriptor) -> anyhow::Result<()> {
        let name = name.to_string();
        let digest = manifest.digest().to_string();
        anyhow::ensure!(
            self.has_blob(&digest),
            "manifest {digest} is not in the store"
        );
        // Re-tagging to the same manifest (a no-op rebuild) writes nothing.
        if self
            .resolve(&name)?
            .is_some_and(|d| d.digest().to_string() == digest)
        {
            return Ok(());
        }
        let mut desc = manifest.clone();
        let mut ann: HashMap<String, String> = desc.annotations().clone().unwrap_or_default();
        ann.insert(REF_NAME.to_string(), name.clone());
        desc.set_annotations(Some(ann));
        self.update_index(|index| {
            let mut manifests = index.manifests().clone();
            match manifests.iter().position(|d| ref_name(d) == Some(&name)) {
                Some(i) => manifests[i] = desc,
                None => manifests.push(desc),
            }
            index.set_manifests(manifests);
        })
    }

    /// Remove a tag; `false` if there was no such tag.
    pub fn untag(&self, name: &str) -> anyhow::Result<bool> {
        let name = normalize_tag(name)?;
        self.update_index(|index| {
            let mut manifests = index.manifests().clone();
            let before = manifests.len();
            manifests.retain(|d| ref_name(d) != Some(&name));
            let removed = manifests.len() != before;
            index.set_manifests(manifests);
            removed
        })
        .with_context(|| format!("untagging {name}"))
    }

    /// The manifest descriptor `name` (normalized) points at.
    pub fn resolve(&self, name: &str) -> anyhow::Result<Option<Descriptor>> {
        let name = normalize_tag(name)?;
        Ok(self
            .tags()?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d))
    }

    /// Every tag and its manifest descriptor, in `index.json` order.
    pub fn tags(&self) -> anyhow::Result<Vec<(String, Descriptor)>> {
        let _lock = self.lock_index()?;
        let index = self.read_index()?;
        Ok(index
            .manifests()
            .iter()
            .filter_map(|d| ref_name(d).map(|n| (n.to_string(), d.clone())))
            .collect())
    }

    /// Every descriptor in `index.json`, tagged or not (the GC roots).
    pub(crate) fn index_roots(&self) -> anyhow::Result<Vec<Descriptor>> {
        Ok(self.read_index()?.manifests().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_adds_latest_only_without_tag() {
        assert_eq!(normalize_tag("app").unwrap(), "app:latest");
        assert_eq!(normalize_tag("app:v1").unwrap(), "app:v1");
        assert_eq!(
            normalize_tag("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_tag("localhost:5000/app:v2").unwrap(),
            "localhost:5000/app:v2"
        );
        let d = format!("app@sha256:{}", "a".repeat(64));
        assert_eq!(normalize_tag(&d).unwrap(), d);
        assert!(normalize_tag("").is_err());
        assert!(normalize_tag("app:").is_err());
        assert!(normalize_tag("a b").is_err());
        assert!(normalize_tag("../x").is_err());
    }

    #[test]
    fn tag_errors_name_the_tag_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = store.put_blob(b"{}").unwrap();
        let desc = oci_spec::image::DescriptorBuilder::default()
            .media_type(oci_spec::image::MediaType::ImageManifest)
            .digest(oci_spec::image::Digest::try_from(blob.digest.as_str()).unwrap())
            .size(blob.size)
            .build()
            .unwrap();
        // Writing index.json fails once the temp dir is gone.
        std::fs::remove_dir_all(store.tmp_dir()).unwrap();
        let err = format!("{:#}", store.tag("app:v1", &desc).unwrap_err());
        assert_eq!(err.matches("tagging").count(), 1, "{err}");
        assert!(err.starts_with("tagging app:v1: "), "{err}");
    }
}
