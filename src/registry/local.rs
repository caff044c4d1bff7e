//! The registry client over rbuild's own store: blobs go straight into
//! `blobs/sha256/`, pulled images are tagged by their normalized reference
//! (with an OCI manifest, so skopeo and umoci see them too), and pushes
//! read from the store.

use std::fs::File;
use std::io::{self, Read};

use anyhow::Context;

use crate::image::{self, Image, ImageFormat};
use crate::store::{BlobInfo, Store};

use super::{pull, push, BlobLocations, BlobStore, PullOptions, PushOptions, PushReport, Settings};
use crate::oci::media::OCI_MANIFEST;
use crate::oci::{Platform, Reference};

impl BlobStore for Store {
    fn has_blob(&self, digest: &str) -> bool {
        Store::has_blob(self, digest)
    }

    fn open_blob(&self, digest: &str) -> io::Result<File> {
        // The anyhow chain rides inside the io::Error: its text and its
        // typed causes stay reachable (`Error::source`).
        Store::open_blob(self, digest).map_err(io::Error::other)
    }

    fn blob_size(&self, digest: &str) -> io::Result<u64> {
        let path = self
            .blob_path(digest)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(std::fs::metadata(path)?.len())
    }

    fn write_blob(
        &self,
        expected_digest: &str,
        expected_size: Option<u64>,
        r: &mut dyn Read,
    ) -> anyhow::Result<()> {
        let mut w = self.blob_writer()?;
        io::copy(r, &mut w).with_context(|| format!("receiving blob {expected_digest}"))?;
        w.commit_verified(expected_digest, expected_size)?;
        Ok(())
    }
}

fn locations(store: &Store) -> anyhow::Result<BlobLocations> {
    BlobLocations::load(&store.blob_locations_file()?)
}

/// The store's tag name for a reference: its normalized form (tag refs only).
pub fn tag_name(r: &Reference) -> Option<String> {
    r.digest.is_none().then(|| r.to_string())
}

/// Pull `reference` into the store, tag it, and return the image.
pub fn pull_into_store(
    store: &Store,
    reference: &Reference,
    settings: &Settings,
    platform: Option<Platform>,
    progress: Option<crate::progress::Transfer>,
) -> anyhow::Result<Image> {
    let loc = locations(store)?;
    let opts = PullOptions {
        platform,
        progress,
        locations: Some(&loc),
    };
    let pulled = pull(reference, store, settings, &opts).map_err(super::RegistryError::wrap)?;
    loc.save()?;
    let desc = image::descriptor(
        &pulled.manifest_media_type,
        &BlobInfo {
            digest: pulled.manifest_digest.clone(),
            size: pulled.manifest.len() as u64,
        },
    )?;
    let img = image::load_image(store, &desc)
        .with_context(|| format!("reading the pulled image {reference}"))?;
    if let Some(name) = tag_name(reference) {
        // Tags point at OCI manifests: skopeo and umoci skip the others.
        let oci = if img.manifest_desc.media_type().to_string() == OCI_MANIFEST {
            img.manifest_desc.clone()
        } else {
            image::convert_image(store, &img, ImageFormat::Oci)?
        };
        // `Store::tag` names the tag in its errors already.
        store.tag(&name, &oci)?;
    }
    Ok(img)
}

/// The stored image a reference names: a tag, or a digest already stored.
pub fn find_local(store: &Store, reference: &Reference) -> anyhow::Result<Option<Image>> {
    if let Some(d) = &reference.digest {
        if !store.has_blob(d) {
            return Ok(None);
        }
        let bytes = store.read_blob(d)?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing manifest {d}"))?;
        let media_type = json["mediaType"]
            .as_str()
            .unwrap_or(OCI_MANIFEST)
            .to_string();
        let desc = image::descriptor(
            &media_type,
            &BlobInfo {
                digest: d.clone(),
                size: bytes.len() as u64,
            },
        )?;
        return image::load_image(store, &desc).map(Some);
    }
    let name = reference.to_string();
    match store.resolve(&name)? {
        Some(desc) => image::load_image(store, &desc).map(Some),
        None => Ok(None),
    }
}

/// Push a stored image (by tag) to `dest`, in `format`'s media types.
pub fn push_from_store(
    store: &Store,
    image_name: &str,
    dest: &Reference,
    settings: &Settings,
    format: ImageFormat,
    mount_from: Vec<String>,
    progress: Option<crate::progress::Transfer>,
) -> anyhow::Result<PushReport> {
    // `find_image` names the image (and says so when the store is corrupt).
    let img = image::find_image(store, image_name)?;
    let desc = match format {
        ImageFormat::Oci => img.manifest_desc.clone(),
        ImageFormat::Docker => image::convert_image(store, &img, ImageFormat::Docker)?,
    };
    let loc = locations(store)?;
    let opts = PushOptions {
        mount_from,
        locations: Some(&loc),
        progress,
        cancel: None,
    };
    let report = push(store, desc.digest().as_ref(), dest, settings, &opts)
        .map_err(super::RegistryError::wrap)?;
    loc.save()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::sha256_digest;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// What pull relies on: a blob whose bytes or size are wrong never
    /// appears, and a good one is readable at once.
    #[test]
    fn write_blob_verifies_and_is_atomic() {
        let (dir, store) = store();
        let data = b"hello blob";
        let d = sha256_digest(data);
        let wrong = sha256_digest(b"other");
        let err = BlobStore::write_blob(&store, &wrong, None, &mut &data[..]).unwrap_err();
        assert!(format!("{err:#}").contains("digest mismatch"), "{err:#}");
        assert!(!BlobStore::has_blob(&store, &wrong));
        let err = BlobStore::write_blob(&store, &d, Some(3), &mut &data[..]).unwrap_err();
        assert!(format!("{err:#}").contains("expected 3 bytes"), "{err:#}");
        assert!(!BlobStore::has_blob(&store, &d));
        BlobStore::write_blob(&store, &d, Some(10), &mut &data[..]).unwrap();
        assert!(BlobStore::has_blob(&store, &d));
        assert_eq!(BlobStore::blob_size(&store, &d).unwrap(), 10);
        let back = crate::registry::blobs::read_small_blob(&store, &d).unwrap();
        assert_eq!(back, data);
        // Nothing but the blob itself is left in the blob directory.
        let n = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn digests_cannot_escape_the_store() {
        let (_dir, store) = store();
        assert!(!BlobStore::has_blob(&store, "sha256:../../oci-layout"));
        assert!(BlobStore::blob_size(&store, "sha256/../../oci-layout").is_err());
        assert!(BlobStore::open_blob(&store, "sha256:../../etc/passwd").is_err());
    }
}
