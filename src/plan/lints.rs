//! Lint rules BuildKit applies while converting a Dockerfile that need
//! only names and values: platform flags, secrets in ARG/ENV names,
//! relative WORKDIRs, and the "did you mean" suggestion.

use std::collections::BTreeMap;

use super::expand;
use super::Span;
use super::{Finding, Platform};

/// RedundantTargetPlatform and FromPlatformFlagConstDisallowed.
pub(super) fn platform_lints(
    raw: &str,
    value: &str,
    m: &expand::Matches,
    stage: Option<&str>,
    global: &BTreeMap<String, String>,
    span: Span,
    findings: &mut Vec<Finding>,
) {
    let only_target = m.matched.len() == 1
        && m.unmatched.is_empty()
        && m.matched.contains("TARGETPLATFORM")
        && global.get("TARGETPLATFORM").map(String::as_str) == Some(value);
    if only_target {
        findings.push(Finding {
            rule: "RedundantTargetPlatform",
            span,
            message: format!("Setting platform to predefined {raw} in FROM is redundant as this is the default behavior"),
        });
    }
    if !m.matched.is_empty() || !m.unmatched.is_empty() {
        return;
    }
    let Some(p) = Platform::parse(value).ok() else {
        return;
    };
    let stage = stage.unwrap_or_default();
    if stage.contains(&p.os) || stage.contains(&p.arch) {
        return;
    }
    findings.push(Finding {
        rule: "FromPlatformFlagConstDisallowed",
        span,
        message: format!("FROM --platform flag should not use constant value \"{value}\""),
    });
}

/// SecretsUsedInArgOrEnv: ARG/ENV names that look like credentials.
pub(super) fn looks_secret(key: &str) -> bool {
    const DENY: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    // BuildKit's `(?i)(?:_|^)(?:token|…)(?:_|$)`: a whole `_`-separated word.
    let lower = key.to_ascii_lowercase();
    let words: Vec<&str> = lower.split('_').collect();
    words.iter().any(|w| DENY.contains(w)) && !words.contains(&"public")
}

/// Absolute for WorkdirRelativePath: `/x`, or a Windows drive path (`C:\x`)
/// since the base image may be a Windows one.
pub(super) fn is_abs(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with('/')
        || p.starts_with('\\')
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'\\' || b[2] == b'/'))
}

/// BuildKit's "did you mean": the closest name by edit distance, if close.
/// How many names [`suggest`] may compare against in one plan: plenty for
/// any real file, and it keeps a file with 50,000 undefined variables from
/// taking hours (each suggestion is a pass over every defined name).
pub const SUGGEST_BUDGET: usize = 300_000;

/// Whether `budget` still covers a suggestion among `n` names; spends it.
pub fn spend_suggestion(budget: &mut usize, n: usize) -> bool {
    match budget.checked_sub(n) {
        Some(left) => {
            *budget = left;
            true
        }
        None => {
            *budget = 0;
            false
        }
    }
}

pub fn suggest(v: &str, options: &[&String]) -> Option<String> {
    let mut best: Option<(usize, &String)> = None;
    for o in options {
        if o.as_str() == v {
            continue;
        }
        let d = levenshtein(v, o);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, o));
        }
    }
    let (d, o) = best?;
    let limit = (v.chars().count() / 3).max(1);
    (d <= limit || o.eq_ignore_ascii_case(v)).then(|| o.to_string())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}
