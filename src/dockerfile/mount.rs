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
    /// Default: read-only for bind, secret and ssh; writable for cache and tmpfs.
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

/// Go's `strconv.ParseBool`; a bare key (no `=`) means true.
fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(format!("invalid value for {key}: {other}")),
    }
}

fn parse_u32(key: &str, v: &str, radix: u32) -> Result<u32, String> {
    u32::from_str_radix(v, radix).map_err(|_| format!("invalid value {v} for {key}"))
}

fn type_name(kind: MountType) -> &'static str {
    match kind {
        MountType::Bind => "bind",
        MountType::Cache => "cache",
        MountType::Tmpfs => "tmpfs",
        MountType::Secret => "secret",
        MountType::Ssh => "ssh",
    }
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

/// Parses one `--mount=` value (already variable-expanded), with BuildKit's
/// keys, aliases, defaults and checks.
pub fn parse_mount(spec: &str) -> Result<Mount, String> {
    let fields = csv_fields(spec)?;
    let mut kind = MountType::Bind;
    for f in &fields {
        if let Some((k, v)) = f.split_once('=') {
            if k.eq_ignore_ascii_case("type") {
                kind = match v.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => return Err(format!("unsupported mount type \"{v}\"")),
                };
            }
        }
    }
    let mut m = Mount::new(kind);
    let mut ro_set = false;
    let mut sharing_set = false;
    let wrong_type = |key: &str| {
        format!(
            "unexpected key '{key}' for mount type '{}'",
            type_name(kind)
        )
    };
    for f in fields.iter().filter(|f| !f.is_empty()) {
        let (key, value) = match f.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (f.to_ascii_lowercase(), None),
        };
        let is_secret_or_ssh = matches!(kind, MountType::Secret | MountType::Ssh);
        if value.is_none()
            && !matches!(
                key.as_str(),
                "readonly" | "ro" | "readwrite" | "rw" | "required"
            )
        {
            return Err(format!("invalid field '{f}' must be a key=value pair"));
        }
        let v = value.unwrap_or("");
        match key.as_str() {
            "type" => {}
            "from" => m.from = Some(v.to_string()),
            "source" | "src" => m.source = Some(v.to_string()),
            "target" | "dst" | "destination" => m.target = Some(v.to_string()),
            "readonly" | "ro" => {
                m.readonly = parse_bool(&key, value)?;
                ro_set = true;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&key, value)?;
                ro_set = true;
            }
            "required" if is_secret_or_ssh => m.required = parse_bool(&key, value)?,
            "required" => return Err(wrong_type(&key)),
            "size" if kind == MountType::Tmpfs => m.size = Some(parse_size(v)?),
            "size" => return Err(wrong_type(&key)),
            "env" if kind == MountType::Secret => m.env = Some(v.to_string()),
            "env" => return Err(wrong_type(&key)),
            "id" => m.id = Some(v.to_string()),
            "sharing" => {
                sharing_set = true;
                m.sharing = match v.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    _ => return Err(format!("unsupported sharing value \"{v}\"")),
                }
            }
            "mode" => m.mode = Some(parse_u32(&key, v, 8)?),
            "uid" => m.uid = Some(parse_u32(&key, v, 10)?),
            "gid" => m.gid = Some(parse_u32(&key, v, 10)?),
            _ => return Err(format!("unexpected key '{key}' in '{f}'")),
        }
    }
    validate(&mut m, ro_set, sharing_set)?;
    Ok(m)
}

/// BuildKit's `validateMount` plus the secret/ssh defaults applied at dispatch.
fn validate(m: &mut Mount, ro_set: bool, sharing_set: bool) -> Result<(), String> {
    let t = type_name(m.kind);
    if !matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    ) {
        for (name, set) in [
            ("mode", m.mode.is_some()),
            ("uid", m.uid.is_some()),
            ("gid", m.gid.is_some()),
        ] {
            if set {
                return Err(format!("{name} not allowed for \"{t}\" type mounts"));
            }
        }
    }
    if !ro_set {
        m.readonly = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
    }
    if sharing_set && m.kind != MountType::Cache {
        return Err(format!("invalid cache sharing set for {t} mount"));
    }
    match m.kind {
        MountType::Secret => {
            if m.from.is_some() {
                return Err("secret mount should not have a from".to_string());
            }
            if m.source.is_some() && m.id.is_some() {
                return Err("both source and id can't be set".to_string());
            }
            // `source` names the secret; without it or `id`, the target's file name does.
            let id = m.id.take().or_else(|| m.source.clone()).or_else(|| {
                let t = m.target.as_deref()?;
                t.rsplit('/').find(|s| !s.is_empty()).map(str::to_string)
            });
            let Some(id) = id else {
                return Err("invalid secret mount. one of source, target required".to_string());
            };
            if m.target.is_none() && m.env.is_none() {
                m.target = Some(format!("/run/secrets/{id}"));
            }
            m.id = Some(id);
        }
        MountType::Ssh if m.id.is_none() => m.id = Some("default".to_string()),
        // bind/cache/tmpfs: an empty or relative target is resolved
        // against the working directory at build time, as BuildKit does.
        _ => {}
    }
    Ok(())
}

/// Checks BuildKit makes before variables are expanded: `from=` may not
/// contain a variable ("define alias stage instead").
pub fn check_unexpanded(spec: &str) -> Result<(), String> {
    for f in csv_fields(spec)? {
        if let Some((k, v)) = f.split_once('=') {
            let dollar_then_char = v.find('$').is_some_and(|i| i + 1 < v.len());
            if k.eq_ignore_ascii_case("from") && dollar_then_char {
                return Err(
                    "'from' doesn't support variable expansion, define alias stage instead"
                        .to_string(),
                );
            }
        }
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
        let m = parse_mount("type=secret,source=tok").unwrap();
        assert_eq!(m.id.as_deref(), Some("tok"));
        assert_eq!(m.target.as_deref(), Some("/run/secrets/tok"));
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
        assert!(parse_mount("type=tmpfs,target=/x,size=1x").is_err());
        assert_eq!(
            parse_mount("type=bind,target=/x,mode=0600").unwrap_err(),
            "mode not allowed for \"bind\" type mounts"
        );
        assert!(parse_mount("type=bind,target=/x,required")
            .unwrap_err()
            .contains("for mount type 'bind'"));
        assert!(parse_mount("type=bind,target=/x,sharing=locked")
            .unwrap_err()
            .contains("invalid cache sharing"));
        assert!(parse_mount("type=secret,from=x,id=a").is_err());
        assert!(parse_mount("type=secret,source=a,id=b").is_err());
        assert!(check_unexpanded("type=bind,from=$STAGE,target=/x").is_err());
        assert!(check_unexpanded("type=bind,from=stage,target=$DIR").is_ok());
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
