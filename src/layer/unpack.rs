//! Applying a layer to a directory: decompression by magic bytes, OCI
//! whiteouts and opaque directories, and every write made through
//! directory fds inside the destination, so no entry can escape it.
//!
//! Escape policy: absolute entry names are made relative to the
//! destination (neutralised); names with a `..` component are refused (an
//! error). Parent directories are resolved inside the destination as if it
//! were `/`, so a symlink `evil -> /` makes `evil/etc/x` land in
//! `dest/etc/x`. Final opens use `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`,
//! so a symlink swapped in concurrently makes the unpack fail, not escape.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::entry::{Timespec, OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::resolve::resolve_components;
use super::sys;
use super::xattr;

/// Options for [`unpack_layer`].
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Fail when an owner, xattr or device cannot be applied, instead of
    /// noting it in [`UnpackStats::notes`] and going on.
    pub strict: bool,
    /// Never chown, even as root (by default owners are set when euid is 0).
    pub no_chown: bool,
    /// The layer's diff_id: the whole uncompressed stream must hash to it,
    /// or the unpack fails (checked at the end, after the last entry).
    pub expected_diff_id: Option<String>,
    /// Most bytes the layer may expand to once decompressed (a gzip bomb
    /// stops here instead of filling the disk).
    pub max_expanded: Option<u64>,
    /// Write whiteouts as overlayfs does instead of applying them: the
    /// destination is one layer's own dir (a snapshot, an overlay lower),
    /// so a deleted path becomes a 0:0 char device and an opaque dir gets
    /// this xattr set to `y` (`trusted.overlay.opaque`, or
    /// `user.overlay.opaque` for a `userxattr` overlay).
    pub overlay_opaque_xattr: Option<&'static str>,
}

/// Why a layer's content was refused.
#[derive(Debug, thiserror::Error)]
pub enum LayerCheckError {
    #[error(
        "the layer expands to more than {limit} bytes\nhint: raise the limit with \
         --max-layer-size if the image is trusted"
    )]
    TooLarge { limit: u64 },
    #[error("the layer's content has diff_id {got}, but the image config says {want}: the image is broken or was tampered with")]
    DiffIdMismatch { got: String, want: String },
}

/// What an unpack did.
#[derive(Debug, Clone, Default)]
pub struct UnpackStats {
    /// Entries applied (files, dirs, links, devices), whiteouts excluded.
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Regular-file bytes written.
    pub bytes: u64,
    /// Things skipped or not applied (devices without privilege, …).
    pub notes: Vec<String>,
    /// Device nodes not created for lack of privilege, as `/`-rooted paths.
    pub skipped_nodes: Vec<String>,
}

/// Wraps `reader` in the decompressor its magic bytes call for: gzip,
/// zstd, bzip2, xz, or none (plain tar).
pub fn open_archive<'a, R: Read + 'a>(mut reader: R) -> Result<Box<dyn Read + 'a>> {
    let mut head = Vec::with_capacity(6);
    while head.len() < 6 {
        let mut b = [0u8; 6];
        let n = match reader.read(&mut b[..6 - head.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the archive's first bytes"),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    let stream = Cursor::new(head.clone()).chain(reader);
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(stream))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(stream).context("starting zstd decoder")?)
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(stream))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(stream))
    } else {
        Box::new(stream)
    })
}

/// Applies the layer in `reader` (compressed or not) on top of `dest`.
pub fn unpack_layer<R: Read>(reader: R, dest: &Path, opts: &UnpackOptions) -> Result<UnpackStats> {
    let root = sys::open_root(dest)
        .with_context(|| format!("opening unpack destination {}", dest.display()))?;
    let mut u = Unpacker {
        dest,
        root,
        opts,
        chown: !opts.no_chown && nix::unistd::geteuid().is_root(),
        touched: HashSet::new(),
        whited: Vec::new(),
        hasher: std::collections::hash_map::RandomState::new(),
        dir_times: Vec::new(),
        stats: UnpackStats::default(),
        sparse: 0,
    };
    let mut stream = Measured {
        inner: open_archive(reader)?,
        hasher: opts.expected_diff_id.as_ref().map(|_| Sha256::new()),
        bytes: 0,
        limit: opts.max_expanded,
    };
    {
        let mut archive = tar::Archive::new(&mut stream);
        let entries = archive.entries().context("reading the layer tar")?;
        for entry in entries {
            let mut entry = entry.context("reading a layer tar entry")?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            u.apply(&mut entry)
                .with_context(|| format!("unpacking {name:?} into {}", dest.display()))?;
        }
    }
    u.finish_overlay_whiteouts()?;
    u.finish_dir_times()?;
    if let (Some(want), Some(_)) = (&opts.expected_diff_id, &stream.hasher) {
        // The diff_id covers the whole stream, padding after the tar's end
        // blocks included.
        io::copy(&mut stream, &mut io::sink()).context("reading the end of the layer")?;
        let got = format!(
            "sha256:{}",
            hex::encode(stream.hasher.take().unwrap_or_default().finalize())
        );
        if &got != want {
            return Err(LayerCheckError::DiffIdMismatch {
                got,
                want: want.clone(),
            }
            .into());
        }
    }
    Ok(u.stats)
}

