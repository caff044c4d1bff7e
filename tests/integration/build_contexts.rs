//! Where the context and Dockerfile come from, as `docker build` takes them:
//! `-` (a tar in any codec, or a Dockerfile), `-f -`, a tarball path, git
//! (smart HTTP through `git http-backend`, and `file://`), http(s) URLs.
//! Results are read back with `-o DIR`.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{rbuild_bin, run_ok, stderr, stdout, tool, Env, FileServer};

const DF: &str = "FROM scratch\nCOPY . /ctx/\n";

/// `rbuild --root ROOT ARGS…` with `input` on stdin.
fn rbuild_stdin(env: &Env, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn ok(out: &Output) {
    assert!(out.status.success(), "rbuild failed:\n{}", stderr(out));
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The store's temp area is empty again: no context outlived its build.
fn no_temps_left(env: &Env) {
    let tmp = env.root().join("rbuild/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temps left: {left:?}");
}

fn context_files(env: &Env) -> PathBuf {
    env.context(
        "src",
        &[
            ("Dockerfile", DF),
            ("a.txt", "from the tar\n"),
            ("d/b.txt", "nested\n"),
        ],
    )
}

#[test]
fn tar_on_stdin_in_every_codec() {
    let env = Env::new();
    let src = context_files(&env);
    for (flag, ext) in [
        ("", "tar"),
        ("-z", "tgz"),
        ("-j", "tbz"),
        ("-J", "txz"),
        ("--zstd", "tzst"),
    ] {
        let file = env.path(&format!("ctx.{ext}"));
        let mut cmd = Command::new("tar");
        cmd.arg("-C").arg(&src).arg("-c").arg("-f").arg(&file);
        if !flag.is_empty() {
            cmd.arg(flag);
        }
        run_ok(cmd.arg("."));
        let out_dir = env.path(&format!("out-{ext}"));
        let out = rbuild_stdin(
            &env,
            &["build", "-o", out_dir.to_str().unwrap(), "-"],
            &std::fs::read(&file).unwrap(),
        );
        ok(&out);
        assert_eq!(read(&out_dir.join("ctx/a.txt")), "from the tar\n", "{ext}");
        assert_eq!(read(&out_dir.join("ctx/d/b.txt")), "nested\n", "{ext}");
        // A tarball path works the same way.
        let out_dir = env.path(&format!("outf-{ext}"));
        ok(&env.rbuild(&[
            "build",
            "-o",
            out_dir.to_str().unwrap(),
            file.to_str().unwrap(),
        ]));
        assert_eq!(read(&out_dir.join("ctx/a.txt")), "from the tar\n", "{ext}");
    }
    no_temps_left(&env);
}

#[test]
fn dockerfile_on_stdin_with_and_without_context() {
    let env = Env::new();
    // `-`: the Dockerfile alone, no context.
    let out = rbuild_stdin(
        &env,
        &["build", "-q", "-t", "nostdctx:1", "-"],
        b"FROM scratch\nLABEL via=stdin\n",
    );
    ok(&out);
    let inspect = env.rbuild_ok(&["inspect", "nostdctx:1"]);
    assert!(stdout(&inspect).contains("\"via\": \"stdin\""));
    let out = rbuild_stdin(&env, &["build", "-"], b"FROM scratch\nCOPY a.txt /\n");
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("Dockerfile:2"), "{}", stderr(&out));

    // `-f -`: the Dockerfile from stdin, the context from the argument.
    let ctx = env.context("c", &[("a.txt", "ctx file\n")]);
    let out_dir = env.path("out");
    let out = rbuild_stdin(
        &env,
        &[
            "build",
            "-f",
            "-",
            "-o",
            out_dir.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
        b"FROM scratch\nCOPY a.txt /copied\n",
    );
    ok(&out);
    assert_eq!(read(&out_dir.join("copied")), "ctx file\n");

    let out = rbuild_stdin(&env, &["build", "-f", "-", "-"], b"FROM scratch\n");
    assert!(
        stderr(&out).contains("cannot both come from stdin"),
        "{}",
        stderr(&out)
    );
    no_temps_left(&env);
}

#[test]
fn tar_context_cannot_write_outside() {
    let env = Env::new();
    let evil = env.path("evil.tar");
    let victim = env.path("victim");
    // `../victim` from inside the unpack dir.
    let script = format!(
        "import tarfile, io\n\
         t = tarfile.open({evil:?}, 'w')\n\
         def add(name, data):\n\
         \x20   i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))\n\
         add('Dockerfile', b'FROM scratch\\n')\n\
         add('../../../../../../../../../..{victim}', b'pwned')\n\
         add('../victim', b'pwned')\n\
         t.close()\n",
        evil = evil.to_str().unwrap(),
        victim = victim.to_str().unwrap(),
    );
    run_ok(Command::new("python3").arg("-c").arg(&script));
    let out = env.rbuild(&["build", evil.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("evil.tar"), "{}", stderr(&out));
    assert!(!victim.exists(), "a tar entry escaped the context dir");
    no_temps_left(&env);
}

/// `python3 -m http.server --cgi` with `cgi-bin/git` running `git http-backend`
/// over the repositories in `repos`: git's smart HTTP, served locally.
struct GitServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GitServer {
    fn start(repos: &Path) -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let cgi = dir.path().join("cgi-bin");
        std::fs::create_dir(&cgi).unwrap();
        let script = cgi.join("git");
        std::fs::write(
            &script,
            format!(
                // As root, python runs CGI scripts as `nobody`: the repos
                // are someone else's, which git must be told is fine.
                "#!/bin/sh\nexport GIT_PROJECT_ROOT={}\nexport GIT_HTTP_EXPORT_ALL=1\n\
                 export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'\n\
                 exec git http-backend\n",
                repos.display()
            ),
        )
        .unwrap();
        // `nobody` (see above) must reach the script and the repos.
        let mut chmod = Command::new("chmod");
        chmod.arg("755").arg(&script).arg(dir.path()).arg(&cgi);
        // `repos` sits directly in the test's own temp dir.
        chmod
            .arg(repos)
            .arg(repos.parent().expect("the test's temp dir"));
        run_ok(&mut chmod);
        let port = common::free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--cgi", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "http server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        GitServer {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/cgi-bin/git/{repo}", self.port)
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "protocol.file.allow=always",
            ])
            .args(args),
    )
}

/// A bare repo `repos/NAME.git` holding `files`, committed on `main`.
fn make_repo(repos: &Path, name: &str, files: &[(&str, &str)], setup: impl Fn(&Path)) {
    let work = repos.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    for (p, body) in files {
        let f = work.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, body).unwrap();
    }
    setup(&work);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "init"]);
    git(&work, &["tag", "v1"]);
    git(
        repos,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            &format!("{name}.git"),
        ],
    );
}

