//! Walking the context once per build: ignore rules applied with moby's
//! pruning, every entry's metadata recorded, and regular files hashed in
//! parallel unless the stat cache vouches for an earlier digest.

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::filedigest::FileDigest;
use super::ignorefile::IgnoreRules;
use super::pattern::{MatchInfo, PatternMatcher};
use super::statcache::{racy_from_ns, StatCache};
use super::ContextError;

/// What kind of file an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symlink and its target, as stored (never followed by the scan).
    Symlink {
        target: String,
    },
    Fifo,
    Socket,
    CharDevice {
        rdev: u64,
    },
    BlockDevice {
        rdev: u64,
    },
}

/// One file in the context, as `lstat` saw it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `/`-separated path relative to the context root; `""` is the root.
    pub rel: String,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    /// The contents' SHA-256 (`sha256:<hex>` as text), for regular files.
    pub digest: Option<FileDigest>,
    /// Extended attributes, sorted by name (`security.*` other than
    /// `security.capability` left out).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    fn from_metadata(rel: String, meta: &Metadata, abs: &Path) -> Result<Entry, ContextError> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(abs).map_err(|e| ContextError::io("read symlink", abs, e))?;
            EntryKind::Symlink {
                target: target.to_string_lossy().into_owned(),
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_socket() {
            EntryKind::Socket
        } else if ft.is_char_device() {
            EntryKind::CharDevice { rdev: meta.rdev() }
        } else if ft.is_block_device() {
            EntryKind::BlockDevice { rdev: meta.rdev() }
        } else {
            EntryKind::File
        };
        let xattrs = if kind == EntryKind::File {
            // A regular file's xattrs are read with its digest, from the stat
            // cache when it vouches for the file (setting one changes ctime).
            Vec::new()
        } else {
            read_xattrs(abs)?
        };
        Ok(Entry {
            rel,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            digest: None,
            xattrs,
        })
    }
}

/// Extended attributes that describe content, sorted by name. Like
/// BuildKit's content hash, `security.*` is dropped except
/// `security.capability` (SELinux labels are host state, not content).
fn read_xattrs(abs: &Path) -> Result<Vec<(String, Vec<u8>)>, ContextError> {
    let names = match xattr::list(abs) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(ContextError::io("list xattrs of", abs, e)),
    };
    let mut out = Vec::new();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("security.") && name != "security.capability" {
            continue;
        }
        match xattr::get(abs, &name) {
            Ok(Some(v)) => out.push((name, v)),
            Ok(None) => {}
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(ContextError::io("read xattr of", abs, e)),
        }
    }
    out.sort();
    Ok(out)
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTSUP) | Some(libc::ENODATA) | Some(libc::EPERM)
    )
}

/// Counters of one scan; `files_hashed == 0` proves a rebuild read no file.
#[derive(Debug, Clone, Default)]
pub struct ScanStats {
    pub entries: usize,
    pub files: usize,
    pub files_hashed: usize,
    pub bytes_hashed: u64,
    pub cache_hits: usize,
    /// Ignored entries not descended into.
    pub pruned: usize,
    /// Why the stat cache could not be saved, if it could not (not fatal).
    pub cache_error: Option<String>,
}

/// The scanned context: every entry that survived `.dockerignore`.
#[derive(Debug)]
pub struct ContextIndex {
    pub(crate) root: PathBuf,
    pub(crate) root_entry: Entry,
    /// Sorted by `rel` (byte order), no path twice.
    pub(crate) entries: Vec<Entry>,
    control: Vec<Entry>,
    ignore: PatternMatcher,
    pub stats: ScanStats,
    /// The start of the scan's second, in ns since the epoch: a file whose
    /// mtime or ctime is earlier is settled (the stat cache's racy-git
    /// guard), so any later change to it moves its ctime.
    pub(crate) settled_before_ns: i64,
}

impl ContextIndex {
    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All entries (the root excluded), sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// The entry at `rel` (`""` is the root), without following symlinks.
    pub fn get(&self, rel: &str) -> Option<&Entry> {
        if rel.is_empty() {
            Some(&self.root_entry)
        } else {
            self.find(rel)
        }
    }

