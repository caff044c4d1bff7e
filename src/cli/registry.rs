//! Commands that talk to registries: pull, push, login, logout. Pull and
//! push work on the local store (`registry::local`).

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{FormatArg, RegistryFlags};
use crate::image::ImageFormat;
use crate::registry::{self, local, BlobProgress, BlobState, Platform, Reference, Settings};

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

/// Transfer progress on stderr: a bar per blob on a terminal (blobs move in
/// parallel), else one line per finished blob. Sizes only, never URLs.
pub(crate) fn progress_printer(verb: &'static str) -> registry::ProgressFn {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        return progress_bars(verb);
    }
    Arc::new(move |p: &BlobProgress| {
        if let Some(line) = blob_line(verb, p) {
            eprintln!("{line}");
        }
    })
}

/// The word for how a blob ended: `verb` ("pulled", "pushed") only when its
/// bytes really moved; `None` while they are still moving.
fn outcome_word(verb: &'static str, state: BlobState) -> Option<&'static str> {
    match state {
        BlobState::Moving => None,
        BlobState::Transferred => Some(verb),
        BlobState::Exists => Some("exists"),
        BlobState::Mounted => Some("mounted"),
        BlobState::Failed => Some("failed"),
    }
}

/// The one line a non-terminal gets per blob, at its final report.
fn blob_line(verb: &'static str, p: &BlobProgress) -> Option<String> {
    let word = outcome_word(verb, p.state)?;
    let short = p.digest.get(..19).unwrap_or(p.digest);
    Some(match p.state {
        BlobState::Failed => format!("{word} {short}"),
        _ => format!("{word} {short} {} bytes", p.total),
    })
}

fn progress_bars(verb: &'static str) -> registry::ProgressFn {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bars = std::sync::Mutex::new(std::collections::HashMap::<String, ProgressBar>::new());
    Arc::new(move |p: &BlobProgress| {
        let Ok(mut bars) = bars.lock() else { return };
        let bar = bars.entry(p.digest.to_string()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(p.total));
            b.set_style(style.clone());
            b.set_prefix(format!(
                "{verb} {}",
                p.digest.get(7..19).unwrap_or(p.digest)
            ));
            b
        });
        bar.set_length(p.total);
        bar.set_position(p.done);
        if let Some(word) = outcome_word(verb, p.state) {
            bar.set_prefix(format!(
                "{word} {}",
                p.digest.get(7..19).unwrap_or(p.digest)
            ));
            bar.finish();
        }
    })
}

/// Each retried attempt as a warning line, as it happens.
fn warn_on_retry() -> registry::settings::RetryHook {
    registry::settings::RetryHook(Some(Arc::new(|m: &str| eprintln!("warning: {m}"))))
}

pub fn pull_with(
    root: &Path,
    reference: &str,
    platform: Option<&str>,
    flags: &RegistryFlags,
) -> Result<i32> {
    let mut settings = settings_with(flags).map_err(super::exit::usage)?;
    settings.on_retry = warn_on_retry();
    let r = Reference::parse(reference).map_err(|e| super::exit::usage(e.into()))?;
    let platform = platform
        .map(Platform::parse)
        .transpose()
        .map_err(super::exit::usage)?;
    let store = super::images::open_store(root)
        .with_context(|| format!("opening the store {}", root.display()))?;
    let img = local::pull_into_store(
        &store,
        &r,
        &settings,
        platform,
        Some(progress_printer("pulled")),
    )?;
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
    settings.on_retry = warn_on_retry();
    let store = super::images::open_store(root)
        .with_context(|| format!("opening the store {}", root.display()))?;
    let dest =
        Reference::parse(destination.unwrap_or(image)).map_err(|e| super::exit::usage(e.into()))?;
    let format = match format {
        FormatArg::Oci => ImageFormat::Oci,
        FormatArg::Docker => ImageFormat::Docker,
    };
    let report = local::push_from_store(
        &store,
        image,
        &dest,
        &settings,
        format,
        Vec::new(),
        Some(progress_printer("pushed")),
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(done: u64, state: BlobState) -> Option<String> {
        let p = BlobProgress {
            digest: "sha256:0123456789abcdef0123",
            done,
            total: 10,
            state,
        };
        blob_line("pulled", &p)
    }

    #[test]
    fn one_line_per_blob_naming_what_happened() {
        // Bytes moving, even all of them, are not yet an outcome.
        assert_eq!(at(10, BlobState::Moving), None);
        assert_eq!(
            at(10, BlobState::Transferred).as_deref(),
            Some("pulled sha256:0123456789ab 10 bytes")
        );
        assert_eq!(
            at(10, BlobState::Exists).as_deref(),
            Some("exists sha256:0123456789ab 10 bytes")
        );
        assert_eq!(
            at(10, BlobState::Mounted).as_deref(),
            Some("mounted sha256:0123456789ab 10 bytes")
        );
        assert_eq!(
            at(0, BlobState::Failed).as_deref(),
            Some("failed sha256:0123456789ab")
        );
    }
}
