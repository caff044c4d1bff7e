//! Extended attributes: reading them from disk for layers, setting them on
//! unpack, and the policy of which ones belong in a layer at all.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use super::sys::{cpath, cstr};

/// Whether an xattr may be stored in a layer. Overlay's own attributes
/// describe the build host's overlay, and SELinux labels belong to the host.
pub(crate) fn keep_in_layer(name: &str) -> bool {
    !name.contains(".overlay.") && name != "security.selinux"
}

fn buf_call(mut f: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let need = f(&mut []);
        if need < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; need as usize];
        let got = f(&mut buf);
        if got < 0 {
            let err = io::Error::last_os_error();
            // ERANGE: the value grew between the two calls; ask again.
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// All xattrs of `path` (not following a final symlink), sorted by name.
/// Filesystems without xattr support yield an empty list.
pub(crate) fn read_all(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let c = cpath(path)?;
    let names = match buf_call(|b| {
        // SAFETY: buffer pointer/length pair is valid (or empty for the size query).
        unsafe { libc::llistxattr(c.as_ptr(), b.as_mut_ptr().cast(), b.len()) }
    }) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name_str) = std::str::from_utf8(name) else {
            continue;
        };
        let cn = cstr(name)?;
        let value = match buf_call(|b| {
            // SAFETY: as above.
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), b.as_mut_ptr().cast(), b.len()) }
        }) {
            Ok(v) => v,
            // Removed between list and get.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push((name_str.to_string(), value));
    }
    out.sort();
    Ok(out)
}

/// Reads one xattr; `Ok(None)` when absent or unsupported.
pub(crate) fn get(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c = cpath(path)?;
    let cn = cstr(name.as_bytes())?;
    match buf_call(|b| {
        // SAFETY: buffer pointer/length pair is valid.
        unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), b.as_mut_ptr().cast(), b.len()) }
    }) {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets an xattr on an open file or directory.
pub(crate) fn set_fd(fd: BorrowedFd, name: &str, value: &[u8]) -> io::Result<()> {
    let cn = cstr(name.as_bytes())?;
    // SAFETY: valid fd, C string and value slice.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
