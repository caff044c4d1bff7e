//! Reading a stack of layer dirs (overlay lowers, topmost first) as overlayfs
//! shows them, without mounting anything: a 0:0 char device hides the path
//! in the layers below, an opaque dir (`trusted.overlay.opaque` or
//! `user.overlay.opaque` = `y`) hides the content of the same dir below, and
//! a non-directory ends the merge of a directory.
//!
//! Used by the RUN changeset (what the lower view held at a path) and by the
//! engine to read a stage's files (`/etc/passwd`, …) from its snapshots.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The most symlinks followed while resolving one path, as the kernel's
/// `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| matches!(super::xattr::get(path, name), Ok(Some(v)) if v == b"y"))
}

/// One directory of the merged view: the layer dirs that contribute to it,
/// topmost first, as host paths.
#[derive(Debug, Clone)]
struct MergedDir(Vec<PathBuf>);

enum Found {
    Dir(MergedDir),
    /// A non-directory: its host path in the topmost layer holding it.
    Other(PathBuf, Metadata),
}

impl MergedDir {
    /// The entry `name` of this merged directory, if visible.
    fn child(&self, name: &str) -> Option<Found> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for layer in &self.0 {
            let path = layer.join(name);
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if !dirs.is_empty() && !meta.is_dir() {
                break;
            }
            if dirs.is_empty() && is_whiteout(&meta) {
                return None;
            }
            if !meta.is_dir() {
                return Some(Found::Other(path, meta));
            }
            let opaque = is_opaque(&path);
            dirs.push(path);
            if opaque {
                break;
            }
        }
        (!dirs.is_empty()).then_some(Found::Dir(MergedDir(dirs)))
    }
}

fn root(layers: &[PathBuf]) -> MergedDir {
    let mut dirs = Vec::new();
    for l in layers {
        dirs.push(l.clone());
        if is_opaque(l) {
            break;
        }
    }
    MergedDir(dirs)
}

/// Lookups in one merged view that remember the directories resolved, so
/// a walk over many paths (a RUN's upper dir) costs a few stats per path,
/// not one per component and layer.
pub struct MergedView {
    layers: Vec<PathBuf>,
    /// Merged dirs by relative path (`""` is the root); `None`: not a
    /// directory in the view.
    dirs: std::collections::HashMap<String, Option<MergedDir>>,
}

impl MergedView {
    pub fn new(layers: &[PathBuf]) -> MergedView {
        let mut dirs = std::collections::HashMap::new();
        dirs.insert(String::new(), Some(root(layers)));
        MergedView {
            layers: layers.to_vec(),
            dirs,
        }
    }

    /// The merged dir at `rel`, from the deepest cached ancestor down
    /// (iterative: a RUN may leave a very deep tree).
    fn dir(&mut self, rel: &str) -> Option<MergedDir> {
        let mut start = rel;
        let cached = loop {
            if let Some(d) = self.dirs.get(start) {
                break d.clone();
            }
            start = start.rsplit_once('/').map_or("", |(p, _)| p);
        };
        let mut dir = cached?;
        let rest = rel[start.len()..].trim_start_matches('/');
        let mut at = start.to_string();
        for name in rest.split('/').filter(|n| !n.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(name);
            let found = match dir.child(name) {
                Some(Found::Dir(d)) => Some(d),
                _ => None,
            };
            self.dirs.insert(at.clone(), found.clone());
            dir = found?;
        }
        Some(dir)
    }

