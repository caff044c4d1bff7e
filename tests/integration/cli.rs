//! The binary's command-line shape: default subcommand, help, and clear
//! errors for what is not implemented.

use std::process::Command;

fn rbuild() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbuild"))
}

#[test]
fn help_lists_subcommands() {
    let out = rbuild().arg("--help").output().expect("run rbuild --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["build", "check", "history", "images", "push", "pull"] {
        assert!(text.contains(sub), "help lacks {sub}: {text}");
    }
    assert!(text.contains("--root"), "help lacks --root: {text}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = rbuild()
        .args(["build", "--no-such-flag", "."])
        .output()
        .expect("run rbuild");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

use crate::common;

use common::{stderr, stdout, Env};

#[test]
fn unknown_word_is_refused_with_a_suggestion() {
    let env = Env::new();
    let out = env.rbuild(&["imagse"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("did you mean `rbuild images`?"), "{err}");
    assert_eq!(err.matches("imagse").count(), 1, "{err}");
    assert!(!env.root().exists(), "no store is opened for a typo");
    // A word that is an existing directory is still a build context.
    env.context("imagse", &[("Dockerfile", "FROM scratch\nLABEL a=b\n")]);
    let out = Command::new(common::rbuild_bin())
        .args(["--root", env.root().to_str().unwrap(), "imagse"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn build_without_a_context_uses_the_current_directory() {
    let env = Env::new();
    let ctx = env.context("here", &[("Dockerfile", "FROM scratch\nLABEL x=y\n")]);
    let out = Command::new(common::rbuild_bin())
        .args([
            "--root",
            env.root().to_str().unwrap(),
            "build",
            "-t",
            "cwd:v1",
        ])
        .current_dir(&ctx)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cwd:v1"), "{}", stdout(&out));
}

#[test]
fn version_names_the_commit_and_features() {
    let out = rbuild().arg("version").output().unwrap();
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("rbuild {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("features: compression=gzip,zstd"), "{text}");
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let commit = text
        .lines()
        .find_map(|l| l.strip_prefix("commit: "))
        .expect("a commit line");
    match head {
        // Built from this checkout: the commit it was built from is an ancestor
        // of (or equal to) HEAD — tests may run after a new commit.
        Some(_) => {
            let st = Command::new("git")
                .args(["merge-base", "--is-ancestor", commit, "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(
                st.success(),
                "commit {commit} is not in this checkout's history"
            );
        }
        None => assert_eq!(commit, "unknown"),
    }
}

#[test]
fn unknown_instruction_suggests_and_prints_once() {
    let env = Env::new();
    let ctx = env.context("c", &[("Dockerfile", "FRM scratch\n")]);
    let out = env.rbuild(&["build", "--progress", "plain", ctx.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("Dockerfile:1:1: error: unknown instruction: FRM (did you mean FROM?)"),
        "{err}"
    );
    assert_eq!(err.matches("unknown instruction").count(), 1, "{err}");
    assert!(!err.starts_with("error: "), "no second error prefix: {err}");
}

#[test]
fn a_failed_step_prints_its_message_once() {
    let env = Env::new();
    // A registry nobody listens on: the pull step fails.
    let port = common::free_port();
    let df = format!("FROM 127.0.0.1:{port}/nothing:here\n");
    let ctx = env.context("c", &[("Dockerfile", &df)]);
    for progress in ["plain", "tty"] {
        let out = env.rbuild(&["build", "--progress", progress, ctx.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(5));
        let err = stderr(&out);
        // The final error once; each retry is a note of its own (in the
        // step's log, which the plain failure summary repeats as BuildKit's
        // does), never the final error again.
        assert_eq!(
            err.matches("after 5 attempts").count(),
            1,
            "{progress}: {err}"
        );
        for k in 1..5 {
            let note = format!("(attempt {k} of 5;");
            assert!(err.matches(&note).count() <= 2, "{progress}: {err}");
        }
    }
    let ctx = env.context("d", &[("Dockerfile", "FROM scratch\nCOPY missing /x\n")]);
    let out = env.rbuild(&["build", "--progress", "plain", ctx.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(
        err.matches("not found in build context").count(),
        1,
        "{err}"
    );
    assert!(err.contains("Dockerfile:2: COPY missing /x"), "{err}");
}

#[test]
fn images_and_inspect_formats_and_filters() {
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[("Dockerfile", "FROM scratch\nENV A=1 B=two\nLABEL k=v\n")],
    );
    let iid = env.path("iid");
    env.rbuild_ok(&[
        "build",
        "-t",
        "app:v1",
        "--iidfile",
        iid.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    env.rbuild_ok(&["tag", "app:v1", "other/x:2"]);
    let id = std::fs::read_to_string(&iid).unwrap();

    let q = stdout(&env.rbuild_ok(&["images", "-q"]));
    assert_eq!(q.lines().count(), 2, "{q}");
    assert!(
        q.lines()
            .all(|l| id.trim_start_matches("sha256:").starts_with(l)),
        "{q}"
    );
    let only = stdout(&env.rbuild_ok(&["images", "--filter", "reference=app*"]));
    assert!(only.contains("app") && !only.contains("other/x"), "{only}");
    let none = stdout(&env.rbuild_ok(&["images", "-q", "--filter", "reference=oth*"]));
    assert_eq!(none, "", "* does not cross /");
    let both = stdout(&env.rbuild_ok(&["images", "-q", "--filter", "reference=other/*:2"]));
    assert_eq!(both.lines().count(), 1);
    let json_lines = stdout(&env.rbuild_ok(&["images", "--format", "json"]));
    let repos: Vec<String> = json_lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["Repository"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(repos, ["app", "other/x"]);
    let t = stdout(&env.rbuild_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert_eq!(t, "app:v1\nother/x:2\n");
    let bad = env.rbuild(&["images", "--filter", "dangling=true"]);
    assert!(stderr(&bad).contains("not supported"), "{}", stderr(&bad));

    let f = |fmt: &str| stdout(&env.rbuild_ok(&["inspect", "--format", fmt, "app:v1"]));
    assert_eq!(f("{{.Id}}"), format!("{id}\n"));
    const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    assert_eq!(f("{{.Config.Env}}"), format!("[{PATH} A=1 B=two]\n"));
    assert_eq!(
        f("{{json .Config.Env}}"),
        format!("[\"{PATH}\",\"A=1\",\"B=two\"]\n")
    );
    assert_eq!(f("{{.Config.Labels.k}} {{.Os}}"), "v linux\n");
    let out = env.rbuild(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{.}}{{end}}",
        "app:v1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not supported"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_and_man_pages_come_from_the_flags() {
    let out = rbuild().args(["completion", "bash"]).output().unwrap();
    assert!(out.status.success());
    let bash = stdout(&out);
    for word in ["--metadata-file", "--no-cache-filter", "images", "load"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    // bash itself accepts the script.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("rbuild.bash");
    std::fs::write(&script, &bash).unwrap();
    let st = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n rejects the completion script");
    for shell in ["zsh", "fish"] {
        let out = rbuild().args(["completion", shell]).output().unwrap();
        assert!(
            out.status.success() && stdout(&out).contains("metadata-file"),
            "{shell}"
        );
    }
    let out = rbuild()
        .args(["__man", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let build = std::fs::read_to_string(dir.path().join("rbuild-build.1")).unwrap();
    assert!(
        build.contains("metadata\\-file"),
        "man page lacks --metadata-file"
    );
    assert!(dir.path().join("rbuild.1").exists());
    assert!(
        !dir.path().join("rbuild-__man.1").exists(),
        "hidden commands have no page"
    );
    // An extra check where man-db is installed (the page's text is checked above).
    if std::path::Path::new("/usr/bin/man").exists() {
        let out = Command::new("/usr/bin/man")
            .arg("-l")
            .arg(dir.path().join("rbuild-load.1"))
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        assert!(stdout(&out).contains("--input"), "{}", stdout(&out));
    }
}
