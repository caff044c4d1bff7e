//! Docker image references, normalized the way docker does (`alpine` →
//! `docker.io/library/alpine:latest`). Hand-written rather than
//! `oci_spec::distribution::Reference`: that one gets several of docker's
//! rules wrong (the cases are in `docs/registry.md`).

use std::fmt;
use std::sync::OnceLock;

use regex::Regex;

use super::digest::is_valid_digest;

/// The registry docker uses for names without a registry part.
pub const DOCKER_HUB: &str = "docker.io";

const MAX_NAME_LEN: usize = 255;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/alpine`).
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Content digest (`sha256:…`), when pinned.
    pub digest: Option<String>,
}

/// Why a reference was refused; the message names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference {0:?}: it is empty")]
    Empty(String),
    #[error("invalid reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    #[error("invalid reference {0:?}: tag must be 1-128 of [A-Za-z0-9_.-] and not start with '.' or '-'")]
    BadTag(String),
    #[error(
        "invalid reference {0:?}: digest must be sha256:<64 hex> or sha512:<128 hex>, lowercase"
    )]
    BadDigest(String),
    #[error("invalid reference {0:?}: registry host is not a valid hostname[:port]")]
    BadRegistry(String),
    #[error("invalid reference {0:?}: repository path components must match [a-z0-9]+ separated by '.', '_', '__' or '-'")]
    BadName(String),
    #[error("invalid reference {0:?}: repository name is longer than 255 characters")]
    TooLong(String),
    #[error(
        "invalid reference {0:?}: a 64-character hex string is an image ID, not a repository name"
    )]
    LooksLikeId(String),
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("static regex compiles"))
}

fn tag_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
}

fn component_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
}

fn host_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(
        &R,
        r"^(?:(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$",
    )
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (ASCII, as docker's `\w`).
pub fn is_valid_tag(tag: &str) -> bool {
    tag_re().is_match(tag)
}

/// One repository path component: `[a-z0-9]+` joined by `.`, `_`, `__`
/// or runs of `-`.
pub fn is_valid_component(component: &str) -> bool {
    component_re().is_match(component)
}

/// 64 lowercase hex: an image ID, which docker refuses as a repository
/// name so that `docker run <id>` cannot mean two things.
pub fn is_image_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A registry `host[:port]`: DNS labels or a bracketed IPv6 literal.
pub fn is_valid_host(host: &str) -> bool {
    host_re().is_match(host)
}

impl Reference {
    /// Parse and normalize a reference as `docker pull` would.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let err_input = input.to_string();
        if input.is_empty() {
            return Err(ReferenceError::Empty(err_input));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                if !is_valid_digest(d) {
                    return Err(ReferenceError::BadDigest(err_input));
                }
                (r, Some(d.to_string()))
            }
            None => (input, None),
        };
        let (name, tag) = split_tag(rest);
        if let Some(t) = tag {
            if !is_valid_tag(t) {
                return Err(ReferenceError::BadTag(err_input));
            }
        }
        if name.is_empty() {
            return Err(ReferenceError::Empty(err_input));
        }
        let (registry, path) = split_registry(name);
        if !is_valid_host(registry) {
            return Err(ReferenceError::BadRegistry(err_input));
        }
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
            r => r,
        };
        if is_image_id(path) {
            return Err(ReferenceError::LooksLikeId(err_input));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        check_repository(&repository, &err_input)?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(err_input));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// A copy of this reference pointing at `digest` (keeping the tag for display).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

/// The tag is after the last ':' that follows the last '/' (a ':' before
/// that belongs to the registry's port).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    let last_slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    match s[last_slash..].rfind(':') {
        Some(i) => (&s[..last_slash + i], Some(&s[last_slash + i + 1..])),
        None => (s, None),
    }
}

/// docker's rule: the first component is a registry when it has a '.' or
/// ':', is `localhost`, or has uppercase letters.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

fn check_repository(repo: &str, input: &str) -> Result<(), ReferenceError> {
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase(input.to_string()));
    }
    if repo.is_empty() || !repo.split('/').all(is_valid_component) {
        return Err(ReferenceError::BadName(input.to_string()));
    }
    Ok(())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(full("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(full("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("index.docker.io/user/app:1"), "docker.io/user/app:1");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/ns/app:v1"), "localhost:5000/ns/app:v1");
        assert_eq!(full("127.0.0.1:5000/app:v1"), "127.0.0.1:5000/app:v1");
        assert_eq!(full("ghcr.io/org/team/app"), "ghcr.io/org/team/app:latest");
        assert_eq!(full("example.com:443/a/b:c"), "example.com:443/a/b:c");
        assert_eq!(full("[::1]:5000/app"), "[::1]:5000/app:latest");
        assert_eq!(
            full(&format!("app@{D}")),
            format!("docker.io/library/app@{D}")
        );
        assert_eq!(
            full(&format!("app:tag@{D}")),
            format!("docker.io/library/app:tag@{D}")
        );
        assert_eq!(
            full("docker.io/a_b.c__d-e--f/g"),
            "docker.io/a_b.c__d-e--f/g:latest"
        );
    }

    #[test]
    fn registry_detection_follows_docker_rule() {
        // No dot, colon or "localhost": a Docker Hub namespace, not a host.
        let r = Reference::parse("myhost/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "myhost/app")
        );
        let r = Reference::parse("my.host/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("my.host", "app")
        );
        let r = Reference::parse("myhost:80/app").unwrap();
        assert_eq!(r.registry, "myhost:80");
        // Uppercase first component is a host (docker does the same).
        let r = Reference::parse("Foo/app").unwrap();
        assert_eq!(r.registry, "Foo");
    }

    #[test]
    fn digest_only_has_no_tag() {
        let r = Reference::parse(&format!("app@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), D);
        let r = Reference::parse(&format!("app:v1@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_ref(), D, "digest wins over tag");
    }

    #[test]
    fn rejects_with_the_rule_broken() {
        type Rule = fn(String) -> ReferenceError;
        let cases: &[(&str, Rule)] = &[
            ("", ReferenceError::Empty),
            ("Alpine", ReferenceError::Uppercase),
            ("docker.io/User/app", ReferenceError::Uppercase),
            ("app:-bad", ReferenceError::BadTag),
            ("app:.bad", ReferenceError::BadTag),
            ("app:bad tag", ReferenceError::BadTag),
            ("app@sha256:abc", ReferenceError::BadDigest),
            (
                "app@md5:d41d8cd98f00b204e9800998ecf8427e",
                ReferenceError::BadDigest,
            ),
            (
                "app@sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                ReferenceError::BadDigest,
            ),
            ("a/-b", ReferenceError::BadName),
            ("a//b", ReferenceError::BadName),
            ("a/b_", ReferenceError::BadName),
            ("a/b___c", ReferenceError::BadName),
            ("-host.com/app", ReferenceError::BadRegistry),
            ("host.com:port/app", ReferenceError::BadRegistry),
            (
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ReferenceError::LooksLikeId,
            ),
        ];
        for (input, want) in cases {
            let got = Reference::parse(input).unwrap_err();
            assert_eq!(got, want(input.to_string()), "for {input:?}");
        }
        let long = format!("a/{}", "b".repeat(260));
        assert_eq!(
            Reference::parse(&long).unwrap_err(),
            ReferenceError::TooLong(long.clone())
        );
        let msg = Reference::parse("Alpine").unwrap_err().to_string();
        assert!(msg.contains("lowercase"), "{msg}");
    }

    #[test]
    fn tag_of_128_chars_is_the_limit() {
        assert!(Reference::parse(&format!("app:{}", "t".repeat(128))).is_ok());
        assert!(Reference::parse(&format!("app:{}", "t".repeat(129))).is_err());
    }
}
