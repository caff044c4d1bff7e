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

/// What the layer has at one path, and whether the walk found it.
#[derive(Default)]
struct Want<'a> {
    entry: Option<&'a LayerEntry>,
    whiteout: bool,
    opaque: bool,
    found: bool,
}

/// Names and values.
type Xattrs = Vec<(String, Vec<u8>)>;

/// Refused: the upper dir cannot be the layer's snapshot (why).
type Verdict = std::result::Result<(), String>;

/// Turns `upper` into the tree unpacking the layer of `entries` gives, with
/// `opaque_xattr` as the opaque mark. `Ok(Err(why))`: it cannot be (the
/// upper is then left half-changed: the caller must drop it); `Err`: an
/// I/O error, which means the same to the caller. One walk: each object is
/// stat'ed and its xattrs listed once.
pub fn upper_as_snapshot(
    upper: &Path,
    entries: &[LayerEntry],
    opaque_xattr: &str,
) -> Result<Verdict> {
    let (mut want, link_counts) = match wanted(entries) {
        Ok(w) => w,
        Err(why) => return Ok(Err(why)),
    };
    let mut walk = Walk {
        upper,
        opaque_xattr,
        link_counts,
        inodes: HashMap::new(),
        links: Vec::new(),
        times: Vec::new(),
    };
    for item in walkdir::WalkDir::new(upper)
        .follow_links(false)
        .contents_first(true)
    {
        let item = item.with_context(|| format!("walking {}", upper.display()))?;
        if let Err(why) = walk.visit(item.path(), &mut want)? {
            return Ok(Err(why));
        }
    }
    for (path, ino, target) in &walk.links {
        if walk.inodes.get(ino) != Some(target) {
            return Ok(Err(format!("/{path}: not a hard link of /{target}")));
        }
    }
    if let Err(why) = add_missing_dirs(&mut walk, entries, &want)? {
        return Ok(Err(why));
    }
    // Last: removing and making entries changed their dirs' mtimes.
    for (path, t) in &walk.times {
        set_times(path, *t)?;
    }
    Ok(Ok(()))
}

type Wanted<'a> = (HashMap<&'a str, Want<'a>>, HashMap<&'a str, u64>);

/// The layer by path, and per hard-link target its number of other names;
/// refuses what no upper dir can hold as the unpack would write it.
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

/// The walk's state.
struct Walk<'a> {
    upper: &'a Path,
    opaque_xattr: &'a str,
    /// Per file entry, the number of hard-link entries naming it.
    link_counts: HashMap<&'a str, u64>,
    /// File entries by inode, for their hard links.
    inodes: HashMap<(u64, u64), &'a str>,
    /// Hard-link entries: (path, its inode, the entry it must share it with).
    links: Vec<(&'a str, (u64, u64), &'a str)>,
    /// mtimes to set once nothing more is removed or made.
    times: Vec<(std::path::PathBuf, Timespec)>,
}

impl<'a> Walk<'a> {
    /// One object of the upper dir (children before their dir): removed
    /// when the layer lacks it, else stripped of overlayfs' xattrs and
    /// compared with its entry.
    fn visit(&mut self, path: &Path, want: &mut HashMap<&'a str, Want<'a>>) -> Result<Verdict> {
        let rel = path
            .strip_prefix(self.upper)
            .context("walking the upper dir")?;
        let Some(rel) = rel.to_str() else {
            return Ok(Err(format!("{} has a non-UTF-8 name", path.display())));
        };
        let meta = path
            .symlink_metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        if rel.is_empty() {
            // The layer has no entry for `/`: the unpack's is root's, bare.
            let extra = self.xattrs(path, false)?.0;
            if (meta.uid(), meta.gid()) != (0, 0) || !extra.is_empty() {
                return Ok(Err("the step changed the root dir's owner or xattrs".into()));
            }
            return Ok(Ok(()));
        }
        let is_whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
        let Some(w) = want
            .get_mut(rel)
            .filter(|w| w.whiteout || w.entry.is_some())
        else {
            return Ok(remove_extra(path, rel, &meta));
        };
        w.found = true;
        let (w_whiteout, w_opaque) = (w.whiteout, w.opaque);
        let Some(e) = w.entry else {
            return Ok(match is_whiteout && w_whiteout {
                true => Ok(()),
                false => Err(format!("/{rel}: not a whiteout")),
            });
        };
        if let Err(why) = self.same_object(e, &meta) {
            return Ok(Err(format!("/{rel}: {why}")));
        }
        if matches!(e.kind, EntryKind::Hardlink { .. }) {
            return Ok(Ok(()));
        }
        let (mut have, opaque) = self.xattrs(path, w_opaque)?;
        if meta.is_dir() && opaque != w_opaque {
            return Ok(Err(format!("/{rel}: the opaque mark differs")));
        }
        let mut expected = e.xattrs.clone();
        have.sort();
        expected.sort();
        if have != expected {
            return Ok(Err(format!("/{rel}: its xattrs differ from the layer's")));
        }
        // Dirs always: removing an extra below one changes its mtime.
        if meta.is_dir()
            || (meta.mtime(), meta.mtime_nsec()) != (e.mtime.sec, i64::from(e.mtime.nsec))
        {
            self.times.push((path.to_path_buf(), e.mtime));
        }
        Ok(Ok(()))
    }

