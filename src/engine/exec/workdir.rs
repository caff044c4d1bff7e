//! WORKDIR on a cache miss: the directory and its missing parents, owned
//! by the stage's USER as BuildKit's mkdir makes them; nothing when it
//! exists.

use crate::layer::LayerEntry;

use super::super::build::BuildCtx;
use super::super::copy::{copy_entries, CopyOptions, SourceTree};
use super::super::stage::StageState;

impl StageState {
    pub(in crate::engine) fn mkdir(
        &mut self,
        ctx: &BuildCtx<'_>,
        wd: &str,
    ) -> anyhow::Result<Vec<LayerEntry>> {
        let owner = match self.config.config.user.clone().filter(|u| !u.is_empty()) {
            Some(u) => {
                let db = self.user_db(ctx)?;
                let r = db.resolve_user(&u)?;
                Some((r.uid, r.gid))
            }
            None => None,
        };
        let opts = CopyOptions {
            chown: owner,
            chmod: None,
            created: Self::created_time(ctx),
        };
        let tree = SourceTree {
            name: String::new(),
            is_dir: true,
            items: Vec::new(),
        };
        if self.layers.is_empty() {
            return Ok(copy_entries(
                vec![tree],
                &format!("{wd}/"),
                false,
                &opts,
                &|_| None,
            ));
        }
        let view = self.view(ctx)?;
        let resolved = view.image_path(wd)?;
        if view.existing_dir(&resolved).is_some() {
            return Ok(Vec::new());
        }
        let existing = |p: &str| view.existing_dir(p);
        Ok(copy_entries(
            vec![tree],
            &format!("{resolved}/"),
            false,
            &opts,
            &existing,
        ))
    }
}