    /// The digest the scan gave the regular file at `rel`, when `m` (an
    /// fstat of it opened now) is the stat the scan saw and the file had
    /// settled before the scan started: the stat cache's trust rule
    /// (device, inode, size, mtime and ctime). Settled matters: a change
    /// made in the same clock tick as the stat the scan saw could keep
    /// the ctime, but a change to a file last changed before the scan's
    /// second always gets a later one.
    pub fn vouched_digest(&self, rel: &str, m: &Metadata) -> Option<FileDigest> {
        let e = self.find(rel).filter(|e| e.kind == EntryKind::File)?;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        let same = (m.dev(), m.ino(), m.size()) == (e.dev, e.ino, e.size)
            && ns(m.mtime(), m.mtime_nsec()) == e.mtime_ns
            && ns(m.ctime(), m.ctime_nsec()) == e.ctime_ns;
        let settled = e.mtime_ns < self.settled_before_ns && e.ctime_ns < self.settled_before_ns;
        e.digest.filter(|_| same && settled)
    }

    /// The walked entry at `rel` (never the root).
    pub(crate) fn find(&self, rel: &str) -> Option<&Entry> {
        let i = self
            .entries
            .binary_search_by(|e| e.rel.as_str().cmp(rel))
            .ok()?;
        self.entries.get(i)
    }

    /// The Dockerfile and ignore file, hashed, even when the ignore rules
    /// exclude them: the builder always reads them (BuildKit rule), though
    /// COPY does not see them when excluded.
    pub fn control_files(&self) -> &[Entry] {
        &self.control
    }

    /// The CopyIgnoredFile lint check, as BuildKit does it: never when the
    /// ignore rules contain `!` exceptions (too hard to decide statically),
    /// otherwise the cleaned source is matched as given (so `*` flags `.`).
    pub fn copy_source_ignored(&self, src: &str) -> Result<bool, ContextError> {
        if self.ignore.is_empty() || self.ignore.has_exclusions() {
            return Ok(false);
        }
        self.ignore.matches(&super::gopath::clean(src))
    }

    /// Whether any `.dockerignore` rule applies to this context.
    pub fn has_ignore_rules(&self) -> bool {
        !self.ignore.is_empty()
    }

    /// Whether the ignore rules exclude `rel`; the root never is.
    pub fn is_ignored(&self, rel: &str) -> Result<bool, ContextError> {
        let rel = super::gopath::clean_in_root(rel);
        if rel.is_empty() {
            return Ok(false);
        }
        self.ignore.matches(&rel)
    }
}

/// Scans `root`. `dockerfile_rel` names the Dockerfile, relative to `root`
/// or absolute (kept as a control file when it is inside the context);
/// `stat_cache` is where digests persist between builds. Fails on
/// unreadable entries, non-UTF-8 names, or a pattern that fails at match
/// time (e.g. `[Local-Only]`).
pub fn scan(
    root: &Path,
    dockerfile_rel: &str,
    ignore: &IgnoreRules,
    stat_cache: Option<&Path>,
) -> Result<ContextIndex, ContextError> {
    scan_with_progress(root, dockerfile_rel, ignore, stat_cache, None)
}

