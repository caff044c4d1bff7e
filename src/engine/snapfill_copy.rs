//! Copying a layer's regular files into a snapshot fill (`snapfill`,
//! `snapfill_delta`) at about the cost of `cp -a`: a fresh store's first
//! RUN after `COPY . .` waits for the whole copy (20,000 files, 300 MB in
//! the CI job of `docs/benchmarks.md`).
//!
//! - A context file whose opened descriptor has the stat the scan saw
//!   (`ContextIndex::vouched_digest`: device, inode, size, mtime, ctime,
//!   settled before the scan) has the scan's digest and is not hashed
//!   again; its stat is checked once more after the copy, since any change
//!   to a file settled before the scan moves its ctime. Any other context
//!   file is hashed as it is read and must have the key's digest.
//! - Data extents are copied by the kernel (`layer::copy_sparse_with`),
//!   holes kept; the read path reuses one buffer per fill.
//! - Files are created and opened relative to their open parent dirs
//!   (entries are sorted, so one dir's files come together), and their
//!   metadata is set through the descriptor: by path, each call walked the
//!   whole store or context path again.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

use crate::layer::{FileSource, LayerEntry};

use super::snapfill::{context_rel, LinkSource};

/// What copying files into a fill keeps from one file to the next.
pub(super) struct Copier {
    /// The read buffer where the kernel cannot copy or the file is hashed
    /// (one per fill: a fresh zeroed 128 KiB per file was a tenth of the
    /// fill's CPU).
    buf: Vec<u8>,
    /// This process's (uid, gid), when files created in the fill get them
    /// (see [`Copier::new`]): a chown to the same owner is then skipped.
    created: Option<(u32, u32)>,
    /// The umask new files are created under, when it alone decides
    /// their mode (no default ACL on the fill's dir): a file whose mode
    /// has no special bits and nothing the umask removes is created with
    /// it, not chmod-ed afterwards.
    umask: Option<u32>,
    /// The last new file's parent dir and the last source's, open.
    dest_dir: Option<(PathBuf, OwnedFd)>,
    src_dir: Option<(PathBuf, OwnedFd)>,
    /// Context files hashed again so far.
    hashed: u64,
}

impl Copier {
    /// For a fill in `dir` (fresh, every dir below it made by this
    /// process): a file created there is owned by our uid, and by our gid
    /// when `dir`'s group is ours (a setgid dir or a `grpid` mount give
    /// new files and dirs their parent's group, which is then ours too).
    pub(super) fn new(dir: &Path) -> Copier {
        use std::os::unix::fs::MetadataExt;
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let ours = std::fs::metadata(dir).is_ok_and(|m| m.gid() == gid);
        // A default ACL (inherited by every dir made below) would set new
        // files' modes instead of the umask.
        let acl = !matches!(xattr::get(dir, "system.posix_acl_default"), Ok(None));
        Copier {
            buf: Vec::new(),
            created: ours.then_some((uid, gid)),
            umask: if acl { None } else { process_umask() },
            dest_dir: None,
            src_dir: None,
            hashed: 0,
        }
    }

    /// How many copied context files were hashed again.
    pub(super) fn hashed(&self) -> u64 {
        self.hashed
    }

    /// Creates `path` (its parent already made) with `e`'s content and
    /// metadata (`e` a regular file read from `src`).
    pub(super) fn file(
        &mut self,
        path: &Path,
        src: &FileSource,
        e: &LayerEntry,
        from: &LinkSource<'_>,
    ) -> anyhow::Result<()> {
        let plain = self
            .umask
            .is_some_and(|u| e.mode & !0o777 == 0 && e.mode & u == 0);
        let mode = if plain { e.mode } else { 0o600 };
        let out = self.copy_file(path, src, from, mode)?;
        set_file_meta(&out, path, e, self.created, !plain)
    }

