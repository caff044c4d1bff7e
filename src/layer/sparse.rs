//! Writing files with holes: a layer's tar stores a sparse file densely
//! (as BuildKit and buildah write it), so the unpacker turns runs of zero
//! blocks back into holes instead of writing them, and a local copy seeks
//! over the source's holes (`SEEK_DATA`/`SEEK_HOLE`).
//!
//! Cost: a `memcmp` per 4 KiB block against zeros (stopping at the first
//! non-zero byte, so data blocks cost almost nothing) and fewer bytes
//! written; a file without zero blocks is written in the same large writes
//! as before.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Holes are made at this granularity: the common file-system block size.
/// A zero run shorter than a block is written as data.
const BLOCK: usize = 4096;
/// Read (and write) size: 32 blocks.
const CHUNK: usize = 32 * BLOCK;

/// A block of zeros to compare with: slice equality is `memcmp`, fast even
/// in debug builds and stopping at the first non-zero byte.
static ZEROS: [u8; BLOCK] = [0; BLOCK];

fn is_zero(block: &[u8]) -> bool {
    block == &ZEROS[..block.len()]
}

/// Reads until `buf` is full or the reader ends, so blocks stay aligned to
/// file offsets (a short read would shift every later block).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies `reader` into the empty `file`, leaving a hole for every
/// block-aligned run of zero blocks. Returns the bytes copied (the file's
/// length, holes included).
pub fn write_sparse(reader: &mut dyn Read, file: &File) -> io::Result<u64> {
    write_sparse_buf(reader, file, &mut Vec::new())
}

/// [`write_sparse`] reading through `buf`, grown to the read size once: a
/// caller copying many files passes the same one (a fresh zeroed buffer
/// per file was a tenth of a 20,000-file snapshot fill).
pub fn write_sparse_buf(reader: &mut dyn Read, file: &File, buf: &mut Vec<u8>) -> io::Result<u64> {
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    let buf = &mut buf[..CHUNK];
    let mut pos: u64 = 0;
    loop {
        let n = read_full(reader, buf)?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        // Consecutive data blocks go out in one write.
        let mut run_start: Option<usize> = None;
        for start in (0..n).step_by(BLOCK) {
            let block = &data[start..(start + BLOCK).min(n)];
            if block.len() == BLOCK && is_zero(block) {
                if let Some(s) = run_start.take() {
                    file.write_all_at(&data[s..start], pos + s as u64)?;
                }
            } else if run_start.is_none() {
                run_start = Some(start);
            }
        }
        if let Some(s) = run_start {
            file.write_all_at(&data[s..], pos + s as u64)?;
        }
        pos += n as u64;
    }
    // A trailing hole has no write to extend the file to its length.
    if file.metadata()?.len() < pos {
        file.set_len(pos)?;
    }
    Ok(pos)
}

fn lseek(f: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: valid fd; lseek has no memory effects.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ENXIO: no data (or hole) at or after `offset`.
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Copies the regular file `src` into the empty `dst`, keeping the source's
/// holes: only the data extents `SEEK_DATA`/`SEEK_HOLE` report are copied.
/// Falls back to [`write_sparse`] where the file system cannot say.
pub fn copy_sparse(src: &File, dst: &File) -> io::Result<u64> {
    copy_sparse_with(src, &src.metadata()?, dst, &mut Vec::new())
}

/// [`copy_sparse`] of a source whose fstat is `meta`. Each data extent is
/// copied by the kernel (`copy_file_range`: no pass through user space; a
/// reflink where the file system shares extents); `buf` is the read
/// buffer where the kernel cannot (another file system type, an old
/// kernel), grown once and reused by a caller copying many files. A file
/// with a block allocated for every byte has no hole to look for: it is
/// one extent, without the two `lseek`s.
pub fn copy_sparse_with(
    src: &File,
    meta: &std::fs::Metadata,
    dst: &File,
    buf: &mut Vec<u8>,
) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let len = meta.len();
    if len == 0 {
        return Ok(0);
    }
    let dense = meta.blocks().saturating_mul(512) >= len;
    let first = if dense {
        Ok(Some(0))
    } else {
        lseek(src, 0, libc::SEEK_DATA)
    };
    let mut data = match first {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return write_sparse_buf(&mut &*src, dst, buf);
        }
        Err(e) => return Err(e),
    };
    let mut in_kernel = true;
    // Where the last byte written ends: a trailing hole (or a source that
    // shrank) still needs the length set.
    let mut written = 0u64;
    while let Some(start) = data.filter(|&d| d < len) {
        let end = match dense {
            true => len,
            false => lseek(src, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len),
        };
        let mut at = start;
        if in_kernel {
            match copy_in_kernel(src, dst, at, end)? {
                Some(n) => at = n,
                None => in_kernel = false,
            }
        }
        if at < end {
            at = copy_through(src, dst, at, end, buf)?;
        }
        written = written.max(at);
        if dense {
            break;
        }
        data = lseek(src, end, libc::SEEK_DATA)?;
    }
    if written != len {
        dst.set_len(len)?;
    }
    Ok(len)
}

