//! The canonical snapshot of a built image, read from a docker-archive tar
//! (`docker save`, `rbuild build -o type=docker`): the image config, the
//! history and the merged filesystem with whiteouts applied, as lines of text
//! so that a difference reads as a diff. BuildKit's recorded snapshots and
//! rbuild's are made by this same code, so nothing but the builders differs.
//!
//! Left out on purpose, because they legitimately differ between two builds
//! of the same thing: timestamps (`created`, file mtimes), ids and digests of
//! compressed or uncompressed layer blobs (the content is compared instead).

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

/// One image, reduced to what a builder is responsible for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// `architecture`, `os` and every non-empty `config` field, `KEY = JSON`.
    pub config: Vec<String>,
    /// One line per history entry after the base image's: `created_by`,
    /// whether it made a layer, and its comment.
    pub history: Vec<String>,
    /// One line per path that differs from the base image (or every path,
    /// for an image not built on the base), sorted.
    pub files: Vec<String>,
}

/// What an image built on the base image shares with it, so that a case's
/// snapshot holds only what the case itself changed.
pub struct Base {
    diff_ids: Vec<String>,
    history_len: usize,
    files: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    digest: String,
    link: String,
    xattrs: BTreeMap<String, String>,
    /// Paths with the same inode number are hard links of one file.
    inode: usize,
}

struct Archive {
    config: Value,
    layers: Vec<Vec<u8>>,
}

fn read_archive(path: &Path) -> Result<Archive, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut members: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| e.to_string())?
            .display()
            .to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
        members.insert(name, data);
    }
    let manifest: Value = serde_json::from_slice(
        members
            .get("manifest.json")
            .ok_or_else(|| format!("{}: no manifest.json", path.display()))?,
    )
    .map_err(|e| format!("{}: manifest.json: {e}", path.display()))?;
    let entry = &manifest[0];
    let config_name = entry["Config"].as_str().ok_or("manifest without Config")?;
    let config: Value = serde_json::from_slice(
        members
            .get(config_name)
            .ok_or_else(|| format!("{}: no {config_name}", path.display()))?,
    )
    .map_err(|e| format!("{config_name}: {e}"))?;
    let mut layers = Vec::new();
    for layer in entry["Layers"]
        .as_array()
        .ok_or("manifest without Layers")?
    {
        let name = layer.as_str().ok_or("layer name")?;
        let data = members
            .remove(name)
            .ok_or_else(|| format!("{}: no {name}", path.display()))?;
        layers.push(decompress(data)?);
    }
    Ok(Archive { config, layers })
}

fn decompress(data: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("gunzip layer: {e}"))?;
        Ok(out)
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(&data[..])
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| format!("unzstd layer: {e}"))?;
        Ok(out)
    } else {
        Ok(data)
    }
}

fn clean(path: &Path) -> String {
    let s = path.display().to_string();
    let s = s.trim_start_matches("./").trim_start_matches('/');
    s.trim_end_matches('/').to_string()
}

fn remove_tree(fs: &mut BTreeMap<String, Node>, path: &str) {
    fs.remove(path);
    let prefix = format!("{path}/");
    let doomed: Vec<String> = fs
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        fs.remove(&k);
    }
}

