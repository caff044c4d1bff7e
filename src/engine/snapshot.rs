//! Layer snapshots: each layer unpacked once into its own dir of the store
//! (`Store::install_layer_dir`, by diff_id), with whiteouts in overlayfs'
//! form, so a RUN's root is an overlay of these dirs plus a fresh upper
//! dir: no copy and no per-build unpack of the stage's files.
//!
//! A snapshot is filled in a locked temp dir and renamed into place, so a
//! dir that exists is complete and never changes afterwards; two builds
//! racing to create the same one both succeed (the loser's copy is
//! dropped). `prune` removes snapshots whose layer no image or cache record
//! names.
//!
//! The kernel stacks at most 500 lowers and takes the mount options in one
//! page; a stage with more than [`MAX_LOWERS`] layers gets its oldest ones
//! (a multiple of 50) flattened into one snapshot named by their chain id
//! (cached like a layer snapshot; `prune` drops it, it is made again on
//! need).
//!
//! A context COPY rebuilt after a small change may get a composite
//! snapshot instead (`snapfill_delta`): its changed files over the plain
//! snapshot of the earlier build, two lowers (`Store::layer_snapshot`).
//!
//! A RUN layer's snapshot is, when it can be, the RUN's own overlay upper
//! dir ([`adopt_run_upper`]): the tar was written from it, so once what the
//! layer leaves out is removed (mount-point stubs, unchanged copy-ups,
//! overlayfs' xattrs) and the mtimes are the entries', it is the tree the
//! unpack would give, and `layer::upper_as_snapshot` checks every entry
//! against it before the rename. A layer the next RUN reads is then never
//! unpacked, and its files are not made twice on the store's disk. When
//! the check fails the upper is dropped and [`ensure`] unpacks the layer as
//! for any other. Root only: rootless, the upper's owners are the mapped
//! host ids, an unpacked snapshot's the caller's.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::layer::{unpack_layer, upper_as_snapshot, LayerEntry, UnpackOptions};
use crate::store::{LockedTempDir, Store};

use crate::oci::LayerRef;

/// The most lower dirs a RUN overlay gets from a stage (the sandbox adds
/// one for mount-point stubs). Far below the kernel's 500, and short
/// enough that the options fit a page with the sandbox's short names.
pub const MAX_LOWERS: usize = 100;

/// Past [`MAX_LOWERS`], the oldest layers are flattened in multiples of
/// this many, so one flattened snapshot serves the next 50 layers a stage
/// grows by (and later builds), instead of a new one for every step.
const FLATTEN_STEP: usize = 50;

/// The opaque-dir xattr the overlay will read: `trusted.*` for a real
/// root's mount, `user.*` for a `userxattr` mount in a user namespace
/// (rootless: trusted xattrs need CAP_SYS_ADMIN in the initial namespace).
pub fn opaque_xattr() -> &'static str {
    if nix::unistd::geteuid().is_root() && !crate::sandbox::in_user_namespace() {
        "trusted.overlay.opaque"
    } else {
        "user.overlay.opaque"
    }
}

/// Unpack options for a snapshot: the layer must match its diff_id and
/// stay under the size limit; whiteouts are written as overlay ones.
fn options(layer: &LayerRef, max_expanded: u64) -> UnpackOptions {
    UnpackOptions {
        no_chown: !nix::unistd::geteuid().is_root(),
        expected_diff_id: Some(layer.diff_id.clone()),
        max_expanded: Some(max_expanded),
        overlay_opaque_xattr: Some(opaque_xattr()),
        ..UnpackOptions::default()
    }
}

/// The snapshot dir of `layer`, unpacked now if no build made it before.
pub fn ensure(store: &Store, layer: &LayerRef, max_expanded: u64) -> anyhow::Result<PathBuf> {
    if let Some(dir) = store.layer_dir(&layer.diff_id) {
        return Ok(dir);
    }
    store.install_layer_dir(&layer.diff_id, |dir| {
        let blob = store
            .open_blob(&layer.digest)
            .with_context(|| format!("opening layer {}", layer.digest))?;
        unpack_layer(
            std::io::BufReader::new(blob),
            dir,
            &options(layer, max_expanded),
        )
        .with_context(|| format!("unpacking layer {} into a snapshot", layer.digest))?;
        Ok(())
    })
}

/// What became of a RUN's upper dir after its layer was written.
#[derive(Debug, PartialEq, Eq)]
pub enum Adoption {
    /// Renamed into `layers/` as the layer's snapshot.
    Adopted(PathBuf),
    /// The layer had a snapshot already (an empty layer, a concurrent
    /// build of the same step): that one stays, the upper is dropped.
    Existing,
    /// Not tried: rootless (the upper's owners are the mapped host ids,
    /// an unpacked snapshot's the caller's; not proven equal yet).
    Skipped,
    /// The upper is not exactly the layer's tree, or an error occurred
    /// while making it so: dropped, the layer is unpacked when needed.
    Refused(String),
}

/// Set (non-empty, not `0`): never adopt a RUN's upper dir, unpack its
/// layer as before. For tests that compare both kinds of snapshot, and a
/// way out should adoption ever misbehave on some host.
pub const NO_UPPER_SNAPSHOT_ENV: &str = "RBUILD_NO_UPPER_SNAPSHOT";

