//! COPY and ADD: turning selected sources into the entries of one layer.
//!
//! The caller selects sources (from the context index, another stage's
//! root, an unpacked archive or a downloaded file) as [`SourceTree`]s and
//! says what already exists at the destination's parents in the image; this
//! module applies docker's placement rules (see `copydest`), `--chown`,
//! `--chmod`, keeps hard links within the copied set, and adds the parent
//! directories the layer must carry.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::layer::{EntryKind, FileSource, LayerEntry, Timespec};

use super::copydest::{clean, dest_is_dir, parents, target_for};

/// One object under a copied source, with its metadata as read.
#[derive(Debug, Clone)]
pub struct SourceItem {
    /// Path relative to the source root, `/`-separated; `""` is the root itself.
    pub rel: String,
    pub kind: SourceKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// (dev, inode) for regular files, to keep hard links linked.
    pub link_id: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    File(FileSource),
    Dir,
    Symlink(String),
    /// A character or block device or a FIFO, copied as the node itself
    /// (the layer entry kind), as BuildKit's copy keeps them.
    Special(EntryKind),
}

/// One matched source: a file, a symlink, or a directory with everything below it.
#[derive(Debug, Clone)]
pub struct SourceTree {
    /// The matched name (its last component names the target of a file copied into a directory).
    pub name: String,
    /// A directory source: its items land below the destination.
    pub is_dir: bool,
    pub items: Vec<SourceItem>,
}

/// What the image already has at a path (for parents of the destination).
#[derive(Debug, Clone)]
pub struct ExistingDir {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
}

/// Flags of one COPY/ADD after expansion and resolution.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// `--chown`, resolved to ids.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`, octal.
    pub chmod: Option<u32>,
    /// Time for directories the copy creates.
    pub created: Timespec,
}

/// Entries of the layer that copies `sources` to `dest_abs` (absolute,
/// trailing `/` kept). `existing(path)` describes directories that already
/// exist in the image (already resolved through symlinks by the caller), and
/// `dest_exists_as_dir` says whether the destination itself is one.
/// The trees are consumed item by item (their paths and file sources move
/// into the entries), so a 200,000-file COPY does not hold both lists.
pub fn copy_entries(
    sources: Vec<SourceTree>,
    dest_abs: &str,
    dest_exists_as_dir: bool,
    opts: &CopyOptions,
    existing: &dyn Fn(&str) -> Option<ExistingDir>,
) -> Vec<LayerEntry> {
    let into_dir = dest_is_dir(dest_abs, sources.len(), dest_exists_as_dir);
    let total = sources.iter().map(|t| t.items.len()).sum();
    let mut out = Placed::with_capacity(total);
    let mut first_link: HashMap<(u64, u64), String> = HashMap::new();
    for tree in sources {
        let target = target_for(dest_abs, into_dir, &tree.name, tree.is_dir);
        let container = if tree.is_dir {
            target.clone()
        } else {
            parent_of(&target)
        };
        add_parents(&mut out, &container, opts, existing, &|_| false);
        for item in tree.items {
            // A directory source gives its contents, never its own metadata:
            // `add_parents` made the destination as BuildKit does (a missing
            // one 0755, owned by the --chown user or root; an existing one
            // left as it is, even under --chmod).
            if tree.is_dir && item.rel.is_empty() {
                // One difference from BuildKit (which stamps a new
                // destination with the time of the copy): its mtime is the
                // source directory's, so the same files give the same layer
                // at any time, in any store. An existing one keeps its own.
                if existing(&target).is_none() {
                    let rel = target.trim_start_matches('/').to_string();
                    out.patches.push((rel, out.list.len(), item.mtime));
                }
                continue;
            }
            let path = if item.rel.is_empty() {
                target.clone()
            } else {
                clean(&format!("{target}/{}", item.rel))
            };
            if path == "/" {
                continue;
            }
            let entry = item_entry(item, &path, opts, &mut first_link);
            out.push(entry, true);
        }
    }
    out.resolve();
    // Directories between the destination and deeper items (e.g. under
    // --parents) that no source described.
    let missing: Vec<String> = out
        .list
        .iter()
        .filter_map(|p| p.entry.path.rsplit_once('/').map(|(d, _)| d))
        .filter(|d| !out.has(d))
        .map(str::to_string)
        .collect();
    if !missing.is_empty() {
        let before = out.list.len();
        for d in missing {
            // Only the resolved (sorted) part is searched; dirs pushed
            // here are in `dirs`.
            let (list, dirs) = (&out.list[..before], &out.dirs);
            let present = |rel: &str| dirs.contains(rel) || Placed::find(list, rel).is_some();
            let new = new_parents(&format!("/{d}"), opts, existing, &present);
            for e in new {
                out.dirs.insert(e.path.clone());
                out.push(e, false);
            }
        }
        if out.list.len() > before {
            out.list.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
        }
    }
    out.list.into_iter().map(|p| p.entry).collect()
}

