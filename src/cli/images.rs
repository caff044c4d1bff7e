//! Commands over the local store: history, images, inspect, tag, rmi, prune, save.
//!
//! Tables follow docker's output (Go tabwriter: min width 10, padding 3),
//! sizes use docker's 3-significant-digit decimal units. Rendering takes
//! `now` as an argument so tests can pin "N years ago".

use std::path::Path;

use serde_json::json;

use super::ImageArg;
use crate::image::time::{format_rfc3339, human_duration, now_epoch, parse_rfc3339};
use crate::image::{find_image, short_digest, Image};
use crate::store::{BuildRecordRead, LayerOrigin, Store};

/// Open the store and show what opening it found worth a warning (a
/// private dir it had to tighten, temps it could not remove).
pub(super) fn open_store(root: &Path) -> anyhow::Result<Store> {
    let store = Store::open(root)?;
    for notice in store.notices() {
        eprintln!("warning: {notice}");
    }
    Ok(store)
}

pub fn history(root: &Path, args: ImageArg) -> anyhow::Result<i32> {
    let store = open_store(root)?;
    let image = find_image(&store, &args.image)?;
    let record = build_record(&store, &image)?;
    let rows = history_rows_with(&image, &record);
    let opts = RenderOpts {
        now: now_epoch(),
        trunc: !args.no_trunc,
        human: args.human,
    };
    let out = match args.format.as_deref() {
        None | Some("table") => render_history_table(&rows, &opts),
        Some("json") => render_history_json(&rows, &opts),
        Some(other) => anyhow::bail!("unknown --format {other:?} (want table or json)"),
    };
    emit(&out)
}

/// Write command output to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// The image's build record (where its layers came from), if this store
/// built it. A record that cannot be read is a warning, never an error:
/// the history is still there.
fn build_record(store: &Store, image: &Image) -> anyhow::Result<BuildRecordRead> {
    let read = store.build_record(image.manifest_desc.digest().as_ref())?;
    if let BuildRecordRead::Corrupt(e) = &read {
        eprintln!("warning: {e}");
    }
    Ok(read)
}

/// One `history` row, before formatting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// Layer digest, or None for a step without a layer (`<missing>`).
    pub layer: Option<String>,
    pub created: Option<String>,
    pub created_by: String,
    /// Compressed layer size (what the manifest records).
    pub size: u64,
    pub comment: String,
    /// Where the layer came from (the CACHE column): None when the image
    /// has no build record, or the row has no layer.
    pub cache: Option<CacheCell>,
}

/// A CACHE cell: what the build record says of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheCell {
    Known(LayerOrigin),
    /// The record is corrupt, or does not describe this layer: `?`.
    Unknown,
}

impl CacheCell {
    fn text(&self) -> String {
        match self {
            CacheCell::Known(LayerOrigin::Executed { .. }) => "executed".into(),
            CacheCell::Known(LayerOrigin::Local { .. }) => "local".into(),
            CacheCell::Known(LayerOrigin::Remote { from }) => format!("remote {from}"),
            CacheCell::Known(LayerOrigin::Base { .. }) => "base".into(),
            CacheCell::Unknown => "?".into(),
        }
    }
}

/// Options for rendering rows.
pub struct RenderOpts {
    pub now: i64,
    pub trunc: bool,
    pub human: bool,
}

/// The image's history, newest first, each layer with what `record` says
/// of it.
pub fn history_rows_with(image: &Image, record: &BuildRecordRead) -> Vec<HistoryRow> {
    let layers = image.manifest.layers();
    let cache = |i: usize, digest: &str| match record {
        BuildRecordRead::Absent => None,
        BuildRecordRead::Corrupt(_) => Some(CacheCell::Unknown),
        BuildRecordRead::Found(r) => Some(match r.layers.get(i) {
            Some(story) if story.digest == digest => CacheCell::Known(story.origin.clone()),
            _ => CacheCell::Unknown,
        }),
    };
    let mut rows: Vec<HistoryRow> = image
        .config
        .history_with_layers()
        .into_iter()
        .map(|(h, idx)| {
            let layer = idx.and_then(|i| layers.get(i));
            HistoryRow {
                layer: layer.map(|l| l.digest().to_string()),
                created: h.created,
                created_by: h.created_by.unwrap_or_default(),
                size: layer.map_or(0, |l| l.size()),
                comment: h.comment.unwrap_or_default(),
                cache: idx
                    .zip(layer)
                    .and_then(|(i, l)| cache(i, l.digest().as_ref())),
            }
        })
        .collect();
    rows.reverse();
    rows
}

