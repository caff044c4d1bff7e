//! One test per case in /work/shared/guide/dockerignore-cases.md (sections
//! 1–3), plus the buildah conformance contexts under
//! ../shared/corpus/buildah-conformance/dockerignore (section 4).
//!
//! Every matcher case is checked three ways, as upstream does: from scratch,
//! incrementally with parent match info computed top-down, and with no
//! parent info. All three must agree.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use rbuild::context::{
    load_ignore, parse_ignore, scan, ContextError, IgnoreRules, MatchInfo, PatternMatcher,
    PruneRule, SelectOptions,
};

// ---------------------------------------------------------------- helpers

/// Whether `path` is excluded by `patterns`, asserting the three ways agree.
fn m(patterns: &[&str], path: &str) -> bool {
    let pm = PatternMatcher::new(patterns).expect("patterns build");
    let scratch = pm.matches(path).expect("match");
    let (no_info, _) = pm
        .matches_with_parent(path, &MatchInfo::default())
        .expect("match without parent info");
    assert_eq!(
        scratch, no_info,
        "{patterns:?} vs {path}: no-info disagrees"
    );
    let clean = !path.is_empty() && !path.starts_with('/') && !path.ends_with('/');
    if clean {
        let mut info = MatchInfo::default();
        let mut verdict = false;
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..=parts.len() {
            let (v, next) = pm
                .matches_with_parent(&parts[..i].join("/"), &info)
                .expect("incremental match");
            verdict = v;
            info = next;
        }
        assert_eq!(
            scratch, verdict,
            "{patterns:?} vs {path}: incremental disagrees"
        );
    }
    scratch
}

fn bad(patterns: &[&str]) -> ContextError {
    PatternMatcher::new(patterns).expect_err("pattern must be rejected")
}

fn kind(pattern: &str) -> &'static str {
    let pm = PatternMatcher::new(&[pattern]).expect("pattern builds");
    pm.patterns()[0].match_kind()
}

/// The buildah conformance contexts of the shared corpus.
fn corpus() -> Option<PathBuf> {
    common::corpus("buildah-conformance")
}

