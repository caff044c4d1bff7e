//! The composite snapshot of a context COPY rebuilt after a small change:
//! only the files that differ from the previous build's plain snapshot
//! (the base), with the dirs above them, in a delta dir that is mounted
//! over the base as a second overlay lower. O(changed files) in new
//! inodes: linking the 20,000 unchanged files of a 300 MB `COPY . .` and
//! making its ~1,000 dirs again was about a quarter of the CPU time of a
//! one-file rebuild (each new inode costly on ext4).
//!
//! The overlay of delta over base shows exactly the new layer only when
//! the base holds nothing the layer does not: no deletion and no type
//! change. That is checked by listing every dir of the base that the layer
//! also has (d_type only: ~1,000 getdents, no stat per file): every name in
//! it must be an entry of the layer, of the same type. Every file not in
//! the delta is compared with the base as the whole fill compares before
//! linking (context digest unchanged since the build the base came from,
//! and type, mode, owner, mtime and xattrs); a dir whose metadata differs
//! goes into the delta with the new metadata (overlay shows the topmost
//! lower's). Hard links, device nodes and the like, a delta of more than an
//! eighth of the layer's files, or a dir the layer does not describe
//! (its metadata unknown) leave the whole fill to do the work.
//!
//! The base is always a plain snapshot: after a composite, the next
//! rebuild's delta is made against the same base and carries the earlier
//! delta's files that still differ from it (linked from that delta), so a
//! layer is never more than two lowers.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::layer::{EntryKind, LayerEntry, PreparedEntries, Timespec};

use super::snapfill::{
    context_rel, real_dirs_above, same_file_meta, set_meta, sorted, xattrs_of, FillStats,
    LinkSource,
};

/// The delta may hold at most one file in this many of the layer's.
const MAX_DELTA_SHARE: usize = 8;

/// What becomes of a file or symlink of the layer.
enum Action {
    /// The base's copy is the layer's: nothing to do.
    Keep,
    /// Linked from the previous composite's delta.
    LinkPrev,
    /// Made from its source (a file) or its target (a symlink).
    Make,
}

/// Fill `delta` (an empty dir) with what the layer holds beyond
/// `from.dir`; `None` when a composite cannot show this layer (see the
/// module doc), with `delta` possibly partly filled.
pub(super) fn fill_delta<'a>(
    delta: &Path,
    entries: &'a PreparedEntries,
    from: &LinkSource<'_>,
) -> anyhow::Result<Option<FillStats>> {
    let base = from.dir.as_path();
    let mut sorted_entries: Vec<&LayerEntry> = Vec::new();
    for e in entries.iter() {
        match e.kind {
            EntryKind::Dir | EntryKind::File(_) | EntryKind::Symlink { .. } => {}
            _ => return Ok(None),
        }
        if !e.path.is_empty() {
            sorted_entries.push(e);
        }
    }
    // Parents before children (a prefix sorts first).
    sorted_entries.sort_by(|a, b| a.path.cmp(&b.path));
    let by_path: HashMap<&str, &LayerEntry> = sorted_entries
        .iter()
        .map(|e| (e.path.as_str(), *e))
        .collect();
    if !base_names_all_kept(base, &sorted_entries, &by_path)? {
        return Ok(None);
    }
    let nondirs = sorted_entries
        .iter()
        .filter(|e| !matches!(e.kind, EntryKind::Dir))
        .count();
    let mut plan: Vec<(&LayerEntry, Action)> = Vec::new();
    let mut made = 0usize;
    let mut open = OpenDir::default();
    let mut prev_dirs = HashSet::new();
    for e in sorted_entries.iter().copied() {
        if matches!(e.kind, EntryKind::Dir) {
            continue;
        }
        let action = classify(e, from, &mut open, &mut prev_dirs)?;
        if !matches!(action, Action::Keep) {
            made += 1;
            if made * MAX_DELTA_SHARE > nondirs {
                return Ok(None);
            }
        }
        plan.push((e, action));
    }
    // The dirs the delta needs: those whose metadata the base does not
    // have, and every dir above them and above its files.
    let mut wanted: HashSet<&str> = HashSet::new();
    let want_above = |path: &'a str, wanted: &mut HashSet<&'a str>| {
        let mut p = path;
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !wanted.insert(parent) {
                break;
            }
            p = parent;
        }
    };
    for (e, a) in &plan {
        if !matches!(a, Action::Keep) {
            want_above(e.path.as_str(), &mut wanted);
        }
    }
    for e in &sorted_entries {
        if matches!(e.kind, EntryKind::Dir)
            && !wanted.contains(e.path.as_str())
            && !same_dir_meta(&base.join(&e.path), e)?
        {
            wanted.insert(e.path.as_str());
            want_above(e.path.as_str(), &mut wanted);
        }
    }
    // A wanted dir the layer does not describe as one would get made-up
    // metadata (or be made below a symlink).
    let described = |d: &&str| {
        by_path
            .get(d)
            .is_some_and(|e| matches!(e.kind, EntryKind::Dir))
    };
    if !wanted.iter().all(described) {
        return Ok(None);
    }
    let mut dirs: Vec<&str> = wanted.into_iter().collect();
    // Parents before children (a prefix sorts first).
    dirs.sort_unstable();
    make(delta, from, &dirs, &by_path, &plan).map(Some)
}

