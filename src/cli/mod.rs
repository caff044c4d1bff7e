//! Command-line interface: argument parsing (clap), the default `build`
//! subcommand, the state directory, and turning results into exit codes.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod archive;
mod build;
mod buildflags;
mod check;
mod docs;
pub mod exit;
mod format;
mod images;
mod limits;
mod registry;
pub mod render;
mod strict;

/// rbuild: build OCI images from Dockerfiles, without a daemon.
#[derive(Debug, Parser)]
#[command(name = "rbuild", version, about, propagate_version = true,
          long_version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RBUILD_GIT_COMMIT"), ")"))]
pub struct Cli {
    /// Where rbuild keeps its state (an OCI image layout plus its own bookkeeping).
    /// Default: /var/lib/rbuild for root, $XDG_DATA_HOME/rbuild (or
    /// ~/.local/share/rbuild) otherwise.
    #[arg(long, global = true, env = "RBUILD_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of `BuildArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (the default subcommand).
    Build(Box<BuildArgs>),
    /// Parse and lint a Dockerfile without building; report every problem.
    Check(CheckArgs),
    /// Show the history (layers) of an image; for one this store built, where each layer came from (CACHE).
    History(ImageArg),
    /// List the images in the local store.
    Images(images::ImagesArgs),
    /// Show an image's manifest and config as JSON.
    Inspect(ImageArg),
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Remove images from the local store.
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Drop unreferenced blobs, layers and cache entries.
    Prune {
        /// Drop the build cache too.
        #[arg(long)]
        all: bool,
    },
    /// Write images as one docker-archive (or OCI-archive) tar; stdout without -o.
    Save {
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Archive format.
        #[arg(long, value_enum, default_value_t = FormatArg::Docker)]
        format: FormatArg,
    },
    /// Load images from a docker-archive or OCI-archive tar (stdin without -i).
    Load {
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Print nothing.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Pull an image from a registry into the local store.
    Pull {
        reference: String,
        /// Platform to pull from a multi-platform image (os/arch[/variant]).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Push an image from the local store to a registry.
    Push {
        image: String,
        destination: Option<String>,
        /// Write the pushed manifest digest to this file.
        #[arg(long, value_name = "FILE")]
        digestfile: Option<PathBuf>,
        /// Media types of the pushed manifest and config.
        #[arg(long, value_enum, default_value_t = FormatArg::Oci)]
        format: FormatArg,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Store credentials for a registry.
    Login {
        server: String,
        /// Username.
        #[arg(short = 'u', long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        registry: RegistryFlags,
    },
    /// Remove stored credentials for a registry.
    Logout { server: String },
    /// Show the version, the git commit it was built from and its features.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for rbuild and each command into DIR.
    #[command(name = "__man", hide = true)]
    Man { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct ImageArg {
    pub image: String,
    /// history: don't truncate CREATED BY.
    #[arg(long)]
    pub no_trunc: bool,
    /// history: print sizes and dates in human-readable form (`-H=false` for raw).
    #[arg(short = 'H', long, default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub human: bool,
    /// history: `table` (default) or `json` (one object per line); inspect:
    /// `json` or a Go template ({{.Id}}, {{json .Config}}, {{.Config.Env}}).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

/// Flags shared by the commands that talk to registries.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryFlags {
    /// Allow plain HTTP or unverified TLS for this registry (HOST[:PORT]); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Try this mirror before Docker Hub when pulling; repeatable.
    #[arg(long = "registry-mirror", value_name = "HOST[:PORT]")]
    pub registry_mirrors: Vec<String>,
    /// Seconds to wait for a registry to connect (default 30).
    #[arg(long, value_name = "SECS", env = "RBUILD_REGISTRY_CONNECT_TIMEOUT")]
    pub registry_connect_timeout: Option<f64>,
    /// Seconds to wait for a registry's answer, and for each read of a body (default 60; 0: none).
    #[arg(long, value_name = "SECS", env = "RBUILD_REGISTRY_TIMEOUT")]
    pub registry_timeout: Option<f64>,
    /// Fail a transfer slower than this many bytes/s over the timeout (default 1K; 0: off).
    #[arg(long, value_name = "BYTES", env = "RBUILD_REGISTRY_MIN_SPEED",
          value_parser = crate::registry::settings::parse_size)]
    pub registry_min_speed: Option<u64>,
    /// Refuse images with more layers than this (default 1000).
    #[arg(long, value_name = "N", env = "RBUILD_MAX_LAYERS")]
    pub max_layers: Option<usize>,
    /// Refuse a layer larger than this, compressed or expanded (default 32G).
    #[arg(long, value_name = "SIZE", env = "RBUILD_MAX_LAYER_SIZE",
          value_parser = crate::registry::settings::parse_size)]
    pub max_layer_size: Option<u64>,
}

/// How progress is shown while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Json,
    /// Nothing (as -q, but the result line still prints).
    Quiet,
    /// Same as json (BuildKit's raw status stream has no rbuild equivalent).
    Rawjson,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name and optionally a tag (NAME:TAG); repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
    pub tags: Vec<String>,
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile; `-`: stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Set a build-time variable (KEY=VALUE, or KEY to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// Build only up to this stage.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Do not use the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Progress output.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Push the image to its registry after building.
    #[arg(long)]
    pub push: bool,
    /// Output: type=oci|docker|local|tar,dest=PATH, a bare DIR (local), or
    /// `-` (a tar of the files on stdout); repeatable.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub output: Vec<String>,
    /// Write the image ID (config digest) to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Layer compression.
    #[arg(long, value_enum, default_value_t = crate::oci::Compression::GZIP)]
    pub compression: crate::oci::Compression,
    /// Compression level (gzip 0-9, default 6; zstd 1-22, default 3).
    #[arg(long, value_name = "N")]
    pub compression_level: Option<i32>,
    /// Manifest and config media types of the image.
    #[arg(long, value_enum, default_value_t = FormatArg::Oci)]
    pub format: FormatArg,
    /// Default network of RUN steps.
    #[arg(long, value_enum, default_value_t = NetworkArg::Host)]
    pub network: NetworkArg,
    /// A secret for `RUN --mount=type=secret`: id=ID[,src=FILE|,env=VAR]; repeatable.
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// Forward an SSH agent for `RUN --mount=type=ssh,id=ID` (ID alone: $SSH_AUTH_SOCK); repeatable.
    #[arg(long, value_name = "ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// When to fetch FROM images: missing (default), always, never.
    #[arg(long, value_enum, default_value_t = PullArg::Missing, num_args = 0..=1,
          require_equals = true, default_missing_value = "always")]
    pub pull: PullArg,
    #[command(flatten)]
    pub registry: RegistryFlags,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
    #[command(flatten)]
    pub extra: buildflags::ExtraBuildFlags,
    /// The build context: a directory (default: the current one), a tarball,
    /// `-` (a tar or a Dockerfile on stdin), a git URL (`URL.git#REF:DIR`,
    /// `git@…`, `file://…`) or an http(s) URL to a tarball or Dockerfile.
    #[arg(value_name = "CONTEXT", default_value = ".")]
    pub context: PathBuf,
}

