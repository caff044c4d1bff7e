//! Thin, checked wrappers over the `*at` system calls the unpacker uses, so
//! every write is relative to a directory fd inside the destination root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::entry::Timespec;

pub(crate) fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

pub(crate) fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `openat2(dirfd, path, flags, resolve)`; `resolve` is a `RESOLVE_*` mask.
pub(crate) fn openat2(
    dir: BorrowedFd,
    path: &str,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let c = cstr(if path.is_empty() {
        b"."
    } else {
        path.as_bytes()
    })?;
    // SAFETY: open_how is plain data and must be zero-initialised (openat2(2)).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = resolve;
    loop {
        // SAFETY: valid fd, NUL-terminated path, correctly sized open_how.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            // SAFETY: the kernel returned a fresh fd that we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; the kernel asks to retry.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

/// Opens a directory below `dir` without following any symlink.
pub(crate) fn open_dir_beneath(dir: BorrowedFd, path: &str) -> io::Result<OwnedFd> {
    openat2(
        dir,
        path,
        libc::O_DIRECTORY | libc::O_RDONLY | libc::O_NOFOLLOW,
        0,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

pub(crate) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: NUL-terminated path; we own the returned fd.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open().
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn mkdirat(dir: BorrowedFd, name: &str, mode: u32) -> io::Result<()> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

pub(crate) fn unlinkat(dir: BorrowedFd, name: &str, is_dir: bool) -> io::Result<()> {
    let c = cstr(name.as_bytes())?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

pub(crate) fn symlinkat(target: &[u8], dir: BorrowedFd, name: &str) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name.as_bytes())?;
    // SAFETY: valid fd and C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

pub(crate) fn linkat(
    odir: BorrowedFd,
    oname: &str,
    ndir: BorrowedFd,
    nname: &str,
) -> io::Result<()> {
    let o = cstr(oname.as_bytes())?;
    let n = cstr(nname.as_bytes())?;
    // SAFETY: valid fds and C strings; flags 0 = do not follow a symlink source.
    check(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            o.as_ptr(),
            ndir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(drop)
}

pub(crate) fn mknodat(dir: BorrowedFd, name: &str, mode: u32, dev: u64) -> io::Result<()> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: valid fd and C string.
    check(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            c.as_ptr(),
            mode as libc::mode_t,
            dev as libc::dev_t,
        )
    })
    .map(drop)
}

pub(crate) fn lchownat(dir: BorrowedFd, name: &str, uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: valid fd and C string; AT_SYMLINK_NOFOLLOW changes the link itself.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// chmod without following symlinks (callers never pass a symlink).
pub(crate) fn chmodat(dir: BorrowedFd, name: &str, mode: u32) -> io::Result<()> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: valid fd and C string.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, 0) }).map(drop)
}

pub(crate) fn utimensat(dir: BorrowedFd, name: &str, t: Timespec) -> io::Result<()> {
    let c = cstr(name.as_bytes())?;
    let ts = libc::timespec {
        tv_sec: t.sec as libc::time_t,
        tv_nsec: t.nsec as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: valid fd, C string and two timespecs.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `Ok(None)` when it does not exist.
pub(crate) fn lstatat(dir: BorrowedFd, name: &str) -> io::Result<Option<libc::stat>> {
    let c = cstr(name.as_bytes())?;
    // SAFETY: stat is plain data filled in by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and stat buffer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(st))
}

pub(crate) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(crate) fn is_permission_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EINVAL) | Some(libc::ENOTSUP)
    )
}
