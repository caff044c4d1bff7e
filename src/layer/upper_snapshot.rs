//! A RUN's overlay upper dir made into the very tree that unpacking its
//! layer (the tar written from these `entries`, which were read from this
//! upper dir) gives in overlay form (`unpack_layer` with
//! `overlay_opaque_xattr`), so the engine can keep it as the layer's
//! snapshot instead of unpacking the layer again at the next RUN.
//!
//! The upper dir holds more than the layer: mount-point stubs the sandbox
//! made in the root, objects copied up but unchanged (a dir whose new file
//! was removed again, a file chmod'ed to its own mode), sockets, whiteouts
//! of paths only the sandbox's stub lower had, and overlayfs' own xattrs
//! (`trusted.overlay.origin`, `impure`, `nlink`, an opaque mark on a dir
//! with nothing below it). Those are removed; dirs the layer adds for mount
//! points are created; mtimes are set to the entries' (clamped by
//! SOURCE_DATE_EPOCH). Then every entry is compared with the object at its
//! path — type, mode, owner, link target, device, hard-link group, xattrs,
//! opaque mark — and any difference is a refusal: the caller drops the
//! upper and the layer is unpacked as before. Rather than reasoning about
//! every way the tar normalizes a tree, the check is the proof.
//!
//! Names the unpack reads as markers (`.wh.*`) are refused outright: the
//! tar carries them as written, and the unpack would make them whiteouts.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};

use super::entry::{EntryKind, FileSource, LayerEntry, Timespec, WHITEOUT_PREFIX};
use super::xattr;

/// What the layer has at one path.
#[derive(Default)]
struct Want<'a> {
    entry: Option<&'a LayerEntry>,
    whiteout: bool,
    opaque: bool,
}

/// Turns `upper` into the tree unpacking the layer of `entries` gives, with
/// `opaque_xattr` as the opaque mark. `Ok(Err(why))`: it cannot be (the
/// upper is then left half-changed: the caller must drop it); `Err`: an
/// I/O error, which means the same to the caller.
pub fn upper_as_snapshot(
    upper: &Path,
    entries: &[LayerEntry],
    opaque_xattr: &str,
) -> Result<std::result::Result<(), String>> {
    let (want, links) = match wanted(entries) {
        Ok(w) => w,
        Err(why) => return Ok(Err(why)),
    };
    if let Err(why) = prune(upper, &want, opaque_xattr)? {
        return Ok(Err(why));
    }
    if let Err(why) = add_missing_dirs(upper, entries)? {
        return Ok(Err(why));
    }
    verify(upper, entries, &want, &links, opaque_xattr)
}

type Wanted<'a> = (HashMap<&'a str, Want<'a>>, HashMap<&'a str, u64>);

/// The layer by path, and per hard-link target its number of extra names.
fn wanted(entries: &[LayerEntry]) -> std::result::Result<Wanted<'_>, String> {
    let mut want: HashMap<&str, Want> = HashMap::with_capacity(entries.len());
    let mut links: HashMap<&str, u64> = HashMap::new();
    for e in entries {
        let w = want.entry(e.path.as_str()).or_default();
        match &e.kind {
            EntryKind::Whiteout => w.whiteout = true,
            EntryKind::Opaque => w.opaque = true,
            kind => {
                let name = e.path.rsplit('/').next().unwrap_or_default();
                if name.starts_with(WHITEOUT_PREFIX) {
                    return Err(format!(
                        "/{} is a name the unpack reads as a whiteout",
                        e.path
                    ));
                }
                if let EntryKind::Hardlink { target } = kind {
                    *links.entry(target.as_str()).or_default() += 1;
                }
                w.entry = Some(e);
            }
        }
    }
    for (path, w) in &want {
        let dir = w.entry.is_some_and(|e| e.kind == EntryKind::Dir);
        if (w.whiteout && w.entry.is_some()) || (w.opaque && !dir) {
            return Err(format!("/{path}: a marker the upper dir cannot hold as is"));
        }
    }
    Ok((want, links))
}

/// Removes what the layer lacks (deepest first) and overlayfs' xattrs.
fn prune(
    upper: &Path,
    want: &HashMap<&str, Want>,
    opaque_xattr: &str,
) -> Result<std::result::Result<(), String>> {
    for item in walkdir::WalkDir::new(upper)
        .follow_links(false)
        .contents_first(true)
    {
        let item = item.with_context(|| format!("walking {}", upper.display()))?;
        let path = item.path();
        let rel = path.strip_prefix(upper).context("walking the upper dir")?;
        let Some(rel) = rel.to_str() else {
            return Ok(Err(format!("{} has a non-UTF-8 name", path.display())));
        };
        let meta = item
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        let is_whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
        let w = want.get(rel);
        let keep = match w {
            _ if rel.is_empty() => true,
            Some(w) if is_whiteout => w.whiteout,
            Some(w) => w.entry.is_some(),
            None => false,
        };
        if !keep {
            // A marker or entry the layer has in another form is no extra.
            if w.is_some_and(|w| w.whiteout || w.entry.is_some()) {
                return Ok(Err(format!("/{rel} differs in type from the layer")));
            }
            let removed = match meta.is_dir() {
                true => std::fs::remove_dir(path),
                false => std::fs::remove_file(path),
            };
            if let Err(e) = removed {
                // A dir the layer lacks holding something it has (a stub
                // dir with a file of the step below it).
                return Ok(Err(format!("/{rel} is not in the layer: {e}")));
            }
            continue;
        }
        if meta.file_type().is_symlink() {
            // Overlay marks no symlink, and removing trusted xattrs from one
            // is refused by some filesystems: the compare below judges it.
            continue;
        }
        let opaque = w.is_some_and(|w| w.opaque);
        for (name, _) in xattr::read_all(path)
            .with_context(|| format!("reading xattrs of {}", path.display()))?
        {
            if name.contains(".overlay.") && !(opaque && name == opaque_xattr) {
                remove_xattr(path, &name)?;
            }
        }
    }
    Ok(Ok(()))
}

