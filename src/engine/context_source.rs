//! Where the build context and the Dockerfile come from, as `docker build`
//! accepts them: a directory, `-` (a tar on stdin, any codec the layer
//! module detects, or a Dockerfile with no context), `-f -`, a local
//! tarball, a git URL (shallow clone with the system `git`, submodules
//! included, `.git` left out) or an http(s) URL to a tarball or Dockerfile.
//!
//! Everything fetched lands in one locked temp dir in the store, removed
//! when the [`PreparedContext`] is dropped (or swept by the next store open
//! after a crash). Tars are unpacked with the layer module's unpacker, so
//! `..`, absolute names and symlinks cannot write outside that dir.

use std::io::{Cursor, Read};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::layer::{unpack_layer, UnpackOptions};
use crate::store::{LockedTempDir, Store};

/// A Dockerfile read from stdin or a URL larger than this is refused (a
/// Dockerfile is text; this only stops a wrong pipe from filling memory).
const MAX_DOCKERFILE: u64 = 16 << 20;

/// What the CONTEXT argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSpec {
    Dir(PathBuf),
    /// `-`: a tar (maybe compressed) or a Dockerfile on stdin.
    Stdin,
    /// A local file: a tar archive (maybe compressed).
    Tarball(PathBuf),
    /// A git repository: URL, ref (branch, tag or commit; default HEAD),
    /// subdirectory.
    Git {
        url: String,
        reference: Option<String>,
        subdir: Option<String>,
    },
    /// An http(s) URL to a tarball or a Dockerfile.
    Url(String),
}

/// docker's rules: `git://`, `git@`, `ssh://`, `github.com/`, a URL whose
/// path ends in `.git`, and (rbuild's addition) `file://`, are git; other
/// http(s) URLs are downloads; `-` is stdin; a file is a tarball.
pub fn classify(arg: &Path) -> ContextSpec {
    let Some(s) = arg.to_str() else {
        return ContextSpec::Dir(arg.to_path_buf());
    };
    if s == "-" {
        return ContextSpec::Stdin;
    }
    let (base, fragment) = s.split_once('#').unwrap_or((s, ""));
    let is_git = ["git://", "git@", "ssh://", "github.com/", "file://"]
        .iter()
        .any(|p| s.starts_with(p))
        || ((s.starts_with("http://") || s.starts_with("https://"))
            && base.trim_end_matches('/').ends_with(".git"));
    if is_git {
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let url = if base.starts_with("github.com/") {
            format!("https://{base}")
        } else {
            base.to_string()
        };
        return ContextSpec::Git {
            url,
            reference: (!reference.is_empty()).then(|| reference.to_string()),
            subdir: (!subdir.is_empty()).then(|| subdir.to_string()),
        };
    }
    if s.starts_with("http://") || s.starts_with("https://") {
        return ContextSpec::Url(s.to_string());
    }
    if arg.is_file() {
        return ContextSpec::Tarball(arg.to_path_buf());
    }
    ContextSpec::Dir(arg.to_path_buf())
}

/// A context ready to scan, and the Dockerfile to use.
pub struct PreparedContext {
    pub dir: PathBuf,
    /// `None`: `DIR/Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    /// How error messages name the Dockerfile when it is not a user path.
    pub dockerfile_name: Option<String>,
    _temp: Option<LockedTempDir>,
}

/// `url` with any user name and password (tokens often ride there)
/// replaced by `***`, for messages and progress.
pub fn redacted(url: &str) -> String {
    scrub(url, url)
}