/// Copies a corpus context into a temp dir (the corpus is read-only, and
/// some cases edit the context first).
fn copy_tree(src: &Path, dst: &Path) {
    for e in walkdir::WalkDir::new(src).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(src).unwrap();
        let to = dst.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&to).unwrap();
        } else if ft.is_symlink() {
            symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else {
            fs::copy(e.path(), &to).unwrap();
            fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    for e in walkdir::WalkDir::new(dst) {
        let e = e.unwrap();
        if e.file_type().is_dir() {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// Paths the scan keeps (root excluded), as a set.
fn scanned(root: &Path) -> BTreeSet<String> {
    let ignore = load_ignore(root, None).expect("ignore file loads");
    let idx = scan(root, "Dockerfile", &ignore, None).expect("scan");
    idx.entries().map(|e| e.rel.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn tmp_context(files: &[&str], ignore: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let p = dir.path().join(f);
        if f.ends_with('/') {
            fs::create_dir_all(&p).unwrap();
        } else {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f.as_bytes()).unwrap();
        }
    }
    fs::write(dir.path().join(".dockerignore"), ignore).unwrap();
    dir
}

// ------------------------------------------------- 1. reading the file

#[test]
fn read_1_1_empty_file_gives_no_patterns() {
    assert!(parse_ignore("").is_empty());
    let dir = tempfile::tempdir().unwrap();
    let rules = load_ignore(dir.path(), None).unwrap();
    assert!(rules.patterns.is_empty() && rules.source.is_none());
}

#[test]
fn read_1_2_bom_removed_from_first_line_only() {
    assert_eq!(parse_ignore("\u{feff}a\n\u{feff}b"), vec!["a", "\u{feff}b"]);
}

#[test]
fn read_1_3_comment_only_at_byte_zero() {
    assert_eq!(parse_ignore("# c\n   # x\nfoo"), vec!["# x", "foo"]);
}

#[test]
fn read_1_4_trimmed_and_empty_lines_dropped() {
    assert_eq!(parse_ignore("  a  \n\n \t \nb\r\n"), vec!["a", "b"]);
}

#[test]
fn read_1_5_space_after_bang_trimmed() {
    assert_eq!(
        parse_ignore("! /inverted/abs/path"),
        vec!["!inverted/abs/path"]
    );
}

#[test]
fn read_1_6_patterns_cleaned() {
    assert_eq!(
        parse_ignore("a//b\n./a\na/../b\ndir/\n"),
        vec!["a/b", "a", "b", "dir"]
    );
}

#[test]
fn read_1_7_one_leading_slash_removed() {
    assert_eq!(
        parse_ignore("/test2\n/a/file/here\n/"),
        vec!["test2", "a/file/here", "/"]
    );
}

#[test]
fn read_1_8_lone_bang_kept_by_reader() {
    assert_eq!(parse_ignore("!\n! \n"), vec!["!", "!"]);
}

// ------------------------------------------------------ 2. matching

#[test]
fn match_2_1_last_match_wins() {
    assert!(!m(&["*.go", "!fileutils.go"], "fileutils.go"));
    assert!(m(&["!fileutils.go", "*.go"], "fileutils.go"));
}

#[test]
fn match_2_2_parent_match_covers_children() {
    for p in ["docs", "docs/", "docs/*"] {
        assert!(m(&[p], "docs/README.md"), "{p}");
        assert!(
            !m(&[p, "!docs/README.md"], "docs/README.md"),
            "{p} + exception"
        );
    }
}

#[test]
fn match_2_3_directory_exception_reincludes_below() {
    assert!(!m(&["**", "!util/docker/web"], "util/docker/web/foo"));
    assert!(m(
        &["**", "!util/docker/web", "util/docker/web/foo"],
        "util/docker/web/foo"
    ));
}

#[test]
fn match_2_4_root_never_matches() {
    assert!(!rbuild::context::matches_or_parent_matches(".", &["*.go"]).unwrap());
    assert!(!rbuild::context::matches_or_parent_matches("./", &["*"]).unwrap());
}

#[test]
fn match_2_5_empty_list_matches_nothing() {
    let empty: [&str; 0] = [];
    assert!(!m(&empty, "anything"));
}

#[test]
fn match_2_6_star_and_star_go() {
    assert!(m(&["*"], "fileutils.go"));
    assert!(m(&["*.go"], "fileutils.go"));
}

#[test]
fn match_2_7_single_star_and_question_do_not_cross_slash() {
    assert!(m(&["a*/b"], "abc/b"));
    assert!(!m(&["a*/b"], "a/c/b"));
    assert!(!m(&["a?b"], "a/b"));
    assert!(!m(&["a*b"], "a/b"));
    assert!(m(&["a/*.txt"], "a/file.txt"));
    assert!(!m(&["a/*.txt"], "a/dir/file.txt"));
}

#[test]
fn match_2_8_question_matches_one_rune() {
    assert!(m(&["a?b"], "a☺b"));
    assert!(!m(&["a???b"], "a☺b"));
    assert!(m(&["[a-ζ]*"], "α"));
    assert!(!m(&["*[a-ζ]"], "A"));
}

#[test]
fn match_2_9a_lone_bang_is_an_error() {
    assert!(matches!(bad(&["!"]), ContextError::LoneExclusion));
    assert!(matches!(bad(&["a", "!"]), ContextError::LoneExclusion));
    assert!(rbuild::context::matches_or_parent_matches("a", &["!"]).is_err());
}

#[test]
fn match_2_9b_malformed_classes_are_bad_patterns() {
    for p in [
        "[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "a\\",
    ] {
        match bad(&[p]) {
            ContextError::BadPattern { pattern } => assert_eq!(pattern, p),
            other => panic!("{p}: unexpected {other:?}"),
        }
    }
}

#[test]
fn match_2_9c_error_at_match_time_repeats_without_crash() {
    let pm = PatternMatcher::new(&["[Local-Only]/"]).expect("passes construction");
    for _ in 0..3 {
        let err = pm.matches("Local-Only").expect_err("fails at match time");
        assert!(err.to_string().contains("[Local-Only]"), "{err}");
    }
}

#[test]
fn match_2_10_character_classes() {
    assert!(m(&["a[b-d]e"], "ace"));
    assert!(!m(&["a[b-d]e"], "ae"));
    assert!(!m(&["a[b-d]e"], "aae"));
    assert!(m(&["a[^b-d]e"], "aze"));
    assert!(!m(&["ab[^c]"], "abc"));
    assert!(m(&["[\\]a]"], "]"));
    assert!(m(&["[\\-]"], "-"));
    assert!(m(&["[x\\-]"], "-"));
    assert!(m(&["[\\-x]"], "-"));
    assert!(m(&["[x\\-]"], "x"));
    assert!(!m(&["[x\\-]"], "y"));
}

#[test]
fn match_2_11_escapes() {
    assert!(m(&["a\\*b"], "a*b"));
    assert!(!m(&["a\\*b"], "ab"));
    assert!(!m(&["a\\*b"], "axb"));
    assert!(m(&["a\\\\"], "a\\"));
}

#[test]
fn match_2_12_regex_metacharacters_literal() {
    assert!(m(&["abc.def"], "abc.def"));
    assert!(!m(&["abc.def"], "abcZdef"));
    assert!(m(&["a(b)c/def"], "a(b)c/def"));
    assert!(!m(&["a(b)c/def"], "abc/def"));
    assert!(m(&["a.|)$(}+{bc"], "a.|)$(}+{bc"));
    assert!(!m(&["a.|)$(}+{bc"], "a"));
    let wheel = "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl";
    assert!(m(&[wheel], wheel));
    assert!(m(&["dist/*.whl"], wheel));
}

#[test]
fn match_2_13a_double_star_alone_matches_everything() {
    for p in ["**", "**/", "**/**"] {
        for path in ["file", "file/", "/", "dir/file", "dir/file/"] {
            assert!(m(&[p], path), "{p} vs {path}");
        }
    }
}

#[test]
fn match_2_13b_dir_double_star_matches_below_not_dir() {
    assert!(!m(&["abc/**"], "abc"));
    assert!(m(&["abc/**"], "abc/def"));
    assert!(m(&["abc/**"], "abc/def/ghi"));
}

#[test]
fn match_2_13c_double_star_dir_matches_at_any_depth() {
    assert!(m(&["**/dir"], "dir"));
    assert!(m(&["**/dir"], "x/dir"));
    assert!(m(&["**/dir"], "dir/file"));
    for p in ["foo/bar", "dir/foo/bar", "dir/dir2/foo/bar"] {
        assert!(m(&["**/foo/bar"], p), "{p}");
    }
}

#[test]
fn match_2_13d_double_star_suffix_forms() {
    for p in ["file", "dir/file", "dir/dir/file"] {
        assert!(m(&["**file"], p), "{p}");
    }
    for pat in ["**/file*", "**/file*txt", "**/file*.txt*"] {
        assert!(m(&[pat], "dir/dir/file.txt"), "{pat}");
    }
}

#[test]
fn match_2_13e_double_star_may_match_zero_dirs() {
    assert!(m(&["**/**/*.txt"], "file.txt"));
    assert!(m(&["**/*.txt"], "file.txt"));
    assert!(!m(&["**/**/*.txt2"], "dir/dir/file.txt"));
}

#[test]
fn match_2_13f_double_star_inside_segment() {
    for p in ["a/file.txt", "a/dir/file.txt", "a/dir/dir/file.txt"] {
        assert!(m(&["a**/*.txt"], p), "{p}");
    }
    assert!(m(&["a/*.txt**"], "a/file.txt"));
}

#[test]
fn match_2_13g_double_star_then_dir_star() {
    assert!(m(&["**/dir2/*"], "dir/dir2/file"));
    assert!(m(&["**/dir2/*"], "dir/dir2/file/"));
    assert!(m(&["**/dir2/**"], "dir/dir2/dir3/file"));
}

#[test]
fn match_2_13h_dotfiles() {
    assert!(m(&["**/.foo"], ".foo"));
    assert!(!m(&["**/.foo"], "bar.foo"));
    assert!(m(&[".*"], ".foo"));
    assert!(!m(&[".*"], "foo"));
}

#[test]
fn match_2_14_incremental_agrees_with_full_on_a_tree() {
    // `m` already checks all three ways; run it over a tree with parents
    // that match different patterns than their children.
    let pats = [
        "**",
        "!util",
        "util/x*",
        "!util/x1/keep",
        "*.md",
        "!README*.md",
    ];
    let expect = [
        ("util", false),
        ("util/a", false),
        ("util/x1", true),
        ("util/x1/keep", false),
        ("util/x1/drop", true),
        ("README.md", false),
        ("other.md", true),
        ("deep/a/b", true),
    ];
    for (p, want) in expect {
        assert_eq!(m(&pats, p), want, "{p}");
    }
}

#[test]
fn match_2_15_compilation_kinds() {
    for p in ["abc.def", "a(b)c/def", "plain"] {
        assert_eq!(kind(p), "exact", "{p}");
    }
    assert_eq!(kind("dir/**"), "prefix");
    for p in ["**", "**/dir", "**file", "**/foo/bar"] {
        assert_eq!(kind(p), "suffix", "{p}");
    }
    for p in ["*.go", "a?b", "**/*.txt", "a[bc]", "a\\*b"] {
        assert_eq!(kind(p), "regexp", "{p}");
    }
}

#[test]
fn match_2_16_patterns_trimmed_when_built() {
    assert!(!m(&["docs", "  !docs/README.md  "], "docs/README.md"));
    assert!(m(&["  docs  ", "", "   "], "docs/x"));
}

#[test]
fn match_globset_differences_pinned() {
    // The places the guide expects `globset` to differ from moby.
    assert!(m(&["docs"], "docs/a/b")); // parent coverage
    assert!(!m(&["dir/**"], "dir")); // dir/** excludes dir itself? no
    assert!(m(&["**file"], "xfile")); // suffix without slash
    assert!(m(&["[!a]"], "!")); // `!` is not negation in a class
    assert!(!m(&["[!a]"], "b"));
    assert!(m(&["a\\\\b"], "a\\b")); // escaped backslash
}

// ------------------------------------ 3. end-to-end (BuildKit tests)

#[test]
fn e2e_3_1_dockerfile_and_ignore_file_may_exclude_themselves() {
    let dir = tmp_context(
        &["foo", "bar", "baz", "bay", "Dockerfile"],
        "ba*\nDockerfile\n!bay\n.dockerignore\n",
    );
    assert_eq!(scanned(dir.path()), set(&["bay", "foo"]));
    let ignore = load_ignore(dir.path(), None).unwrap();
    let idx = scan(dir.path(), "Dockerfile", &ignore, None).unwrap();
    let control: Vec<&str> = idx.control_files().iter().map(|e| e.rel.as_str()).collect();
    assert_eq!(control, vec!["Dockerfile", ".dockerignore"]);
    assert!(idx.control_files().iter().all(|e| e.digest.is_some()));
}

#[test]
fn e2e_3_2_lone_bang_fails_promptly() {
    let dir = tmp_context(&["Dockerfile"], "!\n");
    let t = std::time::Instant::now();
    let err = load_ignore(dir.path(), None).expect_err("must fail");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains(".dockerignore") && chain.contains("illegal exclusion"),
        "{chain}"
    );
}

#[test]
fn e2e_3_3_per_dockerfile_ignore_file_wins() {
    let dir = tmp_context(&["foo", "bar", "Dockerfile", "Dockerfile2"], "foo\n");
    fs::write(dir.path().join("Dockerfile2.dockerignore"), "bar\n").unwrap();
    let r1 = load_ignore(dir.path(), Some(Path::new("Dockerfile"))).unwrap();
    let r2 = load_ignore(dir.path(), Some(Path::new("Dockerfile2"))).unwrap();
    assert_eq!(r1.patterns, vec!["foo"]);
    assert_eq!(r2.patterns, vec!["bar"]);
    let i1 = scan(dir.path(), "Dockerfile", &r1, None).unwrap();
    let i2 = scan(dir.path(), "Dockerfile2", &r2, None).unwrap();
    assert!(i1.get("foo").is_none() && i1.get("bar").is_some());
    assert!(i2.get("bar").is_none() && i2.get("foo").is_some());
}

#[test]
fn e2e_3_4a_copy_of_ignored_dockerfile_is_flagged_and_fails() {
    let dir = tmp_context(&["Dockerfile", "a"], "Dockerfile\n");
    let ignore = load_ignore(dir.path(), None).unwrap();
    let idx = scan(dir.path(), "Dockerfile", &ignore, None).unwrap();
    assert!(idx.is_ignored("Dockerfile").unwrap());
    assert!(idx.copy_source_ignored("Dockerfile").unwrap());
    assert!(idx.copy_source_ignored("./Dockerfile").unwrap());
    assert!(!idx.copy_source_ignored("a").unwrap());
    let err = idx.select("Dockerfile").expect_err("not in context");
    assert!(err.to_string().contains("not found") && err.to_string().contains("Dockerfile"));
}

#[test]
fn e2e_3_4b_allowlisted_dockerfile_not_ignored() {
    let dir = tmp_context(&["Dockerfile", "a"], "**\n!Dockerfile\n");
    let ignore = load_ignore(dir.path(), None).unwrap();
    let idx = scan(dir.path(), "Dockerfile", &ignore, None).unwrap();
    assert!(!idx.is_ignored("./Dockerfile").unwrap());
    // Exceptions present: BuildKit does not lint at all.
    assert!(!idx.copy_source_ignored("a").unwrap());
    assert!(!idx.copy_source_ignored(".").unwrap());
    assert!(idx.select("./Dockerfile").is_ok());
    let all: Vec<String> = idx
        .select(".")
        .unwrap()
        .iter()
        .map(|s| s.dest_rel.clone())
        .collect();
    assert_eq!(all, vec!["", "Dockerfile"]);
}

#[test]
fn e2e_3_4c_ignore_rules_do_not_apply_to_root() {
    let dir = tmp_context(&["Dockerfile", ".hidden"], ".*\n");
    let ignore = load_ignore(dir.path(), None).unwrap();
    let idx = scan(dir.path(), "Dockerfile", &ignore, None).unwrap();
    assert!(!idx.is_ignored(".").unwrap());
    assert!(idx.is_ignored(".hidden").unwrap());
    assert!(idx.select(".").is_ok());
}

#[test]
fn e2e_3_4d_star_ignored_flags_copy_of_dot() {
    let dir = tmp_context(&["Dockerfile", "a"], "*\n");
    let ignore = load_ignore(dir.path(), None).unwrap();
    let idx = scan(dir.path(), "Dockerfile", &ignore, None).unwrap();
    assert!(idx.copy_source_ignored(".").unwrap());
    assert!(idx.copy_source_ignored("a").unwrap());
}

#[test]
fn e2e_3_4e_stage_paths_are_not_the_context() {
    // `COPY --from=base /foobar` with `foobar` ignored: ignore rules only
    // filter the local context, so the scan drops it and nothing else is
    // asked of this module; the engine must not lint stage sources.
    let dir = tmp_context(&["Dockerfile", "foobar"], "foobar\n");
    let ignore = load_ignore(dir.path(), None).unwrap();
    let idx = scan(dir.path(), "Dockerfile", &ignore, None).unwrap();
    assert!(idx.get("foobar").is_none());
    assert!(idx.get("Dockerfile").is_some());
}

#[test]
fn e2e_3_5_output_folder_ignored() {
    let dir = tmp_context(&["out2/x", "src/a", "Dockerfile"], "out2\n");
    assert_eq!(
        scanned(dir.path()),
        set(&[".dockerignore", "Dockerfile", "src", "src/a"])
    );
}

// --------------------------- 4. buildah conformance contexts (corpus)

fn case(rel: &str) -> Option<(tempfile::TempDir, BTreeSet<String>)> {
    let src = corpus()?.join("dockerignore").join(rel);
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&src, dir.path());
    let s = scanned(dir.path());
    Some((dir, s))
}

fn select_fails(root: &Path, src: &str) -> bool {
    let ignore = load_ignore(root, None).unwrap();
    let idx = scan(root, "Dockerfile", &ignore, None).unwrap();
    match idx.select(src) {
        Ok(_) => false,
        Err(e) => {
            assert!(e.to_string().contains("not found"), "{e}");
            true
        }
    }
}

#[test]
fn buildah_integration1_subdir_excluded_copy_fails() {
    let Some((dir, s)) = case("integration1") else {
        return;
    };
    // `!*/sub1*` has a wildcard in its first element, so it cannot reach
    // into the excluded `subdir` (Docker's prefix rule).
    assert_eq!(s, set(&["test2.txt"]));
    assert!(select_fails(dir.path(), "subdir"));
    assert!(!select_fails(dir.path(), "./"));
}

#[test]
fn buildah_integration2_unmatched_pattern_copies_all() {
    let Some((_dir, s)) = case("integration2") else {
        return;
    };
    assert_eq!(
        s,
        set(&[
            ".dockerignore",
            "Dockerfile",
            "subdir",
            "subdir/sub1.txt",
            "subdir/subsubdir",
            "subdir/subsubdir/subsub1.txt"
        ])
    );
}

#[test]
fn buildah_integration3_mixed_rules_and_failing_copy() {
    let Some((dir, s)) = case("integration3") else {
        return;
    };
    assert_eq!(
        s,
        set(&[
            "README.md",
            "src",
            "src/Makefile",
            "src/cmd",
            "src/cmd/Makefile",
            "src/lib",
            "src/lib/Makefile",
            "test2.txt",
            "test3.txt"
        ])
    );
    assert!(!select_fails(dir.path(), "."));
    assert!(!select_fails(dir.path(), "src"));
    assert!(select_fails(dir.path(), "test1.txt"));
}

#[test]
fn buildah_minimal_test_exception_below_excluded_dir() {
    let Some((dir, s)) = case("minimal_test") else {
        return;
    };
    assert_eq!(
        s,
        set(&[
            ".dockerignore",
            "Dockerfile",
            "stuff",
            "stuff/huge",
            "stuff/huge/usr",
            "stuff/huge/usr/bin",
            "stuff/huge/usr/bin/file1",
            "stuff/huge/usr/bin/file2"
        ])
    );
    assert!(!select_fails(dir.path(), "stuff"));
}

#[test]
fn buildah_empty_comment_only_is_no_ignore_file() {
    let Some((_dir, s)) = case("empty") else {
        return;
    };
    assert_eq!(s, set(&[".dockerignore", "Dockerfile", "test1.txt"]));
}

#[test]
fn buildah_dockerignore_irrelevant_patterns_match_nothing() {
    let Some((dir, _)) = case("empty") else {
        return;
    };
    fs::write(dir.path().join(".dockerignore"), "**/*-a\n!**/*-c\n").unwrap();
    assert_eq!(
        scanned(dir.path()),
        set(&[".dockerignore", "Dockerfile", "test1.txt"])
    );
}

#[test]
fn buildah_exceptions_skip_wildcard_exception_does_not_reach_in() {
    let Some((_dir, s)) = case("exceptions-skip") else {
        return;
    };
    assert_eq!(s, set(&[".dockerignore", "Dockerfile"]));
}

#[test]
fn buildah_exceptions_weirdness_1() {
    let Some((_dir, s)) = case("exceptions-weirdness-1") else {
        return;
    };
    assert_eq!(s, set(&[".dockerignore", "Dockerfile"]));
}

#[test]
fn buildah_exceptions_weirdness_2() {
    let Some((_dir, s)) = case("exceptions-weirdness-2") else {
        return;
    };
    // The literal `!subdir/sub3*` opens `subdir`; inside it `!*/sub1*`
    // then applies as well.
    assert_eq!(
        s,
        set(&[
            ".dockerignore",
            "Dockerfile",
            "subdir",
            "subdir/sub1.txt",
            "subdir/sub3.txt"
        ])
    );
}

#[test]
fn buildah_allowlist_subdir_file() {
    let Some((dir, s)) = case("allowlist/subdir-file") else {
        return;
    };
    assert_eq!(s, set(&["folder1", "folder1/file1"]));
    assert!(!select_fails(dir.path(), "folder1"));
}

#[test]
fn buildah_allowlist_subdir_nofile_parent_not_brought_back() {
    let Some((dir, s)) = case("allowlist/subdir-nofile") else {
        return;
    };
    assert!(s.is_empty(), "{s:?}");
    assert!(select_fails(dir.path(), "folder1"));
}

#[test]
fn buildah_allowlist_subsubdir_file() {
    let Some((_dir, s)) = case("allowlist/subsubdir-file") else {
        return;
    };
    assert_eq!(
        s,
        set(&["folder", "folder/subfolder", "folder/subfolder/file"])
    );
}

#[test]
fn buildah_allowlist_subsubdir_nofile() {
    let Some((dir, s)) = case("allowlist/subsubdir-nofile") else {
        return;
    };
    assert!(s.is_empty(), "{s:?}");
    assert!(!select_fails(dir.path(), "."));
}

#[test]
fn buildah_allowlist_subsubdir_nosubdir() {
    let Some((_dir, s)) = case("allowlist/subsubdir-nosubdir") else {
        return;
    };
    assert!(s.is_empty(), "{s:?}");
}

#[test]
fn buildah_allowlist_nothing_dot_and_slash() {
    for c in ["allowlist/nothing-dot", "allowlist/nothing-slash"] {
        let Some((dir, s)) = case(c) else { return };
        assert!(s.is_empty(), "{c}: {s:?}");
        let ignore = load_ignore(dir.path(), None).unwrap();
        let idx = scan(dir.path(), "Dockerfile", &ignore, None).unwrap();
        for src in [".", "/"] {
            let sel = idx.select(src).unwrap();
            assert_eq!(sel.len(), 1, "{c} {src}: only the root itself");
            assert_eq!(sel[0].dest_rel, "");
        }
    }
}

const ALTERNATING_ADDS: [&str; 7] = [
    "subdir",
    "subdir/subdir1",
    "subdir/subdir1/subdir2",
    "subdir/subdir1/subdir2/subdir3",
    "subdir/subdir1/subdir2/subdir3/subdir4",
    "subdir/subdir1/subdir2/subdir3/subdir4/subdir5",
    "subdir/subdir1/subdir2/subdir3/subdir4/subdir5/file",
];

/// Index (0-based) of the first ADD source that fails, if any.
fn first_failing_add(root: &Path) -> Option<usize> {
    ALTERNATING_ADDS.iter().position(|s| select_fails(root, s))
}

#[test]
fn buildah_allowlist_alternating_succeeds() {
    let Some((dir, _)) = case("allowlist/alternating") else {
        return;
    };
    assert_eq!(first_failing_add(dir.path()), None);
}

#[test]
fn buildah_allowlist_alternating_nothing_fails_at_line_7() {
    let Some((dir, _)) = case("allowlist/alternating-nothing") else {
        return;
    };
    // Dockerfile line 7 is the sixth ADD (index 5): subdir5.
    assert_eq!(first_failing_add(dir.path()), Some(5));
}

#[test]
fn buildah_allowlist_alternating_other_fails_at_line_7() {
    let Some((dir, _)) = case("allowlist/alternating-other") else {
        return;
    };
    assert_eq!(first_failing_add(dir.path()), Some(5));
}

// -------- populated tree (inline buildah cases), COPY . and COPY *

/// The populated tree with its symlinks restored: the stored copy holds
/// them as small files whose text is the link target.
fn populated(ignore: &str) -> Option<tempfile::TempDir> {
    let src = corpus()?.join("dockerignore/populated");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&src, dir.path());
    for e in walkdir::WalkDir::new(dir.path()) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let text = fs::read_to_string(e.path()).unwrap();
            if text.starts_with("../") && !text.contains('\n') {
                fs::remove_file(e.path()).unwrap();
                symlink(&text, e.path()).unwrap();
            }
        }
    }
    fs::write(dir.path().join(".dockerignore"), ignore).unwrap();
    Some(dir)
}

