//! One executor per step kind, run by the stage driver (`stage.rs`) on a
//! cache miss: each turns a typed plan step into layer entries. COPY/ADD
//! (`copy.rs`), RUN (`run.rs`) and WORKDIR (`workdir.rs`) write layers;
//! config edits are `engine::config::apply`.

mod copy;
mod run;
mod workdir;

use crate::store::LockedTempDir;

use super::resolver::SourceView;

/// Temp dirs and source views a step's layer entries name files in: typed
/// guards, dropped (and so removed) once the layer is written.
#[derive(Default)]
pub(crate) struct KeepAlive {
    pub temps: Vec<LockedTempDir>,
    pub views: Vec<SourceView>,
}

impl KeepAlive {
    pub fn clear(&mut self) {
        self.temps.clear();
        self.views.clear();
    }
}

pub(super) fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}
