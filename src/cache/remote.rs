//! The registry side of a cache: read its manifest and map, fetch one
//! layer into the store (verified), push the artifact. Every answer is
//! untrusted: sizes are bounded before reading, digests checked after.

use std::io::Read;

use anyhow::{bail, Context, Result};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::oci::Reference;
use crate::registry::client::scope;
use crate::registry::{Registry, Settings};
use crate::store::Store;

use super::format::MAX_MAP_BYTES;
use crate::oci::digest::sha256_digest as sha256;

/// A manifest as fetched: bytes, media type, digest.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

/// A parsed `REG/REPO:TAG`, with a readable error.
pub fn parse_reference(r: &str) -> Result<Reference> {
    Reference::parse(r).with_context(|| format!("invalid cache reference {r:?}"))
}

/// GET the manifest `reference` names (a tag or digest).
pub fn fetch_manifest(settings: &Settings, reference: &Reference) -> Result<Fetched> {
    let reg = Registry::new(crate::registry::api_host(&reference.registry), settings)?;
    let repo = &reference.repository;
    let r = reference.manifest_ref();
    let what = format!("fetching cache manifest {reference}");
    let resp = reg.send(&[scope(repo, "pull")], &what, true, &|c, base| {
        c.get(format!("{base}/v2/{repo}/manifests/{r}"))
            .header(ACCEPT, crate::oci::media::MANIFEST_TYPES.join(", "))
    })?;
    let resp = reg.check(resp, &what)?;
    let media_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
        .unwrap_or_default();
    let bytes = reg.read_body(resp, &what, MAX_MAP_BYTES)?;
    let digest = sha256(&bytes);
    if let Some(want) = &reference.digest {
        if &digest != want {
            bail!("{what}: the registry sent content with digest {digest}");
        }
    }
    Ok(Fetched {
        bytes,
        media_type,
        digest,
    })
}

/// GET a small blob (a cache map or image config) into memory, verified.
pub fn fetch_small_blob(
    settings: &Settings,
    reference: &Reference,
    digest: &str,
    size: u64,
) -> Result<Vec<u8>> {
    if size > MAX_MAP_BYTES {
        bail!("blob {digest} of {reference} is {size} bytes (limit {MAX_MAP_BYTES})");
    }
    let reg = Registry::new(crate::registry::api_host(&reference.registry), settings)?;
    let repo = &reference.repository;
    let what = format!("fetching blob {digest} of {reference}");
    let resp = reg.send(&[scope(repo, "pull")], &what, true, &|c, base| {
        c.get(format!("{base}/v2/{repo}/blobs/{digest}"))
    })?;
    let resp = reg.check(resp, &what)?;
    let bytes = reg.read_body(resp, &what, size)?;
    if sha256(&bytes) != digest || bytes.len() as u64 != size {
        bail!("{what}: the content does not match its digest and size");
    }
    Ok(bytes)
}

/// Download one blob into the store (`Store`'s writer verifies digest and
/// size before the blob appears), retrying a transfer that broke off.
pub fn fetch_blob_into(
    store: &Store,
    settings: &Settings,
    reference: &Reference,
    digest: &str,
    size: u64,
) -> Result<()> {
    fetch_with(settings, reference, digest, size, &|body| {
        let mut w = store.blob_writer()?;
        std::io::copy(body, &mut w)?;
        w.commit_verified(digest, Some(size))?;
        Ok(())
    })
}

/// [`fetch_blob_into`] for a layer: its diff_id is computed while it
/// arrives (see [`copy_checking`]).
pub fn fetch_layer_checked(
    store: &Store,
    settings: &Settings,
    reference: &Reference,
    digest: &str,
    size: u64,
) -> Result<String> {
    fetch_with(settings, reference, digest, size, &|body| {
        copy_checking(body, store, digest, size)
    })
}

