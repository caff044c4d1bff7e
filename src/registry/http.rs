//! The reqwest clients a `Registry` sends with: a blocking one for every
//! request (kept-alive connections, `Registry::send`'s retries and auth),
//! and an async one, built per big body, that `big_body` sends large
//! uploads with. Both get rbuild's user agent, connect timeout and TLS
//! trust (`tls`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::blocking::Client;

use super::settings::Settings;

/// Gives a reqwest builder rbuild's user agent, connect timeout and TLS
/// trust: the blocking and the async builder have the same methods but no
/// common trait.
macro_rules! configure {
    ($builder:expr, $host:expr, $insecure:expr, $ca_files:expr, $connect:expr) => {{
        let b = $builder
            .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout($connect);
        if $insecure {
            b.danger_accept_invalid_certs(true)
        } else {
            let files = super::tls::ca_files_for($host, $ca_files);
            b.use_preconfigured_tls(super::tls::client_config(&files)?)
        }
    }};
}

/// The blocking client, with the response timeout of `settings`.
pub(super) fn build_http(host: &str, insecure: bool, settings: &Settings) -> Result<Client> {
    let t = settings.response_timeout;
    let (files, connect) = (&settings.ca_files, settings.connect_timeout);
    configure!(Client::builder(), host, insecure, files, connect)
        // The blocking client's timeout bounds the wait for the response
        // headers and each read of the body (not the whole transfer).
        .timeout((!t.is_zero()).then_some(t))
        .build()
        .context("creating the HTTP client")
}

/// What an async client for one host is built from.
pub(super) struct AsyncSetup {
    host: String,
    insecure: bool,
    ca_files: Vec<PathBuf>,
    connect_timeout: Duration,
}

impl AsyncSetup {
    pub(super) fn new(host: &str, insecure: bool, settings: &Settings) -> AsyncSetup {
        AsyncSetup {
            host: host.to_string(),
            insecure,
            ca_files: settings.ca_files.clone(),
            connect_timeout: settings.connect_timeout,
        }
    }

    /// An async client: the same trust and connect timeout as the
    /// blocking one, no pooled connections (each `big_body` request runs
    /// on a runtime of its own, which its connection does not outlive);
    /// each request sets its own timeout.
    pub(super) fn client(&self) -> Result<reqwest::Client> {
        let (files, connect) = (&self.ca_files, self.connect_timeout);
        configure!(
            reqwest::Client::builder(),
            &self.host,
            self.insecure,
            files,
            connect
        )
        .pool_max_idle_per_host(0)
        .build()
        .context("creating the HTTP client")
    }
}