/// Called with (bytes hashed so far, bytes to hash) while files are read.
pub type HashProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// [`scan`], reporting hashing progress (a large context takes a while).
pub fn scan_with_progress(
    root: &Path,
    dockerfile_rel: &str,
    ignore: &IgnoreRules,
    stat_cache: Option<&Path>,
    progress: Option<HashProgress<'_>>,
) -> Result<ContextIndex, ContextError> {
    let started = std::time::SystemTime::now();
    let root_meta =
        std::fs::metadata(root).map_err(|e| ContextError::io("stat context", root, e))?;
    if !root_meta.is_dir() {
        return Err(ContextError::NotADirectory {
            path: root.display().to_string(),
        });
    }
    let root_entry = Entry::from_metadata(String::new(), &root_meta, root)?;

    let mut stats = ScanStats::default();
    let mut list = Vec::new();
    // The stat cache (a JSON file of every file's stamp: 4 MB and about a
    // sixth of a no-op rebuild's CPU at 20,000 files) is parsed on a second
    // thread while this one walks the tree.
    // The cache names the context it vouches for by its canonical path (as
    // the store names the cache file): `rbuild build ctx` and `rbuild
    // build /abs/ctx` share one, where the path as given made each
    // invocation discard the other's cache and hash every file again.
    let canonical = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let cache_root = canonical.as_path();
    let cache = std::thread::scope(|s| {
        let loader = stat_cache.map(|p| s.spawn(move || StatCache::load(p, cache_root)));
        // On a thread of its own with room for `MAX_DEPTH` levels (a
        // stage thread's default 2 MiB overflowed at 500-2,000 levels,
        // which a fetched context can hold).
        let walker = std::thread::Builder::new()
            .name("context-walk".into())
            .stack_size(WALK_STACK)
            .spawn_scoped(s, || {
                let mut list = Vec::new();
                let mut stats = ScanStats::default();
                let info = MatchInfo::default();
                walk_dir(root, "", &ignore.matcher, &info, &mut list, &mut stats, 0)
                    .map(|()| (list, stats))
            })
            .map_err(|e| ContextError::io("start a thread to walk", root, e));
        let walked = walker.and_then(|w| {
            w.join()
                .unwrap_or_else(|_| Err(ContextError::Internal("the context walk panicked".into())))
        });
        let walked = walked.map(|(l, st)| {
            list = l;
            stats = st;
        });
        // A loader that panicked only costs the cache: it is empty.
        let cache = loader.and_then(|l| l.join().ok()).unwrap_or_default();
        walked.map(|()| cache)
    })?;
    hash_files(root, &mut list, &cache, &mut stats, progress)?;
    let control = control_entries(root, dockerfile_rel, ignore, &list, &cache, &mut stats)?;

    // Every file hit and the cache holds no other path: the cache would be
    // saved back unchanged (a hit's stamp was not racy when saved and is
    // not now, with a later scan start), so it is not even compared entry
    // by entry: the no-op rebuild's common case.
    let unchanged =
        stats.files_hashed == 0 && stats.cache_hits > 0 && stats.cache_hits == cache.len();
    if let Some(path) = stat_cache.filter(|_| !unchanged) {
        // Control files the walk kept are in `list` already.
        let extra: Vec<&Entry> = control
            .iter()
            .filter(|c| !list.iter().any(|e| e.rel == c.rel))
            .collect();
        let all = || list.iter().chain(extra.iter().copied());
        // An unchanged context rewrites nothing (and fsyncs nothing).
        if !cache.holds_exactly(cache_root, all(), started) {
            if let Err(e) = StatCache::save_entries(path, cache_root, all(), started) {
                stats.cache_error = Some(e.to_string());
            }
        }
    }
    drop(cache);
    stats.entries = list.len();
    // A sorted list, searched by path: a map keyed by a second copy of
    // every path (and built through a third list) cost ~50 MB at 200,000
    // entries.
    list.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    list.shrink_to_fit();
    Ok(ContextIndex {
        root: root.to_path_buf(),
        root_entry,
        entries: list,
        control,
        ignore: ignore.matcher.clone(),
        stats,
        settled_before_ns: racy_from_ns(started),
    })
}

/// The Dockerfile and ignore file as entries with digests. Ones the walk
/// kept reuse its entry; excluded ones are stat'ed and hashed here. A
/// Dockerfile outside the context (`-f ../Dockerfile`) is not a context
/// file: the caller reads it directly.
fn control_entries(
    root: &Path,
    dockerfile_rel: &str,
    ignore: &IgnoreRules,
    walked: &[Entry],
    cache: &StatCache,
    stats: &mut ScanStats,
) -> Result<Vec<Entry>, ContextError> {
    let df = Path::new(dockerfile_rel);
    let df_rel = if df.is_absolute() {
        df.strip_prefix(root)
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    } else {
        Some(super::gopath::clean(dockerfile_rel))
    };
    let ignore_rel = ignore
        .source
        .as_ref()
        .and_then(|p| p.strip_prefix(root).ok())
        .map(|p| p.to_string_lossy().into_owned());
    let mut out = Vec::new();
    for rel in df_rel.into_iter().chain(ignore_rel) {
        if rel == ".." || rel.starts_with("../") || rel == "." || rel.is_empty() {
            continue;
        }
        if let Some(seen) = walked.iter().find(|e| e.rel == rel) {
            out.push(seen.clone());
            continue;
        }
        let abs = root.join(&rel);
        if let Ok(meta) = std::fs::symlink_metadata(&abs) {
            out.push(Entry::from_metadata(rel, &meta, &abs)?);
        }
    }
    let mut pending: Vec<Entry> = out.iter().filter(|c| c.digest.is_none()).cloned().collect();
    hash_files(root, &mut pending, cache, stats, None)?;
    for c in out.iter_mut().filter(|c| c.digest.is_none()) {
        if let Some(p) = pending.iter().find(|p| p.rel == c.rel) {
            c.digest = p.digest;
            c.xattrs = p.xattrs.clone();
        }
    }
    Ok(out)
}

