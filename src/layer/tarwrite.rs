//! The tar encoder: ustar headers plus PAX extended headers for what ustar
//! cannot hold (long names and link names, large ids and sizes, sub-second
//! or out-of-range mtimes, xattrs). No GNU extensions, no atime/ctime, empty
//! uname/gname, so the bytes depend only on the entries.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::entry::{EntryKind, FileSource, LayerEntry, Timespec};
use super::xattr::keep_in_layer;

const BLOCK: usize = 512;
/// Largest value an 8-byte octal ustar field (7 digits) holds.
const MAX_OCTAL_7: u64 = 0o7_777_777;
/// Largest value a 12-byte octal ustar field (11 digits) holds.
const MAX_OCTAL_11: u64 = 0o77_777_777_777;

/// Where a tar stream goes: a writer told where entries start and end (the
/// chunked compressor cuts chunks only there).
pub(crate) trait TarSink: Write {
    /// An entry (its PAX header, header, `size` content bytes) starts.
    fn entry_start(&mut self, _size: u64) -> io::Result<()> {
        Ok(())
    }
    /// The entry at `path` ended (padding included).
    fn entry_end(&mut self, _path: &str) -> io::Result<()> {
        Ok(())
    }
    /// The entry's `size` content bytes come next and are `file`'s, whose
    /// sha256 is `digest`. True when the sink took them without the bytes
    /// (it reads the file itself if it needs them); false when they must
    /// be written as usual.
    fn file_content(&mut self, _digest: &[u8; 32], _file: &File, _size: u64) -> io::Result<bool> {
        Ok(false)
    }
}

impl<W: Write> TarSink for io::BufWriter<W> {}

/// Files whose content sha256 a caller (the context scan) vouches for, by
/// source path, with the stat it was computed at: the digest holds for the
/// opened file only while its device, inode, size, mtime and ctime are the
/// same (the trust the scan's stat cache puts in them).
#[derive(Clone, Default)]
pub struct KnownFiles {
    pub(crate) map: HashMap<PathBuf, KnownFile>,
    /// Files the map does not hold are looked up here (the caller's own
    /// index, borrowed rather than copied into the map).
    lookup: Option<KnownLookup>,
}

/// A caller's lookup of a vouched-for file by source path.
pub type KnownLookup = std::sync::Arc<dyn Fn(&Path) -> Option<KnownFile> + Send + Sync>;

impl std::fmt::Debug for KnownFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownFiles")
            .field("map", &self.map.len())
            .field("lookup", &self.lookup.is_some())
            .finish()
    }
}

/// One vouched-for file: its stat at digest time and its content sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub sha256: [u8; 32],
}

impl KnownFiles {
    /// Files looked up through `lookup` (and any inserted).
    pub fn from_lookup(
        lookup: impl Fn(&Path) -> Option<KnownFile> + Send + Sync + 'static,
    ) -> Self {
        KnownFiles {
            map: HashMap::new(),
            lookup: Some(std::sync::Arc::new(lookup)),
        }
    }

    pub fn insert(&mut self, path: PathBuf, file: KnownFile) {
        self.map.insert(path, file);
    }

    /// The digest of the file opened at `path`, if its stat still matches.
    fn digest(&self, path: &Path, m: &std::fs::Metadata) -> Option<[u8; 32]> {
        let found;
        let k = match self.map.get(path) {
            Some(k) => k,
            None => {
                found = (self.lookup.as_ref()?)(path)?;
                &found
            }
        };
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        let same = (m.dev(), m.ino(), m.len()) == (k.dev, k.ino, k.size)
            && ns(m.mtime(), m.mtime_nsec()) == k.mtime_ns
            && ns(m.ctime(), m.ctime_nsec()) == k.ctime_ns;
        same.then_some(k.sha256)
    }
}

/// Writes entries (already normalised and sorted) as one tar stream.
pub(crate) fn write_entries(
    entries: &[LayerEntry],
    out: &mut dyn TarSink,
    known: Option<&KnownFiles>,
) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    for entry in entries {
        write_entry(entry, out, &mut buf, known)
            .with_context(|| format!("writing layer entry {:?}", entry.path))?;
    }
    out.write_all(&[0u8; BLOCK * 2])
        .context("writing the tar end-of-archive blocks")?;
    Ok(())
}

