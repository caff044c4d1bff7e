//! Layers: deterministic tar writing, compression (parallel gzip, zstd),
//! unpacking with path-escape protection, and overlay upper dirs → OCI
//! changesets.
