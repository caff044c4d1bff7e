//! Heredoc markers (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`) found in a
//! RUN/COPY/ADD line, following BuildKit's `heredocsFromLine` and
//! `ParseHeredoc`. Bodies are read by the parser; this module only decides
//! which words are markers, their names, and whether the body expands.

use super::ast::Heredoc;

/// Shell-like word splitting as BuildKit's lexer does it with no variables
/// set: `raw_quotes` keeps quote characters in the words, `raw_escapes`
/// keeps the `\` of escapes. `$` is kept literally (unset variables are skipped).
fn shell_words(s: &str, raw_quotes: bool, raw_escapes: bool) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut it = s.chars().peekable();
    while let Some(ch) = it.next() {
        match ch {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if raw_escapes {
                    word.push('\\');
                }
                if let Some(n) = it.next() {
                    word.push(n);
                }
            }
            '\'' => {
                in_word = true;
                if raw_quotes {
                    word.push('\'');
                }
                loop {
                    match it.next() {
                        None => return Err(
                            "unexpected end of statement while looking for matching single-quote"
                                .to_string(),
                        ),
                        Some('\'') => break,
                        Some(c) => word.push(c),
                    }
                }
                if raw_quotes {
                    word.push('\'');
                }
            }
            '"' => {
                in_word = true;
                if raw_quotes {
                    word.push('"');
                }
                loop {
                    match it.next() {
                        None => return Err(
                            "unexpected end of statement while looking for matching double-quote"
                                .to_string(),
                        ),
                        Some('"') => break,
                        Some('\\') => match it.peek() {
                            Some(&n) if n == '"' || n == '$' || n == '\\' => {
                                if raw_escapes {
                                    word.push('\\');
                                }
                                word.push(n);
                                it.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some(c) => word.push(c),
                    }
                }
                if raw_quotes {
                    word.push('"');
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Parses one word as a heredoc marker (BuildKit's `ParseHeredoc`):
/// `Ok(None)` when it is not one, `Err` when its quotes are unbalanced.
pub fn parse_heredoc(src: &str) -> Result<Option<Heredoc>, String> {
    let digits = src.len() - src.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(after) = src[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match after.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, after),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let words = shell_words(rest, false, false)?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = shell_words(rest, true, false)?;
    let quotes = |w: &str| w.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = raw.len() == 1 && quotes(&words[0]) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        file_descriptor: src[..digits].parse().unwrap_or(0),
        expand,
        chomp,
        content: String::new(),
    }))
}

/// Every heredoc marker on a logical line, in order. Quoted words
/// (`"<<EOF"`) are not markers.
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let words = match shell_words(line, true, true) {
        Ok(w) => w,
        // BuildKit ignores lexing errors of the whole line; markers before an
        // unbalanced quote are still found by splitting on whitespace.
        Err(_) => line.split_whitespace().map(str::to_string).collect(),
    };
    let mut docs = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let mut w = words[i].clone();
        // `<<  EOF`: a bare operator takes the next word as its name.
        let bare = w.trim_start_matches(|c: char| c.is_ascii_digit());
        if (bare == "<<" || bare == "<<-") && i + 1 < words.len() {
            i += 1;
            w.push_str(&words[i]);
        }
        if let Some(h) = parse_heredoc(&w)? {
            docs.push(h);
        }
        i += 1;
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(src: &str) -> Heredoc {
        parse_heredoc(src).unwrap().unwrap()
    }

    #[test]
    fn valid_markers_name_eof() {
        for src in [
            "<<EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "<<-EOF",
            "<<-'EOF'",
            "<<-\"EOF\"",
            "<< EOF",
            "<<- EOF",
        ] {
            assert_eq!(doc(src).name, "EOF", "{src}");
        }
        assert!(doc("<<-EOF").chomp);
        assert!(doc("<<- EOF").chomp);
        assert!(!doc("<<EOF").chomp);
    }

    #[test]
    fn not_markers() {
        for src in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
            assert_eq!(parse_heredoc(src).unwrap(), None, "{src}");
        }
    }

    #[test]
    fn unbalanced_quotes_are_errors() {
        for src in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(parse_heredoc(src).is_err(), "{src}");
        }
    }

    #[test]
    fn quoting_turns_expansion_off() {
        assert!(doc("<<EOF").expand);
        assert!(!doc("<<'EOF'").expand);
        assert!(!doc("<<\"EOF\"").expand);
        let d = doc("<<EO\"F\"");
        assert_eq!((d.name.as_str(), d.expand), ("EOF", false));
        let d = doc("<<eo'f'");
        assert_eq!((d.name.as_str(), d.expand), ("eof", false));
        let d = doc("<<eo\\'f");
        assert_eq!((d.name.as_str(), d.expand), ("eo'f", true));
        let d = doc("<<'e'o\\'f");
        assert_eq!((d.name.as_str(), d.expand), ("eo'f", false));
        let d = doc("<<'one two'");
        assert_eq!((d.name.as_str(), d.expand), ("one two", false));
        assert_eq!(doc("<<$EOF").name, "$EOF");
        let d = doc("<< -EOF");
        assert_eq!((d.name.as_str(), d.chomp), ("-EOF", false));
    }

    #[test]
    fn file_descriptor_prefix() {
        assert_eq!(doc("3<<EOF").file_descriptor, 3);
        assert_eq!(doc("<<EOF").file_descriptor, 0);
    }

    #[test]
    fn markers_from_lines() {
        let names = |l: &str| -> Vec<String> {
            heredocs_from_line(l)
                .unwrap()
                .into_iter()
                .map(|h| h.name)
                .collect()
        };
        assert_eq!(names("RUN <<EOF"), vec!["EOF"]);
        assert_eq!(names("RUN <<-EOF"), vec!["EOF"]);
        assert_eq!(names("RUN <<'EOF'"), vec!["EOF"]);
        assert_eq!(names("RUN 4<<EOF"), vec!["EOF"]);
        assert_eq!(names("RUN <<EOF <<EOF2"), vec!["EOF", "EOF2"]);
        assert_eq!(names("COPY <<file.txt /dest"), vec!["file.txt"]);
        assert_eq!(names("RUN <<COMPLEX python3"), vec!["COMPLEX"]);
        assert_eq!(names("RUN <<  EOF  > foo"), vec!["EOF"]);
        assert_eq!(names("RUN <<  EOF"), vec!["EOF"]);
        assert!(names("RUN '<<EOF'").is_empty());
        assert!(names("RUN \"<<EOF\"").is_empty());
        assert_eq!(names("RUN <<EOF > foo"), vec!["EOF"]);
    }
}
