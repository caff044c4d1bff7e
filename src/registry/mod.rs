//! OCI distribution client: references, auth, pull and push.
//!
//! References come from `oci::reference`; `settings` holds insecure
//! registries, mirrors and retry policy; `auth` reads and writes stored
//! credentials; `client` talks to one registry host (TLS, auth handshake,
//! retries, error bodies); `pull` and `push` move images between a
//! registry and anything implementing `blobs::BlobStore`; `known` records
//! which repositories hold which blobs, for cross-repository mounts.
//! Transfers report blob progress and retried attempts as `progress`
//! events of the step that asked for them (`progress::Transfer`).

pub mod auth;
mod big_body;
pub mod blobs;
pub mod body;
pub mod client;
pub mod error;
mod http;
pub mod known;
pub mod local;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod settings;
pub mod stream;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Result;

use crate::oci::reference::DOCKER_HUB;

/// Where Docker Hub's registry API really lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The key docker writes Docker Hub credentials under in config.json.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// The host a registry's API is served from (Docker Hub's differs from
/// its name).
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

pub use auth::{AuthFiles, Credentials};
pub use blobs::BlobStore;
pub use client::{ApiError, Registry};
pub use error::RegistryError;
pub use known::BlobLocations;
pub use pull::{pull, PullOptions, PulledImage};
pub use push::{push, upload_blob, BlobOutcome, PushOptions, PushReport};
pub use settings::Settings;
pub use stream::{upload_streamed, Streamed};

/// Check `password` for `user` against `registry` (a registry name such
/// as `docker.io` or `host:port`) and store it in docker's config.json.
pub fn login(registry: &str, user: &str, password: &str, settings: &Settings) -> Result<()> {
    let creds = Credentials {
        username: user.to_string(),
        password: password.to_string(),
    };
    let reg = Registry::with_credentials(api_host(registry), settings, Some(creds.clone()))
        .map_err(RegistryError::wrap)?;
    reg.ping().map_err(RegistryError::wrap)?;
    settings.auth.store(registry, &creds)
}

/// Remove stored credentials for `registry`; false when there were none.
pub fn logout(registry: &str, settings: &Settings) -> Result<bool> {
    settings.auth.erase(registry)
}

/// The registry name for a login/logout argument (`https://host/` → `host`,
/// Docker Hub aliases → `docker.io`).
pub fn registry_name(server: &str) -> String {
    let s = settings::strip_scheme(server.trim());
    let s = s.split('/').next().unwrap_or(s);
    match s {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

/// Run `f` over `items` on up to `threads` threads; results in item order.
pub(crate) fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                if let Ok(mut o) = out.lock() {
                    o[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_parallel_keeps_order() {
        let items: Vec<u32> = (0..50).collect();
        let out = run_parallel(&items, 4, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn registry_names_for_login() {
        assert_eq!(registry_name("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_name("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_name("https://reg.io/"), "reg.io");
    }

    #[test]
    fn docker_hub_api_lives_elsewhere() {
        use crate::oci::Reference;
        let api = |s: &str| api_host(&Reference::parse(s).unwrap().registry).to_string();
        assert_eq!(api("alpine"), DOCKER_HUB_API);
        assert_eq!(api("Foo/app"), "Foo");
        assert_eq!(api("localhost:5000/app"), "localhost:5000");
    }
}
