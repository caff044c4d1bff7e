//! Push: every blob first (HEAD to skip present ones, cross-repo mount when
//! another repository of the same registry is known to hold it, otherwise a
//! POST + monolithic PUT streamed from the file), in parallel and with
//! retries that restart the upload session; the manifest last, and never
//! when a blob failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use reqwest::blocking::Body;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;

use super::blobs::{read_small_blob, BlobStore};
use super::client::{scope, Registry};
use super::known::BlobLocations;
use super::manifest::{Descriptor, Parsed};
use super::run_parallel;
use super::settings::Settings;
use crate::oci::Reference;
use crate::progress::{BlobState, Transfer};

/// What a push asks for besides source and destination.
#[derive(Default)]
pub struct PushOptions<'a> {
    /// Repositories of the destination registry that hold the blobs
    /// (e.g. the base image's), tried as mount sources.
    pub mount_from: Vec<String>,
    /// Record of where blobs are known to exist; read for mount sources
    /// and updated after a successful push.
    pub locations: Option<&'a BlobLocations>,
    /// Where blob bytes sent and each blob's outcome are reported.
    pub progress: Option<Transfer>,
    /// Set to abandon uploads in flight (their bodies stop with an error).
    pub cancel: Option<Arc<AtomicBool>>,
}

/// How each blob reached the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    AlreadyThere,
    Mounted,
    Uploaded,
}

/// The result of a push.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// Digest of the pushed (top-level) manifest.
    pub manifest_digest: String,
    /// Each blob digest and what happened to it.
    pub blobs: Vec<(String, BlobOutcome)>,
}

/// Push the manifest (or index) `manifest_digest` from `store` to `dest`.
pub fn push(
    store: &dyn BlobStore,
    manifest_digest: &str,
    dest: &Reference,
    settings: &Settings,
    opts: &PushOptions,
) -> Result<PushReport> {
    let reg = Registry::new(super::api_host(&dest.registry), settings)?;
    let mut blobs = Vec::new();
    let tag = dest.tag.as_deref().unwrap_or(manifest_digest);
    let digest = push_manifest_tree(
        &reg,
        store,
        manifest_digest,
        dest,
        tag,
        settings,
        opts,
        &mut blobs,
        0,
    )?;
    if let Some(loc) = opts.locations {
        for (d, _) in &blobs {
            loc.record(d, &dest.registry, &dest.repository);
        }
    }
    Ok(PushReport {
        manifest_digest: digest,
        blobs,
    })
}

