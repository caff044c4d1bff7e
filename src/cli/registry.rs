//! Commands that talk to registries: pull, push, login, logout.

use std::path::Path;

use super::not_implemented;

pub fn pull(_root: &Path, _reference: &str) -> anyhow::Result<i32> {
    not_implemented("pull")
}

pub fn push(_root: &Path, _image: &str, _destination: Option<&str>) -> anyhow::Result<i32> {
    not_implemented("push")
}

pub fn login(_server: &str) -> anyhow::Result<i32> {
    not_implemented("login")
}

pub fn logout(_server: &str) -> anyhow::Result<i32> {
    not_implemented("logout")
}
