//! Helpers shared by the layer tests: building real trees and comparing
//! two trees in everything a layer records.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

pub fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0);
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        if name.contains(".overlay.") || name == "security.selinux" {
            continue;
        }
        let cn = CString::new(name.clone()).unwrap();
        let mut v = vec![0u8; 4096];
        let k = unsafe { libc::lgetxattr(p.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(k >= 0);
        v.truncate(k as usize);
        out.push((name, v));
    }
    out.sort();
    out
}

pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

pub fn mknod(path: &Path, mode: u32, dev: u64) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let rc = unsafe { libc::mknod(p.as_ptr(), mode, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

pub fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything a layer records about one path, as a comparable string.
fn describe(path: &Path, with_mtime: bool) -> String {
    let m = fs::symlink_metadata(path).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        format!("symlink->{}", fs::read_link(path).unwrap().display())
    } else if ft.is_dir() {
        "dir".to_string()
    } else if ft.is_file() {
        format!(
            "file:{}:nlink{}:{:?}",
            m.size(),
            m.nlink(),
            fs::read(path).unwrap()
        )
    } else if ft.is_char_device() || ft.is_block_device() {
        format!("dev:{}:{:x}", ft.is_char_device(), m.rdev())
    } else {
        "fifo".to_string()
    };
    let mtime = if with_mtime {
        format!("{}.{:09}", m.mtime(), m.mtime_nsec())
    } else {
        String::new()
    };
    format!(
        "{kind} mode={:o} owner={}:{} mtime={mtime} xattrs={:?}",
        m.mode(),
        m.uid(),
        m.gid(),
        xattrs(path)
    )
}

pub fn snapshot(root: &Path, with_mtime: bool) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            (rel, describe(e.path(), with_mtime))
        })
        .collect()
}

/// Asserts two trees are identical in every recorded attribute.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let sa = snapshot(a, true);
    let sb = snapshot(b, true);
    let ka: Vec<&String> = sa.keys().collect();
    let kb: Vec<&String> = sb.keys().collect();
    assert_eq!(ka, kb, "different paths");
    for (k, v) in &sa {
        assert_eq!(v, &sb[k], "different metadata for {k}");
    }
}
