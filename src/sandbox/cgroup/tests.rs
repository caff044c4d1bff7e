//! Layout detection from real `/proc/self/cgroup` and mountinfo texts, and
//! the files written per controller. The v2 cases run on a plain directory
//! standing in for a delegated cgroup2 tree, because the test hosts have
//! every controller bound to v1 (the real v1 hierarchies are exercised end
//! to end by `tests/integration/build_limits.rs`).

use super::*;
use crate::sandbox::limits::SwapLimit;

/// This test machine: v1 controllers, cgroup2 mounted without controllers.
const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n\
    3:cpuset:/\n1:cpu:/\n0::/\n";
const HYBRID_MOUNTS: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn hybrid_host_uses_v1_per_controller() {
    let l = layout_from(HYBRID_CGROUP, HYBRID_MOUNTS, |_| Some(String::new()));
    assert_eq!(
        l.trees["memory"],
        Ok(Tree::V1("/sys/fs/cgroup/memory/process_api/abc".into()))
    );
    assert_eq!(l.trees["pids"], Ok(Tree::V1("/sys/fs/cgroup/pids".into())));
    assert_eq!(l.trees["cpu"], Ok(Tree::V1("/sys/fs/cgroup/cpu".into())));
    assert_eq!(
        l.trees["cpuset"],
        Ok(Tree::V1("/sys/fs/cgroup/cpuset".into()))
    );
}

#[test]
fn comounted_v1_and_mount_roots() {
    let cgroup = "4:cpu,cpuacct:/docker/x/build\n3:memory:/docker/x\n";
    let mounts = "\
1 0 0:1 /docker/x /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
2 0 0:2 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
    let l = layout_from(cgroup, mounts, |_| None);
    assert_eq!(
        l.trees["cpu"],
        Ok(Tree::V1("/sys/fs/cgroup/cpu,cpuacct/build".into()))
    );
    assert_eq!(
        l.trees["memory"],
        Ok(Tree::V1("/sys/fs/cgroup/memory".into()))
    );
    let err = l.trees["pids"].clone().unwrap_err();
    assert!(err.contains("no pids cgroup controller"), "{err}");
}

#[test]
fn v2_needs_delegation() {
    let cgroup = "0::/user.slice/user-1000.slice/app.scope\n";
    let mounts = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
    let own = PathBuf::from("/sys/fs/cgroup/user.slice/user-1000.slice/app.scope");
    let read = |p: &Path| {
        if p == own.join("cgroup.subtree_control") {
            Some("cpu pids\n".into())
        } else if p == own.join("cgroup.controllers") {
            Some("cpuset cpu pids\n".into())
        } else {
            None
        }
    };
    let l = layout_from(cgroup, mounts, read);
    assert_eq!(l.trees["pids"], Ok(Tree::V2(own.clone())));
    assert_eq!(l.trees["cpu"], Ok(Tree::V2(own.clone())));
    assert_eq!(l.trees["cpuset"], Ok(Tree::V2Leaf(own.clone())));
    let err = l.trees["memory"].clone().unwrap_err();
    assert!(err.contains("is not given the memory controller"), "{err}");
    assert!(err.contains("\"cpuset cpu pids\""), "{err}");
}

