//! `--cache-to` / `--cache-from` values, in BuildKit's spellings
//! (`type=registry,ref=…,mode=max`, `type=local,dest=…`, `type=inline`, a
//! bare `REF`), checked before the build starts.

use std::path::PathBuf;

use super::CacheError;

/// Which steps an export carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// What made the result's layers: the target stage's steps and those
    /// of the stages it is built FROM.
    #[default]
    Min,
    /// Every step of every stage the build ran.
    Max,
}

/// Where a cache is written or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A registry reference (`REG/REPO:TAG`), as given.
    Registry(String),
    /// An OCI image layout directory.
    Local(PathBuf),
    /// Inside the pushed image's config (`--cache-to` only).
    Inline,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Registry(r) => write!(f, "{r}"),
            Location::Local(d) => write!(f, "{}", d.display()),
            Location::Inline => write!(f, "inline"),
        }
    }
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTo {
    pub location: Location,
    pub mode: Mode,
    /// A failed export is a warning instead of a failed build.
    pub ignore_error: bool,
    /// `cache-mounts=true`: also save the contents of the build's RUN cache
    /// mounts, each up to this many bytes (`cache-mounts-max-size`).
    pub mounts: Option<u64>,
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFrom {
    pub location: Location,
}

/// The `KEY=VALUE` fields of a spec, `type` first checked by the caller.
fn fields<'a>(flag: &'static str, spec: &'a str) -> Result<Vec<(&'a str, &'a str)>, CacheError> {
    spec.split(',')
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| CacheError::spec(flag, spec, format!("{f:?} is not KEY=VALUE")))
        })
        .collect()
}

fn boolean(flag: &'static str, spec: &str, key: &str, v: &str) -> Result<bool, CacheError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(CacheError::spec(
            flag,
            spec,
            format!("{key}={v}: expected true or false"),
        )),
    }
}

/// Parse one `--cache-to` value.
pub fn parse_cache_to(spec: &str) -> Result<CacheTo, CacheError> {
    const FLAG: &str = "--cache-to";
    let mut kind = None;
    let (mut reference, mut dest) = (None, None);
    let mut mode = Mode::Min;
    let mut ignore_error = false;
    let (mut mounts, mut max_size) = (false, None);
    for (k, v) in fields(FLAG, spec)? {
        match k {
            "type" => kind = Some(v),
            "ref" => reference = Some(v),
            "dest" => dest = Some(v),
            "mode" => {
                mode = match v {
                    "min" => Mode::Min,
                    "max" => Mode::Max,
                    _ => return Err(CacheError::spec(FLAG, spec, format!("mode={v}: expected min or max"))),
                }
            }
            "ignore-error" => ignore_error = boolean(FLAG, spec, k, v)?,
            // Layers travel as the build wrote them (`--compression` picks
            // the codec), in OCI media types, under an OCI image manifest:
            // the values that say so are accepted, the others refused.
            "oci-mediatypes" | "image-manifest" => {
                if !boolean(FLAG, spec, k, v)? {
                    return Err(CacheError::spec(
                        FLAG,
                        spec,
                        format!("{k}=false is not supported: rbuild's cache is always an OCI image manifest"),
                    ));
                }
            }
            "compression" | "compression-level" | "force-compression" => {
                return Err(CacheError::spec(
                    FLAG,
                    spec,
                    format!("{k} is not supported: cached layers are the build's own; set --compression on the build"),
                ))
            }
            "cache-mounts" => mounts = boolean(FLAG, spec, k, v)?,
            "cache-mounts-max-size" => {
                max_size = Some(
                    super::mounts::parse_max_size(v)
                        .map_err(|e| CacheError::spec(FLAG, spec, e.to_string()))?,
                )
            }
            other => return Err(CacheError::spec(FLAG, spec, format!("unknown key {other:?}"))),
        }
    }
    let location = match kind {
        Some("registry") => Location::Registry(required(FLAG, spec, "ref", reference)?),
        Some("local") => Location::Local(required(FLAG, spec, "dest", dest)?.into()),
        Some("inline") => Location::Inline,
        Some(other) => {
            return Err(CacheError::spec(
                FLAG,
                spec,
                format!("type {other:?} is not supported (registry, local, inline)"),
            ))
        }
        None => {
            return Err(CacheError::spec(
                FLAG,
                spec,
                "type=registry|local|inline is required".to_string(),
            ))
        }
    };
    if location == Location::Inline && mode == Mode::Max {
        return Err(CacheError::spec(
            FLAG,
            spec,
            "type=inline carries only the result's own layers: mode=max needs type=registry or type=local".to_string(),
        ));
    }
    if mounts && location == Location::Inline {
        return Err(CacheError::spec(
            FLAG,
            spec,
            "type=inline carries only the image's own layers: cache-mounts=true needs type=registry or type=local".to_string(),
        ));
    }
    if max_size.is_some() && !mounts {
        return Err(CacheError::spec(
            FLAG,
            spec,
            "cache-mounts-max-size needs cache-mounts=true".to_string(),
        ));
    }
    Ok(CacheTo {
        location,
        mode,
        ignore_error,
        mounts: mounts.then(|| max_size.unwrap_or(super::mounts::DEFAULT_MAX_SIZE)),
    })
}

