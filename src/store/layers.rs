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
        let (dest, renamed) = self.rename_into_layers(diff_id, tmp.dir.path())?;
        if renamed {
            // Renamed away: nothing left for TempDir's drop to remove.
            let _ = tmp.dir.keep();
        }
        Ok(dest)
    }

    /// [`Store::adopt_layer_dir`] for `dir`, a dir inside `holder` (a RUN's
    /// overlay upper inside its RUN dir): renamed into place, or left for
    /// `holder`'s removal when the layer already has a dir. Returns the
    /// final path and whether `dir` became it.
    pub fn adopt_layer_subdir(
        &self,
        diff_id: &str,
        holder: &fsutil::LockedTempDir,
        dir: &Path,
    ) -> anyhow::Result<(PathBuf, bool)> {
        if !dir.starts_with(holder.path()) || dir == holder.path() {
            anyhow::bail!(
                "{} is not inside the temp dir {}",
                dir.display(),
                holder.path().display()
            );
        }
        self.rename_into_layers(diff_id, dir)
    }

    /// Renames the filled dir `src` to `layers/<diff_id>`, unless one is
    /// there (then `src` stays). Returns the final path and whether `src`
    /// was renamed.
    fn rename_into_layers(&self, diff_id: &str, src: &Path) -> anyhow::Result<(PathBuf, bool)> {
        let dest = self.layer_path(diff_id)?;
        if dest.is_dir() {
            return Ok((dest, false));
        }
        // The dir becomes a layer's root (an overlay lower): the usual 0755,
        // not the temp's 0700; `layers/` itself stays private.
        fs::set_permissions(src, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod of {}", src.display()))?;
        match fs::rename(src, &dest) {
            // No fsync of `layers/`: a snapshot's files are not synced
            // either (it is a cache of its layer, and syncing every
            // unpacked file would cost more than the unpack), so making
            // only its name durable would buy nothing; a lost rename
            // leaves a temp dir the next open sweeps.
            Ok(()) => Ok((dest, true)),
            // Lost a race with another installer; ours is dropped.
            Err(_) if dest.is_dir() => Ok((dest, false)),
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
            // Composites are listed by `composite_layer_dirs`.
            if let Some(name) = entry
                .file_name()
                .to_str()
                .filter(|n| !n.ends_with(COMPOSITE))
            {
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

/// A layer's snapshot as the overlay lower dirs that show its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSnapshot {
    /// `layers/<hex>/`: the layer's whole tree.
    Plain(PathBuf),
    /// `layers/<hex>.c/`: `delta/`, the files of a context COPY that
    /// changed since an earlier build of it, over that build's plain
    /// snapshot `base` (never itself a composite, so one layer is at most
    /// two lowers). Written once, like a plain one.
    Composite {
        delta: PathBuf,
        base: PathBuf,
        base_id: String,
    },
}

impl LayerSnapshot {
    /// The lower dirs, topmost first.
    pub fn lowers(&self) -> Vec<PathBuf> {
        match self {
            LayerSnapshot::Plain(p) => vec![p.clone()],
            LayerSnapshot::Composite { delta, base, .. } => vec![delta.clone(), base.clone()],
        }
    }
}

/// The suffix of a composite snapshot's dir name (not a hex digit, so no
/// diff_id's dir can take it).
const COMPOSITE: &str = ".c";

impl Store {
    fn composite_path(&self, diff_id: &str) -> anyhow::Result<PathBuf> {
        Ok(self
            .private("layers")
            .join(format!("{}{COMPOSITE}", digest_hex(diff_id)?)))
    }

    /// The snapshot of this layer, plain or composite, if one is installed
    /// (a composite only while its base is there: a base removed by a
    /// crashed prune leaves the layer to be unpacked again).
    pub fn layer_snapshot(&self, diff_id: &str) -> Option<LayerSnapshot> {
        if let Some(p) = self.layer_dir(diff_id) {
            return Some(LayerSnapshot::Plain(p));
        }
        let dir = self.composite_path(diff_id).ok()?;
        let (delta, base_id) = composite_parts(&dir)?;
        let base = self.layer_dir(&base_id)?;
        Some(LayerSnapshot::Composite {
            delta,
            base,
            base_id,
        })
    }

    /// Install `tmp` (a [`Store::temp_dir`] holding `delta/`, filled) as
    /// the composite snapshot of `diff_id` over the plain snapshot of
    /// `base_id`. An installed snapshot of the layer (either kind) wins
    /// and `tmp` is dropped.
    pub fn adopt_composite_layer_dir(
        &self,
        diff_id: &str,
        base_id: &str,
        tmp: fsutil::LockedTempDir,
    ) -> anyhow::Result<LayerSnapshot> {
        if let Some(s) = self.layer_snapshot(diff_id) {
            return Ok(s);
        }
        let base_hex = digest_hex(base_id)?;
        if self.layer_dir(base_id).is_none() {
            anyhow::bail!("the base snapshot {base_id} is gone");
        }
        let delta = tmp.dir.path().join("delta");
        // The delta is a layer's root (an overlay lower): 0755 like a
        // plain snapshot; the dir around it stays the temp's 0700.
        fs::set_permissions(&delta, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod of {}", delta.display()))?;
        std::os::unix::fs::symlink(base_hex, tmp.dir.path().join("base"))
            .with_context(|| format!("naming the base in {}", tmp.dir.path().display()))?;
        let dest = self.composite_path(diff_id)?;
        match fs::rename(tmp.dir.path(), &dest) {
            // Unsynced, as a plain snapshot's rename (see adopt_layer_dir).
            Ok(()) => {
                let _ = tmp.dir.keep();
            }
            Err(_) if dest.is_dir() => {}
            Err(e) => {
                return Err(e).with_context(|| format!("installing layer dir {}", dest.display()))
            }
        }
        self.layer_snapshot(diff_id)
            .with_context(|| format!("{} vanished after its install", dest.display()))
    }

    /// Every composite snapshot: (diff_id, dir, base diff_id if readable).
    pub(crate) fn composite_layer_dirs(
        &self,
    ) -> anyhow::Result<Vec<(String, PathBuf, Option<String>)>> {
        let dir = self.private("layers");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(COMPOSITE)) else {
                continue;
            };
            let path = entry.path();
            let base = composite_parts(&path).map(|(_, b)| b);
            out.push((format!("sha256:{hex}"), path, base));
        }
        Ok(out)
    }
}

/// A composite dir's delta dir and base diff_id, when both are well formed.
fn composite_parts(dir: &Path) -> Option<(PathBuf, String)> {
    let delta = dir.join("delta");
    if !delta.is_dir() {
        return None;
    }
    let target = fs::read_link(dir.join("base")).ok()?;
    let hex = target.to_str()?;
    let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| (delta, format!("sha256:{hex}")))
}