/// The entries placed so far, in push order until [`Placed::resolve`]
/// sorts them by path and keeps one per path as a map insert would: an
/// item replaces whatever was there, a parent directory is only added
/// where nothing was. A list, not a map keyed by path: at 200,000 files the
/// map's second copy of every path and half-full nodes cost ~30 MB.
struct Placed {
    list: Vec<PlacedEntry>,
    /// Paths of the parent directories pushed (a handful).
    dirs: std::collections::HashSet<String>,
    /// A directory source's mtime for the entry at a path, as of push
    /// number `.1`: applied to the entry placed there before it.
    patches: Vec<(String, usize, Timespec)>,
}

struct PlacedEntry {
    entry: LayerEntry,
    /// Push number.
    seq: usize,
    /// From a source item (which replaces), not a parent (which yields).
    item: bool,
}

impl Placed {
    fn with_capacity(n: usize) -> Self {
        Placed {
            list: Vec::with_capacity(n),
            dirs: Default::default(),
            patches: Vec::new(),
        }
    }

    fn push(&mut self, entry: LayerEntry, item: bool) {
        let seq = self.list.len();
        self.list.push(PlacedEntry { entry, seq, item });
    }

    /// Sorts by path and keeps, per path, the last item or else the first
    /// parent; then applies the mtime patches to the entries they saw.
    fn resolve(&mut self) {
        // Stable: equal paths stay in push order.
        self.list.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
        self.list.dedup_by(|later, kept| {
            if later.entry.path != kept.entry.path {
                return false;
            }
            if later.item {
                std::mem::swap(later, kept);
            }
            true
        });
        for (rel, seq, mtime) in std::mem::take(&mut self.patches) {
            if let Some(i) = Self::find(&self.list, &rel) {
                if self.list[i].seq < seq {
                    self.list[i].entry.mtime = mtime;
                }
            }
        }
    }

    fn find(list: &[PlacedEntry], rel: &str) -> Option<usize> {
        list.binary_search_by(|p| p.entry.path.as_str().cmp(rel))
            .ok()
    }

    /// After [`Placed::resolve`]: whether an entry is at `rel`.
    fn has(&self, rel: &str) -> bool {
        Self::find(&self.list, rel).is_some()
    }
}

fn parent_of(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((p, _)) => p.to_string(),
    }
}

/// Every directory from `/` down to `dir` (inclusive) that the layer must
/// carry: existing ones with their metadata, new ones
/// as docker creates them (0755, owned by the `--chown` user).
fn add_parents(
    out: &mut Placed,
    dir: &str,
    opts: &CopyOptions,
    existing: &dyn Fn(&str) -> Option<ExistingDir>,
    present: &dyn Fn(&str) -> bool,
) {
    let dirs = &out.dirs;
    let new = new_parents(dir, opts, existing, &|rel| {
        dirs.contains(rel) || present(rel)
    });
    for e in new {
        out.dirs.insert(e.path.clone());
        out.push(e, false);
    }
}

/// The directories of [`add_parents`] not `present` yet.
fn new_parents(
    dir: &str,
    opts: &CopyOptions,
    existing: &dyn Fn(&str) -> Option<ExistingDir>,
    present: &dyn Fn(&str) -> bool,
) -> Vec<LayerEntry> {
    let mut out = Vec::new();
    for d in parents(&format!("{dir}/x")) {
        let rel = d.trim_start_matches('/');
        if present(rel) {
            continue;
        }
        let (uid, gid) = opts.chown.unwrap_or((0, 0));
        let entry = match existing(&d) {
            Some(e) => dir_entry(rel, e.mode, e.uid, e.gid, e.mtime),
            None => dir_entry(rel, 0o755, uid, gid, opts.created),
        };
        out.push(entry);
    }
    out
}