#[test]
fn git_contexts_over_smart_http_and_file() {
    if tool("git", "git").is_none() {
        return;
    }
    let env = Env::new();
    let repos = env.path("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let server = GitServer::start(&repos);
    make_repo(&repos, "sub", &[("s.txt", "from the submodule\n")], |_| {});
    let sub_url = server.url("sub.git");
    make_repo(
        &repos,
        "app",
        &[
            ("Dockerfile", DF),
            ("top.txt", "top\n"),
            ("app/Dockerfile", "FROM scratch\nCOPY . /sub/\n"),
            ("app/in-sub.txt", "in app/\n"),
        ],
        |work| {
            git(work, &["submodule", "add", "-q", &sub_url, "mod"]);
        },
    );

    // Smart HTTP, default branch, submodule included, .git left out.
    let out_dir = env.path("out-http");
    let url = server.url("app.git");
    ok(&env.rbuild(&["build", "-o", out_dir.to_str().unwrap(), &url]));
    assert_eq!(read(&out_dir.join("ctx/top.txt")), "top\n");
    assert_eq!(read(&out_dir.join("ctx/mod/s.txt")), "from the submodule\n");
    assert!(!out_dir.join("ctx/.git").exists(), ".git is not context");
    assert!(
        !out_dir.join("ctx/mod/.git").exists(),
        "submodule .git is not context"
    );
    assert!(out_dir.join("ctx/.gitmodules").exists());

    // A ref and a subdirectory.
    let out_dir = env.path("out-sub");
    ok(&env.rbuild(&[
        "build",
        "-o",
        out_dir.to_str().unwrap(),
        &format!("{url}#v1:app"),
    ]));
    assert_eq!(read(&out_dir.join("sub/in-sub.txt")), "in app/\n");
    assert!(!out_dir.join("sub/top.txt").exists());

    // file://, and -f naming a file inside the fetched context.
    let out_dir = env.path("out-file");
    let file_url = format!("file://{}", repos.join("app.git").display());
    ok(&env.rbuild(&[
        "build",
        "-f",
        "app/Dockerfile",
        "-o",
        out_dir.to_str().unwrap(),
        &format!("{file_url}#main"),
    ]));
    assert_eq!(read(&out_dir.join("sub/top.txt")), "top\n");

    // A ref that does not exist: git's message, the URL, the ref.
    let out = env.rbuild(&["build", &format!("{url}#nope")]);
    assert_eq!(out.status.code(), Some(7));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{url}#nope")) && err.contains("nope"),
        "{err}"
    );
    assert!(
        env.rbuild(&["build", &format!("{url}#main:../..")])
            .status
            .code()
            == Some(7)
    );
    // Credentials in the URL never reach the output.
    let secret_url = url
        .replacen("http://", "http://user:s3cret-token@", 1)
        .replace("app.git", "nope.git");
    let out = env.rbuild(&["build", "--progress", "plain", &secret_url]);
    assert_eq!(out.status.code(), Some(7));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!text.contains("s3cret-token"), "{text}");
    assert!(
        text.contains("[internal] load build context http://***:***@"),
        "{text}"
    );
    no_temps_left(&env);
}

