//! `rbuild load`: docker-archive and OCI-archive tars into the store.
//!
//! The archive is read once, as a stream: every regular file goes straight
//! into a store blob (hashed on the way), small JSON control files are also
//! kept in memory, and nothing is ever written by the archive's own names,
//! so hostile entry names cannot reach the filesystem. Then the images are
//! assembled from those blobs and verified: OCI blobs must hash to the
//! names and sizes their descriptors give; docker-archive layers must
//! hash (uncompressed) to the config's diff_ids. Tags are written last,
//! only when every image of the archive checked out.

use std::collections::BTreeMap;
use std::io::{self, Read};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::canonical::to_canonical_json;
use super::manifest::descriptor;
use crate::oci::media::{OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST};
use crate::store::{BlobInfo, Store};

/// Control files larger than this are not JSON a real archive would hold.
const MAX_JSON: u64 = 16 << 20;

/// One image loaded: its name and config digest (docker's image ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub name: String,
    pub image_id: String,
}

/// Every regular file of the archive, by normalized path.
struct Entries {
    blobs: BTreeMap<String, BlobInfo>,
    json: BTreeMap<String, Vec<u8>>,
    /// Symlinks and hard links: path → target path.
    links: BTreeMap<String, String>,
}

impl Entries {
    fn blob(&self, path: &str) -> anyhow::Result<&BlobInfo> {
        let mut p = clean(path);
        for _ in 0..8 {
            if let Some(b) = self.blobs.get(&p) {
                return Ok(b);
            }
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        bail!("the archive has no file {path:?}")
    }

    fn json(&self, path: &str) -> anyhow::Result<Value> {
        let bytes = self
            .json
            .get(&clean(path))
            .with_context(|| format!("the archive has no {path}"))?;
        serde_json::from_slice(bytes).with_context(|| format!("{path} is not valid JSON"))
    }
}

/// `a/./b/` → `a/b`; `..` is kept literally (only used as a map key).
fn clean(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Join a link target to its link's directory, resolving `..` lexically
/// (the result is only a key into the archive's own entries).
fn link_target(link: &str, target: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    if !target.starts_with('/') {
        out.extend(link.split('/').filter(|c| !c.is_empty() && *c != "."));
        out.pop();
    }
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

fn read_entries(store: &Store, archive: &mut dyn Read) -> anyhow::Result<Entries> {
    let mut entries = Entries {
        blobs: BTreeMap::new(),
        json: BTreeMap::new(),
        links: BTreeMap::new(),
    };
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading an archive entry")?;
        let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .context("reading a link target")?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            let resolved = if kind.is_hard_link() {
                clean(&target)
            } else {
                link_target(&path, &target)
            };
            entries.links.insert(path, resolved);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        // The two index files are read back; every other file is only a blob.
        let keep = (path == "manifest.json" || path == "index.json") && entry.size() <= MAX_JSON;
        let mut writer = store.blob_writer()?;
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = entry
                .read(&mut buf)
                .with_context(|| format!("reading {path} from the archive"))?;
            if n == 0 {
                break;
            }
            io::Write::write_all(&mut writer, &buf[..n])
                .context("writing a blob into the store")?;
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        let info = writer.commit()?;
        if keep {
            entries.json.insert(path.clone(), kept);
        }
        entries.blobs.insert(path, info);
    }
    Ok(entries)
}

/// Load every image of a docker-archive or OCI-archive tar (already
/// decompressed) into the store; returns what was loaded.
pub fn load_archive(store: &Store, archive: &mut dyn Read) -> anyhow::Result<Vec<Loaded>> {
    let entries = read_entries(store, archive)?;
    let images = if entries.json.contains_key("manifest.json") {
        docker_images(store, &entries).context("loading a docker archive")?
    } else if entries.blobs.contains_key("oci-layout") {
        oci_images(store, &entries).context("loading an OCI archive")?
    } else {
        bail!("not a docker archive (no manifest.json) nor an OCI archive (no oci-layout)");
    };
    anyhow::ensure!(!images.is_empty(), "the archive holds no image");
    // Everything verified: now name them.
    let mut loaded = Vec::new();
    for (names, desc, image_id) in images {
        for name in names {
            store
                .tag(&name, &desc)
                .with_context(|| format!("tagging {name}"))?;
            loaded.push(Loaded {
                name,
                image_id: image_id.clone(),
            });
        }
    }
    Ok(loaded)
}

type Pending = (Vec<String>, oci_spec::image::Descriptor, String);

fn docker_images(store: &Store, entries: &Entries) -> anyhow::Result<Vec<Pending>> {
    let manifest = entries.json("manifest.json")?;
    let items = manifest.as_array().context("manifest.json is not a list")?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let config_path = item["Config"]
            .as_str()
            .with_context(|| format!("manifest.json entry {i} has no Config"))?;
        let config = entries.blob(config_path)?.clone();
        // `<hex>.json` and `blobs/sha256/<hex>` name the config by its digest.
        let named = config_path
            .trim_end_matches(".json")
            .rsplit('/')
            .next()
            .unwrap_or_default();
        if named.len() == 64 && named.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::ensure!(
                config.digest == format!("sha256:{named}"),
                "config {config_path} has digest {}, not the one its name says",
                config.digest
            );
        }
        let cfg: Value = serde_json::from_slice(&store.read_blob(&config.digest)?)
            .with_context(|| format!("config {config_path} is not valid JSON"))?;
        let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let layer_paths: Vec<&str> = item["Layers"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        anyhow::ensure!(
            layer_paths.len() == diff_ids.len(),
            "manifest.json entry {i} lists {} layers but its config has {} diff_ids",
            layer_paths.len(),
            diff_ids.len()
        );
        let mut layers = Vec::new();
        for (path, diff_id) in layer_paths.iter().zip(&diff_ids) {
            let blob = entries.blob(path)?;
            let (uncompressed, gzip) = uncompressed_digest(store, blob)?;
            anyhow::ensure!(
                &uncompressed == diff_id,
                "layer {path} has content {uncompressed}, but the config says {diff_id}"
            );
            let media = if gzip { OCI_LAYER_GZIP } else { OCI_LAYER };
            layers.push(json!({"mediaType": media, "size": blob.size, "digest": blob.digest}));
        }
        // Stored as an OCI manifest (the store is an OCI layout, and tools
        // reading it look for OCI media types); the config keeps its bytes,
        // so the image ID is docker's.
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": config.size, "digest": config.digest},
            "layers": layers,
        });
        let blob = store.put_blob(&to_canonical_json(&manifest)?)?;
        let desc = descriptor(OCI_MANIFEST, &blob)?;
        let names: Vec<String> = item["RepoTags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        out.push((unnamed_check(names, i)?, desc, config.digest.clone()));
    }
    Ok(out)
}

