//! OCI image config, manifest and index; history; docker-archive and OCI
//! layout export.
