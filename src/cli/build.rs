//! `rbuild build`.

use std::path::Path;

use super::{not_implemented, BuildArgs};

pub fn run(_root: &Path, _args: BuildArgs) -> anyhow::Result<i32> {
    not_implemented("build")
}