    /// The xattrs of `path` once overlayfs' own are removed (all names
    /// with `.overlay.`, but the opaque mark when `keep_opaque`), without
    /// the opaque mark; and whether that mark is set.
    fn xattrs(&self, path: &Path, keep_opaque: bool) -> Result<(Xattrs, bool)> {
        let mut rest = Vec::new();
        let mut opaque = false;
        for (name, value) in xattr::read_all(path)
            .with_context(|| format!("reading xattrs of {}", path.display()))?
        {
            if keep_opaque && name == self.opaque_xattr {
                opaque = value == b"y";
            } else if name.contains(".overlay.") {
                remove_xattr(path, &name)?;
            } else {
                rest.push((name, value));
            }
        }
        Ok((rest, opaque))
    }

    /// One entry against the object at its path: type, mode, owner, link
    /// target, device, hard-link group.
    fn same_object(&mut self, e: &'a LayerEntry, meta: &std::fs::Metadata) -> Verdict {
        let ft = meta.file_type();
        let ino = (meta.dev(), meta.ino());
        let path = self.upper.join(&e.path);
        let dev = |major: u32, minor: u32| libc::makedev(major, minor) as u64;
        let same_type = match &e.kind {
            EntryKind::File(FileSource::Path(src)) => {
                // The tar was written from this very file: same content.
                if src.as_path() != path || !ft.is_file() {
                    return Err("not the file the layer was written from".into());
                }
                self.inodes.insert(ino, e.path.as_str());
                true
            }
            EntryKind::File(FileSource::Bytes(_)) => {
                return Err("content not from the upper dir".into())
            }
            EntryKind::Hardlink { target } => {
                self.links.push((e.path.as_str(), ino, target.as_str()));
                return match ft.is_file() {
                    true => Ok(()),
                    false => Err("not a file".into()),
                };
            }
            EntryKind::Dir => ft.is_dir(),
            EntryKind::Symlink { target } => {
                let now = std::fs::read_link(&path).map_err(|e| e.to_string());
                if !ft.is_symlink() || now?.as_os_str().as_bytes() != target.as_bytes() {
                    return Err("its link target differs".into());
                }
                true
            }
            EntryKind::CharDevice { major, minor } => {
                ft.is_char_device() && meta.rdev() == dev(*major, *minor)
            }
            EntryKind::BlockDevice { major, minor } => {
                ft.is_block_device() && meta.rdev() == dev(*major, *minor)
            }
            EntryKind::Fifo => ft.is_fifo(),
            EntryKind::Whiteout | EntryKind::Opaque => false,
        };
        if !same_type {
            return Err("its type differs".into());
        }
        // Every name of a file is an entry (the others are removed).
        if ft.is_file() {
            let links = 1 + self.link_counts.get(e.path.as_str()).copied().unwrap_or(0);
            if meta.nlink() != links {
                return Err("its hard links differ from the layer's".into());
            }
        }
        let mode = ft.is_symlink() || meta.mode() & 0o7777 == e.mode;
        match meta.uid() == e.uid && meta.gid() == e.gid && mode {
            true => Ok(()),
            false => Err("owner or mode differs".into()),
        }
    }
}
/// Removes an object the layer lacks (its children went before it): a
/// dir only when empty, so nothing the layer holds goes with it.
fn remove_extra(path: &Path, rel: &str, meta: &std::fs::Metadata) -> Verdict {
    let removed = match meta.is_dir() {
        true => std::fs::remove_dir(path),
        false => std::fs::remove_file(path),
    };
    // A dir the layer lacks holding something it has (a stub dir with a
    // file of the step below it).
    removed.map_err(|e| format!("/{rel} is not in the layer: {e}"))
}

/// Makes the dirs the layer adds for mount points, which the step's
/// sandbox showed from its stub lower and never wrote to the upper dir;
/// anything else the walk did not find is a refusal.
fn add_missing_dirs(
    walk: &mut Walk<'_>,
    entries: &[LayerEntry],
    want: &HashMap<&str, Want>,
) -> Result<Verdict> {
    use std::os::unix::fs::PermissionsExt;
    // Entries are in tar order: a parent comes before its children.
    for e in entries {
        if e.kind == EntryKind::Opaque || want.get(e.path.as_str()).is_some_and(|w| w.found) {
            continue;
        }
        if e.kind != EntryKind::Dir {
            return Ok(Err(format!(
                "/{} is in the layer, not in the upper dir",
                e.path
            )));
        }
        let path = walk.upper.join(&e.path);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid))
            .with_context(|| format!("chown {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
            .with_context(|| format!("chmod {}", path.display()))?;
        walk.times.push((path, e.mtime));
    }
    Ok(Ok(()))
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
