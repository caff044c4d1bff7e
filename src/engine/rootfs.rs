//! A stage's filesystem as a directory, for the steps that must look at it
//! (COPY destinations through image symlinks, `--chown` names, `COPY
//! --from`, WORKDIR): its layers unpacked in order into a private temp dir,
//! lazily, and only the layers added since the last look.
//!
//! The files sit in `rootfs/` inside a locked 0700 temp dir of the store:
//! the temp dir keeps them (setuid binaries, device nodes of the image) out
//! of other users' reach, while `rootfs/` has the mode an image root has,
//! since it becomes the RUN overlay's lower dir.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::layer::{resolve_in_root, unpack_layer, UnpackOptions};
use crate::oci::LayerRef;
use crate::store::{LockedTempDir, Store};

use super::copy::ExistingDir;
use crate::layer::Timespec;

/// The materialized view; dropped with its temp dir.
pub struct Rootfs {
    /// Holds `root` (and its lock) for the view's lifetime.
    _dir: LockedTempDir,
    root: PathBuf,
    applied: Vec<String>,
    /// Device nodes the layers hold but this view lacks (no privilege).
    skipped_nodes: Vec<String>,
}

impl Rootfs {
    /// An empty view under the store's temp dir (same filesystem: cheap
    /// cleanup, and nothing lands outside the store).
    pub fn new(store: &Store) -> anyhow::Result<Rootfs> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = store
            .temp_dir("rootfs-")
            .context("creating a rootfs view in the store's temp dir")?;
        let root = dir.path().join("rootfs");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&root)
            .with_context(|| format!("creating {}", root.display()))?;
        Ok(Rootfs {
            _dir: dir,
            root,
            applied: Vec::new(),
            skipped_nodes: Vec::new(),
        })
    }

    /// The view with exactly `layers` applied. Layers must extend what was
    /// applied before; otherwise the view is rebuilt from scratch.
    /// Each layer must match its diff_id and expand to at most
    /// `max_expanded` bytes; a layer that fails leaves no partial view.
    pub fn sync(
        &mut self,
        store: &Store,
        layers: &[LayerRef],
        max_expanded: u64,
    ) -> anyhow::Result<&Path> {
        let is_prefix = self.applied.len() <= layers.len()
            && self.applied.iter().zip(layers).all(|(a, l)| *a == l.digest);
        if !is_prefix {
            *self = Rootfs::new(store)?;
        }
        for layer in &layers[self.applied.len()..] {
            let blob = store
                .open_blob(&layer.digest)
                .with_context(|| format!("opening layer {}", layer.digest))?;
            let opts = UnpackOptions {
                no_chown: !nix::unistd::geteuid().is_root(),
                expected_diff_id: Some(layer.diff_id.clone()),
                max_expanded: Some(max_expanded),
                ..UnpackOptions::default()
            };
            let stats = match unpack_layer(std::io::BufReader::new(blob), &self.root, &opts) {
                Ok(stats) => stats,
                Err(e) => {
                    // Drop the half-applied view (its temp dir goes with it).
                    *self = Rootfs::new(store)?;
                    return Err(e.context(format!("unpacking layer {}", layer.digest)));
                }
            };
            self.skipped_nodes.extend(stats.skipped_nodes);
            self.applied.push(layer.digest.clone());
        }
        Ok(&self.root)
    }

    /// Device nodes of the layers that this view could not create.
    pub fn skipped_nodes(&self) -> &[String] {
        &self.skipped_nodes
    }
}

/// Where `path` (absolute, in image terms) is in `root`, symlinks resolved inside it.
pub fn host_path(root: &Path, path: &str) -> anyhow::Result<PathBuf> {
    resolve_in_root(root, path).with_context(|| format!("resolving {path} in the image"))
}

/// `path` in image terms after resolving symlinks inside `root`.
pub fn image_path(root: &Path, path: &str) -> anyhow::Result<String> {
    let host = host_path(root, path)?;
    let rel = host
        .strip_prefix(root)
        .with_context(|| format!("{path} resolved outside the image root"))?;
    Ok(format!("/{}", rel.to_string_lossy()))
}

/// The directory at `path` in `root`, if there is one (not following a final symlink).
pub fn existing_dir(root: &Path, path: &str) -> Option<ExistingDir> {
    use std::os::unix::fs::MetadataExt;
    let rel = path.trim_start_matches('/');
    let meta = std::fs::symlink_metadata(root.join(rel)).ok()?;
    meta.is_dir().then(|| ExistingDir {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: Timespec::new(meta.mtime(), meta.mtime_nsec() as u32),
    })
}

/// Read a small text file of the image (e.g. `/etc/passwd`), empty when
/// absent (or when a symlink leads out of the image).
pub fn read_text(root: &Path, path: &str) -> anyhow::Result<String> {
    match host_path(root, path) {
        Ok(p) => read_text_file(&p, path),
        Err(_) => Ok(String::new()),
    }
}

/// The text of `file` (the image's `shown`), lossily decoded as libc reads
/// bytes; empty when absent. Any other failure is an error: an unreadable
/// `/etc/passwd` must not read as one without the user.
pub fn read_text_file(file: &Path, shown: &str) -> anyhow::Result<String> {
    match std::fs::read(file) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(String::new())
        }
        Err(e) => Err(e).with_context(|| format!("reading the image's {shown}")),
    }
}