/// Parse one `--cache-from` value (a bare `REF` is `type=registry,ref=REF`).
pub fn parse_cache_from(spec: &str) -> Result<CacheFrom, CacheError> {
    const FLAG: &str = "--cache-from";
    if !spec.is_empty() && !spec.contains('=') {
        return Ok(CacheFrom {
            location: Location::Registry(spec.to_string()),
        });
    }
    let mut kind = None;
    let (mut reference, mut src) = (None, None);
    for (k, v) in fields(FLAG, spec)? {
        match k {
            "type" => kind = Some(v),
            "ref" => reference = Some(v),
            "src" => src = Some(v),
            // BuildKit's local importer can pick a digest from index.json;
            // rbuild reads the one named `cache`.
            other => {
                return Err(CacheError::spec(
                    FLAG,
                    spec,
                    format!("unknown key {other:?}"),
                ))
            }
        }
    }
    let location = match kind {
        Some("registry") => Location::Registry(required(FLAG, spec, "ref", reference)?),
        Some("local") => Location::Local(required(FLAG, spec, "src", src)?.into()),
        Some(other) => {
            return Err(CacheError::spec(
                FLAG,
                spec,
                format!("type {other:?} is not supported (registry, local; an inline cache is read with type=registry,ref=IMAGE)"),
            ))
        }
        None => return Err(CacheError::spec(FLAG, spec, "type=registry|local is required".to_string())),
    };
    Ok(CacheFrom { location })
}

fn required(
    flag: &'static str,
    spec: &str,
    key: &str,
    v: Option<&str>,
) -> Result<String, CacheError> {
    match v {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(CacheError::spec(flag, spec, format!("{key}= is required"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_spellings_parse() {
        let to = parse_cache_to("type=registry,ref=r:5000/a:cache,mode=max,ignore-error=true,oci-mediatypes=true,image-manifest=true").unwrap();
        assert_eq!(to.location, Location::Registry("r:5000/a:cache".into()));
        assert_eq!(to.mode, Mode::Max);
        assert!(to.ignore_error);
        let to = parse_cache_to("type=local,dest=/tmp/c").unwrap();
        assert_eq!(to.location, Location::Local("/tmp/c".into()));
        assert_eq!(to.mode, Mode::Min);
        assert_eq!(
            parse_cache_to("type=inline").unwrap().location,
            Location::Inline
        );
        assert_eq!(
            parse_cache_from("r:5000/a:cache").unwrap().location,
            Location::Registry("r:5000/a:cache".into())
        );
        assert_eq!(
            parse_cache_from("type=local,src=/c").unwrap().location,
            Location::Local("/c".into())
        );
    }

    #[test]
    fn what_is_not_meaningful_is_refused_by_name() {
        for (spec, want) in [
            ("type=registry", "ref= is required"),
            ("type=local", "dest= is required"),
            ("type=gha", "type \"gha\" is not supported"),
            ("type=registry,ref=a,mode=all", "mode=all"),
            (
                "type=registry,ref=a,compression=zstd",
                "compression is not supported",
            ),
            (
                "type=registry,ref=a,oci-mediatypes=false",
                "oci-mediatypes=false",
            ),
            ("type=registry,ref=a,bogus=1", "unknown key \"bogus\""),
            ("type=inline,mode=max", "mode=max"),
            ("mode=max", "type=registry|local|inline is required"),
            ("type=registry,ref", "\"ref\" is not KEY=VALUE"),
        ] {
            let err = parse_cache_to(spec).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(err.contains(spec), "{spec}: {err}");
        }
        let err = parse_cache_from("type=inline").unwrap_err().to_string();
        assert!(err.contains("type=registry,ref=IMAGE"), "{err}");
    }
}
