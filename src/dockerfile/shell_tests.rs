//! Unit tests of `dockerfile::shell`.

use super::pattern::reverse_pattern;
use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expand(word: &str, pairs: &[(&str, &str)]) -> std::result::Result<String, ShellError> {
    Lexer::new('\\').process_word(word, &env(pairs))
}

fn ok(word: &str, pairs: &[(&str, &str)]) -> String {
    match expand(word, pairs) {
        Ok(s) => s,
        Err(e) => panic!("{word:?} failed: {e}"),
    }
}

#[test]
fn plain_and_braced_references() {
    let e = [("A", "x"), ("EMPTY", "")];
    assert_eq!(ok("$A-${A}_$A_", &e), "x-x_");
    assert_eq!(ok("${EMPTY}|$MISSING|", &e), "||");
    assert_eq!(ok("a$", &e), "a$");
    assert_eq!(ok("$1$@$#x", &e), "x");
}

#[test]
fn default_and_alternative_operators() {
    let e = [("SET", "v"), ("EMPTY", "")];
    assert_eq!(ok("${SET:-d} ${EMPTY:-d} ${NO:-d}", &e), "v d d");
    assert_eq!(ok("${SET-d} ${EMPTY-d} ${NO-d}", &e), "v  d");
    assert_eq!(ok("${SET:+a} ${EMPTY:+a} ${NO:+a}", &e), "a  ");
    assert_eq!(ok("${SET+a} ${EMPTY+a} ${NO+a}", &e), "a a ");
    assert_eq!(ok("${NO:-${SET}x}", &e), "vx");
}

#[test]
fn required_operators_report_name_and_message() {
    let e = [("SET", "v"), ("EMPTY", ""), ("ARG", "x")];
    assert_eq!(ok("${SET:?m}${EMPTY?m}", &e), "v");
    let err = expand("${FOO:?must be set}", &e).unwrap_err();
    assert_eq!(err.kind().to_string(), "FOO: must be set");
    assert_eq!(
        err.to_string(),
        "failed to process \"${FOO:?must be set}\": FOO: must be set"
    );
    let err = expand("${EMPTY:?message $ARG}", &e).unwrap_err();
    assert_eq!(err.kind().to_string(), "EMPTY: message x");
    let err = expand("${NO?}", &e).unwrap_err();
    assert_eq!(err.kind().to_string(), "NO: is not allowed to be unset");
    let err = expand("${EMPTY:?}", &e).unwrap_err();
    assert_eq!(err.kind().to_string(), "EMPTY: is not allowed to be empty");
}

#[test]
fn prefix_and_suffix_trimming() {
    let e = [("F", "xxyy"), ("X", "x"), ("P", "a***yy*"), ("S", "xx**")];
    assert_eq!(ok("${F#*x*y}", &e), "y");
    assert_eq!(ok("${F#*}", &e), "xxyy");
    assert_eq!(ok("${F#$X}", &e), "xyy");
    assert_eq!(ok("${F##*x}", &e), "yy");
    assert_eq!(ok("${F#}|${F##}|${F%}", &e), "xxyy|xxyy|xxyy");
    assert_eq!(ok("${F%y*}", &e), "xxy");
    assert_eq!(ok("${F%%y*}", &e), "xx");
    assert_eq!(ok("${S%%\\**}", &e), "xx");
    assert_eq!(ok("${P%%\\**\\*}", &e), "a");
    assert_eq!(ok("${NOPE#x}", &e), "");
}

#[test]
fn trimming_handles_regex_metacharacters_and_escapes() {
    let e = [("FOO", "()[]{}^$.*?|\\x"), ("Q", "???y")];
    assert_eq!(ok("${FOO#()[]{\\}^$.\\*\\?|\\\\}", &e), "x");
    assert_eq!(ok("${Q#?\\?}", &e), "?y");
    let err = expand("${Q#\\x}", &e).unwrap_err();
    assert!(
        matches!(err.kind, ShellErrorKind::InvalidPattern { .. }),
        "{err}"
    );
}

