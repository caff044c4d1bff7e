//! Per-step cgroups: a child cgroup of the cgroup rbuild itself is in, in
//! every hierarchy that holds a controller a limit needs (cgroup v1 per
//! controller, or cgroup v2 where rbuild's cgroup delegates the controller
//! to its children through `cgroup.subtree_control`). The sandbox's setup
//! process is moved in before it forks, so init and the command inherit it.
//!
//! Rules kept here: only directories this module created are written to
//! (rbuild's own cgroup is only read: cpuset's cpus and mems to copy), no
//! process but the sandbox's is ever moved, and the child is removed when
//! the step ends, also on errors ([`StepCgroup`]'s `Drop`). Where a
//! controller is missing or not writable (rootless without delegation) the
//! limits it would carry are reported as warnings and the step runs without
//! them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::limits::{human_bytes, Limits, SwapLimit};

/// The controllers rbuild sets limits with.
const CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuset", "pids"];

/// Where one controller lives for rbuild's own process.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tree {
    /// A cgroup v1 hierarchy; the path is rbuild's own cgroup in it.
    V1(PathBuf),
    /// The unified hierarchy; the path is rbuild's own cgroup, whose
    /// `cgroup.subtree_control` enables the controller for children.
    V2(PathBuf),
    /// The unified hierarchy, where rbuild's own cgroup has the controller
    /// (`cgroup.controllers`) but does not pass it on yet: rbuild first
    /// moves itself into a leaf child (`rbuild-PID-self`), since a v2 cgroup
    /// with processes cannot enable controllers for its children.
    V2Leaf(PathBuf),
}

impl Tree {
    fn dir(&self) -> &Path {
        match self {
            Tree::V1(p) | Tree::V2(p) | Tree::V2Leaf(p) => p,
        }
    }
    fn is_v2(&self) -> bool {
        !matches!(self, Tree::V1(_))
    }
}

/// Where each controller is, or why it is not usable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Layout {
    trees: BTreeMap<&'static str, Result<Tree, String>>,
}

/// The host's layout as seen by this process, read once.
fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        layout_from(&cgroup, &mountinfo, |p| fs::read_to_string(p).ok())
    })
}

/// Builds the layout from `/proc/self/cgroup` and `/proc/self/mountinfo`;
/// `read` reads a file (the v2 `cgroup.controllers` and `cgroup.subtree_control`).
fn layout_from(cgroup: &str, mountinfo: &str, read: impl Fn(&Path) -> Option<String>) -> Layout {
    let mounts = cgroup_mounts(mountinfo);
    let mut v1: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut v2 = None;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if ctrls.is_empty() {
            v2 = mounts
                .iter()
                .find(|m| m.v2)
                .map(|m| (m.dir_for(path), m.mountpoint.clone()));
            continue;
        }
        for c in CONTROLLERS {
            if !ctrls.split(',').any(|x| x == c) {
                continue;
            }
            if let Some(m) = mounts
                .iter()
                .find(|m| !m.v2 && m.options.iter().any(|o| o == c))
            {
                v1.insert(c, m.dir_for(path));
            }
        }
    }
    let v2_file = |name: &str| {
        v2.as_ref()
            .and_then(|(dir, _)| read(&dir.join(name)))
            .unwrap_or_default()
    };
    let (available, delegated) = (
        v2_file("cgroup.controllers"),
        v2_file("cgroup.subtree_control"),
    );
    let mut trees = BTreeMap::new();
    for c in CONTROLLERS {
        let tree = if let Some(dir) = v1.get(c) {
            Ok(Tree::V1(dir.clone()))
        } else if let Some((dir, _)) = &v2 {
            if delegated.split_whitespace().any(|x| x == c) {
                Ok(Tree::V2(dir.clone()))
            } else if available.split_whitespace().any(|x| x == c) {
                Ok(Tree::V2Leaf(dir.clone()))
            } else {
                Err(format!(
                    "rbuild's cgroup {} is not given the {c} controller by its parent \
                     ({}/cgroup.controllers lists {:?})",
                    dir.display(),
                    dir.display(),
                    available.trim()
                ))
            }
        } else {
            Err(format!("no {c} cgroup controller is mounted"))
        };
        trees.insert(c, tree);
    }
    Layout { trees }
}

/// One cgroup or cgroup2 mount from mountinfo.
struct CgroupMount {
    v2: bool,
    root: String,
    mountpoint: PathBuf,
    options: Vec<String>,
}

