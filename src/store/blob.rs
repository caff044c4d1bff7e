//! Content-addressed blobs: `blobs/sha256/<hex>`, written through a
//! [`BlobWriter`] that hashes while writing and names the blob only once
//! its digest is known (and, if asked, verified).

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest as _, Sha256};

use super::fsutil::{self, TempFile};

/// A named blob: `sha256:<hex>` and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
}

/// Errors a caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("digest mismatch: expected {expected}, found {found}")]
    DigestMismatch { expected: String, found: String },
    #[error("size mismatch for {digest}: expected {expected} bytes, found {found}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        found: u64,
    },
    #[error("invalid digest {0:?} (want sha256:<64 lowercase hex>)")]
    InvalidDigest(String),
}

/// The hex part of a `sha256:<hex>` digest, validated so it is safe as a
/// file name (no `/`, no `..`).
pub fn digest_hex(digest: &str) -> Result<&str, BlobError> {
    crate::oci::digest::sha256_hex_of(digest)
        .ok_or_else(|| BlobError::InvalidDigest(digest.to_string()))
}

/// Writes one blob: hashes every byte, then `commit` names it.
/// Dropped without commit, it removes its temp file.
pub struct BlobWriter {
    tmp: io::BufWriter<TempFile>,
    /// `None` when the writer's caller hashes the same bytes itself (the
    /// layer writer does, on a thread of its own): a second sha256 pass on
    /// the writing thread cost about 5 % of a one-file-changed rebuild.
    hasher: Option<Sha256>,
    size: u64,
    /// Bytes up to here were handed to writeback already (see
    /// [`WRITEBACK_STEP`]).
    written_back: u64,
    blobs_dir: PathBuf,
}

