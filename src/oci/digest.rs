//! sha256 digests: the one helper set every module uses, so a digest is
//! spelled, checked and split the same way everywhere.

use sha2::{Digest as _, Sha256};

/// Lowercase hex of the sha256 of `bytes` (no algorithm prefix).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `bytes`, the form manifests and configs use.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// True for `sha256:<64 lowercase hex>` and `sha512:<128 lowercase hex>`,
/// the digests the OCI spec registers. Digests end up in URLs and file
/// names, so anything else (uppercase, `..`, `/`) is refused.
pub fn is_valid_digest(digest: &str) -> bool {
    let Some((alg, hex)) = digest.split_once(':') else {
        return false;
    };
    let want = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return false,
    };
    is_lower_hex(hex, want)
}

/// The hex part of a valid `sha256:` digest (safe as a file name), or
/// None for anything else, sha512 included: rbuild stores sha256 only.
pub fn sha256_hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| is_lower_hex(hex, 64))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests_of_bytes() {
        assert_eq!(sha256_hex(b""), EMPTY);
        assert_eq!(sha256_digest(b""), format!("sha256:{EMPTY}"));
    }

    #[test]
    fn validation_refuses_what_could_escape_a_path() {
        assert!(is_valid_digest(&format!("sha256:{EMPTY}")));
        assert!(is_valid_digest(&format!("sha512:{}", "a".repeat(128))));
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", EMPTY.to_uppercase()),
            format!("sha256:{}", &EMPTY[1..]),
            format!("md5:{}", &EMPTY[..32]),
            format!("sha256/{EMPTY}"),
            EMPTY.to_string(),
        ] {
            assert!(!is_valid_digest(&bad), "{bad}");
            assert_eq!(sha256_hex_of(&bad), None, "{bad}");
        }
        assert_eq!(sha256_hex_of(&format!("sha256:{EMPTY}")), Some(EMPTY));
        assert_eq!(sha256_hex_of(&format!("sha512:{}", "a".repeat(128))), None);
    }
}
