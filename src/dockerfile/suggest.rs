//! "did you mean …?" suggestions, worded and thresholded as BuildKit's
//! `util/suggest` does: the closest option by Levenshtein distance, only
//! when that distance is below 3, matched case-insensitively and given
//! back in the case the user typed (all lower or all upper).

/// Every Dockerfile instruction keyword, as BuildKit lists them for suggestions.
pub const INSTRUCTIONS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// The option closest to `value` (distance < 3), or `None` when nothing is
/// close or `value` is itself an option (the error is about something else).
pub fn closest(value: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let val = fold(value);
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let opt = fold(opt);
        if opt == val {
            return None;
        }
        let d = levenshtein(&val, &opt);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                opt
            } else {
                match_case(&opt, value)
            });
        }
    }
    best
}

/// `message (did you mean MATCH?)`, or `message` alone without a close match.
pub fn wrap(message: String, value: &str, options: &[&str], case_sensitive: bool) -> String {
    match closest(value, options, case_sensitive) {
        Some(m) => format!("{message} (did you mean {m}?)"),
        None => message,
    }
}

fn match_case(opt: &str, orig: &str) -> String {
    if orig == orig.to_uppercase() {
        opt.to_uppercase()
    } else {
        opt.to_lowercase()
    }
}

/// Edit distance over chars. The inputs are single words (keywords,
/// subcommand names), so the O(n·m) table with one row is cheap; words
/// longer than 64 chars are never close to any option and are cut short.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("from", "from"), 0);
        assert_eq!(levenshtein("imagse", "images"), 2);
    }

    #[test]
    fn buildkit_style_suggestions() {
        assert_eq!(closest("FRM", INSTRUCTIONS, false).as_deref(), Some("FROM"));
        assert_eq!(closest("frm", INSTRUCTIONS, false).as_deref(), Some("from"));
        assert_eq!(closest("Frm", INSTRUCTIONS, false).as_deref(), Some("from"));
        assert_eq!(closest("RUNN", INSTRUCTIONS, false).as_deref(), Some("RUN"));
        assert_eq!(closest("BOGUS", INSTRUCTIONS, false), None);
        assert_eq!(closest("FROM", INSTRUCTIONS, false), None);
        assert_eq!(
            wrap(
                "unknown instruction: CPY".into(),
                "CPY",
                INSTRUCTIONS,
                false
            ),
            "unknown instruction: CPY (did you mean COPY?)"
        );
    }
}
