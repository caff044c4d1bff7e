//! `RUN --mount=` specifications: CSV `key=value` fields parsed into a typed
//! [`Mount`] with BuildKit's keys, aliases and defaults. The planner calls
//! [`parse_mount`] after expanding variables in the raw flag value.

/// The kind of a RUN mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// One `--mount=` after parsing. Options that do not apply to the type are
/// rejected by [`parse_mount`], so unused fields stay at their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountType,
    /// Stage name, stage index or image to mount from (bind, cache).
    pub from: Option<String>,
    /// Path inside `from` (or the context) to mount.
    pub source: Option<String>,
    /// Where it appears in the container; empty or relative means relative to
    /// the working directory (bind, cache, tmpfs). Defaulted for secret
    /// (`/run/secrets/<id>` unless `env` is set); ssh leaves it to the runner.
    pub target: Option<String>,
    /// Bind mounts are read-only unless `rw`; others writable unless `ro`.
    pub readonly: bool,
    /// Cache id (defaults to the target at build time), secret id (defaults to
    /// the target's file name), ssh id (defaults to `default`).
    pub id: Option<String>,
    pub sharing: CacheSharing,
    /// Secret/ssh: fail the build when it is not provided.
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
    /// Secret exposed as this environment variable.
    pub env: Option<String>,
}

impl Mount {
    fn new(kind: MountType) -> Self {
        Mount {
            kind,
            from: None,
            source: None,
            target: None,
            readonly: kind == MountType::Bind,
            id: None,
            sharing: CacheSharing::Shared,
            required: false,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            env: None,
        }
    }
}

/// Splits a CSV record: `,` separates fields, `"…"` quotes (with `""` for a quote).
fn csv_fields(spec: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut it = spec.chars().peekable();
    while let Some(c) = it.next() {
        match (c, in_quotes) {
            ('"', true) if it.peek() == Some(&'"') => {
                field.push('"');
                it.next();
            }
            ('"', true) => in_quotes = false,
            ('"', false) if field.is_empty() => in_quotes = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if in_quotes {
        return Err(format!("unterminated quote in mount spec {spec:?}"));
    }
    fields.push(field);
    Ok(fields)
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, String> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!("invalid value for {key}: {other}")),
    }
}

fn parse_u32(key: &str, v: &str, radix: u32) -> Result<u32, String> {
    u32::from_str_radix(v, radix).map_err(|_| format!("invalid value for {key}: {v}"))
}

/// Parses a size like `64m`, `1.5g` or `1048576` (base 1024, as go-units' RAMInBytes).
fn parse_size(v: &str) -> Result<u64, String> {
    let lower = v.trim().to_ascii_lowercase();
    let num_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(num_end);
    let n: f64 = num.parse().map_err(|_| format!("invalid size: '{v}'"))?;
    let mult: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(format!("invalid size: '{v}'")),
    };
    Ok((n * mult as f64) as u64)
}

/// Parses one `--mount=` value (already variable-expanded).
pub fn parse_mount(spec: &str) -> Result<Mount, String> {
    let fields = csv_fields(spec)?;
    let mut kind = MountType::Bind;
    for f in &fields {
        if let Some((k, v)) = f.split_once('=') {
            if k.trim().eq_ignore_ascii_case("type") {
                kind = match v.trim().to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    other => return Err(format!("unsupported mount type \"{other}\"")),
                };
            }
        }
    }
    let mut m = Mount::new(kind);
    for f in fields.iter().filter(|f| !f.trim().is_empty()) {
        let (key, value) = match f.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (f.trim().to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| -> Result<String, String> {
            v.map(str::to_string)
                .ok_or_else(|| format!("invalid field '{f}' must be a key=value pair"))
        };
        use MountType::*;
        match (key.as_str(), kind) {
            ("type", _) => {}
            ("from", Bind | Cache) => m.from = Some(need(value)?),
            ("source" | "src", Bind | Cache | Secret) => m.source = Some(need(value)?),
            ("target" | "dst" | "destination", _) => m.target = Some(need(value)?),
            ("readonly" | "ro", Bind | Cache) => m.readonly = parse_bool(&key, value)?,
            ("readwrite" | "rw", Bind | Cache) => m.readonly = !parse_bool(&key, value)?,
            ("id", Cache | Secret | Ssh) => m.id = Some(need(value)?),
            ("sharing", Cache) => {
                m.sharing = match need(value)?.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    other => return Err(format!("unsupported sharing value \"{other}\"")),
                }
            }
            ("required", Secret | Ssh) => m.required = parse_bool(&key, value)?,
            ("mode", Cache | Secret | Ssh) => m.mode = Some(parse_u32(&key, &need(value)?, 8)?),
            ("uid", Cache | Secret | Ssh) => m.uid = Some(parse_u32(&key, &need(value)?, 10)?),
            ("gid", Cache | Secret | Ssh) => m.gid = Some(parse_u32(&key, &need(value)?, 10)?),
            ("size", Tmpfs) => m.size = Some(parse_size(&need(value)?)?),
            ("env", Secret) => m.env = Some(need(value)?),
            _ => return Err(format!("unexpected key '{key}' in '{f}'")),
        }
    }
    finish_defaults(&mut m)?;
    Ok(m)
}

