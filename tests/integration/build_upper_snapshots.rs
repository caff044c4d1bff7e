//! A RUN's overlay upper dir kept as its layer's snapshot
//! (`engine::snapshot::adopt_run_upper`) must be exactly the tree an
//! unpack of the layer gives: compared file by file (type, mode, owner,
//! size, links, mtime, link target, device, xattrs including the opaque
//! mark, content) with snapshots unpacked from the same layers, over steps
//! that make files, dirs, symlinks, hard links, a FIFO, whiteouts, an
//! opaque dir, chmod/chown, xattrs, mount-point dirs and in-root
//! mount-point stubs (a managed file's dangling symlink), and the image
//! digest must not change.

use crate::common;
use crate::layer_common::set_xattr;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{stderr, tool, Env};
use sha2::{Digest, Sha256};

/// The steps under test; the last one reads the whole tree, so every layer
/// below it has a snapshot.
const DOCKERFILE: &str = "FROM scratch\n\
COPY busybox /bin/busybox\n\
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
COPY etc /etc\n\
COPY xa /xa\n\
RUN mkdir -p /tmp /root /d/sub /o/in && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd \
 && echo 'root:x:0:' > /etc/group && echo 1 > /d/a && echo 2 > /d/b && echo old > /o/in/old \
 && ln -s /d/a /lnk && ln /d/b /d/hard && chmod 4711 /d/b && mkfifo /d/fifo && echo x > /x \
 && chmod 600 /xa/f\n\
RUN --mount=type=tmpfs,target=/newmnt/cache rm /d/a && rm -rf /o && mkdir /o && echo new > /o/new \
 && chmod 700 /d/sub && touch /tmp/t && rm /tmp/t && ln /x /x2 && echo c > /d/c && chown 5:6 /d/c \
 && chmod 644 /xa/f && chmod 755 /d\n\
RUN echo more > /d/more && chmod 755 /d/b && test -f /run/missing/resolv.conf\n\
RUN find / -xdev -path /proc -prune -o -path /sys -prune -o -path /dev -prune -o \
 -printf '%p %m %U %G %s %n %T@ %l\\n' | sort > /view.txt\n";

/// The context: busybox, a dangling `/etc/resolv.conf` symlink (the
/// sandbox makes its target as an in-root mount-point stub, which must not
/// stay in a snapshot) and a file with a user xattr.
fn context(env: &Env) -> Option<PathBuf> {
    let busybox = tool("busybox", "busybox-static")?;
    let ctx = env.context("ctx", &[("Dockerfile", DOCKERFILE), ("xa/f", "hi\n")]);
    std::fs::copy(busybox, ctx.join("busybox")).expect("copy busybox");
    std::fs::create_dir_all(ctx.join("etc")).unwrap();
    std::os::unix::fs::symlink("/run/missing/resolv.conf", ctx.join("etc/resolv.conf")).unwrap();
    set_xattr(&ctx.join("xa/f"), "user.k", b"v");
    Some(ctx)
}

const REFUSED: &str = "snapshot: the layer is unpacked again for the next RUN";

fn build(env: &Env, ctx: &Path, envs: &[(&str, &str)], extra: &[&str]) -> (String, String) {
    let iid = env.path(&format!("iid-{}", envs.len()));
    let mut cmd = std::process::Command::new(common::rbuild_bin());
    cmd.arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "--iidfile"])
        .arg(&iid)
        .args(extra)
        .arg(ctx)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("RBUILD_NO_UPPER_SNAPSHOT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running rbuild");
    assert!(out.status.success(), "{}", stderr(&out));
    (std::fs::read_to_string(iid).unwrap(), stderr(&out))
}

#[test]
fn adopted_snapshots_equal_unpacked_ones_and_the_image_is_the_same() {
    if !common::require_root("adopting a RUN's upper dir (root only)") {
        return;
    }
    let adopted = Env::new();
    let Some(ctx) = context(&adopted) else {
        return;
    };
    // SOURCE_DATE_EPOCH=0 clamps every mtime in the layers: the two builds
    // give the same layers, and the adopted snapshots must take the
    // clamped times too (the last RUN writes every mtime to /view.txt).
    let sde = ("SOURCE_DATE_EPOCH", "0");
    let (id_a, log_a) = build(&adopted, &ctx, &[sde], &[]);
    assert!(!log_a.contains(REFUSED), "{log_a}");
    let unpacked = Env::new();
    let (id_u, log_u) = build(
        &unpacked,
        &ctx,
        &[sde, ("RBUILD_NO_UPPER_SNAPSHOT", "1")],
        &[],
    );
    assert!(log_u.contains(REFUSED), "{log_u}");
    assert_eq!(id_a, id_u, "the image digest changed");
    let (a, u) = (snapshots(&adopted), snapshots(&unpacked));
    assert_eq!(a.keys().collect::<Vec<_>>(), u.keys().collect::<Vec<_>>());
    assert!(a.len() >= 6, "{:?}", a.keys());
    for (name, tree) in &a {
        assert_same_tree(name, tree, &u[name]);
    }
}