/// Apply one uncompressed layer tar to the merged tree: whiteouts of this
/// layer act on the layers below it, so they go first.
fn apply_layer(
    fs: &mut BTreeMap<String, Node>,
    layer: &[u8],
    next_inode: &mut usize,
) -> Result<(), String> {
    let mut tar = tar::Archive::new(layer);
    let mut adds: Vec<(String, Node, Option<String>)> = Vec::new();
    for entry in tar.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("layer entry: {e}"))?;
        let path = clean(&entry.path().map_err(|e| e.to_string())?);
        if path.is_empty() {
            continue;
        }
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n.to_string()),
            None => (String::new(), path.clone()),
        };
        if name == ".wh..wh..opq" {
            let prefix = format!("{dir}/");
            let doomed: Vec<String> = fs
                .keys()
                .filter(|k| dir.is_empty() || k.starts_with(&prefix))
                .cloned()
                .collect();
            for k in doomed {
                fs.remove(&k);
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            remove_tree(fs, &target);
            continue;
        }
        let header = entry.header().clone();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| e.to_string())? {
            for ext in exts {
                let ext = ext.map_err(|e| e.to_string())?;
                if let Some(key) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.insert(key.to_string(), hex::encode(ext.value_bytes()));
                }
            }
        }
        let et = header.entry_type();
        let link = header
            .link_name()
            .map_err(|e| e.to_string())?
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        let kind = match et {
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            tar::EntryType::Char => "char",
            tar::EntryType::Block => "block",
            tar::EntryType::Fifo => "fifo",
            _ => "file",
        };
        let mut digest = String::new();
        let mut size = 0;
        if kind == "file" {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
            size = data.len() as u64;
            digest = hex::encode(Sha256::digest(&data));
        }
        let node = Node {
            kind,
            mode: header.mode().map_err(|e| e.to_string())? & 0o7777,
            uid: header.uid().map_err(|e| e.to_string())?,
            gid: header.gid().map_err(|e| e.to_string())?,
            size,
            digest,
            link: if kind == "symlink" {
                link.clone()
            } else {
                String::new()
            },
            xattrs,
            inode: 0,
        };
        let hardlink_to = (kind == "hardlink").then(|| clean(Path::new(&link)));
        adds.push((path, node, hardlink_to));
    }
    for (path, mut node, hardlink_to) in adds {
        if let Some(target) = hardlink_to {
            node = fs
                .get(&target)
                .cloned()
                .ok_or_else(|| format!("hard link {path} to missing {target}"))?;
        } else {
            *next_inode += 1;
            node.inode = *next_inode;
        }
        match fs.get(&path) {
            Some(old) if old.kind == "dir" && node.kind == "dir" => {}
            Some(_) => remove_tree(fs, &path),
            None => {}
        }
        fs.insert(path, node);
    }
    Ok(())
}

/// The merged filesystem as `path -> description` lines.
fn describe(fs: &BTreeMap<String, Node>) -> BTreeMap<String, String> {
    let mut by_inode: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (path, node) in fs {
        if node.kind == "file" {
            by_inode.entry(node.inode).or_default().push(path);
        }
    }
    let mut out = BTreeMap::new();
    for (path, n) in fs {
        let mut line = format!("{} {:04o} {}:{}", n.kind, n.mode, n.uid, n.gid);
        match n.kind {
            "file" => {
                line += &format!(" size={} sha256={}", n.size, &n.digest[..16]);
                let group = &by_inode[&n.inode];
                if group.len() > 1 {
                    // The first name (sorted) stands for the inode; the
                    // others say which file they are a link of.
                    if group[0] == path {
                        line += &format!(" nlink={}", group.len());
                    } else {
                        line = format!("hardlink-of /{}", group[0]);
                    }
                }
            }
            "symlink" => line += &format!(" -> {}", n.link),
            _ => {}
        }
        for (k, v) in &n.xattrs {
            line += &format!(" xattr:{k}={v}");
        }
        out.insert(format!("/{path}"), line);
    }
    out
}

fn merged(archive: &Archive) -> Result<BTreeMap<String, String>, String> {
    let mut fs = BTreeMap::new();
    let mut next_inode = 0;
    for layer in &archive.layers {
        apply_layer(&mut fs, layer, &mut next_inode)?;
    }
    Ok(describe(&fs))
}