impl CgroupMount {
    /// The directory of cgroup `path` (as in /proc/self/cgroup) under this mount.
    fn dir_for(&self, path: &str) -> PathBuf {
        let rel = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root.as_str()).unwrap_or(path)
        };
        match rel.trim_start_matches('/') {
            "" => self.mountpoint.clone(),
            rel => self.mountpoint.join(rel),
        }
    }
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let v2 = match right[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        out.push(CgroupMount {
            v2,
            root: unescape(left[3]),
            mountpoint: PathBuf::from(unescape(left[4])),
            options: right[2].split(',').map(str::to_string).collect(),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The flags whose limits `controller` carries, as the user spelled them.
fn flags_for(controller: &str, l: &Limits) -> Vec<&'static str> {
    let mut f = Vec::new();
    let mut add = |set: bool, name: &'static str| {
        if set {
            f.push(name)
        }
    };
    match controller {
        "memory" => {
            add(l.memory.is_some(), "--memory");
            add(l.memory_swap != SwapLimit::Default, "--memory-swap");
        }
        "cpu" => {
            add(l.cpu_quota.is_some(), "--cpus/--cpu-quota");
            add(l.cpu_period.is_some(), "--cpu-period");
            add(l.cpu_shares.is_some(), "--cpu-shares");
        }
        "cpuset" => {
            add(l.cpuset_cpus.is_some(), "--cpuset-cpus");
            add(l.cpuset_mems.is_some(), "--cpuset-mems");
        }
        "pids" => add(l.pids.is_some() && !l.pids_is_default, "--pids-limit"),
        _ => {}
    }
    f
}

fn wanted(controller: &str, l: &Limits) -> bool {
    match controller {
        "memory" => l.memory.is_some() || l.memory_and_swap().is_some(),
        "cpu" => l.cpu_quota.is_some() || l.cpu_period.is_some() || l.cpu_shares.is_some(),
        "cpuset" => l.cpuset_cpus.is_some() || l.cpuset_mems.is_some(),
        "pids" => l.pids.is_some(),
        _ => false,
    }
}

/// The child cgroups of one RUN step, removed on drop.
#[derive(Debug, Default)]
pub struct StepCgroup {
    /// Created directories, one per hierarchy.
    dirs: Vec<PathBuf>,
    /// The memory controller's directory, for OOM counts.
    memory: Option<(PathBuf, bool)>,
    /// The memory limit, for the OOM message.
    memory_limit: Option<u64>,
}

impl StepCgroup {
    /// Creates the child cgroups `limits` needs and writes the limits.
    /// Returns the cgroups (empty when no limit needs one) and one warning
    /// per limit that cannot be applied.
    pub fn create(limits: &Limits) -> (StepCgroup, Vec<String>) {
        create_in(layout(), limits)
    }

    /// Moves process `pid` (the sandbox's setup process, before it forks)
    /// into every child cgroup. Returns a warning per cgroup it could not
    /// join (the step then runs without those limits).
    pub fn add_process(&mut self, pid: u32) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut kept = Vec::new();
        for dir in std::mem::take(&mut self.dirs) {
            match fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                Ok(()) => kept.push(dir),
                Err(e) => {
                    warnings.push(format!(
                        "limits in {} are not applied: moving the RUN step into it: {e}",
                        dir.display()
                    ));
                    remove_dir(&dir);
                    if self.memory.as_ref().is_some_and(|(m, _)| *m == dir) {
                        self.memory = None;
                    }
                }
            }
        }
        self.dirs = kept;
        warnings
    }

    /// How many processes the kernel's OOM killer killed in the step.
    pub fn oom_kills(&self) -> u64 {
        let Some((dir, v2)) = &self.memory else {
            return 0;
        };
        let (file, key) = if *v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok())?
                })
            })
            .unwrap_or(0)
    }

    /// The memory limit in force, when the step has one.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory.as_ref().and(self.memory_limit)
    }

    /// The child cgroup directories.
    #[cfg(test)]
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            remove_dir(dir);
        }
    }
}

