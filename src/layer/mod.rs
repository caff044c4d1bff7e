//! Layers: deterministic tar writing, chunked compression (gzip, zstd),
//! unpacking with path-escape protection, and overlay upper dirs → OCI
//! changesets.
//!
//! A layer is described as a list of [`LayerEntry`] values (paths relative to
//! the image root). [`write_layer`] sorts them, writes one PAX/ustar tar
//! stream and hashes, compresses and hashes again in one pass.
//! [`unpack_layer`] applies a (possibly compressed) layer to a directory,
//! honouring whiteouts and never writing outside that directory.

mod blobrange;
mod changeset;
mod chunkcache;
mod chunked;
mod chunkseed;
mod chunkseed_desc;
mod chunkseed_feed;
mod chunkseed_stream;
mod compress;
mod entry;
mod merged;
mod midsha;
mod resolve;
mod small;
mod sparse;
mod sys;
mod tarwrite;
mod unpack;
mod upper_snapshot;
mod walk;
mod xattr;

pub use changeset::{changeset_from_overlay_upper, diff_trees};
pub use chunkcache::{chunk_record_blob, BlobResolver, ChunkCache};
pub use chunked::ChunkStats;
pub use chunkseed::{
    claimed_keys, local_index, seed as seed_chunks, seed_reader, seed_reader_fed, unseeded,
    ChunkIndexError, SeedKeys, SeedStats, Seeded, MAX_INDEX_BYTES,
};
pub(crate) use chunkseed_feed::HELD_BYTES_MAX as FEED_BYTES_MAX;
pub use chunkseed_feed::{FeedGuard, FeedStats, SeedFeed};
pub use compress::{write_layer, write_prepared, LayerInfo, WriteOptions};
pub use entry::{
    EntryKind, FileSource, LayerEntry, PreparedEntries, Timespec, OPAQUE_MARKER, WHITEOUT_PREFIX,
};
pub use merged::{merged_image_path, merged_lookup, merged_resolve, MergedView};
pub use resolve::resolve_in_root;
pub(crate) use small::is_small;
pub use sparse::{copy_sparse, copy_sparse_with, write_sparse, write_sparse_buf};
pub use tarwrite::{KnownFile, KnownFiles};
pub use unpack::{open_archive, unpack_layer, LayerCheckError, UnpackOptions, UnpackStats};
pub use upper_snapshot::upper_as_snapshot;
pub use walk::{dev_major, dev_minor, entries_from_dir, DirOptions};
pub(crate) use xattr::set_fd as set_xattr_fd;
