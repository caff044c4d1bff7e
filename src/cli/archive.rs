//! `rbuild save` and `rbuild load`: images to and from docker-archive and
//! OCI-archive tars, files or stdin/stdout.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::Context;

use super::FormatArg;
use crate::image::{export_docker_archive, export_oci_layout};

/// Write `images` as one archive to `output` (a file, or stdout when `None`).
pub fn save(
    root: &Path,
    images: &[String],
    output: Option<&Path>,
    format: FormatArg,
) -> anyhow::Result<i32> {
    if output.is_none() {
        anyhow::ensure!(
            !std::io::stdout().is_terminal(),
            "refusing to write an image archive to a terminal\n\
             hint: -o FILE, or redirect stdout"
        );
    }
    let store = super::images::open_store(root)?;
    let what = match format {
        FormatArg::Docker => "a docker archive",
        FormatArg::Oci => "an OCI archive",
    };
    // The exporters write a file atomically; an OCI archive is a tar only
    // when the name ends in `.tar`, so go through one in the store's temp dir
    // unless the destination already is such a file.
    if let (Some(out), FormatArg::Docker) = (output, format) {
        export_docker_archive(&store, images, out)
            .with_context(|| format!("writing {what} to {}", out.display()))?;
        return Ok(0);
    }
    let tmp = store.temp_dir("save-")?;
    let file = tmp.path().join("image.tar");
    match format {
        FormatArg::Docker => export_docker_archive(&store, images, &file),
        FormatArg::Oci => export_oci_layout(&store, images, &file),
    }
    .with_context(|| format!("writing {what}"))?;
    let mut src =
        std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    match output {
        None => {
            let mut out = std::io::stdout().lock();
            std::io::copy(&mut src, &mut out)
                .and_then(|_| out.flush())
                .with_context(|| format!("writing {what} to stdout"))?;
        }
        Some(dest) => copy_atomic(&mut src, dest)
            .with_context(|| format!("writing {what} to {}", dest.display()))?,
    }
    Ok(0)
}

/// Stream into a temp file beside `dest`, fsync, rename.
fn copy_atomic(src: &mut dyn Read, dest: &Path) -> anyhow::Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::copy(src, &mut tmp)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// Load every image of an archive (`input`, or stdin), any compression.
pub fn load(root: &Path, input: Option<&Path>, quiet: bool) -> anyhow::Result<i32> {
    let store = super::images::open_store(root)?;
    let _lease = store.lease().context("taking the store's lease")?;
    let loaded = match input {
        Some(path) => {
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut r = crate::layer::open_archive(std::io::BufReader::new(f))?;
            crate::image::import::load_archive(&store, &mut r)
                .with_context(|| format!("loading {}", path.display()))?
        }
        None => {
            anyhow::ensure!(
                !std::io::stdin().is_terminal(),
                "rbuild load reads an archive from stdin, which is a terminal\n\
                 hint: rbuild load -i FILE, or rbuild load < FILE"
            );
            let stdin = std::io::stdin().lock();
            let mut r = crate::layer::open_archive(std::io::BufReader::new(stdin))?;
            crate::image::import::load_archive(&store, &mut r).context("loading from stdin")?
        }
    };
    if !quiet {
        for l in &loaded {
            println!("Loaded image: {} ({})", l.name, l.image_id);
        }
    }
    Ok(0)
}
