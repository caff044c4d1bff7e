//! `--output`: the built image (OCI layout, docker archive) or the final
//! stage's files (a directory, a tar) written outside the store. A `dest`
//! of `-` streams a tar to standard output: that stream is the build's
//! product, which is why the engine (not the CLI) writes it.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;

use super::build::BuildCtx;
use super::options::OutputSpec;
use super::rootfs::Rootfs;
use crate::image;
use crate::layer::{unpack_layer, UnpackOptions};
use crate::oci::LayerRef;
use crate::store::Store;

/// Export one `--output`. Image exports need a name in the store; an
/// untagged build gets a temporary one for the export.
pub(crate) fn export(
    ctx: &BuildCtx<'_>,
    out: &OutputSpec,
    manifest: &oci_spec::image::Descriptor,
    tags: &[String],
    layers: &[LayerRef],
) -> anyhow::Result<()> {
    let store = ctx.store;
    match out {
        OutputSpec::Local { dest } => write_local(ctx, layers, dest)
            .with_context(|| format!("writing the final stage's files to {}", dest.display())),
        OutputSpec::Tar { dest } => write_files_tar(ctx, layers, dest).with_context(|| {
            format!(
                "writing the final stage's files as a tar to {}",
                shown(dest)
            )
        }),
        OutputSpec::Oci { .. } | OutputSpec::Docker { .. } => {
            let mut names = tags.to_vec();
            let temp_tag = if names.is_empty() {
                let t = format!(
                    "rbuild-export:{}",
                    image::short_digest(manifest.digest().as_ref())
                );
                store.tag(&t, manifest)?;
                names.push(t.clone());
                Some(t)
            } else {
                None
            };
            let res = export_image(store, out, &names);
            if let Some(t) = temp_tag {
                store.untag(&t)?;
            }
            res
        }
    }
}

fn shown(dest: &Path) -> String {
    if dest.as_os_str() == "-" {
        "stdout".to_string()
    } else {
        dest.display().to_string()
    }
}

type ExportFn = fn(&Store, &[String], &Path) -> anyhow::Result<()>;

fn export_image(store: &Store, out: &OutputSpec, names: &[String]) -> anyhow::Result<()> {
    let dest = out.dest();
    let (what, write): (&str, ExportFn) = match out {
        OutputSpec::Oci { .. } => ("an OCI layout", image::export_oci_layout),
        _ => ("a docker archive", image::export_docker_archive),
    };
    if !out.to_stdout() {
        return write(store, names, dest)
            .with_context(|| format!("exporting {what} to {}", dest.display()));
    }
    // The exporters write files atomically; for stdout, write to a temp
    // file in the store and stream it.
    let tmp = store.temp_dir("export-")?;
    let file = tmp.path().join("image.tar");
    write(store, names, &file).with_context(|| format!("exporting {what} to stdout"))?;
    let mut src = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let mut stdout = io::stdout().lock();
    io::copy(&mut src, &mut stdout)
        .and_then(|_| stdout.flush())
        .with_context(|| format!("writing {what} to stdout"))?;
    Ok(())
}

fn unpack_options() -> UnpackOptions {
    UnpackOptions {
        no_chown: !nix::unistd::geteuid().is_root(),
        ..UnpackOptions::default()
    }
}

/// The final stage's files written inside `dest` (created when missing),
/// with the layer module's escape-proof unpacker. Into an empty `dest` the
/// layers are applied in order; into one that holds files, the stage's
/// merged files go as one tar, so that a layer's whiteouts (an opaque
/// directory at the root above all) delete nothing that was there before:
/// as with BuildKit, files the image lacks are left alone (a base image's
/// whiteouts wiped the directory of `-o .`).
fn write_local(ctx: &BuildCtx<'_>, layers: &[LayerRef], dest: &Path) -> anyhow::Result<()> {
    let store = ctx.store;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let empty = std::fs::read_dir(dest)
        .with_context(|| format!("listing {}", dest.display()))?
        .next()
        .is_none();
    if !empty {
        let mut rootfs = Rootfs::new(store)?;
        let root = rootfs
            .sync(store, layers, ctx.req.registry.max_layer_size)?
            .to_path_buf();
        let tmp = store.temp_dir("export-")?;
        let file = tmp.path().join("files.tar");
        let out = File::create(&file).with_context(|| format!("creating {}", file.display()))?;
        tar_dir(&root, io::BufWriter::new(out))?
            .flush()
            .with_context(|| format!("writing {}", file.display()))?;
        let tar = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        unpack_layer(io::BufReader::new(tar), dest, &unpack_options())
            .with_context(|| format!("writing the stage's files into {}", dest.display()))?;
        return Ok(());
    }
    for layer in layers {
        let blob = store
            .open_blob(&layer.digest)
            .with_context(|| format!("opening layer {}", layer.digest))?;
        unpack_layer(io::BufReader::new(blob), dest, &unpack_options())
            .with_context(|| format!("unpacking layer {}", layer.digest))?;
    }
    Ok(())
}

/// The final stage's files as one plain tar: materialized in a store temp
/// dir (whiteouts applied), then archived in sorted order; written to a
/// temp file beside `dest` and renamed, or streamed to stdout for `-`.
fn write_files_tar(ctx: &BuildCtx<'_>, layers: &[LayerRef], dest: &Path) -> anyhow::Result<()> {
    let store = ctx.store;
    let mut rootfs = Rootfs::new(store)?;
    let root = rootfs
        .sync(store, layers, ctx.req.registry.max_layer_size)?
        .to_path_buf();
    if dest.as_os_str() == "-" {
        let stdout = io::stdout().lock();
        let mut w = tar_dir(&root, stdout)?;
        return w.flush().context("writing the tar to stdout");
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    let file = tar_dir(&root, tmp.reopen().context("reopening the temp file")?)?;
    file.sync_all().context("syncing the tar")?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// Every entry under `root` (not following symlinks), sorted, into a tar.
fn tar_dir<W: Write>(root: &Path, w: W) -> anyhow::Result<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walk {
        let entry = entry.context("walking the final stage's files")?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .context("a walked path outside the root")?;
        b.append_path_with_name(entry.path(), rel)
            .with_context(|| format!("adding {} to the tar", rel.display()))?;
    }
    b.into_inner().context("finishing the tar")
}
