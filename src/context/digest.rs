//! The content digest of a COPY selection, for cache keys: what the copied
//! files would look like at the destination (names, types, modes, owners,
//! sizes, link targets, contents, xattrs), never their mtimes.

use sha2::{Digest, Sha256};

use super::scan::EntryKind;
use super::select::Selected;

/// Hashed first; bump whenever the encoding below changes.
pub const SELECTION_SCHEMA: &str = "rbuild.context.selection.v1";

/// What to leave out because the COPY flags override it.
#[derive(Debug, Clone)]
pub struct DigestOptions {
    /// Mode bits that count: `0o7777` normally, `0o7700` to drop
    /// group/other bits, `0` under `--chmod` (the mode is then fixed).
    pub mode_mask: u32,
    /// `false` under `--chown`, which fixes the owner.
    pub include_owner: bool,
}

impl Default for DigestOptions {
    fn default() -> Self {
        DigestOptions {
            mode_mask: 0o7777,
            include_owner: true,
        }
    }
}

/// sha256 hex over the selection sorted by destination path. Every field is
/// length-prefixed so no two selections encode alike.
pub fn selection_digest(items: &[Selected<'_>], opts: &DigestOptions) -> String {
    let mut sorted: Vec<&Selected<'_>> = items.iter().collect();
    sorted.sort_by(|a, b| {
        a.dest_rel
            .cmp(&b.dest_rel)
            .then(a.entry.rel.cmp(&b.entry.rel))
    });
    let mut h = Sha256::new();
    field(&mut h, SELECTION_SCHEMA.as_bytes());
    field(&mut h, &(sorted.len() as u64).to_le_bytes());
    for it in sorted {
        let e = it.entry;
        field(&mut h, it.dest_rel.as_bytes());
        let (tag, link, rdev): (&[u8], &str, u64) = match &e.kind {
            EntryKind::File => (b"f", "", 0),
            EntryKind::Dir => (b"d", "", 0),
            EntryKind::Symlink { target } => (b"l", target, 0),
            EntryKind::Fifo => (b"p", "", 0),
            EntryKind::Socket => (b"s", "", 0),
            EntryKind::CharDevice { rdev } => (b"c", "", *rdev),
            EntryKind::BlockDevice { rdev } => (b"b", "", *rdev),
        };
        field(&mut h, tag);
        field(&mut h, &(e.mode & opts.mode_mask).to_le_bytes());
        if opts.include_owner {
            field(&mut h, &e.uid.to_le_bytes());
            field(&mut h, &e.gid.to_le_bytes());
        } else {
            field(&mut h, b"-");
        }
        let size = if e.kind == EntryKind::File { e.size } else { 0 };
        field(&mut h, &size.to_le_bytes());
        field(&mut h, link.as_bytes());
        field(&mut h, &rdev.to_le_bytes());
        // The `sha256:<hex>` text, as when the digest was held as a string.
        let mut text = super::FileDigest::text_buf();
        let digest = e.digest.as_ref().map_or("", |d| d.as_text(&mut text));
        field(&mut h, digest.as_bytes());
        field(&mut h, &(e.xattrs.len() as u64).to_le_bytes());
        for (k, v) in &e.xattrs {
            field(&mut h, k.as_bytes());
            field(&mut h, v);
        }
    }
    hex::encode(h.finalize())
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}
