//! A fresh runner's layer write overlaps the seeding: it takes each chunk
//! of the cache's earlier layer as soon as it is verified, while the layer
//! still downloads. The result is the cold build's image; a cache whose
//! layer blob turns out corrupt (its digest fails once the download ends)
//! costs a second write without the seed, and nothing of that blob stays
//! in the store. The cache is served by a slow registry (tests/integration
//! /hostile) so that the download is still running when the write starts.

use crate::common;
use crate::hostile::{Conn, Hostile, Req};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::cache_seed::{build, write_tree, Built};
use common::Env;

fn context(env: &Env, changed: bool) -> std::path::PathBuf {
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY tree/ /tree/\n")],
    );
    write_tree(&ctx, changed.then_some(150));
    ctx
}

/// A cache exported to an OCI layout dir, served as `test/cache:1`.
struct Served {
    manifest: (String, Vec<u8>),
    blobs: HashMap<String, Vec<u8>>,
    /// The largest blob: the COPY's earlier layer, the one seeded from.
    layer: String,
}

fn read_cache(dir: &Path) -> Served {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    let blob = |d: &str| std::fs::read(dir.join("blobs/sha256").join(&d[7..])).unwrap();
    let manifest = (
        m["mediaType"].as_str().unwrap().to_string(),
        blob(m["digest"].as_str().unwrap()),
    );
    let mut blobs = HashMap::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let d = format!("sha256:{}", e.file_name().to_str().unwrap());
        blobs.insert(d, std::fs::read(e.path()).unwrap());
    }
    let layer = blobs
        .iter()
        .max_by_key(|(_, b)| b.len())
        .map(|(d, _)| d.clone())
        .unwrap();
    Served {
        manifest,
        blobs,
        layer,
    }
}

/// Serves `cache`; the seeded layer slowly (16 KiB every 10 ms), with one
/// byte near its end flipped when `corrupt`.
fn serve(cache: Served, corrupt: bool) -> Hostile {
    let cache = Arc::new(cache);
    Hostile::start(move |req: &Req, c: &mut Conn| {
        if req.path == "/v2/" {
            return c.respond(200, &[], b"{}");
        }
        if req.path == "/v2/test/cache/manifests/1" {
            let (ct, body) = &cache.manifest;
            return c.respond(200, &[("Content-Type", ct)], body);
        }
        let blob = req
            .path
            .strip_prefix("/v2/test/cache/blobs/")
            .and_then(|d| cache.blobs.get_key_value(d));
        let Some((digest, body)) = blob else {
            return c.respond(404, &[("Content-Type", "application/json")], b"{}");
        };
        if *digest != cache.layer || req.method == "HEAD" {
            return c.respond(200, &[("Content-Type", "application/octet-stream")], body);
        }
        let mut body = body.clone();
        if corrupt {
            let at = body.len() - 100;
            body[at] ^= 0x55;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if !c.send(head.as_bytes()) {
            return;
        }
        for piece in body.chunks(16 << 10) {
            if c.stopping() || !c.send(piece) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Store A exports its cache to a dir; fresh store B builds the changed
/// tree from it through the slow registry; a cold store C builds the same.
/// Also returns how many times B downloaded the earlier layer.
fn overlapped(corrupt: bool) -> (Env, Built, Built, String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let a = Env::new();
    let ctx_a = context(&a, false);
    let to = format!("type=local,dest={},mode=max", dir.path().display());
    build(&a, &ctx_a, &["--cache-to", &to, "-t", "app:a"]);
    let cache = read_cache(dir.path());
    let layer = cache.layer.clone();
    let server = serve(cache, corrupt);
    let from = format!("{}/test/cache:1", server.addr());
    let b = Env::new();
    let ctx_b = context(&b, true);
    let built = build(&b, &ctx_b, &["--cache-from", &from, "-t", "app:b"]);
    let cold = Env::new();
    let ctx_c = context(&cold, true);
    let reference = build(&cold, &ctx_c, &["-t", "app:c"]);
    let path = format!("/v2/test/cache/blobs/{layer}");
    let gets = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count();
    (b, built, reference, layer, gets)
}

/// Nothing of the cache's earlier layer `layer` is in the store at
/// `root`: not the blob, and no chunk record or index names it.
fn assert_no_trace(root: &Path, layer: &str) {
    assert!(!root.join("blobs/sha256").join(&layer[7..]).exists());
    let chunks = root.join("rbuild/chunks");
    for e in std::fs::read_dir(&chunks).unwrap() {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert!(
            !text.contains(layer),
            "{} names {layer}",
            e.path().display()
        );
        assert!(!e.file_name().to_str().unwrap().contains(&layer[7..]));
    }
}

#[test]
fn the_layer_write_takes_chunks_while_the_seed_downloads() {
    let (b, built, cold, layer, gets) = overlapped(false);
    let log = &built.log;
    assert_eq!(gets, 1, "{log}");
    assert_eq!(built.digest, cold.digest, "{log}");
    assert!(log.contains("handed to the layer write"), "{log}");
    assert!(log.contains("resumed without reading their files"), "{log}");
    assert!(!log.contains("writing the layer again"), "{log}");
    // The write took the chunks from memory: the earlier blob was checked
    // as it streamed through, never stored, and no record names it (the
    // new layer's own records serve a rebuild here).
    assert!(
        log.contains("checked against its digest, not stored"),
        "{log}"
    );
    assert_no_trace(&b.root(), &layer);
}

#[test]
fn a_corrupt_cache_layer_costs_a_second_write_and_leaves_nothing() {
    let (b, built, cold, layer, gets) = overlapped(true);
    let log = &built.log;
    // Bytes that are not the blob are not fetched again: the same cache
    // would send the same bytes.
    assert_eq!(gets, 1, "{log}");
    // Its chunks were used before the download ended, then the digest
    // failed: the layer was written again without them.
    assert!(log.contains("handed to the layer write"), "{log}");
    assert!(
        log.contains("writing the layer again without them"),
        "{log}"
    );
    assert_eq!(built.digest, cold.digest, "{log}");
    // Nothing of the bad blob is in B's store.
    assert_no_trace(&b.root(), &layer);
}