    /// The host path of what the view shows at `rel` (relative, `/`
    /// separated, no symlinks followed), if anything.
    pub fn lookup(&mut self, rel: &str) -> Option<PathBuf> {
        let rel = rel.trim_matches('/');
        if rel.is_empty() {
            return self.layers.first().cloned();
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        match self.dir(parent)?.child(name)? {
            Found::Dir(d) => d.0.first().cloned(),
            Found::Other(p, _) => Some(p),
        }
    }
}

/// The host path of what the merged view shows at `rel` (relative, no
/// symlinks followed: overlay lookups go name by name), if anything.
pub fn merged_lookup(layers: &[PathBuf], rel: &str) -> Option<PathBuf> {
    let mut dir = root(layers);
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else {
        return dir.0.first().cloned();
    };
    for part in parents {
        match dir.child(part)? {
            Found::Dir(d) => dir = d,
            Found::Other(..) => return None,
        }
    }
    match dir.child(last)? {
        Found::Dir(d) => d.0.first().cloned(),
        Found::Other(p, _) => Some(p),
    }
}

/// The host path of the file at `path` (absolute, in image terms) in the
/// merged view, symlinks followed inside the view as if it were `/` (`..`
/// stops at the root); `None` when it is missing or a loop. Cost: a few
/// stats per component and layer.
pub fn merged_resolve(layers: &[PathBuf], path: &str) -> Option<PathBuf> {
    // Work list of components still to walk, reversed (next on top).
    let mut todo: Vec<String> = split_rev(path);
    // The directories walked so far, the root first.
    let mut stack: Vec<MergedDir> = vec![root(layers)];
    let mut hops = 0;
    let mut last: Option<PathBuf> = None;
    while let Some(part) = todo.pop() {
        last = None;
        match part.as_str() {
            "." => continue,
            ".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let dir = stack.last()?.clone();
        match dir.child(&part)? {
            Found::Dir(d) => {
                last = d.0.first().cloned();
                stack.push(d);
            }
            Found::Other(p, meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return None;
                }
                let target = std::fs::read_link(&p).ok()?;
                let target = target.to_str()?;
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                todo.extend(split_rev(target));
            }
            Found::Other(p, _) => {
                if !todo.is_empty() {
                    return None;
                }
                last = Some(p);
            }
        }
    }
    last.or_else(|| stack.last().and_then(|d| d.0.first().cloned()))
}

/// `path` in image terms after resolving symlinks inside the merged view
/// (`resolve_in_root`'s semantics: `..` stops at the root, missing
/// components are kept verbatim, so the result is where a new file of that
/// name would go). Errors on a symlink loop.
pub fn merged_image_path(layers: &[PathBuf], path: &str) -> anyhow::Result<String> {
    let mut view = MergedView::new(layers);
    let mut todo: Vec<String> = split_rev(path);
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        resolved.push(part);
        let rel = resolved.join("/");
        let Some(host) = view.lookup(&rel) else {
            continue;
        };
        let Ok(meta) = host.symlink_metadata() else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        hops += 1;
        if hops > MAX_SYMLINKS {
            anyhow::bail!("resolving {path:?} in the image: too many levels of symbolic links");
        }
        let target = std::fs::read_link(&host)?;
        let Some(target) = target.to_str() else {
            anyhow::bail!("resolving {path:?}: the symlink {rel} is not UTF-8");
        };
        resolved.pop();
        if target.starts_with('/') {
            resolved.clear();
        }
        todo.extend(split_rev(target));
    }
    Ok(format!("/{}", resolved.join("/")))
}

fn split_rev(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .rev()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn whiteout(path: &Path) {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
    }

    #[test]
    fn lookups_follow_overlay_rules() {
        if !nix::unistd::geteuid().is_root() {
            // mknod of a whiteout and trusted xattrs need root; the
            // integration tests cover the rootless case.
            assert!(std::env::var_os("CI").is_none(), "needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (top, mid, bot) = (t.path().join("3"), t.path().join("2"), t.path().join("1"));
        for d in [&top, &mid, &bot] {
            fs::create_dir_all(d.join("etc")).unwrap();
        }
        fs::create_dir_all(bot.join("opq")).unwrap();
        fs::write(bot.join("opq/old"), "old").unwrap();
        fs::write(bot.join("etc/passwd"), "bottom").unwrap();
        fs::write(bot.join("gone"), "x").unwrap();
        fs::write(mid.join("etc/passwd"), "middle").unwrap();
        whiteout(&mid.join("gone"));
        fs::create_dir_all(mid.join("opq")).unwrap();
        fs::write(mid.join("opq/new"), "new").unwrap();
        xattr_set(&mid.join("opq"));
        std::os::unix::fs::symlink("../etc", top.join("link")).unwrap();
        let layers = vec![top.clone(), mid.clone(), bot.clone()];
        assert_eq!(
            merged_lookup(&layers, "etc/passwd"),
            Some(mid.join("etc/passwd"))
        );
        assert_eq!(merged_lookup(&layers, "gone"), None);
        let mut view = MergedView::new(&layers);
        for rel in [
            "etc/passwd",
            "gone",
            "opq/old",
            "opq/new",
            "link",
            "d/x",
            "",
        ] {
            assert_eq!(view.lookup(rel), merged_lookup(&layers, rel), "{rel}");
        }
        assert_eq!(merged_lookup(&layers, "opq/old"), None);
        assert_eq!(merged_lookup(&layers, "opq/new"), Some(mid.join("opq/new")));
        assert_eq!(
            merged_resolve(&layers, "/link/passwd"),
            Some(mid.join("etc/passwd"))
        );
        assert_eq!(merged_resolve(&layers, "/link/../gone"), None);
        assert_eq!(
            merged_image_path(&layers, "/link/x/../new").unwrap(),
            "/etc/new"
        );
        assert_eq!(merged_image_path(&layers, "/../opq/n").unwrap(), "/opq/n");
    }

    fn xattr_set(path: &Path) {
        let f = fs::File::open(path).unwrap();
        use std::os::fd::AsFd;
        super::super::xattr::set_fd(f.as_fd(), "trusted.overlay.opaque", b"y").unwrap();
    }
}