/// `text` with the credentials of `url` replaced by `***`: wherever they
/// sit in a URL's user info (`user:pass@`, `user@`), and anywhere else when
/// at least 4 characters long (a one-letter user name replaced anywhere
/// made the message unreadable).
fn scrub(text: &str, url: &str) -> String {
    let mut out = text.to_string();
    let secrets = secrets_in(url);
    for s in &secrets {
        for (find, with) in [(format!("{s}@"), "***@"), (format!("{s}:"), "***:")] {
            // Only inside user info: `//user:`, `//user@`, `:pass@`.
            for lead in ["//", ":"] {
                out = out.replace(&format!("{lead}{find}"), &format!("{lead}{with}"));
            }
        }
    }
    for s in secrets.iter().filter(|s| s.chars().count() >= 4) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// The user name and password of `url` in every form a message may quote
/// them: as written, as `url::Url` re-encodes them (it percent-encodes
/// `=`, `;`, `|` … that a token's base64 padding holds) and decoded.
/// Longest first, so a secret is replaced before any part of it.
fn secrets_in(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    // As written: between `://` and the last `@` before the path.
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            out.extend([user.to_string(), pass.to_string()]);
        }
    }
    if let Ok(u) = url::Url::parse(url) {
        for part in [u.username(), u.password().unwrap_or_default()] {
            out.push(part.to_string());
            let decoded = percent_decode(part);
            out.push(decoded);
        }
    }
    out.retain(|s| !s.is_empty());
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `%XX` sequences decoded (invalid ones kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolve CONTEXT and `-f` into a directory and a Dockerfile path.
/// `stdin` is read for `-` and `-f -` (never both). Errors never carry the
/// credentials of a context URL (git and reqwest would quote them).
pub fn prepare(
    store: &Store,
    context: &Path,
    dockerfile: Option<&Path>,
    stdin: &mut dyn Read,
) -> anyhow::Result<PreparedContext> {
    let url = context.to_string_lossy().into_owned();
    prepare_inner(store, context, dockerfile, stdin).map_err(|e| {
        let secrets = secrets_in(&url);
        if secrets.is_empty() {
            return super::error::ContextFailure::wrap(e);
        }
        // Flattened to text so no cause in the chain can show a secret.
        let text = scrub(&format!("{e:#}"), &url);
        super::error::ContextFailure::wrap(anyhow::anyhow!(text))
    })
}

fn prepare_inner(
    store: &Store,
    context: &Path,
    dockerfile: Option<&Path>,
    stdin: &mut dyn Read,
) -> anyhow::Result<PreparedContext> {
    let spec = classify(context);
    let df_stdin = dockerfile.is_some_and(|f| f.as_os_str() == "-");
    if df_stdin && spec == ContextSpec::Stdin {
        bail!("the context and the Dockerfile cannot both come from stdin (`-` and `-f -`)");
    }
    if let ContextSpec::Dir(dir) = &spec {
        if !df_stdin {
            anyhow::ensure!(
                dir.is_dir(),
                "build context {} is not a directory, a tarball, `-` or a URL",
                dir.display()
            );
            return Ok(PreparedContext {
                dir: dir.clone(),
                dockerfile: dockerfile.map(Path::to_path_buf),
                dockerfile_name: None,
                _temp: None,
            });
        }
    }
    let temp = store.temp_dir("context-")?;
    let ctx_dir = temp.path().join("context");
    let df_dir = temp.path().join("dockerfile");
    for d in [&ctx_dir, &df_dir] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // A Dockerfile that arrived in place of a context (stdin, URL).
    let mut df_text: Option<Vec<u8>> = None;
    let mut dir = ctx_dir.clone();
    match &spec {
        ContextSpec::Dir(d) => dir = d.clone(),
        ContextSpec::Stdin => df_text = tar_or_dockerfile(stdin, &ctx_dir, "stdin")?,
        ContextSpec::Tarball(file) => {
            let f = std::fs::File::open(file)
                .with_context(|| format!("opening context tarball {}", file.display()))?;
            unpack_context(std::io::BufReader::new(f), &ctx_dir)
                .with_context(|| format!("unpacking context tarball {}", file.display()))?;
        }
        ContextSpec::Git {
            url,
            reference,
            subdir,
        } => {
            git_clone(url, reference.as_deref(), &ctx_dir)?;
            if let Some(sub) = subdir {
                dir = inside(&ctx_dir, sub)
                    .with_context(|| format!("git context {url}: subdirectory {sub:?}"))?;
                anyhow::ensure!(
                    dir.is_dir(),
                    "git context {url}: subdirectory {sub:?} is not in the repository"
                );
            }
        }
        ContextSpec::Url(url) => {
            let (name, _) = super::sources::download(url, None, &df_dir)?;
            let file = df_dir.join(&name);
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening the download of {url}"))?;
            df_text = tar_or_dockerfile(&mut std::io::BufReader::new(f), &ctx_dir, url)?;
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        }
    }
    let mut out = PreparedContext {
        dir,
        dockerfile: None,
        dockerfile_name: None,
        _temp: None,
    };
    if df_stdin {
        df_text = Some(read_capped(stdin, "the Dockerfile on stdin")?);
        out.dockerfile_name = Some("-".to_string());
    } else if let Some(f) = dockerfile {
        // For a fetched context, -f names a file inside it (docker's rule);
        // for a directory context it is a path as given.
        out.dockerfile = Some(match spec {
            ContextSpec::Dir(_) => f.to_path_buf(),
            _ => inside(&out.dir, &f.to_string_lossy())
                .with_context(|| format!("-f {}", f.display()))?,
        });
        out.dockerfile_name = Some(f.display().to_string());
    }
    if let Some(text) = df_text {
        let path = df_dir.join("Dockerfile");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        out.dockerfile = Some(path);
        out.dockerfile_name
            .get_or_insert_with(|| "Dockerfile".to_string());
    }
    if out.dockerfile.is_none() && !matches!(spec, ContextSpec::Dir(_)) {
        // The fetched context's own Dockerfile, found inside it, and named
        // as the user knows it (not by a temp path gone after the build).
        out.dockerfile = Some(inside(&out.dir, "Dockerfile")?);
        out.dockerfile_name = Some("Dockerfile".to_string());
    }
    out._temp = Some(temp);
    Ok(out)
}

/// `rel` inside `root` (a fetched context), refusing absolute paths and
/// `..`, with symlinks resolved inside `root` as if it were `/`: a git
/// subdirectory or a Dockerfile that is a link to a host path made that
/// host directory the context, or printed that host file in an error.
fn inside(root: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(rel);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => bail!("{rel:?} must be a relative path inside the context, without `..`"),
        }
    }
    crate::layer::resolve_in_root(root, rel)
}

