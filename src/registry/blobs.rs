//! What the registry client needs from a local blob store (`BlobStore`,
//! implemented for the store in `registry::local`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Content-addressed blobs, as pull and push need them.
pub trait BlobStore: Sync {
    /// Whether the blob is present (complete and verified when written).
    fn has_blob(&self, digest: &str) -> bool;
    /// Open the blob for reading.
    fn open_blob(&self, digest: &str) -> io::Result<File>;
    /// The blob's size in bytes.
    fn blob_size(&self, digest: &str) -> io::Result<u64>;
    /// Store a blob read from `r`; must verify digest (and size when given)
    /// and appear atomically, so a failed write leaves nothing behind.
    fn write_blob(
        &self,
        expected_digest: &str,
        expected_size: Option<u64>,
        r: &mut dyn Read,
    ) -> Result<()>;
}

/// Manifests and configs are read whole; refuse absurd sizes.
pub const MAX_SMALL_BLOB: u64 = 16 << 20;

/// Read a small blob (manifest, config) into memory.
pub fn read_small_blob(store: &dyn BlobStore, digest: &str) -> Result<Vec<u8>> {
    let size = store
        .blob_size(digest)
        .with_context(|| format!("reading size of blob {digest}"))?;
    if size > MAX_SMALL_BLOB {
        bail!("blob {digest} is {size} bytes, too large for a manifest or config");
    }
    let mut buf = Vec::with_capacity(size as usize);
    store
        .open_blob(digest)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .with_context(|| format!("reading blob {digest}"))?;
    Ok(buf)
}

/// Write a file by temp file + fsync + rename in the same directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
