//! The sandbox's only `unsafe` code: thin wrappers over syscalls that `nix`
//! does not cover (capabilities, interface flags, xattrs, keyrings,
//! seccomp, signal dispositions) or marks unsafe (`fork`, `pre_exec`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::unistd::ForkResult;

/// The fd number the setup process writes its report messages to.
pub const REPORT_FD: RawFd = 3;

/// Makes the spawned setup process die with the calling thread
/// (`PR_SET_PDEATHSIG`) and puts `report_fd` at [`REPORT_FD`].
pub fn prepare_helper_command(cmd: &mut Command, report_fd: RawFd) {
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe syscalls (prctl, dup2, fcntl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if report_fd == REPORT_FD {
                // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
                if libc::fcntl(report_fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(report_fd, REPORT_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `fork()`, for the single-threaded setup process only.
pub fn fork() -> nix::Result<ForkResult> {
    // SAFETY: only called from the setup process, which never starts threads,
    // so the child can safely run arbitrary (allocating) code.
    unsafe { nix::unistd::fork() }
}

/// Forks a child that unshares a mount namespace, makes `/` private in it
/// and mounts an overlay on `target` with the first of `options` the kernel
/// accepts (an `EINVAL` moves on to the next), then exits; the namespace
/// and the mount die with it. `Ok` when a mount succeeded, else the error
/// of the last attempt. For the overlay probe of a caller that may unshare
/// a mount namespace (root).
pub fn mount_overlay_in_child(target: &CStr, options: &[CString]) -> io::Result<()> {
    // SAFETY: this process may have threads, so the child only makes
    // async-signal-safe calls (unshare, mount, reading errno, _exit) on
    // memory prepared before the fork: it allocates nothing and takes no
    // lock.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; `_exit` skips atexit handlers and stdio.
        unsafe { libc::_exit(probe_child(target, options)) }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok(()),
        (true, errno) => Err(io::Error::from_raw_os_error(errno)),
        _ => Err(io::Error::other(format!(
            "the probe child ended abnormally (status {status})"
        ))),
    }
}

/// The forked child of [`mount_overlay_in_child`]: 0 or an errno.
fn probe_child(target: &CStr, options: &[CString]) -> libc::c_int {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: plain syscalls on NUL-terminated strings that outlive them.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return errno();
        }
        let root = c"/";
        let private = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            private,
            std::ptr::null(),
        ) != 0
        {
            return errno();
        }
        let mut last = libc::EINVAL;
        for data in options {
            let fs = c"overlay";
            let rc = libc::mount(
                fs.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                libc::MS_NODEV,
                data.as_ptr().cast(),
            );
            if rc == 0 {
                return 0;
            }
            last = errno();
            if last != libc::EINVAL {
                break;
            }
        }
        last
    }
}

/// Drops capability `cap` from the bounding set (`PR_CAPBSET_DROP`).
/// Unknown capability numbers (EINVAL) are not an error.
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
    }
    Ok(())
}

/// Clears the ambient capability set.
pub fn clear_ambient() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the calling thread's effective, permitted and inheritable sets
/// (64-bit masks, bit n = capability n).
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |m: u64| [m as u32, (m >> 32) as u32];
    let (e, p, i) = (split(effective), split(permitted), split(inheritable));
    let data = [
        CapData {
            effective: e[0],
            permitted: p[0],
            inheritable: i[0],
        },
        CapData {
            effective: e[1],
            permitted: p[1],
            inheritable: i[1],
        },
    ];
    // SAFETY: header and data are valid, correctly laid out (version 3 takes
    // two CapData entries) and outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets IFF_UP on the loopback interface of the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() with constant arguments.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo"; SIOCGIFFLAGS/SIOCSIFFLAGS
    // read and write only `ifr_ifru.ifru_flags` in it.
    let result = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) < 0 {
            Err(io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req) < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: `sock` is an fd we own and close exactly once.
    unsafe { libc::close(sock) };
    result
}

/// Whether `path` (not following a final symlink) has the xattr `name`.
pub fn has_xattr(path: &std::path::Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated and live across the call; a
    // null buffer with size 0 only queries the value's size.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    rc >= 0
}

/// Takes ownership of [`REPORT_FD`] in the setup process and marks it
/// close-on-exec so the command never inherits it.
pub fn take_report_fd() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: the parent put an open pipe at REPORT_FD before exec (see
    // `prepare_helper_command`) and nothing else in this process owns it.
    let file = unsafe { std::fs::File::from_raw_fd(REPORT_FD) };
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    file
}

