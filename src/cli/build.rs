//! `rbuild build`: flags → a [`BuildRequest`], run it, report.

use std::path::Path;

use anyhow::Context;

use super::render::{self, Mode};
use crate::engine::options::{parse_build_args, parse_output, source_date_epoch};
use crate::engine::{self, context_source, BuildRequest};
use crate::image::ImageFormat;
use crate::progress;
use crate::store::Store;

use super::{BuildArgs, FormatArg, NetworkArg, ProgressMode, PullArg};
use crate::engine::PullPolicy;

pub fn run(root: &Path, args: BuildArgs) -> anyhow::Result<i32> {
    // Every flag is checked before a context is fetched; a bad value is a
    // usage error.
    let flags = check_flags(&args).map_err(super::exit::usage)?;
    let store = super::images::open_store(root)
        .with_context(|| format!("opening the store {}", root.display()))?;
    let _lease = store.lease().context("taking the store's build lease")?;
    let reporter = render::reporter(match args.progress {
        _ if args.extra.quiet => Mode::Quiet,
        ProgressMode::Auto => Mode::Auto,
        ProgressMode::Tty => Mode::Tty,
        ProgressMode::Plain => Mode::Plain,
        // BuildKit's rawjson is its solver's status stream; rbuild's
        // equivalent machine-readable stream is its JSON events.
        ProgressMode::Json | ProgressMode::Rawjson => Mode::Json,
        ProgressMode::Quiet => Mode::Quiet,
    });
    // Held until the build is done: a fetched context lives in its temp dir.
    let prepared = match fetch_context(&store, &args, &reporter) {
        Ok(p) => p,
        Err(e) => {
            reporter.finish();
            return Err(e);
        }
    };
    let Flags {
        build_args,
        source_date_epoch,
        outputs,
        to_stdout,
        extra,
        compression,
        secrets,
        ssh,
        registry,
        limits,
    } = flags;
    let req = BuildRequest {
        context: prepared.dir.clone(),
        dockerfile: prepared.dockerfile.clone(),
        build_args,
        target: args.target.clone(),
        tags: args.tags.clone(),
        no_cache: args.no_cache,
        outputs,
        iidfile: args.iidfile.clone(),
        compression,
        format: match args.format {
            FormatArg::Oci => ImageFormat::Oci,
            FormatArg::Docker => ImageFormat::Docker,
        },
        source_date_epoch,
        network: match args.network {
            NetworkArg::None => crate::sandbox::NetworkMode::None,
            NetworkArg::Host | NetworkArg::Default => crate::sandbox::NetworkMode::Host,
        },
        secrets,
        ssh,
        pull: match args.pull {
            PullArg::Missing | PullArg::False => PullPolicy::Missing,
            PullArg::Always | PullArg::True => PullPolicy::Always,
            PullArg::Never => PullPolicy::Never,
        },
        push: args.push,
        registry,
        limits,
        extra: crate::engine::options::ExtraOptions {
            dockerfile_name: prepared.dockerfile_name.clone(),
            ..extra
        },
    };
    let result = engine::build(&store, &req, reporter.clone());
    reporter.finish();
    let outcome = result?;
    if let Some(path) = &args.extra.metadata_file {
        let text = serde_json::to_string_pretty(&super::buildflags::metadata(&outcome))?;
        super::buildflags::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing --metadata-file {}", path.display()))?;
    }
    if args.extra.quiet {
        match outcome.pushed.first() {
            Some((_, digest)) => println!("{digest}"),
            None => println!("{}", outcome.image_id),
        }
        return Ok(0);
    }
    let names = if outcome.tags.is_empty() {
        "(untagged)".to_string()
    } else {
        outcome.tags.join(", ")
    };
    let line = format!(
        "{} {names} (image ID {})",
        outcome.manifest_digest, outcome.image_id
    );
    // With `-o -` stdout carries the tar; the summary goes to stderr.
    if to_stdout {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(0)
}

/// The build's flags, each checked (a bad one is a usage error).
struct Flags {
    build_args: std::collections::BTreeMap<String, String>,
    source_date_epoch: Option<i64>,
    outputs: Vec<crate::engine::options::OutputSpec>,
    to_stdout: bool,
    extra: crate::engine::options::ExtraOptions,
    compression: crate::oci::Compression,
    secrets: std::collections::BTreeMap<String, engine::run::SecretSource>,
    ssh: std::collections::BTreeMap<String, std::path::PathBuf>,
    registry: crate::registry::Settings,
    limits: crate::sandbox::Limits,
}

fn check_flags(args: &BuildArgs) -> anyhow::Result<Flags> {
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
    let to_stdout = super::buildflags::check_stdout_outputs(&outputs, args.extra.quiet)?;
    Ok(Flags {
        build_args,
        source_date_epoch,
        outputs,
        to_stdout,
        extra: super::buildflags::extra_options(&args.extra)?,
        compression: args
            .compression
            .with_level(args.compression_level)
            .context("--compression-level")?,
        secrets: args
            .secrets
            .iter()
            .map(|s| engine::run::parse_secret(s))
            .collect::<anyhow::Result<_>>()?,
        ssh: ssh_sockets(&args.ssh)?,
        registry: super::registry::settings_with(&args.registry)?,
        limits: crate::engine::limits::parse_limits(&args.limits.flags())?,
    })
}

/// The context and Dockerfile; fetching one (stdin, tarball, git, URL) is a
/// progress step of its own, named without credentials.
fn fetch_context(
    store: &Store,
    args: &BuildArgs,
    reporter: &std::sync::Arc<dyn progress::Reporter>,
) -> anyhow::Result<context_source::PreparedContext> {
    let spec = context_source::classify(&args.context);
    let df_stdin = args.file.as_deref().is_some_and(|f| f.as_os_str() == "-");
    if spec == context_source::ContextSpec::Stdin || df_stdin {
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() {
            return Err(super::exit::usage(anyhow::anyhow!(
                "`-` reads the {} from stdin, which is a terminal\n\
                 hint: pipe it in: rbuild build - < context.tar (or -f - < Dockerfile)",
                if df_stdin { "Dockerfile" } else { "context" }
            )));
        }
    }
    let handle = (!matches!(spec, context_source::ContextSpec::Dir(_))).then(|| {
        let shown = context_source::redacted(&args.context.to_string_lossy());
        // Engine step ids count up from 1 and pulls down from u64::MAX.
        progress::StepHandle::start(
            reporter.clone(),
            u64::MAX / 2,
            format!("[internal] load build context {shown}"),
        )
    });
    let res = context_source::prepare(
        store,
        &args.context,
        args.file.as_deref(),
        &mut std::io::stdin().lock(),
    );
    match (handle, &res) {
        (Some(h), Ok(_)) => h.done(),
        (Some(h), Err(e)) => h.failed(format!("{e:#}")),
        (None, _) => {}
    }
    res
}

/// `--ssh ID[=SOCKET]`, repeatable: `ID` alone takes $SSH_AUTH_SOCK. Each
/// id is an agent socket for `RUN --mount=type=ssh,id=ID`. Key files (which
/// buildx loads into an agent of its own) are refused: rbuild has no agent.
fn ssh_sockets(
    specs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, std::path::PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = std::collections::BTreeMap::new();
    for spec in specs {
        let (id, path) = spec.split_once('=').unwrap_or((spec, ""));
        anyhow::ensure!(!id.is_empty(), "invalid --ssh {spec:?}: empty id");
        anyhow::ensure!(
            !path.contains(','),
            "--ssh {spec}: one agent socket per id\nhint: pass --ssh once per id"
        );
        let sock: std::path::PathBuf = if path.is_empty() {
            std::env::var_os("SSH_AUTH_SOCK")
                .with_context(|| {
                    format!("--ssh {id} needs SSH_AUTH_SOCK to name the agent's socket")
                })?
                .into()
        } else {
            path.into()
        };
        let meta = std::fs::metadata(&sock)
            .with_context(|| format!("--ssh {spec}: {}", sock.display()))?;
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "--ssh {spec}: {} is not an agent socket (key files are not supported)\n\
             hint: load the key into an agent (ssh-add) and pass the agent's socket",
            sock.display()
        );
        out.insert(id.to_string(), sock);
    }
    Ok(out)
}
