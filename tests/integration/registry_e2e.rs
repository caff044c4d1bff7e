//! The registry client against a real `docker-registry` on 127.0.0.1:
//! push, read back with skopeo, pull, skip present blobs, cross-repo
//! mounts, TLS + htpasswd, bearer tokens, and faults.

use crate::common;

use common::{free_port, RegistryConf, RegistryGuard};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbuild::oci::{Platform, Reference};
use rbuild::progress::{BlobState, Event, Reporter, Transfer};
use rbuild::registry::{
    self, AuthFiles, BlobLocations, BlobOutcome, BlobStore, PullOptions, PushOptions, Settings,
};
use rbuild::store::Store;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Keeps the `Blob` events a transfer reports: (digest, done, total, state).
#[derive(Default)]
struct Blobs(Mutex<Vec<(String, u64, u64, BlobState)>>);

impl Reporter for Blobs {
    fn event(&self, event: Event) {
        if let Event::Blob {
            digest,
            done,
            total,
            state,
            ..
        } = event
        {
            self.0.lock().unwrap().push((digest, done, total, state));
        }
    }
    fn finish(&self) {}
}

// ---------------------------------------------------------------- tools

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{tool} is required under CI=true (apt-get install the package that provides it)"
            );
        }
        eprintln!("SKIP: {tool} not installed");
    }
    found
}

// ---------------------------------------------------------------- HTTP proxy

/// One parsed request as the proxy saw it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Action {
    Forward,
    Respond(u16, Vec<(String, String)>, Vec<u8>),
    Drop,
}

type Handler = dyn Fn(&Req) -> Action + Send + Sync;

/// A tiny HTTP/1.1 proxy in front of the registry: one request per
/// connection, every request logged, and a handler that may answer itself.
struct Proxy {
    port: u16,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Proxy {
    fn start(upstream: String, handler: Arc<Handler>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (up, h, l) = (upstream.clone(), handler.clone(), log2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &*h, &l);
                });
            }
        });
        Proxy { port, log }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Req>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Req {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; n];
        r.read_exact(&mut body)?;
        req.body = body;
    } else if req
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            req.body.extend_from_slice(&chunk[..n]);
        }
        req.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("transfer-encoding"));
        req.headers
            .push(("Content-Length".into(), req.body.len().to_string()));
    }
    Ok(Some(req))
}

