//! What a build is asked to do, parsed from docker-build-style flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};

/// Where `--output` sends the result besides the local store. A `dest` of
/// `-` is standard output (always a tar there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// An OCI image layout: a directory, or a tar of one when `dest` ends in `.tar`.
    Oci { dest: PathBuf },
    /// A docker-archive tar, as `docker save` writes and `docker load` reads.
    Docker { dest: PathBuf },
    /// The final stage's files, written into directory `dest`.
    Local { dest: PathBuf },
    /// The final stage's files as one tar.
    Tar { dest: PathBuf },
}

impl OutputSpec {
    pub fn dest(&self) -> &std::path::Path {
        match self {
            OutputSpec::Oci { dest }
            | OutputSpec::Docker { dest }
            | OutputSpec::Local { dest }
            | OutputSpec::Tar { dest } => dest,
        }
    }

    /// Whether this output is written to standard output.
    pub fn to_stdout(&self) -> bool {
        self.dest().as_os_str() == "-"
    }
}

/// Parse buildx's `--output` forms: `type=oci|docker|local|tar,dest=PATH`,
/// a bare `DIR` (`type=local`), or `-` (`type=tar` to stdout).
pub fn parse_output(spec: &str) -> anyhow::Result<OutputSpec> {
    if spec == "-" {
        return Ok(OutputSpec::Tar { dest: "-".into() });
    }
    if !spec.is_empty() && !spec.contains('=') && !spec.contains(',') {
        return Ok(OutputSpec::Local { dest: spec.into() });
    }
    let mut kind = None;
    let mut dest = None;
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = field.split_once('=').with_context(|| {
            format!("invalid --output {spec:?}: field {field:?} is not KEY=VALUE")
        })?;
        match k.trim() {
            "type" => kind = Some(v.trim().to_string()),
            "dest" => dest = Some(PathBuf::from(v.trim())),
            "name" | "push" | "compression" | "compression-level" | "oci-mediatypes" => {
                bail!("invalid --output {spec:?}: {k} is not supported; use the build flags for it")
            }
            other => bail!("invalid --output {spec:?}: unknown key {other:?}"),
        }
    }
    let dest = dest.with_context(|| format!("invalid --output {spec:?}: dest=PATH is required"))?;
    match kind.as_deref() {
        Some("oci") => Ok(OutputSpec::Oci { dest }),
        Some("docker") => Ok(OutputSpec::Docker { dest }),
        Some("local") if dest.as_os_str() == "-" => {
            bail!(
                "invalid --output {spec:?}: type=local needs a directory; use type=tar for stdout"
            )
        }
        Some("local") => Ok(OutputSpec::Local { dest }),
        Some("tar") => Ok(OutputSpec::Tar { dest }),
        Some(other) => bail!(
            "invalid --output {spec:?}: type {other:?} is not supported (oci, docker, local, tar)"
        ),
        None => bail!("invalid --output {spec:?}: type=oci|docker|local|tar is required"),
    }
}