fn unnamed_check(names: Vec<String>, i: usize) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        !names.is_empty(),
        "image {i} of the archive has no name, and the store keeps only named images\n\
         hint: write the archive with a name (docker save NAME:TAG, \
         skopeo copy … docker-archive:FILE:NAME:TAG)"
    );
    Ok(names)
}

/// The sha256 of the blob's uncompressed content (gzip or plain), and
/// whether it was gzip.
fn uncompressed_digest(store: &Store, blob: &BlobInfo) -> anyhow::Result<(String, bool)> {
    let mut f = io::BufReader::new(store.open_blob(&blob.digest)?);
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).context("reading a layer")?;
    let gzip = n == 2 && magic == [0x1f, 0x8b];
    if !gzip {
        return Ok((blob.digest.clone(), false));
    }
    let f = io::BufReader::new(store.open_blob(&blob.digest)?);
    let mut dec = flate2::read::MultiGzDecoder::new(f);
    let mut h = Sha256::new();
    io::copy(&mut dec, &mut HashWriter(&mut h)).context("decompressing a gzip layer")?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), true))
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn oci_images(store: &Store, entries: &Entries) -> anyhow::Result<Vec<Pending>> {
    let index = entries.json("index.json")?;
    let manifests = index["manifests"]
        .as_array()
        .context("index.json has no manifests")?;
    let mut out = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        let ann = &m["annotations"];
        let name = ann["io.containerd.image.name"]
            .as_str()
            .or_else(|| ann[crate::oci::REF_NAME].as_str())
            .map(String::from);
        let desc =
            oci_manifest(store, entries, m, 0).with_context(|| format!("index.json entry {i}"))?;
        let manifest: Value = serde_json::from_slice(&store.read_blob(desc.digest().as_ref())?)?;
        let image_id = manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.push((
            unnamed_check(name.into_iter().collect(), i)?,
            desc,
            image_id,
        ));
    }
    Ok(out)
}

/// Verify the blob a descriptor names: present under `blobs/<alg>/<hex>`,
/// hashing to that digest, with the descriptor's size.
fn verified(entries: &Entries, d: &Value) -> anyhow::Result<BlobInfo> {
    let digest = d["digest"]
        .as_str()
        .context("a descriptor without digest")?;
    let size = d["size"].as_u64().context("a descriptor without size")?;
    let path = format!("blobs/{}", digest.replacen(':', "/", 1));
    let blob = entries
        .blob(&path)
        .with_context(|| format!("blob {digest} is missing"))?;
    anyhow::ensure!(
        blob.digest == digest,
        "blob {path} hashes to {}, not {digest}",
        blob.digest
    );
    anyhow::ensure!(
        blob.size == size,
        "blob {digest} has {} bytes, the descriptor says {size}",
        blob.size
    );
    Ok(blob.clone())
}

