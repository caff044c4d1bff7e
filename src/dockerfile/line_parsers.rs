//! Per-instruction argument splitting, following BuildKit's
//! `parser/line_parsers.go` and `split_command.go`: flags first, then
//! key/value pairs (ENV, LABEL), whitespace lists (FROM, EXPOSE), maybe-JSON
//! (CMD, RUN, …), maybe-JSON-or-list (COPY, ADD, VOLUME), HEALTHCHECK and ONBUILD.

/// What a line parser produces for one instruction.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub args: Vec<String>,
    pub json: bool,
    /// ONBUILD's wrapped instruction text (parsed by the caller).
    pub sub_line: Option<String>,
}

/// BuildKit's `reWhitespace`/`tokenWhitespace`: `[\t\v\f\r ]`.
pub(crate) fn is_token_ws(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Splits on runs of `[\t\v\f\r ]` like Go's `regexp.Split(s, n)`; `n == 0` means no limit.
pub(crate) fn split_ws(s: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        if n != 0 && out.len() + 1 == n {
            out.push(rest.to_string());
            return out;
        }
        match rest.find(is_token_ws) {
            Some(i) => {
                out.push(rest[..i].to_string());
                rest = rest[i..].trim_start_matches(is_token_ws);
            }
            None => {
                out.push(rest.to_string());
                return out;
            }
        }
    }
}

/// The command word, its flags and the remaining argument text of a logical
/// line. Also returns the byte offset of each flag word within `line`.
pub(crate) fn split_command(line: &str) -> (String, Vec<(String, usize)>, String, usize) {
    let lead = line.len() - line.trim_start().len();
    let trimmed = line.trim();
    let parts = split_ws(trimmed, 2);
    let cmd = parts[0].clone();
    if parts.len() < 2 {
        return (cmd, Vec::new(), String::new(), lead + trimmed.len());
    }
    let rest_off = lead + trimmed.len() - parts[1].len();
    let (args_off, flags) = extract_builder_flags(&parts[1]);
    let flags = flags.into_iter().map(|(f, o)| (f, o + rest_off)).collect();
    let args = parts[1][args_off..].trim().to_string();
    (cmd, flags, args, rest_off + args_off)
}

/// Reads leading `--flag[=value]` words (quotes and `\` processed, `--` ends
/// them) and returns where the arguments start plus each flag with its offset.
fn extract_builder_flags(line: &str) -> (usize, Vec<(String, usize)>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let b = line.as_bytes();
    let mut words: Vec<(String, usize)> = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word: Vec<u8> = Vec::new();
    let mut word_start = 0;
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = 0;
    let finish = |w: &Vec<u8>| String::from_utf8_lossy(w).into_owned();
    while pos <= b.len() {
        let ch = if pos < b.len() { b[pos] } else { 0 };
        if phase == Phase::Spaces {
            if pos == b.len() {
                break;
            }
            if (ch as char).is_ascii_whitespace() || ch == 0x0b {
                pos += 1;
                continue;
            }
            if ch != b'-' || pos + 1 == b.len() || b[pos + 1] != b'-' {
                return (pos, words);
            }
            phase = Phase::Word;
            word_start = pos;
        }
        if pos == b.len() {
            if word != b"--" && (blank_ok || !word.is_empty()) {
                words.push((finish(&word), word_start));
            }
            break;
        }
        if phase == Phase::Word {
            if (ch as char).is_ascii_whitespace() || ch == 0x0b {
                phase = Phase::Spaces;
                if word == b"--" {
                    return (pos, words);
                }
                if blank_ok || !word.is_empty() {
                    words.push((finish(&word), word_start));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            let mut c = ch;
            if ch == b'\\' {
                if pos + 1 == b.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                c = b[pos];
            }
            word.push(c);
            pos += 1;
            continue;
        }
        // inside quotes
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut c = ch;
        if ch == b'\\' {
            if pos + 1 == b.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            c = b[pos];
        }
        word.push(c);
        pos += 1;
    }
    (line.len(), words)
}

/// Words separated by whitespace; quotes and escapes are kept in the words
/// (BuildKit's `parseWords`, used by ENV, LABEL and ARG).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// ENV and LABEL: `k=v k2=v2` (separator `=`) or the legacy `k v…` form
/// (separator empty). Output is key, value, separator triples.
pub(crate) fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Parsed, String> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Parsed::default());
    }
    let mut args = Vec::new();
    if !words[0].contains('=') {
        let parts = split_ws(rest, 2);
        if parts.len() < 2 {
            return Err(format!("{key} must have two arguments"));
        }
        args.extend([parts[0].clone(), parts[1].clone(), String::new()]);
        return Ok(Parsed {
            args,
            ..Parsed::default()
        });
    }
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                super::ast::go_quote(&w)
            ));
        };
        args.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(Parsed {
        args,
        ..Parsed::default()
    })
}

/// ARG: each word as written (`a=b` stays one string).
pub(crate) fn parse_name_or_name_val(rest: &str, escape: char) -> Parsed {
    Parsed {
        args: parse_words(rest, escape),
        ..Parsed::default()
    }
}