fn read_capped(r: &mut dyn Read, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(MAX_DOCKERFILE + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {what}"))?;
    anyhow::ensure!(
        buf.len() as u64 <= MAX_DOCKERFILE,
        "{what} is larger than {} MiB; is it really a Dockerfile?",
        MAX_DOCKERFILE >> 20
    );
    Ok(buf)
}

/// A tar (any codec) is unpacked into `dest`; anything else is returned as
/// the Dockerfile's text (with no context).
fn tar_or_dockerfile(r: &mut dyn Read, dest: &Path, what: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    r.take(512)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {what}"))?;
    let compressed = head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.starts_with(b"BZh")
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]);
    let is_tar = head.len() >= 262 && &head[257..262] == b"ustar";
    if compressed || is_tar {
        unpack_context(Cursor::new(head).chain(r), dest)
            .with_context(|| format!("unpacking the context tar from {what}"))?;
        return Ok(None);
    }
    let mut rest = read_capped(r, what)?;
    head.append(&mut rest);
    Ok(Some(head))
}

fn unpack_context<R: Read>(r: R, dest: &Path) -> anyhow::Result<()> {
    // Owners do not matter (COPY gives context files uid 0) and must not
    // need privileges.
    let opts = UnpackOptions {
        no_chown: true,
        ..UnpackOptions::default()
    };
    unpack_layer(r, dest, &opts)?;
    Ok(())
}

