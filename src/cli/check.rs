//! `rbuild check`.

use super::{not_implemented, CheckArgs};

pub fn run(_args: CheckArgs) -> anyhow::Result<i32> {
    not_implemented("check")
}
