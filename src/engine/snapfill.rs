//! The snapshot of a COPY layer made from the step's own entries, reusing
//! the files of the same step's previous snapshot: the one-file-changed
//! rebuild. Without it the next RUN would unpack the whole new layer
//! (hundreds of MB for `COPY . .`) to change one file.
//!
//! A file is hard-linked from the previous snapshot when its context digest
//! is the one the previous build recorded for the same source path (the
//! cache record's per-file digests), the step's instruction, destination
//! and parent are the same (so the source lands on the same path), and the
//! previous file has the same type, size, mode, owner, mtime and xattrs.
//! Every other file is copied from its source and its digest checked
//! (`snapfill_copy`: the scan's, when the source's stat is the scanned one).
//! Snapshots are never written after they are made (overlay writes go to a
//! RUN's upper dir), so sharing inodes between two of them is safe.
//! Anything unexpected (a device node, a digest that changed since the
//! context scan) fails the fill: the RUN then unpacks the layer instead.
//!
//! When the change is small and only changes or adds files, the snapshot
//! is a composite instead (`snapfill_delta`: the changed files over the
//! previous build's plain snapshot), tried first by [`write_with_snapshot`].

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::context::ContextIndex;
use crate::layer::{EntryKind, FileSource, LayerEntry, PreparedEntries, Timespec};
use crate::oci::LayerRef;
use crate::plan::{Step, StepKind};
use crate::progress::StepHandle;
use crate::store::LayerSnapshot;

use super::build::BuildCtx;
use super::cachekey::KeyInputs;

/// What the previous build of the step left to reuse.
pub struct LinkSource<'a> {
    /// The previous layer's snapshot dir (empty: nothing to link from).
    pub dir: PathBuf,
    /// Context path → digest in this build (the step's key inputs,
    /// borrowed: at 200,000 files a copy of the map cost ~40 MB).
    pub new_files: &'a BTreeMap<String, crate::context::FileDigest>,
    /// Paths of `new_files` whose digest is not the one the previous build
    /// recorded (changed or new): never linked. Only this difference is
    /// kept, not the previous map: in a one-file rebuild it is one path.
    pub changed: HashSet<String>,
    /// The context root the entries' source paths are under.
    pub context_root: PathBuf,
    /// The layer `dir` is the plain snapshot of (its diff_id; empty when
    /// `dir` is).
    pub base_id: String,
    /// When the previous snapshot was a composite (`dir` its base): its
    /// delta dir, and the layer paths of the files in it, which `dir`
    /// holds in their older form: never linked from `dir`.
    pub prev_delta: Option<(PathBuf, HashSet<PathBuf>)>,
    /// The context scan: a source file whose stat is the one the scan saw
    /// has the scan's digest and is not hashed again (`Copier`).
    pub scan: Option<Arc<ContextIndex>>,
}

impl LinkSource<'_> {
    /// Whether the context file `key` has the digest the previous
    /// snapshot's file was made from.
    pub(super) fn unchanged(&self, key: &str) -> bool {
        !self.dir.as_os_str().is_empty()
            && self.new_files.contains_key(key)
            && !self.changed.contains(key)
    }
}

/// For a context COPY whose previous build (same parent, instruction and
/// settings; only files changed) left a layer snapshot: what the new
/// layer's snapshot can link from (see `snapfill`).
pub(super) fn link_source<'a>(
    ctx: &BuildCtx<'_>,
    step: &Step,
    now: &'a KeyInputs,
    old: Option<KeyInputs>,
    old_layer: Option<LayerRef>,
) -> Option<LinkSource<'a>> {
    let old = old?;
    let same_step = matches!(&step.kind, StepKind::Copy(c) if c.from.is_none())
        && old.parent == now.parent
        && old.instruction == now.instruction
        && without_sources(&old.extra) == without_sources(&now.extra)
        && !now.files.is_empty();
    if !same_step || !super::run::overlay_usable() {
        return None;
    }
    let old_layer = old_layer?;
    let (dir, base_id, prev_delta) = match ctx.store.layer_snapshot(&old_layer.diff_id)? {
        LayerSnapshot::Plain(dir) => (dir, old_layer.diff_id, None),
        LayerSnapshot::Composite {
            delta,
            base,
            base_id,
        } => {
            let files = super::snapfill_delta::files_below(&delta).ok()?;
            (base, base_id, Some((delta, files)))
        }
    };
    let changed = now
        .files
        .iter()
        .filter(|(k, v)| old.files.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    Some(LinkSource {
        dir,
        new_files: &now.files,
        changed,
        context_root: ctx.context().ok()?.root().to_path_buf(),
        base_id,
        prev_delta,
        scan: ctx.context_shared().ok(),
    })
}