/// FROM, EXPOSE and the non-JSON side of COPY/ADD/VOLUME.
pub(crate) fn parse_strings_whitespace_delimited(rest: &str) -> Parsed {
    if rest.is_empty() {
        return Parsed::default();
    }
    Parsed {
        args: split_ws(rest, 0),
        ..Parsed::default()
    }
}

/// USER, WORKDIR, STOPSIGNAL, MAINTAINER: the whole rest as one argument.
pub(crate) fn parse_string(rest: &str) -> Parsed {
    let mut p = Parsed::default();
    if !rest.is_empty() {
        p.args.push(rest.to_string());
    }
    p
}

/// Why text is not a usable JSON array.
pub(crate) enum JsonError {
    /// Not JSON (or not an array): the caller falls back to shell form.
    NotJson,
    /// Valid JSON array with a non-string element: a hard error.
    NotStringArray,
}

pub(crate) const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// Decodes the first JSON value of `rest` (trailing text is ignored, as Go's
/// `json.Decoder` does) and requires an array of strings.
pub(crate) fn parse_json(rest: &str) -> Result<Vec<String>, JsonError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Err(JsonError::NotJson);
    }
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
    let Some(Ok(serde_json::Value::Array(items))) = stream.next() else {
        return Err(JsonError::NotJson);
    };
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(JsonError::NotStringArray),
        })
        .collect()
}

/// CMD, ENTRYPOINT, RUN, SHELL: JSON array → exec form, else one shell string.
pub(crate) fn parse_maybe_json(rest: &str) -> Result<Parsed, String> {
    if rest.is_empty() {
        return Ok(Parsed::default());
    }
    match parse_json(rest) {
        Ok(args) => Ok(Parsed {
            args,
            json: true,
            sub_line: None,
        }),
        Err(JsonError::NotStringArray) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok(Parsed {
            args: vec![rest.to_string()],
            ..Parsed::default()
        }),
    }
}

/// COPY, ADD, VOLUME: JSON array, else whitespace-separated words.
pub(crate) fn parse_maybe_json_to_list(rest: &str) -> Result<Parsed, String> {
    match parse_json(rest) {
        Ok(args) => Ok(Parsed {
            args,
            json: true,
            sub_line: None,
        }),
        Err(JsonError::NotStringArray) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok(parse_strings_whitespace_delimited(rest)),
    }
}

/// HEALTHCHECK: a type word (`CMD`, `NONE`, …) then a maybe-JSON command.
pub(crate) fn parse_health_config(rest: &str) -> Result<Parsed, String> {
    let sep = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Parsed::default());
    }
    let typ = &rest[..sep];
    let cmd = rest[sep..].trim_start();
    let mut p = parse_maybe_json(cmd)?;
    p.args.insert(0, typ.to_string());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            parse_words("foo bar 'abc xyz' \"q\\\"x\" e\\ f", '\\'),
            vec!["foo", "bar", "'abc xyz'", "\"q\\\"x\"", "e\\ f"]
        );
        assert_eq!(parse_words("héllo ☃", '\\'), vec!["héllo", "☃"]);
        assert_eq!(parse_words("a `b", '`'), vec!["a", "`b"]);
    }

    #[test]
    fn flags_are_extracted_before_args() {
        let (cmd, flags, args, _) = split_command("COPY --from=a --chown=\"x y\" -- src dst");
        assert_eq!(cmd, "COPY");
        let names: Vec<_> = flags.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, vec!["--from=a", "--chown=x y"]);
        assert_eq!(args, "src dst");
        let (_, flags, args, _) = split_command("RUN -x --y");
        assert!(flags.is_empty());
        assert_eq!(args, "-x --y");
    }

    #[test]
    fn flag_offsets_point_at_the_flag() {
        let (_, flags, _, _) = split_command("COPY  --link --bad=1 a b");
        assert_eq!(flags[0].1, 6);
        assert_eq!(flags[1].1, 13);
    }

    #[test]
    fn json_rules() {
        assert_eq!(
            parse_json("[\"a\", \"b\"] trailing").ok(),
            Some(vec!["a".into(), "b".into()])
        );
        assert!(matches!(parse_json("['a']"), Err(JsonError::NotJson)));
        assert!(matches!(parse_json("[1]"), Err(JsonError::NotStringArray)));
        assert!(parse_maybe_json("[\"a\", [\"b\"]]").is_err());
        let p = parse_maybe_json("[\"a\"").unwrap();
        assert!(!p.json);
        assert_eq!(p.args, vec!["[\"a\""]);
    }

    #[test]
    fn env_forms() {
        let p = parse_name_val("a b c", "ENV", '\\').unwrap();
        assert_eq!(p.args, vec!["a", "b c", ""]);
        let p = parse_name_val("a=1 b=\"2 3\"", "ENV", '\\').unwrap();
        assert_eq!(p.args, vec!["a", "1", "=", "b", "\"2 3\"", "="]);
        assert!(parse_name_val("PATH", "ENV", '\\').is_err());
        assert!(parse_name_val("a=1 b", "ENV", '\\').is_err());
    }

    #[test]
    fn health_type_then_command() {
        let p = parse_health_config("CMD   [\"a\"]").unwrap();
        assert_eq!(p.args, vec!["CMD", "a"]);
        assert!(p.json);
        let p = parse_health_config("NONE").unwrap();
        assert_eq!(p.args, vec!["NONE"]);
    }
}
