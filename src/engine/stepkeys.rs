//! One pure key function per step kind: from a planned step and what the
//! driver resolved for it (the parent key, source identities, context
//! digests) to the step's [`KeyInputs`]. Keys are computed from definitions
//! and inputs only, never from results, so a remote cache can be asked for
//! a key before anything runs.

pub(super) use crate::oci::digest::sha256_hex;
use std::collections::BTreeMap;

use crate::context::FileDigest;
use crate::plan::{CopyStep, MountType, RunStep, Step};

use super::cachekey::KeyInputs;
use super::copydest::resolve_dest;

/// The fields every layer step's key starts with. The history text already
/// starts with the instruction's name (`RUN /bin/sh -c …`); only a step
/// without one gets the bare name.
fn layer_base(parent: &str, step: &Step) -> KeyInputs {
    let created_by = step.created_by.clone().unwrap_or_default();
    KeyInputs {
        parent: parent.to_string(),
        instruction: if created_by.is_empty() {
            step.name()
        } else {
            created_by
        },
        build_args: step.build_args.clone(),
        ..KeyInputs::default()
    }
}

/// A metadata-only step (ENV, LABEL, ARG, CMD, …): its name, history text
/// and build args chained onto the parent.
pub fn config_key(parent: &str, step: &Step) -> KeyInputs {
    let created_by = step.created_by.clone().unwrap_or_default();
    KeyInputs {
        parent: parent.to_string(),
        instruction: format!("{} {}", step.name(), created_by),
        build_args: step.build_args.clone(),
        ..KeyInputs::default()
    }
}

/// WORKDIR: the absolute directory it makes.
pub fn workdir_key(parent: &str, step: &Step, workdir: &str) -> KeyInputs {
    let mut inputs = layer_base(parent, step);
    inputs.extra.insert("workdir".into(), workdir.to_string());
    inputs
}

/// What a COPY/ADD reads, as the driver resolved it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReads {
    /// `--from`: the source's identity (stage key or image digest).
    pub from: Option<String>,
    /// ADD URLs: the `--checksum`, or the digest of what was fetched.
    pub urls: Vec<(String, String)>,
    /// Context sources: per-file digests and the selection digest.
    pub context: Option<(BTreeMap<String, FileDigest>, String)>,
}

/// COPY/ADD: destination (against the stage's working dir), heredoc
/// bodies, the flags the history text leaves out (`--exclude`,
/// `--unpack=false`), and the content of the sources. `--link` copies do
/// not depend on the layers below, so their parent is the constant `link`
/// ([`link_chain`] puts the parent back for the steps after), unless a
/// `--chown` name is looked up in the stage's `/etc/passwd`.
pub fn copy_key(parent: &str, step: &Step, c: &CopyStep, cwd: &str, reads: CopyReads) -> KeyInputs {
    let mut inputs = layer_base(parent, step);
    inputs
        .extra
        .insert("dest".into(), resolve_dest(cwd, &c.dest));
    if is_link(c) {
        inputs.parent = "link".into();
    }
    if !c.excludes.is_empty() {
        inputs.extra.insert("exclude".into(), c.excludes.join("\n"));
    }
    if c.is_add && !c.unpack {
        inputs.extra.insert("unpack".into(), "false".into());
    }
    for h in &c.contents {
        inputs
            .extra
            .insert(format!("heredoc {}", h.path), sha256_hex(h.data.as_bytes()));
    }
    if let Some(from) = reads.from {
        inputs.extra.insert("from".into(), from);
        return inputs;
    }
    for (url, identity) in reads.urls {
        inputs.extra.insert(format!("url {url}"), identity);
    }
    if let Some((files, digest)) = reads.context {
        inputs.files = files;
        inputs.extra.insert("sources".into(), digest);
    }
    inputs
}

/// Whether a COPY's layer is keyed without its parent: `--link`, and no
/// `--chown` name (a name resolves against the stage's users).
pub fn is_link(c: &CopyStep) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    c.link && c.chown.as_deref().is_none_or(|o| o.split(':').all(numeric))
}

/// The chain key after a `--link` COPY whose own key is `layer_key`: its
/// layer does not depend on the parent, but the steps after it do (with
/// the layer's key alone as theirs, a new base image changed nothing
/// after the COPY).
pub fn link_chain(parent: &str, layer_key: &str) -> String {
    let mut inputs = KeyInputs {
        parent: parent.to_string(),
        instruction: "link".into(),
        ..KeyInputs::default()
    };
    inputs.extra.insert("layer".into(), layer_key.to_string());
    inputs.key()
}

/// What a RUN's key needs from the build and the driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReads {
    /// The build's `--network` (used when the step has none).
    pub build_network: String,
    /// `--add-host` pairs.
    pub add_hosts: Vec<(String, String)>,
    /// The stage's working directory.
    pub workdir: String,
    /// Per mount, for bind mounts: the identity of what it brings in.
    pub mount_content: Vec<Option<String>>,
}

/// RUN: the instruction (with its build args) plus what changes what it
/// sees: network, hosts, working dir, mounts and the content of bind
/// mounts. Secrets and the SSH agent never enter it.
pub fn run_key(parent: &str, step: &Step, r: &RunStep, reads: RunReads) -> KeyInputs {
    let mut inputs = layer_base(parent, step);
    let network = match r.network {
        Some(n) => n.as_str().to_string(),
        None => reads.build_network,
    };
    inputs.extra.insert("network".into(), network);
    if !reads.add_hosts.is_empty() {
        let hosts: Vec<String> = reads
            .add_hosts
            .iter()
            .map(|(h, ip)| format!("{h}={ip}"))
            .collect();
        inputs.extra.insert("add-host".into(), hosts.join(","));
    }
    inputs.extra.insert("workdir".into(), reads.workdir);
    // The history text names a heredoc script by its path only
    // (`/dev/pipes/EOT`): its body must be in the key.
    for (i, h) in r.heredocs.iter().enumerate() {
        inputs.extra.insert(
            format!("heredoc {i} {}", h.name),
            sha256_hex(format!("{}\0{}\0{}", h.expand, h.chomp, h.content).as_bytes()),
        );
    }
    for (i, m) in r.mounts.iter().enumerate() {
        inputs.extra.insert(format!("mount {i}"), m.spec.clone());
        if m.mount.kind != MountType::Bind {
            continue;
        }
        if let Some(Some(what)) = reads.mount_content.get(i) {
            inputs
                .extra
                .insert(format!("mount {i} content"), what.clone());
        }
    }
    inputs
}

#[cfg(test)]
#[path = "stepkeys_tests.rs"]
mod tests;
