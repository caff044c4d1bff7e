//! The host dirs of `RUN --mount=type=cache` mounts, and the seam through
//! which a cache imported from elsewhere (`--cache-from`) fills one.
//!
//! A cache mount's dir lives in the store (`Store::cache_mount_dir`, keyed
//! by the mount's id) and persists across builds. The first RUN of a build
//! that mounts an id this store has never had creates the dir; with a
//! [`MountRestorer`] in the build's options, the restorer first fills it
//! with contents saved by an earlier build on another machine
//! (`cache::mounts`). The new dir
//! is made and filled in a locked temp dir and renamed into place without
//! replacing anything, so a RUN never sees a half-restored mount, and two
//! builds racing to create the same mount keep one whole dir (the first).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cache::mounts::MountRestorer;
use crate::image::ImageConfig;
use crate::plan::Mount;
use crate::store::Store;

/// The platform a stage is built for, as `os/arch[/variant]`: half of the
/// key a saved cache mount is found by (the other half is the id), since a
/// package manager's cache for one architecture is of no use to another.
pub fn stage_platform(config: &ImageConfig) -> String {
    let mut p = format!("{}/{}", config.os, config.architecture);
    if let Some(v) = config.variant.as_deref().filter(|v| !v.is_empty()) {
        p.push('/');
        p.push_str(v);
    }
    p
}

/// The persistent dir of cache mount `id`, created (and filled by
/// `restorer`, when there is one) if this store has none yet.
pub fn cache_dir(
    store: &Store,
    id: &str,
    m: &Mount,
    platform: &str,
    restorer: Option<&dyn MountRestorer>,
    on_warning: &dyn Fn(&str),
) -> anyhow::Result<PathBuf> {
    let dir = store.cache_mount_dir(id)?;
    if let Some(r) = restorer {
        r.used(id, platform);
    }
    if dir.symlink_metadata().is_ok() {
        return Ok(dir);
    }
    let tmp = store.temp_dir("cachemount-")?;
    let fill = tmp.path().join("dir");
    make_dir(&fill, m)?;
    if let Some(r) = restorer {
        if let Err(e) = r.restore(store, id, platform, &fill) {
            on_warning(&format!(
                "cache mount {id}: the saved contents were not restored, so it starts \
                 empty: {e:#}"
            ));
            std::fs::remove_dir_all(&fill)
                .with_context(|| format!("emptying {}", fill.display()))?;
            make_dir(&fill, m)?;
        }
    }
    install(&fill, &dir)?;
    Ok(dir)
}

/// The mount's root dir with its owner and mode (`uid=`, `gid=`, `mode=`;
/// default root-owned 0755, as BuildKit makes it).
fn make_dir(path: &Path, m: &Mount) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(path)
        .with_context(|| format!("creating cache mount dir {}", path.display()))?;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(m.mode.unwrap_or(0o755)),
    )
    .with_context(|| format!("chmod of cache mount dir {}", path.display()))?;
    if m.uid.is_some() || m.gid.is_some() {
        nix::unistd::chown(path, m.uid.map(Into::into), m.gid.map(Into::into))
            .with_context(|| format!("chown of cache mount dir {}", path.display()))?;
    }
    Ok(())
}

/// Rename the filled dir into place unless another build got there first
/// (then theirs is kept and ours goes with the temp dir).
fn install(fill: &Path, dest: &Path) -> anyhow::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(
        AT_FDCWD,
        fill,
        AT_FDCWD,
        dest,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("installing cache mount dir {}", dest.display())),
    }
}

#[cfg(test)]
#[path = "cachemounts_tests.rs"]
mod tests;
