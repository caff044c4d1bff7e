//! Plan-time checks and small helpers of the dispatcher: flag values the
//! engine would otherwise reject at build time (`--chmod`, `--checksum`,
//! `--network`, `--security`, STOPSIGNAL), path cleaning, heredoc summaries
//! and the size accounting of planned steps.

use crate::dockerfile::instructions as di;

use super::stage::problem;
use super::step::{Form, Health, Network, StepKind};
use super::{Problem, Span, Step};

/// `--chmod`: an octal mode of at most 07777.
pub(super) fn parse_chmod(v: &str, span: Span) -> Result<u32, Problem> {
    match u32::from_str_radix(v, 8) {
        Ok(n) if n <= 0o7777 => Ok(n),
        _ => Err(problem(
            span,
            format!(
                "invalid chmod parameter: '{v}'. it should be octal string and between 0 and 07777"
            ),
        )),
    }
}

/// ADD `--checksum`: what a download is compared with, so it must be the
/// form rbuild computes (`sha256:` and 64 lowercase hex digits).
pub(super) fn check_checksum(v: &str, span: Span) -> Result<(), Problem> {
    let ok = v.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        return Ok(());
    }
    Err(problem(
        span,
        format!("invalid checksum digest format: \"{v}\" (expected sha256: and 64 lowercase hex digits)"),
    ))
}

/// `RUN --network` (the parser already refused other literal values; a
/// value with `$` is not expanded, as in BuildKit, and so refused here).
pub(super) fn network(v: Option<&str>, span: Span) -> Result<Option<Network>, Problem> {
    Ok(match v {
        None => None,
        Some("default") => Some(Network::Default),
        Some("none") => Some(Network::None),
        Some("host") => Some(Network::Host),
        Some(other) => {
            return Err(problem(
                span,
                format!("unsupported --network={other} (default, none, host)"),
            ))
        }
    })
}

/// `RUN --security`: rbuild always sandboxes, so only `sandbox` is valid.
pub(super) fn security(v: Option<&str>, span: Span) -> Result<(), Problem> {
    match v {
        None | Some("sandbox") => Ok(()),
        Some(sec) => Err(problem(
            span,
            format!("--security={sec} is not supported: RUN always runs sandboxed"),
        )),
    }
}

pub(super) fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "UNUSED",
    ];
    NAMES.contains(&name)
        || name
            .strip_prefix("RTMIN")
            .or_else(|| name.strip_prefix("RTMAX"))
            .is_some_and(|r| {
                r.is_empty() || r.trim_start_matches(['+', '-']).parse::<u32>().is_ok()
            })
}

/// The argument form of a command line.
pub(super) fn form(c: &di::CommandLine) -> Form {
    if c.json {
        Form::Exec(c.args.clone())
    } else {
        Form::Shell(c.args.join(" "))
    }
}

/// HEALTHCHECK as the config holds it; the parser typed the durations.
pub(super) fn health(hc: &di::Healthcheck) -> Health {
    let di::Healthcheck::Cmd {
        command,
        interval,
        timeout,
        start_period,
        start_interval,
        retries,
    } = hc
    else {
        return Health {
            test: vec!["NONE".to_string()],
            ..Health::default()
        };
    };
    let test = match form(command) {
        Form::Shell(s) => vec!["CMD-SHELL".to_string(), s],
        Form::Exec(v) => std::iter::once("CMD".to_string()).chain(v).collect(),
    };
    Health {
        test,
        interval: interval.unwrap_or_default(),
        timeout: timeout.unwrap_or_default(),
        start_period: start_period.unwrap_or_default(),
        start_interval: start_interval.unwrap_or_default(),
        retries: retries.map_or(0, i64::from),
    }
}

/// Roughly the heap bytes a planned step holds: its history text (which
/// repeats its expanded words), progress name, heredoc bodies and build args.
pub(super) fn approx_size(s: &Step) -> usize {
    let pairs = |m: &mut dyn Iterator<Item = (&String, &String)>| {
        m.map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    let (heredocs, arg_env) = match &s.kind {
        StepKind::Run(r) => (
            r.heredocs.iter().map(|d| d.content.len()).sum(),
            pairs(&mut r.arg_env.iter().map(|(k, v)| (k, v))),
        ),
        StepKind::Copy(c) => (c.contents.iter().map(|d| d.data.len()).sum(), 0),
        _ => (0, 0),
    };
    2 * s.created_by.as_ref().map_or(0, String::len)
        + s.display_name.as_ref().map_or(0, String::len)
        + s.original.len()
        + heredocs
        + pairs(&mut s.build_args.iter())
        + arg_env
}

pub(super) fn is_heredoc_word(s: &str) -> bool {
    let s = s.trim_start_matches(|c: char| c.is_ascii_digit());
    s.starts_with("<<") && !s.contains(char::is_whitespace)
}

pub(super) fn summarize(doc: &str) -> String {
    let doc = doc.trim();
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// `path.Clean` for absolute paths.
pub(super) fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_is_octal_up_to_07777() {
        let at = Span::at(1, 1);
        assert_eq!(parse_chmod("0640", at).unwrap(), 0o640);
        assert_eq!(parse_chmod("7777", at).unwrap(), 0o7777);
        assert!(parse_chmod("abc", at)
            .unwrap_err()
            .message
            .contains("'abc'"));
        assert!(parse_chmod("10000", at).is_err());
        assert!(parse_chmod("", at).is_err());
    }

    #[test]
    fn checksum_must_be_a_sha256_digest() {
        let at = Span::at(1, 1);
        let good = format!("sha256:{}", "ab".repeat(32));
        assert!(check_checksum(&good, at).is_ok());
        assert!(check_checksum("sha256:ab", at).is_err());
        assert!(check_checksum(&good.to_uppercase(), at).is_err());
        assert!(check_checksum(&format!("md5:{}", "ab".repeat(32)), at).is_err());
    }

    #[test]
    fn network_and_security_values() {
        let at = Span::at(1, 1);
        assert_eq!(network(Some("none"), at).unwrap(), Some(Network::None));
        assert_eq!(network(None, at).unwrap(), None);
        assert!(network(Some("$NET"), at).is_err());
        assert!(security(Some("sandbox"), at).is_ok());
        assert!(security(Some("insecure"), at).is_err());
    }
}
