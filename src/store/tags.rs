//! Tags: `index.json` entries, one manifest descriptor per name, named by
//! the `org.opencontainers.image.ref.name` annotation holding the full name
//! (`app:v1`), which is what `skopeo oci:ROOT:app:v1` and umoci look up.

use std::collections::HashMap;
use std::fs;

use anyhow::Context;
use oci_spec::image::{Descriptor, ImageIndex};

use super::Store;
use crate::oci::digest::is_valid_digest;
use crate::oci::reference::{is_image_id, is_valid_component, is_valid_host, is_valid_tag};
use crate::oci::REF_NAME;

/// Why a name cannot be stored as a tag: the rule of docker's reference
/// grammar it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("invalid reference `{0}`: it is empty")]
    Empty(String),
    #[error("invalid reference `{0}`: repository name must be lowercase")]
    Uppercase(String),
    #[error("invalid reference `{0}`: tag must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    BadTag(String),
    #[error("invalid reference `{0}`: digest must be sha256:<64 lowercase hex> or sha512:<128 lowercase hex>")]
    BadDigest(String),
    #[error("invalid reference `{0}`: registry host is not a valid hostname[:port]")]
    BadRegistry(String),
    #[error("invalid reference `{0}`: path components must be [a-z0-9]+ joined by '.', '_', '__' or '-', separated by '/'")]
    BadName(String),
    #[error("invalid reference `{0}`: repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    #[error(
        "invalid reference `{0}`: a 64-character hex string is an image ID, not a repository name"
    )]
    LooksLikeId(String),
}

/// Docker's limit on `[registry/]path` (without tag or digest).
const MAX_NAME_LEN: usize = 255;

/// Checks `name` against docker's reference grammar (`distribution/reference`):
/// `[host[:port]/]component(/component)*[:tag][@digest]`, components
/// lowercase, name at most 255 characters, tag `[\w][\w.-]{0,127}`, digest
/// `sha256:` + 64 lowercase hex. The store keeps names as given (no
/// `docker.io/library/` prefix), so this validates without normalizing:
/// the grammar's pieces are `oci::reference`'s, applied to the raw name.
pub fn check_reference(name: &str) -> Result<(), TagError> {
    let owned = || name.to_string();
    if name.is_empty() {
        return Err(TagError::Empty(owned()));
    }
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (name, None),
    };
    if digest.is_some_and(|d| !is_valid_digest(d)) {
        return Err(TagError::BadDigest(owned()));
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if tag.is_some_and(|t| !is_valid_tag(t)) {
        return Err(TagError::BadTag(owned()));
    }
    if repo.is_empty() {
        return Err(TagError::Empty(owned()));
    }
    if repo.len() > MAX_NAME_LEN {
        return Err(TagError::TooLong(owned()));
    }
    // Docker's split: the first element is a registry when it has a '.' or
    // ':', is `localhost`, or is not lowercase.
    let (host, path) = match repo.split_once('/') {
        Some((h, p)) if h.contains(['.', ':']) || h == "localhost" || h.to_lowercase() != h => {
            (Some(h), p)
        }
        _ => (None, repo),
    };
    if host.is_some_and(|h| !is_valid_host(h)) {
        return Err(TagError::BadRegistry(owned()));
    }
    if host.is_none() && is_image_id(path) {
        return Err(TagError::LooksLikeId(owned()));
    }
    for component in path.split('/') {
        if component.chars().any(|c| c.is_uppercase()) {
            return Err(TagError::Uppercase(owned()));
        }
        if !is_valid_component(component) {
            return Err(TagError::BadName(owned()));
        }
    }
    Ok(())
}

/// Normalize an image name for storage: checked with [`check_reference`],
/// then `app` → `app:latest`; names with a tag or digest are kept as given.
pub fn normalize_tag(name: &str) -> anyhow::Result<String> {
    check_reference(name)?;
    Ok(with_default_tag(name))
}

fn with_default_tag(name: &str) -> String {
    if name.contains('@') {
        return name.to_string();
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The name an existing entry is looked up or removed by. Looser than
/// [`normalize_tag`] on purpose: stores written before tags were checked
/// may hold names docker would refuse, and `rbuild rmi` must still reach them.
pub fn lookup_name(name: &str) -> anyhow::Result<String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@+".contains(&b))
        && !name.starts_with(['/', ':', '@', '.', '-'])
        && !name.ends_with([':', '/', '@']);
    if !valid {
        anyhow::bail!("invalid image name {name:?}");
    }
    Ok(with_default_tag(name))
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
        serde_json::from_slice(&bytes).map_err(|e| {
            // Not "no such image": the tags it held are unknown, not gone.
            anyhow::Error::new(super::StoreError::Corrupt {
                what: "index",
                path: path.clone(),
                why: e.to_string(),
                hint: "restore it from a backup; or move it aside (rbuild then starts \
                       an empty index: the images stay in blobs/ until `rbuild prune`)",
            })
        })
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
        let name = lookup_name(name)?;
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
        let name = lookup_name(name)?;
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

    #[test]
    fn docker_reference_rules_are_enforced() {
        let err = |n: &str| check_reference(n).expect_err(n);
        assert!(matches!(err("UPPER:tag"), TagError::Uppercase(_)));
        assert_eq!(
            err("UPPER:tag").to_string(),
            "invalid reference `UPPER:tag`: repository name must be lowercase"
        );
        assert!(matches!(err("app/Sub:v1"), TagError::Uppercase(_)));
        assert!(matches!(
            err(&format!("app:{}", "t".repeat(129))),
            TagError::BadTag(_)
        ));
        assert!(matches!(err(&"a".repeat(300)), TagError::TooLong(_)));
        assert!(matches!(
            err(&format!("{}:v1", "a".repeat(256))),
            TagError::TooLong(_)
        ));
        assert!(matches!(err("a@sha256:zz"), TagError::BadDigest(_)));
        assert!(matches!(
            err(&format!("a@sha256:{}", "A".repeat(64))),
            TagError::BadDigest(_)
        ));
        assert!(matches!(err("app:.v1"), TagError::BadTag(_)));
        assert!(matches!(err("app:-v1"), TagError::BadTag(_)));
        assert!(matches!(err("app:"), TagError::BadTag(_)));
        assert!(matches!(err("a..b"), TagError::BadName(_)));
        assert!(matches!(err("a//b"), TagError::BadName(_)));
        assert!(matches!(err("-a"), TagError::BadName(_)));
        assert!(matches!(err("a_"), TagError::BadName(_)));
        assert!(matches!(err("bad_host:5000/a"), TagError::BadRegistry(_)));
        assert!(matches!(err(&"f".repeat(64)), TagError::LooksLikeId(_)));
        for ok in [
            "app",
            "app:v1",
            "a__b",
            "a--b__c_d/e:V1.2-x_y",
            "localhost/app",
            "localhost:5000/app:v2",
            "Registry.Example.com/app",
            "127.0.0.1:5000/a/b/c",
            "[::1]:5000/app",
        ] {
            check_reference(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        check_reference(&format!("a:{}", "t".repeat(128))).expect("128-char tag");
        check_reference(&"a".repeat(255)).expect("255-char name");
        check_reference(&format!("app@sha256:{}", "a".repeat(64))).expect("digest");
    }
}