/// The image manifest under descriptor `d` (for an index: the host
/// platform's, else the first), with its config and layers verified.
fn oci_manifest(
    store: &Store,
    entries: &Entries,
    d: &Value,
    depth: usize,
) -> anyhow::Result<oci_spec::image::Descriptor> {
    anyhow::ensure!(depth < 4, "indexes nested too deep");
    let blob = verified(entries, d)?;
    let doc: Value = serde_json::from_slice(&store.read_blob(&blob.digest)?)
        .with_context(|| format!("manifest {} is not valid JSON", blob.digest))?;
    let media = d["mediaType"]
        .as_str()
        .or_else(|| doc["mediaType"].as_str())
        .unwrap_or_default()
        .to_string();
    if let Some(children) = doc["manifests"].as_array() {
        let arch = crate::oci::Platform::host().arch;
        let pick = children
            .iter()
            .find(|c| c["platform"]["os"] == "linux" && c["platform"]["architecture"] == arch)
            .or_else(|| children.first())
            .context("an index without manifests")?;
        return oci_manifest(store, entries, pick, depth + 1);
    }
    verified(entries, &doc["config"]).context("the config")?;
    for (i, l) in doc["layers"].as_array().into_iter().flatten().enumerate() {
        verified(entries, l).with_context(|| format!("layer {i}"))?;
    }
    descriptor(&media, &blob)
}

/// `oci-layout://PATH[:TAG|@DIGEST]` (the part after the scheme): the
/// image that OCI layout directory names, its blobs copied into the store
/// (each verified against its descriptor); returns its manifest
/// descriptor, untagged. Without TAG or DIGEST the layout must hold one image.
pub fn import_layout(store: &Store, spec: &str) -> anyhow::Result<oci_spec::image::Descriptor> {
    let (dir, select) = match spec.rsplit_once('@') {
        Some((d, digest)) => (d, Some(format!("@{digest}"))),
        None => match spec.rsplit_once(':') {
            Some((d, tag)) if !tag.contains('/') && !d.is_empty() => (d, Some(tag.to_string())),
            _ => (spec, None),
        },
    };
    let dir = std::path::Path::new(dir);
    let index_path = dir.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", index_path.display()))?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let ref_name = |m: &Value| {
        m["annotations"][crate::oci::REF_NAME]
            .as_str()
            .map(String::from)
    };
    let chosen = match select.as_deref() {
        Some(d) if d.starts_with('@') => manifests.iter().find(|m| m["digest"] == d[1..]),
        Some(tag) => manifests.iter().find(|m| {
            ref_name(m)
                .is_some_and(|n| n == tag || n.rsplit_once(':').is_some_and(|(_, t)| t == tag))
        }),
        None if manifests.len() == 1 => manifests.first(),
        None => bail!(
            "{} holds {} images: name one with :TAG or @DIGEST",
            dir.display(),
            manifests.len()
        ),
    };
    let chosen = chosen.with_context(|| {
        format!(
            "{} has no image {}",
            dir.display(),
            select.unwrap_or_default()
        )
    })?;
    copy_from_layout(store, dir, chosen, 0)
        .with_context(|| format!("importing from the OCI layout {}", dir.display()))
}

/// Copy the blob `d` names from `dir` into the store, verified; for an
/// index, the host platform's manifest (else the first); for a manifest,
/// its config and layers too. Returns the image manifest's descriptor.
fn copy_from_layout(
    store: &Store,
    dir: &std::path::Path,
    d: &Value,
    depth: usize,
) -> anyhow::Result<oci_spec::image::Descriptor> {
    anyhow::ensure!(depth < 4, "indexes nested too deep");
    let blob = copy_blob(store, dir, d)?;
    let doc: Value = serde_json::from_slice(&store.read_blob(&blob.digest)?)
        .with_context(|| format!("manifest {} is not valid JSON", blob.digest))?;
    if let Some(children) = doc["manifests"].as_array() {
        let arch = crate::oci::Platform::host().arch;
        let pick = children
            .iter()
            .find(|c| c["platform"]["os"] == "linux" && c["platform"]["architecture"] == arch)
            .or_else(|| children.first())
            .context("an index without manifests")?;
        return copy_from_layout(store, dir, pick, depth + 1);
    }
    copy_blob(store, dir, &doc["config"]).context("the config")?;
    for (i, l) in doc["layers"].as_array().into_iter().flatten().enumerate() {
        copy_blob(store, dir, l).with_context(|| format!("layer {i}"))?;
    }
    let media = d["mediaType"]
        .as_str()
        .or_else(|| doc["mediaType"].as_str())
        .unwrap_or(OCI_MANIFEST);
    descriptor(media, &blob)
}

fn copy_blob(store: &Store, dir: &std::path::Path, d: &Value) -> anyhow::Result<BlobInfo> {
    let digest = d["digest"]
        .as_str()
        .context("a descriptor without digest")?;
    let size = d["size"].as_u64().context("a descriptor without size")?;
    // Validated before it becomes a path: 64 lowercase hex digits, no `/`.
    let hex = crate::store::digest_hex(digest)?;
    if store.has_blob(digest) {
        return Ok(BlobInfo {
            digest: digest.to_string(),
            size,
        });
    }
    let path = dir.join("blobs/sha256").join(hex);
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut w = store.blob_writer()?;
    io::copy(&mut f, &mut w).with_context(|| format!("copying {}", path.display()))?;
    w.commit_verified(digest, Some(size))
        .with_context(|| format!("verifying {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_lexically() {
        assert_eq!(link_target("a/layer.tar", "../b/layer.tar"), "b/layer.tar");
        assert_eq!(link_target("x", "/y/z"), "y/z");
        assert_eq!(clean("./blobs//sha256/ab/"), "blobs/sha256/ab");
    }
}
