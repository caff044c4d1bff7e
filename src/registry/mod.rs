//! OCI distribution client: references, auth, pull and push.
//!
//! `reference` normalizes names as docker does; `settings` holds insecure
//! registries, mirrors and retry policy; `auth` reads and writes stored
//! credentials; `client` talks to one registry host (TLS, auth handshake,
//! retries, error bodies); `pull` and `push` move images between a
//! registry and anything implementing `blobs::BlobStore`; `known` records
//! which repositories hold which blobs, for cross-repository mounts.
//! Transfers report blob progress and retried attempts as `progress`
//! events of the step that asked for them (`progress::Transfer`).

pub mod auth;
pub mod blobs;
pub mod body;
pub mod client;
pub mod known;
pub mod local;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod reference;
pub mod settings;
pub mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Result;

pub use auth::{AuthFiles, Credentials};
pub use blobs::{BlobStore, OciLayout};
pub use client::{ApiError, Registry};
pub use known::BlobLocations;
pub use manifest::Platform;
pub use pull::{pull, PullOptions, PulledImage};
pub use push::{push, BlobOutcome, PushOptions, PushReport};
pub use reference::{Reference, ReferenceError};
pub use settings::Settings;

/// Check `password` for `user` against `registry` (a registry name such
/// as `docker.io` or `host:port`) and store it in docker's config.json.
pub fn login(registry: &str, user: &str, password: &str, settings: &Settings) -> Result<()> {
    let creds = Credentials {
        username: user.to_string(),
        password: password.to_string(),
    };
    let reg =
        Registry::with_credentials(reference::api_host(registry), settings, Some(creds.clone()))?;
    reg.ping()?;
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
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            reference::DOCKER_HUB.to_string()
        }
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
}
