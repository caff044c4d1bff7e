//! End-to-end tests of the RUN sandbox on a real busybox-static rootfs.
//!
//! Every test runs as the invoking user. As root, the `rootless_*` tests
//! re-run this whole binary as an unprivileged user (created with `useradd`
//! if absent) under `setpriv`: with the user's subuid range, with a
//! single-id map, and as root inside a user namespace with the full subuid
//! mapping (how rootless rbuild runs the sandbox), so the same assertions
//! cover every rootless mode.

use crate::common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rbuild::sandbox::{
    overlay_available_with, run_with, ExtraFiles, IdMapMode, MountSpec, NetworkMode, RootfsSpec,
    RunOutcome, RunSpec, SandboxOptions, Stream, UserSpec,
};

use common::is_root;

fn single_id() -> bool {
    !is_root() && std::env::var("RBUILD_TEST_IDMAP").as_deref() == Ok("single")
}

fn opts() -> SandboxOptions {
    SandboxOptions {
        init_exe: PathBuf::from(env!("CARGO_BIN_EXE_rbuild")),
        id_map: if single_id() {
            IdMapMode::SingleId
        } else {
            IdMapMode::Auto
        },
        state_parent: None,
        state_dir: None,
    }
}

/// A busybox rootfs as two layers: `base` holds /bin/busybox, `applets`
/// holds the symlinks `busybox --install -s` made inside the sandbox.
struct Rootfs {
    tmp: tempfile::TempDir,
    lowers: Vec<PathBuf>,
    steps: usize,
}

struct Output {
    outcome: RunOutcome,
    stdout: String,
    stderr: String,
    upper: PathBuf,
}

fn spec(rootfs: RootfsSpec, argv: &[&str]) -> RunSpec {
    RunSpec {
        rootfs,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cwd: "/".into(),
        user: UserSpec::default(),
        hostname: "rbuild-test".into(),
        network: NetworkMode::None,
        mounts: vec![],
        extra_files: ExtraFiles::default(),
        limits: Default::default(),
    }
}

impl Rootfs {
    fn new() -> Rootfs {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        fs::create_dir_all(base.join("bin")).unwrap();
        fs::copy("/bin/busybox", base.join("bin/busybox")).expect("install busybox-static");
        fs::set_permissions(base.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        let mut rootfs = Rootfs {
            tmp,
            lowers: vec![base],
            steps: 0,
        };
        let out = rootfs.commit(&["/bin/busybox", "--install", "-s", "/bin"]);
        assert_eq!(out.outcome.exit_code, 0, "install failed: {}", out.stderr);
        rootfs
    }

    /// A fresh overlay over the current lowers.
    fn overlay(&mut self) -> RootfsSpec {
        self.steps += 1;
        let upper = self.tmp.path().join(format!("upper{}", self.steps));
        let work = self.tmp.path().join(format!("work{}", self.steps));
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&work).unwrap();
        RootfsSpec::Overlay {
            lowers: self.lowers.clone(),
            upper,
            work,
        }
    }

    fn run(&mut self, s: RunSpec) -> Output {
        self.try_run(s).unwrap()
    }

