//! Where COPY and ADD put things: docker's destination rules, as pure path
//! arithmetic on `/`-separated image paths.
//!
//! - A relative destination is relative to WORKDIR; `.` means WORKDIR itself
//!   as a directory. A trailing `/` is kept: it makes the destination a
//!   directory.
//! - The destination is a directory when it ends in `/`, when there are
//!   several sources (or a wildcard matched several), or when it already is
//!   a directory in the image.
//! - A source directory contributes its contents, never itself; a source file
//!   lands at `dest/<basename>` when the destination is a directory, else at
//!   `dest`.

pub use crate::context::go_clean as clean;

/// The absolute destination for `dest` under `workdir`, keeping a trailing
/// slash (BuildKit's `pathRelativeToWorkingDir`).
pub fn resolve_dest(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let wants_dir = dest.ends_with('/') || dest.ends_with("/.");
    let joined = if dest.starts_with('/') {
        clean(dest)
    } else {
        let base = if workdir.is_empty() { "/" } else { workdir };
        clean(&format!("{base}/{dest}"))
    };
    if wants_dir && joined != "/" {
        format!("{joined}/")
    } else {
        joined
    }
}

/// Whether sources are copied *into* the destination.
pub fn dest_is_dir(dest_abs: &str, matched_sources: usize, exists_as_dir: bool) -> bool {
    dest_abs.ends_with('/') || matched_sources > 1 || exists_as_dir
}

/// Where one matched source lands. `None` for a directory source copied
/// into its destination: its *contents* go to the returned directory.
pub fn target_for(
    dest_abs: &str,
    into_dir: bool,
    source_name: &str,
    source_is_dir: bool,
) -> String {
    let dest = clean(dest_abs);
    if source_is_dir || !into_dir {
        return dest;
    }
    let base = source_name.rsplit('/').next().unwrap_or(source_name);
    clean(&format!("{dest}/{base}"))
}

/// The parent directories of `path` (absolute), outermost first, without `/`.
pub fn parents(path: &str) -> Vec<String> {
    let clean = clean(path);
    let mut out = Vec::new();
    let mut cur = String::new();
    let segs: Vec<&str> = clean.split('/').filter(|s| !s.is_empty()).collect();
    for seg in segs.iter().take(segs.len().saturating_sub(1)) {
        cur.push('/');
        cur.push_str(seg);
        out.push(cur.clone());
    }
    out
}

/// The first directory on the way to `dest_abs` (already resolved through
/// the image's symlinks) that exists in `root` as something other than a
/// directory. BuildKit's copy fails there ("mkdir …: not a directory")
/// rather than replacing a file of the image with a directory.
pub fn non_dir_parent(root: &std::path::Path, dest_abs: &str) -> Option<String> {
    non_dir_parent_with(dest_abs, |p| {
        std::fs::symlink_metadata(root.join(p.trim_start_matches('/'))).is_ok_and(|m| !m.is_dir())
    })
}

/// [`non_dir_parent`] with the image read through `is_non_dir` (a path
/// that exists as something other than a directory).
pub fn non_dir_parent_with(
    dest_abs: &str,
    mut is_non_dir: impl FnMut(&str) -> bool,
) -> Option<String> {
    let mut check = parents(dest_abs);
    if dest_abs.ends_with('/') && clean(dest_abs) != "/" {
        check.push(clean(dest_abs));
    }
    check.into_iter().find(|p| is_non_dir(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_workdir_and_keep_trailing_slash() {
        assert_eq!(resolve_dest("/app", "."), "/app/");
        assert_eq!(resolve_dest("/app", ""), "/app/");
        assert_eq!(resolve_dest("/app", "sub/"), "/app/sub/");
        assert_eq!(resolve_dest("/app", "f.txt"), "/app/f.txt");
        assert_eq!(resolve_dest("/app", "/abs/x"), "/abs/x");
        assert_eq!(resolve_dest("", "x"), "/x");
        assert_eq!(resolve_dest("/", "./"), "/");
        assert_eq!(resolve_dest("/a", "../../b/"), "/b/");
    }

    #[test]
    fn file_and_directory_targets() {
        assert!(dest_is_dir("/app/", 1, false));
        assert!(dest_is_dir("/app", 2, false));
        assert!(dest_is_dir("/app", 1, true));
        assert!(!dest_is_dir("/app", 1, false));
        assert_eq!(
            target_for("/app/", true, "src/main.rs", false),
            "/app/main.rs"
        );
        assert_eq!(target_for("/app/x", false, "src/main.rs", false), "/app/x");
        assert_eq!(target_for("/app/", true, "src", true), "/app");
    }

    #[test]
    fn a_file_on_the_way_is_found() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), "x").unwrap();
        assert_eq!(non_dir_parent(root.path(), "/d/f/g"), Some("/d/f".into()));
        assert_eq!(non_dir_parent(root.path(), "/d/f/"), Some("/d/f".into()));
        assert_eq!(non_dir_parent(root.path(), "/d/f"), None);
        assert_eq!(non_dir_parent(root.path(), "/d/new/x"), None);
    }

    #[test]
    fn parent_dirs_outermost_first() {
        assert_eq!(parents("/a/b/c.txt"), vec!["/a", "/a/b"]);
        assert!(parents("/c.txt").is_empty());
    }
}