/// GET a blob and hand its (bounded) body to `consume`, retrying a
/// transfer that broke off.
pub(crate) fn fetch_with<T>(
    settings: &Settings,
    reference: &Reference,
    digest: &str,
    size: u64,
    consume: &dyn Fn(&mut dyn Read) -> Result<T>,
) -> Result<T> {
    let reg = Registry::new(crate::registry::api_host(&reference.registry), settings)?;
    let repo = &reference.repository;
    let what = format!("fetching layer {digest} from {reference}");
    let mut attempt = 0;
    loop {
        let result = reg
            .send(&[scope(repo, "pull")], &what, true, &|c, base| {
                c.get(format!("{base}/v2/{repo}/blobs/{digest}"))
            })
            .and_then(|resp| reg.check(resp, &what))
            .and_then(|resp| {
                let mut body = reg.guard(resp, &what, size);
                consume(&mut body).with_context(|| what.clone())
            });
        match result {
            Ok(v) => return Ok(v),
            // A broken transfer may pass next time; see `final_failure`.
            Err(e) if attempt < reg.retries() && !final_failure(&e) => {
                attempt += 1;
                reg.retrying(attempt, &format!("{e:#}"));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a blob fetch failed for good: a 4xx answer, or content that is
/// not the blob (its digest or size failed, in the store's writer or in
/// the seeding's check). Fetching such a blob again from the same cache
/// downloaded the same wrong bytes again: five times with the default
/// retries, each a whole layer.
fn final_failure(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::registry::ApiError>().is_some()
        || e.downcast_ref::<crate::store::BlobError>().is_some()
        || matches!(
            e.downcast_ref::<crate::layer::ChunkIndexError>(),
            Some(crate::layer::ChunkIndexError::Invalid { .. })
        )
}

/// Copy a layer from `r` into the store and, in the same pass, hash what
/// it decompresses to on a thread of its own (so a fetched layer is read
/// once). Returns the diff_id, or `none (…)` when it does not decompress,
/// which matches no claim.
pub fn copy_checking(r: &mut dyn Read, store: &Store, digest: &str, size: u64) -> Result<String> {
    // Bounded: at most 16 chunks of 64 KiB wait for the hashing thread.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
    let hasher = std::thread::spawn(move || {
        diff_id_of(ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        })
    });
    let mut w = store.blob_writer()?;
    let mut buf = vec![0u8; 1 << 16];
    let copied = (|| -> Result<()> {
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            std::io::Write::write_all(&mut w, &buf[..n])?;
            // The hasher stops early on a stream that does not decompress.
            let _ = tx.send(buf[..n].to_vec());
        }
    })();
    drop(tx);
    let diff_id = hasher
        .join()
        .map_err(|_| anyhow::anyhow!("checking layer {digest}: the hashing thread panicked"))?;
    copied?;
    w.commit_verified(digest, Some(size))?;
    Ok(diff_id.unwrap_or_else(|e| format!("none (the layer does not decompress: {e:#})")))
}

/// The receiving end of [`copy_checking`]'s channel as a reader.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Whether `reader` decompresses (by its codec's magic) to a tar whose
/// sha256 is `diff_id`; returns the actual diff_id.
pub fn diff_id_of(reader: impl Read) -> Result<String> {
    use sha2::Digest;
    let mut r = crate::layer::open_archive(reader).context("opening the layer")?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).context("decompressing the layer")?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_stored_and_checked_in_one_pass() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A tar's bytes stand in for a layer: only their digest matters.
        let tar = vec![7u8; 300_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let digest = sha256(&blob);
        let got = copy_checking(&mut &blob[..], &store, &digest, blob.len() as u64).unwrap();
        assert_eq!(got, sha256(&tar));
        assert!(store.has_blob(&digest));
        // Bytes that are not a layer: stored (they are the blob asked for)
        // but their diff_id is none, which matches no claim.
        let junk = b"\x1f\x8bnot gzip at all".to_vec();
        let d = sha256(&junk);
        let got = copy_checking(&mut &junk[..], &store, &d, junk.len() as u64).unwrap();
        assert!(got.starts_with("none ("), "{got}");
        // A wrong digest is refused and nothing is stored.
        let other = sha256(b"other");
        assert!(copy_checking(&mut &blob[..], &store, &other, blob.len() as u64).is_err());
        assert!(!store.has_blob(&other));
    }

    #[test]
    fn content_that_is_not_the_blob_is_not_fetched_again() {
        use crate::layer::ChunkIndexError;
        let with_context = |e: anyhow::Error| e.context("fetching layer sha256:00 from reg/x");
        let invalid = ChunkIndexError::Invalid {
            digest: "sha256:00".into(),
            problem: "the layer blob does not match its digest and size".into(),
        };
        assert!(final_failure(&with_context(invalid.into())));
        // A transfer that broke off may pass next time.
        let broken = ChunkIndexError::Blob {
            digest: "sha256:00".into(),
            path: "the fetched layer".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        };
        assert!(!final_failure(&with_context(broken.into())));
        assert!(!final_failure(&anyhow::anyhow!("connection reset")));
    }
}
