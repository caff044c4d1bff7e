//! What a RUN step changed, as layer entries: from an overlayfs upper dir
//! (the fast path) or by comparing two trees (when overlay is unavailable).

use super::merged::MergedView;
use std::collections::{BTreeSet, HashSet};
use std::fs::Metadata;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::entry::LayerEntry;
use super::walk::{entry_for, HardlinkMap};
use super::xattr;

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
/// Overlay features whose upper files cannot be read as plain files.
const UNSUPPORTED_XATTRS: [&str; 4] = [
    "trusted.overlay.redirect",
    "user.overlay.redirect",
    "trusted.overlay.metacopy",
    "user.overlay.metacopy",
];

fn rel_of(root: &Path, path: &Path) -> Result<String> {
    let rel = path
        .strip_prefix(root)
        .with_context(|| format!("{} is not under {}", path.display(), root.display()))?;
    match rel.to_str() {
        Some(s) => Ok(s.to_string()),
        None => bail!("{} has a non-UTF-8 name", path.display()),
    }
}

/// Whether the lower view (layer dirs, topmost first, read as overlayfs
/// merges them) has something at `rel`.
fn exists_in(view: &mut MergedView, rel: &str) -> bool {
    view.lookup(rel).is_some()
}

fn is_overlay_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Converts an overlayfs upper dir into OCI layer entries: 0/0 char devices
/// become whiteouts (only for paths that exist in a lower dir), opaque dirs
/// get `.wh..wh..opq`, overlay xattrs are dropped. Redirect and metacopy
/// dirs/files are refused: their content is not in the upper dir.
///
/// Overlay copies a file or directory up (with its parents) on any
/// metadata call, even one that changes nothing (`chmod 755` of a 0755
/// dir). As BuildKit's overlay differ does, an upper object that matches
/// its lower one is no change: a file is left out, a directory is kept
/// only as the parent of a change (a directory's mtime alone does not
/// count, as in BuildKit: creating and removing a file is no change).
pub fn changeset_from_overlay_upper(
    upper: &Path,
    lower_dirs: &[PathBuf],
) -> Result<Vec<LayerEntry>> {
    let mut links = HardlinkMap::default();
    let mut lower = MergedView::new(lower_dirs);
    // (entry, is a change): directories copied up unchanged wait for a
    // change below them.
    let mut out: Vec<(LayerEntry, bool)> = Vec::new();
    for item in walkdir::WalkDir::new(upper)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let item = item.with_context(|| format!("walking overlay upper {}", upper.display()))?;
        let path = item.path();
        let rel = rel_of(upper, path)?;
        let meta = item
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        if is_overlay_whiteout(&meta) {
            if exists_in(&mut lower, &rel) {
                out.push((LayerEntry::whiteout(&rel), true));
            }
            continue;
        }
        for name in UNSUPPORTED_XATTRS {
            if xattr::get(path, name)
                .with_context(|| format!("reading xattrs of {}", path.display()))?
                .is_some()
            {
                bail!(
                    "{} has {name}: overlay redirect/metacopy upper dirs are not supported",
                    path.display()
                );
            }
        }
        let opaque = meta.is_dir() && is_opaque(path)? && exists_in(&mut lower, &rel);
        let changed = opaque || !same_as_lower(&mut lower, &rel, path, &meta)?;
        if !changed && !meta.is_dir() {
            continue;
        }
        if let Some(e) = entry_for(path, &rel, &meta, &mut links)? {
            out.push((e, changed));
        }
        if opaque {
            out.push((LayerEntry::opaque(&rel), true));
        }
    }
    Ok(keep_changes_and_their_parents(out))
}

/// The changes, plus every directory above one (each ancestor is marked
/// once, so this is linear in the number of entries).
fn keep_changes_and_their_parents(out: Vec<(LayerEntry, bool)>) -> Vec<LayerEntry> {
    let mut needed: HashSet<String> = HashSet::new();
    for (e, changed) in &out {
        let mut p = e.path.as_str();
        while let (true, Some((parent, _))) = (*changed, p.rsplit_once('/')) {
            if !needed.insert(parent.to_string()) {
                break;
            }
            p = parent;
        }
    }
    out.into_iter()
        .filter(|(e, changed)| *changed || needed.contains(&e.path))
        .map(|(e, _)| e)
        .collect()
}

/// Whether the upper object at `path` equals the one the top-most lower
/// dir has at `rel` in everything a layer records (BuildKit's `sameDirent`).
fn same_as_lower(lower: &mut MergedView, rel: &str, path: &Path, meta: &Metadata) -> Result<bool> {
    let Some(lower_path) = lower.lookup(rel) else {
        return Ok(false);
    };
    match lstat_opt(&lower_path)? {
        Some(old) => same_entry(&lower_path, &old, path, meta),
        None => Ok(false),
    }
}

/// BuildKit's `sameDirent`: everything a layer records, but a directory's
/// mtime.
fn same_entry(old_path: &Path, old: &Metadata, new_path: &Path, new: &Metadata) -> Result<bool> {
    if old.is_dir() && new.is_dir() {
        return same_dir(old_path, old, new_path, new);
    }
    // A new hard link to a lower file copies that file up unchanged but
    // with another link count: the layer must carry it, or the link would
    // have no target in the layer (BuildKit keeps both, `nlink=2`).
    if old.nlink() != new.nlink() {
        return Ok(false);
    }
    Ok(!differs(old_path, old, new_path, new)?)
}