/// Resets every catchable signal to its default action. Ignored signals
/// survive exec, and the Rust runtime of the setup process ignores SIGPIPE:
/// the command must start with the defaults, as under docker.
pub fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMIN() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL has no memory-safety requirements;
        // invalid numbers just fail with EINVAL, which we ignore.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Gives the process a new anonymous session keyring, so the command cannot
/// reach the caller's session keys (runc does the same). Kernels without
/// keys support (ENOSYS) need nothing.
pub fn join_new_session_keyring() -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a null name asks for a new anonymous keyring; no memory is
    // passed to the kernel.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
    }
    Ok(())
}

/// Installs a seccomp filter on the calling thread (needs `no_new_privs`).
pub fn install_seccomp(program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long"))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel
    // copies the filter and never writes through the pointer.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd`'s child enter a new user namespace and a mount namespace
/// before exec (for [`super::userns`]): it unshares the user namespace,
/// writes its pid (4 bytes, native order) to `ready_fd`, waits for the byte
/// `g` on `go_fd` (the parent wrote the id maps; anything else makes the
/// spawn fail with EPERM), unshares the mount namespace, and asks for
/// SIGKILL when `parent` dies (failing with ESRCH if it already has).
pub fn prepare_userns_command(cmd: &mut Command, ready_fd: RawFd, go_fd: RawFd, parent: u32) {
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe syscalls (unshare, getpid, write, read, prctl,
    // getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(io::Error::last_os_error());
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(ready_fd, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(io::Error::last_os_error());
            }
            let mut go = [0u8; 1];
            loop {
                let n = libc::read(go_fd, go.as_mut_ptr().cast(), 1);
                if n == 1 && go[0] == b'g' {
                    break;
                }
                let err = io::Error::last_os_error();
                if n < 0 && err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            // A mount namespace owned by the new user namespace: mounts made
            // by the build stay private (the kernel turns the copied shared
            // mounts into slaves, so nothing propagates back to the host).
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Dies of signal `sig` (default action), as the re-executed child did, so
/// shells see the same status. Returns only if the signal does not kill.
pub fn die_of_signal(sig: libc::c_int) {
    // SAFETY: installing SIG_DFL, unblocking and raising have no memory
    // requirements; errors (invalid numbers) are ignored and we return.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// Marks every descriptor `>= first` close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11+; else one `fcntl` per entry of
/// `/proc/self/fd`). Marking instead of closing keeps the descriptors the
/// caller still uses (the report pipe) working until the exec.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOEXEC only changes descriptor flags; no
    // descriptor is closed, so nothing in this process loses one it owns.
    // The raw syscall needs no glibc 2.34.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    cloexec_by_listing(first)
}

/// The fallback of [`cloexec_from`] for kernels without `close_range`.
fn cloexec_by_listing(first: u32) -> io::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd: &RawFd| *fd >= first as RawFd)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number only changes its flags; a
        // number that was the listing's own (now closed) fd gives EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Makes the mount at `path` and every mount below it read-only, nosuid,
/// nodev and noexec (`mount_setattr(AT_RECURSIVE)`, Linux ≥ 5.12): a
/// remount changes only the top mount, and a recursive bind's submounts
/// keep their own flags.
pub fn lock_tree_readonly(path: &CStr) -> io::Result<()> {
    // <linux/mount.h>: struct mount_attr and its flags.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    const MOUNT_ATTR_NOEXEC: u64 = 0x8;
    const AT_RECURSIVE: libc::c_int = 0x8000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is a valid C string and `attr` a properly laid out
    // struct whose size is passed; the kernel only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn inheritable_dup() -> OwnedFd {
        let file = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup of an open descriptor, owned by the returned OwnedFd.
        unsafe { OwnedFd::from_raw_fd(libc::dup(file.as_raw_fd())) }
    }

    fn is_cloexec(fd: &OwnedFd) -> bool {
        // SAFETY: F_GETFD on a descriptor we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    fn both_ways_mark_descriptors_close_on_exec() {
        let (a, b) = (inheritable_dup(), inheritable_dup());
        assert!(!is_cloexec(&a) && !is_cloexec(&b));
        cloexec_by_listing(a.as_raw_fd() as u32).unwrap();
        assert!(is_cloexec(&a));
        let c = inheritable_dup();
        cloexec_from(c.as_raw_fd() as u32).unwrap();
        assert!(is_cloexec(&c));
    }
}