#[test]
fn pattern_substitution_first_and_all() {
    let e = [
        ("FOO", "/foo*/*/*.txt"),
        ("NEEDLE", "\\*/"),
        ("T", "/tmp/tmp/bar.txt"),
        ("SLASH", "/tmp"),
        ("U", "http://google.de"),
    ];
    assert_eq!(
        ok("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", &e),
        "/foo.*/*.txt - /foo..*.txt"
    );
    assert_eq!(
        ok("${T/$SLASH/} - ${T//$SLASH/}", &e),
        "/tmp/bar.txt - /bar.txt"
    );
    assert_eq!(
        ok("${U/http:\\/\\//https:\\/\\/}", &e),
        "https:\\/\\/google.de"
    );
    assert_eq!(ok("${T//\\//\\/}", &e), "\\/tmp\\/tmp\\/bar.txt");
    assert_eq!(ok("${T///}", &e), "/tmp/tmp/bar.txt");
    assert_eq!(ok("${U/$NONE/ww}", &e), "wwhttp://google.de");
    assert!(expand("${T//ww}", &e).is_err());
    assert!(expand("${T//}", &e).is_err());
}

#[test]
fn replacement_templates_expand_as_the_regex_crate_does() {
    let re = regex::Regex::new("b+").unwrap();
    let empty = regex::Regex::new("").unwrap();
    for t in [
        "$0", "${0}x", "$$", "a$1b", "$x", "$", "${", "x$0y$$z", "$00", "$0a", "$$$0", "${0",
        "plain", "", "$_", "${name}", "$9$9$9",
    ] {
        for hay in ["abbbc", "ac"] {
            let mut want = String::new();
            let mut got = String::new();
            let parsed = ReplaceTemplate::parse(t);
            match re.captures(hay) {
                Some(caps) => {
                    caps.expand(t, &mut want);
                    parsed.expand(caps.get(0).unwrap().as_str(), &mut got);
                }
                None => {
                    // An empty match: what `${V//*/t}` gives at an empty position.
                    empty.captures("").unwrap().expand(t, &mut want);
                    parsed.expand("", &mut got);
                }
            }
            assert_eq!(got, want, "template {t:?} on {hay:?}");
        }
    }
    // Go's Expand (BuildKit's) keeps an empty `${}` as text, where the
    // regex crate expands it to nothing: Go's rule wins.
    // The same for a braced name with other characters than letters,
    // digits and `_`.
    for t in ["a${}b", "a${ 0}b"] {
        let mut got = String::new();
        ReplaceTemplate::parse(t).expand("x", &mut got);
        assert_eq!(got, t);
    }
}

