//! One registry host over HTTP: scheme choice (HTTPS, plain HTTP for
//! loopback or listed hosts), TLS roots (system, `SSL_CERT_FILE`,
//! certs.d), the auth handshake (Basic, Bearer tokens cached per scope and
//! refreshed on 401), retries with backoff, and the spec's error bodies.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use reqwest::blocking::{Client, Request, RequestBuilder, Response};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Deserialize;

use super::auth::Credentials;
use super::body::{self, Guarded, MAX_ERROR_BODY, MAX_TOKEN_BODY};
use super::settings::{is_loopback, Settings};

/// A registry error answer, in plain words, naming what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {explanation} (HTTP {status}{code_part})")]
pub struct ApiError {
    pub what: String,
    pub status: u16,
    /// The spec's error code (`DENIED`, `MANIFEST_UNKNOWN`, …), if given.
    pub code: Option<String>,
    pub explanation: String,
    code_part: String,
}

/// A bearer token; Debug never shows it.
#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Debug, Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<String, Token>,
}

/// A client for one registry host.
pub struct Registry {
    host: String,
    http: Client,
    /// What the async client for big bodies is built from (`big_body`).
    big: super::http::AsyncSetup,
    plain_http_allowed: bool,
    base: Mutex<Option<String>>,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    /// Held while fetching a token, so parallel transfers share one.
    token_fetch: Mutex<()>,
    retries: u32,
    backoff: Duration,
    response_timeout: Duration,
    min_speed: u64,
    on_retry: Option<crate::progress::Transfer>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("has_credentials", &self.creds.is_some())
            .finish()
    }
}

