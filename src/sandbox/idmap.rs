//! Rootless id mapping: the calling user becomes root inside the sandbox's
//! user namespace; with `/etc/subuid` and `/etc/subgid` ranges the setuid
//! helpers `newuidmap`/`newgidmap` map the full range above it, otherwise
//! only the single id is mapped (so switching to another user fails).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use super::{IdMapEntry, IdMapMode, IdMaps};

/// A `/etc/subuid`-style range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u64,
    pub count: u64,
}

/// The first range in `content` (subuid/subgid format) owned by `name` or
/// by the numeric `id`.
pub fn find_range(content: &str, name: Option<&str>, id: u32) -> Option<SubRange> {
    let id = id.to_string();
    content.lines().find_map(|line| {
        let mut parts = line.trim().splitn(3, ':');
        let owner = parts.next()?;
        let start = parts.next()?.parse().ok()?;
        let count: u64 = parts.next()?.parse().ok()?;
        let matches = owner == id || Some(owner) == name;
        (matches && count > 0).then_some(SubRange { start, count })
    })
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn subrange(file: &str, name: Option<&str>, id: u32) -> Option<SubRange> {
    let content = std::fs::read_to_string(file).ok()?;
    find_range(&content, name, id)
}

/// The `/etc/subuid` and `/etc/subgid` ranges of the user `uid`, or why
/// there are none.
pub fn user_ranges(uid: u32) -> Result<(SubRange, SubRange)> {
    let name = user_name(uid);
    match (
        subrange("/etc/subuid", name.as_deref(), uid),
        subrange("/etc/subgid", name.as_deref(), uid),
    ) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => bail!(
            "no /etc/subuid and /etc/subgid range for user {}",
            name.unwrap_or_else(|| uid.to_string())
        ),
    }
}

static SINGLE_ID_WARNED: AtomicBool = AtomicBool::new(false);

/// Writes the uid/gid maps of the process `pid`, which has just unshared its
/// user namespace, and returns them, with the warning to report when only a
/// single id could be mapped.
pub fn write_maps(pid: u32, mode: IdMapMode) -> Result<(IdMaps, Option<String>)> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let mut warning = None;
    if mode == IdMapMode::Auto {
        let failed = match user_ranges(uid) {
            Ok((u, g)) => match write_range_maps(pid, uid, gid, u, g) {
                Ok(()) => return Ok((range_maps(uid, gid, u, g), None)),
                Err(err) => err,
            },
            Err(err) => err,
        };
        warning = single_id_warning(&format!("{failed:#}"));
    }
    write_single_maps(pid, uid, gid)?;
    let maps = IdMaps {
        uid: vec![entry(0, uid.into(), 1)],
        gid: vec![entry(0, gid.into(), 1)],
    };
    Ok((maps, warning))
}

fn entry(container_id: u32, host_id: u64, size: u64) -> IdMapEntry {
    IdMapEntry {
        container_id,
        host_id,
        size,
    }
}

fn range_maps(uid: u32, gid: u32, u: SubRange, g: SubRange) -> IdMaps {
    IdMaps {
        uid: vec![entry(0, uid.into(), 1), entry(1, u.start, u.count)],
        gid: vec![entry(0, gid.into(), 1), entry(1, g.start, g.count)],
    }
}

/// The warning that only the user's own id is available (image files lose
/// their owners and other ids cannot be used) — the first time in this
/// process only, so the CLI's re-exec and every later RUN say it once.
/// Library code never prints: the caller reports it.
pub fn single_id_warning(reason: &str) -> Option<String> {
    if SINGLE_ID_WARNED.swap(true, Ordering::Relaxed) {
        return None;
    }
    Some(format!(
        "{reason}; RUN steps get a single-id user namespace \
         (only root inside; image files are owned by root, and USER switching \
         and chown to other ids will fail)\n\
         hint: add a range with `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`"
    ))
}

/// Maps `0 → uid/gid` and `1.. → the ranges` for process `pid` (which has
/// just unshared its user namespace) with `newuidmap`/`newgidmap`, run side
/// by side (each is a setuid exec costing milliseconds).
pub fn write_range_maps(pid: u32, uid: u32, gid: u32, u: SubRange, g: SubRange) -> Result<()> {
    let uids = MapTool::start("newuidmap", pid, uid, u)?;
    let gids = MapTool::start("newgidmap", pid, gid, g);
    let uids = uids.finish();
    gids?.finish()?;
    uids
}

/// A running `newuidmap`/`newgidmap`.
struct MapTool {
    tool: &'static str,
    args: [String; 7],
    child: std::process::Child,
}

impl MapTool {
    fn start(tool: &'static str, pid: u32, own: u32, range: SubRange) -> Result<MapTool> {
        let args = [
            pid.to_string(),
            "0".into(),
            own.to_string(),
            "1".into(),
            "1".into(),
            range.start.to_string(),
            range.count.to_string(),
        ];
        let child = Command::new(tool)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {tool} (package uidmap)"))?;
        Ok(MapTool { tool, args, child })
    }

    fn finish(self) -> Result<()> {
        let tool = self.tool;
        let out = self
            .child
            .wait_with_output()
            .with_context(|| format!("waiting for {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}",
                self.args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

fn write_single_maps(pid: u32, uid: u32, gid: u32) -> Result<()> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let write = |name: &str, content: String| {
        let path = proc_dir.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))
    };
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("setgroups", "deny\n".into())?;
    write("gid_map", format!("0 {gid} 1\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_range_by_name_or_uid() {
        let content = "alice:100000:65536\n1001:200000:1000\nbad line\nbob:x:1\n";
        assert_eq!(
            find_range(content, Some("alice"), 1000),
            Some(SubRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            find_range(content, Some("carol"), 1001),
            Some(SubRange {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(find_range(content, Some("bob"), 5), None);
        assert_eq!(find_range("zero:1:0\n", Some("zero"), 5), None);
    }

    #[test]
    fn the_single_id_warning_is_given_once_per_process_with_a_hint() {
        let first = single_id_warning("no /etc/subuid range for user x");
        let text = first.expect("the first call gives the warning");
        assert!(text.starts_with("no /etc/subuid range for user x; RUN steps get a single-id"));
        assert!(text.contains("\nhint: add a range with `usermod"));
        assert_eq!(single_id_warning("again"), None);
    }
}
