//! A sha256 whose state can be saved at a point of the stream and resumed
//! there later (the `sha2` crate's hasher hides its state): the chunk cache
//! keeps the diff_id's and the digest's state at the end of every chunk, so
//! a rebuild whose stream starts with the same chunks as an earlier layer
//! resumes both hashes after them instead of reading and hashing them again.
//! Blocks go through `sha2::compress256`, the crate's own (SHA-NI) core.

use sha2::digest::generic_array::GenericArray;

const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// The state after a whole number of 64-byte blocks, and how many bytes
/// those blocks and the buffered rest hold.
#[derive(Debug, Clone)]
pub(crate) struct MidSha256 {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    len: u64,
}

impl Default for MidSha256 {
    fn default() -> Self {
        MidSha256::new()
    }
}

impl MidSha256 {
    pub(crate) fn new() -> Self {
        MidSha256 {
            state: H0,
            buf: [0; 64],
            buf_len: 0,
            len: 0,
        }
    }

    /// Resumes a stream of `len` bytes whose first `len / 64` blocks left
    /// `state`; `tail` must be the stream's last `len % 64` bytes.
    pub(crate) fn resume(state: [u32; 8], len: u64, tail: &[u8]) -> Option<Self> {
        let rem = (len % 64) as usize;
        if tail.len() != rem {
            return None;
        }
        let mut h = MidSha256 {
            state,
            buf: [0; 64],
            buf_len: rem,
            len,
        };
        h.buf[..rem].copy_from_slice(tail);
        Some(h)
    }

    /// Bytes hashed so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The state after the last whole block (what [`MidSha256::resume`]
    /// takes back, with the `len() % 64` bytes after it).
    pub(crate) fn state(&self) -> [u32; 8] {
        self.state
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            sha2::compress256(
                &mut self.state,
                &[GenericArray::clone_from_slice(&self.buf)],
            );
            self.buf_len = 0;
        }
        let whole = data.len() / 64 * 64;
        if whole > 0 {
            sha2::compress256(&mut self.state, as_blocks(&data[..whole]));
        }
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    pub(crate) fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 72];
        pad[0] = 0x80;
        // Pad to 56 mod 64, then the bit length, big-endian.
        let zeros = (55usize.wrapping_sub(self.buf_len)) % 64;
        let n = 1 + zeros;
        pad[n..n + 8].copy_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad[..n + 8]);
        debug_assert_eq!(self.buf_len, 0);
        self.len = len;
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

fn as_blocks(data: &[u8]) -> &[GenericArray<u8, sha2::digest::consts::U64>] {
    debug_assert_eq!(data.len() % 64, 0);
    // SAFETY: GenericArray<u8, U64> is a repr(transparent) [u8; 64] with
    // alignment 1, and `data` holds exactly `len / 64` such arrays.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), data.len() / 64) }
}

/// A state as 64 hex digits (big-endian words), for the chunk records.
pub(crate) fn state_hex(state: &[u32; 8]) -> String {
    state.iter().map(|w| format!("{w:08x}")).collect()
}

/// The inverse of [`state_hex`].
pub(crate) fn parse_state(s: &str) -> Option<[u32; 8]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u32; 8];
    for (i, w) in out.iter_mut().enumerate() {
        *w = u32::from_str_radix(&s[i * 8..i * 8 + 8], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn equals_sha256_and_resumes_at_any_point() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for n in [0, 1, 55, 56, 63, 64, 65, 119, 128, 1000, 5000] {
            let mut h = MidSha256::new();
            // Odd pieces, so the buffer is exercised.
            for piece in data[..n].chunks(37) {
                h.update(piece);
            }
            assert_eq!(h.len(), n as u64);
            let want: [u8; 32] = Sha256::digest(&data[..n]).into();
            assert_eq!(h.clone().finalize(), want, "n={n}");
            // Saved and resumed: same digest for the longer stream.
            let tail = &data[n / 64 * 64..n];
            let mut r =
                MidSha256::resume(parse_state(&state_hex(&h.state())).unwrap(), n as u64, tail)
                    .unwrap();
            r.update(&data[n..]);
            let want: [u8; 32] = Sha256::digest(&data).into();
            assert_eq!(r.finalize(), want, "resumed at {n}");
            assert!(MidSha256::resume(h.state(), n as u64 + 1, tail).is_none());
        }
        assert!(parse_state("zz").is_none());
    }
}
