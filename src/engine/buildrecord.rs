//! The build record (`store::BuildRecord`): where each layer of the result
//! came from, kept beside the image for `rbuild history`. Steps note their
//! origin as they finish (executed with its miss reason, a local hit, a
//! `--cache-from` hit); the commit walks the stages the result's layers
//! come from and pairs each layer with the step that made it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::image::ImageConfig;
use crate::oci::LayerRef;
use crate::plan::Base;
use crate::progress::Event;
use crate::store::{BuildRecord, CacheRecord, LayerOrigin, LayerStory, BUILD_RECORD_SCHEMA};

use super::build::{stage_label, BuildCtx, StageResult};

/// Each finished layer step's origin, by step id (`SCOPE/STAGE/N`).
#[derive(Default)]
pub(crate) struct Origins(Mutex<BTreeMap<String, (Option<String>, LayerOrigin)>>);

impl Origins {
    /// Note what made the layer (if any) of step `step_id`.
    pub fn note(&self, step_id: &str, layer: Option<&LayerRef>, origin: LayerOrigin) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(
                step_id.to_string(),
                (layer.map(|l| l.digest.clone()), origin),
            );
        }
    }

    /// A cache hit: from this store (`from` None) or the named cache.
    pub fn note_hit(&self, step_id: &str, rec: &CacheRecord, from: Option<&str>) {
        let origin = match from {
            None => LayerOrigin::Local {
                built: (rec.created > 0)
                    .then(|| crate::image::time::format_rfc3339(rec.created as i64)),
            },
            Some(f) => LayerOrigin::Remote {
                from: f.to_string(),
            },
        };
        self.note(step_id, rec.layer.as_ref(), origin);
    }

    fn get(&self, step_id: &str) -> Option<(Option<String>, LayerOrigin)> {
        self.0.lock().ok()?.get(step_id).cloned()
    }
}

/// The result's record: its layers in manifest order, each with its origin.
/// None when the steps' layers do not line up with the result's (which
/// would be a bug: no record is better than a wrong one).
pub(crate) fn record(
    ctx: &BuildCtx<'_>,
    target: &StageResult,
    config: &ImageConfig,
    manifest: &str,
) -> Option<BuildRecord> {
    // The stages the result is built FROM, bottom first.
    let mut chain = Vec::new();
    let mut i = ctx.plan.target;
    let mut base = None;
    for _ in 0..ctx.plan.stages.len() {
        let stage = &ctx.plan.stages[i];
        chain.push(stage);
        match &stage.base {
            Base::Stage(b) => i = *b,
            Base::Image(name) => {
                base = Some(name.clone());
                break;
            }
            Base::Scratch => break,
        }
    }
    chain.reverse();
    let mut made: Vec<(String, LayerOrigin)> = Vec::new();
    for stage in chain {
        let label = stage_label(stage);
        for n in 0..stage.steps.len() {
            let step_id = format!("{}/{label}/{n}", ctx.cache_scope);
            if let Some((Some(digest), origin)) = ctx.origins.get(&step_id) {
                made.push((digest, origin));
            }
        }
    }
    let base_count = target.layers.len().checked_sub(made.len())?;
    let created_by: BTreeMap<usize, String> = config
        .history_with_layers()
        .into_iter()
        .filter_map(|(h, idx)| Some((idx?, h.created_by.unwrap_or_default())))
        .collect();
    let mut layers = Vec::with_capacity(target.layers.len());
    for (i, l) in target.layers.iter().enumerate() {
        let origin = match i.checked_sub(base_count) {
            None => LayerOrigin::Base {
                from: base.clone()?,
            },
            Some(j) => {
                let (digest, origin) = &made[j];
                if *digest != l.digest {
                    return None;
                }
                origin.clone()
            }
        };
        layers.push(LayerStory {
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            created_by: created_by.get(&i).cloned().unwrap_or_default(),
            origin,
        });
    }
    Some(BuildRecord {
        v: BUILD_RECORD_SCHEMA,
        manifest: manifest.to_string(),
        built: crate::image::time::format_rfc3339(crate::image::time::now_epoch()),
        layers,
    })
}

/// Write the result's record; failing to is a warning (the image is fine,
/// only `history` loses its CACHE column for it).
pub(crate) fn write(
    ctx: &BuildCtx<'_>,
    target: &StageResult,
    config: &ImageConfig,
    manifest: &str,
) {
    let res = match record(ctx, target, config, manifest) {
        Some(rec) => ctx.store.put_build_record(&rec),
        None => Err(anyhow::anyhow!(
            "the steps' layers do not line up with the image's"
        )),
    };
    if let Err(e) = res {
        ctx.reporter.event(Event::Warning {
            id: None,
            message: format!(
                "no build record for {manifest} (`rbuild history` will not say where its layers came from): {e:#}"
            ),
        });
    }
}