    /// Copies a file's content from its source, returning the new file,
    /// still open. A context file must still have the digest its cache key
    /// was made with (see the module doc).
    fn copy_file(
        &mut self,
        path: &Path,
        src: &FileSource,
        from: &LinkSource<'_>,
        mode: u32,
    ) -> anyhow::Result<std::fs::File> {
        // O_NOFOLLOW: the fill's dirs are fresh; a name is never a link.
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let mut out = open_in(
            &mut self.dest_dir,
            path,
            flags,
            Mode::from_bits_truncate(mode),
        )
        .with_context(|| format!("creating {}", path.display()))?;
        let p = match src {
            FileSource::Bytes(b) => {
                out.write_all(b)
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(out);
            }
            FileSource::Path(p) => p,
        };
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW;
        let input = open_in(&mut self.src_dir, p, flags, Mode::empty())
            .with_context(|| format!("opening {}", p.display()))?;
        let meta = input
            .metadata()
            .with_context(|| format!("stat {}", p.display()))?;
        let rel = context_rel(src, from);
        let want = rel.and_then(|k| from.new_files.get(k));
        let vouched = match (rel, want, &from.scan) {
            (Some(rel), Some(want), Some(scan)) => scan.vouched_digest(rel, &meta) == Some(*want),
            // Not a context file: nothing to check it against.
            (_, None, _) => true,
            _ => false,
        };
        if vouched {
            crate::layer::copy_sparse_with(&input, &meta, &out, &mut self.buf)
                .with_context(|| format!("writing {}", path.display()))?;
            // Settled before the scan: a change since, even during the
            // copy, has moved the ctime.
            let after = input
                .metadata()
                .with_context(|| format!("stat {}", p.display()))?;
            if want.is_some() && !same_stat(&meta, &after) {
                bail!("{} changed during the build", p.display());
            }
            return Ok(out);
        }
        // Hashed as it is read; holes kept as the unpacker keeps them.
        self.hashed += 1;
        let mut hashing = HashingReader {
            inner: input,
            hasher: Sha256::new(),
        };
        crate::layer::write_sparse_buf(&mut hashing, &out, &mut self.buf)
            .with_context(|| format!("writing {}", path.display()))?;
        let got = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
        if want.is_some_and(|want| *want != *got) {
            bail!("{} changed during the build", p.display());
        }
        Ok(out)
    }
}

/// This process's umask, read without changing it (`umask(2)` sets it,
/// for every thread at once).
fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Opens `path` relative to its parent dir, kept open in `dir` for the
/// next file of the same dir. The parent is opened by path, symlinks
/// followed as a path open of the file follows them (a context given as
/// a symlink; the fill never makes a path below a symlink of its own).
fn open_in(
    dir: &mut Option<(PathBuf, OwnedFd)>,
    path: &Path,
    flags: OFlag,
    mode: Mode,
) -> anyhow::Result<std::fs::File> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("{}: not a file path", path.display());
    };
    if dir.as_ref().is_none_or(|(p, _)| p != parent) {
        let dflags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(parent, dflags, Mode::empty())
            .with_context(|| format!("opening {}", parent.display()))?;
        *dir = Some((parent.to_path_buf(), fd));
    }
    let Some((_, fd)) = dir.as_ref() else {
        bail!("{}: no parent dir", path.display());
    };
    let file = nix::fcntl::openat(fd.as_fd(), name, flags | OFlag::O_CLOEXEC, mode)?;
    Ok(std::fs::File::from(file))
}

