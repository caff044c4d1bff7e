//! The chunked writer's hashing thread: the sha256 of the tar (diff_id)
//! and of the blob (digest), both over the whole stream, on a thread of
//! their own (on the producing thread they were the bottleneck). It notes
//! both hash states at the end of every chunk, for the chunk records, and
//! can start from states a resumed prefix left (`chunked_resume.rs`).

use std::io;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::give_back;
use crate::layer::midsha::MidSha256;

/// Bytes for the hashing thread, in stream order.
pub(super) enum HashMsg {
    /// Uncompressed tar bytes of chunk N (the diff_id).
    Tar(u64, Arc<Vec<u8>>),
    /// Compressed bytes of chunk N as written (the digest).
    Chunk(u64, Arc<Vec<u8>>),
    /// Other blob bytes (the one empty gzip member of an empty stream).
    Blob(Arc<Vec<u8>>),
    /// Both hashes go on from these states (sent before any other bytes:
    /// the resumed chunks' bytes are already in them).
    Resume(Box<(MidSha256, MidSha256)>),
}

pub(super) struct Hashes {
    pub tar: MidSha256,
    pub blob: MidSha256,
    /// Per chunk index, in order: the tar state at the chunk's end (only
    /// where that end is block-aligned, as tar ends always are) and the
    /// blob state after the last whole block before its end.
    tar_marks: Vec<(u64, [u32; 8])>,
    blob_marks: Vec<(u64, [u32; 8])>,
}

impl Hashes {
    /// Chunk `index`'s (tar, blob) states, when both were noted.
    pub(super) fn states(&self, index: u64) -> Option<([u32; 8], [u32; 8])> {
        let find = |marks: &[(u64, [u32; 8])]| {
            marks
                .binary_search_by_key(&index, |m| m.0)
                .ok()
                .map(|i| marks[i].1)
        };
        Some((find(&self.tar_marks)?, find(&self.blob_marks)?))
    }
}

pub(super) fn send_hash(tx: &Sender<HashMsg>, msg: HashMsg) -> io::Result<()> {
    tx.send(msg)
        .map_err(|_| io::Error::other("the layer hashing thread has exited"))
}

pub(super) fn hash_streams(rx: Receiver<HashMsg>, spare: Sender<Vec<u8>>) -> Hashes {
    let mut h = Hashes {
        tar: MidSha256::new(),
        blob: MidSha256::new(),
        tar_marks: Vec::new(),
        blob_marks: Vec::new(),
    };
    for msg in rx {
        match msg {
            HashMsg::Tar(i, b) => {
                h.tar.update(&b[..]);
                if h.tar.len().is_multiple_of(64) {
                    h.tar_marks.push((i, h.tar.state()));
                }
                give_back(b, &spare);
            }
            HashMsg::Chunk(i, b) => {
                h.blob.update(&b[..]);
                h.blob_marks.push((i, h.blob.state()));
            }
            HashMsg::Blob(b) => h.blob.update(&b[..]),
            HashMsg::Resume(states) => (h.tar, h.blob) = *states,
        }
    }
    h
}
