//! A stage's files for the steps that only look things up in them (COPY
//! destinations through image symlinks, `--chown` and USER names, WORKDIR):
//! read through the layer snapshots when RUN uses them, so no step
//! materializes the stage; else the materialized dir (see `rootfs`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::layer::{merged_image_path, merged_lookup, merged_resolve, MergedView, Timespec};

use super::copy::ExistingDir;
use super::rootfs;

pub enum StageView {
    /// Layer snapshots, topmost first, read with overlay rules.
    Layers(Vec<PathBuf>),
    /// A materialized root.
    Dir(PathBuf),
}

impl StageView {
    /// `path` in image terms after resolving symlinks inside the image.
    pub fn image_path(&self, path: &str) -> anyhow::Result<String> {
        match self {
            StageView::Layers(l) => merged_image_path(l, path),
            StageView::Dir(root) => rootfs::image_path(root, path),
        }
    }

    /// The directory at `path` (image terms, symlinks already resolved),
    /// if there is one (not following a final symlink).
    pub fn existing_dir(&self, path: &str) -> Option<ExistingDir> {
        let l = match self {
            StageView::Layers(l) => l,
            StageView::Dir(root) => return rootfs::existing_dir(root, path),
        };
        let meta = merged_lookup(l, path.trim_start_matches('/'))?
            .symlink_metadata()
            .ok()?;
        meta.is_dir().then(|| ExistingDir {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: Timespec::new(meta.mtime(), meta.mtime_nsec() as u32),
        })
    }

    /// The first dir on the way to `dest_abs` (resolved) that the image
    /// holds as something else (see `copydest::non_dir_parent`).
    pub fn non_dir_parent(&self, dest_abs: &str) -> Option<String> {
        match self {
            StageView::Layers(l) => {
                let mut view = MergedView::new(l);
                super::copydest::non_dir_parent_with(dest_abs, |p| {
                    view_meta(&mut view, p).is_some_and(|m| !m.is_dir())
                })
            }
            StageView::Dir(root) => super::copydest::non_dir_parent(root, dest_abs),
        }
    }

    /// A small text file of the image (`/etc/passwd`), empty when absent;
    /// an error when it is there but cannot be read.
    pub fn read_text(&self, path: &str) -> anyhow::Result<String> {
        match self {
            StageView::Layers(l) => match merged_resolve(l, path) {
                Some(p) => rootfs::read_text_file(&p, path),
                None => Ok(String::new()),
            },
            StageView::Dir(root) => rootfs::read_text(root, path),
        }
    }
}

fn view_meta(view: &mut MergedView, path: &str) -> Option<std::fs::Metadata> {
    view.lookup(path.trim_start_matches('/'))?
        .symlink_metadata()
        .ok()
}