/// Keeps `upper`, the overlay upper dir of the RUN that made `layer` from
/// `entries` (a dir inside `holder`, its RUN dir), as the layer's
/// snapshot, when `layer::upper_as_snapshot` can make it exactly the tree
/// the layer's unpack gives. The upper is not used by anything once the
/// sandbox is gone, and like an unpacked snapshot it is never fsynced
/// (`Store::retire_snapshots_of_other_boots` covers a power loss).
pub fn adopt_run_upper(
    store: &Store,
    holder: &LockedTempDir,
    upper: &Path,
    entries: &[LayerEntry],
    layer: &LayerRef,
) -> Adoption {
    if std::env::var_os(NO_UPPER_SNAPSHOT_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        return Adoption::Refused(format!("{NO_UPPER_SNAPSHOT_ENV} is set"));
    }
    if opaque_xattr() != "trusted.overlay.opaque" {
        return Adoption::Skipped;
    }
    if store.layer_snapshot(&layer.diff_id).is_some() {
        return Adoption::Existing;
    }
    match upper_as_snapshot(upper, entries, opaque_xattr()) {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Adoption::Refused(why),
        Err(e) => return Adoption::Refused(format!("{e:#}")),
    }
    match store.adopt_layer_subdir(&layer.diff_id, holder, upper) {
        Ok((dir, true)) => Adoption::Adopted(dir),
        Ok((_, false)) => Adoption::Existing,
        Err(e) => Adoption::Refused(format!("{e:#}")),
    }
}

/// The OCI chain id of `layers` (bottom first): `sha256(chain(n-1) + " " +
/// diff_id(n))`, the name of their flattened snapshot.
pub fn chain_id(layers: &[LayerRef]) -> String {
    let mut chain = String::new();
    for l in layers {
        chain = if chain.is_empty() {
            l.diff_id.clone()
        } else {
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{chain} {}", l.diff_id)))
            )
        };
    }
    chain
}

/// One snapshot holding `layers` (bottom first) applied in order: the
/// bottom of a stack too tall for one overlay. A plain unpack (whiteouts
/// applied, not kept): nothing lies below it.
fn ensure_flattened(
    store: &Store,
    layers: &[LayerRef],
    max_expanded: u64,
) -> anyhow::Result<PathBuf> {
    let id = chain_id(layers);
    if let Some(dir) = store.layer_dir(&id) {
        return Ok(dir);
    }
    store.install_layer_dir(&id, |dir| {
        for layer in layers {
            let blob = store
                .open_blob(&layer.digest)
                .with_context(|| format!("opening layer {}", layer.digest))?;
            let opts = UnpackOptions {
                overlay_opaque_xattr: None,
                ..options(layer, max_expanded)
            };
            unpack_layer(std::io::BufReader::new(blob), dir, &opts)
                .with_context(|| format!("unpacking layer {} (flattened)", layer.digest))?;
        }
        Ok(())
    })
}

/// The overlay lower dirs for a stage with `layers` (bottom first),
/// topmost first, made as needed.
pub fn lowers(
    store: &Store,
    layers: &[LayerRef],
    max_expanded: u64,
) -> anyhow::Result<Vec<PathBuf>> {
    let cut = match layers.len() {
        n if n > MAX_LOWERS => ((n - MAX_LOWERS - 1) / FLATTEN_STEP + 1) * FLATTEN_STEP,
        _ => 0,
    };
    let (flat, own) = layers.split_at(cut);
    let mut out: Vec<PathBuf> = Vec::with_capacity(own.len() + 1);
    for layer in own.iter().rev() {
        // A composite snapshot (a COPY's changed files over an earlier
        // build's snapshot of it) is two lowers, delta first.
        let dirs = match store.layer_snapshot(&layer.diff_id) {
            Some(s) => s.lowers(),
            None => vec![ensure(store, layer, max_expanded)?],
        };
        // The same layer twice (two empty RUN/WORKDIR layers share the
        // empty layer's diff_id), or a composite's base also a layer of the
        // stage: overlayfs refuses a repeated lower dir (ELOOP). Only the
        // topmost copy counts: a lower copy holds nothing the upper one
        // does not already show or hide.
        for dir in dirs {
            if !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
    if !flat.is_empty() {
        out.push(ensure_flattened(store, flat, max_expanded)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(id: &str) -> LayerRef {
        LayerRef {
            digest: String::new(),
            diff_id: id.to_string(),
            size: 0,
            media_type: String::new(),
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(chain_id(&[layer(&a)]), a);
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(chain_id(&[layer(&a), layer(&b)]), want);
        assert_ne!(chain_id(&[layer(&b), layer(&a)]), want);
    }

    #[test]
    fn the_flattened_part_grows_in_steps() {
        let cut = |n: usize| match n {
            n if n > MAX_LOWERS => ((n - MAX_LOWERS - 1) / FLATTEN_STEP + 1) * FLATTEN_STEP,
            _ => 0,
        };
        assert_eq!(
            [cut(100), cut(101), cut(150), cut(151), cut(499)],
            [0, 50, 50, 100, 400]
        );
        for n in 1..600 {
            assert!(n - cut(n) <= MAX_LOWERS, "{n}");
        }
    }
}
