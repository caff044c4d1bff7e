//! Resolving paths inside a root directory as if it were `/`: `..` stops
//! at the root and absolute symlinks restart from the root, so no lookup
//! ever leaves it (the semantics of securejoin / `RESOLVE_IN_ROOT`).

use std::collections::VecDeque;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Linux's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (absolute or relative, may contain `..` and symlinks)
/// inside `root`, following symlinks found in `root` itself, and returns
/// the resulting path under `root`. Missing components are kept verbatim,
/// so the result is where a new file of that name would be created.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let comps = resolve_components(root, path, true)?;
    Ok(comps.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn split(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

/// The symlink-free components of `path` resolved inside `root`. With
/// `follow_last == false` a final symlink is kept as-is (for entries that
/// replace or hard-link it).
pub(crate) fn resolve_components(
    root: &Path,
    path: &str,
    follow_last: bool,
) -> Result<Vec<String>> {
    let mut todo: VecDeque<Vec<u8>> = split(path.as_bytes()).map(<[u8]>::to_vec).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut followed = 0usize;
    while let Some(comp) = todo.pop_front() {
        if comp == b".." {
            resolved.pop();
            continue;
        }
        let Ok(comp) = String::from_utf8(comp) else {
            bail!("path {path:?} resolves through a non-UTF-8 name");
        };
        if todo.is_empty() && !follow_last {
            resolved.push(comp);
            break;
        }
        let candidate = resolved
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&comp);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    bail!(
                        "resolving {path:?} in {}: too many levels of symbolic links",
                        root.display()
                    );
                }
                let target = std::fs::read_link(&candidate)
                    .with_context(|| format!("reading symlink {}", candidate.display()))?;
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    resolved.clear();
                }
                for (i, c) in split(target).enumerate() {
                    todo.insert(i, c.to_vec());
                }
            }
            Ok(_) => resolved.push(comp),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                resolved.push(comp)
            }
            Err(e) => return Err(e).with_context(|| format!("stat {}", candidate.display())),
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir(root.join("etc")).unwrap();
        symlink("/", root.join("evil")).unwrap();
        symlink("../../..", root.join("up")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("abs", root.join("chain")).unwrap();
        assert_eq!(
            resolve_in_root(root, "evil/etc/x").unwrap(),
            root.join("etc/x")
        );
        assert_eq!(resolve_in_root(root, "up/etc").unwrap(), root.join("etc"));
        assert_eq!(
            resolve_in_root(root, "/../../chain/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(resolve_components(root, "chain", false).unwrap(), ["chain"]);
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, "loop/x").is_err());
    }
}