struct Cells {
    id: String,
    created: String,
    created_at: String,
    created_by: String,
    size: String,
    comment: String,
}

fn cells(row: &HistoryRow, o: &RenderOpts) -> Cells {
    let created_secs = row.created.as_deref().and_then(parse_rfc3339);
    let created_at = created_secs.map(format_rfc3339).unwrap_or_default();
    let created = match created_secs {
        Some(t) if o.human => format!("{} ago", human_duration(o.now - t)),
        Some(_) => created_at.clone(),
        None => "N/A".to_string(),
    };
    let by = row.created_by.replace('\t', " ");
    Cells {
        id: row
            .layer
            .as_deref()
            .map_or("<missing>".into(), short_digest),
        created,
        created_at,
        created_by: if o.trunc { ellipsis(&by, 45) } else { by },
        size: if o.human {
            human_size(row.size)
        } else {
            row.size.to_string()
        },
        comment: row.comment.clone(),
    }
}

/// docker's table: IMAGE, CREATED, CREATED BY, SIZE, COMMENT; with a
/// build record, CACHE after CREATED BY (without one, docker's exactly).
pub fn render_history_table(rows: &[HistoryRow], o: &RenderOpts) -> String {
    let with_cache = rows.iter().any(|r| r.cache.is_some());
    let mut head = vec!["IMAGE".to_string(), "CREATED".into(), "CREATED BY".into()];
    if with_cache {
        head.push("CACHE".into());
    }
    head.extend(["SIZE".into(), "COMMENT".into()]);
    let mut table = vec![head];
    for row in rows {
        let c = cells(row, o);
        let mut line = vec![c.id, c.created, c.created_by];
        if with_cache {
            line.push(row.cache.as_ref().map(CacheCell::text).unwrap_or_default());
        }
        line.extend([c.size, c.comment]);
        table.push(line);
    }
    tabwrite(&table)
}