fn diff_ids(config: &Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn history(config: &Value) -> Vec<String> {
    let Some(entries) = config["history"].as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|h| {
            let by = h["created_by"].as_str().unwrap_or("");
            let empty = h["empty_layer"].as_bool().unwrap_or(false);
            let mut line = format!("{by} | {}", if empty { "empty" } else { "layer" });
            if let Some(c) = h["comment"].as_str().filter(|c| !c.is_empty()) {
                line += &format!(" | comment={c}");
            }
            line
        })
        .collect()
}

/// A JSON value that says nothing: docker treats these as "unset".
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(b) => !b,
        _ => false,
    }
}

fn config_lines(config: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for key in ["architecture", "os", "variant"] {
        if !is_unset(&config[key]) {
            lines.push(format!("{key} = {}", config[key]));
        }
    }
    if let Some(obj) = config["config"].as_object() {
        let sorted: BTreeMap<&String, &Value> = obj.iter().collect();
        for (k, v) in sorted {
            if !is_unset(v) {
                lines.push(format!("config.{k} = {}", canonical(v)));
            }
        }
    }
    lines
}

/// JSON with object keys sorted, so key order never shows as a difference.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let sorted: BTreeMap<&String, &Value> = o.iter().collect();
            let parts: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), canonical(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

impl Base {
    pub fn read(path: &Path) -> Result<Base, String> {
        let archive = read_archive(path)?;
        Ok(Base {
            diff_ids: diff_ids(&archive.config),
            history_len: history(&archive.config).len(),
            files: merged(&archive)?,
        })
    }
}

impl Snapshot {
    /// Read a docker-archive; when the image is built on `base`, keep only
    /// the history and files the build added or changed.
    pub fn read(path: &Path, base: &Base) -> Result<Snapshot, String> {
        let archive = read_archive(path)?;
        let files = merged(&archive)?;
        let on_base = diff_ids(&archive.config).starts_with(&base.diff_ids);
        let mut history = history(&archive.config);
        let mut lines = Vec::new();
        if on_base {
            history.drain(..base.history_len.min(history.len()));
            for (path, line) in &files {
                if base.files.get(path) != Some(line) {
                    lines.push(format!("{path} {line}"));
                }
            }
            for path in base.files.keys() {
                if !files.contains_key(path) {
                    lines.push(format!("{path} removed"));
                }
            }
            lines.sort();
        } else {
            history.insert(0, "(not built on the base image)".to_string());
            // A file taken from the base (e.g. busybox copied into a scratch
            // stage) is named, not described: its bytes depend on the machine.
            lines = files
                .iter()
                .map(|(p, l)| match base.files.get(p) {
                    Some(b) if b == l => format!("{p} as in the base image"),
                    _ => format!("{p} {l}"),
                })
                .collect();
        }
        Ok(Snapshot {
            config: config_lines(&archive.config),
            history,
            files: lines,
        })
    }

    pub fn to_json(&self, recorded_with: &str) -> Value {
        serde_json::json!({
            "recorded_with": recorded_with,
            "build": "succeeds",
            "config": self.config,
            "history": self.history,
            "files": self.files,
        })
    }

    pub fn from_json(v: &Value) -> Snapshot {
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Snapshot {
            config: list("config"),
            history: list("history"),
            files: list("files"),
        }
    }

    /// Every difference, as `section: - expected` / `section: + actual`.
    pub fn diff(expected: &Snapshot, actual: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (section, e, a) in [
            ("config", &expected.config, &actual.config),
            ("history", &expected.history, &actual.history),
            ("files", &expected.files, &actual.files),
        ] {
            if e == a {
                continue;
            }
            let missing: Vec<&String> = e.iter().filter(|l| !a.contains(l)).collect();
            let extra: Vec<&String> = a.iter().filter(|l| !e.contains(l)).collect();
            for l in &missing {
                out.push(format!("{section}: - {l}"));
            }
            for l in &extra {
                out.push(format!("{section}: + {l}"));
            }
            if missing.is_empty() && extra.is_empty() {
                out.push(format!("{section}: same lines in another order"));
            }
        }
        out
    }
}