/// Found by the `word` fuzz target: a 400-byte word whose replace-all
/// expansions took 12 s of CPU (the template was re-read per match).
#[test]
fn fuzz_slow_replace_all_input_expands() {
    let data = include_bytes!("../../testdata/fuzz/word-slow-replace-all.bin");
    let word = String::from_utf8_lossy(data);
    let env: Vec<(String, String)> = [("A", "a b"), ("B", ""), ("P", "/usr/bin"), ("X", "*?")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for escape in ['\\', '`'] {
        let _ = Lexer::new(escape).process(&word, &env);
    }
}

#[test]
fn unsupported_and_malformed_substitutions_fail() {
    for bad in [
        "${}", "${:-x}", "${{A}", "${A:=x}", "${A=x}", "${A", "${A:-x", "${.}", "${A:x}",
    ] {
        assert!(expand(bad, &[("A", "1")]).is_err(), "{bad:?} should fail");
    }
    assert_eq!(
        expand("${A:=x}", &[]).unwrap_err().kind,
        ShellErrorKind::UnsupportedModifier {
            modifier: ":=".to_string()
        }
    );
    assert_eq!(
        expand("${A", &[]).unwrap_err().kind,
        ShellErrorKind::MissingBrace
    );
}

#[test]
fn quotes_and_backslash_escape() {
    let e = [("A", "x")];
    assert_eq!(ok(r#"'$A' "$A" \$A "\$A" "\a""#, &e), r#"$A x $A $A \a"#);
    assert_eq!(ok(r#""a\"b" a\"b"#, &e), r#"a"b a"b"#);
    assert!(expand("'open", &e).is_err());
    assert!(expand("\"open", &e).is_err());
    assert_eq!(ok("trailing\\", &e), "trailing");
}

#[test]
fn backtick_escape_char_replaces_backslash() {
    let lexer = Lexer::new('`');
    let e = env(&[("A", "x")]);
    assert_eq!(lexer.process_word(r"C:\path\$A", &e).unwrap(), r"C:\path\x");
    assert_eq!(lexer.process_word("`$A", &e).unwrap(), "$A");
    assert_eq!(lexer.process_word("\"a`\"b\"", &e).unwrap(), "a\"b");
    assert_eq!(lexer.process_words("a` b c", &e).unwrap(), vec!["a b", "c"]);
}

#[test]
fn words_split_only_unquoted_whitespace() {
    let e = env(&[("S", " a  b ")]);
    let l = Lexer::new('\\');
    assert_eq!(
        l.process_words("x$S\"$S\"y", &e).unwrap(),
        vec!["x", "a", "b", " a  b y"]
    );
    assert_eq!(l.process_words("'' a", &e).unwrap(), vec!["a"]);
}

#[test]
fn matches_record_set_and_unset_names() {
    let e = env(&[("FOO", "xxx"), ("BAR", "")]);
    let (out, m) = Lexer::new('\\')
        .process_word_with_matches("${FOO-a} ${BAR-b} ${BAZ-c}", &e)
        .unwrap();
    assert_eq!(out, "xxx  c");
    assert_eq!(
        m.matched,
        BTreeSet::from(["FOO".to_string(), "BAR".to_string()])
    );
    assert_eq!(m.unmatched, BTreeSet::from(["BAZ".to_string()]));
}

#[test]
fn env_impls_agree_and_last_pair_wins() {
    let pairs = vec![
        ("A".to_string(), "1".to_string()),
        ("A".to_string(), "2".to_string()),
    ];
    let l = Lexer::new('\\');
    assert_eq!(l.process_word("$A", &pairs).unwrap(), "2");
    assert_eq!(l.process_word("$A", &pairs.as_slice()).unwrap(), "2");
    let map: HashMap<String, String> = pairs.into_iter().collect();
    assert_eq!(l.process_word("$A", &map).unwrap(), "2");
}

#[test]
fn heredoc_modes_keep_quotes_and_escapes() {
    let e = env(&[("A", "x")]);
    let body = Lexer::heredoc_body();
    assert_eq!(
        body.process_word("echo \"$A\" '$A' \\$A", &e).unwrap(),
        "echo \"x\" '$A' \\$A"
    );
    let line = Lexer::heredoc_line();
    assert_eq!(
        line.process_words("COPY <<\"EOF\" $UNSET ${B:-x} /dst", &e)
            .unwrap(),
        vec!["COPY", "<<\"EOF\"", "$UNSET", "${B:-x}", "/dst"]
    );
}

#[test]
fn skip_unset_env_keeps_references() {
    let mut l = Lexer::new('\\');
    l.skip_unset_env = true;
    let e = env(&[("A", "x")]);
    assert_eq!(
        l.process_word("$A $B ${C} ${D:-d} ${E/a/b}", &e).unwrap(),
        "x $B ${C} ${D:-d} ${E/a/b}"
    );
}

#[test]
fn platform_release_name_uses_optional_variant() {
    let word =
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
    let base = [("VERSION", "v1.2.3"), ("TARGETOS", "linux")];
    let with = |extra: &[(&str, &str)]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        ok(word, &all)
    };
    assert_eq!(
        with(&[("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")]),
        "something-v1.2.3.linux-arm-v7.tar.gz"
    );
    assert_eq!(
        with(&[("TARGETARCH", "arm64"), ("TARGETVARIANT", "")]),
        "something-v1.2.3.linux-arm64.tar.gz"
    );
    assert_eq!(
        with(&[("TARGETARCH", "arm64")]),
        "something-v1.2.3.linux-arm64.tar.gz"
    );
}

#[test]
fn env_pairs_parse_key_value_lists() {
    let pairs = env_pairs(["A=1", "B", "C=x=y", "A=2"]);
    let l = Lexer::new('\\');
    assert_eq!(
        l.process_word("$A|${B-unset}|$C", &pairs).unwrap(),
        "2||x=y"
    );
}

#[test]
fn names_use_go_letter_and_digit_classes() {
    let e = [("한국", "k"), ("x٣", "arabic-digit"), ("v", "V")];
    assert_eq!(ok("$한국!", &e), "k!");
    assert_eq!(ok("$x٣.", &e), "arabic-digit.");
    // U+0903 (a Devanagari vowel sign) is Alphabetic but not a letter, so the name ends before it.
    assert_eq!(ok("$v\u{0903}", &e), "V\u{0903}");
    // U+2162 (Roman numeral three) is a numeral but not a decimal digit.
    assert_eq!(ok("$v\u{2162}", &e), "V\u{2162}");
    assert!(is_digit('٣') && !is_digit('\u{2162}') && is_letter('한') && !is_letter('\u{0903}'));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let word = "${a:-".repeat(9000);
    let err = expand(&word, &[]).unwrap_err();
    assert_eq!(err.kind, ShellErrorKind::TooDeep { limit: MAX_NESTING });
    let text = err.to_string();
    assert!(text.contains("nested deeper than 64 levels"), "{text}");
    assert!(text.len() < 300, "the word is shortened: {text}");
    // Closed, just at and just over the limit.
    let nest = |n: usize| format!("{}x{}", "${a:-".repeat(n), "}".repeat(n));
    assert_eq!(ok(&nest(MAX_NESTING), &[]), "x");
    assert!(expand(&nest(MAX_NESTING + 1), &[]).is_err());
    // Inside double quotes too.
    assert!(expand(&format!("\"{}\"", nest(MAX_NESTING + 1)), &[]).is_err());
}

#[test]
fn growth_past_the_cap_is_an_error() {
    // (Values are never printed: a failure message would be megabytes.)
    let too_long = |r: std::result::Result<String, ShellError>| matches!(r, Err(e) if e.kind == ShellErrorKind::TooLong { limit: MAX_GROWTH });
    let big = "x".repeat(MAX_GROWTH / 2 + 10);
    let e = [("A", big.as_str())];
    assert!(expand("$A", &e).is_ok_and(|v| v.len() == big.len()));
    assert!(too_long(expand("$A$A", &e)));
    assert!(too_long(expand("\"$A$A\"", &e)));
    // `${V//?/$V}` would square the length: stopped while it grows.
    let mid = "y".repeat(2000);
    assert!(too_long(expand("${M//?/$M}", &[("M", mid.as_str())])));
    assert_eq!(ok("${M//y/ab}", &[("M", "yy")]), "abab");
}

#[test]
fn reverse_pattern_keeps_escape_pairs() {
    assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
    assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
    assert_eq!(reverse_pattern("ab\\"), "\\ba");
    assert_eq!(reverse_pattern("👽\\🚀🖖"), "🖖\\🚀👽");
}

#[test]
fn pattern_regex_escapes_metacharacters() {
    let re = pattern_regex("(()[]{\\}^$.\\*\\?|\\\\", true, true).unwrap();
    assert_eq!(re.as_str(), "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\");
    for bad in ["\\", "\\x", "\\\\\\"] {
        assert!(pattern_regex(bad, true, true).is_err(), "{bad:?}");
    }
}