/// Every this many bytes written, writeback of what was written since is
/// started (`sync_file_range`, not waited for). The blob is fsynced before
/// it is named, as always; without this that fsync started writing a
/// whole layer only then (about 0.1 s of a one-file rebuild's 236 MB blob,
/// on its critical path), while now the disk works during the write.
const WRITEBACK_STEP: u64 = 8 << 20;

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    pub(crate) fn new(tmp_dir: &Path, blobs_dir: &Path) -> anyhow::Result<Self> {
        let tmp = fsutil::temp_file(tmp_dir, "blob-")?;
        Ok(BlobWriter {
            tmp: io::BufWriter::with_capacity(256 * 1024, tmp),
            hasher: Some(Sha256::new()),
            size: 0,
            written_back: 0,
            blobs_dir: blobs_dir.to_path_buf(),
        })
    }

    /// A writer that leaves hashing to its caller, which must commit it
    /// with [`BlobWriter::commit_verified`] and the digest it computed over
    /// exactly the bytes it wrote here.
    pub(crate) fn new_unhashed(tmp_dir: &Path, blobs_dir: &Path) -> anyhow::Result<Self> {
        let mut w = BlobWriter::new(tmp_dir, blobs_dir)?;
        w.hasher = None;
        Ok(w)
    }

    /// Starts writeback of the bytes written since the last call. Only a
    /// hint: where the kernel refuses it, the fsync at commit does it all.
    fn start_writeback(&mut self) -> io::Result<()> {
        self.tmp.flush()?;
        let (from, to) = (self.written_back, self.size);
        self.written_back = to;
        let fd = self.tmp.get_ref().as_file();
        let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
            return Ok(());
        };
        // SAFETY: a plain syscall on a descriptor we own; no memory passed.
        unsafe {
            libc::sync_file_range(fd.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
        }
        Ok(())
    }

    /// Another handle on the blob's temp file, for reading back what was
    /// written (with `read_at`: the handles share a file offset). It stays
    /// readable after the writer is dropped or committed: an unlink or a
    /// rename leaves an open file as it is.
    pub fn reader(&self) -> io::Result<fs::File> {
        self.tmp.get_ref().file.as_file().try_clone()
    }

    /// Bytes that are in the temp file (not in the write buffer), so a
    /// [`BlobWriter::reader`] sees them: while writing, the size when the
    /// write last crossed a [`WRITEBACK_STEP`]; all after
    /// [`BlobWriter::flush_all`].
    pub fn flushed(&self) -> u64 {
        self.written_back
    }

    /// Puts every byte written so far into the temp file (and starts its
    /// writeback); returns how many that is.
    pub fn flush_all(&mut self) -> io::Result<u64> {
        self.start_writeback()?;
        Ok(self.size)
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Name the blob by its digest.
    pub fn commit(self) -> anyhow::Result<BlobInfo> {
        self.finish(None, None)
    }

    /// Name the blob only if it has this digest (and size, when given).
    pub fn commit_verified(self, digest: &str, size: Option<u64>) -> anyhow::Result<BlobInfo> {
        self.finish(Some(digest), size)
    }

    fn finish(self, want: Option<&str>, want_size: Option<u64>) -> anyhow::Result<BlobInfo> {
        let found = match (self.hasher, want) {
            (Some(h), _) => format!("sha256:{}", hex::encode(h.finalize())),
            // The caller hashed what it wrote.
            (None, Some(want)) => want.to_string(),
            (None, None) => anyhow::bail!("a blob written unhashed needs its digest to commit"),
        };
        if let Some(expected) = want {
            if expected != found {
                return Err(BlobError::DigestMismatch {
                    expected: expected.to_string(),
                    found,
                }
                .into());
            }
        }
        if let Some(expected) = want_size {
            if expected != self.size {
                return Err(BlobError::SizeMismatch {
                    digest: found,
                    expected,
                    found: self.size,
                }
                .into());
            }
        }
        let tmp = self
            .tmp
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flushing a blob")?;
        let dest = self.blobs_dir.join(digest_hex(&found)?);
        // Blobs are immutable: if it is already there, keep the existing file.
        if !dest.exists() {
            tmp.persist(&dest)?;
        }
        Ok(BlobInfo {
            digest: found,
            size: self.size,
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tmp.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.size += n as u64;
        if self.size - self.written_back >= WRITEBACK_STEP {
            self.start_writeback()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

/// Remove a blob file; missing is fine.
pub(crate) fn remove_blob(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing blob {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest::sha256_digest;

    fn dirs(t: &Path) -> (PathBuf, PathBuf) {
        let (tmp, blobs) = (t.join("tmp"), t.join("blobs"));
        fs::create_dir_all(&tmp).unwrap();
        fs::create_dir_all(&blobs).unwrap();
        (tmp, blobs)
    }

    /// A blob past several writeback steps, written in odd-sized pieces:
    /// the flushes that start writeback lose and repeat nothing.
    #[test]
    fn a_blob_written_across_writeback_steps_is_stored_whole() {
        let t = tempfile::tempdir().unwrap();
        let (tmp, blobs) = dirs(t.path());
        let data: Vec<u8> = (0..(2 * WRITEBACK_STEP as usize + 777_777))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut w = BlobWriter::new(&tmp, &blobs).unwrap();
        for piece in data.chunks(1_000_003) {
            w.write_all(piece).unwrap();
        }
        // Writeback was started twice, the second time past 2 steps.
        assert!(w.written_back >= 2 * WRITEBACK_STEP && w.written_back <= w.size);
        let info = w.commit().unwrap();
        assert_eq!(info.digest, sha256_digest(&data));
        let stored = fs::read(blobs.join(digest_hex(&info.digest).unwrap())).unwrap();
        assert!(stored == data);
    }

    /// What a streamed upload reads back: only what `flushed` says is in
    /// the file, all of it after `flush_all`, still readable after commit.
    #[test]
    fn a_reader_sees_the_flushed_bytes_and_keeps_them_after_commit() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        let (tmp, blobs) = dirs(t.path());
        let data: Vec<u8> = (0..(WRITEBACK_STEP as usize + 12_345))
            .map(|i| (i % 253) as u8)
            .collect();
        let mut w = BlobWriter::new(&tmp, &blobs).unwrap();
        let reader = w.reader().unwrap();
        for piece in data.chunks(300_001) {
            w.write_all(piece).unwrap();
        }
        let flushed = w.flushed();
        assert!(flushed >= WRITEBACK_STEP && flushed < data.len() as u64);
        let mut got = vec![0u8; flushed as usize];
        reader.read_exact_at(&mut got, 0).unwrap();
        assert!(got[..] == data[..flushed as usize]);
        assert_eq!(w.flush_all().unwrap(), data.len() as u64);
        w.commit().unwrap();
        let mut all = vec![0u8; data.len()];
        reader.read_exact_at(&mut all, 0).unwrap();
        assert!(all == data);
    }

    #[test]
    fn an_unhashed_writer_is_named_by_its_callers_digest_only() {
        let t = tempfile::tempdir().unwrap();
        let (tmp, blobs) = dirs(t.path());
        let digest = sha256_digest(b"layer");
        // Without a digest there is nothing to name it by.
        let mut w = BlobWriter::new_unhashed(&tmp, &blobs).unwrap();
        w.write_all(b"layer").unwrap();
        assert!(w.commit().is_err());
        // The size is still checked, and the name must be a digest.
        let mut w = BlobWriter::new_unhashed(&tmp, &blobs).unwrap();
        w.write_all(b"layer").unwrap();
        assert!(w.commit_verified(&digest, Some(4)).is_err());
        let mut w = BlobWriter::new_unhashed(&tmp, &blobs).unwrap();
        w.write_all(b"layer").unwrap();
        assert!(w.commit_verified("sha256:../x", Some(5)).is_err());
        let mut w = BlobWriter::new_unhashed(&tmp, &blobs).unwrap();
        w.write_all(b"layer").unwrap();
        let info = w.commit_verified(&digest, Some(5)).unwrap();
        assert_eq!(info.digest, digest);
        let stored = fs::read(blobs.join(digest_hex(&digest).unwrap())).unwrap();
        assert_eq!(stored, b"layer");
        // A hashing writer still refuses a digest that is not its bytes'.
        let mut w = BlobWriter::new(&tmp, &blobs).unwrap();
        w.write_all(b"other").unwrap();
        assert!(w.commit_verified(&digest, None).is_err());
    }
}
