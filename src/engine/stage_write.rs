//! Writing a step's layer (`StageState::write_seeded`): while the step's
//! chunk seeding still runs (its chunks taken as they are verified, the
//! blob stored only if the seed's whole blob then matched its digest), and
//! with `--push`, streamed to the registry as it is written.

use anyhow::Context;

use crate::layer::{write_prepared, KnownFiles, PreparedEntries, WriteOptions};
use crate::oci::LayerRef;
use crate::progress::StepHandle;

use super::build::BuildCtx;
use super::stage::StageState;

impl StageState {
    /// Writes the layer while the step's chunk seeding (if any) still
    /// runs, taking its chunks as they are verified; the blob is stored
    /// only if what the seeding handed over was then vouched for by the
    /// whole earlier blob's digest, and is written again without the seed
    /// otherwise (a lying or corrupt cache costs time, never bytes).
    pub(super) fn write_seeded(
        &self,
        ctx: &BuildCtx<'_>,
        entries: &PreparedEntries,
        handle: &StepHandle,
        known_files: Option<std::sync::Arc<KnownFiles>>,
        seeding: super::cache_io::Seeding,
        step_id: &str,
    ) -> anyhow::Result<LayerRef> {
        let feed = seeding.feed();
        // `--push`: a big layer of the pushed image goes to the registry
        // while it is written (`early_push::LayerStream`).
        let mut stream = match crate::layer::is_small(entries) {
            true => None,
            false => ctx.early_push.stream(ctx.store, step_id),
        };
        let written = self.write(
            ctx,
            entries,
            handle,
            known_files.clone(),
            feed,
            stream.as_mut(),
        );
        let keep = seeding.finish(handle);
        let (blob, info) = written?;
        if keep {
            let layer = store_layer_blob(blob, &info, handle)?;
            if let Some(s) = stream {
                ctx.early_push.streamed(ctx.store, step_id, s, &layer);
            }
            return Ok(layer);
        }
        // Abandoned: its session is never committed.
        drop(stream);
        drop(blob);
        handle.log(
            crate::progress::Stream::Stderr,
            b"the earlier layer failed its digest check after some of its chunks were \
              used: writing the layer again without them\n",
        );
        let (blob, info) = self.write(ctx, entries, handle, known_files, None, None)?;
        store_layer_blob(blob, &info, handle)
    }

    /// Writes `entries` as a layer into a blob writer (not yet stored).
    /// An empty change set is still a layer: BuildKit commits every COPY,
    /// ADD, RUN and WORKDIR (other than `/`) with a layer, empty or not.
    fn write(
        &self,
        ctx: &BuildCtx<'_>,
        entries: &PreparedEntries,
        handle: &StepHandle,
        known_files: Option<std::sync::Arc<KnownFiles>>,
        feed: Option<std::sync::Arc<crate::layer::SeedFeed>>,
        stream: Option<&mut super::early_push::LayerStream>,
    ) -> anyhow::Result<(crate::store::BlobWriter, crate::layer::LayerInfo)> {
        // write_layer hashes the blob on a thread of its own.
        let mut blob = ctx.store.blob_writer_unhashed()?;
        let mut stream = stream;
        if let Some(s) = stream.as_mut() {
            // The upload reads the blob back from its file as it grows.
            match blob.reader() {
                Ok(file) => s.attach(file),
                Err(_) => s.give_up(),
            }
        }
        // Chunk records are written through this temp dir (locked, removed
        // on drop) so a crash leaves no half-written record behind. A layer
        // of one small chunk is written without the cache (`layer::small`):
        // no temp dir, no record files.
        let chunk_tmp = match crate::layer::is_small(entries) {
            true => None,
            false => Some(ctx.store.temp_dir("chunks")?),
        };
        let chunk_cache = match &chunk_tmp {
            Some(tmp) => {
                let cache = crate::cache::store_chunk_cache(ctx.store, tmp.path())?;
                Some(match feed {
                    Some(f) => cache.with_feed(f),
                    None => cache,
                })
            }
            None => None,
        };
        let opts = WriteOptions {
            compression: ctx.req.compression,
            source_date_epoch: ctx.req.source_date_epoch,
            threads: 0,
            chunk_cache,
            known_files,
        };
        let info = {
            // Bytes and throughput while a big layer is compressed and stored.
            let mut counted = ProgressWriter {
                inner: &mut blob,
                handle,
                written: 0,
                reported: 0,
                stream,
            };
            let info = write_prepared(entries, &mut counted, &opts).context("writing the layer")?;
            if let Some(s) = counted.stream.as_mut() {
                let len = counted.inner.flush_all().context("writing the layer")?;
                s.end(len);
            }
            info
        };
        let c = info.chunks;
        if c.reused > 0 {
            let line = format!(
                "layer chunks: {} of {} reused ({} resumed without reading their files), {} compressed\n",
                c.reused, c.chunks, c.resumed, c.compressed
            );
            handle.log(crate::progress::Stream::Stderr, line.as_bytes());
        }
        Ok((blob, info))
    }
}

/// Passes bytes through, reporting the running total every MiB.
struct ProgressWriter<'a> {
    inner: &'a mut crate::store::BlobWriter,
    handle: &'a StepHandle,
    written: u64,
    reported: u64,
    /// `--push`: the same bytes, streamed to the registry as they reach
    /// the blob's file.
    stream: Option<&'a mut super::early_push::LayerStream>,
}

impl std::io::Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(s) = self.stream.as_mut() {
            s.advance(self.inner.flushed());
        }
        self.written += n as u64;
        if self.written - self.reported >= 1 << 20 {
            self.reported = self.written;
            self.handle
                .progress(self.written, None, crate::progress::Unit::Bytes);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Stores a written layer's blob (its digest as the writer computed it).
fn store_layer_blob(
    blob: crate::store::BlobWriter,
    info: &crate::layer::LayerInfo,
    handle: &StepHandle,
) -> anyhow::Result<LayerRef> {
    let stored = blob
        .commit_verified(&info.digest, Some(info.size))
        .context("storing the layer blob")?;
    handle.progress(stored.size, Some(stored.size), crate::progress::Unit::Bytes);
    Ok(LayerRef {
        digest: stored.digest,
        diff_id: info.diff_id.clone(),
        size: stored.size,
        media_type: info.media_type.to_string(),
    })
}
