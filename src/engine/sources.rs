//! COPY/ADD sources → [`SourceTree`]s: from the build context index, from
//! another stage's root (scanned like a context), from a local archive that
//! ADD extracts, and from an `http(s)://` URL that ADD downloads.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::context::{self, ContextIndex, EntryKind, FileDigest, SelectOptions, SelectedSource};
use crate::layer::{
    dev_major, dev_minor, open_archive, unpack_layer, EntryKind as LayerKind, Timespec,
    UnpackOptions,
};

use super::copy::{disk_file, SourceItem, SourceKind, SourceTree};

/// What a COPY selection contributes to the cache key: source path →
/// content digest (for miss explanations) and the selection digest.
#[derive(Debug, Default)]
pub struct SelectionKey {
    pub files: BTreeMap<String, FileDigest>,
    pub digest: String,
}

/// Trees for one source string, selected from `index`. `keep_owner`
/// keeps the source's uid/gid (another stage) instead of docker's 0:0 for
/// context files. `parents_pivot` is `Some(prefix)` under `--parents`: the
/// path below the prefix is kept under the destination.
pub fn select_trees(
    index: &ContextIndex,
    src: &str,
    excludes: &[String],
    keep_owner: bool,
    parents: bool,
) -> anyhow::Result<Vec<SourceTree>> {
    // BuildKit's COPY allows a wildcard that matches nothing.
    let opts = SelectOptions {
        excludes: excludes.to_vec(),
        allow_empty_wildcard: true,
    };
    let (pivot, pattern) = match (parents, src.split_once("/./")) {
        (true, Some((p, rest))) => (Some(context::go_clean(p)), format!("{p}/{rest}")),
        (true, None) => (Some(String::new()), src.to_string()),
        (false, _) => (None, src.to_string()),
    };
    let selected = index
        .select_sources(&pattern, &opts)
        .map_err(anyhow::Error::new)?;
    Ok(selected
        .into_iter()
        .map(|s| tree_from_selection(index.root(), s, keep_owner, pivot.as_deref()))
        .collect())
}

fn tree_from_selection(
    root: &Path,
    sel: SelectedSource<'_>,
    keep_owner: bool,
    pivot: Option<&str>,
) -> SourceTree {
    // Under --parents the source keeps its path below the pivot.
    let prefix = pivot.map(|p| {
        let name = sel.name.trim_start_matches('/');
        let below = name
            .strip_prefix(p.trim_start_matches('/').trim_start_matches("./"))
            .unwrap_or(name)
            .trim_start_matches('/');
        below.to_string()
    });
    // Sized once: grown by doubling, the list (~130 bytes an item) held
    // up to a third more than it needed at its peak (~9 MB at 200,000).
    let mut items = Vec::with_capacity(sel.items.len());
    for it in &sel.items {
        let e = it.entry;
        let kind = match &e.kind {
            EntryKind::File => disk_file(root.join(&e.rel)),
            EntryKind::Dir => SourceKind::Dir,
            EntryKind::Symlink { target } => SourceKind::Symlink(target.clone()),
            // Device nodes and FIFOs are kept, as BuildKit's copy keeps
            // them: in a layer they are only tar headers, and RUN sees them
            // on a nodev root, so they open nothing on the host.
            EntryKind::CharDevice { rdev } => SourceKind::Special(LayerKind::CharDevice {
                major: dev_major(*rdev),
                minor: dev_minor(*rdev),
            }),
            EntryKind::BlockDevice { rdev } => SourceKind::Special(LayerKind::BlockDevice {
                major: dev_major(*rdev),
                minor: dev_minor(*rdev),
            }),
            EntryKind::Fifo => SourceKind::Special(LayerKind::Fifo),
            // Sockets cannot be stored in a layer (BuildKit skips them too).
            EntryKind::Socket => continue,
        };
        let rel = match (&prefix, sel.is_dir) {
            (Some(p), true) => join(p, &it.dest_rel),
            (Some(p), false) => p.clone(),
            (None, true) => it.dest_rel.clone(),
            (None, false) => String::new(),
        };
        let (uid, gid) = if keep_owner { (e.uid, e.gid) } else { (0, 0) };
        items.push(SourceItem {
            rel,
            kind,
            mode: e.mode,
            uid,
            gid,
            mtime: Timespec::new(
                e.mtime_ns.div_euclid(1_000_000_000),
                e.mtime_ns.rem_euclid(1_000_000_000) as u32,
            ),
            xattrs: e.xattrs.clone(),
            link_id: (e.kind == EntryKind::File && e.nlink > 1).then_some((e.dev, e.ino)),
        });
    }
    match prefix {
        // A --parents source is a tree rooted at the destination.
        Some(_) => SourceTree {
            name: String::new(),
            is_dir: true,
            items,
        },
        None => SourceTree {
            name: sel.name.rsplit('/').next().unwrap_or(&sel.name).to_string(),
            is_dir: sel.is_dir,
            items,
        },
    }
}

