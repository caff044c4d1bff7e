//! Unpacked layer dirs, `rbuild/layers/<diff_id hex>/`, each filled in a temp
//! dir and renamed into place, so a dir that exists is complete. The store
//! does not know tar: the caller's closure fills the dir.
//!
//! Complete after a crash of rbuild, not after a crash of the machine: a
//! snapshot's files are never fsynced (syncing every unpacked file would
//! cost more than unpacking again), so after a power loss a dir that
//! exists may hold empty or short files. `rbuild/layers.boot` names the
//! kernel boot the snapshots were made in; the first open in another boot
//! retires them all before any is used ([`Store::retire_snapshots_of_other_boots`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{digest_hex, fsutil, Store};

impl Store {
    fn layer_path(&self, diff_id: &str) -> anyhow::Result<PathBuf> {
        Ok(self.private("layers").join(digest_hex(diff_id)?))
    }

    /// The unpacked dir of this layer, if it has been installed.
    pub fn layer_dir(&self, diff_id: &str) -> Option<PathBuf> {
        self.layer_path(diff_id).ok().filter(|p| p.is_dir())
    }

    /// Install the unpacked dir for `diff_id`: `fill` populates an empty temp
    /// dir, which is then renamed into place. If another process installed
    /// it first, theirs is kept. Returns the final path.
    pub fn install_layer_dir(
        &self,
        diff_id: &str,
        fill: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<PathBuf> {
        let dest = self.layer_path(diff_id)?;
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = fsutil::temp_dir(&self.tmp_dir(), "layer-")?;
        fill(tmp.dir.path()).with_context(|| format!("unpacking layer {diff_id}"))?;
        self.adopt_layer_dir(diff_id, tmp)
    }

    /// Install `tmp` (a dir from [`Store::temp_dir`], already filled with
    /// the layer's files) as the unpacked dir for `diff_id`, for a caller
    /// that fills it before the diff_id is known (while the layer is being
    /// written). If the layer already has a dir, that one is kept and `tmp`
    /// is dropped. Returns the final path.
    pub fn adopt_layer_dir(
        &self,
        diff_id: &str,
        tmp: fsutil::LockedTempDir,
    ) -> anyhow::Result<PathBuf> {
        let dest = self.layer_path(diff_id)?;
        if dest.is_dir() {
            return Ok(dest);
        }
        // The dir becomes a layer's root (an overlay lower): the usual 0755,
        // not the temp's 0700; `layers/` itself stays private.
        fs::set_permissions(tmp.dir.path(), fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod of {}", tmp.dir.path().display()))?;
        match fs::rename(tmp.dir.path(), &dest) {
            Ok(()) => {
                // Renamed away: nothing left for TempDir's drop to remove.
                // No fsync of `layers/`: a snapshot's files are not synced
                // either (it is a cache of its layer, and syncing every
                // unpacked file would cost more than the unpack), so making
                // only its name durable would buy nothing; a lost rename
                // leaves a temp dir the next open sweeps.
                let _ = tmp.dir.keep();
                Ok(dest)
            }
            // Lost a race with another installer; ours is dropped.
            Err(_) if dest.is_dir() => Ok(dest),
            Err(e) => Err(e).with_context(|| format!("installing layer dir {}", dest.display())),
        }
    }

    /// Moves every snapshot made in another boot of the kernel out of use
    /// (into a temp the sweep that follows in [`Store::open`] removes), so
    /// that none whose files a power loss cut short is mounted. A no-op in
    /// the boot that made them: one read of a 37-byte file per open.
    pub(super) fn retire_snapshots_of_other_boots(&self) -> anyhow::Result<()> {
        let Some(boot) = current_boot_id() else {
            // No /proc (not Linux, or hidden): nothing to compare with; the
            // snapshots stay, as before this check existed.
            return Ok(());
        };
        let mark = self.private("layers.boot");
        let made_in = |mark: &Path| fs::read_to_string(mark).ok().map(|s| s.trim().to_string());
        if made_in(&mark).as_deref() == Some(boot.as_str()) {
            return Ok(());
        }
        // Another process may be doing the same right now: decide again
        // under the store lock, so only one moves the dir, and never one
        // that the other has already refilled in this boot.
        let _lock = self.lock_index()?;
        if made_in(&mark).as_deref() == Some(boot.as_str()) {
            return Ok(());
        }
        let layers = self.private("layers");
        if fs::read_dir(&layers)
            .with_context(|| format!("listing {}", layers.display()))?
            .next()
            .is_some()
        {
            let tmp = fsutil::temp_dir(&self.tmp_dir(), "retired-layers-")?;
            let dest = tmp.dir.path().join("layers");
            fs::rename(&layers, &dest)
                .with_context(|| format!("retiring {} (made in another boot)", layers.display()))?;
            super::secure::make_private_dir(&layers)?;
            // Unlocked and left for `clean_temps`, which reports what it
            // cannot remove (a rootless RUN's files) instead of failing.
            let _ = tmp.dir.keep();
        }
        fsutil::atomic_write(&self.tmp_dir(), &mark, boot.as_bytes())
    }

    /// The diff_ids of every installed layer dir.
    pub(crate) fn layer_dir_ids(&self) -> anyhow::Result<Vec<String>> {
        let dir = self.private("layers");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`: random per boot).
fn current_boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && id.len() <= 64).then(|| id.to_string())
}