/// For a context COPY with no previous snapshot to link from (a cold
/// build, or settings that changed), when a later step will read the
/// layer's files: a fill that copies every file from the context while the
/// layer is written. Without it the next RUN unpacks the new layer first —
/// measured at ~4 s for a 300 MB, 20,000-file COPY (decompressing it and
/// writing every file again), against ~1 CPU-s of copying beside the
/// compression here.
pub(super) fn fresh_source<'a>(ctx: &BuildCtx<'_>, now: &'a KeyInputs) -> Option<LinkSource<'a>> {
    if now.files.is_empty() || !super::run::overlay_usable() {
        return None;
    }
    Some(LinkSource {
        dir: PathBuf::new(),
        new_files: &now.files,
        changed: HashSet::new(),
        context_root: ctx.context().ok()?.root().to_path_buf(),
        base_id: String::new(),
        prev_delta: None,
        scan: ctx.context_shared().ok(),
    })
}

/// A COPY's settings but the digest of its selected files (which the
/// per-file digests stand for).
fn without_sources(
    extra: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<&String, &String> {
    extra
        .iter()
        .filter(|(k, _)| k.as_str() != "sources")
        .collect()
}

/// Writes the COPY layer with `write` while another thread makes its
/// snapshot from the same entries (best effort: when the fill fails, the
/// next RUN unpacks the layer instead), reported as a log line of the step.
/// The snapshot is filled in a store temp dir and named by the layer's
/// diff_id once `write` has returned it: run one after the other, the fill
/// (one link and a few stats per file) added about a fifth to the CPU time
/// of a one-file-changed rebuild, all of it on the critical path.
pub(super) fn write_with_snapshot(
    ctx: &BuildCtx<'_>,
    entries: &PreparedEntries,
    from: &LinkSource<'_>,
    handle: &StepHandle,
    write: impl FnOnce(&PreparedEntries) -> anyhow::Result<LayerRef>,
) -> anyhow::Result<LayerRef> {
    let tmp = match ctx.store.temp_dir("layer-") {
        Ok(t) => t,
        Err(e) => {
            report(
                handle,
                &format!("layer snapshot left to the next RUN: {e:#}\n"),
            );
            return write(entries);
        }
    };
    // Both threads read the one prepared list (a clone of it cost ~45 MB
    // at 200,000 files).
    let (layer, filled) = std::thread::scope(|s| {
        let filler = std::thread::Builder::new()
            .name("layer-snapshot".into())
            .spawn_scoped(s, || fill_either(tmp.path(), entries, from));
        let layer = write(entries);
        let filled = match filler {
            Ok(h) => h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the snapshot thread panicked"))),
            Err(e) => Err(anyhow::Error::from(e).context("starting the snapshot thread")),
        };
        (layer, filled)
    });
    let layer = layer?;
    let adopted = filled.and_then(|s| {
        if ctx.store.layer_snapshot(&layer.diff_id).is_some() {
            // Made by an earlier build (this layer's record gone) or a
            // racing one: that one serves; `tmp` is dropped.
            Ok(s)
        } else if s.composite {
            let base = &from.base_id;
            ctx.store
                .adopt_composite_layer_dir(&layer.diff_id, base, tmp)
                .map(|_| s)
        } else {
            ctx.store.adopt_layer_dir(&layer.diff_id, tmp).map(|_| s)
        }
    });
    let line = match adopted {
        Ok(s) if s.composite => format!(
            "layer snapshot: {} changed files over the previous build's ({} linked, {} copied), \
             {} unchanged\n",
            s.linked + s.copied,
            s.linked,
            s.copied,
            s.kept
        ),
        Ok(s) => format!(
            "layer snapshot: {} files linked from the previous build, {} copied{}\n",
            s.linked,
            s.copied,
            match s.hashed {
                0 => String::new(),
                n => format!(" ({n} hashed again: changed since the scan's second)"),
            }
        ),
        Err(e) => format!("layer snapshot left to the next RUN: {e:#}\n"),
    };
    report(handle, &line);
    Ok(layer)
}

fn report(handle: &StepHandle, line: &str) {
    handle.log(crate::progress::Stream::Stderr, line.as_bytes());
}

/// Counts of a fill, for the step's progress.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FillStats {
    pub linked: u64,
    pub copied: u64,
    /// A composite's files left in its base (not linked, not copied).
    pub kept: u64,
    /// `dest/delta` over the base, not a whole tree in `dest`.
    pub composite: bool,
    /// Copied context files hashed again (the scan's stat did not vouch
    /// for them: see `snapfill_copy`).
    pub hashed: u64,
}