const POPULATED_ALL: [&str; 19] = [
    ".dockerignore",
    ".dotfile-a.txt",
    "file-a.txt",
    "file-b.txt",
    "file-c.txt",
    "subdir-b",
    "subdir-b/.dotfile-b.txt",
    "subdir-c",
    "subdir-c/file-b.txt",
    "subdir-c/file-c.txt",
    "subdir-e",
    "subdir-e/file-a.txt",
    "subdir-e/file-b.txt",
    "subdir-e/file-n.txt",
    "subdir-e/subdir-f",
    "subdir-e/subdir-f/file-a.txt",
    "subdir-e/subdir-f/file-n.txt",
    "subdir-e/subdir-f/file-o.txt",
    "subdir-e/subdir-f/subdir-g",
];

fn all_but(prefixes: &[&str]) -> BTreeSet<String> {
    let mut s: BTreeSet<String> = POPULATED_ALL.iter().map(|s| s.to_string()).collect();
    s.insert("subdir-e/subdir-f/subdir-g/subdir-b".into());
    s.retain(|p| {
        !prefixes
            .iter()
            .any(|x| p == x || p.starts_with(&format!("{x}/")))
    });
    s
}

/// Checks `COPY . subdir/` and `COPY * subdir/` for one pattern set: `.`
/// copies the kept tree; `*` copies each kept top-level entry, a directory
/// by its contents, so its destination paths lose the first element.
fn check_populated(ignore: &str, expect: BTreeSet<String>) {
    let Some(dir) = populated(ignore) else { return };
    let rules = load_ignore(dir.path(), None).unwrap();
    let idx = scan(dir.path(), "Dockerfile", &rules, None).unwrap();
    let dot: BTreeSet<String> = idx
        .select(".")
        .unwrap()
        .iter()
        .filter(|s| !s.dest_rel.is_empty())
        .map(|s| s.dest_rel.clone())
        .collect();
    assert_eq!(dot, expect, "COPY . with {ignore:?}");
    let star: BTreeSet<(String, String)> = idx
        .select("*")
        .unwrap()
        .iter()
        .filter(|s| !s.dest_rel.is_empty())
        .map(|s| (s.dest_rel.clone(), s.entry.rel.clone()))
        .collect();
    let want: BTreeSet<(String, String)> = expect
        .iter()
        .map(|p| match p.split_once('/') {
            Some((_, rest)) => (rest.to_string(), p.clone()),
            None => (p.clone(), p.clone()),
        })
        .filter(|(d, src)| !(d == src && idx.get(src).unwrap().is_dir()))
        .collect();
    assert_eq!(star, want, "COPY * with {ignore:?}");
    let link = idx.get("subdir-c/file-b.txt");
    if let Some(l) = link {
        assert!(matches!(l.kind, rbuild::context::EntryKind::Symlink { .. }));
    }
}

