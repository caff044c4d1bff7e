//! A context file's content digest, held as its 32 bytes: as a
//! `sha256:<hex>` string it took 104 bytes (and an allocation, often on a
//! hashing thread's arena) per file, ~20 MB at 200,000 files.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const PREFIX: &str = "sha256:";
/// `sha256:` and 64 hex digits.
const TEXT_LEN: usize = 71;

/// The SHA-256 of a file's contents; shown, saved and keyed as
/// `sha256:<hex>`, exactly as the string it replaces.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileDigest(pub [u8; 32]);

impl FileDigest {
    /// Parses `sha256:` and 64 lowercase hex digits; anything else is
    /// `None` (a stat cache entry that is not exactly this is never used).
    pub fn parse(text: &str) -> Option<FileDigest> {
        let hex = text.strip_prefix(PREFIX)?;
        if hex.len() != 64 || hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).ok()?;
        Some(FileDigest(out))
    }

    /// `sha256:<hex>` written into `buf`, without allocating.
    pub fn as_text<'b>(&self, buf: &'b mut [u8; TEXT_LEN]) -> &'b str {
        buf[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
        // Cannot fail: the slice is exactly twice the input's length.
        let _ = hex::encode_to_slice(self.0, &mut buf[PREFIX.len()..]);
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// A buffer for [`FileDigest::as_text`].
    pub fn text_buf() -> [u8; TEXT_LEN] {
        [0u8; TEXT_LEN]
    }
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_text(&mut Self::text_buf()))
    }
}

impl fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialEq<str> for FileDigest {
    fn eq(&self, other: &str) -> bool {
        self.as_text(&mut Self::text_buf()) == other
    }
}

impl Serialize for FileDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_text(&mut Self::text_buf()))
    }
}

impl<'de> Deserialize<'de> for FileDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

/// Parses the string where it lies (no copy of each of 200,000 digests).
struct TextVisitor;

impl serde::de::Visitor<'_> for TextVisitor {
    type Value = FileDigest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a `sha256:<hex>` digest")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<FileDigest, E> {
        FileDigest::parse(text).ok_or_else(|| E::custom(format!("not a sha256 digest: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_anything_else_is_refused() {
        let text = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let d = FileDigest::parse(&text).unwrap();
        assert_eq!(d.to_string(), text);
        assert!(d == *text.as_str());
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{text}\""));
        let back: FileDigest = serde_json::from_str(&format!("\"{text}\"")).unwrap();
        assert_eq!(back, d);
        for bad in [
            text.to_uppercase(),
            text.replace("sha256:", "sha512:"),
            text[..70].to_string(),
            format!("{text}0"),
            text.replace('a', "g"),
        ] {
            assert!(FileDigest::parse(&bad).is_none(), "{bad}");
            assert!(serde_json::from_str::<FileDigest>(&format!("\"{bad}\"")).is_err());
        }
    }
}
