//! The CLI's guard rails: a first word that is neither a subcommand nor a
//! build context is refused with a suggestion, and `rbuild version` says
//! exactly which build this is. (Errors are printed by `exit`.)

use std::ffi::OsString;
use std::path::Path;

use crate::dockerfile::suggest;

/// Why the first word cannot start a build: it names no subcommand and no
/// context. `None` when the word is fine (or absent).
pub fn unknown_first_word(args: &[OsString], subcommands: &[&str]) -> Option<String> {
    let word = first_word(args)?;
    if subcommands.contains(&word) || looks_like_context(word) {
        return None;
    }
    let visible: Vec<&str> = subcommands
        .iter()
        .copied()
        .filter(|s| !s.starts_with("__"))
        .collect();
    let hint = match suggest::closest(word, &visible, true) {
        Some(m) => format!("did you mean `rbuild {m}`?"),
        None => format!(
            "a build context is an existing directory, a tarball, `-` (stdin) or a URL; \
             the commands are: {}",
            visible.join(", ")
        ),
    };
    Some(format!(
        "error: {word:?} is neither an rbuild command nor a build context (no such file or directory)\n\
         hint: {hint}"
    ))
}

/// The first argument after global `--root` that is not a flag.
fn first_word(args: &[OsString]) -> Option<&str> {
    let arg = args.get(super::skip_global_root(args))?.to_str()?;
    (!arg.starts_with('-')).then_some(arg)
}

/// What `docker build` accepts as a context: an existing path, `-`, a URL or
/// a git remote.
fn looks_like_context(word: &str) -> bool {
    word == "-"
        || Path::new(word).exists()
        || word.contains("://")
        || word.starts_with("git@")
        || word.starts_with("github.com/")
}

/// The text of `rbuild version`.
pub fn version_text() -> String {
    format!(
        "rbuild {}\ncommit: {}\ntarget: {} ({})\nfeatures: {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("RBUILD_GIT_COMMIT"),
        env!("RBUILD_TARGET"),
        env!("RBUILD_PROFILE"),
        FEATURES.join(" "),
    )
}

/// What this build can do that another build of rbuild might not: the
/// compression codecs and TLS stack compiled in. (The crate has no optional
/// Cargo features; when it grows some, they belong here.)
const FEATURES: &[&str] = &[
    "compression=gzip,zstd,bzip2,xz",
    "tls=rustls(native-roots)",
    "sandbox=namespaces,overlayfs,seccomp,rootless",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    const SUBS: &[&str] = &["build", "images", "inspect", "__man"];

    #[test]
    fn unknown_words_get_a_suggestion() {
        let msg = unknown_first_word(&os(&["rbuild", "imagse"]), SUBS).unwrap();
        assert!(msg.contains("did you mean `rbuild images`?"), "{msg}");
        let msg = unknown_first_word(&os(&["rbuild", "--root", "/x", "zzzzzz"]), SUBS).unwrap();
        assert!(
            msg.contains("the commands are: build, images, inspect\n")
                || msg.ends_with("build, images, inspect"),
            "{msg}"
        );
    }

    #[test]
    fn contexts_and_commands_pass() {
        for ok in [
            &["rbuild", "images"][..],
            &["rbuild", "."],
            &["rbuild", "-"],
            &["rbuild", "-t", "x", "imagse"],
            &["rbuild", "https://example.com/r.git#main"],
            &["rbuild", "git@github.com:a/b.git"],
            &["rbuild"],
            &["rbuild", "--root", "/x"],
        ] {
            assert_eq!(unknown_first_word(&os(ok), SUBS), None, "{ok:?}");
        }
    }
}
