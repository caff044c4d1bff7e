//! The store's side of the layer chunk cache (`layer::ChunkCache`): where
//! its records live, and removing records whose blob a prune removed.
//!
//! A record is one short line whose second word is the digest of the blob
//! the chunk's compressed bytes sit in (`rbuild-chunk-v2 sha256:… offset
//! …`); the rest of the format is the layer module's business. Records of
//! any version are swept the same way (v1 ones are never used again).

use std::fs;
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;

use super::{fsutil, secure, Store};

/// A record is a short line; anything longer is not one.
const MAX_RECORD: u64 = 512;

impl Store {
    /// The private dir of the layer chunk cache's records (created).
    pub fn chunk_cache_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = self.private("chunks");
        secure::make_private_dir(&dir)?;
        Ok(dir)
    }

    /// Removes chunk records whose blob is gone (or that are unreadable);
    /// returns how many. Called by prune after the blob sweep, with no
    /// build running, so no record is being written meanwhile.
    pub(super) fn sweep_chunk_records(&self) -> anyhow::Result<usize> {
        let dir = self.private("chunks");
        let mut removed = 0;
        for path in fsutil::list_dir(&dir)? {
            let mut text = String::new();
            let live = fs::File::open(&path)
                .and_then(|f| f.take(MAX_RECORD).read_to_string(&mut text))
                .ok()
                .and_then(|_| record_blob(&text))
                .is_some_and(|digest| self.has_blob(digest));
            if !live {
                fs::remove_file(&path)
                    .with_context(|| format!("removing chunk record {}", path.display()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The blob digest a record names (its second word).
fn record_blob(text: &str) -> Option<&str> {
    let mut words = text.split(' ');
    words.next()?.starts_with("rbuild-chunk-").then_some(())?;
    words.next().filter(|d| d.starts_with("sha256:"))
}