/// `--compression` names the codec; `--compression-level` then sets the
/// level (`Compression::with_level`), so clap parses at the default level.
impl ValueEnum for crate::oci::Compression {
    fn value_variants<'a>() -> &'a [Self] {
        use crate::oci::Compression;
        &[Compression::GZIP, Compression::ZSTD, Compression::None]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullArg {
    Missing,
    Always,
    Never,
    /// Same as always (docker's `--pull`).
    True,
    /// Same as missing.
    False,
}

/// `--network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    Host,
    None,
    /// Same as host (a private network with outbound access would need a
    /// user-mode network stack; see docs/cli.md).
    Default,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Oci,
    Docker,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Set a build-time variable, as for build (affects UndefinedVar checks).
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// Check only the stages this target needs.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// The build context directory.
    #[arg(value_name = "CONTEXT", default_value = ".")]
    pub context: PathBuf,
}

const SUBCOMMANDS: &[&str] = &[
    "build",
    "check",
    "history",
    "images",
    "inspect",
    "tag",
    "rmi",
    "prune",
    "save",
    "pull",
    "push",
    "login",
    "logout",
    "help",
    "version",
    "load",
    "completion",
    "__man",
];

/// Insert `build` when no subcommand is named, so `rbuild -t app:v1 .` means
/// `rbuild build -t app:v1 .`.
///
/// Global `--root DIR` / `--root=DIR` may come first; `-h`, `--help` and
/// `-V`, `--version` alone keep their top-level meaning.
pub fn with_default_subcommand(args: Vec<OsString>) -> Vec<OsString> {
    let i = skip_global_root(&args);
    if let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        if SUBCOMMANDS.contains(&arg) || matches!(arg, "-h" | "--help" | "-V" | "--version") {
            return args;
        }
    }
    if i >= args.len() && args.len() > 1 {
        // Only global flags: let clap say a subcommand is missing.
        return args;
    }
    if args.len() <= 1 {
        return args;
    }
    let mut out = args;
    let at = i.min(out.len());
    out.insert(at, OsString::from("build"));
    out
}