#[allow(clippy::too_many_arguments)]
fn push_manifest_tree(
    reg: &Registry,
    store: &dyn BlobStore,
    digest: &str,
    dest: &Reference,
    put_as: &str,
    settings: &Settings,
    opts: &PushOptions,
    report: &mut Vec<(String, BlobOutcome)>,
    depth: usize,
) -> Result<String> {
    if depth > 2 {
        bail!("pushing {dest}: indexes nested too deeply at {digest}");
    }
    let bytes = read_small_blob(store, digest)
        .with_context(|| format!("pushing {dest}: reading manifest {digest} from the store"))?;
    let parsed = Parsed::parse(&bytes, &format!("pushing {dest}: manifest {digest}"))?;
    if let Some(children) = &parsed.manifests {
        for child in children {
            push_manifest_tree(
                reg,
                store,
                &child.digest,
                dest,
                &child.digest,
                settings,
                opts,
                report,
                depth + 1,
            )?;
        }
    } else {
        let mut blobs: Vec<Descriptor> = parsed.config.iter().cloned().collect();
        blobs.extend(parsed.layers.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        blobs.retain(|d| seen.insert(d.digest.clone()));
        let results = run_parallel(&blobs, settings.parallelism, |d| {
            let res = ensure_blob(reg, store, d, dest, opts);
            let state = match &res {
                Ok(BlobOutcome::Uploaded) => BlobState::Transferred,
                Ok(BlobOutcome::AlreadyThere) => BlobState::Exists,
                Ok(BlobOutcome::Mounted) => BlobState::Mounted,
                Err(_) => BlobState::Failed,
            };
            report_done(opts, &d.digest, d.size, state);
            res
        });
        let mut failures = Vec::new();
        for (d, r) in blobs.iter().zip(results) {
            match r {
                Ok(o) => report.push((d.digest.clone(), o)),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if !failures.is_empty() {
            bail!(
                "pushing {dest}: {} blob(s) failed, manifest not pushed: {}",
                failures.len(),
                failures.join("; ")
            );
        }
    }
    put_manifest(reg, dest, put_as, &bytes, parsed.content_type(), digest)
}

fn put_manifest(
    reg: &Registry,
    dest: &Reference,
    put_as: &str,
    bytes: &[u8],
    content_type: &str,
    digest: &str,
) -> Result<String> {
    let repo = &dest.repository;
    let what = format!("pushing manifest {digest} to {dest}");
    let scopes = [scope(repo, "pull,push")];
    let resp = reg.send(&scopes, &what, true, &|c, base| {
        c.put(format!("{base}/v2/{repo}/manifests/{put_as}"))
            .header(CONTENT_TYPE, content_type)
            .body(bytes.to_vec())
    })?;
    let resp = reg.check(resp, &what)?;
    if let Some(got) = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        if got != digest {
            bail!("{what}: the registry stored it as {got}");
        }
    }
    Ok(digest.to_string())
}

fn ensure_blob(
    reg: &Registry,
    store: &dyn BlobStore,
    d: &Descriptor,
    dest: &Reference,
    opts: &PushOptions,
) -> Result<BlobOutcome> {
    let repo = &dest.repository;
    let digest = &d.digest;
    let scopes = [scope(repo, "pull,push")];
    let what = format!("checking blob {digest} in {dest}");
    let resp = reg.send(&scopes, &what, true, &|c, base| {
        c.head(format!("{base}/v2/{repo}/blobs/{digest}"))
    })?;
    match resp.status() {
        StatusCode::OK => return Ok(BlobOutcome::AlreadyThere),
        StatusCode::NOT_FOUND => {}
        _ => return Err(reg.api_error(resp, &what).into()),
    }
    let mut sources: Vec<String> = opts.mount_from.clone();
    if let Some(loc) = opts.locations {
        sources.extend(loc.candidates(digest, &dest.registry, repo));
    }
    let mut seen = std::collections::HashSet::new();
    sources.retain(|s| s != repo && seen.insert(s.clone()));
    for from in &sources {
        if try_mount(reg, digest, dest, from)? {
            return Ok(BlobOutcome::Mounted);
        }
    }
    upload(reg, store, d, dest, opts)?;
    Ok(BlobOutcome::Uploaded)
}

/// Uploads one blob of `store` to `dest`'s repository unless the registry
/// has it (HEAD first): an image's layer sent while the build goes on, so
/// that the push after it finds the blob there. `cancel` abandons it. The
/// registry checks the digest (`PUT ?digest=`), and the store's blob was
/// committed under the digest its writer computed.
pub fn upload_blob(
    store: &dyn BlobStore,
    digest: &str,
    size: u64,
    dest: &Reference,
    settings: &Settings,
    cancel: Arc<AtomicBool>,
) -> Result<BlobOutcome> {
    let reg = Registry::new(super::api_host(&dest.registry), settings)?;
    let blob = Descriptor {
        media_type: String::new(),
        digest: digest.to_string(),
        size,
        platform: None,
    };
    let opts = PushOptions {
        cancel: Some(cancel),
        ..PushOptions::default()
    };
    ensure_blob(&reg, store, &blob, dest, &opts)
}

/// The one final report of a blob: uploaded, already there, mounted or failed.
fn report_done(opts: &PushOptions, digest: &str, size: u64, state: BlobState) {
    if let Some(t) = &opts.progress {
        let done = if state == BlobState::Failed { 0 } else { size };
        t.blob(digest, done, size, state);
    }
}

/// Ask the registry to mount `digest` from `from`; true when it did.
fn try_mount(reg: &Registry, digest: &str, dest: &Reference, from: &str) -> Result<bool> {
    let repo = &dest.repository;
    let scopes = [scope(repo, "pull,push"), scope(from, "pull")];
    let what = format!("mounting blob {digest} from {from} into {dest}");
    let resp = reg.send(&scopes, &what, true, &|c, base| {
        c.post(format!(
            "{base}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
        ))
        .header(CONTENT_LENGTH, "0")
    })?;
    // 202 means "no mount, here is an upload session instead": we upload
    // through our own session, so that one is left to expire.
    Ok(resp.status() == StatusCode::CREATED)
}

/// POST + monolithic PUT; a retry starts a fresh upload session.
fn upload(
    reg: &Registry,
    store: &dyn BlobStore,
    d: &Descriptor,
    dest: &Reference,
    opts: &PushOptions,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        match upload_once(reg, store, d, dest, opts) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < reg.retries() && retryable(&e) => {
                attempt += 1;
                reg.retrying(attempt, &format!("{e:#}"));
            }
            // The error already names the blob and the registry.
            Err(e) if attempt == 0 => return Err(e),
            Err(e) => return Err(e.context(format!("after {} attempts", attempt + 1))),
        }
    }
}

fn retryable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<super::client::ApiError>() {
        Some(a) => {
            a.status >= 500 || a.status == 429 || a.code.as_deref() == Some("BLOB_UPLOAD_UNKNOWN")
        }
        None => true,
    }
}

