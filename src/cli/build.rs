//! `rbuild build`: flags → a [`BuildRequest`], run it, report.

use std::path::Path;

use anyhow::Context;

use crate::engine::options::{parse_build_args, parse_output, source_date_epoch};
use crate::engine::{self, BuildRequest};
use crate::image::ImageFormat;
use crate::layer::Compression;
use crate::progress::{self, Mode};
use crate::store::Store;

use super::{BuildArgs, CompressionArg, FormatArg, NetworkArg, ProgressMode, PullArg};
use crate::engine::PullPolicy;

pub fn run(root: &Path, args: BuildArgs) -> anyhow::Result<i32> {
    let env = |k: &str| std::env::var(k).ok();
    let build_args = parse_build_args(&args.build_args, env)?;
    // Refused before any work, not after the build when tagging.
    for tag in &args.tags {
        crate::store::check_reference(tag)?;
    }
    let source_date_epoch = source_date_epoch(&build_args, env)?;
    let outputs = args
        .output
        .iter()
        .map(|o| parse_output(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let req = BuildRequest {
        context: args.context.clone(),
        dockerfile: args.file.clone(),
        build_args,
        target: args.target.clone(),
        tags: args.tags.clone(),
        no_cache: args.no_cache,
        outputs,
        iidfile: args.iidfile.clone(),
        compression: compression(args.compression, args.compression_level)?,
        format: match args.format {
            FormatArg::Oci => ImageFormat::Oci,
            FormatArg::Docker => ImageFormat::Docker,
        },
        source_date_epoch,
        network: match args.network {
            NetworkArg::None => crate::sandbox::NetworkMode::None,
            NetworkArg::Host | NetworkArg::Default => crate::sandbox::NetworkMode::Host,
        },
        secrets: args
            .secrets
            .iter()
            .map(|s| engine::run::parse_secret(s))
            .collect::<anyhow::Result<_>>()?,
        ssh_sock: ssh_socket(args.ssh.as_deref())?,
        pull: match args.pull {
            PullArg::Missing | PullArg::False => PullPolicy::Missing,
            PullArg::Always | PullArg::True => PullPolicy::Always,
            PullArg::Never => PullPolicy::Never,
        },
        push: args.push,
        registry: super::registry::settings_with(&args.registry)?,
    };
    let store =
        Store::open(root).with_context(|| format!("opening the store {}", root.display()))?;
    let _lease = store.lease().context("taking the store's build lease")?;
    let reporter = progress::reporter(match args.progress {
        ProgressMode::Auto => Mode::Auto,
        ProgressMode::Tty => Mode::Tty,
        ProgressMode::Plain => Mode::Plain,
        ProgressMode::Json => Mode::Json,
    });
    let result = engine::build(&store, &req, reporter.clone());
    reporter.finish();
    let outcome = result?;
    let names = if outcome.tags.is_empty() {
        "(untagged)".to_string()
    } else {
        outcome.tags.join(", ")
    };
    println!(
        "{} {names} (image ID {})",
        outcome.manifest_digest, outcome.image_id
    );
    Ok(0)
}

/// `--ssh default` → $SSH_AUTH_SOCK; `--ssh default=/path` → that socket.
fn ssh_socket(spec: Option<&str>) -> anyhow::Result<Option<std::path::PathBuf>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let (id, path) = spec.split_once('=').unwrap_or((spec, ""));
    anyhow::ensure!(
        id == "default",
        "--ssh {spec}: only the `default` agent is supported"
    );
    if !path.is_empty() {
        return Ok(Some(path.into()));
    }
    let sock = std::env::var_os("SSH_AUTH_SOCK")
        .context("--ssh default needs SSH_AUTH_SOCK to name the agent's socket")?;
    Ok(Some(sock.into()))
}

fn compression(kind: CompressionArg, level: Option<i32>) -> anyhow::Result<Compression> {
    Ok(match kind {
        CompressionArg::None => Compression::None,
        CompressionArg::Gzip => {
            let level = level.unwrap_or(6);
            anyhow::ensure!(
                (0..=9).contains(&level),
                "--compression-level for gzip is 0-9, not {level}"
            );
            Compression::Gzip {
                level: level as u32,
            }
        }
        CompressionArg::Zstd => {
            let level = level.unwrap_or(3);
            anyhow::ensure!(
                (1..=22).contains(&level),
                "--compression-level for zstd is 1-22, not {level}"
            );
            Compression::Zstd { level }
        }
    })
}