fn serve(
    conn: TcpStream,
    upstream: &str,
    handler: &Handler,
    log: &Mutex<Vec<Req>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(req) = read_request(&mut reader)? else {
        return Ok(());
    };
    log.lock().unwrap().push(req.clone());
    let mut out = conn;
    match handler(&req) {
        Action::Drop => {
            let _ = out.shutdown(Shutdown::Both);
        }
        Action::Respond(status, headers, body) => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            out.write_all(&body)?;
        }
        Action::Forward => {
            let mut up = TcpStream::connect(upstream)?;
            let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
            for (k, v) in &req.headers {
                if !k.eq_ignore_ascii_case("connection") {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            head.push_str("Connection: close\r\n\r\n");
            up.write_all(head.as_bytes())?;
            up.write_all(&req.body)?;
            let mut resp = Vec::new();
            up.read_to_end(&mut resp)?;
            out.write_all(&resp)?;
        }
    }
    out.flush()
}

// ---------------------------------------------------------------- images

/// Streams a 3 MB blob the way a layer is pushed while it is written
/// (`upload_streamed`: one chunked PATCH, then the digest), reads it back
/// through the same trust and credentials, and checks that a wrong digest
/// commits nothing.
fn stream_and_read_back(settings: &Settings, dest: &Reference) {
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let digest = digest_of(&blob);
    let stream = |digest: String| {
        registry::upload_streamed(
            settings,
            dest,
            Box::new(std::io::Cursor::new(blob.clone())),
            Arc::new(AtomicBool::new(false)),
            || Some(digest),
        )
    };
    let got = stream(digest.clone()).unwrap();
    assert_eq!(got, registry::Streamed::Committed);
    let client = registry::Registry::new(&dest.registry, settings).unwrap();
    let scopes = [registry::client::scope(&dest.repository, "pull")];
    let read = |digest: &str| {
        let url = |base: &str| format!("{base}/v2/{}/blobs/{digest}", dest.repository);
        client
            .send(&scopes, "reading a streamed blob", false, &|c, base| {
                c.get(url(base))
            })
            .unwrap()
    };
    let resp = read(&digest);
    assert!(resp.status().is_success(), "{}", resp.status());
    assert!(resp.bytes().unwrap().as_ref() == blob.as_slice());
    let wrong = digest_of(b"not these bytes");
    let err = stream(wrong.clone()).unwrap_err();
    assert!(
        format!("{err:#}").contains("committing streamed blob"),
        "{err:#}"
    );
    assert_eq!(read(&wrong).status().as_u16(), 404);
}

/// `n` bytes gzip cannot shrink (xorshift), for layers above `big_body`'s size.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Name a manifest in the store's `index.json`, as a build would.
fn tag(store: &Store, name: &str, digest: &str, size: u64) {
    use oci_spec::image::{Descriptor, MediaType};
    let digest: oci_spec::image::Digest = digest.parse().unwrap();
    let desc = Descriptor::new(MediaType::ImageManifest, size, digest);
    store.tag(name, &desc).unwrap();
}

fn put(store: &Store, bytes: &[u8]) -> String {
    let d = digest_of(bytes);
    store
        .write_blob(&d, Some(bytes.len() as u64), &mut &bytes[..])
        .unwrap();
    d
}

/// A gzip layer holding one file, built here with tar + flate2.
fn layer(name: &str, content: &[u8]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, name, content).unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = digest_of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Build a one-or-two layer image in `store`; returns the manifest digest.
fn build_image(store: &Store, arch: &str, files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (name, content) in files {
        let (gz, diff) = layer(name, content);
        let d = put(store, &gz);
        layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
        diff_ids.push(diff);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = put(store, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    (put(store, &manifest), manifest)
}

fn quick_settings(dir: &Path) -> Settings {
    Settings {
        backoff_ms: 10,
        auth: AuthFiles {
            docker_config: dir.join("docker/config.json"),
            containers_auth: None,
        },
        ..Settings::default()
    }
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn blob_uploads(reqs: &[Req]) -> usize {
    reqs.iter()
        .filter(|q| {
            (q.method == "POST" || q.method == "PUT" || q.method == "PATCH")
                && q.target.contains("/blobs/uploads/")
        })
        .count()
}

// ---------------------------------------------------------------- tests

#[test]
fn push_read_back_with_skopeo_pull_and_skip_present_blobs() {
    if !have("docker-registry") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let proxy = Proxy::start(reg.addr(), Arc::new(|_: &Req| Action::Forward));
    let tmp = tempfile::tempdir().unwrap();
    let settings = quick_settings(tmp.path());
    let src = Store::open(&tmp.path().join("src")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mdigest, _) = build_image(
        &src,
        "amd64",
        &[("hello.txt", b"hello\n"), ("big.bin", &big)],
    );

    let dest = r(&format!("{}/app:v1", proxy.addr()));
    let blobs = Arc::new(Blobs::default());
    let opts = PushOptions {
        progress: Some(Transfer::new(blobs.clone(), 1)),
        ..Default::default()
    };
    let report = registry::push(&src, &mdigest, &dest, &settings, &opts).unwrap();
    assert_eq!(report.manifest_digest, mdigest);
    assert!(report
        .blobs
        .iter()
        .all(|(_, o)| *o == BlobOutcome::Uploaded));
    assert_eq!(report.blobs.len(), 3);
    let seen = blobs.0.lock().unwrap().clone();
    for (digest, _) in &report.blobs {
        let finals: Vec<_> = seen
            .iter()
            .filter(|b| &b.0 == digest && b.3 != BlobState::Moving)
            .collect();
        assert_eq!(finals.len(), 1, "one final report of {digest}: {seen:?}");
        assert_eq!(finals[0].3, BlobState::Transferred);
        assert_eq!(finals[0].1, finals[0].2, "all of {digest} sent");
    }
    assert_eq!(blob_uploads(&proxy.requests()), 6, "POST+PUT per blob");
    let manifest_put = proxy
        .requests()
        .iter()
        .position(|q| q.method == "PUT" && q.target.contains("/manifests/"))
        .unwrap();
    assert_eq!(
        manifest_put,
        proxy.requests().len() - 1,
        "manifest goes last"
    );

    // An independent client reads it back.
    if have("skopeo") {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://{}/app:v1", reg.addr()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(digest_of(&out.stdout), mdigest);
        let copy = tmp.path().join("skopeo-oci");
        let st = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/app:v1", reg.addr()))
            .arg(format!("oci:{}:v1", copy.display()))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert!(copy.join("blobs/sha256").join(&mdigest[7..]).is_file());
    }

    // Second push: HEAD finds every blob, nothing is uploaded.
    proxy.clear();
    let report = registry::push(&src, &mdigest, &dest, &settings, &PushOptions::default()).unwrap();
    assert!(report
        .blobs
        .iter()
        .all(|(_, o)| *o == BlobOutcome::AlreadyThere));
    assert_eq!(blob_uploads(&proxy.requests()), 0);

    // Pull into an empty layout: same digests, verified, stored.
    let dst = Store::open(&tmp.path().join("dst")).unwrap();
    let img = registry::pull(&dest, &dst, &settings, &PullOptions::default()).unwrap();
    assert_eq!(img.manifest_digest, mdigest);
    assert_eq!(img.fetched.len(), 3);
    assert_eq!(img.layers.len(), 2);
    for l in &img.layers {
        assert!(dst.has_blob(&l.digest));
        assert_eq!(dst.blob_size(&l.digest).unwrap(), l.size);
    }
    assert!(dst.has_blob(&mdigest), "manifest stored too");
    let cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
    assert_eq!(cfg["architecture"], "amd64");

    // Pulling again (resume) fetches no blob.
    proxy.clear();
    let again = registry::pull(&dest, &dst, &settings, &PullOptions::default()).unwrap();
    assert!(again.fetched.is_empty());
    assert!(!proxy
        .requests()
        .iter()
        .any(|q| q.method == "GET" && q.target.contains("/blobs/")));

    // Pull by digest works and checks the digest.
    let by_digest = r(&format!("{}/app@{mdigest}", proxy.addr()));
    let img = registry::pull(&by_digest, &dst, &settings, &PullOptions::default()).unwrap();
    assert_eq!(img.manifest_digest, mdigest);

    // Unknown tag: plain words, naming the reference.
    let err = registry::pull(
        &r(&format!("{}/app:nope", proxy.addr())),
        &dst,
        &settings,
        &PullOptions::default(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("app:nope")
            && msg.contains("MANIFEST_UNKNOWN")
            && msg.contains("no such manifest"),
        "{msg}"
    );
}

#[test]
fn push_to_second_repo_mounts_instead_of_uploading() {
    if !have("docker-registry") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let proxy = Proxy::start(reg.addr(), Arc::new(|_: &Req| Action::Forward));
    let tmp = tempfile::tempdir().unwrap();
    let settings = quick_settings(tmp.path());
    let src = Store::open(&tmp.path().join("src")).unwrap();
    let (mdigest, _) = build_image(&src, "amd64", &[("a.txt", b"mount me")]);
    let loc = BlobLocations::load(&tmp.path().join("locations.json")).unwrap();
    let opts = PushOptions {
        locations: Some(&loc),
        ..Default::default()
    };
    registry::push(
        &src,
        &mdigest,
        &r(&format!("{}/base:v1", proxy.addr())),
        &settings,
        &opts,
    )
    .unwrap();
    loc.save().unwrap();

    proxy.clear();
    let loc = BlobLocations::load(&tmp.path().join("locations.json")).unwrap();
    let opts = PushOptions {
        locations: Some(&loc),
        ..Default::default()
    };
    let report = registry::push(
        &src,
        &mdigest,
        &r(&format!("{}/other/app:v2", proxy.addr())),
        &settings,
        &opts,
    )
    .unwrap();
    assert!(
        report.blobs.iter().all(|(_, o)| *o == BlobOutcome::Mounted),
        "{:?}",
        report.blobs
    );
    let reqs = proxy.requests();
    let mounts = reqs
        .iter()
        .filter(|q| {
            q.method == "POST" && q.target.contains("mount=") && q.target.contains("from=base")
        })
        .count();
    assert_eq!(mounts, 2);
    assert!(
        !reqs
            .iter()
            .any(|q| q.method == "PUT" && q.target.contains("/blobs/uploads/")),
        "no upload"
    );

    // The caller can name the source repository explicitly too.
    proxy.clear();
    let opts = PushOptions {
        mount_from: vec!["base".into()],
        ..Default::default()
    };
    let report = registry::push(
        &src,
        &mdigest,
        &r(&format!("{}/third:v1", proxy.addr())),
        &settings,
        &opts,
    )
    .unwrap();
    assert!(report.blobs.iter().all(|(_, o)| *o == BlobOutcome::Mounted));
    assert_eq!(
        blob_uploads(&proxy.requests()),
        2,
        "only the two mount POSTs"
    );
}

#[test]
fn index_push_and_platform_choice_and_docker_schema2_pull() {
    if !have("docker-registry") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let tmp = tempfile::tempdir().unwrap();
    let settings = quick_settings(tmp.path());
    let src = Store::open(&tmp.path().join("src")).unwrap();
    let (amd, amd_bytes) = build_image(&src, "amd64", &[("arch", b"amd64")]);
    let (arm, arm_bytes) = build_image(&src, "arm64", &[("arch", b"arm64")]);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd, "size": amd_bytes.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": arm_bytes.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ]
    }))
    .unwrap();
    let idx = put(&src, &index);
    let dest = r(&format!("{}/multi:v1", reg.addr()));
    let report = registry::push(&src, &idx, &dest, &settings, &PushOptions::default()).unwrap();
    assert_eq!(report.manifest_digest, idx);

    let dst = Store::open(&tmp.path().join("dst")).unwrap();
    let opts = PullOptions {
        platform: Some(Platform::parse("linux/arm64").unwrap()),
        ..Default::default()
    };
    let img = registry::pull(&dest, &dst, &settings, &opts).unwrap();
    assert_eq!(img.manifest_digest, arm);
    assert_eq!(img.index_digest.as_deref(), Some(idx.as_str()));
    let cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
    assert_eq!(cfg["architecture"], "arm64");
    let opts = PullOptions {
        platform: Some(Platform::parse("linux/s390x").unwrap()),
        ..Default::default()
    };
    let msg = format!(
        "{:#}",
        registry::pull(&dest, &dst, &settings, &opts).unwrap_err()
    );
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64/v8"),
        "{msg}"
    );

    // A Docker schema-2 manifest written by skopeo pulls too.
    if have("skopeo") {
        // The store names tags in full (`amd` would be `amd:latest`).
        tag(&src, "amd:v1", &amd, amd_bytes.len() as u64);
        let st = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--format", "v2s2"])
            .arg(format!("oci:{}:amd:v1", src.root().display()))
            .arg(format!("docker://{}/dockerfmt:v1", reg.addr()))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let dref = r(&format!("{}/dockerfmt:v1", reg.addr()));
        let img = registry::pull(&dref, &dst, &settings, &PullOptions::default()).unwrap();
        assert_eq!(
            img.manifest_media_type,
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(img.layers.len(), 1);
        assert!(dst.has_blob(&img.layers[0].digest));
    }
}

/// A throwaway CA and a server cert for 127.0.0.1, made with openssl.
fn make_certs(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join(format!("{name}-ca.key"));
    let ca = dir.join(format!("{name}-ca.pem"));
    let key = dir.join(format!("{name}-server.key"));
    let csr = dir.join(format!("{name}-server.csr"));
    let cert = dir.join(format!("{name}-server.pem"));
    let ext = dir.join(format!("{name}-ext.cnf"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    (ca, cert, key)
}

fn bcrypt_line(user: &str, password: &str) -> Option<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))")
        .arg(password)
        .output()
        .ok()?;
    let hash = String::from_utf8(out.stdout).ok()?.trim().to_string();
    hash.starts_with("$2").then(|| format!("{user}:{hash}\n"))
}

#[test]
fn tls_registry_with_htpasswd_login_and_ca_errors() {
    if !have("docker-registry") || !have("openssl") || !have("python3") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(tmp.path(), "good");
    let (other_ca, _, _) = make_certs(tmp.path(), "other");
    let Some(line) = bcrypt_line("alice", "s3cret-pw") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "python3 crypt with bcrypt is required"
        );
        eprintln!("SKIP: python3 cannot make a bcrypt hash");
        return;
    };
    let htpasswd = tmp.path().join("htpasswd");
    std::fs::write(&htpasswd, line).unwrap();
    let reg = RegistryGuard::start(RegistryConf {
        tls: Some((cert, key)),
        htpasswd: Some(htpasswd),
    });
    let src = Store::open(&tmp.path().join("src")).unwrap();
    let (mdigest, _) = build_image(&src, "amd64", &[("f", b"tls")]);
    let dest = r(&format!("{}/secure/app:v1", reg.addr()));

    // Wrong CA: a clear TLS error, and no fallback to plain HTTP.
    let mut settings = quick_settings(tmp.path());
    settings.ca_files = vec![other_ca];
    let msg = format!(
        "{:#}",
        registry::push(&src, &mdigest, &dest, &settings, &PushOptions::default()).unwrap_err()
    );
    assert!(
        msg.contains("TLS certificate verification failed") && msg.contains("certs.d"),
        "{msg}"
    );

    // Right CA, no credentials: 401 in plain words.
    settings.ca_files = vec![ca.clone()];
    let msg = format!(
        "{:#}",
        registry::push(&src, &mdigest, &dest, &settings, &PushOptions::default()).unwrap_err()
    );
    assert!(
        msg.contains("authentication required") && msg.contains("secure/app"),
        "{msg}"
    );

    // Wrong password: login refuses and stores nothing.
    let err = registry::login(&reg.addr(), "alice", "wrong", &settings).unwrap_err();
    assert!(format!("{err:#}").contains("authentication required"));
    assert!(
        !format!("{err:#}").contains("wrong"),
        "the password is not echoed"
    );
    assert!(!settings.auth.docker_config.exists());

    // `rbuild login` (the real CLI) stores the credentials; then push works.
    let docker_dir = tmp.path().join("docker");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["login", &reg.addr(), "-u", "alice", "--password-stdin"])
        .env("DOCKER_CONFIG", &docker_dir)
        .env("SSL_CERT_FILE", &ca)
        .env("RBUILD_CONFIG", tmp.path().join("no-config.json"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-pw\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Login Succeeded"));
    assert!(!stderr.contains("s3cret-pw"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(docker_dir.join("config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let report = registry::push(&src, &mdigest, &dest, &settings, &PushOptions::default()).unwrap();
    assert_eq!(report.manifest_digest, mdigest);
    let dst = Store::open(&tmp.path().join("dst")).unwrap();
    let img = registry::pull(&dest, &dst, &settings, &PullOptions::default()).unwrap();
    assert_eq!(img.manifest_digest, mdigest);
    // A layer pushed while written trusts the same CA and logs in the same.
    stream_and_read_back(&settings, &dest);
    // So does a big stored blob (`big_body`, with its length).
    let (bdigest, _) = build_image(&src, "amd64", &[("big", &noise(9 << 20))]);
    let bdest = r(&format!("{}/secure/app:big", reg.addr()));
    let report =
        registry::push(&src, &bdigest, &bdest, &settings, &PushOptions::default()).unwrap();
    assert_eq!(report.manifest_digest, bdigest);
    let img = registry::pull(&bdest, &dst, &settings, &PullOptions::default()).unwrap();
    assert_eq!(img.manifest_digest, bdigest);

    // Listed as insecure, the same registry is used without checking its
    // certificate (the CA is not given here).
    let mut unverified = quick_settings(tmp.path());
    unverified.insecure_registries = vec![reg.addr()];
    let img = registry::pull(&dest, &dst, &unverified, &PullOptions::default()).unwrap();
    assert_eq!(img.manifest_digest, mdigest);

    // `rbuild logout` removes them; the next push is refused again.
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["logout", &reg.addr()])
        .env("DOCKER_CONFIG", &docker_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Removed login credentials"));
    let text = std::fs::read_to_string(docker_dir.join("config.json")).unwrap();
    assert!(!text.contains(&reg.addr()), "{text}");
    let err =
        registry::push(&src, &mdigest, &dest, &settings, &PushOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("authentication required"));
}

/// A token server plus a gate in front of the registry: requests need a
/// bearer token from /token (basic creds bob:tokpw), and every token is
/// revoked once after `revoke_after` gated requests, to force a refresh.
#[test]
fn bearer_token_flow_with_refresh_mid_push() {
    if !have("docker-registry") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let valid: Arc<Mutex<HashSet<String>>> = Arc::default();
    let issued = Arc::new(AtomicUsize::new(0));
    let gated = Arc::new(AtomicUsize::new(0));
    let scopes_seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let ttl = Arc::new(AtomicUsize::new(300));
    let rejected = Arc::new(AtomicUsize::new(0));
    // Set: the next big blob PUT is refused once with a 401, its token revoked.
    let refuse_big_put = Arc::new(AtomicBool::new(false));
    let (v, i, g, ss, tt, rj, rb) = (
        valid.clone(),
        issued.clone(),
        gated.clone(),
        scopes_seen.clone(),
        ttl.clone(),
        rejected.clone(),
        refuse_big_put.clone(),
    );
    let handler = move |q: &Req| -> Action {
        if q.target.starts_with("/token") {
            let want = format!("Basic {}", base64_encode("bob:tokpw"));
            if q.header("authorization") != Some(want.as_str()) {
                return Action::Respond(401, vec![], b"{}".to_vec());
            }
            ss.lock().unwrap().push(q.target.clone());
            let n = i.fetch_add(1, Ordering::SeqCst);
            let tok = format!("tok-{n}-secretvalue");
            v.lock().unwrap().insert(tok.clone());
            let body = json!({"token": tok, "expires_in": tt.load(Ordering::SeqCst)}).to_string();
            return Action::Respond(
                200,
                vec![("Content-Type".into(), "application/json".into())],
                body.into_bytes(),
            );
        }
        let bearer = q
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "));
        let ok = bearer.is_some_and(|t| v.lock().unwrap().contains(t));
        if bearer.is_some() && !ok {
            rj.fetch_add(1, Ordering::SeqCst);
        }
        let refuse =
            q.method == "PUT" && q.body.len() >= 8 << 20 && rb.swap(false, Ordering::SeqCst);
        if refuse {
            v.lock().unwrap().clear();
        }
        if ok && !refuse {
            if g.fetch_add(1, Ordering::SeqCst) == 4 {
                v.lock().unwrap().clear();
            } else {
                return Action::Forward;
            }
        }
        let challenge = format!(
            "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"rbuild-test\",scope=\"repository:tok/app:pull,push\""
        );
        Action::Respond(
            401,
            vec![
                ("WWW-Authenticate".into(), challenge),
                ("Content-Type".into(), "application/json".into()),
            ],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
        )
    };
    // The gate listens on the port the challenge names.
    let proxy = start_on(port, reg.addr(), Arc::new(handler));
    let settings = quick_settings(tmp.path());
    let src = Store::open(&tmp.path().join("src")).unwrap();
    let (mdigest, _) = build_image(&src, "amd64", &[("a", b"token"), ("b", b"flow")]);
    let dest = r(&format!("{}/tok/app:v1", proxy.addr()));

    // No credentials: the token server refuses, in plain words.
    let msg = format!(
        "{:#}",
        registry::push(&src, &mdigest, &dest, &settings, &PushOptions::default()).unwrap_err()
    );
    assert!(
        msg.contains("token") && msg.contains("authentication required"),
        "{msg}"
    );

    settings
        .auth
        .store(
            &proxy.addr(),
            &registry::Credentials {
                username: "bob".into(),
                password: "tokpw".into(),
            },
        )
        .unwrap();
    let report = registry::push(&src, &mdigest, &dest, &settings, &PushOptions::default()).unwrap();
    assert_eq!(report.manifest_digest, mdigest);
    assert!(
        issued.load(Ordering::SeqCst) >= 2,
        "a revoked token was refreshed"
    );
    let scopes = scopes_seen.lock().unwrap().clone();
    assert!(
        scopes.iter().all(|s| s.contains("service=rbuild-test")
            && s.contains("scope=repository%3Atok%2Fapp%3Apull%2Cpush")),
        "{scopes:?}"
    );
    // Tokens are cached per scope: far fewer token requests than gated ones.
    assert!(issued.load(Ordering::SeqCst) < gated.load(Ordering::SeqCst) / 2);
    // A layer pushed while written carries the session's bearer token.
    proxy.clear();
    stream_and_read_back(&settings, &dest);
    let reqs = proxy.requests();
    let patch = reqs.iter().find(|q| q.method == "PATCH").expect("a PATCH");
    assert!(
        patch
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer tok-")),
        "{:?}",
        patch.headers
    );
    assert_eq!(patch.body.len(), 3_000_000);

    // A big stored blob goes through `big_body`: a 401 on its PUT gets a
    // new token and the blob is sent again, whole.
    let big = noise(9 << 20);
    let (bdigest, _) = build_image(&src, "amd64", &[("big", &big)]);
    let bdest = r(&format!("{}/tok/app:big", proxy.addr()));
    proxy.clear();
    refuse_big_put.store(true, Ordering::SeqCst);
    let before = issued.load(Ordering::SeqCst);
    let report =
        registry::push(&src, &bdigest, &bdest, &settings, &PushOptions::default()).unwrap();
    assert_eq!(report.manifest_digest, bdigest);
    assert!(
        !refuse_big_put.load(Ordering::SeqCst),
        "the big PUT was not seen"
    );
    assert!(issued.load(Ordering::SeqCst) > before, "no new token");
    let big_puts = proxy
        .requests()
        .iter()
        .filter(|q| q.method == "PUT" && q.body.len() >= 8 << 20)
        .count();
    assert_eq!(big_puts, 2, "refused once, then sent again");
    let dst = Store::open(&tmp.path().join("dst-big")).unwrap();
    let img = registry::pull(&bdest, &dst, &settings, &PullOptions::default()).unwrap();
    assert_eq!(img.manifest_digest, bdigest);

    let dst = Store::open(&tmp.path().join("dst")).unwrap();
    let img = registry::pull(&dest, &dst, &settings, &PullOptions::default()).unwrap();
    assert_eq!(img.manifest_digest, mdigest);
    let msg = format!(
        "{:#}",
        registry::pull(
            &r(&format!("{}/tok/app:missing", proxy.addr())),
            &dst,
            &settings,
            &PullOptions::default()
        )
        .unwrap_err()
    );
    assert!(msg.contains("MANIFEST_UNKNOWN"), "{msg}");
    assert!(
        !msg.contains("secretvalue") && !msg.contains("tokpw"),
        "{msg}"
    );

    // A cached token is reused until it expires, then renewed before use
    // (no 401 round trip).
    ttl.store(2, Ordering::SeqCst);
    let client = registry::Registry::new(&proxy.addr(), &settings).unwrap();
    assert!(
        !format!("{client:?}").contains("tokpw"),
        "Debug hides secrets"
    );
    let scopes = [registry::client::scope("tok/app", "pull")];
    let get = |c: &reqwest::blocking::Client, base: &str| {
        c.get(format!("{base}/v2/tok/app/manifests/v1"))
            .header("Accept", rbuild::oci::media::MANIFEST_TYPES.join(", "))
    };
    let status = |c: &registry::Registry| c.send(&scopes, "test", false, &get).unwrap().status();
    assert!(status(&client).is_success());
    let first = issued.load(Ordering::SeqCst);
    assert!(status(&client).is_success());
    assert_eq!(issued.load(Ordering::SeqCst), first, "cached");
    std::thread::sleep(Duration::from_millis(2100));
    rejected.store(0, Ordering::SeqCst);
    assert!(status(&client).is_success());
    assert_eq!(issued.load(Ordering::SeqCst), first + 1, "renewed");
    assert_eq!(rejected.load(Ordering::SeqCst), 0);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn start_on(port: u16, upstream: String, handler: Arc<Handler>) -> Proxy {
    // Same as Proxy::start but on a chosen port (the token realm names it).
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (up, h, l) = (upstream.clone(), handler.clone(), log2.clone());
            std::thread::spawn(move || {
                let _ = serve(conn, &up, &*h, &l);
            });
        }
    });
    Proxy { port, log }
}

#[test]
fn faults_are_retried_and_a_failed_blob_blocks_the_manifest() {
    if !have("docker-registry") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let tmp = tempfile::tempdir().unwrap();
    let settings = quick_settings(tmp.path());
    let src = Store::open(&tmp.path().join("src")).unwrap();
    let (mdigest, _) = build_image(
        &src,
        "amd64",
        &[("a", b"fault one"), ("b", b"fault two"), ("c", b"three")],
    );

    // Four faults (two 500s, two dropped connections) among the first
    // requests: no more than the client's retries, so the push must survive.
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let flaky = Proxy::start(
        reg.addr(),
        Arc::new(move |q: &Req| {
            if q.target == "/v2/" {
                return Action::Forward;
            }
            let k = n2.fetch_add(1, Ordering::SeqCst);
            if k == 2 || k == 7 {
                Action::Drop
            } else if k == 1 || k == 5 {
                Action::Respond(
                    500,
                    vec![],
                    br#"{"errors":[{"code":"UNKNOWN","message":"injected"}]}"#.to_vec(),
                )
            } else {
                Action::Forward
            }
        }),
    );
    let dest = r(&format!("{}/flaky:v1", flaky.addr()));
    let report = registry::push(&src, &mdigest, &dest, &settings, &PushOptions::default()).unwrap();
    assert_eq!(report.manifest_digest, mdigest);
    let needed = report.blobs.len() * 3 + 1;
    assert!(
        n.load(Ordering::SeqCst) > needed,
        "faults were injected and survived"
    );
    let dst = Store::open(&tmp.path().join("dst")).unwrap();
    let direct = r(&format!("{}/flaky:v1", reg.addr()));
    assert_eq!(
        registry::pull(&direct, &dst, &settings, &PullOptions::default())
            .unwrap()
            .manifest_digest,
        mdigest
    );

    // Uploads of one layer always fail: the push fails clearly after its
    // retries, and no manifest is written.
    let (bad_digest, _) = build_image(&src, "amd64", &[("x", b"never arrives"), ("y", b"fine")]);
    let broken = Proxy::start(
        reg.addr(),
        Arc::new(|q: &Req| {
            if q.method == "PUT" && q.target.contains("/blobs/uploads/") {
                let mut plain = Vec::new();
                let _ = flate2::read::MultiGzDecoder::new(&q.body[..]).read_to_end(&mut plain);
                if String::from_utf8_lossy(&plain).contains("never arrives") {
                    return Action::Respond(500, vec![], Vec::new());
                }
            }
            Action::Forward
        }),
    );
    let dest = r(&format!("{}/broken:v1", broken.addr()));
    let msg = format!(
        "{:#}",
        registry::push(&src, &bad_digest, &dest, &settings, &PushOptions::default()).unwrap_err()
    );
    assert!(
        msg.contains("manifest not pushed") && msg.contains("attempt"),
        "{msg}"
    );
    assert!(
        !broken
            .requests()
            .iter()
            .any(|q| q.target.contains("/manifests/")),
        "no manifest request at all"
    );
    let err = registry::pull(
        &r(&format!("{}/broken:v1", reg.addr())),
        &dst,
        &settings,
        &PullOptions::default(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("MANIFEST_UNKNOWN"));
}

#[test]
fn cli_push_and_pull_through_the_layout() {
    if !have("docker-registry") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let store = Store::open(&root).unwrap();
    let (mdigest, mbytes) = build_image(&store, "amd64", &[("cli", b"cli push")]);
    let name = format!("{}/cli/app:v1", reg.addr());
    tag(&store, &name, &mdigest, mbytes.len() as u64);
    let rb = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .arg("--root")
            .arg(&root)
            .args(args)
            .env("DOCKER_CONFIG", tmp.path().join("docker"))
            .env("RBUILD_CONFIG", tmp.path().join("none.json"))
            .output()
            .unwrap()
    };
    let digestfile = tmp.path().join("digest");
    let out = rb(&["push", &name, "--digestfile", digestfile.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), mdigest);
    assert_eq!(std::fs::read_to_string(&digestfile).unwrap(), mdigest);

    let root2 = tmp.path().join("root2");
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(&root2)
        .args(["pull", &name])
        .env("RBUILD_CONFIG", tmp.path().join("none.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), mdigest);
    let pulled = Store::open(&root2).unwrap();
    let got = pulled
        .resolve(&name)
        .unwrap()
        .map(|d| d.digest().to_string());
    assert_eq!(got, Some(mdigest));

    let out = rb(&["pull", "Bad/Name:v1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lowercase"));
}

/// On a non-terminal, `rbuild pull`/`push` print one line per blob that
/// says what happened to it: "pulled"/"pushed" only when bytes moved.
#[test]
fn cli_transfer_lines_say_once_what_happened_to_each_blob() {
    if !have("docker-registry") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let store = Store::open(&root).unwrap();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mdigest, mbytes) = build_image(&store, "amd64", &[("a", b"lines"), ("big", &big)]);
    let name = format!("{}/lines/app:v1", reg.addr());
    tag(&store, &name, &mdigest, mbytes.len() as u64);
    let rb = |root: &Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .arg("--root")
            .arg(root)
            .args(args)
            .env("DOCKER_CONFIG", tmp.path().join("docker"))
            .env("RBUILD_CONFIG", tmp.path().join("none.json"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    // Per blob (config + 2 layers): the first word of its one line.
    let words = |stderr: &str| {
        let mut seen: Vec<(String, String)> = stderr
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (word, digest) = (w.next()?, w.next()?);
                digest
                    .starts_with("sha256:")
                    .then(|| (digest.to_string(), word.to_string()))
            })
            .collect();
        seen.sort();
        seen
    };
    let all = |seen: &[(String, String)], word: &str| {
        seen.len() == 3 && seen.iter().all(|(_, w)| w == word)
    };
    let first = words(&rb(&root, &["push", &name]));
    assert!(all(&first, "pushed"), "{first:?}");
    let again = words(&rb(&root, &["push", &name]));
    assert!(
        all(&again, "exists"),
        "a second push uploads nothing: {again:?}"
    );

    let root2 = tmp.path().join("root2");
    let pulled = words(&rb(&root2, &["pull", &name]));
    assert!(all(&pulled, "pulled"), "{pulled:?}");
    let repulled = words(&rb(&root2, &["pull", &name]));
    assert!(
        all(&repulled, "exists"),
        "blobs already stored: {repulled:?}"
    );
}

#[test]
fn docker_hub_names_pull_through_a_mirror() {
    if !have("docker-registry") {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let tmp = tempfile::tempdir().unwrap();
    let src = Store::open(&tmp.path().join("src")).unwrap();
    let (mdigest, _) = build_image(&src, "amd64", &[("m", b"from the mirror")]);
    let mut settings = quick_settings(tmp.path());
    // A mirror holds Docker Hub's repositories under the same names.
    let on_mirror = r(&format!("{}/library/mirrored:v1", reg.addr()));
    registry::push(
        &src,
        &mdigest,
        &on_mirror,
        &settings,
        &PushOptions::default(),
    )
    .unwrap();

    settings.registry_mirrors = vec![format!("http://{}/", reg.addr())];
    let dst = Store::open(&tmp.path().join("dst")).unwrap();
    let blobs = Arc::new(Blobs::default());
    let opts = PullOptions {
        progress: Some(Transfer::new(blobs.clone(), 1)),
        ..Default::default()
    };
    let img = registry::pull(&r("mirrored:v1"), &dst, &settings, &opts).unwrap();
    assert_eq!(img.manifest_digest, mdigest);
    assert_eq!(img.source_host, reg.addr());
    assert_eq!(img.reference.to_string(), "docker.io/library/mirrored:v1");
    let seen = blobs.0.lock().unwrap();
    for l in &img.layers {
        assert!(
            seen.iter()
                .any(|(d, done, total, _)| d == &l.digest && done == total && *total == l.size),
            "progress reached the end of {}",
            l.digest
        );
    }
}