/// The decompressed stream, hashed (for the diff_id) and counted (for the
/// expanded-size limit) as the tar reader consumes it.
struct Measured<R> {
    inner: R,
    hasher: Option<Sha256>,
    bytes: u64,
    limit: Option<u64>,
}

impl<R: Read> Read for Measured<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if let Some(limit) = self.limit.filter(|l| self.bytes > *l) {
            return Err(io::Error::other(LayerCheckError::TooLarge { limit }));
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Metadata gathered from an entry's ustar header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Unpacker<'a> {
    dest: &'a Path,
    root: OwnedFd,
    opts: &'a UnpackOptions,
    chown: bool,
    /// Paths written by this layer and all their ancestors: whiteouts and
    /// opaque markers only remove what is not in here (lower content).
    /// Chained hashes of every path this layer wrote (see `mark_touched`);
    /// the hasher is randomly keyed, so a layer cannot aim for a collision.
    touched: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    /// Overlay mode: paths whited out (a directory the layer also writes
    /// there must hide the lower one: it becomes opaque at the end).
    whited: Vec<Vec<String>>,
    /// Directory modes and mtimes, applied last: children change the
    /// mtime, and a read-only mode would stop a non-root unpack from
    /// creating the children.
    dir_times: Vec<(String, u32, Timespec)>,
    stats: UnpackStats,
    /// The sizes of the layer's sparse files so far (see `apply`).
    sparse: u64,
}

/// The longest entry name unpacked (Linux's `PATH_MAX`).
const MAX_NAME_BYTES: usize = 4096;

/// Cleans an entry name: leading `/` and `.` components dropped, `..` refused.
fn clean_name(raw: &[u8]) -> Result<Vec<String>> {
    let Ok(s) = std::str::from_utf8(raw) else {
        bail!("entry name is not UTF-8");
    };
    // No Linux path is longer (PATH_MAX); a longer name is an attack on
    // the per-component work below, not a file.
    if raw.len() > MAX_NAME_BYTES {
        bail!(
            "entry name of {} bytes is longer than {MAX_NAME_BYTES}: refusing to unpack it",
            raw.len()
        );
    }
    let mut out = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => bail!("entry name {s:?} contains '..': refusing to unpack it"),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

fn parse_pax_time(v: &str) -> Option<Timespec> {
    let (neg, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (s, f) = v.split_once('.').unwrap_or((v, ""));
    let sec: i64 = s.parse().ok()?;
    let digits: String = f.chars().take(9).collect();
    let nsec: u32 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(match (neg, nsec) {
        (false, _) => Timespec::new(sec, nsec),
        (true, 0) => Timespec::new(-sec, 0),
        (true, n) => Timespec::new(-sec - 1, 1_000_000_000 - n),
    })
}

fn read_meta<R: Read>(entry: &mut tar::Entry<R>) -> Result<Meta> {
    let h = entry.header();
    let mut m = Meta {
        mode: h.mode().context("bad mode field")? & 0o7777,
        uid: h.uid().context("bad uid field")? as u32,
        gid: h.gid().context("bad gid field")? as u32,
        mtime: Timespec::new(h.mtime().context("bad mtime field")? as i64, 0),
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry.pax_extensions().context("reading PAX records")? {
        for ext in exts {
            let ext = ext.context("reading a PAX record")?;
            let Ok(key) = ext.key() else { continue };
            let value = String::from_utf8_lossy(ext.value_bytes());
            match key {
                "uid" => m.uid = value.parse().context("bad PAX uid")?,
                "gid" => m.gid = value.parse().context("bad PAX gid")?,
                "mtime" => m.mtime = parse_pax_time(&value).context("bad PAX mtime")?,
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        if xattr::keep_in_layer(name) {
                            m.xattrs
                                .push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
    }
    Ok(m)
}

impl Unpacker<'_> {
    fn note(&mut self, what: String, err: io::Error) -> Result<()> {
        if self.opts.strict {
            bail!("{what}: {err}");
        }
        self.stats.notes.push(format!("{what}: {err}"));
        Ok(())
    }

    /// Records `comps` and each of its ancestors as written by this layer.
    /// Paths are kept as chained hashes (one per prefix), not strings: a
    /// d-deep name would otherwise store d prefixes of O(d) bytes each, so a
    /// small layer of deep names could take gigabytes.
    fn mark_touched(&mut self, comps: &[String]) {
        let mut h = 0;
        for c in comps {
            h = self.step_hash(h, c);
            self.touched.insert(h);
        }
    }

    fn step_hash(&self, parent: u64, component: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((parent, component))
    }

    /// Whether the `/`-joined path `key` was written by this layer.
    fn is_touched(&self, key: &str) -> bool {
        let h = key.split('/').fold(0, |h, c| self.step_hash(h, c));
        self.touched.contains(&h)
    }

    /// Opens (creating as needed) the already-resolved directory `comps`.
    fn open_dir(&self, comps: &[String]) -> Result<OwnedFd> {
        let joined = comps.join("/");
        match sys::open_dir_beneath(self.root.as_fd(), &joined) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("opening directory {joined:?}")),
        }
        let mut fd = sys::open_dir_beneath(self.root.as_fd(), "").context("opening the root")?;
        for c in comps {
            match sys::mkdirat(fd.as_fd(), c, 0o755) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating directory {c:?} of {joined:?}"))
                }
            }
            fd = sys::open_dir_beneath(fd.as_fd(), c)
                .with_context(|| format!("opening {c:?} of {joined:?}"))?;
        }
        Ok(fd)
    }

    /// Resolves an entry's parent inside the root and opens it.
    fn parent_of(&self, comps: &[String]) -> Result<(Vec<String>, OwnedFd)> {
        let parent = comps[..comps.len() - 1].join("/");
        let resolved = resolve_components(self.dest, &parent, true)?;
        let fd = self.open_dir(&resolved)?;
        Ok((resolved, fd))
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<()> {
        let comps = clean_name(&entry.path_bytes())?;
        let etype = entry.header().entry_type();
        if matches!(etype, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let Some(name) = comps.last().cloned() else {
            // The root itself ("./"): the destination already exists.
            return Ok(());
        };
        // Only regular files are markers (as in umoci): a directory named
        // `.wh.x` is content, not an instruction to delete `x`.
        if name.starts_with(WHITEOUT_PREFIX)
            && matches!(etype, EntryType::Regular | EntryType::Continuous)
        {
            return self.apply_whiteout(&comps, &name);
        }
        let supported = matches!(
            etype,
            EntryType::Regular
                | EntryType::Continuous
                | EntryType::GNUSparse
                | EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
                | EntryType::Char
                | EntryType::Block
                | EntryType::Fifo
        );
        if !supported {
            let path = comps.join("/");
            self.stats.notes.push(format!(
                "skipped {path:?}: unsupported tar entry type {etype:?}"
            ));
            return Ok(());
        }
        let (parent, dir) = self.parent_of(&comps)?;
        let mut rel = parent.clone();
        rel.push(name.clone());
        let meta = read_meta(entry)?;
        self.replace_existing(dir.as_fd(), &name, etype == EntryType::Directory)?;
        match etype {
            EntryType::Regular | EntryType::Continuous => {
                self.write_file(dir.as_fd(), &name, entry, &meta)?
            }
            EntryType::GNUSparse => {
                // The tar crate fills a sparse entry's holes with zeros
                // that never pass through the measured stream: its size
                // (the file's, checked against its map) counts here, or
                // a 1 KB entry of 2^62 bytes unpacked without end.
                self.sparse = self.sparse.saturating_add(entry.size());
                if let Some(limit) = self.opts.max_expanded.filter(|l| self.sparse > *l) {
                    return Err(LayerCheckError::TooLarge { limit }.into());
                }
                self.write_file(dir.as_fd(), &name, entry, &meta)?
            }
            EntryType::Directory => self.make_dir(dir.as_fd(), &name, &rel, &meta)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .context("symlink without a target")?;
                sys::symlinkat(&target, dir.as_fd(), &name).context("creating symlink")?;
                self.finish_special(dir.as_fd(), &name, &meta, false)?;
            }
            EntryType::Link => self.hardlink(dir.as_fd(), &name, entry)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if !self.make_node(dir.as_fd(), &name, &rel.join("/"), entry, &meta)? {
                    return Ok(());
                }
            }
            // Filtered out above.
            _ => return Ok(()),
        }
        self.mark_touched(&rel);
        self.stats.entries += 1;
        Ok(())
    }

    /// A whiteout or opaque marker. A missing parent means there is no lower
    /// content to hide, so nothing is created for it.
    fn apply_whiteout(&mut self, comps: &[String], name: &str) -> Result<()> {
        let victim = if name == OPAQUE_MARKER {
            None
        } else {
            name.strip_prefix(WHITEOUT_PREFIX)
        };
        if matches!(victim, Some("" | "." | "..")) {
            bail!("invalid whiteout name {name:?}");
        }
        self.stats.whiteouts += 1;
        if let Some(xattr) = self.opts.overlay_opaque_xattr {
            return self.overlay_whiteout(comps, victim, xattr);
        }
        let parent = resolve_components(self.dest, &comps[..comps.len() - 1].join("/"), true)?;
        let dir = match sys::open_dir_beneath(self.root.as_fd(), &parent.join("/")) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                return Ok(())
            }
            Err(e) => return Err(e).context("opening the whiteout's directory"),
        };
        match victim {
            None => self.clear_lower(dir.as_fd(), &parent.join("/")),
            Some(victim) => self.whiteout(dir.as_fd(), &parent, victim),
        }
    }

