//! Build records: where each layer of a built image came from (executed,
//! a hit in this store, a `--cache-from` cache), one JSON file per
//! manifest digest under `rbuild/builds/`, for `rbuild history`.
//!
//! The image itself cannot carry this: a build served from a cache must
//! write the same config and manifest as the build that filled it. So the
//! story lives beside the image, in the store that built it, and is the
//! latest build's: a later build producing the same manifest replaces it
//! (atomic rename; of two concurrent builds the last writer wins, and a
//! reader sees one whole file or the other). Prune drops a record once its
//! manifest blob is gone.
//!
//! A record is only bookkeeping: one that is too large or does not parse is
//! reported as corrupt and shown as unknown, never an error of the command.

use std::fs;
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{blob::digest_hex, secure, Store, StoreError};

/// The record's schema: `"v"` in the file. Any other value reads as corrupt.
pub const BUILD_RECORD_SCHEMA: u32 = 1;

/// Larger files are refused unread (a record holds one short entry per
/// layer: 1 MiB is thousands of layers).
pub const BUILD_RECORD_MAX_BYTES: u64 = 1 << 20;

/// The story of one built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub v: u32,
    /// The manifest digest the record is filed under.
    pub manifest: String,
    /// When the build that wrote the record finished (RFC 3339).
    pub built: String,
    /// Every layer of the manifest, in manifest order.
    pub layers: Vec<LayerStory>,
}

/// Where one layer came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStory {
    pub digest: String,
    pub diff_id: String,
    /// The history entry's `created_by` (empty for a base image's layer
    /// whose history says nothing).
    pub created_by: String,
    #[serde(flatten)]
    pub origin: LayerOrigin,
}

/// How a build got a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum LayerOrigin {
    /// The step ran; `reason` is the cache miss reason progress showed.
    Executed { reason: String },
    /// A cache record of this store; `built` is when that record was
    /// written (the build that made the layer), if known.
    Local {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        built: Option<String>,
    },
    /// A `--cache-from` cache: its registry reference or directory.
    Remote { from: String },
    /// The stage's base image (`FROM`), as the Dockerfile named it.
    Base { from: String },
}

/// What [`Store::build_record`] found.
#[derive(Debug)]
pub enum BuildRecordRead {
    /// No record: the image was pulled, loaded, or built before records.
    Absent,
    Found(Box<BuildRecord>),
    /// A record is there but cannot be used; it names the file.
    Corrupt(StoreError),
}

impl Store {
    fn builds_dir(&self) -> PathBuf {
        self.private("builds")
    }

    fn build_record_path(&self, manifest: &str) -> anyhow::Result<PathBuf> {
        let hex = digest_hex(manifest)?;
        Ok(self.builds_dir().join(format!("{hex}.json")))
    }

    /// File `record` under its manifest digest, replacing an older one
    /// atomically.
    pub fn put_build_record(&self, record: &BuildRecord) -> anyhow::Result<()> {
        let path = self.build_record_path(&record.manifest)?;
        secure::make_private_dir(&self.builds_dir())?;
        let bytes = serde_json::to_vec(record).context("encoding a build record")?;
        self.atomic_write(&path, &bytes)
            .with_context(|| format!("writing the build record {}", path.display()))
    }

