//! Cache keys and cache-miss explanations.
//!
//! A step's key is the SHA-256 of a schema tag and the step's named inputs:
//! its parent's key, its expanded instruction, the build args it used, a
//! digest of its file inputs and any other settings that change its result.
//! Inputs are kept by name (not hashed together up front) so that a miss can
//! say which input changed since the closest earlier entry. Host-dependent
//! data (mtimes, the umask, the invoking user) never enters the inputs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::FileDigest;

/// Bump when the encoding of inputs changes: old entries then simply miss.
pub const SCHEMA: &str = "rbuild-cache-v2";

/// How many changed file paths a miss explanation lists before summarising.
const MAX_LISTED_FILES: usize = 3;

/// The named inputs of one step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    /// The parent step's key, or the base image's manifest digest.
    pub parent: String,
    /// The instruction after expansion, e.g. `COPY --chmod=644 a.txt /app/`.
    pub instruction: String,
    /// The build args the step used, by name.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Source path → content digest, for steps that read files. Only the
    /// digest of this map enters the key; the map itself is kept in the
    /// cache record to name the files that changed. Digests are held as
    /// their 32 bytes (as `sha256:<hex>` strings they took ~14 MB more at
    /// 200,000 files) and are saved, keyed and shown as those strings.
    #[serde(default)]
    pub files: BTreeMap<String, FileDigest>,
    /// Other settings that change the result (platform, `--from` stage key,
    /// network mode, mounts), by name.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

impl KeyInputs {
    /// The cache key: lowercase hex SHA-256 over the schema and the inputs.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        field(&mut h, "schema", SCHEMA);
        field(&mut h, "parent", &self.parent);
        field(&mut h, "instruction", &self.instruction);
        for (k, v) in &self.build_args {
            field(&mut h, "build_arg", k);
            field(&mut h, "value", v);
        }
        field(&mut h, "files", &self.files_digest());
        for (k, v) in &self.extra {
            field(&mut h, "extra", k);
            field(&mut h, "value", v);
        }
        hex::encode(h.finalize())
    }

    /// Digest of the file map alone (path and content digest of each entry).
    pub fn files_digest(&self) -> String {
        let mut h = Sha256::new();
        let mut text = FileDigest::text_buf();
        for (path, digest) in &self.files {
            field(&mut h, "path", path);
            field(&mut h, "digest", digest.as_text(&mut text));
        }
        hex::encode(h.finalize())
    }
}

/// Length-prefixed so that no two different input lists hash alike.
fn field(h: &mut Sha256, name: &str, value: &str) {
    for part in [name, value] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
}

/// Why `now` missed the cache, compared with the closest earlier entry.
pub fn explain_miss(now: &KeyInputs, closest: Option<&KeyInputs>) -> String {
    let Some(old) = closest else {
        return "no cache entry for this step".to_string();
    };
    let mut reasons = Vec::new();
    if old.parent != now.parent {
        reasons.push("the parent layer changed".to_string());
    }
    if old.instruction != now.instruction {
        // The history text's BuildKit marker says nothing to a reader.
        let was = old.instruction.trim_end_matches(" # buildkit");
        reasons.push(format!("the instruction changed (was `{was}`)"));
    }
    reasons.extend(map_changes("build arg", &old.build_args, &now.build_args));
    reasons.extend(file_changes(&old.files, &now.files));
    reasons.extend(map_changes("setting", &old.extra, &now.extra));
    if reasons.is_empty() {
        // Same inputs but a different key: the entry predates this schema.
        return "the cache entry was written by an incompatible rbuild version".to_string();
    }
    reasons.join("; ")
}

fn map_changes(
    what: &str,
    old: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in now {
        match old.get(k) {
            None => out.push(format!("{what} {k} is new ({v:?})")),
            Some(o) if o != v => out.push(format!("{what} {k} changed ({o:?} → {v:?})")),
            Some(_) => {}
        }
    }
    for k in old.keys().filter(|k| !now.contains_key(*k)) {
        out.push(format!("{what} {k} is no longer set"));
    }
    out
}

