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