/// Directories deeper than this in a context are refused: the walk
/// recurses once per level.
pub const MAX_DEPTH: usize = 1024;
/// The walk's stack: `MAX_DEPTH` frames with room to spare, even
/// unoptimized (about 4 KiB a frame).
const WALK_STACK: usize = 64 << 20;

/// Depth-first walk in name order. An ignored directory is entered only if
/// an exception may re-include something below it, and is then recorded
/// only if something below it was (an allow-listed path that does not exist
/// does not bring its parent back).
fn walk_dir(
    root: &Path,
    dir_rel: &str,
    matcher: &PatternMatcher,
    info: &MatchInfo,
    out: &mut Vec<Entry>,
    stats: &mut ScanStats,
    depth: usize,
) -> Result<(), ContextError> {
    if depth > MAX_DEPTH {
        return Err(ContextError::TooDeep {
            path: dir_rel.chars().take(200).collect(),
            max: MAX_DEPTH,
        });
    }
    let dir_abs = root.join(dir_rel);
    let rd =
        std::fs::read_dir(&dir_abs).map_err(|e| ContextError::io("read directory", &dir_abs, e))?;
    let mut names = Vec::new();
    for item in rd {
        let item = item.map_err(|e| ContextError::io("read directory", &dir_abs, e))?;
        let name = item.file_name().into_string().map_err(|n| {
            ContextError::io(
                "read (non-UTF-8 name)",
                &dir_abs.join(n),
                std::io::Error::from(std::io::ErrorKind::InvalidData),
            )
        })?;
        // `DirEntry::metadata` is an lstat relative to the open directory
        // (`statx(dirfd, name, AT_SYMLINK_NOFOLLOW)`): the kernel does not
        // walk the whole path again for each of the context's files. All
        // are stat'ed before descending, so the directory is closed by then
        // and open descriptors do not grow with the tree's depth.
        let meta = item
            .metadata()
            .map_err(|e| ContextError::io("stat", &dir_abs.join(&name), e))?;
        names.push((name, meta));
    }
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Sequential on purpose: per-directory parallel lstat measured slower
    // (rayon spin-waits outweigh the stat calls it spreads).
    for (name, meta) in names {
        let rel = if dir_rel.is_empty() {
            name
        } else {
            format!("{dir_rel}/{name}")
        };
        let abs = root.join(&rel);
        let (excluded, child_info) = matcher.matches_with_parent(&rel, info)?;
        if excluded {
            if meta.is_dir() && matcher.may_reinclude_below(&rel) {
                let mut below = Vec::new();
                walk_dir(
                    root,
                    &rel,
                    matcher,
                    &child_info,
                    &mut below,
                    stats,
                    depth + 1,
                )?;
                if !below.is_empty() {
                    out.push(Entry::from_metadata(rel, &meta, &abs)?);
                    out.append(&mut below);
                }
            } else {
                stats.pruned += 1;
            }
            continue;
        }
        let is_dir = meta.is_dir();
        out.push(Entry::from_metadata(rel.clone(), &meta, &abs)?);
        if is_dir {
            walk_dir(root, &rel, matcher, &child_info, out, stats, depth + 1)?;
        }
    }
    Ok(())
}

