//! Stored registry credentials: docker's `config.json` (`auths`,
//! `credsStore`, `credHelpers` via `docker-credential-*` programs) and
//! `${XDG_RUNTIME_DIR}/containers/auth.json`; writing and removing them for
//! login/logout in docker's format (mode 0600, atomic replace).
//!
//! Secrets never reach Debug output or error messages.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::settings::strip_scheme;
use super::DOCKER_HUB_AUTH_KEY;
use crate::oci::reference::DOCKER_HUB;

/// A username and a secret (password or token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The credential files in use.
#[derive(Debug, Clone)]
pub struct AuthFiles {
    /// docker's config.json (read, and written by login/logout).
    pub docker_config: PathBuf,
    /// containers' auth.json (read first, like podman and buildah do).
    pub containers_auth: Option<PathBuf>,
}

impl AuthFiles {
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, and
    /// `${XDG_RUNTIME_DIR}/containers/auth.json` (or `REGISTRY_AUTH_FILE`).
    pub fn from_env() -> Self {
        let docker_dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
                PathBuf::from(home).join(".docker")
            });
        let containers_auth = std::env::var_os("REGISTRY_AUTH_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_RUNTIME_DIR")
                    .filter(|v| !v.is_empty())
                    .map(|d| PathBuf::from(d).join("containers/auth.json"))
            });
        AuthFiles {
            docker_config: docker_dir.join("config.json"),
            containers_auth,
        }
    }

    /// Credentials for a registry host, if any are stored.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(path) = &self.containers_auth {
            if let Some(cfg) = read_json(path)? {
                if let Some(c) = lookup_in(&cfg, registry, path)? {
                    return Ok(Some(c));
                }
            }
        }
        match read_json(&self.docker_config)? {
            Some(cfg) => lookup_in(&cfg, registry, &self.docker_config),
            None => Ok(None),
        }
    }

    /// Store credentials for `registry` in docker's config.json (or its
    /// credential helper when one is configured for that registry).
    pub fn store(&self, registry: &str, creds: &Credentials) -> Result<()> {
        let mut cfg = read_json(&self.docker_config)?.unwrap_or_else(|| json!({}));
        let key = config_key(registry);
        if let Some(helper) = helper_for(&cfg, registry) {
            let payload =
                json!({"ServerURL": key, "Username": creds.username, "Secret": creds.password});
            run_helper(&helper, "store", payload.to_string().as_bytes())?;
            return Ok(());
        }
        let auths = auths_mut(&mut cfg, &self.docker_config)?;
        remove_keys(auths, registry);
        let raw = format!("{}:{}", creds.username, creds.password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        auths.insert(key, json!({ "auth": encoded }));
        write_private(&self.docker_config, &cfg)
    }

    /// Remove stored credentials for `registry`; true if any were removed.
    pub fn erase(&self, registry: &str) -> Result<bool> {
        let Some(mut cfg) = read_json(&self.docker_config)? else {
            return Ok(false);
        };
        let mut removed = false;
        if let Some(helper) = helper_for(&cfg, registry) {
            removed |= run_helper(&helper, "erase", config_key(registry).as_bytes()).is_ok();
        }
        if cfg.get("auths").is_some() {
            let auths = auths_mut(&mut cfg, &self.docker_config)?;
            let before = auths.len();
            remove_keys(auths, registry);
            if auths.len() != before {
                removed = true;
                write_private(&self.docker_config, &cfg)?;
            }
        }
        Ok(removed)
    }
}

