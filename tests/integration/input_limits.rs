//! Hostile input through the real binary: Dockerfiles and tags that used to
//! abort rbuild (stack overflow, exit 134), take minutes, grow memory
//! without bound, or land in `index.json` although docker refuses them.
//! Speed is never asserted here; the measured times are in
//! docs/benchmarks.md ("Hostile input").

use crate::common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::{stderr, Env};

/// Writes `text` as the Dockerfile of a fresh context; returns its path.
fn dockerfile(env: &Env, name: &str, text: &str) -> PathBuf {
    let ctx = env.context(name, &[("Dockerfile", text)]);
    ctx.join("Dockerfile")
}

fn check(env: &Env, df: &Path) -> std::process::Output {
    env.rbuild(&[
        "check",
        "-f",
        df.to_str().unwrap(),
        df.parent().unwrap().to_str().unwrap(),
    ])
}

#[test]
fn nested_substitution_9000_deep_is_an_error_at_its_line() {
    let env = Env::new();
    let word = "${a:-".repeat(9000);
    let df = dockerfile(&env, "deep", &format!("FROM scratch\nENV X={word}\n"));
    let out = check(&env, &df);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a check error, not an abort: {err:.400}"
    );
    let want = format!("{}:2:", df.display());
    assert!(err.contains(&want), "names FILE:LINE: {err:.400}");
    assert!(err.contains("nested deeper than 64 levels"), "{err:.400}");
    assert!(
        err.len() < 4000,
        "the 45 kB word is not echoed whole ({} bytes)",
        err.len()
    );
}

#[test]
fn fifty_thousand_env_lines_check_fine() {
    let env = Env::new();
    let mut text = String::from("FROM scratch\n");
    for i in 0..50_000 {
        writeln!(text, "ENV A{i}={i}").unwrap();
    }
    text.push_str("RUN echo $A49999\n");
    let df = dockerfile(&env, "envs", &text);
    let out = check(&env, &df);
    assert!(out.status.success(), "{:.600}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("(50001 steps)"), "{:.300}", summary);
}

#[test]
fn fifty_thousand_args_check_fine() {
    let env = Env::new();
    let mut text = String::from("FROM scratch\n");
    for i in 0..50_000 {
        if i == 0 {
            writeln!(text, "ARG B0=x").unwrap();
        } else {
            // Each refers to the one before, as build args often do.
            writeln!(text, "ARG B{i}=${{B{}}}", i - 1).unwrap();
        }
    }
    text.push_str("RUN echo $B49999\n");
    let df = dockerfile(&env, "args", &text);
    let out = check(&env, &df);
    assert!(out.status.success(), "{:.600}", stderr(&out));
}

#[test]
fn doubling_arg_chain_hits_the_size_cap_with_a_clear_error() {
    let env = Env::new();
    let mut text = String::from("FROM scratch\nARG A0=xxxxxxxxxxxxxxxx\n");
    for i in 1..=40 {
        writeln!(text, "ARG A{i}=${{A{}}}${{A{}}}", i - 1, i - 1).unwrap();
    }
    let df = dockerfile(&env, "double", &text);
    let out = check(&env, &df);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err:.600}");
    // 16 bytes doubled 17 times passes 1 MiB at A17, on line 19.
    let want = format!("{}:19:", df.display());
    assert!(err.contains(&want), "{err:.600}");
    assert!(
        err.contains("grows by more than 1048576 bytes"),
        "{err:.600}"
    );
    assert_eq!(
        err.matches("error:").count(),
        1,
        "reported once: {err:.900}"
    );
}