/// Shallow-fetch `reference` (default: the remote's HEAD) of `url` into
/// `dest` with submodules, then drop every `.git`.
fn git_clone(url: &str, reference: Option<&str>, dest: &Path) -> anyhow::Result<()> {
    // Neither may be taken for an option by git.
    anyhow::ensure!(!url.starts_with('-'), "invalid git URL {url:?}");
    if let Some(r) = reference {
        anyhow::ensure!(
            !r.starts_with('-') && !r.contains(char::is_whitespace),
            "invalid git ref {r:?} in {url}"
        );
    }
    let git = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dest)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    anyhow::anyhow!("git contexts need `git` on PATH\nhint: apt-get install git")
                }
                _ => anyhow::Error::new(e).context("running git"),
            })?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let reference = reference.unwrap_or("HEAD");
    (|| {
        git(&["init", "-q"])?;
        git(&["remote", "add", "origin", "--", url])?;
        git(&[
            "fetch",
            "-q",
            "--depth",
            "1",
            "--no-tags",
            "origin",
            "--",
            reference,
        ])?;
        git(&["checkout", "-q", "FETCH_HEAD"])?;
        git(&[
            "submodule",
            "update",
            "-q",
            "--init",
            "--recursive",
            "--depth",
            "1",
        ])
    })()
    .with_context(|| format!("cloning git context {url}#{reference}"))?;
    remove_git_dirs(dest)
}

/// `.git` (the repository, and submodules' `.git` files) is not context.
fn remove_git_dirs(root: &Path) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut walk = walkdir::WalkDir::new(root).follow_links(false).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.context("walking the git checkout")?;
        if entry.depth() > 0 && entry.file_name() == ".git" {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            found.push(entry.path().to_path_buf());
        }
    }
    for p in found {
        let res = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(url: &str, r: Option<&str>, sub: Option<&str>) -> ContextSpec {
        ContextSpec::Git {
            url: url.into(),
            reference: r.map(Into::into),
            subdir: sub.map(Into::into),
        }
    }

    #[test]
    fn classifies_like_docker() {
        let c = |s: &str| classify(Path::new(s));
        assert_eq!(c("-"), ContextSpec::Stdin);
        assert_eq!(
            c("https://h/r.git#main:sub/dir"),
            git("https://h/r.git", Some("main"), Some("sub/dir"))
        );
        assert_eq!(c("git@h:r.git#v1"), git("git@h:r.git", Some("v1"), None));
        assert_eq!(c("file:///srv/r#:d"), git("file:///srv/r", None, Some("d")));
        assert_eq!(
            c("github.com/a/b"),
            git("https://github.com/a/b", None, None)
        );
        assert_eq!(
            c("https://h/x/Dockerfile"),
            ContextSpec::Url("https://h/x/Dockerfile".into())
        );
        assert_eq!(c("some/dir"), ContextSpec::Dir("some/dir".into()));
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redacted("https://user:s3cret@h/r.git#main"),
            "https://***:***@h/r.git#main"
        );
        assert_eq!(redacted("https://TOKEN@h/r.git"), "https://***@h/r.git");
        assert_eq!(redacted("git@h:r.git"), "git@h:r.git");
        // Characters the URL parser re-encodes (base64 padding, symbols).
        assert_eq!(
            redacted("https://oauth2:abc==@host/r.git"),
            "https://***:***@host/r.git"
        );
        assert_eq!(
            redacted("https://u:p%40ss;|x@host/r.git"),
            "https://***:***@host/r.git"
        );
        // A short user name is hidden in the URL, not in every word.
        assert_eq!(
            scrub(
                "cloning https://u:tok1234@h/r.git: fatal: could not read u from tok1234",
                "https://u:tok1234@h/r.git"
            ),
            "cloning https://***:***@h/r.git: fatal: could not read u from ***"
        );
    }

    #[test]
    fn paths_stay_inside() {
        assert!(inside(Path::new("/r"), "a/b").is_ok());
        assert!(inside(Path::new("/r"), "../x").is_err());
        assert!(inside(Path::new("/r"), "/etc").is_err());
    }
}