#[test]
fn populated_a_minus_a_plus_c_matches_nothing() {
    check_populated("**/*-a\n!**/*-c\n", all_but(&[]));
}

#[test]
fn populated_only_exception_matches_nothing() {
    check_populated("!**/*-c\n", all_but(&[]));
}

#[test]
fn populated_subdir_c() {
    check_populated("subdir-c\n", all_but(&["subdir-c"]));
}

#[test]
fn populated_any_depth_subdir_c() {
    check_populated("**/subdir-c\n", all_but(&["subdir-c"]));
}

#[test]
fn populated_subdir_star() {
    check_populated("subdir-*\n", all_but(&["subdir-b", "subdir-c", "subdir-e"]));
}

#[test]
fn populated_any_depth_subdir_star() {
    check_populated(
        "**/subdir-*\n",
        all_but(&["subdir-b", "subdir-c", "subdir-e"]),
    );
}

#[test]
fn populated_any_depth_subdir_f() {
    check_populated("**/subdir-f\n", all_but(&["subdir-e/subdir-f"]));
}

#[test]
fn populated_any_depth_subdir_b_includes_symlink_named_subdir_b() {
    check_populated(
        "**/subdir-b\n",
        all_but(&["subdir-b", "subdir-e/subdir-f/subdir-g/subdir-b"]),
    );
}

