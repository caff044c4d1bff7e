//! The registry side of a cache: read its manifest and map, fetch one
//! layer into the store (verified), push the artifact. Every answer is
//! untrusted: sizes are bounded before reading, digests checked after.

use std::io::Read;

use anyhow::{bail, Context, Result};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::registry::client::scope;
use crate::registry::{Reference, Registry, Settings};
use crate::store::Store;

use super::format::{sha256, MAX_MAP_BYTES};

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
    let reg = Registry::new(reference.api_host(), settings)?;
    let repo = &reference.repository;
    let r = reference.manifest_ref();
    let what = format!("fetching cache manifest {reference}");
    let resp = reg.send(&[scope(repo, "pull")], &what, true, &|c, base| {
        c.get(format!("{base}/v2/{repo}/manifests/{r}"))
            .header(ACCEPT, crate::registry::manifest::ACCEPT)
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
    let reg = Registry::new(reference.api_host(), settings)?;
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
/// size before the blob appears).
pub fn fetch_blob_into(
    store: &Store,
    settings: &Settings,
    reference: &Reference,
    digest: &str,
    size: u64,
) -> Result<()> {
    let reg = Registry::new(reference.api_host(), settings)?;
    let repo = &reference.repository;
    let what = format!("fetching layer {digest} from {reference}");
    let resp = reg.send(&[scope(repo, "pull")], &what, true, &|c, base| {
        c.get(format!("{base}/v2/{repo}/blobs/{digest}"))
    })?;
    let resp = reg.check(resp, &what)?;
    let mut body = reg.guard(resp, &what, size);
    let mut w = store.blob_writer()?;
    std::io::copy(&mut body, &mut w).with_context(|| what.clone())?;
    w.commit_verified(digest, Some(size))
        .with_context(|| what.clone())?;
    Ok(())
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
