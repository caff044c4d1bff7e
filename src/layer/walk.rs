//! Turning a directory tree on disk into layer entries (COPY of a
//! directory, tests), with hard links detected by (dev, ino).

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::entry::{EntryKind, FileSource, LayerEntry, Timespec};
use super::xattr;

/// Options for [`entries_from_dir`].
#[derive(Debug, Clone, Default)]
pub struct DirOptions {
    /// Where the tree's root lands in the image (`""` = the image root, in
    /// which case the root directory itself gets no entry).
    pub prefix: String,
    /// Override every owner (COPY --chown), else the on-disk owners are kept.
    pub chown: Option<(u32, u32)>,
}

/// First path seen for each multiply-linked inode of one layer.
#[derive(Default)]
pub(crate) struct HardlinkMap(HashMap<(u64, u64), String>);

/// The major number of a `st_rdev` (glibc's `gnu_dev_major` encoding).
pub fn dev_major(dev: u64) -> u32 {
    (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32
}

/// The minor number of a `st_rdev`.
pub fn dev_minor(dev: u64) -> u32 {
    ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32
}

pub(crate) fn mtime_of(meta: &Metadata) -> Timespec {
    Timespec::new(meta.mtime(), meta.mtime_nsec() as u32)
}

/// Describes the file at `abs` as the layer entry `rel`. Returns `None` for
/// sockets, which images cannot carry (buildkit skips them too).
pub(crate) fn entry_for(
    abs: &Path,
    rel: &str,
    meta: &Metadata,
    links: &mut HardlinkMap,
) -> Result<Option<LayerEntry>> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        match link_target(meta, rel, links) {
            Some(target) => EntryKind::Hardlink { target },
            None => EntryKind::File(FileSource::Path(abs.to_path_buf())),
        }
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        let target = std::fs::read_link(abs)
            .with_context(|| format!("reading symlink {}", abs.display()))?;
        let Some(target) = target.to_str() else {
            bail!("symlink {} has a non-UTF-8 target", abs.display());
        };
        EntryKind::Symlink {
            target: target.to_string(),
        }
    } else if ft.is_char_device() {
        EntryKind::CharDevice {
            major: dev_major(meta.rdev()),
            minor: dev_minor(meta.rdev()),
        }
    } else if ft.is_block_device() {
        EntryKind::BlockDevice {
            major: dev_major(meta.rdev()),
            minor: dev_minor(meta.rdev()),
        }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else {
        return Ok(None);
    };
    let xattrs = xattr::read_all(abs)
        .with_context(|| format!("reading xattrs of {}", abs.display()))?
        .into_iter()
        .filter(|(k, _)| xattr::keep_in_layer(k))
        .collect();
    Ok(Some(LayerEntry {
        path: rel.to_string(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: mtime_of(meta),
        xattrs,
    }))
}

/// The earlier path of this inode in the layer, recording `rel` if first.
fn link_target(meta: &Metadata, rel: &str, links: &mut HardlinkMap) -> Option<String> {
    if meta.nlink() < 2 {
        return None;
    }
    let key = (meta.dev(), meta.ino());
    match links.0.get(&key) {
        Some(first) => Some(first.clone()),
        None => {
            links.0.insert(key, rel.to_string());
            None
        }
    }
}

pub(crate) fn join_rel(prefix: &str, rel: &str) -> String {
    match (prefix.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}/{rel}"),
    }
}

/// Every file-system object under `dir` (not following symlinks), as layer
/// entries placed under `opts.prefix`.
pub fn entries_from_dir(dir: &Path, opts: &DirOptions) -> Result<Vec<LayerEntry>> {
    let prefix = opts.prefix.trim_matches('/');
    let mut links = HardlinkMap::default();
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.with_context(|| format!("walking {}", dir.display()))?;
        let rel_path = item
            .path()
            .strip_prefix(dir)
            .with_context(|| format!("walking {}", dir.display()))?;
        let Some(rel) = rel_path.to_str() else {
            bail!("{} has a non-UTF-8 name", item.path().display());
        };
        if rel.is_empty() && prefix.is_empty() {
            continue;
        }
        let meta = item
            .metadata()
            .with_context(|| format!("stat {}", item.path().display()))?;
        if let Some(mut e) = entry_for(item.path(), &join_rel(prefix, rel), &meta, &mut links)? {
            if let Some((uid, gid)) = opts.chown {
                e.uid = uid;
                e.gid = gid;
            }
            out.push(e);
        }
    }
    Ok(out)
}
