//! Export images out of the store: an OCI image layout (a directory, or a
//! tar of one) and a docker-archive tar (`docker save`'s format: config
//! `<hex>.json`, uncompressed `<diff_id hex>/layer.tar`, `manifest.json`,
//! `repositories`). Tars are written to a temp file beside the destination
//! and renamed, so a failed export leaves nothing half-written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;

use anyhow::Context;
use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::canonical::to_canonical_json;
use super::manifest::{find_image, Image};
use crate::oci::{IMAGE_LAYOUT, REF_NAME};
use crate::store::{digest_hex, normalize_tag, Store, TempFile};

/// The images behind `tags`, each with its normalized name.
fn load_tagged(store: &Store, tags: &[String]) -> anyhow::Result<Vec<(String, Image)>> {
    anyhow::ensure!(!tags.is_empty(), "no image to export");
    tags.iter()
        .map(|t| Ok((normalize_tag(t)?, find_image(store, t)?)))
        .collect()
}

/// Every blob of an image: manifest, config, layers.
fn image_blobs(image: &Image) -> Vec<String> {
    let mut out = vec![
        image.manifest_desc.digest().to_string(),
        image.config_digest.clone(),
    ];
    out.extend(
        image
            .manifest
            .layers()
            .iter()
            .map(|l| l.digest().to_string()),
    );
    out
}

fn tagged_descriptor(image: &Image, name: &str) -> Descriptor {
    let mut desc = image.manifest_desc.clone();
    let mut ann: HashMap<String, String> = HashMap::new();
    ann.insert(REF_NAME.to_string(), name.to_string());
    // What `docker load` of an OCI tar and containerd read as the image name.
    ann.insert("io.containerd.image.name".to_string(), name.to_string());
    desc.set_annotations(Some(ann));
    desc.set_media_type(MediaType::from(image.manifest_desc.media_type().as_ref()));
    desc
}

fn index_json(descs: Vec<Descriptor>) -> anyhow::Result<Vec<u8>> {
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(descs)
        .build()
        .context("building index.json")?;
    to_canonical_json(&index)
}

/// Write `tags` as an OCI image layout: into directory `dest` (merging with
/// an existing layout's index), or as a tar when `dest` ends in `.tar`.
pub fn export_oci_layout(store: &Store, tags: &[String], dest: &Path) -> anyhow::Result<()> {
    let images = load_tagged(store, tags)?;
    let descs: Vec<Descriptor> = images
        .iter()
        .map(|(n, i)| tagged_descriptor(i, n))
        .collect();
    let mut blobs: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for (_, image) in &images {
        for b in image_blobs(image) {
            if seen.insert(b.clone()) {
                blobs.push(b);
            }
        }
    }
    if dest.extension().is_some_and(|e| e == "tar") {
        write_tar_atomically(dest, |tar| {
            append_bytes(tar, "oci-layout", IMAGE_LAYOUT)?;
            append_bytes(tar, "index.json", &index_json(descs)?)?;
            append_dir(tar, "blobs/")?;
            append_dir(tar, "blobs/sha256/")?;
            for digest in &blobs {
                let name = format!("blobs/sha256/{}", digest_hex(digest)?);
                let mut file = store.open_blob(digest)?;
                append_file(tar, &name, &mut file)?;
            }
            Ok(())
        })
        .with_context(|| format!("exporting OCI layout tar {}", dest.display()))
    } else {
        export_oci_dir(store, descs, &blobs, dest)
            .with_context(|| format!("exporting OCI layout to {}", dest.display()))
    }
}

fn export_oci_dir(
    store: &Store,
    descs: Vec<Descriptor>,
    blobs: &[String],
    dest: &Path,
) -> anyhow::Result<()> {
    let blob_dir = dest.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).with_context(|| format!("creating {}", blob_dir.display()))?;
    for digest in blobs {
        let target = blob_dir.join(digest_hex(digest)?);
        if target.is_file() {
            continue;
        }
        let mut tmp = readable_temp(&blob_dir)
            .with_context(|| format!("creating a temp file in {}", blob_dir.display()))?;
        io::copy(&mut store.open_blob(digest)?, &mut tmp)
            .with_context(|| format!("copying blob {digest}"))?;
        tmp.as_file()
            .sync_all()
            .context("syncing an exported blob")?;
        tmp.persist(&target)
            .map_err(|e| e.error)
            .with_context(|| format!("writing {}", target.display()))?;
    }
    fs::write(dest.join("oci-layout"), IMAGE_LAYOUT).context("writing oci-layout")?;
    let merged = merge_existing_index(dest, descs)?;
    let mut tmp = readable_temp(dest).context("creating temp index.json")?;
    tmp.write_all(&index_json(merged)?)
        .context("writing index.json")?;
    tmp.persist(dest.join("index.json"))
        .map_err(|e| e.error)
        .context("renaming index.json")?;
    Ok(())
}

/// Keep the entries of an existing `index.json` whose names we do not replace.
fn merge_existing_index(dest: &Path, descs: Vec<Descriptor>) -> anyhow::Result<Vec<Descriptor>> {
    let path = dest.join("index.json");
    let Ok(bytes) = fs::read(&path) else {
        return Ok(descs);
    };
    let old: ImageIndex =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let name = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned())
    };
    let new_names: HashSet<Option<String>> = descs.iter().map(name).collect();
    let mut out: Vec<Descriptor> = old
        .manifests()
        .iter()
        .filter(|d| name(d).is_none() || !new_names.contains(&name(d)))
        .cloned()
        .collect();
    out.extend(descs);
    Ok(out)
}