fn file_changes(
    old: &BTreeMap<String, FileDigest>,
    now: &BTreeMap<String, FileDigest>,
) -> Vec<String> {
    let mut changed = Vec::new();
    for (path, digest) in now {
        match old.get(path) {
            None => changed.push(format!("file {path} was added")),
            Some(o) if o != digest => changed.push(format!(
                "file {path} changed ({} → {})",
                short(&o.to_string()),
                short(&digest.to_string())
            )),
            Some(_) => {}
        }
    }
    for path in old.keys().filter(|p| !now.contains_key(*p)) {
        changed.push(format!("file {path} was removed"));
    }
    if changed.len() > MAX_LISTED_FILES {
        let rest = changed.len() - MAX_LISTED_FILES;
        changed.truncate(MAX_LISTED_FILES);
        changed.push(format!("and {rest} more file changes"));
    }
    changed
}

/// `sha256:0123456789ab…` → `sha256:0123456789ab`: enough to tell digests apart.
fn short(digest: &str) -> &str {
    let keep = digest.find(':').map_or(0, |i| i + 1) + 12;
    &digest[..keep.min(digest.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs {
            parent: "p".into(),
            instruction: "COPY a /a".into(),
            build_args: [("V".to_string(), "1".to_string())].into(),
            files: [("a".to_string(), FileDigest([0xaa; 32]))].into(),
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn key_is_stable_and_sensitive_to_every_input() {
        let base = inputs();
        assert_eq!(base.key(), inputs().key());
        assert_eq!(base.key().len(), 64);
        let mut variants = Vec::new();
        let mut v = inputs();
        v.parent = "q".into();
        variants.push(v);
        let mut v = inputs();
        v.instruction = "COPY b /a".into();
        variants.push(v);
        let mut v = inputs();
        v.build_args.insert("V".into(), "2".into());
        variants.push(v);
        let mut v = inputs();
        v.files.insert("a".into(), FileDigest([0xbb; 32]));
        variants.push(v);
        let mut v = inputs();
        v.extra.insert("network".into(), "none".into());
        variants.push(v);
        for v in variants {
            assert_ne!(v.key(), base.key(), "{v:?}");
        }
    }

    #[test]
    fn fields_cannot_run_together() {
        let mut a = KeyInputs::default();
        a.build_args.insert("AB".into(), "C".into());
        let mut b = KeyInputs::default();
        b.build_args.insert("A".into(), "BC".into());
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn miss_without_entry_says_so() {
        assert_eq!(
            explain_miss(&inputs(), None),
            "no cache entry for this step"
        );
    }

    #[test]
    fn miss_names_the_changed_build_arg_and_file() {
        let old = inputs();
        let mut now = inputs();
        now.build_args.insert("V".into(), "2".into());
        now.files.insert("a".into(), FileDigest([0xcc; 32]));
        let why = explain_miss(&now, Some(&old));
        assert!(why.contains("build arg V changed (\"1\" → \"2\")"), "{why}");
        assert!(
            why.contains("file a changed (sha256:aaaaaaaaaaaa → sha256:cccccccccccc)"),
            "{why}"
        );
    }

    #[test]
    fn miss_names_parent_and_instruction_changes() {
        let old = inputs();
        let mut now = inputs();
        now.parent = "other".into();
        now.instruction = "COPY b /a".into();
        let why = explain_miss(&now, Some(&old));
        assert!(why.contains("the parent layer changed"), "{why}");
        assert!(
            why.contains("the instruction changed (was `COPY a /a`)"),
            "{why}"
        );
    }

    #[test]
    fn many_file_changes_are_summarised() {
        let old = KeyInputs::default();
        let mut now = KeyInputs::default();
        for i in 0..10 {
            now.files.insert(format!("f{i}"), FileDigest([i; 32]));
        }
        let why = explain_miss(&now, Some(&old));
        assert!(why.contains("and 7 more file changes"), "{why}");
    }
}
