//! A range of a stored blob's bytes: what a resumed chunk is handed to the
//! layer's writer thread as, instead of a copy of its compressed bytes.
//!
//! Why: a one-file rebuild of a 236 MB layer resumed 200 MB of it, and the
//! producing thread read each resumed chunk into a fresh buffer (up to
//! 4 MiB, above glibc's mmap threshold: every page faulted in and zeroed
//! before the read overwrote it), only for the writer thread to copy it
//! again into the new blob. Now the producer checks the range's CRC-32
//! through one small reused buffer (no fresh pages) and sends the range;
//! the writer maps the range read-only and `write`s straight from the
//! mapping, one copy from the page cache to the new blob's pages. So
//! resumed pieces cost no memory while they wait, and the producer can go
//! on to the changed part of the layer while the writer is still busy
//! with the unchanged start.
//!
//! A range is mapped only when the file holds all of it (checked right
//! before), so reading the mapping cannot fault: stored blobs are immutable
//! and never truncated by rbuild (replaced only by rename, removed only by
//! unlink, which leaves a mapping intact). Only the range being written is
//! mapped, and it is unmapped right after, so waiting pieces add nothing
//! to the resident set.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes `offset..offset + len` of an open blob file.
#[derive(Clone)]
pub(crate) struct BlobRange {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

/// How much of the range is read at a time to check it.
const CHECK_BUF: usize = 256 * 1024;

impl BlobRange {
    pub(crate) fn new(file: Arc<File>, offset: u64, len: usize) -> Self {
        BlobRange { file, offset, len }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The range's CRC-32 and its last (at most 64) bytes, read through
    /// `buf` (kept by the caller across ranges). A short file is an error.
    pub(crate) fn check(&self, buf: &mut Vec<u8>) -> io::Result<(u32, Vec<u8>)> {
        buf.resize(CHECK_BUF, 0);
        let mut crc = crc32fast::Hasher::new();
        let mut tail = Vec::new();
        let mut at = 0usize;
        while at < self.len {
            let n = (self.len - at).min(buf.len());
            self.file
                .read_exact_at(&mut buf[..n], self.offset + at as u64)?;
            crc.update(&buf[..n]);
            at += n;
            if at == self.len {
                tail.extend_from_slice(&buf[n.saturating_sub(64)..n]);
            }
        }
        if tail.len() < 64 && self.len > tail.len() {
            // The last read was shorter than 64 bytes: the tail spans two.
            let k = self.len.min(64);
            tail.resize(k, 0);
            self.file
                .read_exact_at(&mut tail, self.offset + (self.len - k) as u64)?;
        }
        Ok((crc.finalize(), tail))
    }

    /// Writes the range to `out`: from a read-only mapping of just this
    /// range when the kernel gives one, else through a buffer.
    pub(crate) fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        match Mapping::new(&self.file, self.offset, self.len) {
            Some(m) => out.write_all(m.bytes()),
            None => {
                let mut buf = vec![0u8; self.len.min(1 << 20)];
                let mut at = 0usize;
                while at < self.len {
                    let n = (self.len - at).min(buf.len());
                    self.file
                        .read_exact_at(&mut buf[..n], self.offset + at as u64)?;
                    out.write_all(&buf[..n])?;
                    at += n;
                }
                Ok(())
            }
        }
    }
}

/// A read-only shared mapping of part of a file, unmapped on drop.
struct Mapping {
    base: *mut libc::c_void,
    map_len: usize,
    /// Where the wanted range starts inside the mapping (the mapping
    /// itself starts on a page boundary).
    skip: usize,
    len: usize,
}

impl Mapping {
    fn new(file: &File, offset: u64, len: usize) -> Option<Self> {
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        if file.metadata().ok()?.len() < end {
            // Past the end: the buffered path reports it as an error.
            return None;
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).ok().filter(|p| p.is_power_of_two())?;
        let start = offset & !(page - 1);
        let skip = usize::try_from(offset - start).ok()?;
        let map_len = skip.checked_add(len)?;
        let off = libc::off_t::try_from(start).ok()?;
        // MAP_POPULATE: the whole range is written at once, so mapping its
        // pages in one call beats a fault per few pages.
        // SAFETY: a fresh read-only mapping of a file we hold open; the
        // kernel picks the address, and failure is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                off,
            )
        };
        (base != libc::MAP_FAILED).then_some(Mapping {
            base,
            map_len,
            skip,
            len,
        })
    }

    /// The mapped range.
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `map_len` readable bytes, alive as long as
        // `self`, and `skip + len == map_len`.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.skip), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are exactly what mmap returned.
        unsafe {
            libc::munmap(self.base, self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    #[test]
    fn a_range_writes_and_checks_exactly_its_bytes() {
        let (f, data) = blob(3 * CHECK_BUF + 1000);
        let file = Arc::new(File::open(f.path()).unwrap());
        let mut buf = Vec::new();
        // Unaligned starts, a range ending 1 byte into a read, tiny ones.
        for (off, len) in [
            (0, data.len()),
            (4097, 2 * CHECK_BUF + 1),
            (12345, 63),
            (1, 1),
            (100, 0),
            (data.len() - 70, 70),
        ] {
            let r = BlobRange::new(file.clone(), off as u64, len);
            let want = &data[off..off + len];
            let mut out = Vec::new();
            r.write_to(&mut out).unwrap();
            assert_eq!(out, want, "{off}+{len}");
            let (crc, tail) = r.check(&mut buf).unwrap();
            assert_eq!(crc, crc32fast::hash(want), "{off}+{len}");
            assert_eq!(tail, &want[len.saturating_sub(64)..], "{off}+{len}");
        }
        // Past the end of the file: an error, never bytes.
        let r = BlobRange::new(file, data.len() as u64 - 10, 20);
        assert!(r.check(&mut buf).is_err());
        assert!(r.write_to(&mut Vec::new()).is_err());
    }
}
