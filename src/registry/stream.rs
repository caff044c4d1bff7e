//! A blob uploaded while it is written: the OCI chunked upload (`POST` a
//! session, one `PATCH` whose body is the blob as the writer produces it
//! (sent by `big_body`),
//! sent with chunked transfer encoding since its length is not known yet,
//! then `PUT ?digest=` with no body once the writer has computed the
//! digest). The registry hashes what it received and refuses a `PUT`
//! whose digest does not match, so a session never commits other bytes
//! than the blob's.
//!
//! Nothing here retries: a streamed body cannot be sent twice. A failure
//! is returned, and the caller uploads the stored blob the usual way
//! (`upload_blob`: HEAD first, retries). A session left behind (abandoned
//! or failed) is harmless: the registry expires it unfinished.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;

use super::client::{scope, Registry};
use super::push::{absolute_url, check_committed_digest, put_url, start_upload};
use super::settings::Settings;
use crate::oci::Reference;

/// What became of a streamed upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streamed {
    /// The registry committed the blob under the digest given.
    Committed,
    /// No digest was given (the blob was not kept): nothing committed.
    Abandoned,
}

/// Streams `body` into a new upload session of `dest`'s repository, then
/// asks `digest_of` for the digest the writer computed (None: the blob
/// was not kept) and commits the session under it. `cancel` stops the
/// body with an error, so the registry never commits it.
pub fn upload_streamed(
    settings: &Settings,
    dest: &Reference,
    body: Box<dyn Read + Send>,
    cancel: Arc<AtomicBool>,
    digest_of: impl FnOnce() -> Option<String>,
) -> Result<Streamed> {
    let reg = Registry::new(super::api_host(&dest.registry), settings)?;
    let repo = &dest.repository;
    let scopes = [scope(repo, "pull,push")];
    let what = format!("starting a streamed upload to {dest}");
    let location = start_upload(&reg, &scopes, repo, true, &what)?;
    let what = format!("streaming a layer to {dest}");
    // Sent through `big_body` (large pieces, no thread switch per 8 KiB).
    // The body goes once: a request built again (after a 401) gets none,
    // fails, and the caller uploads the stored blob instead.
    let body: Box<dyn Read + Send> = Box::new(Cancellable {
        inner: body,
        cancel: cancel.clone(),
    });
    let once = Mutex::new(Some(body));
    let open = || -> Result<Box<dyn Read + Send>> {
        match once.lock().ok().and_then(|mut b| b.take()) {
            Some(b) => Ok(b),
            None => bail!("{what}: a streamed body cannot be sent a second time"),
        }
    };
    let answer = reg
        .send_big(
            &scopes,
            &what,
            &|c, base| {
                c.patch(absolute_url(base, &location))
                    .timeout(reg.upload_timeout(u64::MAX / 2))
                    .header(CONTENT_TYPE, "application/octet-stream")
            },
            &open,
            None,
            Some(cancel.clone()),
        )?
        .expect(&[StatusCode::ACCEPTED, StatusCode::NO_CONTENT], &what)?;
    // The session's next URL (it may carry new state).
    let location = answer
        .headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or(location);
    let Some(digest) = digest_of() else {
        return Ok(Streamed::Abandoned);
    };
    if cancel.load(Ordering::Relaxed) {
        bail!("{what}: cancelled");
    }
    let what = format!("committing streamed blob {digest} to {dest}");
    let resp = reg.send(&scopes, &what, false, &|c, base| {
        c.put(put_url(base, &location, &digest))
            .header(CONTENT_LENGTH, "0")
    })?;
    let resp = reg.expect_status(resp, &[StatusCode::CREATED], &what)?;
    check_committed_digest(&resp, &digest, &what)?;
    Ok(Streamed::Committed)
}

struct Cancellable {
    inner: Box<dyn Read + Send>,
    cancel: Arc<AtomicBool>,
}

impl Read for Cancellable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("upload cancelled"));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_resolve_against_the_registry() {
        assert_eq!(
            absolute_url("http://h:1", "/v2/a/blobs/uploads/u?_state=x"),
            "http://h:1/v2/a/blobs/uploads/u?_state=x"
        );
        assert_eq!(absolute_url("http://h:1", "https://o/u"), "https://o/u");
    }
}