/// Removes a child cgroup. Every process of the step is normally gone when
/// this runs (the pid namespace died with its init); anything still listed
/// is killed first, since only the step's processes can be in it.
fn remove_dir(dir: &Path) {
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => {}
        }
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // The kernel empties a cgroup shortly after its last task is reaped.
        std::thread::sleep(Duration::from_millis(5));
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn create_in(layout: &Layout, limits: &Limits) -> (StepCgroup, Vec<String>) {
    let mut step = StepCgroup::default();
    let mut warnings = Vec::new();
    if !limits.needs_cgroup() {
        return (step, warnings);
    }
    let name = format!(
        "rbuild-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut made: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for c in CONTROLLERS {
        if !wanted(c, limits) {
            continue;
        }
        let flags = flags_for(c, limits);
        let v1 = matches!(layout.trees.get(c), Some(Ok(Tree::V1(_))));
        let not_applied = |why: String| {
            let hint = if v1 {
                "cgroup v1 gives ordinary users no cgroups of their own: run rbuild as root"
                    .to_string()
            } else {
                format!(
                    "run rbuild in a cgroup of its own that is given the {c} controller, \
                     e.g. `systemd-run --user --scope -p Delegate=yes rbuild …` \
                     (as root: `systemd-run --scope -p Delegate=yes rbuild …`)"
                )
            };
            format!("{} not applied: {why}; hint: {hint}", flags.join(", "))
        };
        let tree = match layout.trees.get(c) {
            Some(Ok(t)) => t,
            Some(Err(why)) => {
                if !flags.is_empty() {
                    warnings.push(not_applied(why.clone()));
                }
                continue;
            }
            None => continue,
        };
        if let Tree::V2Leaf(dir) = tree {
            if let Err(why) = enable_v2(dir, c) {
                if !flags.is_empty() {
                    warnings.push(not_applied(why));
                }
                continue;
            }
        }
        let fresh = !made.contains_key(tree.dir());
        let child = match made.get(tree.dir()) {
            Some(child) => child.clone(),
            None => {
                let child = tree.dir().join(&name);
                sweep_stale(tree.dir());
                if let Err(e) = fs::create_dir(&child) {
                    if !flags.is_empty() {
                        warnings.push(not_applied(format!(
                            "cannot create a cgroup in {}: {e}",
                            tree.dir().display()
                        )));
                    }
                    continue;
                }
                step.dirs.push(child.clone());
                made.insert(tree.dir().to_path_buf(), child.clone());
                child
            }
        };
        match write_limits(c, tree, &child, limits) {
            Ok(notes) => warnings.extend(notes),
            Err(e) => {
                if !flags.is_empty() {
                    warnings.push(not_applied(e));
                }
                // A half-set v1 child (a cpuset without cpus takes no
                // task) is not joined; a shared v2 child stays for the rest.
                if fresh && !tree.is_v2() {
                    remove_dir(&child);
                    step.dirs.retain(|d| *d != child);
                    made.remove(tree.dir());
                }
                continue;
            }
        }
        if c == "memory" {
            step.memory = Some((child, tree.is_v2()));
            step.memory_limit = limits.memory;
        }
    }
    (step, warnings)
}