/// Copies `[at, end)` of `src` to the same offsets of `dst` with
/// `copy_file_range`. Returns where it got to (short when the source
/// ended early), or `None` when the kernel cannot copy between these
/// files at all (nothing was copied: the caller reads and writes).
fn copy_in_kernel(src: &File, dst: &File, mut at: u64, end: u64) -> io::Result<Option<u64>> {
    let start = at;
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
        let mut off_in = libc::off64_t::try_from(at)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let mut off_out = off_in;
        // SAFETY: valid fds and offsets owned by this frame; no memory is
        // passed to the kernel beyond the two offsets.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not supported between these files: read and write.
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                    if at == start =>
                {
                    return Ok(None);
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        at += n as u64;
    }
    Ok(Some(at))
}

/// Copies `[at, end)` of `src` to the same offsets of `dst` through `buf`.
fn copy_through(
    src: &File,
    dst: &File,
    mut at: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> io::Result<u64> {
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    while at < end {
        let want = ((end - at) as usize).min(CHUNK);
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn blocks(f: &File) -> u64 {
        f.metadata().unwrap().blocks()
    }

    #[test]
    fn zero_runs_become_holes_and_content_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = vec![0u8; 8 << 20];
        content[0] = 1;
        content[5 << 20] = 2;
        let f = File::create(dir.path().join("f")).unwrap();
        let n = write_sparse(&mut &content[..], &f).unwrap();
        assert_eq!(n, content.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), content);
        // Two 4 KiB data blocks (512-byte units), not 8 MiB.
        assert!(blocks(&f) <= 64, "{} blocks", blocks(&f));
    }

    #[test]
    fn trailing_hole_keeps_the_length_and_dense_data_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = vec![0u8; 3 * BLOCK + 100];
        content[10] = 9;
        let f = File::create(dir.path().join("t")).unwrap();
        write_sparse(&mut &content[..], &f).unwrap();
        assert_eq!(std::fs::read(dir.path().join("t")).unwrap(), content);
        let dense: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let g = File::create(dir.path().join("d")).unwrap();
        write_sparse(&mut &dense[..], &g).unwrap();
        assert_eq!(std::fs::read(dir.path().join("d")).unwrap(), dense);
    }

    #[test]
    fn copy_keeps_the_source_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = File::create(dir.path().join("s")).unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"middle", 32 << 20).unwrap();
        src.write_all_at(b"end", (64 << 20) - 3).unwrap();
        let src = File::open(dir.path().join("s")).unwrap();
        let dst = File::create(dir.path().join("d")).unwrap();
        assert_eq!(copy_sparse(&src, &dst).unwrap(), 64 << 20);
        assert_eq!(
            std::fs::read(dir.path().join("d")).unwrap(),
            std::fs::read(dir.path().join("s")).unwrap()
        );
        assert!(blocks(&dst) <= 128, "{} blocks", blocks(&dst));
        // A trailing hole keeps the length; a dense file (no lseek) and an
        // empty one are copied exactly, all through one buffer.
        let mut buf = Vec::new();
        let dense: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("dense"), &dense).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let tail = File::create(dir.path().join("tail")).unwrap();
        tail.write_all_at(b"start", 0).unwrap();
        tail.set_len(16 << 20).unwrap();
        for name in ["dense", "empty", "tail"] {
            let src = File::open(dir.path().join(name)).unwrap();
            let to = dir.path().join(format!("{name}.copy"));
            let dst = File::create(&to).unwrap();
            let meta = src.metadata().unwrap();
            assert_eq!(
                copy_sparse_with(&src, &meta, &dst, &mut buf).unwrap(),
                meta.len()
            );
            assert_eq!(
                std::fs::read(&to).unwrap(),
                std::fs::read(dir.path().join(name)).unwrap(),
                "{name}"
            );
        }
        let tail = File::open(dir.path().join("tail.copy")).unwrap();
        assert!(blocks(&tail) <= 64, "{} blocks", blocks(&tail));
    }
}
