//! Instruction flags (`--from=x`, `--link`, `--mount=…`) checked against the
//! flags each instruction accepts, with BuildKit's `BFlags` rules and
//! messages: unknown flags, duplicates, missing values, boolean values.

use super::ast::{Node, ParseError};
use std::collections::HashMap;

/// What values a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--link`, `--link=true|false`.
    Bool,
    /// `--from=x`; given once.
    String,
    /// `--mount=…`; repeatable, values collected in order.
    Strings,
}

/// The flags of one instruction after checking.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    values: HashMap<String, Vec<String>>,
}

impl Flags {
    /// A string flag's value, if given.
    pub fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.last().cloned())
    }

    /// Every value of a repeatable flag, in order.
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    /// A boolean flag: false when absent.
    pub fn bool(&self, name: &str) -> bool {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .is_some_and(|v| v == "true")
    }
}

/// Checks `node.flags` against `allowed` (name without `--`, kind).
/// Errors point at the offending flag's column.
pub fn parse_flags(node: &Node, allowed: &[(&str, FlagKind)]) -> Result<Flags, ParseError> {
    let mut flags = Flags::default();
    for (i, raw) in node.flags.iter().enumerate() {
        let column = node.column_of(node.flag_offsets.get(i).copied().unwrap_or(usize::MAX));
        let err = |message: String| ParseError {
            line: node.span.start_line,
            column,
            end_line: node.span.end_line,
            message,
        };
        if raw == "--" {
            break;
        }
        let Some(arg) = raw.strip_prefix("--") else {
            return Err(err(format!("arg should start with -- : {raw}")));
        };
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg, None),
        };
        // Messages name the flag with its dashes, as current BuildKit does.
        let flag = format!("--{name}");
        let Some(&(_, kind)) = allowed.iter().find(|(n, _)| *n == name) else {
            return Err(err(format!("unknown flag: {flag}")));
        };
        let slot = flags.values.entry(name.to_string()).or_default();
        if !slot.is_empty() && kind != FlagKind::Strings {
            return Err(err(format!("duplicate flag specified: {flag}")));
        }
        match (kind, value) {
            (FlagKind::Bool, None) => slot.push("true".into()),
            (FlagKind::Bool, Some("")) => {
                return Err(err(format!("missing a value on flag: {flag}")))
            }
            (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "true" => slot.push("true".into()),
                "false" => slot.push("false".into()),
                _ => {
                    return Err(err(format!(
                        "expecting boolean value for flag {flag}, not: {v}"
                    )))
                }
            },
            (_, None) => return Err(err(format!("missing a value on flag: {flag}"))),
            (_, Some(v)) => slot.push(v.to_string()),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn node(src: &str) -> Node {
        parse(src).ast.children.remove(0)
    }

    const COPY: &[(&str, FlagKind)] = &[
        ("from", FlagKind::String),
        ("link", FlagKind::Bool),
        ("exclude", FlagKind::Strings),
    ];

    #[test]
    fn values_by_kind() {
        let f = parse_flags(
            &node("COPY --from=a --link --exclude=x --exclude=y s d"),
            COPY,
        )
        .unwrap();
        assert_eq!(f.string("from").as_deref(), Some("a"));
        assert!(f.bool("link"));
        assert_eq!(f.strings("exclude"), vec!["x", "y"]);
        let f = parse_flags(&node("COPY --link=FALSE s d"), COPY).unwrap();
        assert!(!f.bool("link"));
    }

    #[test]
    fn unknown_flag_names_flag_and_column() {
        let e = parse_flags(&node("COPY --link --foo=1 s d"), COPY).unwrap_err();
        assert_eq!(e.message, "unknown flag: --foo");
        assert_eq!((e.line, e.column), (1, 13));
        let e = parse_flags(&node("\n  COPY --foo s d"), COPY).unwrap_err();
        assert_eq!((e.line, e.column), (2, 8));
    }

    #[test]
    fn bad_values() {
        let msg = |s: &str| parse_flags(&node(s), COPY).unwrap_err().message;
        assert_eq!(msg("COPY --from s d"), "missing a value on flag: --from");
        assert_eq!(
            msg("COPY --from=a --from=b s d"),
            "duplicate flag specified: --from"
        );
        assert_eq!(
            msg("COPY --link=maybe s d"),
            "expecting boolean value for flag --link, not: maybe"
        );
        assert_eq!(msg("COPY --link= s d"), "missing a value on flag: --link");
    }
}