fn dir_entry(rel: &str, mode: u32, uid: u32, gid: u32, mtime: Timespec) -> LayerEntry {
    LayerEntry {
        path: rel.to_string(),
        kind: EntryKind::Dir,
        mode,
        uid,
        gid,
        mtime,
        xattrs: Vec::new(),
    }
}

fn item_entry(
    item: SourceItem,
    path: &str,
    opts: &CopyOptions,
    first_link: &mut HashMap<(u64, u64), String>,
) -> LayerEntry {
    let rel = path.trim_start_matches('/').to_string();
    let (uid, gid) = opts.chown.unwrap_or((item.uid, item.gid));
    // --chmod applies to files and directories, never to symlinks.
    let mode = match (&item.kind, opts.chmod) {
        (SourceKind::Symlink(_), _) => 0o777,
        (_, Some(m)) => m,
        (_, None) => item.mode,
    };
    let kind = match item.kind {
        SourceKind::Dir => EntryKind::Dir,
        SourceKind::Symlink(target) => EntryKind::Symlink { target },
        SourceKind::Special(kind) => kind,
        SourceKind::File(src) => match item.link_id.and_then(|id| first_link.get(&id)) {
            Some(first) => EntryKind::Hardlink {
                target: first.clone(),
            },
            None => {
                if let Some(id) = item.link_id {
                    first_link.insert(id, rel.clone());
                }
                EntryKind::File(src)
            }
        },
    };
    LayerEntry {
        path: rel,
        kind,
        mode,
        uid,
        gid,
        mtime: item.mtime,
        xattrs: item.xattrs,
    }
}

/// A heredoc source (`COPY <<EOF /dest`): a file of `data`, mode 0644.
pub fn heredoc_tree(name: &str, data: &[u8], mtime: Timespec) -> SourceTree {
    SourceTree {
        name: name.to_string(),
        is_dir: false,
        items: vec![SourceItem {
            rel: String::new(),
            kind: SourceKind::File(FileSource::Bytes(data.to_vec())),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
            link_id: None,
        }],
    }
}