/// Whether two fstats of one open file show no change between them.
fn same_stat(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let stamp = |m: &std::fs::Metadata| {
        (
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    };
    stamp(a) == stamp(b)
}

/// A reader that hashes what passes through it.
struct HashingReader {
    inner: std::fs::File,
    hasher: Sha256,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// `snapfill::set_meta` of a regular file through its open descriptor.
/// The chown is skipped when the file was created with `e`'s owner
/// already (`created`), the chmod unless `chmod` (the file was created
/// with `e`'s mode, which has no setuid or setgid bit a chown clears).
fn set_file_meta(
    f: &std::fs::File,
    path: &Path,
    e: &LayerEntry,
    created: Option<(u32, u32)>,
    chmod: bool,
) -> anyhow::Result<()> {
    if created != Some((e.uid, e.gid)) {
        std::os::unix::fs::fchown(f, Some(e.uid), Some(e.gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    if chmod {
        // After the chown, which clears setuid bits.
        f.set_permissions(std::fs::Permissions::from_mode(e.mode))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    for (name, value) in &e.xattrs {
        crate::layer::set_xattr_fd(f.as_fd(), name, value)
            .with_context(|| format!("setting {name} on {}", path.display()))?;
    }
    let t = nix::sys::time::TimeSpec::new(e.mtime.sec, i64::from(e.mtime.nsec));
    nix::sys::stat::futimens(f, &t, &t)
        .with_context(|| format!("setting the times of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    use crate::engine::snapfill::tests::entry;
    use crate::engine::snapfill::{fill, sorted, xattrs_of};
    use crate::layer::{EntryKind, PreparedEntries};

    /// A context file the scan vouches for (same stat, settled before the
    /// scan) is copied without being hashed again; once it changed, even
    /// with its size and mtime put back, it is hashed and the fill fails.
    #[test]
    fn a_vouched_file_is_not_hashed_again_and_a_changed_one_fails_the_fill() {
        use crate::context::{scan, IgnoreRules};
        let t = tempfile::tempdir().unwrap();
        // The context as given: a symlink to its dir.
        std::fs::create_dir(t.path().join("real")).unwrap();
        let ctx = t.path().join("ctx");
        std::os::unix::fs::symlink("real", &ctx).unwrap();
        std::fs::write(ctx.join("a"), b"aaaa").unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(ctx.join("big"), &big).unwrap();
        crate::context::scan_tests::next_second();
        let scan_now = || scan(&ctx, "Dockerfile", &IgnoreRules::default(), None).unwrap();
        let (mut idx, idx2) = (scan_now(), scan_now());
        let real: BTreeMap<String, crate::context::FileDigest> = ["a", "big"]
            .iter()
            .map(|n| (n.to_string(), idx.get(n).unwrap().digest.unwrap()))
            .collect();
        // The scan says "a" has another digest, and so does the key: a fill
        // that hashed "a" again would fail.
        let bogus = crate::context::FileDigest([7; 32]);
        idx.entries
            .iter_mut()
            .find(|e| e.rel == "a")
            .unwrap()
            .digest = Some(bogus);
        let mut files = real.clone();
        files.insert("a".into(), bogus);
        let from = |files, scan| LinkSource {
            dir: PathBuf::new(),
            new_files: files,
            changed: HashSet::new(),
            context_root: ctx.clone(),
            base_id: String::new(),
            prev_delta: None,
            scan: Some(scan),
        };
        let root = nix::unistd::geteuid().is_root();
        let layer = || {
            let mut a = entry("a", EntryKind::File(FileSource::Path(ctx.join("a"))));
            a.mode = 0o4755;
            a.xattrs = vec![("user.k".into(), b"v".to_vec())];
            if root {
                // Another owner: chowned, then the setuid bit set again.
                (a.uid, a.gid) = (4321, 4322);
            }
            let b = entry("big", EntryKind::File(FileSource::Path(ctx.join("big"))));
            // Modes the umask would cut (0o666) or not (0o644): created
            // with it, or chmod-ed.
            let mut c = entry("c", EntryKind::File(FileSource::Path(ctx.join("a"))));
            c.mode = 0o666;
            PreparedEntries::new(vec![a, b, c], None).unwrap()
        };
        let dest = t.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let stats = fill(&dest, &layer(), &from(&files, Arc::new(idx))).unwrap();
        assert_eq!((stats.copied, stats.hashed), (3, 0));
        assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"aaaa");
        assert_eq!(std::fs::read(dest.join("big")).unwrap(), big);
        let mode = |n: &str| std::fs::metadata(dest.join(n)).unwrap().mode() & 0o7777;
        assert_eq!((mode("big"), mode("c")), (0o644, 0o666));
        let m = std::fs::symlink_metadata(dest.join("a")).unwrap();
        let owner = if root {
            (4321, 4322)
        } else {
            (m.uid(), m.gid())
        };
        assert_eq!(
            (
                m.mode() & 0o7777,
                (m.uid(), m.gid()),
                m.mtime(),
                m.mtime_nsec()
            ),
            (0o4755, owner, 1, 0)
        );
        assert_eq!(
            xattrs_of(&dest.join("a")).unwrap(),
            sorted(&layer().iter().next().unwrap().xattrs)
        );
        // Changed since the scan, size and mtime kept: hashed, refused.
        crate::context::scan_tests::rewrite_keeping_mtime(&ctx.join("a"), b"bbbb");
        let dest = t.path().join("dest2");
        std::fs::create_dir(&dest).unwrap();
        let err = fill(&dest, &layer(), &from(&real, Arc::new(idx2))).unwrap_err();
        assert!(
            format!("{err:#}").contains("changed during the build"),
            "{err:#}"
        );
    }
}
