//! Commands over the local store: history, images, inspect, tag, rmi, prune, save.

use std::path::Path;

use super::{not_implemented, ImageArg};

pub fn history(_root: &Path, _args: ImageArg) -> anyhow::Result<i32> {
    not_implemented("history")
}

pub fn images(_root: &Path) -> anyhow::Result<i32> {
    not_implemented("images")
}

pub fn inspect(_root: &Path, _args: ImageArg) -> anyhow::Result<i32> {
    not_implemented("inspect")
}

pub fn tag(_root: &Path, _source: &str, _target: &str) -> anyhow::Result<i32> {
    not_implemented("tag")
}

pub fn rmi(_root: &Path, _images: &[String]) -> anyhow::Result<i32> {
    not_implemented("rmi")
}

pub fn prune(_root: &Path, _all: bool) -> anyhow::Result<i32> {
    not_implemented("prune")
}

pub fn save(_root: &Path, _image: &str, _output: &Path) -> anyhow::Result<i32> {
    not_implemented("save")
}
