//! The local store: an OCI image layout (blobs, `index.json` tags) plus
//! rbuild's own bookkeeping (unpacked layers, cache index) beside it.
