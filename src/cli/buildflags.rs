//! The build flags a CI step uses to pass things in and read results out
//! (`-q`, `--label`, `--metadata-file`, …), flattened into `BuildArgs` so
//! they live apart from the original flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Map, Value};

use crate::engine::options::{self, OutputSpec};
use crate::engine::BuildOutcome;

#[derive(Debug, Clone, Default, Args)]
pub struct ExtraBuildFlags {
    /// Print nothing but the image ID (with --push: the pushed digest) on stdout.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Set a label on the final image (KEY=VALUE); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Write the build's result as JSON (buildx's keys plus rbuild's per-step record).
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Add a line to RUN's /etc/hosts (HOST:IP); repeatable.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// Do not use the cache for these stages; repeatable.
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Add an annotation to the image manifest ([manifest:]KEY=VALUE); repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Build for this platform (os/arch[/variant]); one platform only.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Use an image for a FROM/--from name: NAME=docker-image://REF; repeatable.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// Export the build cache: type=registry,ref=REF|type=local,dest=DIR|type=inline[,mode=min|max][,ignore-error=true]; repeatable.
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Use a cache: REF, type=registry,ref=REF or type=local,src=DIR; repeatable, tried in order after the local store.
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
}

/// The engine's options from these flags, each value checked.
pub fn extra_options(f: &ExtraBuildFlags) -> anyhow::Result<options::ExtraOptions> {
    Ok(options::ExtraOptions {
        labels: options::parse_key_values("--label", &f.labels)?,
        dockerfile_name: None,
        add_hosts: f
            .add_hosts
            .iter()
            .map(|h| options::parse_add_host(h))
            .collect::<anyhow::Result<_>>()?,
        no_cache_filter: f.no_cache_filter.clone(),
        annotations: options::parse_annotations(&f.annotations)?,
        platform: parse_platform(f.platform.as_deref())?,
        image_contexts: options::parse_build_contexts(&f.build_contexts)?,
        context_names: f
            .build_contexts
            .iter()
            .filter_map(|c| c.split_once('=').map(|(n, _)| n.to_ascii_lowercase()))
            .collect(),
        cache_to: f
            .cache_to
            .iter()
            .map(|s| crate::cache::parse_cache_to(s))
            .collect::<Result<_, _>>()?,
        cache_from: f
            .cache_from
            .iter()
            .map(|s| crate::cache::parse_cache_from(s))
            .collect::<Result<_, _>>()?,
    })
}

/// `--platform`: one `os/arch[/variant]`, parsed as the planner does.
pub fn parse_platform(spec: Option<&str>) -> anyhow::Result<Option<crate::oci::Platform>> {
    let Some(spec) = spec else { return Ok(None) };
    anyhow::ensure!(
        !spec.contains(','),
        "--platform {spec}: rbuild builds one platform at a time\n\
         hint: run one build per platform"
    );
    let p = crate::oci::Platform::parse(spec).context("--platform")?;
    Ok(Some(p))
}

/// buildx's metadata keys for the result, plus `rbuild.steps` (each layer
/// step: cached or executed, seconds, layer digest) and `rbuild.pushed`.
pub fn metadata(outcome: &BuildOutcome) -> Value {
    let names: Vec<String> = outcome
        .tags
        .iter()
        .map(|t| {
            crate::oci::Reference::parse(t)
                .map(|r| r.to_string())
                .unwrap_or_else(|_| t.clone())
        })
        .collect();
    let desc = &outcome.manifest;
    // After --push, the digest the registry holds is the one a pipeline
    // deploys; it equals the local one unless the registry rewrote it.
    let digest = outcome
        .pushed
        .first()
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| outcome.manifest_digest.clone());
    let mut m = Map::new();
    m.insert(
        "containerimage.config.digest".into(),
        json!(outcome.image_id),
    );
    m.insert(
        "containerimage.descriptor".into(),
        json!({
            "mediaType": desc.media_type().to_string(),
            "digest": desc.digest().to_string(),
            "size": desc.size(),
        }),
    );
    m.insert("containerimage.digest".into(), json!(digest));
    if !names.is_empty() {
        m.insert("image.name".into(), json!(names.join(",")));
    }
    if !outcome.pushed.is_empty() {
        let pushed: Vec<Value> = outcome
            .pushed
            .iter()
            .map(|(name, digest)| json!({ "name": name, "digest": digest }))
            .collect();
        m.insert("rbuild.pushed".into(), Value::Array(pushed));
    }
    m.insert("rbuild.steps".into(), json!(outcome.steps));
    Value::Object(m)
}

/// Whether an output goes to stdout; at most one may, never with `-q`
/// (which prints there too), and never onto a terminal.
pub fn check_stdout_outputs(outputs: &[OutputSpec], quiet: bool) -> anyhow::Result<bool> {
    use std::io::IsTerminal;
    let n = outputs.iter().filter(|o| o.to_stdout()).count();
    anyhow::ensure!(
        n <= 1,
        "only one --output can write to stdout (dest=-), not {n}"
    );
    if n == 1 {
        anyhow::ensure!(
            !quiet,
            "-q prints the image ID on stdout, where --output dest=- writes its tar\n\
             hint: use --iidfile or --metadata-file for the ID"
        );
        anyhow::ensure!(
            !std::io::stdout().is_terminal(),
            "refusing to write a tar to a terminal (--output dest=-)\n\
             hint: redirect stdout to a file or a pipe"
        );
    }
    Ok(n == 1)
}

/// Write `bytes` to `path` atomically: a temp file beside it, fsynced, then
/// renamed over it, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