#[test]
fn copying_a_large_value_many_times_hits_the_env_cap() {
    let env = Env::new();
    // 480 kB, copied under new names: no single word grows past 1 MiB,
    // but the stage's environment would reach 480 MB.
    let mut text = String::from("FROM scratch\nARG A=");
    text.push_str(&"y".repeat(60_000));
    text.push_str("\nARG A0=$A$A$A$A$A$A$A$A\n");
    for i in 1..=1000 {
        writeln!(text, "ENV C{i}=$A0").unwrap();
    }
    let df = dockerfile(&env, "copies", &text);
    let out = check(&env, &df);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{:.600}", err);
    assert!(
        err.contains("ENV and ARG values exceed 8 MiB"),
        "{:.600}",
        err
    );
    assert_eq!(
        err.matches("error:").count(),
        1,
        "reported once: {:.900}",
        err
    );
}

#[test]
fn invalid_tags_are_refused_and_index_json_is_unchanged() {
    let env = Env::new();
    let ctx = env.context("img", &[("Dockerfile", "FROM scratch\nLABEL a=b\n")]);
    let ctx = ctx.to_str().unwrap();
    env.rbuild_ok(&["build", "-t", "good:v1", ctx]);
    let index = env.root().join("index.json");
    let before = std::fs::read(&index).unwrap();
    let long_tag = format!("app:{}", "t".repeat(300));
    let long_name = "a".repeat(300);
    let cases: [(&str, &str); 5] = [
        ("UPPER:tag", "repository name must be lowercase"),
        (&long_tag, "tag must be 1-128 characters"),
        (&long_name, "repository name is longer than 255 characters"),
        ("a@sha256:zz", "digest must be sha256:<64 lowercase hex>"),
        ("app/Sub:v1", "repository name must be lowercase"),
    ];
    for (bad, rule) in cases {
        let shown = format!("invalid reference `{bad}`: {rule}");
        let out = env.rbuild(&["build", "-t", bad, ctx]);
        let err = stderr(&out);
        assert!(!out.status.success(), "build -t {bad} must fail");
        assert!(err.contains(&shown), "build -t {bad}: {err}");
        let out = env.rbuild(&["tag", "good:v1", bad]);
        let err = stderr(&out);
        assert!(!out.status.success(), "tag {bad} must fail");
        assert!(err.contains(&shown), "tag {bad}: {err}");
        assert_eq!(
            std::fs::read(&index).unwrap(),
            before,
            "index.json after {bad}"
        );
    }
    let out = env.rbuild(&["pull", "UPPER:tag"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("must be lowercase"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&index).unwrap(), before);
    // A valid new tag still works, and `images` lists both.
    env.rbuild_ok(&["tag", "good:v1", "other/name:v2"]);
    let out = env.rbuild_ok(&["images"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("other/name") && listed.contains("good"),
        "{listed}"
    );
}

#[test]
fn tags_written_before_the_check_still_list_and_remove() {
    let env = Env::new();
    let ctx = env.context("img", &[("Dockerfile", "FROM scratch\nLABEL a=b\n")]);
    env.rbuild_ok(&["build", "-t", "good:v1", ctx.to_str().unwrap()]);
    // An older rbuild accepted upper case: edit index.json as it would have.
    let index = env.root().join("index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, text.replace("good:v1", "OLD:v1")).unwrap();
    let out = env.rbuild_ok(&["images"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("OLD"));
    env.rbuild_ok(&["rmi", "OLD:v1"]);
    let out = env.rbuild_ok(&["images"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("OLD"));
}

#[test]
fn dockerignore_line_of_100000_stars_matches_without_overflow() {
    use rbuild::context::{load_ignore, scan, PatternMatcher};
    let dir = tempfile::tempdir().unwrap();
    for f in ["a.txt", "sub/b.txt", "keep.md"] {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f).unwrap();
    }
    let stars = "*".repeat(100_000);
    std::fs::write(
        dir.path().join(".dockerignore"),
        format!("{stars}\n!keep.md\n"),
    )
    .unwrap();
    let ignore = load_ignore(dir.path(), None).expect("the ignore file loads");
    let idx = scan(dir.path(), "Dockerfile", &ignore, None).expect("scan");
    let kept: Vec<String> = idx.entries().map(|e| e.rel.clone()).collect();
    assert!(kept.contains(&"keep.md".to_string()), "{kept:?}");
    assert!(!kept.iter().any(|k| k.ends_with(".txt")), "{kept:?}");
    // An odd count ends in `*x`; `*a` repeated cannot be folded at all.
    let odd = format!("{}x", "*".repeat(99_999));
    let pm = PatternMatcher::new(&[odd]).unwrap();
    assert!(pm.matches("dir/fx").unwrap());
    assert!(!pm.matches("dir/f").unwrap());
    let pm = PatternMatcher::new(&["*a".repeat(50_000)]).unwrap();
    assert!(!pm.matches("aaaa/b").unwrap());
    assert!(!pm.matches(&"a".repeat(300)).unwrap());
}

#[test]
fn long_stage_chains_and_many_undefined_variables_check() {
    let env = Env::new();
    // Each stage inherits the growing environment of the one before it.
    let mut text = String::from("FROM scratch AS s0\n");
    for i in 0..8000 {
        writeln!(text, "FROM s{i} AS s{}\nENV B{i}=x", i + 1).unwrap();
    }
    let df = dockerfile(&env, "chain", &text);
    let out = check(&env, &df);
    assert!(out.status.success(), "{:.600}", stderr(&out));
    // Every UndefinedVar warning looks for a near name among those defined.
    let mut text = String::from("FROM scratch\n");
    for i in 0..8000 {
        writeln!(text, "ENV A{i}=$U{i}").unwrap();
    }
    let df = dockerfile(&env, "undefined", &text);
    let out = check(&env, &df);
    assert!(out.status.success(), "{:.600}", stderr(&out));
    assert_eq!(stderr(&out).matches("UndefinedVar").count(), 8000);
}

#[test]
fn many_stages_copying_a_large_environment_hit_the_plan_cap() {
    let env = Env::new();
    let mut text = String::from("FROM scratch AS big\nARG A=");
    text.push_str(&"y".repeat(60_000));
    text.push_str("\nARG B=$A$A$A$A$A$A$A$A\n");
    for i in 0..8 {
        writeln!(text, "ENV C{i}=$B").unwrap();
    }
    // 4 MiB of environment, inherited by 100 stages: 400 MiB of copies.
    for i in 0..100 {
        writeln!(text, "FROM big AS k{i}").unwrap();
    }
    let df = dockerfile(&env, "fanout", &text);
    let out = check(&env, &df);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err:.600}");
    assert!(
        err.contains("the planned steps exceed 256 MiB"),
        "{err:.600}"
    );
    assert_eq!(
        err.matches("error:").count(),
        1,
        "reported once: {err:.900}"
    );
}

#[test]
fn onbuild_chained_8000_times_is_an_error_not_a_stack_overflow() {
    let env = Env::new();
    let text = format!("FROM scratch\n{}RUN x\n", "ONBUILD ".repeat(8000));
    let df = dockerfile(&env, "onbuild", &text);
    let out = check(&env, &df);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err:.400}");
    assert!(err.contains(&format!("{}:2:", df.display())), "{err:.400}");
    assert!(
        err.contains("ONBUILD nested more than 16 levels"),
        "{err:.400}"
    );
}

#[test]
fn layer_entry_names_longer_than_path_max_are_refused() {
    use rbuild::layer::{unpack_layer, UnpackOptions};
    let deep = "a/".repeat(2500) + "f";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, &deep, &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        no_chown: true,
        ..UnpackOptions::default()
    };
    let err = unpack_layer(&tar[..], dir.path(), &opts).expect_err("refused");
    assert!(
        format!("{err:#}").contains("entry name of 5001 bytes is longer than 4096"),
        "{err:#}"
    );
}

#[test]
fn expose_ranges_repeated_on_one_line_are_deduplicated() {
    let env = Env::new();
    // 8,000 copies of the full port range: 500 million specs before.
    let text = format!("FROM scratch\nEXPOSE {}\n", "0-65535 ".repeat(8000));
    let df = dockerfile(&env, "expose", &text);
    let out = check(&env, &df);
    assert!(out.status.success(), "{:.600}", stderr(&out));
}
