//! The strings BuildKit shows and records for a step: progress names like
//! `[stage-0 2/4] COPY . /app` and image-history `created_by` text
//! (`RUN |1 A=1 /bin/sh -c make # buildkit`), byte for byte, including Go's
//! `%q`/`%v` formatting of slices, maps and the healthcheck struct.

use std::time::Duration;

/// `[name i/n] ` prefix as BuildKit's `prefixCommand` builds it; `None` when
/// the stage counts no steps.
pub fn progress_prefix(
    stage_name: &str,
    index: usize,
    total: usize,
    onbuild: bool,
) -> Option<String> {
    if total == 0 {
        return None;
    }
    let width = 1 + (total as f64).log10().floor() as usize;
    let mut out = String::from("[");
    if !stage_name.is_empty() {
        out.push_str(stage_name);
        out.push(' ');
    }
    out.push_str(&format!("{index:>width$}/{total}] "));
    if onbuild {
        out.push_str("ONBUILD ");
    }
    Some(out)
}

/// BuildKit's `uppercaseCmd`: upper-case the first word only.
pub fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((k, rest)) => format!("{} {rest}", k.to_ascii_uppercase()),
        None => s.to_ascii_uppercase(),
    }
}

/// Go's `strconv.Quote` (the parser's implementation).
pub use crate::dockerfile::ast::go_quote;

/// Go `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_slice(v: &[String]) -> String {
    let parts: Vec<String> = v.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", parts.join(" "))
}

/// Go `%v` of a `[]string`: `[a b]`.
pub fn go_slice(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// Go `%q` of an int (a rune literal), as for the healthcheck's Retries.
fn go_quote_rune(n: i64) -> String {
    let Some(c) = u32::try_from(n).ok().and_then(char::from_u32) else {
        return format!("%!q(int={n})");
    };
    let body = match c {
        '\'' => "\\'".to_string(),
        '\\' => "\\\\".to_string(),
        '\n' => "\\n".to_string(),
        '\t' => "\\t".to_string(),
        '\r' => "\\r".to_string(),
        '\u{7}' => "\\a".to_string(),
        '\u{8}' => "\\b".to_string(),
        '\u{c}' => "\\f".to_string(),
        '\u{b}' => "\\v".to_string(),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("\\x{:02x}", c as u32),
        c => c.to_string(),
    };
    format!("'{body}'")
}

/// Go's `time.Duration.String()`.
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", trim_frac(ns as f64 / 1e3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_frac(ns as f64 / 1e6));
    }
    let h = ns / 3_600_000_000_000;
    let m = (ns / 60_000_000_000) % 60;
    let s_ns = ns % 60_000_000_000;
    let secs = trim_frac(s_ns as f64 / 1e9);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{secs}s"));
    out
}

fn trim_frac(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// The healthcheck as the image config holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: i64,
}

/// `HEALTHCHECK %q` of BuildKit's `*HealthcheckConfig`.
pub fn healthcheck_created_by(h: &Health) -> String {
    format!(
        "HEALTHCHECK &{{{} {} {} {} {} {}}}",
        go_quote_slice(&h.test),
        go_quote(&go_duration(h.interval)),
        go_quote(&go_duration(h.timeout)),
        go_quote(&go_duration(h.start_period)),
        go_quote(&go_duration(h.start_interval)),
        go_quote_rune(h.retries)
    )
}

/// `EXPOSE %v` of a `nat.PortSet` (keys sorted, Go map printing).
pub fn expose_created_by(ports: &[String]) -> String {
    let mut keys: Vec<&String> = ports.iter().collect();
    keys.sort();
    keys.dedup();
    let parts: Vec<String> = keys.iter().map(|k| format!("{k}:{{}}")).collect();
    format!("EXPOSE map[{}]", parts.join(" "))
}

/// `nat.ParsePortSpecs` for the port part: `80`, `80/udp`, `8000-8002/tcp`,
/// and `ip:host:container` forms (only the container port counts).
pub fn parse_port_spec(spec: &str) -> Result<Vec<String>, String> {
    let (start, end, proto) = parse_port_range(spec)?;
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// [`parse_port_spec`] without expanding the range: `(first, last, proto)`.
pub fn parse_port_range(spec: &str) -> Result<(u16, u16, String), String> {
    let (rawport, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    let container = rawport.rsplit(':').next().unwrap_or(rawport);
    let (start, end) = match container.split_once('-') {
        Some((a, b)) => (a, b),
        None => (container, container),
    };
    let start: u16 = start
        .parse()
        .map_err(|_| format!("invalid containerPort: {container}"))?;
    let end: u16 = end
        .parse()
        .map_err(|_| format!("invalid containerPort: {container}"))?;
    if end < start {
        return Err(format!(
            "invalid range specified for container port: {container}"
        ));
    }
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    Ok((start, end, proto))
}

/// BuildKit's `runCommandString`: `|N K=V … args…`.
pub fn run_command_string(args: &[String], build_args: &[(String, String)]) -> String {
    let mut parts = Vec::new();
    if !build_args.is_empty() {
        parts.push(format!("|{}", build_args.len()));
        parts.extend(build_args.iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.extend(args.iter().cloned());
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_prefix_pads_like_go() {
        assert_eq!(progress_prefix("", 2, 4, false).as_deref(), Some("[2/4] "));
        assert_eq!(
            progress_prefix("build", 3, 12, false).as_deref(),
            Some("[build  3/12] ")
        );
        assert_eq!(
            progress_prefix("b", 1, 2, true).as_deref(),
            Some("[b 1/2] ONBUILD ")
        );
        assert_eq!(progress_prefix("b", 1, 0, false), None);
    }

    #[test]
    fn go_formatting() {
        assert_eq!(
            go_quote_slice(&["/bin/sh".into(), "-c".into(), "echo \"hi\"\n".into()]),
            r#"["/bin/sh" "-c" "echo \"hi\"\n"]"#
        );
        assert_eq!(go_slice(&["/a".into(), "/b".into()]), "[/a /b]");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(
            expose_created_by(&["80/tcp".into(), "443/tcp".into(), "53/udp".into()]),
            "EXPOSE map[443/tcp:{} 53/udp:{} 80/tcp:{}]"
        );
        assert_eq!(
            parse_port_spec("8000-8001").unwrap(),
            vec!["8000/tcp", "8001/tcp"]
        );
        let h = Health {
            test: vec!["CMD-SHELL".into(), "curl -f http://localhost/".into()],
            interval: Duration::from_secs(30),
            retries: 3,
            ..Health::default()
        };
        assert_eq!(
            healthcheck_created_by(&h),
            r#"HEALTHCHECK &{["CMD-SHELL" "curl -f http://localhost/"] "30s" "0s" "0s" "0s" '\x03'}"#
        );
        assert_eq!(
            run_command_string(
                &["/bin/sh".into(), "-c".into(), "echo hi".into()],
                &[("A".into(), "1".into())]
            ),
            "|1 A=1 /bin/sh -c echo hi"
        );
    }
}