/// Without SOURCE_DATE_EPOCH: the adopted snapshots against an unpack of
/// the same layers in the same store (its `layers/` moved away, the image
/// used as a base, every layer unpacked for the RUN on top).
#[test]
fn adopted_snapshots_equal_a_fresh_unpack_of_their_layers() {
    if !common::require_root("adopting a RUN's upper dir (root only)") {
        return;
    }
    let env = Env::new();
    let Some(ctx) = context(&env) else {
        return;
    };
    let (_, log) = build(&env, &ctx, &[], &["-t", "up:1"]);
    assert!(!log.contains(REFUSED), "{log}");
    let adopted = snapshots(&env);
    let layers = env.root().join("rbuild/layers");
    std::fs::rename(&layers, env.path("adopted-layers")).unwrap();
    std::fs::create_dir(&layers).unwrap();
    let on_top = env.context("on-top", &[("Dockerfile", "FROM up:1\nRUN true\n")]);
    build(&env, &on_top, &[], &["--no-cache"]);
    let unpacked = snapshots(&env);
    assert!(adopted.len() >= 6, "{:?}", adopted.keys());
    for (name, tree) in &adopted {
        let other = unpacked
            .get(name)
            .unwrap_or_else(|| panic!("{name} not unpacked"));
        assert_same_tree(name, tree, other);
    }
}

/// An upper dir that is not exactly its layer's tree is not adopted: a
/// file named `.wh.x` is a whiteout to every unpacker, so the next RUN must
/// see the unpack's view (no `/x`), not the upper's (a file `.wh.x`).
#[test]
fn an_upper_the_unpack_reads_otherwise_is_unpacked_again() {
    if !common::require_root("adopting a RUN's upper dir (root only)") {
        return;
    }
    let env = Env::new();
    let Some(busybox) = tool("busybox", "busybox-static") else {
        return;
    };
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\n\
        RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
        RUN echo x > /x\n\
        RUN touch /.wh.x\n\
        RUN ls -a / | tr '\\n' ' ' | sed 's/^/VIEW: /'\n";
    let ctx = env.context("ctx", &[("Dockerfile", dockerfile)]);
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    let (_, log) = build(&env, &ctx, &[], &[]);
    assert!(
        log.contains(&format!("{REFUSED}: /.wh.x is a name")),
        "{log}"
    );
    let view = log
        .lines()
        .find(|l| l.contains("VIEW: "))
        .expect("the view line");
    assert!(!view.contains(" x ") && !view.contains(".wh.x"), "{view}");
}

/// One object of a snapshot: everything an overlay lower shows of it.
type Tree = BTreeMap<String, String>;

/// Every snapshot dir of the store, each as a [`Tree`].
fn snapshots(env: &Env) -> BTreeMap<String, Tree> {
    let dir = env.root().join("rbuild/layers");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            tree(&e.path()),
        );
    }
    out
}

fn tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    for item in walkdir::WalkDir::new(root).min_depth(1) {
        let item = item.unwrap();
        let p = item.path();
        let m = p.symlink_metadata().unwrap();
        let ft = m.file_type();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        // A whiteout's other fields are not read by overlayfs (and a
        // kernel may share one inode between all of them).
        if ft.is_char_device() && m.rdev() == 0 {
            out.insert(rel, "whiteout".into());
            continue;
        }
        let content = match ft.is_file() {
            true => hex::encode(Sha256::digest(std::fs::read(p).unwrap())),
            false => String::new(),
        };
        let link = std::fs::read_link(p).map(|l| l.display().to_string());
        let (size, nlink) = match ft.is_dir() {
            true => (0, 0),
            false => (m.size(), m.nlink()),
        };
        let line = format!(
            "{:o} {}:{} size={size} nlink={nlink} mtime={}.{:09} link={:?} rdev={} xattrs={:?} {content}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            link.ok(),
            m.rdev(),
            xattrs(p),
        );
        out.insert(rel, line);
    }
    out
}

fn assert_same_tree(name: &str, a: &Tree, b: &Tree) {
    let diff: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("adopted {k}: {v}\n   unpacked: {:?}", b.get(k)))
        .chain(
            b.keys()
                .filter(|k| !a.contains_key(*k))
                .map(|k| format!("only unpacked: {k}: {}", b[k])),
        )
        .collect();
    assert!(
        diff.is_empty(),
        "snapshot {name} differs:\n{}",
        diff.join("\n")
    );
}

/// Every xattr of `path` (not following a symlink), sorted.
fn xattrs(path: &Path) -> Vec<(String, String)> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: a valid C string and buffer.
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listing xattrs of {}", path.display());
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let c = std::ffi::CString::new(name).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid C strings and buffer.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(got >= 0, "reading an xattr of {}", path.display());
        buf.truncate(got as usize);
        let name = String::from_utf8_lossy(name).into_owned();
        out.push((name, String::from_utf8_lossy(&buf).into_owned()));
    }
    out.sort();
    out
}