/// Scope strings for a repository (`repository:NAME:pull,push`).
pub fn scope(repo: &str, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

impl Registry {
    /// A client for `host` (API host, `name[:port]`), with credentials
    /// looked up in the configured auth files.
    pub fn new(host: &str, settings: &Settings) -> Result<Self> {
        let creds = settings
            .auth
            .lookup(&registry_name_for(host))
            .with_context(|| format!("looking up credentials for {host}"))?;
        Self::with_credentials(host, settings, creds)
    }

    /// A client with explicit credentials (login uses this to test them).
    pub fn with_credentials(
        host: &str,
        settings: &Settings,
        creds: Option<Credentials>,
    ) -> Result<Self> {
        let insecure = settings.is_insecure(host);
        let http = super::http::build_http(host, insecure, settings)?;
        Ok(Registry {
            host: host.to_string(),
            http,
            big: super::http::AsyncSetup::new(host, insecure, settings),
            plain_http_allowed: insecure || is_loopback(host),
            base: Mutex::new(None),
            creds,
            auth: Mutex::new(AuthState::default()),
            token_fetch: Mutex::new(()),
            retries: settings.retries,
            backoff: Duration::from_millis(settings.backoff_ms),
            response_timeout: settings.response_timeout,
            min_speed: settings.min_speed,
            on_retry: settings.on_retry.clone(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `https://host` or `http://host`, found by probing `/v2/` once.
    pub fn base_url(&self) -> Result<String> {
        let mut base = self
            .base
            .lock()
            .map_err(|_| anyhow!("registry state poisoned"))?;
        if let Some(b) = base.as_ref() {
            return Ok(b.clone());
        }
        let found = self.probe()?;
        *base = Some(found.clone());
        Ok(found)
    }

    /// Find the scheme; a refused or timed-out connection is retried with
    /// backoff (a registry may be starting), a certificate error is not.
    fn probe(&self) -> Result<String> {
        let mut attempt = 0;
        loop {
            match self.probe_once() {
                Ok(base) => return Ok(base),
                Err((e, retryable)) if retryable && attempt < self.retries => {
                    attempt += 1;
                    self.retrying(attempt, &format!("{e:#}"));
                }
                Err((e, _)) if attempt > 0 => {
                    return Err(e.context(format!("after {} attempts", attempt + 1)))
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One probe: HTTPS, then plain HTTP where allowed. The error says
    /// whether trying again may help.
    fn probe_once(&self) -> Result<String, (anyhow::Error, bool)> {
        let https = format!("https://{}", self.host);
        let err = match self.http.get(format!("{https}/v2/")).send() {
            Ok(resp) => {
                self.note_challenge(resp.url(), &https, resp.headers());
                return Ok(https);
            }
            Err(e) => e,
        };
        let text = error_chain(&err);
        // A plain-HTTP server may sit silent on a TLS hello until the
        // timeout, so a timeout still falls back where plain HTTP is allowed.
        if is_cert_error(&text) || !self.plain_http_allowed {
            return Err((self.describe_transport(&https, &err), !is_cert_error(&text)));
        }
        let http = format!("http://{}", self.host);
        match self.http.get(format!("{http}/v2/")).send() {
            Ok(resp) => {
                self.note_challenge(resp.url(), &http, resp.headers());
                Ok(http)
            }
            Err(e2) => Err((self.describe_transport(&http, &e2), true)),
        }
    }

    fn describe_transport(&self, url: &str, err: &reqwest::Error) -> anyhow::Error {
        if err.is_timeout() {
            return anyhow!(
                "registry {} did not answer at {url} within {} s\n\
                 hint: check the address; on a slow link raise --registry-timeout",
                self.host,
                self.response_timeout.as_secs_f32()
            );
        }
        describe_transport(&self.host, url, &error_chain(err))
    }

    /// Check that the registry accepts our credentials (or needs none).
    pub fn ping(&self) -> Result<()> {
        let resp = self.send(&[], "checking credentials", false, &|c, base| {
            c.get(format!("{base}/v2/"))
        })?;
        self.check(resp, &format!("logging in to {}", self.host))
            .map(|_| ())
    }

    /// Send a request built by `build` (called again for each attempt, so
    /// file bodies are reopened), answering auth challenges for `scopes`.
    /// `retry` enables backoff retries on 5xx and connection errors.
    pub fn send(
        &self,
        scopes: &[String],
        what: &str,
        retry: bool,
        build: &dyn Fn(&Client, &str) -> RequestBuilder,
    ) -> Result<Response> {
        let base = self.base_url()?;
        let mut attempt = 0;
        let mut reauthed = false;
        loop {
            let req = build(&self.http, &base)
                .build()
                .map_err(|e| anyhow!("{what}: invalid request: {}", error_chain(&e)))?;
            let (req, used) = self.authorize(req, &base, scopes)?;
            let can_retry = retry && attempt < self.retries;
            match self.http.execute(req) {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    let had = self.note_challenge(resp.url(), &base, resp.headers());
                    self.forget_token(scopes, used.as_deref());
                    if !had || (self.creds.is_none() && !self.is_bearer()) {
                        return Ok(resp);
                    }
                }
                Ok(resp) if resp.status().is_server_error() && can_retry => {
                    attempt += 1;
                    self.retrying(attempt, &format!("{what}: HTTP {}", resp.status()));
                }
                Ok(resp) => return Ok(resp),
                Err(e) if can_retry && !is_cert_error(&error_chain(&e)) => {
                    attempt += 1;
                    let text = if e.is_timeout() {
                        "no answer in time".to_string()
                    } else {
                        error_chain(&e)
                    };
                    self.retrying(attempt, &format!("{what}: {text}"));
                }
                Err(e) => {
                    let text = if e.is_timeout() {
                        format!(
                            "no answer within {} s\nhint: on a slow link raise --registry-timeout",
                            self.response_timeout.as_secs_f32()
                        )
                    } else {
                        error_chain(&e)
                    };
                    let tries = match attempt {
                        0 => String::new(),
                        n => format!(" (after {} attempts)", n + 1),
                    };
                    return Err(anyhow!(
                        "{what}: request to {} failed{tries}: {text}",
                        self.host
                    ));
                }
            }
        }
    }

    /// How many extra attempts `send` makes.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Report a failed attempt (`failure` says what and why), then back off.
    pub fn retrying(&self, attempt: u32, failure: &str) {
        let delay = self.backoff * 2u32.saturating_pow(attempt.saturating_sub(1));
        if let Some(t) = &self.on_retry {
            t.retry(&format!(
                "{failure} (attempt {attempt} of {}; retrying in {:.1} s)",
                self.retries + 1,
                delay.as_secs_f32()
            ));
        }
        std::thread::sleep(delay);
    }

    /// The time an upload of `size` bytes may take, answer included: the
    /// client's timeout would otherwise bound the whole body, since reqwest
    /// sends it before waiting for the answer.
    pub fn upload_timeout(&self, size: u64) -> Duration {
        const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);
        if self.min_speed == 0 || self.response_timeout.is_zero() {
            return UNBOUNDED;
        }
        (self.response_timeout + Duration::from_secs(size / self.min_speed)).min(UNBOUNDED)
    }

    /// How long a `big_body` upload may go without the registry taking
    /// any of its body, or without an answer once it is sent: the
    /// response timeout (none when that is off).
    pub(super) fn stall_limit(&self) -> Option<Duration> {
        (!self.response_timeout.is_zero()).then_some(self.response_timeout)
    }

    /// An async client for one `big_body` request.
    pub(super) fn big_client(&self) -> Result<reqwest::Client> {
        self.big.client()
    }

    /// How long an answer's body is read (as `guard` judges speed).
    pub(super) fn answer_window(&self) -> Duration {
        match self.response_timeout {
            t if t.is_zero() => super::settings::DEFAULT_RESPONSE_TIMEOUT,
            t => t,
        }
    }

    pub(super) fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    /// A response body bounded to `limit` bytes and the minimum speed.
    pub fn guard<R: std::io::Read>(&self, body: R, what: &str, limit: u64) -> Guarded<R> {
        // With no response timeout, speed is still judged over a minute.
        Guarded::new(body, what, limit, self.min_speed, self.answer_window())
    }

    /// Read a whole (small) body into memory: more than `limit` bytes, or
    /// a trickle, is an error.
    pub fn read_body(&self, resp: Response, what: &str, limit: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.guard(resp, what, limit)
            .capped()
            .read_to_end(&mut out)
            .map_err(|e| match e.into_inner() {
                Some(inner) => match inner.downcast::<body::TransferError>() {
                    Ok(te) => anyhow::Error::new(*te),
                    Err(other) => anyhow!("{what}: reading the answer: {other}"),
                },
                None => anyhow!("{what}: reading the answer failed"),
            })?;
        Ok(out)
    }

    /// Turn a non-success answer into an `ApiError`; pass successes through.
    pub fn check(&self, resp: Response, what: &str) -> Result<Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.api_error(resp, what).into())
    }

    /// Bail unless `status` is one of `ok`.
    pub fn expect_status(&self, resp: Response, ok: &[StatusCode], what: &str) -> Result<Response> {
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        if resp.status().is_success() {
            bail!("{what}: unexpected HTTP status {}", resp.status());
        }
        Err(self.api_error(resp, what).into())
    }

    /// The spec's error body in plain words; only its first
    /// `MAX_ERROR_BODY` bytes are read (an endless or trickling body is cut).
    pub fn api_error(&self, resp: Response, what: &str) -> ApiError {
        let status = resp.status();
        let mut text = Vec::new();
        let _partial_is_fine = self
            .guard(resp, what, u64::MAX)
            .take(MAX_ERROR_BODY)
            .read_to_end(&mut text);
        api_error_from(status, &String::from_utf8_lossy(&text), what)
    }

    pub(super) fn is_bearer(&self) -> bool {
        self.auth
            .lock()
            .map(|a| matches!(a.challenge, Some(Challenge::Bearer { .. })))
            .unwrap_or(false)
    }

    /// Remember the auth scheme a 401 asked for; false if none was usable.
    /// Takes the login scheme a 401 from `from` announces, only when `from`
    /// is the registry's own origin (`base`): a 401 from elsewhere (a
    /// redirect's target, an upload `Location` on another host) could
    /// name a realm of its choosing, where the next token request would
    /// send the user's password.
    pub(super) fn note_challenge(&self, from: &url::Url, base: &str, headers: &HeaderMap) -> bool {
        let own = url::Url::parse(base).is_ok_and(|b| b.origin() == from.origin());
        if !own {
            return false;
        }
        let Some(ch) = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge)
        else {
            return false;
        };
        if let Ok(mut a) = self.auth.lock() {
            a.challenge = Some(ch);
        }
        true
    }

    /// Drop a refused token, unless another thread already replaced it.
    pub(super) fn forget_token(&self, scopes: &[String], used: Option<&str>) {
        if let Ok(mut a) = self.auth.lock() {
            let key = scopes.join(" ");
            if a.tokens.get(&key).map(|t| t.value.as_str()) == used {
                a.tokens.remove(&key);
            }
        }
    }

    /// Add credentials for this registry; requests to any other origin
    /// (e.g. an upload Location elsewhere) go without them.
    /// Also returns the bearer token used, if any.
    fn authorize(
        &self,
        mut req: Request,
        base: &str,
        scopes: &[String],
    ) -> Result<(Request, Option<String>)> {
        let (value, used) = self.credential_for(req.url(), base, scopes)?;
        if let Some(value) = value {
            req.headers_mut().insert(AUTHORIZATION, value);
        }
        Ok((req, used))
    }

    /// The `Authorization` value a request to `url` carries (none for
    /// another origin than the registry's), and the bearer token in it.
    pub(super) fn credential_for(
        &self,
        url: &url::Url,
        base: &str,
        scopes: &[String],
    ) -> Result<(Option<HeaderValue>, Option<String>)> {
        let same_origin = url::Url::parse(base)
            .map(|b| b.origin() == url.origin())
            .unwrap_or(false);
        if !same_origin {
            return Ok((None, None));
        }
        let challenge = self
            .auth
            .lock()
            .map_err(|_| anyhow!("registry auth state poisoned"))?
            .challenge
            .clone();
        let mut used = None;
        let value = match (challenge, &self.creds) {
            (None, _) | (Some(Challenge::Basic), None) => return Ok((None, None)),
            (Some(Challenge::Basic), Some(c)) => {
                let raw = format!("{}:{}", c.username, c.password);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            (Some(Challenge::Bearer { realm, service }), _) => {
                let token = self.token(&realm, service.as_deref(), scopes)?;
                let v = format!("Bearer {}", token.value);
                used = Some(token.value);
                v
            }
        };
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| anyhow!("credentials for {} contain invalid characters", self.host))?;
        value.set_sensitive(true);
        Ok((Some(value), used))
    }

    fn token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<Token> {
        let key = scopes.join(" ");
        let cached = || {
            self.auth.lock().ok().and_then(|a| {
                a.tokens
                    .get(&key)
                    .filter(|t| t.expires > Instant::now())
                    .cloned()
            })
        };
        if let Some(t) = cached() {
            return Ok(t);
        }
        let _one_at_a_time = self
            .token_fetch
            .lock()
            .map_err(|_| anyhow!("registry token state poisoned"))?;
        if let Some(t) = cached() {
            return Ok(t);
        }
        let t = self.fetch_token(realm, service, scopes)?;
        if let Ok(mut a) = self.auth.lock() {
            a.tokens.insert(key.clone(), t.clone());
        }
        Ok(t)
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<Token> {
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let mut url = url::Url::parse(realm).with_context(|| {
            format!(
                "registry {} sent an invalid token realm {realm:?}",
                self.host
            )
        })?;
        // docker sends credentials to a realm on another host; rbuild does
        // too, but never in plaintext when the registry itself speaks TLS.
        if url.scheme() != "https" && self.base_url()?.starts_with("https://") {
            bail!(
                "registry {} (HTTPS) sent a token realm over plain HTTP ({realm}): refusing to \
                 send credentials or fetch tokens without TLS\n\
                 hint: the registry's auth configuration must use an https:// realm",
                self.host
            );
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.http.get(url);
        if let Some(c) = &self.creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let what = format!("getting a token for {} from {realm}", self.host);
        let resp = req
            .send()
            .map_err(|e| anyhow!("{what}: {}", error_chain(&e)))?;
        let resp = self.check(resp, &what)?;
        let bytes = self.read_body(resp, &what, MAX_TOKEN_BODY)?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).with_context(|| format!("{what}: invalid JSON"))?;
        let value = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("{what}: the answer has no token"))?;
        // Renew a little early so a token does not expire mid-request.
        // Clamped: an absurd expires_in must not overflow the clock.
        let secs = body.expires_in.unwrap_or(60).clamp(2, 24 * 3600);
        let expires = Instant::now() + Duration::from_secs(secs) - Duration::from_secs(secs / 10);
        Ok(Token { value, expires })
    }
}

/// The registry name used for credential lookups (Docker Hub's API host
/// stores its credentials under `docker.io`).
fn registry_name_for(host: &str) -> String {
    if host == super::DOCKER_HUB_API {
        crate::oci::reference::DOCKER_HUB.to_string()
    } else {
        host.to_string()
    }
}

/// Parse `Bearer realm="…",service="…"` or `Basic realm="…"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
    })
}

fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = next.trim_start_matches([',', ' ']);
    }
    out
}