#[test]
fn http_url_to_a_dockerfile_or_a_tarball() {
    let env = Env::new();
    let src = context_files(&env);
    let tgz = env.path("ctx.tgz");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-czf")
            .arg(&tgz)
            .arg("."),
    );
    let server = FileServer::start(vec![
        (
            "Dockerfile".to_string(),
            b"FROM scratch\nLABEL from=url\n".to_vec(),
        ),
        ("ctx.tgz".to_string(), std::fs::read(&tgz).unwrap()),
    ]);
    let base = format!("http://127.0.0.1:{}", server.port);
    ok(&env.rbuild(&["build", "-t", "fromurl:1", &format!("{base}/Dockerfile")]));
    let inspect = stdout(&env.rbuild_ok(&["inspect", "fromurl:1"]));
    assert!(inspect.contains("\"from\": \"url\""), "{inspect}");
    let out_dir = env.path("out");
    ok(&env.rbuild(&[
        "build",
        "-o",
        out_dir.to_str().unwrap(),
        &format!("{base}/ctx.tgz"),
    ]));
    assert_eq!(read(&out_dir.join("ctx/d/b.txt")), "nested\n");
    let out = env.rbuild(&["build", &format!("{base}/missing")]);
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    no_temps_left(&env);
}

#[test]
fn stdin_on_a_terminal_is_refused_not_waited_on() {
    let Some(script) = tool("script", "bsdutils") else {
        return;
    };
    let env = Env::new();
    // `script` gives rbuild a pseudo-terminal as stdin.
    let cmd = format!(
        "{} --root {} build - ; echo rc=$?",
        rbuild_bin(),
        env.root().display()
    );
    let out = Command::new(script)
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("which is a terminal"), "{text}");
    assert!(text.contains("rc=2"), "{text}");
}

/// A fetched context is someone else's tree: its symlinks resolve inside
/// it. A git subdirectory that is a link to a host dir, and a tar's
/// Dockerfile that is a link to a host file, reach nothing of the host.
#[test]
fn fetched_context_links_stay_inside_it() {
    if tool("git", "git").is_none() {
        return;
    }
    let env = Env::new();
    let secret_dir = env.path("host-secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("key"), "TOPSECRET-4b7f\n").unwrap();
    let repos = env.path("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let target = secret_dir.clone();
    make_repo(
        &repos,
        "links",
        &[("Dockerfile", "FROM scratch\nCOPY . /s/\n")],
        move |work| std::os::unix::fs::symlink(&target, work.join("sub")).unwrap(),
    );
    let url = format!("file://{}#main:sub", repos.join("links.git").display());
    let out_dir = env.path("out");
    let out = env.rbuild(&["build", "-o", out_dir.to_str().unwrap(), &url]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!text.contains("TOPSECRET"), "{text}");
    assert!(
        !walk_has(&out_dir, "TOPSECRET"),
        "a host file reached the build's output"
    );

    // A tar on stdin whose Dockerfile links to a host file.
    let evil = env.path("link.tar");
    let script = format!(
        "import tarfile\n\
         t = tarfile.open({evil:?}, 'w')\n\
         i = tarfile.TarInfo('Dockerfile'); i.type = tarfile.SYMTYPE; i.linkname = {key:?}\n\
         t.addfile(i)\n\
         t.close()\n",
        evil = evil.to_str().unwrap(),
        key = secret_dir.join("key").to_str().unwrap(),
    );
    run_ok(Command::new("python3").arg("-c").arg(&script));
    let tar = std::fs::read(&evil).unwrap();
    let out = rbuild_stdin(&env, &["build", "-"], &tar);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("TOPSECRET"), "{text}");
    assert!(!text.contains("/rbuild/tmp/"), "names a temp path: {text}");
    no_temps_left(&env);
}

fn walk_has(dir: &Path, needle: &str) -> bool {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)))
}

/// A context deeper than the walk's bound is a clear error, not a crash
/// (the recursive walk overflowed its stack at 500-2,000 levels); one just
/// under it builds.
#[test]
fn a_context_too_deep_is_refused_and_a_deep_one_builds() {
    let env = Env::new();
    let nest = |name: &str, levels: usize| {
        let ctx = env.context(name, &[("Dockerfile", "FROM scratch\nCOPY . /c/\n")]);
        let mut p = ctx.clone();
        for _ in 0..levels {
            p.push("a");
        }
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("leaf"), "deep\n").unwrap();
        ctx
    };
    let deep = nest("deep", 1000);
    ok(&env.rbuild(&["build", "-t", "deep:1", deep.to_str().unwrap()]));
    let too = nest("too-deep", 1100);
    let out = env.rbuild(&["build", too.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("directories deep") && err.contains("hint:"),
        "{err}"
    );
    assert_eq!(
        err.matches("directories deep").count(),
        1,
        "said once: {err}"
    );
}