#[test]
fn mountinfo_escapes() {
    assert_eq!(unescape(r"/a\040b"), "/a b");
    assert_eq!(unescape(r"/plain\"), "/plain\\");
}

fn fake_v2(dir: &Path) -> Layout {
    let mut trees = BTreeMap::new();
    for c in CONTROLLERS {
        trees.insert(c, Ok(Tree::V2(dir.to_path_buf())));
    }
    Layout { trees }
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn v2_files_and_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        memory: Some(64 << 20),
        cpu_quota: Some(50_000),
        cpu_shares: Some(512),
        cpuset_cpus: Some("0".into()),
        pids: Some(20),
        ..Limits::default()
    };
    let (step, warnings) = create_in(&fake_v2(tmp.path()), &limits);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(step.dirs().len(), 1, "one child per hierarchy");
    let child = step.dirs()[0].clone();
    assert!(child
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with(&format!("rbuild-{}-", std::process::id())));
    assert_eq!(read(&child, "memory.max"), (64u64 << 20).to_string());
    // A plain dir has no memory.swap.max, as a kernel without swap
    // accounting: the implicit swap bound is dropped quietly.
    assert!(!child.join("memory.swap.max").exists());
    assert_eq!(read(&child, "cpu.max"), "50000 100000");
    assert_eq!(read(&child, "cpu.weight"), "20");
    assert_eq!(read(&child, "cpuset.cpus"), "0");
    assert_eq!(read(&child, "pids.max"), "20");
    assert_eq!(step.memory_limit(), Some(64 << 20));
    fs::write(
        child.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
    )
    .unwrap();
    assert_eq!(step.oom_kills(), 2);
    // A plain dir with files stands in for the cgroup: clear it so the
    // drop's rmdir can work as it does on cgroupfs.
    for f in fs::read_dir(&child).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    drop(step);
    assert!(!child.exists(), "the step's cgroup is removed");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn nothing_requested_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (step, warnings) = create_in(&fake_v2(tmp.path()), &Limits::default());
    assert!(step.dirs().is_empty() && warnings.is_empty());
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn unusable_controllers_warn_per_flag_and_default_pids_is_quiet() {
    let mut trees = BTreeMap::new();
    for c in CONTROLLERS {
        trees.insert(c, Err(format!("no {c} here")));
    }
    let layout = Layout { trees };
    let limits = Limits {
        memory: Some(1 << 30),
        pids: Some(2048),
        pids_is_default: true,
        ..Limits::default()
    };
    let (step, warnings) = create_in(&layout, &limits);
    assert!(step.dirs().is_empty());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("--memory not applied: no memory here"));
    assert!(warnings[0].contains("hint:"));
    let explicit = Limits {
        memory: Some(1 << 30),
        memory_swap: SwapLimit::Unlimited,
        pids: Some(10),
        ..Limits::default()
    };
    let (_, warnings) = create_in(&layout, &explicit);
    assert!(
        warnings[0].starts_with("--memory, --memory-swap not applied"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("--pids-limit not applied"),
        "{warnings:?}"
    );
}

#[test]
fn shares_convert_like_runc() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
}

#[test]
fn oom_message_names_the_limit() {
    assert_eq!(
        oom_message(Some(32 << 20)),
        "RUN was killed: out of memory (limit 32 MiB)"
    );
}

/// rbuild's own v2 cgroup has the controllers but passes none on: rbuild
/// moves itself (only) into `rbuild-PID-self` and enables what it needs.
#[test]
fn v2_leaf_moves_only_rbuild_then_enables() {
    let tmp = tempfile::tempdir().unwrap();
    let own = tmp.path();
    fs::write(own.join("cgroup.controllers"), "memory pids\n").unwrap();
    fs::write(
        own.join("cgroup.procs"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    let mut trees = BTreeMap::new();
    for c in CONTROLLERS {
        trees.insert(c, Ok(Tree::V2Leaf(own.to_path_buf())));
    }
    let layout = Layout { trees };
    let limits = Limits {
        pids: Some(30),
        ..Limits::default()
    };
    let (step, warnings) = create_in(&layout, &limits);
    assert!(warnings.is_empty(), "{warnings:?}");
    let leaf = own.join(format!("rbuild-{}-self", std::process::id()));
    assert_eq!(read(&leaf, "cgroup.procs"), std::process::id().to_string());
    assert_eq!(read(own, "cgroup.subtree_control"), "+pids");
    assert_eq!(read(&step.dirs()[0], "pids.max"), "30");
    std::mem::forget(step); // a plain dir with files: nothing to rmdir

    // Another process in the cgroup (pid 1 is never rbuild's): refused.
    let tmp = tempfile::tempdir().unwrap();
    let own = tmp.path();
    fs::write(
        own.join("cgroup.procs"),
        format!("1\n{}\n", std::process::id()),
    )
    .unwrap();
    let mut trees = BTreeMap::new();
    trees.insert("pids", Ok(Tree::V2Leaf(own.to_path_buf())));
    let explicit = Limits {
        pids: Some(30),
        ..Limits::default()
    };
    let (step, warnings) = create_in(&Layout { trees }, &explicit);
    assert!(step.dirs().is_empty());
    assert!(
        warnings[0].contains("also holds other processes ([1])"),
        "{warnings:?}"
    );
    assert!(
        !own.join("cgroup.subtree_control").exists(),
        "nothing enabled"
    );
    let moved = fs::read_dir(own)
        .unwrap()
        .flatten()
        .any(|e| e.path().is_dir());
    assert!(!moved, "no leaf made, nothing moved");
}

#[test]
fn explicit_swap_without_swap_accounting_is_a_note() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = Limits {
        memory: Some(64 << 20),
        memory_swap: SwapLimit::Bytes(128 << 20),
        ..Limits::default()
    };
    let (step, warnings) = create_in(&fake_v2(tmp.path()), &limits);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("--memory-swap not applied: the kernel does not account swap"));
    assert_eq!(
        read(&step.dirs()[0], "memory.max"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        step.memory_limit(),
        Some(64 << 20),
        "--memory still applies"
    );
    std::mem::forget(step);
}