    /// The record of the image with this manifest digest. A record that
    /// cannot be read (I/O errors included) is [`BuildRecordRead::Corrupt`];
    /// only a malformed digest is an error.
    pub fn build_record(&self, manifest: &str) -> anyhow::Result<BuildRecordRead> {
        let path = self.build_record_path(manifest)?;
        let corrupt = |why: String| {
            Ok(BuildRecordRead::Corrupt(StoreError::Corrupt {
                what: "build record",
                path: path.clone(),
                why,
                hint: "history shows `?` for its layers; the next build of the \
                       image rewrites it, or delete the file",
            }))
        };
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(BuildRecordRead::Absent)
            }
            Err(e) => return corrupt(format!("opening it: {e}")),
        };
        let mut bytes = Vec::new();
        if let Err(e) = file
            .take(BUILD_RECORD_MAX_BYTES + 1)
            .read_to_end(&mut bytes)
        {
            return corrupt(format!("reading it: {e}"));
        }
        if bytes.len() as u64 > BUILD_RECORD_MAX_BYTES {
            return corrupt(format!("it is larger than {BUILD_RECORD_MAX_BYTES} bytes"));
        }
        let record = match serde_json::from_slice::<BuildRecord>(&bytes) {
            Ok(r) => r,
            Err(e) => return corrupt(e.to_string()),
        };
        if record.v != BUILD_RECORD_SCHEMA {
            return corrupt(format!(
                "schema version {} (this rbuild reads {BUILD_RECORD_SCHEMA})",
                record.v
            ));
        }
        if record.manifest != manifest {
            return corrupt(format!("it holds the record of {}", record.manifest));
        }
        Ok(BuildRecordRead::Found(Box::new(record)))
    }

    /// Remove the records whose manifest blob is gone (and files that are
    /// no record's name); returns how many. Called by prune after its sweep.
    pub(super) fn sweep_build_records(&self) -> anyhow::Result<usize> {
        let mut removed = 0;
        for path in super::fsutil::list_dir(&self.builds_dir())? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let keep = name
                .strip_suffix(".json")
                .map(|hex| format!("sha256:{hex}"))
                .is_some_and(|d| digest_hex(&d).is_ok() && self.has_blob(&d));
            if keep {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(manifest: &str) -> BuildRecord {
        BuildRecord {
            v: BUILD_RECORD_SCHEMA,
            manifest: manifest.to_string(),
            built: "2026-01-01T00:00:00Z".into(),
            layers: vec![
                LayerStory {
                    digest: "sha256:aa".into(),
                    diff_id: "sha256:bb".into(),
                    created_by: "COPY a /a # buildkit".into(),
                    origin: LayerOrigin::Executed {
                        reason: "no earlier build".into(),
                    },
                },
                LayerStory {
                    digest: "sha256:cc".into(),
                    diff_id: "sha256:dd".into(),
                    created_by: "RUN x".into(),
                    origin: LayerOrigin::Remote {
                        from: "127.0.0.1:5000/app:cache".into(),
                    },
                },
            ],
        }
    }

    #[test]
    fn a_record_round_trips_and_its_json_is_flat() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let blob = store.put_blob(b"{}").unwrap();
        assert!(matches!(
            store.build_record(&blob.digest).unwrap(),
            BuildRecordRead::Absent
        ));
        let rec = record(&blob.digest);
        store.put_build_record(&rec).unwrap();
        match store.build_record(&blob.digest).unwrap() {
            BuildRecordRead::Found(r) => assert_eq!(*r, rec),
            other => panic!("{other:?}"),
        }
        let text = fs::read_to_string(store.build_record_path(&blob.digest).unwrap()).unwrap();
        assert!(text.starts_with(r#"{"v":1,"#), "{text}");
        assert!(
            text.contains(r#""source":"remote","from":"127.0.0.1:5000/app:cache""#),
            "{text}"
        );
    }

    #[test]
    fn garbage_an_oversized_file_and_another_schema_read_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let digest = store.put_blob(b"{}").unwrap().digest;
        store.put_build_record(&record(&digest)).unwrap();
        let path = store.build_record_path(&digest).unwrap();
        let why = |s: &Store| match s.build_record(&digest).unwrap() {
            BuildRecordRead::Corrupt(e) => e.to_string(),
            other => panic!("not corrupt: {other:?}"),
        };
        fs::write(&path, b"\x00garbage").unwrap();
        let text = why(&store);
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("\nhint: "), "{text}");
        let mut big = serde_json::to_vec(&record(&digest)).unwrap();
        big.resize(BUILD_RECORD_MAX_BYTES as usize + 10, b' ');
        fs::write(&path, &big).unwrap();
        assert!(why(&store).contains("larger than"));
        let mut other = record(&digest);
        other.v = 2;
        fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert!(why(&store).contains("schema version 2"));
        let moved = record("sha256:00");
        fs::write(&path, serde_json::to_vec(&moved).unwrap()).unwrap();
        assert!(why(&store).contains("the record of sha256:00"));
    }

    #[test]
    fn the_sweep_keeps_records_whose_manifest_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let kept = store.put_blob(b"{}").unwrap().digest;
        let gone = format!("sha256:{}", "1".repeat(64));
        store.put_build_record(&record(&kept)).unwrap();
        store.put_build_record(&record(&gone)).unwrap();
        fs::write(store.builds_dir().join("stray"), b"x").unwrap();
        assert_eq!(store.sweep_build_records().unwrap(), 2);
        assert!(store.build_record_path(&kept).unwrap().is_file());
        assert!(!store.build_record_path(&gone).unwrap().exists());
        assert_eq!(store.sweep_build_records().unwrap(), 0);
    }
}