    /// Removes whatever is at `name` unless both it and the entry are dirs
    /// (directories merge with lower content).
    fn replace_existing(&self, dir: BorrowedFd, name: &str, entry_is_dir: bool) -> Result<()> {
        match sys::lstatat(dir, name).context("checking existing file")? {
            Some(st) if sys::is_dir(&st) && entry_is_dir => Ok(()),
            Some(_) => remove_all_at(dir, name),
            None => Ok(()),
        }
    }

    fn write_file<R: Read>(
        &mut self,
        dir: BorrowedFd,
        name: &str,
        entry: &mut tar::Entry<R>,
        meta: &Meta,
    ) -> Result<()> {
        let fd = sys::openat2(
            dir,
            name,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
            0o600,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
        )
        .context("creating file")?;
        let file = File::from(fd);
        // Zero blocks become holes again: tars hold sparse files densely.
        self.stats.bytes +=
            super::sparse::write_sparse(entry, &file).context("writing file content")?;
        self.apply_fd_meta(file.as_fd(), name, meta, meta.mode)?;
        futimens(file.as_fd(), meta.mtime).context("setting mtime")?;
        Ok(())
    }

    fn make_dir(&mut self, dir: BorrowedFd, name: &str, rel: &[String], meta: &Meta) -> Result<()> {
        match sys::mkdirat(dir, name, 0o700) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context("creating directory"),
        }
        let fd = sys::open_dir_beneath(dir, name).context("opening directory")?;
        self.apply_fd_meta(fd.as_fd(), name, meta, meta.mode | 0o700)?;
        self.dir_times.push((rel.join("/"), meta.mode, meta.mtime));
        Ok(())
    }

    /// Owner, then mode (chown clears setuid bits), then xattrs (chown also
    /// clears `security.capability`).
    fn apply_fd_meta(&mut self, fd: BorrowedFd, name: &str, meta: &Meta, mode: u32) -> Result<()> {
        if self.chown {
            // SAFETY: valid fd.
            if unsafe { libc::fchown(fd.as_raw_fd(), meta.uid, meta.gid) } < 0 {
                let err = io::Error::last_os_error();
                self.note(format!("chown {name:?} to {}:{}", meta.uid, meta.gid), err)?;
            }
        }
        // SAFETY: valid fd.
        fchmod(fd, mode).context("chmod")?;
        for (k, v) in &meta.xattrs {
            if let Err(e) = xattr::set_fd(fd, k, v) {
                self.note(format!("setting xattr {k} on {name:?}"), e)?;
            }
        }
        Ok(())
    }

    /// Owner and mtime for symlinks and device nodes (no fd to hold).
    fn finish_special(
        &mut self,
        dir: BorrowedFd,
        name: &str,
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        if self.chown {
            if let Err(e) = sys::lchownat(dir, name, meta.uid, meta.gid) {
                self.note(format!("chown {name:?} to {}:{}", meta.uid, meta.gid), e)?;
            }
        }
        if chmod {
            sys::chmodat(dir, name, meta.mode).context("chmod")?;
        }
        sys::utimensat(dir, name, meta.mtime).context("setting mtime")?;
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        dir: BorrowedFd,
        name: &str,
        entry: &mut tar::Entry<R>,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .context("hard link without a target")?;
        let tcomps = clean_name(&target).with_context(|| "hard link target")?;
        if tcomps.is_empty() {
            bail!("hard link to the root directory");
        }
        // Resolved like any path, but never created: a link needs an existing target.
        let tparent = resolve_components(self.dest, &tcomps[..tcomps.len() - 1].join("/"), true)?;
        let tdir =
            sys::open_dir_beneath(self.root.as_fd(), &tparent.join("/")).with_context(|| {
                format!(
                    "opening the directory of link target {:?}",
                    String::from_utf8_lossy(&target)
                )
            })?;
        let tname = &tcomps[tcomps.len() - 1];
        sys::linkat(tdir.as_fd(), tname, dir, name)
            .with_context(|| format!("linking to {:?}", String::from_utf8_lossy(&target)))
    }

    /// Creates a device or FIFO; `Ok(false)` when skipped for lack of
    /// privilege (noted with its whole path `rel`).
    fn make_node<R: Read>(
        &mut self,
        dir: BorrowedFd,
        name: &str,
        rel: &str,
        entry: &mut tar::Entry<R>,
        meta: &Meta,
    ) -> Result<bool> {
        let h = entry.header();
        let (kind, dev) = match h.entry_type() {
            EntryType::Fifo => (libc::S_IFIFO, 0),
            t => {
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let kind = if t == EntryType::Char {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                (kind, libc::makedev(major, minor))
            }
        };
        if let Err(e) = sys::mknodat(dir, name, kind | (meta.mode & 0o7777), dev) {
            if sys::is_permission_error(&e) {
                self.note(format!("skipped device node /{rel}"), e)?;
                self.stats.skipped_nodes.push(format!("/{rel}"));
                return Ok(false);
            }
            return Err(e).context("creating device node");
        }
        self.finish_special(dir, name, meta, true)?;
        Ok(true)
    }

    /// `.wh.victim`: removes lower content at `victim` (this layer's own
    /// entries stay, whatever the tar order).
    fn whiteout(&mut self, dir: BorrowedFd, parent: &[String], victim: &str) -> Result<()> {
        let mut rel = parent.to_vec();
        rel.push(victim.to_string());
        let key = rel.join("/");
        if !self.is_touched(&key) {
            return remove_all_at(dir, victim);
        }
        match sys::lstatat(dir, victim)? {
            Some(st) if sys::is_dir(&st) => {
                let fd = sys::open_dir_beneath(dir, victim).context("opening whiteout target")?;
                self.clear_lower(fd.as_fd(), &key)
            }
            _ => Ok(()),
        }
    }

    /// Opaque directory: removes every child not written by this layer.
    fn clear_lower(&mut self, dir: BorrowedFd, rel: &str) -> Result<()> {
        for child in list_dir(dir)? {
            let key = if rel.is_empty() {
                child.clone()
            } else {
                format!("{rel}/{child}")
            };
            if !self.is_touched(&key) {
                remove_all_at(dir, &child)?;
            } else if let Some(st) = sys::lstatat(dir, &child)? {
                if sys::is_dir(&st) {
                    let fd = sys::open_dir_beneath(dir, &child)?;
                    self.clear_lower(fd.as_fd(), &key)?;
                }
            }
        }
        Ok(())
    }

    /// Overlay mode: `.wh.x` becomes a 0:0 char device `x` (unless this
    /// layer writes `x` itself, whatever the tar order), `.wh..wh..opq`
    /// the opaque xattr on its directory. The parent is created when the
    /// layer lacks it: the lower content under it must still be hidden.
    fn overlay_whiteout(
        &mut self,
        comps: &[String],
        victim: Option<&str>,
        xattr: &'static str,
    ) -> Result<()> {
        let (parent, dir) = self.parent_of(comps)?;
        let Some(victim) = victim else {
            return xattr::set_fd(dir.as_fd(), xattr, b"y")
                .with_context(|| format!("setting {xattr} on {:?}", parent.join("/")));
        };
        let mut rel = parent;
        rel.push(victim.to_string());
        if sys::lstatat(dir.as_fd(), victim)?.is_none() {
            sys::mknodat(dir.as_fd(), victim, libc::S_IFCHR, 0)
                .with_context(|| format!("creating the overlay whiteout {:?}", rel.join("/")))?;
        }
        self.whited.push(rel);
        Ok(())
    }

    /// Overlay mode: a path both whited out and written as a directory by
    /// this layer replaces the lower one, so it must not merge with it.
    fn finish_overlay_whiteouts(&mut self) -> Result<()> {
        let Some(xattr) = self.opts.overlay_opaque_xattr else {
            return Ok(());
        };
        for rel in std::mem::take(&mut self.whited) {
            let path = rel.join("/");
            match sys::open_dir_beneath(self.root.as_fd(), &path) {
                Ok(fd) => xattr::set_fd(fd.as_fd(), xattr, b"y")
                    .with_context(|| format!("setting {xattr} on {path:?}"))?,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {}
                Err(e) => return Err(e).with_context(|| format!("opening {path:?}")),
            }
        }
        Ok(())
    }

    fn finish_dir_times(&mut self) -> Result<()> {
        // Deepest first, so setting a parent's time is the last touch on it.
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.matches('/').count()));
        for (path, mode, t) in times {
            // Opened without following symlinks: a later entry of the layer
            // may have replaced the directory with one.
            let dir = match sys::open_dir_beneath(self.root.as_fd(), &path) {
                Ok(fd) => fd,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("opening {path:?} to set its mode and mtime"))
                }
            };
            fchmod(dir.as_fd(), mode).with_context(|| format!("chmod {path:?}"))?;
            futimens(dir.as_fd(), t).with_context(|| format!("setting mtime of {path:?}"))?;
        }
        Ok(())
    }
}