/// The error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

pub(crate) fn is_cert_error(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("certificate") || t.contains("unknownissuer") || t.contains("notvalidforname")
}

fn describe_transport(host: &str, url: &str, text: &str) -> anyhow::Error {
    if is_cert_error(text) {
        anyhow!(
            "TLS certificate verification failed for {url}: {text}\n\
             hint: put the registry's CA certificate in /etc/containers/certs.d/{host}/ca.crt \
             (or SSL_CERT_FILE), or list {host} with --insecure-registry"
        )
    } else {
        anyhow!("cannot reach registry {host} at {url}: {text}")
    }
}

/// An `ApiError` from a status and (the start of) its body.
/// At most `max` characters of `text` from a registry, control characters
/// (newlines, escapes) shown as spaces.
pub(super) fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub(super) fn api_error_from(status: StatusCode, text: &str, what: &str) -> ApiError {
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    let item = serde_json::from_str::<Body>(text)
        .ok()
        .and_then(|b| b.errors.into_iter().next());
    let code = item
        .as_ref()
        .and_then(|i| i.code.as_deref())
        .map(|c| printable(c, 64));
    // A registry's message is shown, but not a page of it, and on one
    // line with no control characters: a newline and `hint: ` in it
    // posed as rbuild's own advice, escape sequences reached the terminal.
    let message = printable(
        item.and_then(|i| i.message).as_deref().unwrap_or_default(),
        300,
    );
    let mut explanation = explain(code.as_deref(), status).to_string();
    if !message.is_empty() && !explanation.contains(&message) {
        explanation = format!("{explanation}; the registry says: {message}");
    }
    let code_part = code.as_ref().map(|c| format!(" {c}")).unwrap_or_default();
    ApiError {
        what: what.to_string(),
        status: status.as_u16(),
        code,
        explanation,
        code_part,
    }
}

