//! Reading registry answers as untrusted input: every body read into
//! memory has a cap, every blob body stops one byte past its declared
//! size, and a body that trickles slower than the minimum speed fails
//! instead of hanging (reqwest's client timeout covers a body that stops
//! altogether: each read must return within it).

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Error bodies (the spec's JSON error list) are small; the rest is dropped.
pub const MAX_ERROR_BODY: u64 = 64 << 10;
/// Token answers are a JWT or two in JSON.
pub const MAX_TOKEN_BODY: u64 = 1 << 20;

/// Why a body was refused; travels inside an `io::Error` through
/// `io::copy`, so callers find it with [`transfer_error`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("{what}: the registry sent more than the {limit} bytes {source_of_limit}")]
    TooLarge {
        what: String,
        limit: u64,
        /// "declared" (a descriptor's size) or "allowed" (rbuild's cap).
        source_of_limit: &'static str,
    },
    #[error(
        "{what}: the registry sent {bytes} bytes in {secs} s, below the minimum of \
         {min_speed} bytes/s\nhint: raise --registry-timeout or lower --registry-min-speed \
         for a slow link"
    )]
    TooSlow {
        what: String,
        bytes: u64,
        secs: u64,
        min_speed: u64,
    },
}

impl TransferError {
    /// Whether trying again may help (a slow link may recover; a registry
    /// that sends more than declared will do it again).
    pub fn retryable(&self) -> bool {
        matches!(self, TransferError::TooSlow { .. })
    }
}

/// The `TransferError` anywhere in `e`'s chain, including inside io errors.
pub fn transfer_error(e: &anyhow::Error) -> Option<&TransferError> {
    e.chain().find_map(|c| {
        c.downcast_ref::<TransferError>().or_else(|| {
            c.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<TransferError>())
        })
    })
}

/// A body reader that refuses more than `limit` bytes and a speed below
/// `min_speed` bytes/s over each `window`.
pub struct Guarded<R> {
    inner: R,
    what: String,
    limit: u64,
    source_of_limit: &'static str,
    read: u64,
    min_speed: u64,
    window: Duration,
    window_start: Instant,
    window_bytes: u64,
}

impl<R: Read> Guarded<R> {
    pub fn new(inner: R, what: &str, limit: u64, min_speed: u64, window: Duration) -> Self {
        Guarded {
            inner,
            what: what.to_string(),
            limit,
            source_of_limit: "declared",
            read: 0,
            min_speed,
            window: window.max(Duration::from_millis(100)),
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// The limit is rbuild's cap for this kind of answer, not a declared size.
    pub fn capped(mut self) -> Self {
        self.source_of_limit = "allowed";
        self
    }

    fn fail(&self, e: TransferError) -> io::Error {
        io::Error::other(e)
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte past the limit at most, so an endless body is
        // cut there instead of being read (and written) whole.
        let room = self.limit.saturating_add(1).saturating_sub(self.read);
        if room == 0 {
            return Err(self.fail(TransferError::TooLarge {
                what: self.what.clone(),
                limit: self.limit,
                source_of_limit: self.source_of_limit,
            }));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(self.fail(TransferError::TooLarge {
                what: self.what.clone(),
                limit: self.limit,
                source_of_limit: self.source_of_limit,
            }));
        }
        self.window_bytes += n as u64;
        let elapsed = self.window_start.elapsed();
        if n > 0 && self.min_speed > 0 && elapsed >= self.window {
            let need = self.min_speed as f64 * elapsed.as_secs_f64();
            if (self.window_bytes as f64) < need {
                return Err(self.fail(TransferError::TooSlow {
                    what: self.what.clone(),
                    bytes: self.window_bytes,
                    secs: elapsed.as_secs().max(1),
                    min_speed: self.min_speed,
                }));
            }
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        Ok(n)
    }
}

/// Read at most `cap` bytes of `r`; the rest is left unread (the
/// connection is dropped with it).
pub fn read_capped(r: impl Read, cap: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(cap).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endless zeros, counting what was taken from it.
    struct Endless(u64);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(0);
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn stops_one_byte_past_the_declared_size() {
        let mut src = Endless(0);
        let mut g = Guarded::new(&mut src, "blob x", 1000, 0, Duration::from_secs(60));
        let err = io::copy(&mut g, &mut io::sink()).unwrap_err();
        let te = err.get_ref().unwrap().downcast_ref::<TransferError>();
        assert!(matches!(
            te,
            Some(TransferError::TooLarge { limit: 1000, .. })
        ));
        assert_eq!(src.0, 1001, "read exactly one byte past the limit");
        let ok = Guarded::new(&[7u8; 1000][..], "b", 1000, 0, Duration::from_secs(1));
        assert_eq!(read_capped(ok, 5000).unwrap().len(), 1000);
    }

    /// One byte per read, 20 ms apart: far below 1000 bytes/s.
    struct Trickle;
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(20));
            buf[0] = b'x';
            Ok(1)
        }
    }

    #[test]
    fn a_trickle_fails_after_one_window() {
        let start = Instant::now();
        let mut g = Guarded::new(
            Trickle,
            "manifest m",
            1 << 20,
            1000,
            Duration::from_millis(300),
        );
        let err = io::copy(&mut g, &mut io::sink()).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        let te = err
            .get_ref()
            .unwrap()
            .downcast_ref::<TransferError>()
            .unwrap();
        assert!(matches!(te, TransferError::TooSlow { .. }), "{te}");
        assert!(te.retryable());
        let any = anyhow::Error::new(err).context("pulling");
        assert!(transfer_error(&any).is_some());
    }

    #[test]
    fn caps_in_memory_reads() {
        let got = read_capped(Endless(0), MAX_ERROR_BODY).unwrap();
        assert_eq!(got.len() as u64, MAX_ERROR_BODY);
    }
}