#[test]
fn populated_subdir_e_with_wildcard_exception_pruned() {
    check_populated("**/subdir-e\n!**/subdir-f\n", all_but(&["subdir-e"]));
}

#[test]
fn populated_subdir_f_with_wildcard_exception_pruned() {
    check_populated(
        "**/subdir-f\n!**/subdir-g\n",
        all_but(&["subdir-e/subdir-f"]),
    );
}

// ------------------------------- COPY --exclude over the same trees

fn excl(src: &str, excludes: &[&str], ignore: &str) -> Option<BTreeSet<String>> {
    let dir = populated(ignore)?;
    let rules = load_ignore(dir.path(), None).unwrap();
    let idx = scan(dir.path(), "Dockerfile", &rules, None).unwrap();
    let opts = SelectOptions {
        excludes: excludes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    Some(
        idx.select_with(src, &opts)
            .unwrap()
            .iter()
            .filter(|s| !s.dest_rel.is_empty())
            .map(|s| s.dest_rel.clone())
            .collect(),
    )
}

#[test]
fn exclude_any_depth_c() {
    let Some(got) = excl("./", &["**/*-c"], "") else {
        return;
    };
    assert_eq!(got, all_but(&["subdir-c"]));
}

#[test]
fn exclude_txt_at_top_of_root_source() {
    let Some(got) = excl("/", &["*.txt"], "") else {
        return;
    };
    let want = all_but(&[".dotfile-a.txt", "file-a.txt", "file-b.txt", "file-c.txt"]);
    assert_eq!(got, want);
}

#[test]
fn exclude_top_level_c() {
    let Some(got) = excl(".", &["*-c"], "") else {
        return;
    };
    assert_eq!(got, all_but(&["subdir-c"]));
}

#[test]
fn exclude_quoted_exception_alone_excludes_nothing() {
    let Some(got) = excl("./", &["!**/*-c"], "") else {
        return;
    };
    assert_eq!(got, all_but(&[]));
}

#[test]
fn exclude_is_relative_to_source_dir() {
    let Some(root) = corpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    copy_tree(
        &root.join("dockerignore/exclude_subdir_under_source"),
        dir.path(),
    );
    let idx = scan(dir.path(), "Dockerfile", &IgnoreRules::default(), None).unwrap();
    let pick = |ex: &[&str]| -> BTreeSet<String> {
        let opts = SelectOptions {
            excludes: ex.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        idx.select_with("app/", &opts)
            .unwrap()
            .iter()
            .filter(|s| !s.dest_rel.is_empty())
            .map(|s| s.dest_rel.clone())
            .collect()
    };
    assert_eq!(
        pick(&["storage/views"]),
        set(&["storage", "storage/cache", "storage/cache/cache_file"])
    );
    assert_eq!(
        pick(&["storage/views/test_file", "!storage/views/exception"]),
        set(&[
            "storage",
            "storage/cache",
            "storage/cache/cache_file",
            "storage/views",
            "storage/views/exception"
        ])
    );
}

// ------------------- reference builder: buildah on the same contexts

/// Runs buildah (isolated storage under a temp dir) and returns its stdout.
fn buildah(store: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("buildah")
        .arg("--root")
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(store.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `COPY . /` with buildah, as the reference for what Docker sends.
fn buildah_copy_all(store: &Path, ctx: &Path) -> BTreeSet<String> {
    let df = store.join("Dockerfile.all");
    fs::write(&df, "FROM scratch\nCOPY . /\n").unwrap();
    let (ctx_s, df_s) = (ctx.to_str().unwrap(), df.to_str().unwrap());
    buildah(store, &["bud", "-q", "-f", df_s, "-t", "oracle", ctx_s]).expect("buildah bud");
    let c = buildah(store, &["from", "-q", "oracle"]).unwrap();
    let mnt = PathBuf::from(buildah(store, &["mount", &c]).unwrap());
    let got = walkdir::WalkDir::new(&mnt)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            e.path()
                .strip_prefix(&mnt)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    buildah(store, &["rm", &c]).unwrap();
    got
}

#[test]
fn buildah_reference_builder_agrees_on_every_context() {
    if common::tool("buildah", "buildah").is_none()
        || !common::require_root("buildah as a reference builder")
    {
        return;
    }
    let Some(root) = corpus() else { return };
    let store = tempfile::tempdir().unwrap();
    for c in [
        "integration1",
        "integration2",
        "integration3",
        "minimal_test",
        "empty",
        "exceptions-skip",
        "exceptions-weirdness-1",
        "exceptions-weirdness-2",
        "allowlist/subdir-file",
        "allowlist/subdir-nofile",
        "allowlist/subsubdir-file",
        "allowlist/subsubdir-nofile",
        "allowlist/alternating",
        "allowlist/alternating-nothing",
        "allowlist/alternating-other",
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&root.join("dockerignore").join(c), dir.path());
        assert_eq!(
            scanned(dir.path()),
            buildah_copy_all(store.path(), dir.path()),
            "{c}: rbuild scan vs buildah"
        );
    }
}

// ------------- the same contexts under BuildKit's current pruning rule

fn scanned_buildkit(root: &Path) -> BTreeSet<String> {
    let mut ignore = load_ignore(root, None).expect("ignore file loads");
    ignore.matcher.set_prune_rule(PruneRule::BuildKit);
    let idx = scan(root, "Dockerfile", &ignore, None).expect("scan");
    idx.entries().map(|e| e.rel.clone()).collect()
}

#[test]
fn buildkit_rule_wildcard_exception_reaches_into_excluded_dirs() {
    let Some((dir, _)) = case("integration1") else {
        return;
    };
    assert_eq!(
        scanned_buildkit(dir.path()),
        set(&["subdir", "subdir/sub1.txt", "test2.txt"])
    );
    let Some((dir, _)) = case("exceptions-skip") else {
        return;
    };
    assert_eq!(
        scanned_buildkit(dir.path()),
        set(&[
            ".dockerignore",
            "Dockerfile",
            "volume",
            "volume/data",
            "volume/data/oneline.txt"
        ])
    );
}

#[test]
fn buildkit_rule_equals_classic_for_plain_exceptions() {
    for c in [
        "minimal_test",
        "allowlist/subdir-file",
        "allowlist/subdir-nofile",
        "allowlist/alternating",
        "allowlist/alternating-other",
    ] {
        let Some((dir, classic)) = case(c) else {
            return;
        };
        assert_eq!(scanned_buildkit(dir.path()), classic, "{c}");
    }
}