fn upload_once(
    reg: &Registry,
    store: &dyn BlobStore,
    d: &Descriptor,
    dest: &Reference,
    opts: &PushOptions,
) -> Result<()> {
    let repo = &dest.repository;
    let digest = &d.digest;
    let scopes = [scope(repo, "pull,push")];
    let what = format!("starting upload of blob {digest} to {dest}");
    let location = start_upload(reg, &scopes, repo, false, &what)?;
    let size = store
        .blob_size(digest)
        .with_context(|| format!("reading size of blob {digest}"))?;
    if size != d.size {
        bail!(
            "blob {digest} is {size} bytes in the store but the manifest says {}",
            d.size
        );
    }
    let what = format!("uploading blob {digest} to {dest}");
    let progress = |f| Progress {
        inner: f,
        done: 0,
        total: size,
        digest: digest.clone(),
        progress: opts.progress.clone(),
        cancel: opts.cancel.clone(),
    };
    if size >= super::big_body::BIG_BODY {
        let open = || -> Result<Box<dyn std::io::Read + Send>> {
            let f = store
                .open_blob(digest)
                .with_context(|| format!("{what}: opening the stored blob"))?;
            Ok(Box::new(progress(f)))
        };
        let answer = reg
            .send_big(
                &scopes,
                &what,
                &|c, base| {
                    c.put(put_url(base, &location, digest))
                        .timeout(reg.upload_timeout(size))
                        .header(CONTENT_TYPE, "application/octet-stream")
                },
                &open,
                Some(size),
                opts.cancel.clone(),
            )?
            .expect(&[StatusCode::CREATED], &what)?;
        return check_digest_header(&answer.headers, digest, &what);
    }
    let resp = reg.send(&scopes, &what, false, &|c, base| {
        let url = put_url(base, &location, digest);
        // Reopened for every attempt: the layer streams from disk, never
        // whole in memory.
        let body = match store.open_blob(digest) {
            Ok(f) => Body::sized(progress(f), size),
            Err(_) => Body::from(Vec::new()),
        };
        c.put(url)
            .timeout(reg.upload_timeout(size))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size.to_string())
            .body(body)
    })?;
    let resp = reg.expect_status(resp, &[StatusCode::CREATED], &what)?;
    check_committed_digest(&resp, digest, &what)
}

/// Opens an upload session (`POST …/blobs/uploads/`): its Location.
pub(super) fn start_upload(
    reg: &Registry,
    scopes: &[String],
    repo: &str,
    retry: bool,
    what: &str,
) -> Result<String> {
    let resp = reg.send(scopes, what, retry, &|c, base| {
        c.post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .header(CONTENT_LENGTH, "0")
    })?;
    let resp = reg.expect_status(resp, &[StatusCode::ACCEPTED], what)?;
    upload_location(&resp, what)
}

/// The upload session's URL a registry answered with.
pub(super) fn upload_location(resp: &reqwest::blocking::Response, what: &str) -> Result<String> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .with_context(|| format!("{what}: the registry sent no upload Location"))
}

/// A committed upload's digest as the registry computed it, when it says.
pub(super) fn check_committed_digest(
    resp: &reqwest::blocking::Response,
    digest: &str,
    what: &str,
) -> Result<()> {
    check_digest_header(resp.headers(), digest, what)
}

/// `check_committed_digest` on an answer's headers.
fn check_digest_header(
    headers: &reqwest::header::HeaderMap,
    digest: &str,
    what: &str,
) -> Result<()> {
    if let Some(got) = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
    {
        if got != digest {
            bail!("{what}: the registry computed digest {got}");
        }
    }
    Ok(())
}

/// The upload URL (absolute or relative to the registry) plus `digest=`.
pub(super) fn put_url(base: &str, location: &str, digest: &str) -> String {
    let abs = absolute_url(base, location);
    let sep = if abs.contains('?') { '&' } else { '?' };
    format!("{abs}{sep}digest={digest}")
}

/// An upload URL as the registry gave it (absolute, or relative to it).
pub(super) fn absolute_url(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

struct Progress<R> {
    inner: R,
    done: u64,
    total: u64,
    digest: String,
    progress: Option<Transfer>,
    cancel: Option<Arc<AtomicBool>>,
}

impl<R: std::io::Read> std::io::Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // A body that errors makes the client abort the request: the
        // registry drops the upload session unfinished, never commits it.
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(std::io::Error::other("upload cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        // Bytes sent are not bytes stored: the final report comes from
        // `push_manifest_tree` once the registry accepted (or refused) the blob.
        if let (Some(t), true) = (&self.progress, n > 0) {
            t.blob(&self.digest, self.done, self.total, BlobState::Moving);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_urls() {
        let d = "sha256:00";
        assert_eq!(
            put_url("http://h:1", "/v2/a/blobs/uploads/u1?_state=x", d),
            "http://h:1/v2/a/blobs/uploads/u1?_state=x&digest=sha256:00"
        );
        assert_eq!(
            put_url("http://h:1", "https://other/up/u2", d),
            "https://other/up/u2?digest=sha256:00"
        );
    }
}
