//! Image platforms (`linux/arm64/v8`): parsing, the host's platform (the
//! one host table), and matching an index entry as containerd does.
//!
//! The arm64 variant: containerd's `DefaultSpec()` reports the host as
//! `linux/arm64/v8` (from `/proc/cpuinfo`), while its `Normalize()` maps
//! arm64 `v8` to no variant, so `arm64` and `arm64/v8` are the same
//! platform when matching. rbuild does the same: [`Platform::host`] is
//! `arm64` + `v8` (what the image config of a host build records, as it
//! did before), [`Platform::normalized`] drops it, and the planner uses the
//! normalized host for `TARGETVARIANT` (empty on arm64, as BuildKit's
//! normalized worker platform gives).

use serde::{Deserialize, Deserializer, Serialize};

use super::OciError;

/// An image platform. Like containerd's `specs.Platform`, an empty
/// `variant` means none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    #[serde(rename = "architecture")]
    pub arch: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub variant: String,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Platform {
    /// The platform rbuild runs on, in OCI/Go names (containerd's
    /// `DefaultSpec`: arm64 is `v8`, 32-bit arm `v7`).
    pub fn host() -> Self {
        let little = cfg!(target_endian = "little");
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", "v8"),
            "arm" => ("arm", "v7"),
            "x86" => ("386", ""),
            "powerpc64" if little => ("ppc64le", ""),
            "powerpc64" => ("ppc64", ""),
            "mips64" if little => ("mips64le", ""),
            "loongarch64" => ("loong64", ""),
            other => (other, ""),
        };
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: variant.into(),
        }
    }

    /// Parse `os/arch[/variant]`, or a bare architecture (`arm64` means
    /// `linux/arm64`, as containerd reads it). Lowercased; each part is
    /// `[A-Za-z0-9_.]+`.
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let bad = || OciError::Platform(s.chars().take(100).collect());
        let parts: Vec<&str> = s.splitn(4, '/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        if !parts.iter().all(ok) {
            return Err(bad());
        }
        let lower = |p: &str| p.to_ascii_lowercase();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (lower(os), lower(arch), String::new()),
            [os, arch, variant] => (lower(os), lower(arch), lower(variant)),
            [one] if !["linux", "windows"].contains(&lower(one).as_str()) => {
                ("linux".into(), lower(one), String::new())
            }
            _ => return Err(bad()),
        };
        Ok(Platform { os, arch, variant })
    }

    /// containerd's `Normalize`: canonical architecture names and the
    /// variant each implies (`aarch64` → `arm64`, arm64 `v8` → none, `arm`
    /// → `arm/v7`, `x86_64` → `amd64`).
    pub fn normalized(&self) -> Platform {
        let mut arch = self.arch.to_ascii_lowercase();
        let mut variant = self.variant.to_ascii_lowercase();
        match arch.as_str() {
            "i386" => (arch, variant) = ("386".into(), String::new()),
            "x86_64" | "x86-64" | "amd64" => {
                arch = "amd64".into();
                if variant == "v1" {
                    variant.clear();
                }
            }
            "aarch64" | "arm64" => {
                arch = "arm64".into();
                match variant.as_str() {
                    "8" | "v8" | "v8.0" => variant.clear(),
                    "9" | "9.0" | "v9.0" => variant = "v9".into(),
                    _ => {}
                }
            }
            "armhf" => (arch, variant) = ("arm".into(), "v7".into()),
            "armel" => (arch, variant) = ("arm".into(), "v6".into()),
            "arm" => match variant.as_str() {
                "" | "7" => variant = "v7".into(),
                "5" | "6" | "8" => variant = format!("v{variant}"),
                _ => {}
            },
            _ => {}
        }
        let os = match self.os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_string(),
            other => other.to_string(),
        };
        Platform { os, arch, variant }
    }

    /// Whether an index entry for `other` serves this (requested)
    /// platform: the same normalized os and architecture, and, when this
    /// one names a variant, the same normalized variant.
    pub fn matches(&self, other: &Platform) -> bool {
        let (want, have) = (self.normalized(), other.normalized());
        want.os == have.os
            && want.arch == have.arch
            && (self.variant.is_empty() || want.variant == have.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn parses_specifiers() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("Linux/ARM64/V8").to_string(), "linux/arm64/v8");
        assert_eq!(p("arm64").to_string(), "linux/arm64");
        for bad in [
            "",
            "linux",
            "windows",
            "/amd64",
            "linux/",
            "a/b/c/d",
            "linux/amd 64",
        ] {
            let err = Platform::parse(bad).unwrap_err();
            assert_eq!(err, OciError::Platform(bad.into()), "{bad:?}");
        }
    }

    #[test]
    fn host_table_follows_containerd() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        match std::env::consts::ARCH {
            "x86_64" => assert_eq!(host.to_string(), "linux/amd64"),
            "aarch64" => assert_eq!(host.to_string(), "linux/arm64/v8"),
            _ => {}
        }
        // The planner's view of the host has no arm64 variant.
        assert_eq!(p("linux/arm64/v8").normalized(), p("linux/arm64"));
        assert_eq!(p("linux/aarch64").normalized(), p("linux/arm64"));
        assert_eq!(p("linux/arm").normalized(), p("linux/arm/v7"));
        assert_eq!(p("linux/x86_64").normalized(), p("linux/amd64"));
    }

    #[test]
    fn matching_normalizes_both_sides() {
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64").matches(&p("linux/aarch64")));
        assert!(!p("linux/arm64/v8").matches(&p("linux/arm64/v9")));
        assert!(
            p("linux/arm").matches(&p("linux/arm/v6")),
            "no variant: any"
        );
        assert!(!p("linux/arm/v7").matches(&p("linux/arm/v6")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
    }

    #[test]
    fn reads_and_writes_oci_json() {
        let j = r#"{"os":"linux","architecture":"arm64","variant":null,"os.version":"x"}"#;
        let got: Platform = serde_json::from_str(j).unwrap();
        assert_eq!(got, p("linux/arm64"));
        let j = serde_json::to_string(&p("linux/arm/v7")).unwrap();
        assert_eq!(j, r#"{"os":"linux","architecture":"arm","variant":"v7"}"#);
        let j = serde_json::to_string(&p("linux/amd64")).unwrap();
        assert_eq!(j, r#"{"os":"linux","architecture":"amd64"}"#);
    }
}