/// An opened regular-file source: its size is fixed when the header is written.
enum Content<'a> {
    None,
    Bytes(&'a [u8]),
    /// The file, its size, and its sha256 when a caller vouches for it.
    Disk(File, u64, Option<[u8; 32]>),
}

impl Content<'_> {
    fn len(&self) -> u64 {
        match self {
            Content::None => 0,
            Content::Bytes(b) => b.len() as u64,
            Content::Disk(_, n, _) => *n,
        }
    }
}

fn open_content<'a>(entry: &'a LayerEntry, known: Option<&KnownFiles>) -> Result<Content<'a>> {
    match &entry.kind {
        EntryKind::File(FileSource::Bytes(b)) => Ok(Content::Bytes(b)),
        EntryKind::File(FileSource::Path(p)) => {
            let f = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
                .with_context(|| format!("opening {} for the layer", p.display()))?;
            let meta = f
                .metadata()
                .with_context(|| format!("stat {}", p.display()))?;
            if !meta.is_file() {
                bail!("{} is not a regular file", p.display());
            }
            let digest = known.and_then(|k| k.digest(p, &meta));
            Ok(Content::Disk(f, meta.len(), digest))
        }
        _ => Ok(Content::None),
    }
}

fn write_entry(
    entry: &LayerEntry,
    out: &mut dyn TarSink,
    buf: &mut [u8],
    known: Option<&KnownFiles>,
) -> Result<()> {
    let content = open_content(entry, known)?;
    let size = content.len();
    let (header, pax) = build_header(entry, size)?;
    out.entry_start(size)?;
    if !pax.is_empty() {
        write_pax(out, &entry.tar_path(), &pax)?;
    }
    out.write_all(&header)?;
    match content {
        Content::None => {}
        Content::Bytes(b) => out.write_all(b)?,
        Content::Disk(f, n, digest) => {
            let taken = match digest {
                Some(d) if n > 0 => out.file_content(&d, &f, n)?,
                _ => false,
            };
            if !taken {
                copy_exact(f, n, out, buf, entry)?;
            }
        }
    }
    pad(out, size)?;
    out.entry_end(&entry.path)?;
    Ok(())
}

/// Copies exactly `n` bytes; a file that shrank while we read it is an error
/// (its header already promised `n` bytes), one that grew is cut at `n`.
fn copy_exact(
    f: File,
    n: u64,
    out: &mut dyn Write,
    buf: &mut [u8],
    entry: &LayerEntry,
) -> Result<()> {
    let mut src = f.take(n);
    let mut copied = 0u64;
    loop {
        let got = match src.read(buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("reading the content of {:?}", entry.path))
            }
        };
        out.write_all(&buf[..got])?;
        copied += got as u64;
    }
    if copied != n {
        bail!(
            "{:?} shrank from {n} to {copied} bytes while it was being written",
            entry.path
        );
    }
    Ok(())
}

fn pad(out: &mut dyn Write, size: u64) -> io::Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// PAX `mtime` value: decimal seconds with the fraction trimmed.
fn pax_time(t: Timespec) -> String {
    let (neg, sec, nsec) = if t.sec < 0 && t.nsec > 0 {
        (true, -(t.sec + 1), 1_000_000_000 - t.nsec)
    } else {
        (t.sec < 0, t.sec.unsigned_abs() as i64, t.nsec)
    };
    let sign = if neg { "-" } else { "" };
    if nsec == 0 {
        return format!("{sign}{sec}");
    }
    let frac = format!("{nsec:09}");
    format!("{sign}{sec}.{}", frac.trim_end_matches('0'))
}

fn type_flag(kind: &EntryKind) -> u8 {
    match kind {
        EntryKind::File(_) | EntryKind::Whiteout | EntryKind::Opaque => b'0',
        EntryKind::Hardlink { .. } => b'1',
        EntryKind::Symlink { .. } => b'2',
        EntryKind::CharDevice { .. } => b'3',
        EntryKind::BlockDevice { .. } => b'4',
        EntryKind::Dir => b'5',
        EntryKind::Fifo => b'6',
    }
}

