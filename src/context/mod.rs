//! The build context: walking it, `.dockerignore`, content digests and the
//! stat cache that lets a rebuild skip reading unchanged files.
//!
//! How the engine uses it, once per build:
//! 1. [`load_ignore`] picks `<Dockerfile>.dockerignore` or `.dockerignore`;
//! 2. [`scan`] walks the context once (ignored subtrees pruned, file
//!    digests hashed in parallel or reused from the stat cache);
//! 3. per COPY/ADD, [`ContextIndex::select`] resolves the sources (paths,
//!    Go wildcards, `--exclude`) to entries with destination-relative paths;
//! 4. [`selection_digest`] gives the content part of the step's cache key;
//! 5. on a miss, the layer writer opens `index.root().join(&entry.rel)`.
//!
//! This module knows nothing of Dockerfile syntax.

mod digest;
mod filedigest;
mod gopath;
mod ignorefile;
mod pattern;
mod scan;
mod select;
mod statcache;

use std::path::{Path, PathBuf};

pub use digest::{selection_digest, DigestOptions, SELECTION_SCHEMA};
pub use filedigest::FileDigest;
pub use gopath::{clean as go_clean, glob_match};
pub use ignorefile::{load_ignore, parse_ignore, IgnoreRules};
pub use pattern::{matches_or_parent_matches, MatchInfo, Pattern, PatternMatcher, PruneRule};
#[cfg(test)]
pub(crate) use scan::tests as scan_tests;
pub use scan::{scan, scan_with_progress, ContextIndex, Entry, EntryKind, HashProgress, ScanStats};
pub use select::{SelectOptions, Selected, SelectedSource};

/// Errors of the build context. Messages say what was being done and to
/// which path or pattern.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("failed to {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid pattern `{pattern}`: syntax error in pattern")]
    BadPattern { pattern: String },
    #[error("illegal exclusion pattern: \"!\"")]
    LoneExclusion,
    #[error("invalid ignore file `{}`", path.display())]
    InIgnoreFile {
        path: PathBuf,
        #[source]
        source: Box<ContextError>,
    },
    #[error("file not found in build context or excluded by .dockerignore: {src}")]
    NotFound { src: String },
    #[error("no source files were specified: no files in the build context match `{src}`")]
    NoMatch { src: String },
    #[error("too many levels of symbolic links resolving `{src}` in the build context")]
    SymlinkLoop { src: String },
    #[error("`{path}` in the build context is not a directory")]
    NotADirectory { path: String },
    #[error(
        "`{path}` in the build context is more than {max} directories deep\n\
         hint: leave the tree out of the context in .dockerignore"
    )]
    TooDeep { path: String, max: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ContextError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        ContextError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
