//! Registry settings: insecure registries, Docker Hub mirrors, retries and
//! parallelism, from flags and rbuild's config file
//! (`$XDG_CONFIG_HOME/rbuild/config.json` or `~/.config/rbuild/config.json`,
//! then `/etc/rbuild/config.json`; `RBUILD_CONFIG` names one file instead).
//!
//! The file uses daemon.json's keys:
//! `{"insecure-registries": ["host:port"], "registry-mirrors": ["https://mirror"]}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

/// How the client reaches registries.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Hosts (`host` or `host:port`) reached over plain HTTP or unverified TLS.
    pub insecure_registries: Vec<String>,
    /// Mirrors tried before Docker Hub on pull (`host[:port]` or URLs).
    pub registry_mirrors: Vec<String>,
    /// Extra attempts after a 5xx answer or a connection error.
    pub retries: u32,
    /// First backoff delay; doubles with each attempt.
    pub backoff_ms: u64,
    /// Blobs transferred at once.
    pub parallelism: usize,
    /// Where credentials are read from and written to.
    pub auth: super::auth::AuthFiles,
    /// Extra CA certificate files (PEM) trusted for every registry.
    pub ca_files: Vec<PathBuf>,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for a response's headers to arrive, and for each read
    /// of a body to return (an idle body fails after this long).
    pub response_timeout: Duration,
    /// Bodies slower than this (bytes/s, averaged over `response_timeout`)
    /// fail; 0 disables the check.
    pub min_speed: u64,
    /// Most layers an image pulled or built on may have.
    pub max_layers: usize,
    /// Largest layer accepted, compressed (declared) or expanded.
    pub max_layer_size: u64,
    /// Told about each failed attempt that will be retried (a `Retry`
    /// event of the transfer's step); `None` keeps them quiet.
    pub on_retry: Option<crate::progress::Transfer>,
}

/// Defaults far above real images: docker's overlay2 driver refuses images
/// deeper than 128 layers, and the largest public layers are a few GiB.
pub const DEFAULT_MAX_LAYERS: usize = 1000;
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 32 << 30;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MIN_SPEED: u64 = 1024;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            insecure_registries: Vec::new(),
            registry_mirrors: Vec::new(),
            retries: 4,
            backoff_ms: 200,
            parallelism: 4,
            auth: super::auth::AuthFiles::from_env(),
            ca_files: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            min_speed: DEFAULT_MIN_SPEED,
            max_layers: DEFAULT_MAX_LAYERS,
            max_layer_size: DEFAULT_MAX_LAYER_SIZE,
            on_retry: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    #[serde(default, rename = "insecure-registries")]
    insecure_registries: Vec<String>,
    #[serde(default, rename = "registry-mirrors")]
    registry_mirrors: Vec<String>,
}

/// The config files read, most specific first.
pub fn config_paths() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("RBUILD_CONFIG").filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(x).join("rbuild/config.json"));
    } else if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(h).join(".config/rbuild/config.json"));
    }
    out.push(PathBuf::from("/etc/rbuild/config.json"));
    out
}

/// Refuses a mirror with credentials in it (`https://user:token@mirror`),
/// as docker does: the host string, password included, would be printed
/// in every retry line and error, and a `:` in the credentials made a
/// remote mirror look like a loopback one to the plain-HTTP rule.
pub fn check_mirror(mirror: &str) -> Result<()> {
    let rest = mirror.split_once("://").map_or(mirror, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        let host = authority.rsplit_once('@').map_or("", |(_, h)| h);
        anyhow::bail!(
            "registry mirror ***@{host}: credentials in a mirror address are refused\n\
             hint: give the mirror's host only, and log in to it with `rbuild login {host}`"
        );
    }
    Ok(())
}

impl Settings {
    /// Defaults plus every config file that exists.
    pub fn load() -> Result<Self> {
        let mut s = Settings::default();
        for path in config_paths() {
            s.merge_file(&path)?;
        }
        Ok(s)
    }

    fn merge_file(&mut self, path: &Path) -> Result<()> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let cfg: FileConfig = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing rbuild config {}", path.display()))?;
        self.insecure_registries.extend(cfg.insecure_registries);
        for m in &cfg.registry_mirrors {
            check_mirror(m).with_context(|| format!("in {}", path.display()))?;
        }
        self.registry_mirrors.extend(cfg.registry_mirrors);
        Ok(())
    }

    /// Whether `host` (`name[:port]`) was listed as insecure. A listed name
    /// without port covers every port of that name.
    pub fn is_insecure(&self, host: &str) -> bool {
        let name = host_name(host);
        self.insecure_registries.iter().any(|entry| {
            let entry = strip_scheme(entry).trim_end_matches('/');
            entry == host || entry == name
        })
    }
}

/// Parse a size: bytes, or a number with a binary suffix (`K`, `M`, `G`,
/// `T`, optionally followed by `iB`/`B`), e.g. `512M`, `32GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 1000, 512M or 32G"))?;
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// `host` without its port (keeps `[v6]` brackets).
pub fn host_name(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|r| r.find(']')) {
        return &host[..end + 2];
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// Loopback hosts may speak plain HTTP without being listed.
pub fn is_loopback(host: &str) -> bool {
    let name = host_name(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name == "localhost" {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

pub(crate) fn strip_scheme(s: &str) -> &str {
    s.strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("32GiB"), Ok(32 << 30));
        assert_eq!(parse_size("2kb"), Ok(2048));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn loopback_detection() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:80",
            "127.9.9.9",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn insecure_matching_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"insecure-registries":["reg.local:5000","http://other"],"registry-mirrors":["mirror:1"]}"#,
        )
        .unwrap();
        let mut s = Settings::default();
        s.merge_file(&path).unwrap();
        s.merge_file(&dir.path().join("missing.json")).unwrap();
        assert!(s.is_insecure("reg.local:5000"));
        assert!(!s.is_insecure("reg.local:5001"));
        assert!(s.is_insecure("other:443"));
        assert_eq!(s.registry_mirrors, vec!["mirror:1"]);
        assert!(check_mirror("https://user:tok=@mirror.example").is_err());
        let e = format!(
            "{:#}",
            check_mirror("https://u:s3cret@m.example/x").unwrap_err()
        );
        assert!(!e.contains("s3cret") && e.contains("hint:"), "{e}");
        assert!(check_mirror("https://mirror.example:5000").is_ok());
        std::fs::write(&path, "{not json").unwrap();
        let err = format!("{:#}", s.merge_file(&path).unwrap_err());
        assert!(err.contains("config.json"), "{err}");
    }
}
