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
//! Every other file is copied from its source and its digest checked.
//! Snapshots are never written after they are made (overlay writes go to a
//! RUN's upper dir), so sharing inodes between two of them is safe.
//! Anything unexpected (a device node, a digest that changed since the
//! context scan) fails the fill: the RUN then unpacks the layer instead.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::layer::{EntryKind, FileSource, LayerEntry, Timespec};

/// What the previous build of the step left to reuse.
pub struct LinkSource {
    /// The previous layer's snapshot dir.
    pub dir: PathBuf,
    /// Context path → digest, then and now.
    pub old_files: BTreeMap<String, String>,
    pub new_files: BTreeMap<String, String>,
    /// The context root the entries' source paths are under.
    pub context_root: PathBuf,
}

/// Counts of a fill, for the step's progress.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FillStats {
    pub linked: u64,
    pub copied: u64,
}

/// Fill `dest` (an empty dir) with exactly what `entries` (a COPY layer)
/// hold, linking unchanged files from `from`.
pub fn fill(dest: &Path, entries: &[LayerEntry], from: &LinkSource) -> anyhow::Result<FillStats> {
    let mut sorted: Vec<&LayerEntry> = entries.iter().collect();
    // Parents before children; hard links after the files they name.
    sorted.sort_by(|a, b| {
        let link = |e: &LayerEntry| matches!(e.kind, EntryKind::Hardlink { .. });
        (link(a), a.path.as_str()).cmp(&(link(b), b.path.as_str()))
    });
    let mut stats = FillStats::default();
    let mut dirs = Vec::new();
    for e in sorted {
        let rel = clean_rel(&e.path)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dest.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        match &e.kind {
            EntryKind::Dir => {
                if !path.is_dir() {
                    std::fs::create_dir(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                }
                dirs.push((path, e));
                continue;
            }
            EntryKind::File(src) => {
                if link_unchanged(&path, &rel, e, src, from)? {
                    stats.linked += 1;
                    continue;
                }
                copy_file(&path, src, from)?;
                stats.copied += 1;
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &path)
                    .with_context(|| format!("creating {}", path.display()))?;
            }
            EntryKind::Hardlink { target } => {
                let target = dest.join(clean_rel(target)?);
                std::fs::hard_link(&target, &path)
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
    Ok(stats)
}

fn clean_rel(path: &str) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!("entry {path:?} has a '..' component"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The context path (digest map key) of a source file, if it is one.
fn context_rel<'a>(src: &'a FileSource, from: &LinkSource) -> Option<&'a str> {
    let FileSource::Path(p) = src else {
        return None;
    };
    p.strip_prefix(&from.context_root).ok()?.to_str()
}

/// Links `from.dir/rel` to `path` when it is the same file as `e`.
fn link_unchanged(
    path: &Path,
    rel: &Path,
    e: &LayerEntry,
    src: &FileSource,
    from: &LinkSource,
) -> anyhow::Result<bool> {
    let Some(key) = context_rel(src, from) else {
        return Ok(false);
    };
    let (Some(old), Some(new)) = (from.old_files.get(key), from.new_files.get(key)) else {
        return Ok(false);
    };
    let FileSource::Path(src_path) = src else {
        return Ok(false);
    };
    let prev = from.dir.join(rel);
    let (Ok(pm), Ok(sm)) = (prev.symlink_metadata(), src_path.symlink_metadata()) else {
        return Ok(false);
    };
    let same = old == new
        && pm.is_file()
        && pm.len() == sm.len()
        && pm.mode() & 0o7777 == e.mode
        && (pm.uid(), pm.gid()) == (e.uid, e.gid)
        && Timespec::new(pm.mtime(), pm.mtime_nsec() as u32) == e.mtime
        && xattrs_of(&prev)? == sorted(&e.xattrs);
    if same {
        std::fs::hard_link(&prev, path).with_context(|| format!("linking {}", path.display()))?;
    }
    Ok(same)
}

fn sorted(x: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut v = x.to_vec();
    v.sort();
    v
}

/// Copies a file's content from its source; a context file must still
/// have the digest its cache key was made with.
fn copy_file(path: &Path, src: &FileSource, from: &LinkSource) -> anyhow::Result<()> {
    let mut out =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    match src {
        FileSource::Bytes(b) => out.write_all(b)?,
        FileSource::Path(p) => {
            let mut input =
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let got = format!("sha256:{}", hex::encode(hasher.finalize()));
            if let Some(want) = context_rel(src, from).and_then(|k| from.new_files.get(k)) {
                if &got != want {
                    bail!("{} changed during the build", p.display());
                }
            }
        }
    }
    Ok(())
}

/// Owner, mode (after chown, which clears setuid bits), xattrs, mtime.
fn set_meta(path: &Path, e: &LayerEntry) -> anyhow::Result<()> {
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
fn xattrs_of(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
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