/// The key docker uses for a registry in `auths` and for helpers.
pub fn config_key(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// `https://host/v1/` and `host` name the same registry in config.json.
fn normalize_key(key: &str) -> &str {
    let k = strip_scheme(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("parsing credentials file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn helper_for(cfg: &Value, registry: &str) -> Option<String> {
    if let Some(helpers) = cfg.get("credHelpers").and_then(Value::as_object) {
        for (k, v) in helpers {
            if normalize_key(k) == registry {
                return v.as_str().map(str::to_string);
            }
        }
    }
    cfg.get("credsStore")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn lookup_in(cfg: &Value, registry: &str, path: &Path) -> Result<Option<Credentials>> {
    if let Some(helper) = helper_for(cfg, registry) {
        if let Some(c) = helper_get(&helper, &config_key(registry))? {
            return Ok(Some(c));
        }
    }
    let Some(auths) = cfg.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    for (key, entry) in auths {
        if normalize_key(key) != registry {
            continue;
        }
        if let Some(c) = decode_entry(entry) {
            return Ok(Some(c));
        }
        if entry.get("auth").is_some() {
            bail!(
                "credentials file {}: the `auth` entry for {key} is not base64 of user:password",
                path.display()
            );
        }
    }
    Ok(None)
}

fn decode_entry(entry: &Value) -> Option<Credentials> {
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        return Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        });
    }
    let auth = entry.get("auth").and_then(Value::as_str)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

fn auths_mut<'a>(cfg: &'a mut Value, path: &Path) -> Result<&'a mut Map<String, Value>> {
    let obj = cfg
        .as_object_mut()
        .with_context(|| format!("{} is not a JSON object", path.display()))?;
    obj.entry("auths")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .with_context(|| format!("{}: `auths` is not an object", path.display()))
}

fn remove_keys(auths: &mut Map<String, Value>, registry: &str) {
    auths.retain(|k, _| normalize_key(k) != registry);
}