/// Directories compare by mode, owner and the xattrs a layer keeps, not
/// by mtime (which changes whenever an entry comes and goes).
fn same_dir(old_path: &Path, old: &Metadata, new_path: &Path, new: &Metadata) -> Result<bool> {
    if old.mode() != new.mode() || old.uid() != new.uid() || old.gid() != new.gid() {
        return Ok(false);
    }
    Ok(kept_xattrs(old_path)? == kept_xattrs(new_path)?)
}

fn kept_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(xattr::read_all(path)
        .with_context(|| format!("reading xattrs of {}", path.display()))?
        .into_iter()
        .filter(|(k, _)| xattr::keep_in_layer(k))
        .collect())
}

fn is_opaque(path: &Path) -> Result<bool> {
    for name in OPAQUE_XATTRS {
        let v = xattr::get(path, name)
            .with_context(|| format!("reading xattrs of {}", path.display()))?;
        if v.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn lstat_opt(path: &Path) -> Result<Option<Metadata>> {
    match path.symlink_metadata() {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("stat {}", path.display())),
    }
}

/// Whether `new` differs from `old` in anything a layer records. Content
/// is compared only when the mtime has no sub-second part, because then
/// an edit within the same second is invisible to the mtime (buildkit's
/// `sameDirent` does the same).
fn differs(old_path: &Path, old: &Metadata, new_path: &Path, new: &Metadata) -> Result<bool> {
    let (fo, fnew) = (old.file_type(), new.file_type());
    let same_type = fo.is_file() == fnew.is_file()
        && fo.is_dir() == fnew.is_dir()
        && fo.is_symlink() == fnew.is_symlink()
        && fo.is_char_device() == fnew.is_char_device()
        && fo.is_block_device() == fnew.is_block_device()
        && fo.is_fifo() == fnew.is_fifo();
    if !same_type
        || old.mode() != new.mode()
        || old.uid() != new.uid()
        || old.gid() != new.gid()
        || old.rdev() != new.rdev()
        || (!fnew.is_dir() && old.size() != new.size())
        || old.mtime() != new.mtime()
        || old.mtime_nsec() != new.mtime_nsec()
    {
        return Ok(true);
    }
    if fnew.is_symlink() {
        let a = std::fs::read_link(old_path)
            .with_context(|| format!("reading {}", old_path.display()))?;
        let b = std::fs::read_link(new_path)
            .with_context(|| format!("reading {}", new_path.display()))?;
        return Ok(a != b);
    }
    let xo = xattr::read_all(old_path)
        .with_context(|| format!("reading xattrs of {}", old_path.display()))?;
    let xn = xattr::read_all(new_path)
        .with_context(|| format!("reading xattrs of {}", new_path.display()))?;
    let keep = |v: Vec<(String, Vec<u8>)>| {
        v.into_iter()
            .filter(|(k, _)| xattr::keep_in_layer(k))
            .collect::<Vec<_>>()
    };
    if keep(xo) != keep(xn) {
        return Ok(true);
    }
    if fnew.is_file() && new.mtime_nsec() == 0 {
        return Ok(!same_content(old_path, new_path)?);
    }
    Ok(false)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = std::fs::File::open(a).with_context(|| format!("opening {}", a.display()))?;
    let mut fb = std::fs::File::open(b).with_context(|| format!("opening {}", b.display()))?;
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The changes that turn `lower_merged` into `new` (both full trees): added
/// and changed objects, their parent directories (so unpackers recreate
/// them with the right metadata), and whiteouts for removed paths (only the
/// top-most of a removed subtree).
pub fn diff_trees(lower_merged: &Path, new: &Path) -> Result<Vec<LayerEntry>> {
    let mut links = HardlinkMap::default();
    let mut out = Vec::new();
    let mut included = BTreeSet::new();
    for item in walkdir::WalkDir::new(new)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let item = item.with_context(|| format!("walking {}", new.display()))?;
        let rel = rel_of(new, item.path())?;
        let meta = item
            .metadata()
            .with_context(|| format!("stat {}", item.path().display()))?;
        let old_path = lower_merged.join(&rel);
        let changed = match lstat_opt(&old_path)? {
            None => true,
            Some(old) => !same_entry(&old_path, &old, item.path(), &meta)?,
        };
        if changed {
            add_parents(new, &rel, &mut included, &mut out, &mut links)?;
            if included.insert(rel.clone()) {
                if let Some(e) = entry_for(item.path(), &rel, &meta, &mut links)? {
                    out.push(e);
                }
            }
        }
    }
    let mut walk = walkdir::WalkDir::new(lower_merged)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(item) = walk.next() {
        let item = item.with_context(|| format!("walking {}", lower_merged.display()))?;
        let rel = rel_of(lower_merged, item.path())?;
        let now = lstat_opt(&new.join(&rel))?;
        if now.is_none() {
            add_parents(new, &rel, &mut included, &mut out, &mut links)?;
            out.push(LayerEntry::whiteout(&rel));
        }
        // A removed or replaced directory: its children need no entries.
        if item.file_type().is_dir() && !now.is_some_and(|m| m.is_dir()) {
            walk.skip_current_dir();
        }
    }
    Ok(out)
}

/// Adds entries for the not-yet-included ancestors of `rel` (from `new`).
fn add_parents(
    new: &Path,
    rel: &str,
    included: &mut BTreeSet<String>,
    out: &mut Vec<LayerEntry>,
    links: &mut HardlinkMap,
) -> Result<()> {
    let mut prefix = String::new();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(c);
        if included.insert(prefix.clone()) {
            let p = new.join(&prefix);
            let meta = p
                .symlink_metadata()
                .with_context(|| format!("stat {}", p.display()))?;
            if let Some(e) = entry_for(&p, &prefix, &meta, links)? {
                out.push(e);
            }
        }
    }
    Ok(())
}