/// The index of the first argument after the global `--root DIR` /
/// `--root=DIR` flags (which may come before the subcommand).
fn skip_global_root(args: &[OsString]) -> usize {
    let mut i = 1;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        match arg {
            "--root" => i += 2,
            _ if arg.starts_with("--root=") => i += 1,
            _ => break,
        }
    }
    i
}

/// The state directory: `--root`/`RBUILD_ROOT`, else the per-user default.
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/rbuild");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("rbuild");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/"));
    PathBuf::from(home).join(".local/share/rbuild")
}

impl Cli {
    /// The state directory this invocation uses.
    pub fn root_dir(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(default_root)
    }
}

/// Parse the process arguments and run the command; returns the exit code.
pub fn main() -> i32 {
    // Descriptors inherited from the caller must reach no child we start.
    crate::sandbox::cloexec_inherited_fds();
    // The RUN sandbox re-executes this binary as its setup process.
    if std::env::args_os().nth(1).as_deref() == Some(crate::sandbox::INIT_ARG.as_ref()) {
        crate::sandbox::init_main();
    }
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let in_userns_child = args.get(1).and_then(|a| a.to_str()) == Some(crate::sandbox::USERNS_ARG);
    if in_userns_child {
        args.remove(1);
    }
    if let Some(msg) = strict::unknown_first_word(&args, SUBCOMMANDS) {
        eprintln!("{msg}");
        return 2;
    }
    let cli = Cli::parse_from(with_default_subcommand(args.clone()));
    if !in_userns_child && needs_userns(&cli.command) && !nix::unistd::geteuid().is_root() {
        if let Some(code) = reexec_in_userns(&cli, &args) {
            return code;
        }
    }
    if matches!(cli.command, Command::Build(_)) {
        // A build stops at a step boundary and cleans up on Ctrl-C.
        crate::engine::cancel::install();
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}

/// Commands that open the store: as an ordinary user they run inside the
/// rbuild user namespace, because RUN steps and unpacked layers leave files
/// owned by subuids that only "root" in there can read and delete (and any
/// of them may sweep a dead build's temp dirs).
fn needs_userns(command: &Command) -> bool {
    !matches!(
        command,
        Command::Check(_)
            | Command::Login { .. }
            | Command::Logout { .. }
            | Command::Version
            | Command::Completion { .. }
            | Command::Man { .. }
    )
}

/// Runs this invocation again inside a user namespace with the user's full
/// subuid/subgid mapping and returns its exit code; `None` (after one
/// warning for builds) when there is no range or the mapping fails, so the
/// command runs here with single-id RUN sandboxes.
fn reexec_in_userns(cli: &Cli, args: &[OsString]) -> Option<i32> {
    // Inside, euid is 0: hand over the state dir chosen for this user.
    let env = [("RBUILD_ROOT", cli.root_dir().into_os_string())];
    let exe = std::path::Path::new("/proc/self/exe");
    match crate::sandbox::run_in_userns(exe, args.get(1..).unwrap_or_default(), &env) {
        Ok(status) => Some(crate::sandbox::exit_code(status)),
        Err(err) => {
            if matches!(cli.command, Command::Build(_)) {
                if let Some(w) = crate::sandbox::single_id_warning(&format!("{err:#}")) {
                    eprintln!("warning: {w}");
                }
            }
            None
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let root = cli.root_dir();
    match cli.command {
        Command::Build(args) => build::run(&root, *args),
        Command::Check(args) => check::run(args),
        Command::History(args) => images::history(&root, args),
        Command::Images(args) => images::images(&root, &args),
        Command::Inspect(args) => images::inspect(&root, args),
        Command::Tag { source, target } => images::tag(&root, &source, &target),
        Command::Rmi { images } => images::rmi(&root, &images),
        Command::Prune { all } => images::prune(&root, all),
        Command::Save {
            images,
            output,
            format,
        } => archive::save(&root, &images, output.as_deref(), format),
        Command::Load { input, quiet } => archive::load(&root, input.as_deref(), quiet),
        Command::Pull {
            reference,
            platform,
            registry: flags,
        } => registry::pull_with(&root, &reference, platform.as_deref(), &flags),
        Command::Push {
            image,
            destination,
            digestfile,
            format,
            registry: flags,
        } => registry::push_with(
            &root,
            &image,
            destination.as_deref(),
            digestfile.as_deref(),
            format,
            &flags,
        ),
        Command::Login {
            server,
            username,
            password_stdin,
            registry: flags,
        } => registry::login_with(&server, username.as_deref(), password_stdin, &flags),
        Command::Logout { server } => registry::logout(&server),
        Command::Completion { shell } => docs::completion(shell),
        Command::Man { dir } => docs::man_pages(&dir),
        Command::Version => {
            print!("{}", strict::version_text());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn build_is_the_default_subcommand() {
        assert_eq!(
            with_default_subcommand(os(&["rbuild", "-t", "app:v1", "."])),
            os(&["rbuild", "build", "-t", "app:v1", "."])
        );
        assert_eq!(
            with_default_subcommand(os(&["rbuild", "--root", "/x", "-t", "a", "."])),
            os(&["rbuild", "--root", "/x", "build", "-t", "a", "."])
        );
        assert_eq!(
            with_default_subcommand(os(&["rbuild", "check", "."])),
            os(&["rbuild", "check", "."])
        );
        assert_eq!(
            with_default_subcommand(os(&["rbuild", "--help"])),
            os(&["rbuild", "--help"])
        );
    }

    #[test]
    fn only_store_commands_enter_the_user_namespace() {
        let parse = |v: &[&str]| Cli::try_parse_from(with_default_subcommand(os(v))).unwrap();
        assert!(needs_userns(&parse(&["rbuild", "-t", "a", "."]).command));
        assert!(needs_userns(&parse(&["rbuild", "prune"]).command));
        assert!(needs_userns(&parse(&["rbuild", "rmi", "a"]).command));
        assert!(needs_userns(&parse(&["rbuild", "images"]).command));
        assert!(!needs_userns(&parse(&["rbuild", "check", "."]).command));
        assert!(!needs_userns(&parse(&["rbuild", "logout", "r.io"]).command));
    }

    #[test]
    fn default_build_parses_like_explicit_build() {
        let cli = Cli::try_parse_from(with_default_subcommand(os(&[
            "rbuild",
            "-t",
            "app:v1",
            "-t",
            "app:latest",
            "--build-arg",
            "A=1",
            ".",
        ])))
        .expect("parses");
        match cli.command {
            Command::Build(b) => {
                assert_eq!(b.tags, vec!["app:v1", "app:latest"]);
                assert_eq!(b.build_args, vec!["A=1"]);
                assert_eq!(b.context, PathBuf::from("."));
            }
            other => panic!("expected build, got {other:?}"),
        }
    }
}
