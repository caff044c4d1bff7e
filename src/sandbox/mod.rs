//! The RUN sandbox: runs one RUN step's process in fresh Linux namespaces
//! (user when rootless, mount, pid, ipc, uts, and net for `--network none`)
//! over an overlayfs of the parent layers, with a minimal /proc, /dev and
//! read-only /sys, `pivot_root`, docker's default capabilities,
//! `no_new_privs` and a seccomp deny list. PID 1 inside is rbuild's own
//! reaping init.
//!
//! Process model: [`run`] re-executes the rbuild binary (default
//! `/proc/self/exe`) with the hidden argument [`INIT_ARG`]; that fresh,
//! single-threaded process ([`init_main`]) reads the spec as JSON on stdin,
//! unshares the namespaces, forks PID 1, sets up the root filesystem and
//! forks the command. Every mount lives in the private mount namespace, so
//! nothing stays mounted on the host when the sandbox ends. `docs/sandbox.md`
//! explains the choices.
//!
//! Rootless builds run the whole of rbuild inside one user namespace
//! ([`run_in_userns`]); there the sandbox sees euid 0 but
//! [`in_user_namespace`], so it adds no nested user namespace and uses
//! overlayfs' unprivileged (`userxattr`) mode.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod caps;
mod cgroup;
mod files;
mod helper;
mod idmap;
mod init;
mod limits;
mod parent;
mod paths;
mod rootfs;
pub mod running;
mod seccomp;
mod sys;
mod userns;
mod wire;

pub use cgroup::oom_message;
pub use idmap::single_id_warning;
pub use limits::{human_bytes, ulimit_names, Limits, SwapLimit, Ulimit};
pub use parent::{
    clean_workdir, overlay_available, overlay_available_with, prestart, run, run_prestarted,
    run_with, Prestarted,
};
pub use userns::{exit_code, in_user_namespace, run_in_userns, USERNS_ARG};

/// The hidden first argument that makes the rbuild binary act as the
/// sandbox's setup process (see [`init_main`]).
pub const INIT_ARG: &str = "__sandbox-init";

/// Everything needed to run one RUN step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// The root filesystem the command sees.
    pub rootfs: RootfsSpec,
    /// The command; `argv[0]` without a `/` is looked up in the spec's `PATH`.
    pub argv: Vec<String>,
    /// `KEY=value` entries, passed as-is.
    pub env: Vec<String>,
    /// Absolute working directory inside the rootfs; created (owned by root,
    /// mode 0755) if missing.
    pub cwd: String,
    /// The already-resolved user to run as.
    pub user: UserSpec,
    /// The UTS hostname.
    pub hostname: String,
    /// Host or none networking.
    pub network: NetworkMode,
    /// Extra mounts (bind, tmpfs), applied in order after /proc, /dev, /sys.
    pub mounts: Vec<MountSpec>,
    /// Contents bind-mounted over `/etc/resolv.conf`, `/etc/hosts` and
    /// `/etc/hostname`; `None` leaves the image's file alone.
    pub extra_files: ExtraFiles,
    /// cgroup limits, ulimits and the `/dev/shm` size.
    #[serde(default)]
    pub limits: Limits,
}

/// The root filesystem of a RUN step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RootfsSpec {
    /// An overlay mounted inside the sandbox's mount namespace. `lowers` is
    /// ordered top first and may be empty; `upper` receives every change and
    /// `work` must be an empty directory on the same filesystem as `upper`;
    /// `run` empties it again afterwards.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A plain directory changed in place (the fallback when overlayfs is not
    /// available, e.g. a copied rootfs).
    Dir(PathBuf),
}

/// The user the command runs as, resolved by the caller from the image's
/// `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Network isolation of a RUN step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Share the host's network namespace.
    Host,
    /// A new network namespace with only `lo`, which is brought up.
    None,
}

/// One extra mount. Cache and ssh mounts are lowered by the engine into
/// binds of host paths it prepared; secrets and heredoc scripts into
/// [`MountSpec::File`], whose bytes never touch a host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSpec {
    /// Bind a host file or directory at `target` (absolute, inside the rootfs).
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    /// A fresh tmpfs (mode 1777) at `target`; `size` in bytes, `None` for the
    /// kernel default (half of RAM).
    Tmpfs { target: String, size: Option<u64> },
    /// A read-only file at `target` holding `content`, owned by
    /// `uid`:`gid` (ids inside the sandbox) with `mode`. The bytes travel to
    /// the sandbox over a pipe and are written to a tmpfs that exists only
    /// in its private mount namespace, so no copy outlives the step, even
    /// when rbuild is killed (secrets, heredoc scripts).
    File {
        target: String,
        content: FileBytes,
        uid: u32,
        gid: u32,
        mode: u32,
    },
}

