//! COPY and ADD on a cache miss: select the sources (context, `--from`
//! stage or image, URLs, local archives to extract, heredocs) and place
//! them at the destination with docker's rules.

use anyhow::{bail, Context};

use crate::layer::{LayerEntry, Timespec};
use crate::plan::CopyStep;
use crate::progress::StepHandle;
use crate::store::LockedTempDir;

use super::super::copy::{
    copy_entries, heredoc_tree, CopyOptions, SourceItem, SourceKind, SourceTree,
};
use super::super::copydest::resolve_dest;
use super::super::resolver::Sources;
use super::super::sources;
use super::super::stage::StageState;
use super::is_url;

impl StageState {
    /// COPY / ADD on a cache miss.
    pub(in crate::engine) fn copy(
        &mut self,
        src: &Sources<'_, '_>,
        c: &CopyStep,
        handle: &StepHandle,
    ) -> anyhow::Result<Vec<LayerEntry>> {
        let ctx = src.ctx;
        let chown = match &c.chown {
            Some(spec) => Some(self.user_db(ctx)?.resolve_chown(spec)?),
            None => None,
        };
        let created = Self::created_time(ctx);
        let tmp = ctx.store.temp_dir("copy-").context("creating a temp dir")?;
        let mut trees = self.copy_sources(src, c, &tmp, handle)?;
        for h in &c.contents {
            trees.push(heredoc_tree(&h.path, h.data.as_bytes(), created));
        }
        self.keepalive.temps.push(tmp);
        let mut dest_abs = resolve_dest(&self.cwd(), &c.dest);
        // --parents always copies into the destination as a directory, and
        // extracted archives always go *into* it.
        let force_dir = c.parents || trees.iter().any(|t| t.name.is_empty() && t.is_dir);
        if force_dir && !dest_abs.ends_with('/') {
            dest_abs.push('/');
        }
        let opts = CopyOptions {
            chown,
            chmod: c.chmod,
            created,
        };
        if c.link || self.layers.is_empty() {
            return Ok(copy_entries(trees, &dest_abs, false, &opts, &|_| None));
        }
        let view = self.view(ctx)?;
        let trailing = dest_abs.ends_with('/');
        let mut resolved = view.image_path(&dest_abs)?;
        if trailing && !resolved.ends_with('/') {
            resolved.push('/');
        }
        if let Some(p) = view.non_dir_parent(&resolved) {
            bail!(
                "cannot copy to {}: {p} exists in the image and is not a directory",
                c.dest
            );
        }
        let exists_dir = view.existing_dir(&resolved).is_some();
        let existing = |p: &str| view.existing_dir(p);
        Ok(copy_entries(trees, &resolved, exists_dir, &opts, &existing))
    }

    /// The trees a COPY/ADD copies: from its `--from` source, else from URLs
    /// and the context (local archives extracted for ADD into `tmp`).
    fn copy_sources(
        &mut self,
        src: &Sources<'_, '_>,
        c: &CopyStep,
        tmp: &LockedTempDir,
        handle: &StepHandle,
    ) -> anyhow::Result<Vec<SourceTree>> {
        let ctx = src.ctx;
        let mut trees = Vec::new();
        if let Some(from) = &c.from {
            let view = src.index(from)?;
            for s in &c.sources {
                let selected = sources::select_trees(&view.index, s, &c.excludes, true, c.parents)
                    .map_err(|e| sources::not_in_source(e, from, &ctx.plan, s))?;
                trees.extend(selected);
                for node in sources::skipped_under(&view.skipped_nodes, s) {
                    handle.warn(format!(
                        "COPY --from: device node {node} could not be created without privilege; the layer lacks it"
                    ));
                }
            }
            self.keepalive.views.push(view);
            return Ok(trees);
        }
        for s in &c.sources {
            if c.is_add && is_url(s) {
                let (file, _) = ctx.download(s, c.checksum.as_deref())?;
                trees.push(url_tree(file));
                continue;
            }
            let index = ctx.context()?;
            let selected = sources::select_trees(index, s, &c.excludes, false, c.parents)?;
            for tree in selected {
                match archive_of(c, &tree) {
                    Some(path) => trees.push(extract_tree(&path, tmp, handle)?),
                    None => trees.push(tree),
                }
            }
        }
        Ok(trees)
    }
}

/// The local archive ADD should extract, if `tree` is one.
fn archive_of(c: &CopyStep, tree: &SourceTree) -> Option<std::path::PathBuf> {
    if !c.is_add || !c.unpack || tree.is_dir || tree.items.len() != 1 {
        return None;
    }
    match &tree.items[0].kind {
        SourceKind::File(crate::layer::FileSource::Path(p)) if sources::is_archive(p) => {
            Some(p.clone())
        }
        _ => None,
    }
}

/// An archive extracted into a temp dir, as a tree copied into the destination.
fn extract_tree(
    archive: &std::path::Path,
    tmp: &LockedTempDir,
    handle: &StepHandle,
) -> anyhow::Result<SourceTree> {
    // Inside `tmp`, which the caller keeps until the layer is written.
    let dir = tempfile::tempdir_in(tmp.path())?.keep();
    // What could not be created (device nodes, rootless) is missing from
    // the layer: say so rather than drop it silently.
    for note in sources::extract_archive(archive, &dir)? {
        let name = archive.file_name().unwrap_or_default().to_string_lossy();
        handle.warn(format!("ADD {name}: {note}; the layer lacks it"));
    }
    let ignore = crate::context::IgnoreRules::default();
    let index = crate::context::scan(&dir, "", &ignore, None)
        .with_context(|| format!("reading extracted {}", archive.display()))?;
    let mut trees = sources::select_trees(&index, ".", &[], true, false)?;
    let mut tree = trees.pop().context("empty archive selection")?;
    tree.name = String::new();
    tree.is_dir = true;
    Ok(tree)
}

/// A downloaded file (ADD URL): mode 0600 as docker gives it.
fn url_tree(file: std::path::PathBuf) -> SourceTree {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    SourceTree {
        name,
        is_dir: false,
        items: vec![SourceItem {
            rel: String::new(),
            kind: SourceKind::File(crate::layer::FileSource::Path(file)),
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: Timespec::default(),
            xattrs: Vec::new(),
            link_id: None,
        }],
    }
}