/// Writes the planned delta: dirs, then files and symlinks, then the dirs'
/// metadata deepest first (a child's creation moves its parent's mtime).
fn make(
    delta: &Path,
    from: &LinkSource<'_>,
    dirs: &[&str],
    by_path: &HashMap<&str, &LayerEntry>,
    plan: &[(&LayerEntry, Action)],
) -> anyhow::Result<FillStats> {
    for d in dirs {
        let p = delta.join(d);
        std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    let mut stats = FillStats {
        composite: true,
        ..FillStats::default()
    };
    let mut copier = super::snapfill_copy::Copier::new(delta);
    for (e, action) in plan {
        let path = delta.join(&e.path);
        match (action, &e.kind) {
            (Action::Keep, _) => {
                stats.kept += 1;
                continue;
            }
            (Action::LinkPrev, _) => {
                let (prev, _) = from
                    .prev_delta
                    .as_ref()
                    .context("no previous delta to link from")?;
                // Not following a symlink: checked a regular file.
                std::fs::hard_link(prev.join(&e.path), &path)
                    .with_context(|| format!("linking {}", path.display()))?;
                stats.linked += 1;
                continue;
            }
            (Action::Make, EntryKind::File(src)) => {
                copier.file(&path, src, e, from)?;
                stats.copied += 1;
                continue;
            }
            (Action::Make, EntryKind::Symlink { target }) => {
                std::os::unix::fs::symlink(target, &path)
                    .with_context(|| format!("creating {}", path.display()))?;
                stats.copied += 1;
            }
            (Action::Make, other) => anyhow::bail!("{}: {other:?} in a delta", e.path),
        }
        set_meta(&path, e)?;
    }
    for d in dirs.iter().rev() {
        let e = by_path.get(d).context("an undescribed dir")?;
        set_meta(&delta.join(d), e)?;
    }
    stats.hashed = copier.hashed();
    Ok(stats)
}

/// Whether every name in every dir of `base` that the layer also has as a
/// dir is an entry of the layer of the same type (so the base shows
/// nothing the layer lacks). Entries are sorted, so a dir's parent was
/// checked to be a dir in the base before the dir is listed: no symlink
/// of the base is followed.
fn base_names_all_kept(
    base: &Path,
    sorted_entries: &[&LayerEntry],
    by_path: &HashMap<&str, &LayerEntry>,
) -> anyhow::Result<bool> {
    let dirs = std::iter::once("").chain(
        sorted_entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Dir))
            .map(|e| e.path.as_str()),
    );
    for d in dirs {
        let dir = base.join(d);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            // New in this build: nothing below it is in the base.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        // An opaque dir (from a layer unpacked with a whiteout, e.g. an
        // imported cache's) would hide the layers below where the new
        // layer does not.
        if is_opaque(&dir)? {
            return Ok(false);
        }
        for child in rd {
            let child = child.with_context(|| format!("listing {}", dir.display()))?;
            let name = child.file_name();
            let Some(name) = name.to_str() else {
                return Ok(false);
            };
            let rel = if d.is_empty() {
                name.to_string()
            } else {
                format!("{d}/{name}")
            };
            let ft = child
                .file_type()
                .with_context(|| format!("listing {}", dir.display()))?;
            let same_type = match by_path.get(rel.as_str()).map(|e| &e.kind) {
                Some(EntryKind::Dir) => ft.is_dir(),
                Some(EntryKind::File(_)) => ft.is_file(),
                Some(EntryKind::Symlink { .. }) => ft.is_symlink(),
                _ => false,
            };
            if !same_type {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether `dir` carries an overlay opaque mark (root's or rootless').
fn is_opaque(dir: &Path) -> anyhow::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        // SAFETY: valid C strings; a zero-size query reads nothing.
        let rc = unsafe { libc::lgetxattr(cpath.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if rc >= 0 {
            return Ok(true);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            // Not set, or not readable by us (trusted.* rootless): only
            // root's mount would read a trusted mark.
            Some(libc::ENODATA) | Some(libc::ENOTSUP) | Some(libc::EPERM) => {}
            _ => {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("reading the xattrs of {}", dir.display()))
            }
        }
    }
    Ok(false)
}

/// Whether the layer's file or symlink `e` is the base's as it is.
fn classify(
    e: &LayerEntry,
    from: &LinkSource<'_>,
    open: &mut OpenDir,
    prev_dirs: &mut HashSet<PathBuf>,
) -> anyhow::Result<Action> {
    let rel = Path::new(&e.path);
    match &e.kind {
        EntryKind::File(src) => {
            let unchanged = context_rel(src, from).is_some_and(|k| from.unchanged(k));
            if let Some((prev, files)) = &from.prev_delta {
                if files.contains(rel) {
                    // In the previous delta: still different from the base.
                    let same = unchanged
                        && real_dirs_above(prev, rel, prev_dirs)
                        && lstat(&prev.join(rel))
                            .map(|m| same_file_meta(&m, e, &prev.join(rel)))
                            .transpose()?
                            .unwrap_or(false);
                    return Ok(if same { Action::LinkPrev } else { Action::Make });
                }
            }
            if !unchanged {
                return Ok(Action::Make);
            }
            let Some(pm) = open.stat(&from.dir, rel)? else {
                return Ok(Action::Make);
            };
            Ok(if same_file_meta(&pm, e, &from.dir.join(rel))? {
                Action::Keep
            } else {
                Action::Make
            })
        }
        EntryKind::Symlink { target } => {
            let path = from.dir.join(rel);
            let same = std::fs::symlink_metadata(&path).is_ok_and(|m| {
                m.file_type().is_symlink()
                    && (m.uid(), m.gid()) == (e.uid, e.gid)
                    && Timespec::new(m.mtime(), m.mtime_nsec() as u32) == e.mtime
            }) && std::fs::read_link(&path)
                .is_ok_and(|t| t.as_os_str() == target.as_str())
                && xattrs_of(&path)? == sorted(&e.xattrs);
            Ok(if same { Action::Keep } else { Action::Make })
        }
        _ => anyhow::bail!("{}: not a file", e.path),
    }
}

/// The base's dir of the files being compared, open: a file is stat'ed by
/// its name alone (entries are sorted, so each dir is opened about once).
#[derive(Default)]
struct OpenDir {
    at: Option<(PathBuf, std::os::fd::OwnedFd)>,
}

impl OpenDir {
    /// `root/rel` not followed, `None` when it is not there.
    fn stat(&mut self, root: &Path, rel: &Path) -> anyhow::Result<Option<libc::stat>> {
        use nix::fcntl::{open, AtFlags, OFlag};
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Ok(None);
        };
        if self.at.as_ref().is_none_or(|(p, _)| p != parent) {
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            // Not there (or not a dir): the file is new to the base.
            let Ok(fd) = open(&root.join(parent), flags, nix::sys::stat::Mode::empty()) else {
                self.at = None;
                return Ok(None);
            };
            self.at = Some((parent.to_path_buf(), fd));
        }
        let Some((_, fd)) = self.at.as_ref() else {
            return Ok(None);
        };
        Ok(nix::sys::stat::fstatat(fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok())
    }
}

fn lstat(path: &Path) -> Option<libc::stat> {
    nix::sys::stat::lstat(path).ok()
}

/// Whether the base has a dir at `path` with `e`'s mode, owner, mtime and
/// xattrs (false when it has none).
fn same_dir_meta(path: &Path, e: &LayerEntry) -> anyhow::Result<bool> {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(false);
    };
    Ok(m.is_dir()
        && m.mode() & 0o7777 == e.mode
        && (m.uid(), m.gid()) == (e.uid, e.gid)
        && Timespec::new(m.mtime(), m.mtime_nsec() as u32) == e.mtime
        && xattrs_of(path)? == sorted(&e.xattrs))
}

/// The paths (relative) of every non-dir below `root`: a composite's delta,
/// small by construction. Walked with a stack, not recursion.
pub(super) fn files_below(root: &Path) -> anyhow::Result<HashSet<PathBuf>> {
    let mut out = HashSet::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = root.join(&rel);
        for child in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let child = child.with_context(|| format!("listing {}", dir.display()))?;
            let path = rel.join(child.file_name());
            if child.file_type()?.is_dir() {
                todo.push(path);
            } else {
                out.insert(path);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::snapfill::tests::entry;
    use super::*;
    use crate::context::FileDigest;
    use crate::layer::FileSource;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    fn set_mtime(p: &Path) {
        let t = nix::sys::time::TimeSpec::new(1, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    /// A base of `d/f0..f9` as the whole fill makes it, the context the
    /// same, and the layer's entries for `names` (all under `d/`).
    #[test]
    fn only_changes_and_additions_make_a_delta() {
        let t = tempfile::tempdir().unwrap();
        let (ctx, base) = (t.path().join("ctx"), t.path().join("base"));
        std::fs::create_dir_all(ctx.join("d")).unwrap();
        std::fs::create_dir_all(base.join("d")).unwrap();
        let mut files = BTreeMap::new();
        for i in 0..10 {
            let body = format!("file {i}");
            std::fs::write(ctx.join(format!("d/f{i}")), &body).unwrap();
            let p = base.join(format!("d/f{i}"));
            std::fs::write(&p, &body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            set_mtime(&p);
            let digest = FileDigest(Sha256::digest(body.as_bytes()).into());
            files.insert(format!("d/f{i}"), digest);
        }
        std::fs::set_permissions(base.join("d"), std::fs::Permissions::from_mode(0o755)).unwrap();
        set_mtime(&base.join("d"));
        std::fs::write(ctx.join("d/new"), "new").unwrap();
        // Not the digest of "new": only files2 below has the real one.
        files.insert("d/new".into(), FileDigest([0; 32]));
        let from = LinkSource {
            dir: base.clone(),
            new_files: &files,
            changed: ["d/new".to_string()].into(),
            context_root: ctx.clone(),
            base_id: String::new(),
            prev_delta: None,
            scan: None,
        };
        let layer = |names: &[&str]| {
            let mut v = vec![LayerEntry {
                mode: 0o755,
                ..entry("d", EntryKind::Dir)
            }];
            for n in names {
                let src = FileSource::Path(ctx.join("d").join(n));
                v.push(entry(&format!("d/{n}"), EntryKind::File(src)));
            }
            PreparedEntries::new(v, None).unwrap()
        };
        let all: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        let mut names: Vec<&str> = all.iter().map(String::as_str).collect();
        // One file added: the delta holds it and its dir, nothing else.
        let delta = t.path().join("delta1");
        std::fs::create_dir(&delta).unwrap();
        let mut with_new = names.clone();
        with_new.push("new");
        // The copy checks the digest: give the real one.
        let mut files2 = files.clone();
        files2.insert("d/new".into(), FileDigest(Sha256::digest(b"new").into()));
        let from2 = LinkSource {
            new_files: &files2,
            ..from
        };
        let stats = fill_delta(&delta, &layer(&with_new), &from2)
            .unwrap()
            .expect("a delta");
        assert_eq!((stats.copied, stats.kept, stats.linked), (1, 10, 0));
        assert_eq!(
            files_below(&delta).unwrap(),
            [PathBuf::from("d/new")].into()
        );
        // One file deleted: no delta can show that.
        names.retain(|n| *n != "f3");
        let delta = t.path().join("delta2");
        std::fs::create_dir(&delta).unwrap();
        assert!(fill_delta(&delta, &layer(&names), &from2)
            .unwrap()
            .is_none());
        // An opaque dir in the base (it hides lower layers; the layer's
        // dir does not): no delta.
        let mark = base.join("d");
        let (p, n) = (
            std::ffi::CString::new(mark.to_str().unwrap()).unwrap(),
            c"user.overlay.opaque",
        );
        // SAFETY: valid C strings and a one-byte value.
        let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let delta = t.path().join("delta4");
        std::fs::create_dir(&delta).unwrap();
        assert!(fill_delta(&delta, &layer(&with_new), &from2)
            .unwrap()
            .is_none());
        // SAFETY: as above.
        unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
        // Half the files changed: more than an eighth, no delta.
        let changed: HashSet<String> = (0..5).map(|i| format!("d/f{i}")).collect();
        let from3 = LinkSource { changed, ..from2 };
        let delta = t.path().join("delta3");
        std::fs::create_dir(&delta).unwrap();
        assert!(fill_delta(&delta, &layer(&with_new), &from3)
            .unwrap()
            .is_none());
    }
}
