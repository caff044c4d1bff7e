//! How a layer blob is compressed: the codec a media type names plus the
//! level rbuild writes it with.

use super::media::{DOCKER_LAYER, DOCKER_LAYER_GZIP, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD};
use super::OciError;

/// How a layer blob is compressed. The level only matters when writing;
/// a media type names the codec alone, so [`Compression::from_media_type`]
/// gives the default level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// Parallel gzip, level 0–9 (6 is gzip's default).
    Gzip {
        level: u32,
    },
    /// Multithreaded zstd, level 1–22 (3 is zstd's default).
    Zstd {
        level: i32,
    },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::GZIP
    }
}

impl Compression {
    /// gzip at gzip's default level.
    pub const GZIP: Compression = Compression::Gzip { level: 6 };
    /// zstd at zstd's default level.
    pub const ZSTD: Compression = Compression::Zstd { level: 3 };

    /// The codec's name, as `--compression` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// The same codec at `level` (None: keep the current one), checked
    /// against the codec's range. `none` takes any level and ignores it.
    pub fn with_level(self, level: Option<i32>) -> Result<Compression, OciError> {
        let Some(level) = level else {
            return Ok(self);
        };
        let (min, max) = match self {
            Compression::None => return Ok(self),
            Compression::Gzip { .. } => (0, 9),
            Compression::Zstd { .. } => (1, 22),
        };
        if !(min..=max).contains(&level) {
            let codec = self.name();
            return Err(OciError::CompressionLevel {
                codec,
                level,
                min,
                max,
            });
        }
        Ok(match self {
            Compression::None => self,
            // In range, so 0..=9: the cast cannot wrap.
            Compression::Gzip { .. } => Compression::Gzip {
                level: level as u32,
            },
            Compression::Zstd { .. } => Compression::Zstd { level },
        })
    }

    /// The compression a layer media type (either family) names. Unknown
    /// types are an error, not a plain tar: relabelling them would make a
    /// broken image.
    pub fn from_media_type(media_type: &str) -> Result<Compression, OciError> {
        Ok(match media_type {
            OCI_LAYER | DOCKER_LAYER => Compression::None,
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Compression::GZIP,
            OCI_LAYER_ZSTD => Compression::ZSTD,
            other => {
                let shown = other.chars().take(150).collect();
                return Err(OciError::UnknownLayerType(shown));
            }
        })
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER,
            Compression::Gzip { .. } => OCI_LAYER_GZIP,
            Compression::Zstd { .. } => OCI_LAYER_ZSTD,
        }
    }

    /// The docker schema 2 layer media type; docker has no zstd type.
    pub fn docker_media_type(self) -> Result<&'static str, OciError> {
        match self {
            Compression::None => Ok(DOCKER_LAYER),
            Compression::Gzip { .. } => Ok(DOCKER_LAYER_GZIP),
            Compression::Zstd { .. } => Err(OciError::DockerZstd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_name_the_codec_both_ways() {
        for c in [Compression::None, Compression::GZIP, Compression::ZSTD] {
            assert_eq!(Compression::from_media_type(c.oci_media_type()), Ok(c));
        }
        assert_eq!(
            Compression::from_media_type(DOCKER_LAYER_GZIP),
            Ok(Compression::GZIP)
        );
        assert_eq!(
            Compression::ZSTD.docker_media_type(),
            Err(OciError::DockerZstd)
        );
        let err = Compression::from_media_type("application/x-mystery").unwrap_err();
        assert!(err.to_string().contains("x-mystery"), "{err}");
        assert!(err.to_string().contains(OCI_LAYER_GZIP), "{err}");
    }

    #[test]
    fn levels_are_checked_per_codec() {
        assert_eq!(
            Compression::GZIP.with_level(Some(9)),
            Ok(Compression::Gzip { level: 9 })
        );
        assert_eq!(
            Compression::ZSTD.with_level(Some(19)),
            Ok(Compression::Zstd { level: 19 })
        );
        assert_eq!(Compression::ZSTD.with_level(None), Ok(Compression::ZSTD));
        assert_eq!(
            Compression::None.with_level(Some(99)),
            Ok(Compression::None)
        );
        let err = Compression::GZIP.with_level(Some(10)).unwrap_err();
        assert_eq!(err.to_string(), "gzip compression level is 0-9, not 10");
        let err = Compression::ZSTD.with_level(Some(0)).unwrap_err();
        assert_eq!(err.to_string(), "zstd compression level is 1-22, not 0");
    }
}