/// A composite snapshot in `dest/delta` when the change is small and only
/// changes or adds files (`snapfill_delta`), else the whole tree in `dest`.
fn fill_either(
    dest: &Path,
    entries: &PreparedEntries,
    from: &LinkSource<'_>,
) -> anyhow::Result<FillStats> {
    if !from.dir.as_os_str().is_empty() {
        let delta = dest.join("delta");
        std::fs::create_dir(&delta).with_context(|| format!("creating {}", delta.display()))?;
        // Any failure of the delta falls back to the whole fill, whose
        // own checks then decide.
        if let Ok(Some(stats)) = super::snapfill_delta::fill_delta(&delta, entries, from) {
            return Ok(stats);
        }
        std::fs::remove_dir_all(&delta).with_context(|| format!("removing {}", delta.display()))?;
    }
    fill(dest, entries, from)
}

/// Fill `dest` (an empty dir) with exactly what `entries` (a COPY layer)
/// hold, linking unchanged files from `from`. Prepared entries have clean,
/// unique paths and hard links to files of the layer, so no set of every
/// path is kept here (it cost ~20 MB at 200,000 files).
pub fn fill(
    dest: &Path,
    entries: &PreparedEntries,
    from: &LinkSource<'_>,
) -> anyhow::Result<FillStats> {
    let mut sorted: Vec<&LayerEntry> = entries.iter().collect();
    // Parents before children; hard links after the files they name.
    sorted.sort_by(|a, b| {
        let link = |e: &LayerEntry| matches!(e.kind, EntryKind::Hardlink { .. });
        (link(a), a.path.as_str()).cmp(&(link(b), b.path.as_str()))
    });
    let mut stats = FillStats::default();
    let mut dirs = Vec::new();
    // Nothing here follows a symlink: `dest` is fresh, so the only links
    // in it are the ones made below; a path through one of them (two
    // sources giving `x -> /etc` and `x/passwd`) is left to the unpacker,
    // which resolves such layers safely.
    let mut links: HashSet<PathBuf> = HashSet::new();
    // Dirs of the previous snapshot seen to be real dirs (no symlinks).
    let mut prev_dirs: HashSet<PathBuf> = HashSet::new();
    // Dirs made here: entries are sorted, so a file's parent is usually
    // one of them, and `create_dir_all` (a failing mkdir and a stat per
    // file) is left for parents no entry described.
    let mut made: HashSet<PathBuf> = HashSet::new();
    let mut open_dirs: Option<DirPair> = None;
    let mut copier = super::snapfill_copy::Copier::new(dest);
    for e in sorted {
        let rel = Path::new(&e.path);
        if rel.as_os_str().is_empty() {
            continue;
        }
        if rel.ancestors().any(|a| links.contains(a)) {
            bail!("{}: a path below a symlink", e.path);
        }
        let path = dest.join(rel);
        let parent_made = rel
            .parent()
            .is_none_or(|p| p.as_os_str().is_empty() || made.contains(p));
        if !parent_made {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        match &e.kind {
            EntryKind::Dir => {
                if path.symlink_metadata().is_err() {
                    std::fs::create_dir(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                }
                made.insert(rel.to_path_buf());
                dirs.push((path, e));
                continue;
            }
            EntryKind::File(src) => {
                if !from.dir.as_os_str().is_empty()
                    && real_dirs_above(&from.dir, rel, &mut prev_dirs)
                    && link_unchanged(&path, rel, e, src, from, dest, &mut open_dirs)?
                {
                    stats.linked += 1;
                    continue;
                }
                copier.file(&path, src, e, from)?;
                stats.copied += 1;
                continue;
            }
            EntryKind::Symlink { target } => {
                links.insert(rel.to_path_buf());
                std::os::unix::fs::symlink(target, &path)
                    .with_context(|| format!("creating {}", path.display()))?;
            }
            EntryKind::Hardlink { target } => {
                let target = Path::new(target);
                if target.ancestors().any(|a| links.contains(a)) {
                    bail!("{}: a hard link to {target:?} below a symlink", e.path);
                }
                std::fs::hard_link(dest.join(target), &path)
                    .with_context(|| format!("linking {}", path.display()))?;
                continue;
            }
            other => bail!("{}: {other:?} entries are left to the unpacker", e.path),
        }
        set_meta(&path, e)?;
    }
    // Deepest first: a child's creation moves its parent's mtime.
    for (path, e) in dirs.iter().rev() {
        set_meta(path, e)?;
    }
    stats.hashed = copier.hashed();
    Ok(stats)
}

/// Whether every dir above `rel` in `root` is a real directory, so a path
/// into `root` stays in it (`known` caches the dirs checked).
pub(super) fn real_dirs_above(root: &Path, rel: &Path, known: &mut HashSet<PathBuf>) -> bool {
    let Some(parent) = rel.parent() else {
        return true;
    };
    for dir in parent.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        if known.contains(dir) {
            return true;
        }
        match root.join(dir).symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    // Only once the whole chain is known good.
    known.extend(
        parent
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .map(Path::to_path_buf),
    );
    true
}

/// The context path (digest map key) of a source file, if it is one.
pub(super) fn context_rel<'a>(src: &'a FileSource, from: &LinkSource<'_>) -> Option<&'a str> {
    let FileSource::Path(p) = src else {
        return None;
    };
    p.strip_prefix(&from.context_root).ok()?.to_str()
}

/// The previous snapshot's and the new one's dir of the files being
/// linked, open: a file is then looked at and linked by its name alone.
/// Four walks of the whole path (about ten components in the store) per
/// linked file were most of the fill's CPU time; the entries are sorted,
/// so one dir's files come together and each dir is opened about once.
struct DirPair {
    parent: PathBuf,
    prev: std::os::fd::OwnedFd,
    dest: std::os::fd::OwnedFd,
}

impl DirPair {
    fn open(from: &Path, dest: &Path, parent: &Path) -> anyhow::Result<DirPair> {
        use nix::fcntl::{open, OFlag};
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let at = |root: &Path| {
            let p = root.join(parent);
            open(&p, flags, nix::sys::stat::Mode::empty())
                .with_context(|| format!("opening {}", p.display()))
        };
        Ok(DirPair {
            parent: parent.to_path_buf(),
            prev: at(from)?,
            dest: at(dest)?,
        })
    }
}

/// Links `from.dir/rel` to `path` (`dest/rel`) when it is the same file as `e`.
fn link_unchanged(
    path: &Path,
    rel: &Path,
    e: &LayerEntry,
    src: &FileSource,
    from: &LinkSource<'_>,
    dest: &Path,
    dirs: &mut Option<DirPair>,
) -> anyhow::Result<bool> {
    use nix::fcntl::AtFlags;
    let Some(key) = context_rel(src, from) else {
        return Ok(false);
    };
    if !from.unchanged(key)
        || from
            .prev_delta
            .as_ref()
            .is_some_and(|(_, f)| f.contains(rel))
    {
        return Ok(false);
    }
    // The source is not stat'ed again: its digest (this build's context
    // scan) is what the layer's cache key and tar were made from, and it
    // equals the one the previous snapshot's file was made from.
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Ok(false);
    };
    if dirs.as_ref().is_none_or(|d| d.parent != parent) {
        *dirs = Some(DirPair::open(&from.dir, dest, parent)?);
    }
    let Some(d) = dirs.as_ref() else {
        return Ok(false);
    };
    let Ok(pm) = nix::sys::stat::fstatat(&d.prev, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return Ok(false);
    };
    let same = same_file_meta(&pm, e, &from.dir.join(rel))?;
    if same {
        // No AT_SYMLINK_FOLLOW: the name is linked as it is (a file, as
        // just checked; the previous snapshot is never written to).
        nix::unistd::linkat(&d.prev, name, &d.dest, name, AtFlags::empty())
            .with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(same)
}

/// Whether `pm` (the stat of `path`, not followed) is a regular file with
/// `e`'s mode, owner, mtime and xattrs.
pub(super) fn same_file_meta(pm: &libc::stat, e: &LayerEntry, path: &Path) -> anyhow::Result<bool> {
    Ok(pm.st_mode & libc::S_IFMT == libc::S_IFREG
        && pm.st_mode & 0o7777 == e.mode
        && (pm.st_uid, pm.st_gid) == (e.uid, e.gid)
        && Timespec::new(pm.st_mtime, pm.st_mtime_nsec as u32) == e.mtime
        && xattrs_of(path)? == sorted(&e.xattrs))
}

pub(super) fn sorted(x: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut v = x.to_vec();
    v.sort();
    v
}

/// Owner, mode (after chown, which clears setuid bits), xattrs, mtime.
pub(super) fn set_meta(path: &Path, e: &LayerEntry) -> anyhow::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let is_link = matches!(e.kind, EntryKind::Symlink { .. });
    std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if !is_link {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    for (name, value) in &e.xattrs {
        let cname = CString::new(name.as_bytes())?;
        // SAFETY: valid C strings and slice.
        let rc = unsafe {
            libc::lsetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setting {name} on {}", path.display()));
        }
    }
    let t = TimeSpec::new(e.mtime.sec, i64::from(e.mtime.nsec));
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("setting the times of {}", path.display()))
}

/// The xattrs a layer keeps, sorted.
pub(super) fn xattrs_of(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    let mut names = vec![0u8; 4096];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("listing xattrs of {}", path.display()));
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.contains(".overlay.") || name == "security.selinux" {
            continue;
        }
        let cname = CString::new(name.as_bytes())?;
        let mut value = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let got = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if got < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("reading {name} of {}", path.display()));
        }
        value.truncate(got as usize);
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;

    /// A layer entry owned by this process, mode 644, mtime 1.
    pub(in crate::engine) fn entry(path: &str, kind: EntryKind) -> LayerEntry {
        LayerEntry {
            path: path.to_string(),
            kind,
            mode: 0o644,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mtime: Timespec::new(1, 0),
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn a_path_below_a_symlink_of_the_layer_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (dest, outside) = (t.path().join("dest"), t.path().join("outside"));
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let none = BTreeMap::new();
        let from = LinkSource {
            dir: t.path().join("none"),
            new_files: &none,
            changed: HashSet::new(),
            context_root: t.path().join("ctx"),
            base_id: String::new(),
            prev_delta: None,
            scan: None,
        };
        let entries = vec![
            entry(
                "x",
                EntryKind::Symlink {
                    target: outside.to_string_lossy().into_owned(),
                },
            ),
            entry("x/pwned", EntryKind::File(FileSource::Bytes(b"!".to_vec()))),
        ];
        let entries = PreparedEntries::new(entries, None).unwrap();
        let err = fill(&dest, &entries, &from).unwrap_err();
        assert!(format!("{err:#}").contains("below a symlink"), "{err:#}");
        assert!(!outside.join("pwned").exists());
        // A plain layer is filled, metadata included.
        let dest2 = t.path().join("dest2");
        std::fs::create_dir_all(&dest2).unwrap();
        let entries = vec![
            entry("d", EntryKind::Dir),
            entry("d/f", EntryKind::File(FileSource::Bytes(b"hi".to_vec()))),
            entry(
                "d/l",
                EntryKind::Hardlink {
                    target: "d/f".into(),
                },
            ),
        ];
        let entries = PreparedEntries::new(entries, None).unwrap();
        let stats = fill(&dest2, &entries, &from).unwrap();
        assert_eq!(
            stats,
            FillStats {
                linked: 0,
                copied: 1,
                ..FillStats::default()
            }
        );
        let m = std::fs::metadata(dest2.join("d/l")).unwrap();
        assert_eq!((m.nlink(), m.mtime()), (2, 1));
    }

    #[test]
    fn unchanged_files_are_linked_from_the_previous_snapshot() {
        let t = tempfile::tempdir().unwrap();
        let (ctx, prev) = (t.path().join("ctx"), t.path().join("prev"));
        for d in [ctx.join("d/e"), prev.join("app/d/e")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut old_files = BTreeMap::new();
        let mut entries = vec![entry("app", EntryKind::Dir), entry("app/d", EntryKind::Dir)];
        entries.push(entry("app/d/e", EntryKind::Dir));
        for (i, name) in ["d/a", "d/b", "d/e/c", "d/z"].iter().enumerate() {
            let body = format!("file {i}");
            std::fs::write(ctx.join(name), &body).unwrap();
            let p = prev.join("app").join(name);
            std::fs::write(&p, &body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let t = nix::sys::time::TimeSpec::new(1, 0);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
            let digest = crate::context::FileDigest(Sha256::digest(body.as_bytes()).into());
            old_files.insert(name.to_string(), digest);
            let src = FileSource::Path(ctx.join(name));
            entries.push(entry(&format!("app/{name}"), EntryKind::File(src)));
        }
        // d/b's mode differs from the previous snapshot's: copied.
        entries[4].mode = 0o600;
        let from = LinkSource {
            dir: prev.clone(),
            new_files: &old_files,
            changed: HashSet::new(),
            context_root: ctx.clone(),
            base_id: String::new(),
            prev_delta: None,
            scan: None,
        };
        let dest = t.path().join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        let entries = PreparedEntries::new(entries, None).unwrap();
        let stats = fill(&dest, &entries, &from).unwrap();
        assert_eq!(
            stats,
            FillStats {
                linked: 3,
                copied: 1,
                // No scan to vouch for d/b.
                hashed: 1,
                ..FillStats::default()
            }
        );
        for name in ["d/a", "d/e/c", "d/z"] {
            let (a, b) = (dest.join("app").join(name), prev.join("app").join(name));
            let (ma, mb) = (
                std::fs::metadata(&a).unwrap(),
                std::fs::metadata(&b).unwrap(),
            );
            assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2), "{name}");
        }
        let b = std::fs::metadata(dest.join("app/d/b")).unwrap();
        assert_eq!((b.nlink(), b.mode() & 0o777), (1, 0o600));
        assert_eq!(std::fs::read(dest.join("app/d/b")).unwrap(), b"file 1");
    }
}
