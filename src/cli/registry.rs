//! Commands that talk to registries: pull, push, login, logout. Pull and
//! push work on the local store (`registry::local`).

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::render;
use super::{FormatArg, RegistryFlags};
use crate::image::ImageFormat;
use crate::oci::{Platform, Reference};
use crate::progress;
use crate::registry::{self, local, Settings};

pub fn logout(server: &str) -> Result<i32> {
    let settings = Settings::load()?;
    let name = registry::registry_name(server);
    if registry::logout(&name, &settings)? {
        eprintln!("Removed login credentials for {name}");
    } else {
        eprintln!("Not logged in to {name}");
    }
    Ok(0)
}

pub(crate) fn settings_with(flags: &RegistryFlags) -> Result<Settings> {
    let mut s = Settings::load()?;
    s.insecure_registries
        .extend(flags.insecure_registries.iter().cloned());
    for m in &flags.registry_mirrors {
        crate::registry::settings::check_mirror(m)?;
    }
    s.registry_mirrors
        .extend(flags.registry_mirrors.iter().cloned());
    let secs = |v: f64, flag: &str| {
        Duration::try_from_secs_f64(v)
            .map_err(|_| anyhow::anyhow!("--{flag} {v}: expected a number of seconds"))
    };
    if let Some(v) = flags.registry_connect_timeout {
        s.connect_timeout = secs(v, "registry-connect-timeout")?;
    }
    if let Some(v) = flags.registry_timeout {
        s.response_timeout = secs(v, "registry-timeout")?;
    }
    s.min_speed = flags.registry_min_speed.unwrap_or(s.min_speed);
    s.max_layers = flags.max_layers.unwrap_or(s.max_layers);
    s.max_layer_size = flags.max_layer_size.unwrap_or(s.max_layer_size);
    Ok(s)
}

/// Runs `transfer` as the one step of a `pull`/`push` command: blob
/// progress and retried attempts show through `render::transfer` (bars on
/// a terminal, else a line per finished blob, and `warning:` lines).
fn with_transfer<T>(
    verb: &'static str,
    name: String,
    settings: &mut Settings,
    transfer: impl FnOnce(&Settings, progress::Transfer) -> Result<T>,
) -> Result<T> {
    let reporter = render::transfer::reporter(verb);
    let step = progress::StepHandle::start(reporter.clone(), 1, name);
    settings.on_retry = Some(step.transfer());
    let res = transfer(settings, step.transfer());
    match &res {
        Ok(_) => step.done(),
        Err(e) => step.failed(format!("{e:#}")),
    }
    reporter.finish();
    res
}

pub fn pull_with(
    root: &Path,
    reference: &str,
    platform: Option<&str>,
    flags: &RegistryFlags,
) -> Result<i32> {
    let mut settings = settings_with(flags).map_err(super::exit::usage)?;
    let r = Reference::parse(reference).map_err(|e| super::exit::usage(e.into()))?;
    let platform = platform
        .map(Platform::parse)
        .transpose()
        .map_err(|e| super::exit::usage(e.into()))?;
    let store = super::images::open_store(root)
        .with_context(|| format!("opening the store {}", root.display()))?;
    // As a build does: a prune waits, so the blobs pulled are not removed
    // before the tag names them.
    let _lease = store.lease().context("taking the store's lease")?;
    let img = with_transfer("pulled", format!("pull {r}"), &mut settings, |s, t| {
        local::pull_into_store(&store, &r, s, platform, Some(t))
    })?;
    println!("{}", img.manifest_desc.digest());
    Ok(0)
}

pub fn push_with(
    root: &Path,
    image: &str,
    destination: Option<&str>,
    digestfile: Option<&Path>,
    format: FormatArg,
    flags: &RegistryFlags,
) -> Result<i32> {
    let mut settings = settings_with(flags).map_err(super::exit::usage)?;
    let store = super::images::open_store(root)
        .with_context(|| format!("opening the store {}", root.display()))?;
    let dest =
        Reference::parse(destination.unwrap_or(image)).map_err(|e| super::exit::usage(e.into()))?;
    let format = match format {
        FormatArg::Oci => ImageFormat::Oci,
        FormatArg::Docker => ImageFormat::Docker,
    };
    let report = with_transfer("pushed", format!("push {dest}"), &mut settings, |s, t| {
        local::push_from_store(&store, image, &dest, s, format, Vec::new(), Some(t))
    })?;
    if let Some(f) = digestfile {
        std::fs::write(f, &report.manifest_digest)
            .with_context(|| format!("writing digest file {}", f.display()))?;
    }
    println!("{}", report.manifest_digest);
    Ok(0)
}

pub fn login_with(
    server: &str,
    username: Option<&str>,
    password_stdin: bool,
    flags: &RegistryFlags,
) -> Result<i32> {
    let settings = settings_with(flags).map_err(super::exit::usage)?;
    let name = registry::registry_name(server);
    let Some(user) = username else {
        return Err(super::exit::usage(anyhow::anyhow!(
            "login to {name}: give a username with -u/--username"
        )));
    };
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        prompt_password()?
    };
    if password.is_empty() {
        bail!("login to {name}: the password is empty");
    }
    registry::login(&name, user, &password, &settings)
        .with_context(|| format!("logging in to {name} as {user}"))?;
    eprintln!("Login Succeeded");
    Ok(0)
}

/// Read a password from the terminal with echo off.
fn prompt_password() -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for a password: use --password-stdin")?;
    let old = tcgetattr(&tty).context("reading terminal settings")?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&tty, SetArg::TCSANOW, &quiet).context("turning off terminal echo")?;
    let mut out = &tty;
    let _ = out.write_all(b"Password: ");
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &old);
    let _ = out.write_all(b"\n");
    read.context("reading the password from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