/// Fills `digest` for regular files: from the stat cache when it vouches
/// for the file, otherwise by reading it (in parallel).
fn hash_files(
    root: &Path,
    list: &mut [Entry],
    cache: &StatCache,
    stats: &mut ScanStats,
    progress: Option<HashProgress<'_>>,
) -> Result<(), ContextError> {
    let mut todo = Vec::new();
    for e in list.iter_mut().filter(|e| e.kind == EntryKind::File) {
        stats.files += 1;
        match cache.lookup(e) {
            Some((d, xattrs)) => {
                e.digest = Some(d);
                e.xattrs = xattrs.to_vec();
                stats.cache_hits += 1;
            }
            None => todo.push(e),
        }
    }
    let bytes = AtomicU64::new(0);
    let total: u64 = todo.iter().map(|e| e.size).sum();
    todo.par_iter_mut()
        .map(|e| {
            let abs = root.join(&e.rel);
            let (digest, n) = hash_file(&abs)?;
            let done = bytes.fetch_add(n, Ordering::Relaxed) + n;
            if let Some(p) = progress {
                p(done, total);
            }
            e.digest = Some(digest);
            e.xattrs = read_xattrs(&abs)?;
            Ok(())
        })
        .collect::<Result<(), ContextError>>()?;
    stats.files_hashed += todo.len();
    stats.bytes_hashed += bytes.into_inner();
    Ok(())
}

/// The SHA-256 of a file, refusing to follow a symlink swapped in since
/// the walk.
pub(crate) fn hash_file(path: &Path) -> Result<(FileDigest, u64), ContextError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| ContextError::io("open for hashing", path, e))?;
    thread_local! {
        // One read buffer per hashing thread: a fresh 256 KiB per file
        // (200,000 of them) churned each thread's malloc arena.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 * 1024]);
    }
    let mut h = Sha256::new();
    let mut total = 0u64;
    BUF.with_borrow_mut(|buf| loop {
        let n = f
            .read(buf)
            .map_err(|e| ContextError::io("read for hashing", path, e))?;
        if n == 0 {
            return Ok(());
        }
        total += n as u64;
        h.update(&buf[..n]);
    })?;
    Ok((FileDigest(h.finalize().into()), total))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sleeps into the next second, so files written before are settled
    /// for a scan started after.
    pub(crate) fn next_second() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let left = 1_000_000_000 - u64::from(now.subsec_nanos());
        std::thread::sleep(std::time::Duration::from_nanos(left + 20_000_000));
    }

    /// Writes `body` over `path` keeping its size and mtime (the ctime
    /// moves: user space cannot set it).
    pub(crate) fn rewrite_keeping_mtime(path: &Path, body: &[u8]) {
        let m = std::fs::metadata(path).unwrap();
        assert_eq!(m.len(), body.len() as u64);
        std::fs::write(path, body).unwrap();
        let t = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    #[test]
    fn only_a_settled_file_with_the_scanned_stat_is_vouched_for() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path();
        std::fs::write(ctx.join("settled"), b"aaaa").unwrap();
        std::fs::write(ctx.join("other"), b"bbbb").unwrap();
        next_second();
        // Changed in the second the scan starts: its ctime could stay the
        // same through another change in the same clock tick.
        std::fs::write(ctx.join("racy"), b"cccc").unwrap();
        let idx = scan(ctx, "Dockerfile", &IgnoreRules::default(), None).unwrap();
        let stat = |name: &str| {
            std::fs::File::open(ctx.join(name))
                .unwrap()
                .metadata()
                .unwrap()
        };
        let want = idx.get("settled").unwrap().digest;
        assert!(want.is_some());
        assert_eq!(idx.vouched_digest("settled", &stat("settled")), want);
        assert_eq!(idx.vouched_digest("racy", &stat("racy")), None);
        // Another file's stat, or a name the scan has no file at.
        assert_eq!(idx.vouched_digest("settled", &stat("other")), None);
        assert_eq!(idx.vouched_digest("nothing", &stat("settled")), None);
        // New content of the same size under the old mtime: the ctime moved.
        rewrite_keeping_mtime(&ctx.join("settled"), b"dddd");
        assert_eq!(idx.vouched_digest("settled", &stat("settled")), None);
    }
}