/// Write JSON with mode 0600 via a temp file in the same directory.
fn write_private(path: &Path, value: &Value) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on a temp file in {}", dir.display()))?;
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    tmp.write_all(&bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

fn run_helper(helper: &str, action: &str, input: &[u8]) -> Result<Vec<u8>> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running credential helper {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading (a failure it reports on
        // its own) closes the pipe: its status and message say why, not
        // a broken pipe.
        match stdin.write_all(input) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(e).with_context(|| format!("writing to credential helper {program}"));
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for credential helper {program}"))?;
    if !out.status.success() {
        // Helpers explain a failure on stdout ("credentials not found in
        // native keychain"), which is shown; stdout that looks like the
        // credentials answer (JSON) is not: it may hold the secret.
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let msg = if msg.is_empty() {
            let said = String::from_utf8_lossy(&out.stdout);
            if said.contains('{') || said.contains("Secret") {
                "(its output is not shown: it may hold credentials)".to_string()
            } else {
                super::client::printable(said.trim(), 200)
            }
        } else {
            super::client::printable(&msg, 300)
        };
        bail!(
            "credential helper {program} {action} failed ({}): {msg}",
            out.status
        );
    }
    Ok(out.stdout)
}

fn helper_get(helper: &str, server: &str) -> Result<Option<Credentials>> {
    let out = match run_helper(helper, "get", server.as_bytes()) {
        Ok(out) => out,
        Err(e) if format!("{e:#}").contains("credentials not found") => return Ok(None),
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_slice(&out).with_context(|| {
        format!("credential helper docker-credential-{helper} gave invalid JSON")
    })?;
    let user = v.get("Username").and_then(Value::as_str).unwrap_or("");
    let secret = v.get("Secret").and_then(Value::as_str).unwrap_or("");
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: user.to_string(),
        password: secret.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn files(dir: &Path) -> AuthFiles {
        AuthFiles {
            docker_config: dir.join("docker/config.json"),
            containers_auth: Some(dir.join("containers/auth.json")),
        }
    }

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn login_writes_docker_format_0600_and_keeps_other_fields() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        std::fs::write(
            &f.docker_config,
            r#"{"psFormat":"x","auths":{"other.io":{"auth":"dTpw"}}}"#,
        )
        .unwrap();
        f.store("reg.example:5000", &creds("alice", "s3:cret"))
            .unwrap();
        let text = std::fs::read_to_string(&f.docker_config).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["psFormat"], "x");
        assert_eq!(
            v["auths"]["reg.example:5000"]["auth"],
            "YWxpY2U6czM6Y3JldA=="
        );
        assert_eq!(v["auths"]["other.io"]["auth"], "dTpw");
        let mode = std::fs::metadata(&f.docker_config)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            f.lookup("reg.example:5000").unwrap(),
            Some(creds("alice", "s3:cret"))
        );
        assert_eq!(f.lookup("other.io").unwrap(), Some(creds("u", "p")));
        assert!(f.erase("reg.example:5000").unwrap());
        assert!(!f.erase("reg.example:5000").unwrap());
        assert_eq!(f.lookup("reg.example:5000").unwrap(), None);
    }

    #[test]
    fn docker_hub_keys_are_equivalent() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        f.store(DOCKER_HUB, &creds("bob", "pw")).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&f.docker_config).unwrap()).unwrap();
        assert!(v["auths"][DOCKER_HUB_AUTH_KEY].is_object());
        assert_eq!(f.lookup(DOCKER_HUB).unwrap(), Some(creds("bob", "pw")));
    }

    #[test]
    fn containers_auth_json_is_read_first() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        f.store("r.io", &creds("docker", "a")).unwrap();
        std::fs::create_dir_all(dir.path().join("containers")).unwrap();
        std::fs::write(
            f.containers_auth.as_ref().unwrap(),
            r#"{"auths":{"https://r.io":{"auth":"cG9kbWFuOmI="}}}"#,
        )
        .unwrap();
        assert_eq!(f.lookup("r.io").unwrap(), Some(creds("podman", "b")));
    }

    #[test]
    fn credential_helper_programs_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let store = dir.path().join("helper-store");
        // A real helper program speaking docker's credential-helper protocol.
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n get) read s; if [ -f {st} ]; then cat {st}; else echo 'credentials not found in native keychain'; exit 1; fi;;\n store) cat > {st}.in; printf '{{\"Username\":\"%s\",\"Secret\":\"%s\"}}' $(sed 's/.*\"Username\":\"\\([^\"]*\\)\".*\"Secret\":\"\\([^\"]*\\)\".*/\\1 \\2/' {st}.in) > {st};;\n erase) read s; rm -f {st};;\nesac\n",
            st = store.display()
        );
        let prog = bin.join("docker-credential-rbtest");
        std::fs::write(&prog, script).unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", path);
        let f = files(dir.path());
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        std::fs::write(
            &f.docker_config,
            r#"{"credHelpers":{"helped.io":"rbtest"}}"#,
        )
        .unwrap();
        assert_eq!(f.lookup("helped.io").unwrap(), None);
        f.store("helped.io", &creds("carol", "hunter2")).unwrap();
        assert_eq!(
            f.lookup("helped.io").unwrap(),
            Some(creds("carol", "hunter2"))
        );
        let text = std::fs::read_to_string(&f.docker_config).unwrap();
        assert!(
            !text.contains("hunter2"),
            "the helper keeps the secret: {text}"
        );
        assert!(f.erase("helped.io").unwrap());
        assert_eq!(f.lookup("helped.io").unwrap(), None);
    }

    #[test]
    fn a_failing_helper_that_printed_credentials_is_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("docker-credential-rbleak");
        std::fs::write(
            &prog,
            "#!/bin/sh\nprintf '{\"Username\":\"u\",\"Secret\":\"leaked-9f3\"}'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        std::env::set_var("PATH", path);
        let e = format!("{:#}", run_helper("rbleak", "get", b"x").unwrap_err());
        assert!(!e.contains("leaked-9f3") && e.contains("not shown"), "{e}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let c = creds("dave", "topsecret");
        let s = format!("{c:?}");
        assert!(s.contains("dave") && !s.contains("topsecret"), "{s}");
    }
}