fn finish_defaults(m: &mut Mount) -> Result<(), String> {
    match m.kind {
        MountType::Secret => {
            if m.id.is_none() {
                let base = m
                    .target
                    .as_deref()
                    .and_then(|t| t.rsplit('/').find(|s| !s.is_empty()));
                m.id = base.map(str::to_string);
            }
            let Some(id) = m.id.clone() else {
                return Err("secret mount requires an id or a target".to_string());
            };
            if m.target.is_none() && m.env.is_none() {
                m.target = Some(format!("/run/secrets/{id}"));
            }
        }
        MountType::Ssh if m.id.is_none() => m.id = Some("default".to_string()),
        // bind/cache/tmpfs: an empty or relative target is resolved
        // against the working directory at build time, as BuildKit does.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_is_default_and_readonly() {
        let m = parse_mount("target=/src,from=builder,source=/out").unwrap();
        assert_eq!(m.kind, MountType::Bind);
        assert!(m.readonly);
        assert_eq!(m.from.as_deref(), Some("builder"));
        assert_eq!(m.source.as_deref(), Some("/out"));
        assert!(!parse_mount("type=bind,target=/x,rw").unwrap().readonly);
        assert!(
            !parse_mount("type=bind,dst=/x,readwrite=true")
                .unwrap()
                .readonly
        );
    }

    #[test]
    fn cache_options() {
        let m = parse_mount("type=cache,id=go,target=/root/.cache,sharing=locked,uid=1000,gid=1000,mode=0755,from=x,source=/c,ro").unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.sharing, CacheSharing::Locked);
        assert_eq!(
            (m.uid, m.gid, m.mode),
            (Some(1000), Some(1000), Some(0o755))
        );
        assert!(m.readonly);
        assert_eq!(m.id.as_deref(), Some("go"));
        assert_eq!(
            parse_mount("type=cache,target=/c").unwrap().sharing,
            CacheSharing::Shared
        );
        assert!(parse_mount("type=cache,target=/c,sharing=bogus").is_err());
    }

    #[test]
    fn tmpfs_size() {
        let m = parse_mount("type=tmpfs,target=/t,size=64m").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        assert!(!m.readonly);
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,size=1024").unwrap().size,
            Some(1024)
        );
    }

    #[test]
    fn secret_defaults() {
        let m = parse_mount("type=secret,id=tok").unwrap();
        assert_eq!(m.target.as_deref(), Some("/run/secrets/tok"));
        let m = parse_mount("type=secret,target=/etc/key.pem,required=true,mode=0400,uid=1,gid=2")
            .unwrap();
        assert_eq!(m.id.as_deref(), Some("key.pem"));
        assert!(m.required);
        assert_eq!(m.mode, Some(0o400));
        let m = parse_mount("type=secret,id=tok,env=TOKEN").unwrap();
        assert_eq!((m.target, m.env.as_deref()), (None, Some("TOKEN")));
    }

    #[test]
    fn ssh_defaults() {
        let m = parse_mount("type=ssh,required").unwrap();
        assert_eq!(m.id.as_deref(), Some("default"));
        assert!(m.required);
        let m = parse_mount("type=ssh,id=gh,target=/s.sock,mode=0600,uid=1,gid=1").unwrap();
        assert_eq!(m.target.as_deref(), Some("/s.sock"));
    }

    #[test]
    fn errors() {
        assert!(parse_mount("type=nfs,target=/x")
            .unwrap_err()
            .contains("unsupported mount type"));
        assert!(parse_mount("type=bind,target=/x,bogus=1")
            .unwrap_err()
            .contains("unexpected key 'bogus'"));
        assert!(parse_mount("type=tmpfs,target=/x,from=a").is_err());
        assert_eq!(parse_mount("type=bind").unwrap().target, None);
        assert!(parse_mount("type=cache,target=/x,uid=abc").is_err());
        assert!(parse_mount("type=secret").is_err());
        assert!(parse_mount("type=bind,target=/x,source").is_err());
    }

    #[test]
    fn csv_quoting() {
        let m = parse_mount("type=bind,\"target=/a,b\"").unwrap();
        assert_eq!(m.target.as_deref(), Some("/a,b"));
    }
}
