//! Shell completions and man pages, generated from the same clap
//! definitions the parser uses, so they cannot drift from the flags.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// `rbuild completion SHELL`: the completion script on stdout.
pub fn completion(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "rbuild", &mut std::io::stdout().lock());
    Ok(0)
}

/// `rbuild __man DIR`: `rbuild.1` and one `rbuild-SUBCOMMAND.1` per
/// visible subcommand, in DIR.
pub fn man_pages(dir: &Path) -> anyhow::Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    write_page(dir, "rbuild", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("rbuild-{}", sub.get_name());
        write_page(dir, &name, sub.clone())?;
    }
    Ok(0)
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .render(&mut buf)
        .with_context(|| format!("rendering {name}.1"))?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))
}
