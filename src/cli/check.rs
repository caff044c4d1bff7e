//! `rbuild check`: read the Dockerfile, run the checker, print every
//! diagnostic (stderr) or the plan summary (stdout), and pick the exit code.

use std::path::PathBuf;

use anyhow::Context;

use super::CheckArgs;
use crate::check;
use crate::engine::options::parse_build_args;
use crate::plan::PlanOptions;

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let (path, shown) = dockerfile_path(&args);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading Dockerfile {}", path.display()))
        .map_err(crate::engine::error::ContextFailure::wrap)?;
    let opts = PlanOptions {
        build_args: parse_build_args(&args.build_args, |k| std::env::var(k).ok())
            .map_err(super::exit::usage)?,
        target: args.target.clone(),
        ..PlanOptions::default()
    };
    let report = check::check(&text, &opts);
    eprint!("{}", check::render_report(&shown, &report));
    if report.errors.is_empty() {
        if let Some(plan) = &report.plan {
            print!("{}", check::summary(plan));
        }
    }
    // The build's code for a Dockerfile error, so scripts read both alike.
    Ok(match report.exit_code() {
        0 => 0,
        _ => super::exit::code::DOCKERFILE,
    })
}

/// The Dockerfile to read and the name to show for it: `-f` as given, else
/// `CONTEXT/Dockerfile`.
fn dockerfile_path(args: &CheckArgs) -> (PathBuf, String) {
    match &args.file {
        Some(f) => (f.clone(), f.display().to_string()),
        None => {
            let p = args.context.join("Dockerfile");
            let shown = if args.context == std::path::Path::new(".") {
                "Dockerfile".to_string()
            } else {
                p.display().to_string()
            };
            (p, shown)
        }
    }
}