/// Removes empty `rbuild-PID-N` siblings left by rbuild processes that
/// died before removing them (killed with SIGKILL). A cgroup that still has
/// processes cannot be removed, so a live build's cgroup is never harmed.
fn sweep_stale(parent: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut swept) = SWEPT.lock() else { return };
    if swept.iter().any(|p| p == parent) {
        return;
    }
    swept.push(parent.to_path_buf());
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("rbuild-"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// Makes `controller` available to the children of rbuild's own v2 cgroup
/// `dir`: rbuild's processes move into the leaf `rbuild-PID-self` (once per
/// process), then `+controller` goes into `dir`'s `cgroup.subtree_control`.
/// Refused when `dir` holds any process that is not this rbuild (its own
/// rootless parent and sandbox helpers count as it): rbuild never moves
/// other processes.
fn enable_v2(dir: &Path, controller: &str) -> Result<(), String> {
    static LEAVES: std::sync::Mutex<BTreeMap<PathBuf, Result<(), String>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut leaves = LEAVES.lock().unwrap_or_else(|e| e.into_inner());
    leaves
        .entry(dir.to_path_buf())
        .or_insert_with(|| move_into_leaf(dir))
        .clone()?;
    let file = dir.join("cgroup.subtree_control");
    fs::write(&file, format!("+{controller}"))
        .map_err(|e| format!("enabling {controller} in {}: {e}", file.display()))
}

fn move_into_leaf(dir: &Path) -> Result<(), String> {
    let procs = fs::read_to_string(dir.join("cgroup.procs"))
        .map_err(|e| format!("reading {}/cgroup.procs: {e}", dir.display()))?;
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let others: Vec<u32> = pids.iter().copied().filter(|p| !is_ours(*p)).collect();
    if !others.is_empty() {
        return Err(format!(
            "rbuild's cgroup {} also holds other processes ({others:?}) and rbuild moves \
             only itself; run it in a cgroup of its own",
            dir.display()
        ));
    }
    let leaf = dir.join(format!("rbuild-{}-self", std::process::id()));
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", leaf.display())),
    }
    for pid in pids {
        fs::write(leaf.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving rbuild ({pid}) into {}: {e}", leaf.display()))?;
    }
    Ok(())
}

/// This process, its parent when that is rbuild too (the rootless
/// re-exec), and its children running rbuild (sandbox setup processes).
fn is_ours(pid: u32) -> bool {
    let me = std::process::id();
    if pid == me {
        return true;
    }
    let same_exe = || {
        use std::os::unix::fs::MetadataExt;
        match (
            fs::metadata(format!("/proc/{pid}/exe")),
            fs::metadata("/proc/self/exe"),
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    };
    let parent_of = |p: u32| -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // The command name (2nd field) may hold spaces: parse after ')'.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let related = parent_of(me) == Some(pid) || parent_of(pid) == Some(me);
    related && same_exe()
}

/// Writes `controller`'s limits into the new child `dir`. `Ok` carries a
/// note per flag that could not be applied alone (swap not accounted).
fn write_limits(
    controller: &str,
    tree: &Tree,
    dir: &Path,
    l: &Limits,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    // Swap files exist only when the kernel accounts swap; the implicit
    // default (twice --memory) is dropped quietly there.
    let mut swap_file = |file: &str| {
        let there = dir.join(file).exists();
        if !there && l.memory_swap != SwapLimit::Default {
            notes.push(format!(
                "--memory-swap not applied: the kernel does not account swap here \
                 (no {file}); hint: boot with swapaccount=1"
            ));
        }
        there
    };
    let write = |file: &str, value: String| {
        fs::write(dir.join(file), &value)
            .map_err(|e| format!("writing {value:?} to {}: {e}", dir.join(file).display()))
    };
    let v2 = tree.is_v2();
    match controller {
        "memory" if v2 => {
            if let Some(m) = l.memory {
                write("memory.max", m.to_string())?;
            }
            if let Some(total) = l.memory_and_swap() {
                if swap_file("memory.swap.max") {
                    let swap = total.saturating_sub(l.memory.unwrap_or(0));
                    write("memory.swap.max", swap.to_string())?;
                }
            }
        }
        "memory" => {
            if let Some(m) = l.memory {
                write("memory.limit_in_bytes", m.to_string())?;
            }
            if let Some(total) = l.memory_and_swap() {
                if swap_file("memory.memsw.limit_in_bytes") {
                    write("memory.memsw.limit_in_bytes", total.to_string())?;
                }
            }
        }
        "cpu" if v2 => {
            if l.cpu_quota.is_some() || l.cpu_period.is_some() {
                let quota = l.cpu_quota.map_or("max".to_string(), |q| q.to_string());
                write(
                    "cpu.max",
                    format!("{quota} {}", l.cpu_period.unwrap_or(100_000)),
                )?;
            }
            if let Some(s) = l.cpu_shares {
                write("cpu.weight", shares_to_weight(s).to_string())?;
            }
        }
        "cpu" => {
            if let Some(p) = l.cpu_period {
                write("cpu.cfs_period_us", p.to_string())?;
            }
            if let Some(q) = l.cpu_quota {
                write("cpu.cfs_quota_us", q.to_string())?;
            }
            if let Some(s) = l.cpu_shares {
                write("cpu.shares", s.to_string())?;
            }
        }
        "cpuset" => {
            // A v1 cpuset child starts with no cpus and no mems and takes no
            // tasks until both are set: copy rbuild's own unless given.
            let own = |file: &str| {
                fs::read_to_string(tree.dir().join(file))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            let cpus = l.cpuset_cpus.clone().or((!v2).then(|| own("cpuset.cpus")));
            let mems = l.cpuset_mems.clone().or((!v2).then(|| own("cpuset.mems")));
            if let Some(m) = mems {
                write("cpuset.mems", m)?;
            }
            if let Some(c) = cpus {
                write("cpuset.cpus", c)?;
            }
        }
        "pids" => {
            if let Some(n) = l.pids {
                write("pids.max", n.to_string())?;
            }
        }
        _ => {}
    }
    Ok(notes)
}

/// docker's `--cpu-shares` (2..262144, default 1024) on cgroup v2's
/// `cpu.weight` scale (1..10000, default 100), as runc converts it.
fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// The message for a step the OOM killer ended.
pub fn oom_message(limit: Option<u64>) -> String {
    match limit {
        Some(l) => format!("RUN was killed: out of memory (limit {})", human_bytes(l)),
        None => "RUN was killed: out of memory".to_string(),
    }
}

#[cfg(test)]
mod tests;