    fn try_run(&mut self, s: RunSpec) -> anyhow::Result<Output> {
        let upper = match &s.rootfs {
            RootfsSpec::Overlay { upper, .. } => upper.clone(),
            RootfsSpec::Dir(d) => d.clone(),
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let outcome = run_with(&opts(), &s, &mut |stream, chunk| match stream {
            Stream::Stdout => stdout.extend_from_slice(chunk),
            Stream::Stderr => stderr.extend_from_slice(chunk),
        })?;
        Ok(Output {
            outcome,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            upper,
        })
    }

    fn sh(&mut self, script: &str) -> Output {
        let s = spec(self.overlay(), &["/bin/sh", "-c", script]);
        self.run(s)
    }

    /// Runs argv and makes its upper dir the new top lower layer.
    fn commit(&mut self, argv: &[&str]) -> Output {
        let s = spec(self.overlay(), argv);
        let out = self.run(s);
        self.lowers.insert(0, out.upper.clone());
        out
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            e.path().strip_prefix(dir).unwrap().display().to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn shell_form_output_and_exit_code() {
    let mut r = Rootfs::new();
    let out = r.sh("echo out; echo err >&2; exit 3");
    assert_eq!(out.outcome.exit_code, 3);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
}

#[test]
fn output_is_streamed_live() {
    let mut r = Rootfs::new();
    let s = spec(
        r.overlay(),
        &["/bin/sh", "-c", "echo first; sleep 1; echo second >&2"],
    );
    let start = Instant::now();
    let mut chunks = Vec::new();
    let outcome = run_with(&opts(), &s, &mut |stream, chunk| {
        chunks.push((stream, chunk.to_vec(), start.elapsed()));
    })
    .unwrap();
    let total = start.elapsed();
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(
        (chunks[0].0, chunks[0].1.as_slice()),
        (Stream::Stdout, &b"first\n"[..])
    );
    assert_eq!(
        (chunks[1].0, chunks[1].1.as_slice()),
        (Stream::Stderr, &b"second\n"[..])
    );
    assert!(
        total - chunks[0].2 >= Duration::from_millis(800),
        "first chunk came late"
    );
}

#[test]
fn exec_form_uses_path_and_env() {
    let mut r = Rootfs::new();
    let mut s = spec(r.overlay(), &["env"]);
    s.env.push("GREETING=hello world".into());
    let out = r.run(s);
    assert_eq!(out.outcome.exit_code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nGREETING=hello world\n"
    );
}

#[test]
fn missing_program_is_an_error() {
    let mut r = Rootfs::new();
    let s = spec(r.overlay(), &["no-such-program"]);
    let err = r
        .try_run(s)
        .err()
        .expect("exec of a missing program must fail");
    assert!(
        format!("{err:#}").contains("executable file not found"),
        "{err:#}"
    );
}

#[test]
fn killed_by_signal_gives_128_plus_n() {
    let mut r = Rootfs::new();
    assert_eq!(r.sh("kill -9 $$").outcome.exit_code, 137);
}

#[test]
fn cwd_is_created_and_used() {
    let mut r = Rootfs::new();
    let mut s = spec(
        r.overlay(),
        &["/bin/sh", "-c", "pwd; readlink /proc/self/cwd"],
    );
    s.cwd = "/work/deep/dir".into();
    let out = r.run(s);
    assert_eq!(out.stdout, "/work/deep/dir\n/work/deep/dir\n");
    assert!(out.upper.join("work/deep/dir").is_dir());
}

#[test]
fn user_switching_and_capabilities() {
    let mut r = Rootfs::new();
    let add = r.commit(&[
        "/bin/sh",
        "-c",
        "mkdir -p /etc /tmp && chmod 1777 /tmp && echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group",
    ]);
    assert_eq!(add.outcome.exit_code, 0, "{}", add.stderr);
    // Root inside: docker's default capabilities, no_new_privs.
    let out = r.sh("grep -E '^(CapEff|CapBnd|CapInh|CapAmb|NoNewPrivs)' /proc/self/status; id -u");
    assert!(
        out.stdout.contains("CapEff:\t00000000a80425fb"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapBnd:\t00000000a80425fb"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapInh:\t0000000000000000"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapAmb:\t0000000000000000"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("NoNewPrivs:\t1"), "{}", out.stdout);
    assert!(out.stdout.ends_with("0\n"));

    let mut s = spec(
        r.overlay(),
        &[
            "/bin/sh",
            "-c",
            "id -un; id -u; id -g; id -G; grep CapEff /proc/self/status; touch /tmp/owned",
        ],
    );
    s.user = UserSpec {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![1000, 2000],
    };
    if single_id() {
        let err = r
            .try_run(s)
            .err()
            .expect("uid 1000 is unmapped in a single-id map");
        assert!(format!("{err:#}").contains("mapped"), "{err:#}");
        return;
    }
    let out = r.run(s);
    assert_eq!(
        out.stdout, "app\n1000\n1000\n1000 2000\nCapEff:\t0000000000000000\n",
        "{}",
        out.stderr
    );
    // The upper dir holds host ids; rootless, the outcome's maps undo that.
    let meta = fs::metadata(out.upper.join("tmp/owned")).unwrap();
    match &out.outcome.id_maps {
        None => assert_eq!((meta.uid(), meta.gid()), (1000, 1000)),
        Some(maps) => {
            assert_ne!(meta.uid(), 1000);
            assert_eq!(maps.to_container_uid(meta.uid()), Some(1000));
            assert_eq!(maps.to_container_gid(meta.gid()), Some(1000));
        }
    }
    assert_eq!(out.outcome.id_maps.is_some(), !is_root());
}

#[test]
fn network_none_has_only_loopback_up() {
    let mut r = Rootfs::new();
    let out = r.sh("ip -o link; echo ---; tail -n +3 /proc/net/dev | cut -d: -f1");
    let (links, devs) = out.stdout.split_once("---\n").unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    assert_eq!(devs.trim(), "lo");
}

#[test]
fn namespaces_differ_from_the_host() {
    let kinds = ["mnt", "pid", "ipc", "uts", "net", "user"];
    let host: Vec<String> = kinds
        .iter()
        .map(|k| {
            fs::read_link(format!("/proc/self/ns/{k}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    let mut r = Rootfs::new();
    let out =
        r.sh("for k in mnt pid ipc uts net user; do readlink /proc/self/ns/$k; done; echo $$");
    let inside: Vec<&str> = out.stdout.lines().collect();
    for (i, kind) in kinds.iter().enumerate() {
        // A user namespace is only used rootless.
        let same = *kind == "user" && is_root();
        assert_eq!(
            inside[i] == host[i],
            same,
            "{kind}: {} vs {}",
            inside[i],
            host[i]
        );
    }
    // The shell is the only child of init: PID 2 in a fresh pid namespace.
    assert_eq!(inside[6], "2");
}

#[test]
fn network_host_sees_host_interfaces() {
    let host = fs::read_to_string("/proc/net/dev").unwrap();
    let mut r = Rootfs::new();
    let mut s = spec(r.overlay(), &["/bin/cat", "/proc/net/dev"]);
    s.network = NetworkMode::Host;
    let out = r.run(s);
    assert_eq!(out.outcome.exit_code, 0, "{}", out.stderr);
    let names = |t: &str| -> Vec<String> {
        t.lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|n| n.trim().to_string())
            .collect()
    };
    assert_eq!(names(&out.stdout), names(&host));
}

#[test]
fn hostname_and_managed_etc_files() {
    let mut r = Rootfs::new();
    let mut s = spec(
        r.overlay(),
        &[
            "/bin/sh",
            "-c",
            "hostname; cat /etc/hostname /etc/hosts /etc/resolv.conf; \
             echo scribble >> /etc/hosts || echo read-only",
        ],
    );
    s.hostname = "buildbox".into();
    s.extra_files = ExtraFiles {
        resolv_conf: Some("nameserver 192.0.2.53\n".into()),
        hosts: Some("127.0.0.1 localhost buildbox\n".into()),
        hostname: Some("buildbox\n".into()),
    };
    let out = r.run(s);
    assert_eq!(
        out.stdout,
        "buildbox\nbuildbox\n127.0.0.1 localhost buildbox\nnameserver 192.0.2.53\nread-only\n"
    );
    // The files are bound read-only, as BuildKit binds them: neither the
    // mount points nor the failed write reach the upper dir.
    assert!(entries(&out.upper).is_empty(), "{:?}", entries(&out.upper));
    assert!(out.outcome.mount_stubs.is_empty());
}

#[test]
fn background_process_does_not_hang_the_step() {
    let mut r = Rootfs::new();
    let start = Instant::now();
    let out = r.sh("sleep 1000 & echo started");
    assert_eq!(out.outcome.exit_code, 0);
    assert_eq!(out.stdout, "started\n");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn orphaned_children_are_reaped() {
    let mut r = Rootfs::new();
    // The subshell exits at once, so each sleep is reparented to PID 1;
    // without a reaping init they would stay zombies.
    let out = r.sh("for i in 1 2 3 4 5; do (sleep 0.05 &); done; sleep 1; \
         grep -l '^State:.*Z' /proc/[0-9]*/status; echo done");
    assert_eq!(out.stdout, "done\n", "zombies left: {}", out.stdout);
}

#[test]
fn sigterm_is_forwarded_to_the_command() {
    let mut r = Rootfs::new();
    // The command signals PID 1 (init), which must forward it back.
    let out = r.sh("trap 'echo got-term; exit 7' TERM; kill -TERM 1; sleep 5 & wait");
    assert_eq!(out.outcome.exit_code, 7, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "got-term\n");
}

#[test]
fn escape_attempts_do_not_touch_the_host() {
    let host_dir = tempfile::tempdir().unwrap();
    let sentinel = host_dir.path().join("sentinel");
    fs::write(&sentinel, "original").unwrap();
    let p = sentinel.display().to_string();
    let mut r = Rootfs::new();
    let script = format!(
        "mkdir -p $(dirname {p}); \
         echo pwned > /proc/1/root{p}; \
         echo pwned > /proc/self/root{p}; \
         echo pwned > /../../../..{p}; \
         cd / && cd ../../../.. && echo pwned > .{p}; \
         mkdir -p /jail && chroot /jail /bin/sh -c true; \
         chroot ../../.. /bin/sh -c 'echo pwned > {p}'; \
         mount -t tmpfs none /mnt && echo mounted; \
         mount --bind / /mnt && echo bound; \
         unshare -U true && echo unshared-user; \
         unshare -Urm true && echo unshared-user-mount; \
         unshare -n true && echo unshared-net; \
         nsenter -t 1 -m true && echo entered; \
         umount -l /proc && echo unmounted-proc; \
         echo 1 > /sys/kernel/mm/ksm/run && echo wrote-sys; \
         echo 3 > /proc/sys/vm/drop_caches && echo wrote-proc-sys; \
         echo h > /proc/sysrq-trigger && echo wrote-sysrq; \
         cat /proc/kcore | head -c1 | wc -c; \
         echo end"
    );
    let out = r.sh(&script);
    assert_eq!(fs::read_to_string(&sentinel).unwrap(), "original");
    assert_eq!(fs::read_dir(host_dir.path()).unwrap().count(), 1);
    for bad in [
        "mounted",
        "bound",
        "unmounted-proc",
        "wrote-sys",
        "wrote-proc-sys",
        "wrote-sysrq",
        "unshared-user",
        "unshared-net",
        "entered",
    ] {
        assert!(!out.stdout.contains(bad), "{bad}: {}", out.stdout);
    }
    assert!(out.stdout.ends_with("0\nend\n"), "{}", out.stdout);
    // The writes that "succeeded" landed in the rootfs (upper dir) only.
    let inside = out.upper.join(p.trim_start_matches('/'));
    assert!(inside.exists(), "{}", inside.display());
}

#[test]
fn device_nodes_made_by_the_command_cannot_be_opened() {
    // Without a device cgroup, nodev mounts are what keep a root command with
    // CAP_MKNOD away from host devices.
    // A real disk (not loop/zram/ram, whose reads may fail anyway).
    let block = fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !["loop", "zram", "ram"].iter().any(|p| name.starts_with(p))
        })
        .filter_map(|e| fs::read_to_string(e.path().join("dev")).ok())
        .next()
        .map(|d| d.trim().replace(':', " "))
        .unwrap_or_else(|| "7 0".into());
    let cache = tempfile::tempdir().unwrap();
    let mut r = Rootfs::new();
    let script = format!(
        "for d in / /dev/ /dev/shm/ /tmp/ /cache/; do mkdir -p $d; \
           mknod ${{d}}blk b {block} && head -c1 ${{d}}blk >/dev/null && echo opened-$d; \
           mknod ${{d}}nul c 1 3 && echo x > ${{d}}nul && echo opened-nul-$d; \
         done; echo x > /dev/null && echo null-ok"
    );
    let mut s = spec(r.overlay(), &["/bin/sh", "-c", &script]);
    s.mounts = vec![
        MountSpec::Bind {
            source: cache.path().to_path_buf(),
            target: "/cache".into(),
            readonly: false,
        },
        MountSpec::Tmpfs {
            target: "/tmp".into(),
            size: None,
        },
    ];
    let out = r.run(s);
    assert_eq!(out.stdout, "null-ok\n", "{}", out.stderr);
}

#[test]
fn signals_start_with_default_dispositions() {
    let mut r = Rootfs::new();
    // The setup process is a Rust program that ignores SIGPIPE; an ignored
    // signal would survive exec and `kill -PIPE` would do nothing.
    let out = r.sh("kill -PIPE $$; echo alive");
    assert_eq!(out.outcome.exit_code, 141, "{}", out.stdout);
    assert_eq!(out.stdout, "");
}

#[test]
fn overlay_changes_go_to_upper_only() {
    let mut r = Rootfs::new();
    let lower_ls = r.lowers[0].join("bin/ls");
    assert!(fs::symlink_metadata(&lower_ls)
        .unwrap()
        .file_type()
        .is_symlink());
    let out = r.sh("echo new > /newfile && rm /bin/ls && test ! -e /bin/ls");
    assert_eq!(out.outcome.exit_code, 0, "{}", out.stderr);
    assert_eq!(
        fs::read_to_string(out.upper.join("newfile")).unwrap(),
        "new\n"
    );
    let wh = fs::symlink_metadata(out.upper.join("bin/ls")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    // The lower layer is untouched.
    assert!(fs::symlink_metadata(&lower_ls)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!r.lowers[0].join("newfile").exists());
    // No mount point (proc, dev, sys) leaked into the upper dir.
    assert_eq!(entries(&out.upper), vec!["bin", "bin/ls", "newfile"]);
}

/// The RUN overlay is `volatile`: without it, the overlay's teardown at
/// the end of every step syncs the upper dir's whole filesystem
/// (docs/sandbox.md, "Root filesystem").
#[test]
fn overlay_root_is_volatile() {
    let mut r = Rootfs::new();
    let out = r.sh("cat /proc/self/mountinfo");
    assert_eq!(out.outcome.exit_code, 0, "{}", out.stderr);
    let root = out
        .stdout
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/") && l.contains(" - overlay "))
        .unwrap_or_else(|| panic!("no overlay root in:\n{}", out.stdout));
    assert!(
        root.split(' ')
            .next_back()
            .unwrap()
            .split(',')
            // Kernels since 6.7 show it as `fsync=volatile`.
            .any(|o| o == "volatile" || o == "fsync=volatile"),
        "{root}"
    );
}

#[test]
fn no_mounts_leak_into_the_host() {
    let _mounts = common::host_mounts_exclusive();
    let before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut r = Rootfs::new();
    let cache = tempfile::tempdir().unwrap();
    let mut s = spec(
        r.overlay(),
        &["/bin/sh", "-c", "cat /proc/self/mountinfo | wc -l"],
    );
    s.mounts = vec![
        MountSpec::Bind {
            source: cache.path().to_path_buf(),
            target: "/cache".into(),
            readonly: false,
        },
        MountSpec::Tmpfs {
            target: "/scratch".into(),
            size: None,
        },
    ];
    let out = r.run(s);
    let inside: usize = out.stdout.trim().parse().unwrap();
    assert!(inside >= 8, "{}", out.stdout);
    let leaked = mounts_added_under_tmp(&before);
    assert!(leaked.is_empty(), "mounts left on the host: {leaked:#?}");
}

/// Host mounts that appeared since `before` (a `/proc/self/mountinfo`
/// snapshot) below the temp dir, where every sandbox of these tests keeps its
/// rootfs, state and mount sources. Mounts elsewhere are other programs' (a
/// dockerd running beside the tests mounts under its own data root): a
/// whole-table comparison failed on those without any leak of ours.
fn mounts_added_under_tmp(before: &str) -> Vec<String> {
    let tmp = std::env::temp_dir();
    let tmp = tmp.to_string_lossy();
    let old: std::collections::HashSet<&str> = before.lines().collect();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| !old.contains(l) && l.contains(tmp.as_ref()))
        .map(str::to_string)
        .collect()
}

#[test]
fn bind_and_tmpfs_mounts() {
    let mut r = Rootfs::new();
    let cache = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    fs::write(ro.path().join("secret"), "s3cret").unwrap();
    let mut s = spec(
        r.overlay(),
        &[
            "/bin/sh",
            "-c",
            "echo cached > /var/cache/app/f; cat /run/secrets/secret; echo; \
             touch /run/secrets/x && echo wrote-ro; \
             echo t > /scratch/t && grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
        ],
    );
    s.mounts = vec![
        MountSpec::Bind {
            source: cache.path().to_path_buf(),
            target: "/var/cache/app".into(),
            readonly: false,
        },
        MountSpec::Bind {
            source: ro.path().to_path_buf(),
            target: "/run/secrets".into(),
            readonly: true,
        },
        MountSpec::Tmpfs {
            target: "/scratch".into(),
            size: Some(1 << 20),
        },
    ];
    let out = r.run(s);
    assert_eq!(out.stdout, "s3cret\ntmpfs\n", "{}", out.stderr);
    assert_eq!(
        fs::read_to_string(cache.path().join("f")).unwrap(),
        "cached\n"
    );
    assert!(!ro.path().join("x").exists());
    // Mount points for missing targets never reach the upper dir.
    assert!(entries(&out.upper).is_empty(), "{:?}", entries(&out.upper));
}

#[test]
fn mount_point_below_a_symlink_is_reported_where_it_was_made() {
    let mut r = Rootfs::new();
    let link = r.commit(&["/bin/sh", "-c", "mkdir /var && ln -s ../run /var/run"]);
    assert_eq!(link.outcome.exit_code, 0, "{}", link.stderr);
    let secrets = tempfile::tempdir().unwrap();
    fs::write(secrets.path().join("token"), "t0k3n").unwrap();
    let mut s = spec(r.overlay(), &["/bin/cat", "/run/secrets/token"]);
    s.mounts = vec![MountSpec::Bind {
        source: secrets.path().to_path_buf(),
        target: "/var/run/secrets".into(),
        readonly: true,
    }];
    let out = r.run(s);
    assert_eq!(out.stdout, "t0k3n");
    // The image's symlink is followed inside the root; the dirs made for the
    // mount point land in the upper dir and are reported for the layer code.
    assert_eq!(out.outcome.mount_stubs, vec!["/run", "/run/secrets"]);
    assert_eq!(entries(&out.upper), vec!["run", "run/secrets"]);
}

#[test]
fn dir_rootfs_fallback_reports_created_mount_points() {
    let mut r = Rootfs::new();
    // Flatten the layers into one dir, as a copying fallback would.
    let dir = r.tmp.path().join("flat");
    let cp = Command::new("cp")
        .args(["-a", &format!("{}/.", r.lowers[1].display())])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(cp.success());
    for e in fs::read_dir(r.lowers[0].join("bin")).unwrap() {
        let e = e.unwrap();
        let target = fs::read_link(e.path()).unwrap();
        std::os::unix::fs::symlink(target, dir.join("bin").join(e.file_name())).unwrap();
    }
    let out = r.run(spec(
        RootfsSpec::Dir(dir.clone()),
        &["/bin/sh", "-c", "echo hi > /f; ls /dev/null"],
    ));
    assert_eq!(out.stdout, "/dev/null\n", "{}", out.stderr);
    assert_eq!(fs::read_to_string(dir.join("f")).unwrap(), "hi\n");
    let mut stubs = out.outcome.mount_stubs.clone();
    stubs.sort();
    assert_eq!(stubs, vec!["/dev", "/proc", "/sys"]);
}

/// Host pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// The body of `killing_the_caller_kills_the_sandbox`, run in a child
/// process; does nothing when run directly.
#[test]
#[ignore]
fn child_runs_a_long_sandbox() {
    let Ok(secs) = std::env::var("RBUILD_TEST_SLEEP") else {
        return;
    };
    let mut r = Rootfs::new();
    let _ = r.sh(&format!("sleep {secs} & exec sleep {secs}"));
}

#[test]
fn killing_the_caller_kills_the_sandbox() {
    let _mounts = common::host_mounts_exclusive();
    let before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let secs = format!("3{}", std::process::id());
    // The killed child cannot clean up its temp dirs: keep them in ours.
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("TMPDIR", tmp.path())
        .args([
            "--exact",
            "sandbox_run::child_runs_a_long_sandbox",
            "--ignored",
            "--nocapture",
        ])
        .env("RBUILD_TEST_SLEEP", &secs)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while pids_running(&["sleep", &secs]).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "sandbox never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    while !pids_running(&["sleep", &secs]).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "sandbox processes survived their caller"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let leaked = mounts_added_under_tmp(&before);
    assert!(leaked.is_empty(), "mounts left on the host: {leaked:#?}");
}

#[test]
fn overlay_probe_succeeds() {
    assert!(overlay_available_with(&opts()));
}

#[test]
fn rootless_with_subuid_range() {
    common::rerun_as_test_user(module_path!(), "auto");
}

#[test]
fn rootless_with_single_id_map() {
    common::rerun_as_test_user(module_path!(), "single");
}

/// The sandbox as rootless rbuild runs it: as root inside a user namespace
/// with the full subuid mapping (here made by util-linux `unshare`), where
/// it must add no nested user namespace and mount overlayfs with
/// `userxattr`.
#[test]
fn rootless_root_in_user_namespace() {
    if !common::require_root("making the subuid-mapped user namespace") {
        return;
    }
    common::ensure_test_user();
    let map = |file| {
        let (start, count) = common::test_user_range(file);
        format!("{start},1,{count}")
    };
    let (users, groups) = (map("/etc/subuid"), map("/etc/subgid"));
    let wrapper: Vec<String> = [
        "unshare",
        "--user",
        "--mount",
        "--map-root-user",
        "--map-users",
        &users,
        "--map-groups",
        &groups,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    common::rerun_as_test_user_via(module_path!(), "auto", &wrapper);
}