fn fchmod(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn futimens(fd: BorrowedFd, t: Timespec) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: t.sec as libc::time_t,
        tv_nsec: t.nsec as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: valid fd and two timespecs.
    if unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Names in an open directory.
fn list_dir(dir: BorrowedFd) -> Result<Vec<String>> {
    // Reading through our own fd's /proc link lists exactly the directory we hold.
    let proc_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut names = Vec::new();
    for item in std::fs::read_dir(&proc_path).context("listing directory")? {
        let item = item.context("listing directory")?;
        match item.file_name().into_string() {
            Ok(n) => names.push(n),
            Err(n) => bail!("non-UTF-8 name {n:?} in a directory being cleared"),
        }
    }
    Ok(names)
}

/// Removes `name` in `dir` recursively, never following symlinks.
pub(crate) fn remove_all_at(dir: BorrowedFd, name: &str) -> Result<()> {
    let Some(st) = sys::lstatat(dir, name).with_context(|| format!("stat {name:?}"))? else {
        return Ok(());
    };
    if sys::is_dir(&st) {
        let fd = sys::open_dir_beneath(dir, name)
            .with_context(|| format!("opening {name:?} to remove it"))?;
        for child in list_dir(fd.as_fd())? {
            remove_all_at(fd.as_fd(), &child)?;
        }
    }
    sys::unlinkat(dir, name, sys::is_dir(&st)).with_context(|| format!("removing {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_pax_time("5.5"), Some(Timespec::new(5, 500_000_000)));
        assert_eq!(parse_pax_time("-1.5"), Some(Timespec::new(-2, 500_000_000)));
        assert_eq!(parse_pax_time("7"), Some(Timespec::new(7, 0)));
        assert_eq!(parse_pax_time("1.0000000019"), Some(Timespec::new(1, 1)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