/// Creates the dirs the layer adds for mount points, which the step's
/// sandbox showed from its stub lower and never wrote to the upper dir.
fn add_missing_dirs(
    upper: &Path,
    entries: &[LayerEntry],
) -> Result<std::result::Result<(), String>> {
    // Entries are in tar order: a parent comes before its children.
    for e in entries {
        if matches!(e.kind, EntryKind::Opaque) {
            continue;
        }
        let path = upper.join(&e.path);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        if e.kind != EntryKind::Dir {
            return Ok(Err(format!(
                "/{} is in the layer, not in the upper dir",
                e.path
            )));
        }
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid))
            .with_context(|| format!("chown {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(Ok(()))
}

/// Compares every entry with the object at its path, setting mtimes to
/// the entries' on the way (the unpack sets them from the tar).
fn verify(
    upper: &Path,
    entries: &[LayerEntry],
    want: &HashMap<&str, Want>,
    links: &HashMap<&str, u64>,
    opaque_xattr: &str,
) -> Result<std::result::Result<(), String>> {
    let root = upper
        .symlink_metadata()
        .with_context(|| format!("stat {}", upper.display()))?;
    if (root.uid(), root.gid()) != (0, 0) || !kept_xattrs(upper, opaque_xattr)?.is_empty() {
        return Ok(Err("the step changed the root dir's owner or xattrs".into()));
    }
    let mut seen_inodes: HashMap<(u64, u64), &str> = HashMap::new();
    let mut times: Vec<(&Path, &LayerEntry)> = Vec::new();
    let paths: Vec<std::path::PathBuf> = entries.iter().map(|e| upper.join(&e.path)).collect();
    for (e, path) in entries.iter().zip(&paths) {
        if e.kind == EntryKind::Opaque {
            continue;
        }
        let meta = match path.symlink_metadata() {
            Ok(m) => m,
            Err(_) => return Ok(Err(format!("/{} is missing from the upper dir", e.path))),
        };
        if let Err(why) = same_object(e, path, &meta, links, &mut seen_inodes) {
            return Ok(Err(format!("/{}: {why}", e.path)));
        }
        if matches!(e.kind, EntryKind::Whiteout | EntryKind::Hardlink { .. }) {
            continue;
        }
        let opaque = want.get(e.path.as_str()).is_some_and(|w| w.opaque);
        let has_opaque = xattr::get(path, opaque_xattr)
            .with_context(|| format!("reading xattrs of {}", path.display()))?
            .is_some_and(|v| v == b"y");
        if meta.is_dir() && opaque != has_opaque {
            return Ok(Err(format!("/{}: the opaque mark differs", e.path)));
        }
        let mut have = match meta.file_type().is_symlink() {
            // Symlinks carry no xattrs the layer keeps (user.* is refused
            // on them; a trusted.overlay.* one is not in the layer).
            true => Vec::new(),
            false => kept_xattrs(path, opaque_xattr)?,
        };
        let mut expected = e.xattrs.clone();
        have.sort();
        expected.sort();
        if have != expected {
            return Ok(Err(format!(
                "/{}: its xattrs differ from the layer's",
                e.path
            )));
        }
        if (meta.mtime(), meta.mtime_nsec()) != (e.mtime.sec, i64::from(e.mtime.nsec)) {
            times.push((path, e));
        }
    }
    for (path, e) in times {
        set_times(path, e.mtime)?;
    }
    Ok(Ok(()))
}

/// One entry against the object at its path, all but xattrs and mtime.
fn same_object<'a>(
    e: &'a LayerEntry,
    path: &Path,
    meta: &std::fs::Metadata,
    links: &HashMap<&str, u64>,
    seen_inodes: &mut HashMap<(u64, u64), &'a str>,
) -> std::result::Result<(), String> {
    let ft = meta.file_type();
    let owner_mode = || {
        let same = meta.uid() == e.uid && meta.gid() == e.gid;
        let mode = ft.is_symlink() || meta.mode() & 0o7777 == e.mode;
        (same && mode)
            .then_some(())
            .ok_or_else(|| "owner or mode differs".to_string())
    };
    let dev = |major: u32, minor: u32| libc::makedev(major, minor) as u64;
    match &e.kind {
        EntryKind::Whiteout => (ft.is_char_device() && meta.rdev() == 0)
            .then_some(())
            .ok_or_else(|| "not a whiteout".to_string()),
        EntryKind::File(FileSource::Path(src)) => {
            // The tar was written from this very file: same content.
            if src.as_path() != path || !ft.is_file() {
                return Err("not the file the layer was written from".into());
            }
            if meta.nlink() != 1 + links.get(e.path.as_str()).copied().unwrap_or(0) {
                return Err("its hard links differ from the layer's".into());
            }
            seen_inodes.insert((meta.dev(), meta.ino()), e.path.as_str());
            owner_mode()
        }
        EntryKind::File(FileSource::Bytes(_)) => Err("content not from the upper dir".into()),
        EntryKind::Hardlink { target } => {
            let same = seen_inodes.get(&(meta.dev(), meta.ino())) == Some(&target.as_str());
            same.then_some(())
                .ok_or_else(|| format!("not a hard link of /{target}"))
        }
        EntryKind::Dir if ft.is_dir() => owner_mode(),
        EntryKind::Symlink { target } if ft.is_symlink() => {
            let now = std::fs::read_link(path).map_err(|e| e.to_string())?;
            if now.as_os_str().as_bytes() != target.as_bytes() {
                return Err("its link target differs".into());
            }
            owner_mode()
        }
        EntryKind::CharDevice { major, minor }
            if ft.is_char_device() && meta.rdev() == dev(*major, *minor) =>
        {
            owner_mode()
        }
        EntryKind::BlockDevice { major, minor }
            if ft.is_block_device() && meta.rdev() == dev(*major, *minor) =>
        {
            owner_mode()
        }
        EntryKind::Fifo if ft.is_fifo() => owner_mode(),
        _ => Err("its type differs".into()),
    }
}