/// `--build-arg K=V` sets K; `--build-arg K` takes K from the environment and
/// is dropped when the environment lacks it (docker's rule). Later flags win.
pub fn parse_build_args(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for arg in args {
        match arg.split_once('=') {
            Some(("", _)) => bail!("invalid --build-arg {arg:?}: empty name"),
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None if arg.is_empty() => bail!("invalid --build-arg: empty name"),
            None => {
                if let Some(v) = env(arg) {
                    out.insert(arg.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// `SOURCE_DATE_EPOCH` from the build args, else the environment: seconds
/// since the epoch. An empty value means unset.
pub fn source_date_epoch(
    build_args: &BTreeMap<String, String>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<i64>> {
    let raw = build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| env("SOURCE_DATE_EPOCH"));
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .with_context(|| format!("invalid SOURCE_DATE_EPOCH {v:?}: expected whole seconds")),
    }
}

/// Build options a CI pipeline passes in (`--label`, …), grouped so new
/// flags touch this struct rather than [`super::BuildRequest`].
#[derive(Debug, Clone, Default)]
pub struct ExtraOptions {
    /// `--label K=V`: set on the final image's config.
    pub labels: BTreeMap<String, String>,
    /// How messages name the Dockerfile when its path is a temp file
    /// (`-f -`, a Dockerfile from stdin or a URL) or inside a fetched context.
    pub dockerfile_name: Option<String>,
    /// `--add-host NAME:IP`: extra `/etc/hosts` lines for RUN.
    pub add_hosts: Vec<(String, String)>,
    /// `--no-cache-filter STAGE`: stages built without the cache.
    pub no_cache_filter: Vec<String>,
    /// `--annotation [manifest:]K=V`: on the image manifest.
    pub annotations: BTreeMap<String, String>,
    /// `--platform os/arch[/variant]`: the one platform to build for.
    pub platform: Option<crate::plan::Platform>,
    /// `--build-context NAME=docker-image://REF|oci-layout://…`: the image a
    /// FROM or `--from` naming NAME uses instead (keys are normalized
    /// references; values a REF or the whole `oci-layout://` value).
    pub image_contexts: BTreeMap<String, String>,
    /// The NAMEs of `--build-context`, lowercase (they replace stages too).
    pub context_names: std::collections::BTreeSet<String>,
    /// `--cache-to`: where the build's cache is exported after it succeeded.
    pub cache_to: Vec<crate::cache::CacheTo>,
    /// `--cache-from`: caches consulted, in order, after the local store.
    pub cache_from: Vec<crate::cache::CacheFrom>,
}

/// Marks a directory value of [`ExtraOptions::image_contexts`].
pub const LOCAL_DIR: &str = "local-dir:";

/// `--build-context NAME=DIR|docker-image://REF|oci-layout://PATH[:TAG|@DIGEST]`.
pub fn parse_build_contexts(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (name, value) = item
            .split_once('=')
            .with_context(|| format!("invalid --build-context {item:?}: expected NAME=VALUE"))?;
        // Stage names are case-insensitive; image names are lowercase.
        let key = crate::plan::normalize_reference(&name.to_ascii_lowercase())
            .with_context(|| format!("invalid --build-context {item:?}: bad name {name:?}"))?;
        if let Some(reference) = value.strip_prefix("docker-image://") {
            crate::plan::normalize_reference(reference).with_context(|| {
                format!("invalid --build-context {item:?}: bad image reference {reference:?}")
            })?;
            out.insert(key, reference.to_string());
        } else if value.starts_with("oci-layout://") {
            // Kept whole: the engine imports it from the directory.
            out.insert(key, value.to_string());
        } else if value.contains("://") {
            bail!(
                "--build-context {item}: the value is a directory, docker-image://REF or \
                 oci-layout://PATH[:TAG|@DIGEST]"
            );
        } else {
            let dir = std::path::Path::new(value);
            anyhow::ensure!(
                dir.is_dir(),
                "--build-context {item}: {value} is not a directory"
            );
            out.insert(key, format!("{LOCAL_DIR}{value}"));
        }
    }
    Ok(out)
}

/// `--annotation [TYPE:]KEY=VALUE`. rbuild writes one manifest and no image
/// index, so only the manifest type (the default) has a place to go.
pub fn parse_annotations(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("invalid --annotation {item:?}: expected [TYPE:]KEY=VALUE"))?;
        // A type prefix is a word before the first `:` in the key, optionally
        // with a platform in brackets (`manifest[linux/amd64]:`).
        let key = match k.split_once(':') {
            Some((ty, key)) if !ty.contains('.') => {
                let base = ty.split('[').next().unwrap_or(ty);
                match base {
                    "manifest" => key,
                    "index" | "manifest-descriptor" | "index-descriptor" => bail!(
                        "invalid --annotation {item:?}: rbuild writes a single manifest and no \
                         image index, so only manifest annotations are supported"
                    ),
                    other => bail!("invalid --annotation {item:?}: unknown type {other:?}"),
                }
            }
            _ => k,
        };
        if key.is_empty() {
            bail!("invalid --annotation {item:?}: empty key");
        }
        out.insert(key.to_string(), v.to_string());
    }
    Ok(out)
}

/// `--add-host NAME:IP` (docker also takes `NAME=IP`); the IP may be v6
/// (`h:::1`, or bracketed `h:[::1]`). Validated so a bad line never reaches
/// `/etc/hosts`.
pub fn parse_add_host(spec: &str) -> anyhow::Result<(String, String)> {
    let (name, ip) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .with_context(|| format!("invalid --add-host {spec:?}: expected HOST:IP"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !valid_name {
        bail!("invalid --add-host {spec:?}: {name:?} is not a host name");
    }
    ip.parse::<std::net::IpAddr>()
        .with_context(|| format!("invalid --add-host {spec:?}: {ip:?} is not an IP address"))?;
    Ok((name.to_string(), ip.to_string()))
}

/// `K=V` pairs of a repeatable flag (`--label`); later ones win.
pub fn parse_key_values(flag: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        if k.is_empty() {
            bail!("invalid {flag} {item:?}: empty key (expected KEY=VALUE)");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn outputs() {
        assert_eq!(
            parse_output("type=oci,dest=out").unwrap(),
            OutputSpec::Oci { dest: "out".into() }
        );
        assert_eq!(
            parse_output("type=docker,dest=/tmp/i.tar").unwrap(),
            OutputSpec::Docker {
                dest: "/tmp/i.tar".into()
            }
        );
        assert_eq!(
            parse_output("out/dir").unwrap(),
            OutputSpec::Local {
                dest: "out/dir".into()
            }
        );
        assert!(parse_output("-").unwrap().to_stdout());
        assert_eq!(
            parse_output("type=tar,dest=f.tar").unwrap(),
            OutputSpec::Tar {
                dest: "f.tar".into()
            }
        );
        for bad in [
            "type=oci",
            "dest=x",
            "type=image,dest=x",
            "type=local,dest=-",
            "type=oci,dest=x,foo=1",
            "oops,",
        ] {
            let err = parse_output(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn build_args_from_flags_and_env() {
        let env = |k: &str| (k == "FROM_ENV").then(|| "e".to_string());
        let args: Vec<String> = ["A=1", "B=", "FROM_ENV", "MISSING", "A=2", "C=x=y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = parse_build_args(&args, env).unwrap();
        let want: BTreeMap<String, String> =
            [("A", "2"), ("B", ""), ("FROM_ENV", "e"), ("C", "x=y")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(got, want);
        assert!(parse_build_args(&["=1".to_string()], no_env).is_err());
    }

    #[test]
    fn epoch_from_build_arg_then_env() {
        let args: BTreeMap<String, String> =
            [("SOURCE_DATE_EPOCH".to_string(), "100".to_string())].into();
        assert_eq!(source_date_epoch(&args, no_env).unwrap(), Some(100));
        let env = |_: &str| Some("200".to_string());
        assert_eq!(source_date_epoch(&BTreeMap::new(), env).unwrap(), Some(200));
        assert_eq!(source_date_epoch(&BTreeMap::new(), no_env).unwrap(), None);
        let bad: BTreeMap<String, String> =
            [("SOURCE_DATE_EPOCH".to_string(), "soon".to_string())].into();
        assert!(source_date_epoch(&bad, no_env).is_err());
    }
}