/// Writes `value` as zero-padded octal filling `field` but its last byte (NUL).
fn put_octal(field: &mut [u8], value: u64) {
    let s = format!("{value:0width$o}", width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// Copies as much of `value` as fits (the PAX record holds the full value).
fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// PAX records (key, value) in the order they are written.
type PaxRecords = Vec<(String, Vec<u8>)>;

/// Builds the 512-byte ustar header and the PAX records it needs.
fn build_header(entry: &LayerEntry, size: u64) -> Result<([u8; BLOCK], PaxRecords)> {
    let mut pax: PaxRecords = Vec::new();
    let mut h = [0u8; BLOCK];
    let mut name = entry.tar_path();
    if entry.kind == EntryKind::Dir {
        name.push('/');
    }
    if name.len() > 100 {
        pax.push(("path".into(), name.clone().into_bytes()));
    }
    put_bytes(&mut h[0..100], name.as_bytes());
    put_octal(&mut h[100..108], u64::from(entry.mode & 0o7777));
    for (range, id, key) in [(108..116, entry.uid, "uid"), (116..124, entry.gid, "gid")] {
        if u64::from(id) > MAX_OCTAL_7 {
            pax.push((key.into(), id.to_string().into_bytes()));
            put_octal(&mut h[range], 0);
        } else {
            put_octal(&mut h[range], u64::from(id));
        }
    }
    if size > MAX_OCTAL_11 {
        pax.push(("size".into(), size.to_string().into_bytes()));
        put_octal(&mut h[124..136], 0);
    } else {
        put_octal(&mut h[124..136], size);
    }
    let mt = entry.mtime;
    if mt.nsec != 0 || mt.sec < 0 || mt.sec as u64 > MAX_OCTAL_11 {
        pax.push(("mtime".into(), pax_time(mt).into_bytes()));
    }
    put_octal(
        &mut h[136..148],
        if mt.sec < 0 || mt.sec as u64 > MAX_OCTAL_11 {
            0
        } else {
            mt.sec as u64
        },
    );
    h[156] = type_flag(&entry.kind);
    if let EntryKind::Symlink { target } | EntryKind::Hardlink { target } = &entry.kind {
        if target.len() > 100 {
            pax.push(("linkpath".into(), target.clone().into_bytes()));
        }
        put_bytes(&mut h[157..257], target.as_bytes());
    }
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } =
        entry.kind
    {
        if u64::from(major) > MAX_OCTAL_7 || u64::from(minor) > MAX_OCTAL_7 {
            bail!("device numbers {major}:{minor} do not fit a tar header");
        }
        put_octal(&mut h[329..337], u64::from(major));
        put_octal(&mut h[337..345], u64::from(minor));
    }
    let mut xattrs: Vec<&(String, Vec<u8>)> = entry
        .xattrs
        .iter()
        .filter(|(k, _)| keep_in_layer(k))
        .collect();
    xattrs.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in xattrs {
        if k.contains('=') || k.contains('\0') {
            bail!("xattr name {k:?} cannot be stored in a PAX header");
        }
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    set_checksum(&mut h);
    Ok((h, pax))
}

fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// One PAX record: `"<len> <key>=<value>\n"` where len counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

fn write_pax(out: &mut dyn Write, path: &str, records: &PaxRecords) -> Result<()> {
    let mut data = Vec::new();
    for (k, v) in records {
        data.extend(pax_record(k, v));
    }
    // A fixed, path-derived name (Go once put the PID here: golang#12358).
    let base = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let pax_name = format!("PaxHeaders.0/{base}");
    let mut h = [0u8; BLOCK];
    put_bytes(&mut h[0..100], pax_name.as_bytes());
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    put_octal(&mut h[124..136], data.len() as u64);
    put_octal(&mut h[136..148], 0);
    h[156] = b'x';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    set_checksum(&mut h);
    out.write_all(&h)?;
    out.write_all(&data)?;
    pad(out, data.len() as u64)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("path", b"a"), b"9 path=a\n");
        assert_eq!(pax_record("path", b"abcdef"), b"15 path=abcdef\n");
        let long = vec![b'x'; 95];
        let rec = pax_record("path", &long);
        let (n, _) = std::str::from_utf8(&rec).unwrap().split_once(' ').unwrap();
        assert_eq!(n.parse::<usize>().unwrap(), rec.len());
    }

    #[test]
    fn pax_time_formats_fractions_and_negatives() {
        assert_eq!(pax_time(Timespec::new(5, 500_000_000)), "5.5");
        assert_eq!(pax_time(Timespec::new(-2, 500_000_000)), "-1.5");
        assert_eq!(pax_time(Timespec::new(-3, 0)), "-3");
        assert_eq!(pax_time(Timespec::new(1, 1)), "1.000000001");
    }
}