/// File contents that may be secret: hex on the wire, never printed by
/// `Debug` (a spec in an error message or a log must not show them).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct FileBytes(pub Vec<u8>);

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for FileBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for FileBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text)
            .map(FileBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Contents for the files docker manages inside every container. They are
/// written to a tmpfs private to the sandbox's mount namespace and
/// bind-mounted read-only (as BuildKit does), so they never reach the
/// rootfs, the upper dir or any host path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraFiles {
    pub resolv_conf: Option<String>,
    pub hosts: Option<String>,
    pub hostname: Option<String>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How to map ids when running as a non-root user (ignored as root, where no
/// user namespace is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IdMapMode {
    /// The user's `/etc/subuid` and `/etc/subgid` ranges via
    /// `newuidmap`/`newgidmap` when present, else a single-id map (with a
    /// warning printed once).
    #[default]
    Auto,
    /// Only the user's own uid/gid, mapped to root inside.
    SingleId,
}

/// How to start the sandbox; [`Default`] suits the rbuild binary itself.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The executable re-executed with [`INIT_ARG`]: it must call
    /// [`init_main`] early in `main`. Tests pass `env!("CARGO_BIN_EXE_rbuild")`.
    pub init_exe: PathBuf,
    /// Rootless id mapping.
    pub id_map: IdMapMode,
    /// Where to create the sandbox's state dir: an empty mount point for its
    /// private tmpfs, removed after the step. Default: the system temp dir.
    /// Callers with a dir that is swept after a crash (the store's locked
    /// temp dirs) pass it, so not even the empty dir outlives a `kill -9`.
    pub state_parent: Option<PathBuf>,
    /// An existing empty dir to use as the state dir itself, left in place
    /// afterwards (over `state_parent`): a caller running many steps reuses
    /// one. It stays empty on the host: the tmpfs is mounted over it inside
    /// each sandbox's private mount namespace, never outside.
    pub state_dir: Option<PathBuf>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            init_exe: PathBuf::from("/proc/self/exe"),
            id_map: IdMapMode::Auto,
            state_parent: None,
            state_dir: None,
        }
    }
}

/// What a finished RUN step reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The command's exit status; killed by signal `n` gives `128 + n`.
    pub exit_code: i32,
    /// Paths (absolute, inside the rootfs, symlinks resolved) the sandbox had
    /// to create as mount points in the rootfs itself. With an overlay these are normally empty:
    /// missing mount points are made in a private extra lower layer. In `Dir`
    /// mode, or when a mount target sits below a symlink, they land in the
    /// rootfs or the upper dir, and the layer code must leave them out of the
    /// changeset if they are still empty.
    pub mount_stubs: Vec<String>,
    /// The id maps of the user namespace when rootless (`None` as root).
    /// Files the command wrote to the upper dir are owned by *host* ids; the
    /// layer code maps them back with [`IdMaps::to_container_uid`] and
    /// [`IdMaps::to_container_gid`].
    pub id_maps: Option<IdMaps>,
    /// Processes of the step the kernel's OOM killer ended (needs a memory
    /// limit: counted in the step's cgroup).
    pub oom_kills: u64,
    /// The memory limit the step ran under, when one was applied.
    pub memory_limit: Option<u64>,
    /// One message per requested limit that could not be applied (no
    /// controller, no delegation; the step ran without it), and the
    /// single-id user namespace fallback: warnings for the caller to report.
    pub limit_warnings: Vec<String>,
}

/// One line of `/proc/PID/uid_map`: `size` ids from `container_id` map to
/// host ids from `host_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapEntry {
    pub container_id: u32,
    pub host_id: u64,
    pub size: u64,
}

/// The uid and gid maps of a rootless sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    pub uid: Vec<IdMapEntry>,
    pub gid: Vec<IdMapEntry>,
}

impl IdMaps {
    /// The id inside the sandbox of host uid `host`, if mapped.
    pub fn to_container_uid(&self, host: u32) -> Option<u32> {
        map_back(&self.uid, host)
    }

    /// The id inside the sandbox of host gid `host`, if mapped.
    pub fn to_container_gid(&self, host: u32) -> Option<u32> {
        map_back(&self.gid, host)
    }
}

fn map_back(entries: &[IdMapEntry], host: u32) -> Option<u32> {
    let host = u64::from(host);
    entries.iter().find_map(|e| {
        let offset = host.checked_sub(e.host_id)?;
        (offset < e.size).then(|| u32::try_from(u64::from(e.container_id) + offset).ok())?
    })
}

/// Entry point of the sandbox setup process. `main()` must call this when
/// `argv[1] == INIT_ARG`, before anything else (no threads started). Never
/// returns.
pub fn init_main() -> ! {
    helper::main()
}

/// Marks every descriptor from 3 up close-on-exec, so descriptors the
/// caller's shell left open (`exec 7>file`) reach no process rbuild starts:
/// not the sandbox, nor newuidmap, credential helpers or git. `main()`
/// calls it first. Errors are ignored: the sandbox closes everything but
/// 0-2 again right before it execs the command.
pub fn cloexec_inherited_fds() {
    let _ = sys::cloexec_from(3);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_translate_host_ids_back() {
        let maps = IdMaps {
            uid: vec![
                IdMapEntry {
                    container_id: 0,
                    host_id: 1000,
                    size: 1,
                },
                IdMapEntry {
                    container_id: 1,
                    host_id: 100000,
                    size: 65536,
                },
            ],
            gid: vec![],
        };
        assert_eq!(maps.to_container_uid(1000), Some(0));
        assert_eq!(maps.to_container_uid(100000), Some(1));
        assert_eq!(maps.to_container_uid(100999), Some(1000));
        assert_eq!(maps.to_container_uid(165536), None);
        assert_eq!(maps.to_container_uid(5), None);
        assert_eq!(maps.to_container_gid(1000), None);
    }

    #[test]
    fn file_bytes_travel_as_hex_and_never_print() {
        let bytes = FileBytes(b"s3cr3t\x00\xff".to_vec());
        let json = serde_json::to_string(&bytes).unwrap();
        assert_eq!(json, "\"73336372337400ff\"");
        assert_eq!(serde_json::from_str::<FileBytes>(&json).unwrap(), bytes);
        assert!(serde_json::from_str::<FileBytes>("\"zz\"").is_err());
        let spec = MountSpec::File {
            target: "/run/secrets/s".into(),
            content: bytes,
            uid: 0,
            gid: 0,
            mode: 0o400,
        };
        let shown = format!("{spec:?}");
        assert!(
            shown.contains("<8 bytes>") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