fn explain(code: Option<&str>, status: StatusCode) -> &'static str {
    match code {
        Some("UNAUTHORIZED") => {
            "authentication required: log in with `rbuild login` or check the credentials"
        }
        Some("DENIED") => "access denied: these credentials may not do this",
        Some("MANIFEST_UNKNOWN") => "no such manifest (tag or digest not found)",
        Some("NAME_UNKNOWN") => "no such repository",
        Some("NAME_INVALID") => "the registry refused the repository name",
        Some("TAG_INVALID") => "the registry refused the tag",
        Some("BLOB_UNKNOWN") => "the registry does not have this blob",
        Some("MANIFEST_BLOB_UNKNOWN") => {
            "the manifest references a blob the registry does not have"
        }
        Some("MANIFEST_INVALID") => "the registry rejected the manifest as invalid",
        Some("MANIFEST_UNVERIFIED") => "the registry could not verify the manifest",
        Some("DIGEST_INVALID") => "the content did not match its digest",
        Some("SIZE_INVALID") => "the content did not match its declared size",
        Some("BLOB_UPLOAD_UNKNOWN") => "the upload session expired or is unknown",
        Some("BLOB_UPLOAD_INVALID") => "the upload was invalid",
        Some("UNSUPPORTED") => "the registry does not support this operation",
        Some("TOOMANYREQUESTS") => "rate limited by the registry: too many requests",
        _ => match status {
            StatusCode::UNAUTHORIZED => {
                "authentication required: log in with `rbuild login` or check the credentials"
            }
            StatusCode::FORBIDDEN => "access denied",
            StatusCode::NOT_FOUND => "not found",
            StatusCode::TOO_MANY_REQUESTS => "rate limited by the registry: too many requests",
            s if s.is_server_error() => "the registry failed with a server error",
            _ => "the registry refused the request",
        },
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