/// Write `tags` as a docker-archive tar (what `docker load` and
/// `skopeo docker-archive:` read). Layers are stored uncompressed, each
/// checked against its diff_id on the way out.
pub fn export_docker_archive(store: &Store, tags: &[String], dest: &Path) -> anyhow::Result<()> {
    let images = load_tagged(store, tags)?;
    // One manifest.json entry per image, with all of its tags.
    let mut order: Vec<String> = Vec::new();
    let mut by_config: HashMap<String, (Image, Vec<String>)> = HashMap::new();
    for (name, image) in images {
        let entry = by_config
            .entry(image.config_digest.clone())
            .or_insert_with(|| {
                order.push(image.config_digest.clone());
                (image, Vec::new())
            });
        if !name.contains('@') {
            entry.1.push(name);
        }
    }
    write_tar_atomically(dest, |tar| {
        let mut written = HashSet::new();
        let mut manifest = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for config_digest in &order {
            let (image, names) = &by_config[config_digest];
            let config_name = format!("{}.json", digest_hex(config_digest)?);
            append_bytes(tar, &config_name, &store.read_blob(config_digest)?)?;
            let layers = append_docker_layers(store, image, tar, &mut written)?;
            if let Some(top) = layers.last() {
                let top_id = top.trim_end_matches("/layer.tar").to_string();
                for name in names {
                    let (repo, tag) = split_tag(name);
                    repositories
                        .entry(repo)
                        .or_default()
                        .insert(tag, top_id.clone());
                }
            }
            manifest.push(json!({"Config": config_name, "RepoTags": names, "Layers": layers}));
        }
        append_bytes(tar, "manifest.json", &serde_json::to_vec(&manifest)?)?;
        append_bytes(tar, "repositories", &serde_json::to_vec(&repositories)?)?;
        Ok(())
    })
    .with_context(|| format!("writing docker archive {}", dest.display()))
}

fn split_tag(name: &str) -> (String, String) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (name.to_string(), "latest".to_string()),
    }
}

/// Append each layer as `<diff_id hex>/layer.tar`; returns the paths in order.
fn append_docker_layers<W: Write>(
    store: &Store,
    image: &Image,
    tar: &mut tar::Builder<W>,
    written: &mut HashSet<String>,
) -> anyhow::Result<Vec<String>> {
    let diff_ids = &image.config.rootfs.diff_ids;
    let layers = image.manifest.layers();
    anyhow::ensure!(
        diff_ids.len() == layers.len(),
        "image {} has {} layers but {} diff_ids",
        image.config_digest,
        layers.len(),
        diff_ids.len()
    );
    let mut paths = Vec::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let hex = digest_hex(diff_id)?;
        let path = format!("{hex}/layer.tar");
        if written.insert(hex.to_string()) {
            let mut plain = decompress_to_temp(store, layer.digest().as_ref(), diff_id)?;
            append_dir(tar, &format!("{hex}/"))?;
            append_file(tar, &path, plain.as_file_mut())?;
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Decompress a layer blob (gzip, zstd or plain, by magic bytes) to a temp
/// file, verifying it against `diff_id`.
fn decompress_to_temp(store: &Store, digest: &str, diff_id: &str) -> anyhow::Result<TempFile> {
    let mut blob = BufReader::new(store.open_blob(digest)?);
    let mut magic = [0u8; 4];
    let n = read_prefix(&mut blob, &mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(blob);
    let mut reader: Box<dyn Read> = match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(chained)),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            Box::new(zstd::stream::read::Decoder::new(chained).context("starting zstd decoder")?)
        }
        _ => Box::new(chained),
    };
    let mut tmp = store
        .temp_file("layer-")
        .context("creating a temp file for a layer")?;
    let mut hashing = HashingWriter {
        inner: tmp.as_file_mut(),
        hasher: Sha256::new(),
    };
    io::copy(&mut reader, &mut hashing).with_context(|| format!("decompressing layer {digest}"))?;
    let found = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    anyhow::ensure!(
        found == diff_id,
        "layer {digest} decompresses to {found}, but the config says {diff_id}"
    );
    tmp.as_file_mut()
        .rewind()
        .context("rewinding a layer temp file")?;
    Ok(tmp)
}

fn read_prefix(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

struct HashingWriter<'a> {
    inner: &'a mut File,
    hasher: Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_tar_atomically(
    dest: &Path,
    fill: impl FnOnce(&mut tar::Builder<io::BufWriter<&mut File>>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp =
        readable_temp(dir).with_context(|| format!("creating a temp file in {}", dir.display()))?;
    {
        let mut tar = tar::Builder::new(io::BufWriter::new(tmp.as_file_mut()));
        fill(&mut tar)?;
        let mut out = tar.into_inner().context("finishing the tar")?;
        out.flush().context("flushing the tar")?;
    }
    tmp.as_file().sync_all().context("syncing the tar")?;
    tmp.persist(dest)
        .map_err(|e| e.error)
        .context("renaming the tar into place")?;
    Ok(())
}

/// A temp file in `dir` that will be renamed into place: mode 0644, not
/// tempfile's 0600, so exports are readable like any other file.
fn readable_temp(dir: &Path) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(".rbuild-")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
}

fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> anyhow::Result<()> {
    let mut h = header(0, 0o755, tar::EntryType::Directory);
    tar.append_data(&mut h, name, io::empty())
        .with_context(|| format!("adding {name} to the tar"))
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let mut h = header(bytes.len() as u64, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)
        .with_context(|| format!("adding {name} to the tar"))
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    file: &mut File,
) -> anyhow::Result<()> {
    let len = file
        .metadata()
        .with_context(|| format!("stat for {name}"))?
        .len();
    let mut h = header(len, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, name, file)
        .with_context(|| format!("adding {name} to the tar"))
}