/// A `COPY --from` selection error said in terms of the source: a missing
/// path is not "in the build context" but in a stage or an image. (The
/// caller's error already names the Dockerfile line and instruction.)
pub fn not_in_source(
    err: anyhow::Error,
    src: &crate::plan::Base,
    plan: &crate::plan::Plan,
    pattern: &str,
) -> anyhow::Error {
    if !matches!(
        err.downcast_ref::<context::ContextError>(),
        Some(context::ContextError::NotFound { .. })
    ) {
        return err;
    }
    let path = format!(
        "/{}",
        pattern.trim_start_matches("./").trim_start_matches('/')
    );
    anyhow::anyhow!("{path} not found in {}", source_place(src, plan))
}

/// A `--from` source in words: `stage builder`, `image docker.io/…`.
pub fn source_place(src: &crate::plan::Base, plan: &crate::plan::Plan) -> String {
    use crate::plan::Base;
    match src {
        Base::Stage(i) => match plan.stages.get(*i) {
            Some(s) => format!(
                "stage {}",
                s.name.clone().unwrap_or_else(|| s.index.to_string())
            ),
            None => format!("stage {i}"),
        },
        Base::Image(name) => format!("image {name}"),
        Base::Scratch => "scratch (an empty image)".to_string(),
    }
}

/// The nodes of `skipped` (`/`-rooted) that the source `pattern` would have
/// copied: those at or below its literal part (up to the first wildcard).
pub fn skipped_under<'a>(skipped: &'a [String], pattern: &str) -> Vec<&'a str> {
    let literal = pattern
        .split(['*', '?', '['])
        .next()
        .unwrap_or_default()
        .trim_start_matches("./")
        .trim_start_matches('/');
    let dir = match pattern.contains(['*', '?', '[']) {
        // Everything in the directory the wildcard's component is in.
        true => literal.rsplit_once('/').map_or("", |(d, _)| d),
        false => literal.trim_end_matches('/'),
    };
    skipped
        .iter()
        .map(String::as_str)
        .filter(|n| {
            let n = n.trim_start_matches('/');
            dir.is_empty() || n == dir || n.starts_with(&format!("{dir}/"))
        })
        .collect()
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// The cache-key part of selecting `sources` from the context: every
/// selected file's digest, and the selection digest over names, types,
/// modes (without the bits `--chmod` overrides) and contents.
pub fn context_key(
    index: &ContextIndex,
    sources: &[String],
    excludes: &[String],
    chmod: bool,
) -> anyhow::Result<SelectionKey> {
    // BuildKit's COPY allows a wildcard that matches nothing.
    let opts = SelectOptions {
        excludes: excludes.to_vec(),
        allow_empty_wildcard: true,
    };
    let mut all = Vec::new();
    let mut files = Vec::new();
    for src in sources {
        let pattern = match src.split_once("/./") {
            Some((p, rest)) => format!("{p}/{rest}"),
            None => src.clone(),
        };
        let selected = index
            .select_with(&pattern, &opts)
            .map_err(anyhow::Error::new)?;
        for s in &selected {
            if let Some(d) = &s.entry.digest {
                files.push((s.entry.rel.clone(), *d));
            }
        }
        all.extend(selected);
    }
    let digest_opts = context::DigestOptions {
        mode_mask: if chmod { 0 } else { 0o7777 },
        // Context files are always copied as 0:0: the host owner never counts.
        include_owner: false,
    };
    Ok(SelectionKey {
        digest: context::selection_digest(&all, &digest_opts),
        // Collected, the map is built from the sorted list with full nodes
        // (inserted one by one in order, its nodes stayed ~60% full: ~7 MB
        // more at 200,000 files). A path given twice keeps its last digest,
        // as inserting did.
        files: files.into_iter().collect(),
    })
}