/// Path of a regular file's bytes for a source read from disk.
pub fn disk_file(path: PathBuf) -> SourceKind {
    SourceKind::File(FileSource::Path(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rel: &str, link: Option<(u64, u64)>) -> SourceItem {
        SourceItem {
            rel: rel.into(),
            kind: disk_file(PathBuf::from(format!("/ctx/{rel}"))),
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            mtime: Timespec::new(5, 0),
            xattrs: Vec::new(),
            link_id: link,
        }
    }

    fn dir(rel: &str) -> SourceItem {
        SourceItem {
            kind: SourceKind::Dir,
            mode: 0o750,
            ..file(rel, None)
        }
    }

    fn paths(entries: &[LayerEntry]) -> Vec<String> {
        entries.iter().map(|e| e.path.clone()).collect()
    }

    fn none(_: &str) -> Option<ExistingDir> {
        None
    }

    #[test]
    fn a_file_into_a_new_directory() {
        let src = SourceTree {
            name: "hello.txt".into(),
            is_dir: false,
            items: vec![file("", None)],
        };
        let got = copy_entries(vec![src], "/app/", false, &CopyOptions::default(), &none);
        assert_eq!(paths(&got), vec!["app", "app/hello.txt"]);
        assert_eq!(got[0].mode, 0o755);
        assert_eq!((got[1].uid, got[1].mode), (1000, 0o640));
    }

    #[test]
    fn a_file_renamed() {
        let src = SourceTree {
            name: "a/hello.txt".into(),
            is_dir: false,
            items: vec![file("", None)],
        };
        let got = copy_entries(
            vec![src],
            "/etc/motd",
            false,
            &CopyOptions::default(),
            &none,
        );
        assert_eq!(paths(&got), vec!["etc", "etc/motd"]);
    }

    #[test]
    fn directory_contents_not_the_directory() {
        let src = SourceTree {
            name: "src".into(),
            is_dir: true,
            items: vec![dir(""), dir("sub"), file("sub/x", None), file("y", None)],
        };
        let got = copy_entries(vec![src], "/app", false, &CopyOptions::default(), &none);
        assert_eq!(paths(&got), vec!["app", "app/sub", "app/sub/x", "app/y"]);
        // A new destination is made 0755 root, whatever the source's mode;
        // directories below keep theirs.
        assert_eq!((got[0].mode, got[0].uid), (0o755, 0));
        assert_eq!(got[1].mode, 0o750);
    }

    #[test]
    fn chown_and_chmod_apply_to_copied_and_created_entries() {
        let src = SourceTree {
            name: "f".into(),
            is_dir: false,
            items: vec![file("", None)],
        };
        let opts = CopyOptions {
            chown: Some((7, 8)),
            chmod: Some(0o600),
            created: Timespec::new(1, 0),
        };
        let got = copy_entries(vec![src], "/new/dir/", false, &opts, &none);
        assert_eq!(paths(&got), vec!["new", "new/dir", "new/dir/f"]);
        assert!(got.iter().all(|e| (e.uid, e.gid) == (7, 8)));
        assert_eq!(got[2].mode, 0o600);
        assert_eq!(got[0].mode, 0o755);
    }

    #[test]
    fn existing_parents_keep_their_metadata() {
        let src = SourceTree {
            name: "f".into(),
            is_dir: false,
            items: vec![file("", None)],
        };
        let existing = |p: &str| {
            (p == "/usr").then(|| ExistingDir {
                mode: 0o700,
                uid: 3,
                gid: 4,
                mtime: Timespec::new(9, 0),
            })
        };
        let got = copy_entries(
            vec![src],
            "/usr/bin/",
            false,
            &CopyOptions::default(),
            &existing,
        );
        assert_eq!(paths(&got), vec!["usr", "usr/bin", "usr/bin/f"]);
        assert_eq!((got[0].mode, got[0].uid), (0o700, 3));
        assert_eq!((got[1].mode, got[1].uid), (0o755, 0));
    }

    #[test]
    fn deeper_items_get_their_directories() {
        let src = SourceTree {
            name: String::new(),
            is_dir: true,
            items: vec![file("a/b/c.txt", None)],
        };
        let got = copy_entries(vec![src], "/d/", false, &CopyOptions::default(), &none);
        assert_eq!(paths(&got), vec!["d", "d/a", "d/a/b", "d/a/b/c.txt"]);
    }

    #[test]
    fn a_later_item_replaces_an_earlier_one_and_parents_are_made_once() {
        // Two sources give `/d/x`: the later one's entry is kept, as a map
        // insert kept it; the directory source stamps the new `/d` with its
        // own mtime; shared missing parents appear once.
        let a = SourceTree {
            name: "x".into(),
            is_dir: false,
            items: vec![file("", None)],
        };
        let mut root = dir("");
        root.mtime = Timespec::new(77, 0);
        let mut x = file("x", None);
        x.mode = 0o600;
        let b = SourceTree {
            name: "src".into(),
            is_dir: true,
            items: vec![root, x, file("p/q/r", None), file("p/s/t", None)],
        };
        let got = copy_entries(vec![a, b], "/d/", false, &CopyOptions::default(), &none);
        assert_eq!(
            paths(&got),
            vec!["d", "d/p", "d/p/q", "d/p/q/r", "d/p/s", "d/p/s/t", "d/x"]
        );
        assert_eq!(got[0].mtime, Timespec::new(77, 0));
        assert_eq!(got[6].mode, 0o600);
    }

    #[test]
    fn several_sources_go_into_the_directory_and_hardlinks_stay_linked() {
        let a = SourceTree {
            name: "a".into(),
            is_dir: false,
            items: vec![file("", Some((1, 42)))],
        };
        let b = SourceTree {
            name: "b".into(),
            is_dir: false,
            items: vec![file("", Some((1, 42)))],
        };
        let got = copy_entries(vec![a, b], "/d", false, &CopyOptions::default(), &none);
        assert_eq!(paths(&got), vec!["d", "d/a", "d/b"]);
        assert!(matches!(got[1].kind, EntryKind::File(_)));
        assert_eq!(
            got[2].kind,
            EntryKind::Hardlink {
                target: "d/a".into()
            }
        );
    }
}