/// docker's `--format json`: one object per line, keys sorted.
pub fn render_history_json(rows: &[HistoryRow], o: &RenderOpts) -> String {
    let mut out = String::new();
    for row in rows {
        let c = cells(row, o);
        let mut v = json!({
            "Comment": c.comment,
            "CreatedAt": c.created_at,
            "CreatedBy": c.created_by,
            "CreatedSince": c.created,
            "ID": c.id,
            "Size": c.size,
        });
        if let Some(CacheCell::Known(origin)) = &row.cache {
            v["cache"] = serde_json::to_value(origin).unwrap_or_default();
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

/// Go tabwriter(minwidth 10, padding 3): every cell but the last of a line
/// is padded to its column's width.
pub fn tabwrite(rows: &[Vec<String>]) -> String {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| (s.chars().count() + 3).max(10))
                .max()
                .unwrap_or(10)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// Cut to `max` characters, the last being `…` (docker's `Ellipsis`).
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// docker's `HumanSizeWithPrecision(size, 3)`: decimal units, `%.3g`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g3(v), UNITS[unit])
}

/// Go's `%.3g` for 0 <= v < 1000.
fn format_g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.log10().floor() as i32;
    let decimals = (2 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.split('.').next().is_some_and(|int| int.len() > 3) {
        // 999.5 rounds to 1000: Go switches to exponent form.
        return "1e+03".into();
    }
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `rbuild images` flags (docker's).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ImagesArgs {
    /// Only the image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// `table` (default), `json` (one object per line) or a Go template
    /// over ID, Repository, Tag, CreatedAt, CreatedSince, Size.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// `reference=PATTERN` (a glob over NAME or NAME:TAG); repeatable.
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
}

pub fn images(root: &Path, args: &ImagesArgs) -> anyhow::Result<i32> {
    let filter = reference_filter(&args.filter)?;
    let store = open_store(root)?;
    let now = now_epoch();
    if args.quiet {
        let ids: String = image_rows(&store, now, &filter)?
            .iter()
            .map(|r| format!("{}\n", r["ID"].as_str().unwrap_or_default()))
            .collect();
        return emit(&ids);
    }
    match args.format.as_deref() {
        None | Some("table") => emit(&render_images_filtered(&store, now, &filter)?),
        Some(f) => {
            let mut out = String::new();
            for row in image_rows(&store, now, &filter)? {
                if f == "json" {
                    out.push_str(&serde_json::to_string(&row)?);
                } else {
                    out.push_str(&super::format::render(f, &row)?);
                }
                out.push('\n');
            }
            emit(&out)
        }
    }
}

/// `--filter reference=GLOB` (several: any may match). `*` does not cross
/// `/`, as in docker (Go's path.Match).
fn reference_filter(filters: &[String]) -> anyhow::Result<Option<globset::GlobSet>> {
    if filters.is_empty() {
        return Ok(None);
    }
    let mut set = globset::GlobSetBuilder::new();
    for f in filters {
        let pattern = f.strip_prefix("reference=").ok_or_else(|| {
            anyhow::anyhow!(
                "--filter {f:?} is not supported\nhint: rbuild images supports reference=PATTERN"
            )
        })?;
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| anyhow::anyhow!("--filter {f:?}: {e}"))?;
        set.add(glob);
    }
    Ok(Some(set.build()?))
}

fn name_matches(filter: &Option<globset::GlobSet>, name: &str) -> bool {
    let Some(set) = filter else { return true };
    let (repo, _) = split_name(name);
    // docker matches the familiar name (no docker.io/library/) with and without the tag.
    let short = |s: &str| {
        s.strip_prefix("docker.io/library/")
            .or_else(|| s.strip_prefix("docker.io/"))
            .unwrap_or(s)
            .to_string()
    };
    [name.to_string(), repo.clone(), short(name), short(&repo)]
        .iter()
        .any(|c| set.is_match(c))
}

/// One JSON object per tag, with docker's `images --format json` keys.
fn image_rows(
    store: &Store,
    now: i64,
    filter: &Option<globset::GlobSet>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    for (name, desc) in store.tags()? {
        if !name_matches(filter, &name) {
            continue;
        }
        let (repo, tag) = split_name(&name);
        let image = crate::image::load_image(store, &desc).ok();
        let created = image
            .as_ref()
            .and_then(|i| i.config.created.as_deref().and_then(parse_rfc3339));
        let size: u64 = image
            .as_ref()
            .map_or(0, |i| i.manifest.layers().iter().map(|l| l.size()).sum());
        rows.push(json!({
            "ID": image.as_ref().map_or("<missing>".to_string(), |i| i.short_id()),
            "Repository": repo,
            "Tag": tag,
            "Digest": desc.digest().to_string(),
            "CreatedAt": created.map(format_rfc3339).unwrap_or_default(),
            "CreatedSince": created.map_or("N/A".into(), |t| format!("{} ago", human_duration(now - t))),
            "Size": human_size(size),
        }));
    }
    Ok(rows)
}

/// REPOSITORY, TAG, IMAGE ID, CREATED, SIZE for every tag `filter` lets through.
fn render_images_filtered(
    store: &Store,
    now: i64,
    filter: &Option<globset::GlobSet>,
) -> anyhow::Result<String> {
    let mut table = vec![vec![
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
    ]];
    for (name, desc) in store.tags()? {
        if !name_matches(filter, &name) {
            continue;
        }
        let (repo, tag) = split_name(&name);
        let row = match crate::image::load_image(store, &desc) {
            Ok(image) => {
                let created = image
                    .config
                    .created
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map_or("N/A".into(), |t| format!("{} ago", human_duration(now - t)));
                let size: u64 = image.manifest.layers().iter().map(|l| l.size()).sum();
                vec![repo, tag, image.short_id(), created, human_size(size)]
            }
            // A tag whose blobs are missing still lists, so it can be removed.
            Err(_) => vec![repo, tag, "<missing>".into(), "N/A".into(), "N/A".into()],
        };
        table.push(row);
    }
    Ok(tabwrite(&table))
}

fn split_name(name: &str) -> (String, String) {
    if let Some((repo, digest)) = name.split_once('@') {
        return (repo.to_string(), format!("@{digest}"));
    }
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (name.to_string(), "latest".to_string()),
    }
}

pub fn inspect(root: &Path, args: ImageArg) -> anyhow::Result<i32> {
    let store = open_store(root)?;
    let image = find_image(&store, &args.image)?;
    let digest = image.manifest_desc.digest().to_string();
    let tags: Vec<String> = store
        .tags()?
        .into_iter()
        .filter(|(_, d)| d.digest().to_string() == digest)
        .map(|(n, _)| n)
        .collect();
    let out = json!({
        "Id": image.config_digest,
        "Digest": digest,
        "RepoTags": tags,
        "Manifest": image.manifest,
        "Config": image.config,
    });
    match args.format.as_deref() {
        None | Some("json") => emit(&format!("{}\n", serde_json::to_string_pretty(&out)?)),
        Some(template) => {
            // Templates see docker's shape: `.Config` is the runtime config
            // (Env, Cmd, Labels…), beside Architecture, Os, RootFS.
            let cfg = serde_json::to_value(&image.config)?;
            let view = json!({
                "Id": image.config_digest,
                "Digest": digest,
                "RepoTags": out["RepoTags"],
                "Created": cfg["created"],
                "Author": cfg["author"],
                "Architecture": cfg["architecture"],
                "Os": cfg["os"],
                "Variant": cfg["variant"],
                "Config": cfg["config"],
                "RootFS": {"Type": "layers", "Layers": cfg["rootfs"]["diff_ids"]},
                "Size": image.manifest.layers().iter().map(|l| l.size()).sum::<u64>(),
                "Manifest": out["Manifest"],
            });
            emit(&format!("{}\n", super::format::render(template, &view)?))
        }
    }
}

pub fn tag(root: &Path, source: &str, target: &str) -> anyhow::Result<i32> {
    // A name the store cannot hold is a usage error, found before any work.
    crate::store::check_reference(target).map_err(|e| super::exit::usage(e.into()))?;
    let store = open_store(root)?;
    let desc = match store.resolve(source)? {
        Some(d) => d,
        None => find_image(&store, source)?.manifest_desc,
    };
    store.tag(target, &desc)?;
    Ok(0)
}

pub fn rmi(root: &Path, images: &[String]) -> anyhow::Result<i32> {
    let store = open_store(root)?;
    let mut unknown = Vec::new();
    for name in images {
        if store.untag(name)? {
            println!("Untagged: {}", crate::store::lookup_name(name)?);
        } else {
            unknown.push(name.as_str());
        }
    }
    if !unknown.is_empty() {
        anyhow::bail!(
            "no such image: {}\nhint: `rbuild images` lists the stored images",
            unknown.join(", ")
        );
    }
    Ok(0)
}

pub fn prune(root: &Path, all: bool) -> anyhow::Result<i32> {
    let store = open_store(root)?;
    let r = store.prune(all)?;
    for left in &r.left {
        eprintln!("warning: {left}");
    }
    println!(
        "Deleted {} blobs ({}), {} layer dirs, {} cache records, {} cache mounts, {} temp files, {} build records",
        r.blobs,
        human_size(r.bytes),
        r.layer_dirs,
        r.cache_records,
        r.cache_mounts,
        r.temps,
        r.build_records
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_docker_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4096), "4.1kB");
        assert_eq!(human_size(1_234_567), "1.23MB");
        assert_eq!(human_size(77_800_000), "77.8MB");
        assert_eq!(human_size(123_456_789), "123MB");
    }

    #[test]
    fn ellipsis_keeps_45_chars() {
        let long = "a".repeat(60);
        let cut = ellipsis(&long, 45);
        assert_eq!(cut.chars().count(), 45);
        assert!(cut.ends_with('…'));
        assert_eq!(ellipsis("short", 45), "short");
    }

    /// A fixed image: two layers and two metadata steps, created in 2001,
    /// rendered at a fixed "now" (2026-01-01).
    fn fixed_rows() -> Vec<HistoryRow> {
        use crate::image::{commit_image, descriptor, HistoryEntry, ImageConfig, ImageFormat};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut config = ImageConfig::for_host();
        let at = |t: &str| Some(t.to_string());
        let mut layers = Vec::new();
        for (i, (content, by)) in [
            (
                vec![1u8; 1_234_567],
                "/bin/sh -c #(nop) ADD file:0123456789abcdef in / ",
            ),
            (
                vec![2u8; 4096],
                "RUN /bin/sh -c apt-get update && apt-get install -y curl # buildkit",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let blob = store.put_blob(&content).unwrap();
            layers.push(descriptor(crate::oci::media::OCI_LAYER_GZIP, &blob).unwrap());
            let h = HistoryEntry {
                created: at(if i == 0 {
                    "2001-02-03T04:05:06Z"
                } else {
                    "2001-02-04T04:05:06Z"
                }),
                created_by: Some(by.to_string()),
                ..HistoryEntry::default()
            };
            config.add_layer(&crate::oci::digest::sha256_digest(&content), h);
            if i == 0 {
                config.add_empty_layer(HistoryEntry {
                    created: at("2001-02-03T04:05:07Z"),
                    created_by: Some("/bin/sh -c #(nop)  CMD [\"bash\"]".into()),
                    ..HistoryEntry::default()
                });
            }
        }
        config.add_empty_layer(HistoryEntry {
            created: at("2025-12-31T23:58:00Z"),
            created_by: Some("ENV\tA=1".into()),
            comment: Some("buildkit.dockerfile.v0".into()),
            ..HistoryEntry::default()
        });
        let m = commit_image(&store, ImageFormat::Oci, &config, &layers).unwrap();
        let image = crate::image::load_image(&store, &m).unwrap();
        history_rows_with(&image, &BuildRecordRead::Absent)
    }

    const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    #[test]
    fn history_table_matches_docker_layout() {
        let rows = fixed_rows();
        let opts = RenderOpts {
            now: NOW,
            trunc: true,
            human: true,
        };
        let text = render_history_table(&rows, &opts);
        // Layer digests are sha256 of the fixed blob contents above.
        let expected = "IMAGE          CREATED         CREATED BY                                      SIZE      COMMENT\n\
             <missing>      2 minutes ago   ENV A=1                                         0B        buildkit.dockerfile.v0\n\
             30d6bc164ea5   24 years ago    RUN /bin/sh -c apt-get update && apt-get ins…   4.1kB     \n\
             <missing>      24 years ago    /bin/sh -c #(nop)  CMD [\"bash\"]                 0B        \n\
             9b2ea01f49b1   24 years ago    /bin/sh -c #(nop) ADD file:0123456789abcdef …   1.23MB    \n";
        assert_eq!(text, expected);
    }

    #[test]
    fn history_untruncated_raw_and_json() {
        let rows = fixed_rows();
        let raw = RenderOpts {
            now: NOW,
            trunc: false,
            human: false,
        };
        let text = render_history_table(&rows, &raw);
        assert!(
            text.contains("RUN /bin/sh -c apt-get update && apt-get install -y curl # buildkit")
        );
        assert!(text.contains("2001-02-04T04:05:06Z"));
        assert!(text.contains(" 1234567 "));
        let json = render_history_json(
            &rows,
            &RenderOpts {
                now: NOW,
                trunc: true,
                human: true,
            },
        );
        let first = json.lines().next().unwrap();
        assert_eq!(
            first,
            r#"{"Comment":"buildkit.dockerfile.v0","CreatedAt":"2025-12-31T23:58:00Z","CreatedBy":"ENV A=1","CreatedSince":"2 minutes ago","ID":"<missing>","Size":"0B"}"#
        );
        assert_eq!(json.lines().count(), 4);
    }

    #[test]
    fn history_with_a_record_adds_the_cache_column_and_field() {
        let mut rows = fixed_rows();
        rows[1].cache = Some(CacheCell::Known(LayerOrigin::Remote {
            from: "127.0.0.1:5000/app:cache".into(),
        }));
        rows[3].cache = Some(CacheCell::Unknown);
        let opts = RenderOpts {
            now: NOW,
            trunc: true,
            human: true,
        };
        let text = render_history_table(&rows, &opts);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "IMAGE          CREATED         CREATED BY                                      \
             CACHE                             SIZE      COMMENT"
        );
        assert!(
            lines[2].contains("apt-get ins…   remote 127.0.0.1:5000/app:cache   4.1kB"),
            "{text}"
        );
        assert!(lines[4].contains(" ?    "), "{text}");
        // Metadata rows have no layer, so nothing to say.
        assert!(lines[1].contains("ENV A=1      "), "{text}");
        let json = render_history_json(&rows, &opts);
        let rows_json: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            rows_json[1]["cache"],
            json!({"source": "remote", "from": "127.0.0.1:5000/app:cache"})
        );
        // Unknown (a corrupt record) and no layer: no field at all.
        assert!(rows_json[3].get("cache").is_none(), "{json}");
        assert!(rows_json[0].get("cache").is_none(), "{json}");
        rows[1].cache = Some(CacheCell::Known(LayerOrigin::Executed {
            reason: "no earlier build".into(),
        }));
        let json = render_history_json(&rows, &opts);
        let second: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
        assert_eq!(
            second["cache"],
            json!({"source": "executed", "reason": "no earlier build"})
        );
    }
}