/// The part of the context `src` names, as a real tree under `dir` that
/// holds only what `.dockerignore` lets through (hard links where the
/// filesystem allows, copies otherwise), for `RUN --mount=type=bind`.
/// Returns the path to bind: the directory, or the single file.
pub fn materialize(
    index: &ContextIndex,
    src: &str,
    dir: &Path,
) -> anyhow::Result<std::path::PathBuf> {
    let opts = SelectOptions {
        excludes: Vec::new(),
        allow_empty_wildcard: false,
    };
    let selected = index
        .select_sources(src, &opts)
        .map_err(anyhow::Error::new)?;
    let place = |rel: &str, entry: &crate::context::Entry| -> anyhow::Result<()> {
        let to = if rel.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(rel)
        };
        match &entry.kind {
            EntryKind::Dir => std::fs::create_dir_all(&to)
                .with_context(|| format!("creating {}", to.display()))?,
            EntryKind::File => {
                let from = index.root().join(&entry.rel);
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to)
                        .with_context(|| format!("copying {} for a bind mount", from.display()))?;
                }
            }
            EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &to)
                .with_context(|| format!("creating {}", to.display()))?,
            _ => {}
        }
        Ok(())
    };
    match selected.as_slice() {
        [one] if !one.is_dir => {
            let item = one.items.first().context("empty selection")?;
            let name = one.name.rsplit('/').next().unwrap_or("file");
            place(name, item.entry)?;
            Ok(dir.join(name))
        }
        _ => {
            for s in &selected {
                for it in &s.items {
                    place(&it.dest_rel, it.entry)?;
                }
            }
            Ok(dir.to_path_buf())
        }
    }
}

/// Whether a local file is an archive ADD extracts (tar, possibly gzip,
/// bzip2, xz or zstd compressed): its first tar header must parse.
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(reader) = open_archive(std::io::BufReader::new(file)) else {
        return false;
    };
    let mut header = [0u8; 512];
    let mut r = reader;
    if r.read_exact(&mut header).is_err() {
        return false;
    }
    let h = tar::Header::from_byte_slice(&header);
    let sum: u32 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    h.cksum().ok() == Some(sum) && header[0] != 0
}

/// Extract a local archive for ADD into `dir` (with every escape refused).
/// Returns what could not be applied (device nodes without the privilege
/// to create them), for the caller to report: the layer will lack them.
pub fn extract_archive(path: &Path, dir: &Path) -> anyhow::Result<Vec<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening archive {}", path.display()))?;
    let opts = UnpackOptions {
        no_chown: !nix::unistd::geteuid().is_root(),
        ..UnpackOptions::default()
    };
    let stats = unpack_layer(std::io::BufReader::new(file), dir, &opts)
        .with_context(|| format!("extracting {}", path.display()))?;
    Ok(stats.notes)
}

/// Download `url` for ADD into `dir`, verifying `--checksum` when given.
/// Returns the file's name (the URL's last path element) and its digest.
pub fn download(url: &str, checksum: Option<&str>, dir: &Path) -> anyhow::Result<(String, String)> {
    let parsed = url::Url::parse(url).with_context(|| format!("invalid URL {url}"))?;
    let name = parsed
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .unwrap_or_else(|| "__unnamed__".to_string());
    let mut resp = reqwest::blocking::get(url)
        .with_context(|| format!("downloading {url}"))?
        .error_for_status()
        .with_context(|| format!("downloading {url}"))?;
    let path = dir.join(&name);
    let mut out =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = resp
            .read(&mut buf)
            .with_context(|| format!("downloading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut out, &buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    if let Some(want) = checksum {
        if want != digest {
            bail!("checksum mismatch for {url}: expected {want}, got {digest}");
        }
    }
    Ok((name, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_nodes_under_a_source() {
        let nodes = ["/dev/null".to_string(), "/d/dev/sda".to_string()];
        assert_eq!(skipped_under(&nodes, "/d"), ["/d/dev/sda"]);
        assert_eq!(skipped_under(&nodes, "d/dev/"), ["/d/dev/sda"]);
        assert_eq!(skipped_under(&nodes, "/dev/nu*"), ["/dev/null"]);
        assert_eq!(skipped_under(&nodes, "/"), ["/dev/null", "/d/dev/sda"]);
        assert!(skipped_under(&nodes, "/etc").is_empty());
        assert!(skipped_under(&nodes, "/de").is_empty());
    }
}