/// The xattrs of `path` the snapshot keeps, but the opaque mark.
fn kept_xattrs(path: &Path, opaque_xattr: &str) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(xattr::read_all(path)
        .with_context(|| format!("reading xattrs of {}", path.display()))?
        .into_iter()
        .filter(|(k, _)| k != opaque_xattr)
        .collect())
}

fn remove_xattr(path: &Path, name: &str) -> Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    let n = CString::new(name).context("an xattr name with a NUL byte")?;
    // SAFETY: two valid C strings.
    if unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| format!("removing xattr {name} of {}", path.display()));
    }
    Ok(())
}

/// mtime (and atime, as the unpack does) of `path`, not following a symlink.
fn set_times(path: &Path, t: Timespec) -> Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    let ts = libc::timespec {
        tv_sec: t.sec as libc::time_t,
        tv_nsec: t.nsec as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: a valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| format!("setting the mtime of {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(upper: &Path, rel: &str) -> LayerEntry {
        let p = upper.join(rel);
        let m = p.symlink_metadata().unwrap();
        LayerEntry {
            path: rel.to_string(),
            kind: EntryKind::File(FileSource::Path(p)),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: Timespec::new(m.mtime(), m.mtime_nsec() as u32),
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn extras_go_and_mtimes_follow_the_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let up = tmp.path();
        std::fs::write(up.join("a"), "x").unwrap();
        std::fs::create_dir_all(up.join("stub/deep")).unwrap();
        std::fs::write(up.join("stub/deep/resolv.conf"), "").unwrap();
        let mut a = file(up, "a");
        a.mtime = Timespec::new(7, 0);
        let r = upper_as_snapshot(up, &[a], "trusted.overlay.opaque").unwrap();
        // The root dir must be root's, as an unpacked snapshot's is.
        if !nix::unistd::geteuid().is_root() {
            assert!(r.unwrap_err().contains("root dir"));
            return;
        }
        assert_eq!(r, Ok(()));
        assert!(!up.join("stub").exists());
        assert_eq!(up.join("a").symlink_metadata().unwrap().mtime(), 7);
    }

    #[test]
    fn a_name_the_unpack_reads_as_a_whiteout_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(".wh.etc"), "x").unwrap();
        let e = file(tmp.path(), ".wh.etc");
        let r = upper_as_snapshot(tmp.path(), &[e], "trusted.overlay.opaque").unwrap();
        assert!(r.unwrap_err().contains("whiteout"));
        // Refused before anything was changed.
        assert!(tmp.path().join(".wh.etc").exists());
    }

    #[test]
    fn a_file_not_written_from_the_upper_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        let mut e = file(tmp.path(), "f");
        e.kind = EntryKind::File(FileSource::Bytes(b"y".to_vec()));
        let r = upper_as_snapshot(tmp.path(), &[e], "trusted.overlay.opaque").unwrap();
        if nix::unistd::geteuid().is_root() {
            assert!(r.unwrap_err().contains("/f: content"), "refused");
        } else {
            assert!(r.is_err());
        }
    }
}
