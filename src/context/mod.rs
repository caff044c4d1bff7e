//! The build context: walking it, `.dockerignore`, content digests and the
//! stat cache that lets a rebuild skip reading unchanged files.
