//! Registries as untrusted input: each test runs a small misbehaving
//! registry (tests/hostile) and checks that rbuild fails fast with a clear
//! error, reads no more than it must, and builds no broken image.

use crate::common;
use crate::hostile;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hostile::{config_for, digest_of, layer, tls_wrap, Conn, Hostile, Image, Req, GZ};
use rbuild::oci::Reference;
use rbuild::registry::{self, AuthFiles, PullOptions, Settings};
use rbuild::store::Store;
use serde_json::json;

/// Settings that make every limit trip within a second or two.
fn fast(dir: &Path) -> Settings {
    Settings {
        retries: 1,
        backoff_ms: 10,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(1),
        min_speed: 1000,
        auth: AuthFiles {
            docker_config: dir.join("docker/config.json"),
            containers_auth: None,
        },
        ..Settings::default()
    }
}

/// Run `f` on a thread; a hang fails the test instead of hanging it.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => (v, start.elapsed()),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("still running after {secs} s: rbuild hangs")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("rbuild panicked"),
    }
}

/// Pull `reference` from `h` into a fresh layout; the error text, and the time taken.
fn pull_err(
    h: &Hostile,
    repo_tag: &str,
    settings: Settings,
) -> (String, Duration, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let reference = Reference::parse(&format!("{}/{repo_tag}", h.addr())).unwrap();
    let (res, took) = within(60, move || {
        registry::pull(&reference, &store, &settings, &PullOptions::default())
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    });
    let msg = res.expect_err("the pull should fail");
    (msg, took, dir)
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("store/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_registry_that_never_answers_times_out() {
    let h = Hostile::start(|_req: &Req, c: &mut Conn| c.silence());
    let tmp = tempfile::tempdir().unwrap();
    let (msg, took, _d) = pull_err(&h, "app:v1", fast(tmp.path()));
    assert!(
        msg.contains("did not answer") && msg.contains("--registry-timeout"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn manifests_that_never_come_or_trickle_fail() {
    let h = Hostile::start(|req: &Req, c: &mut Conn| match req.path.as_str() {
        "/v2/" => c.respond(200, &[], b"{}"),
        p if p.contains("/silent/") => c.silence(),
        p if p.contains("/blobs/") => c.trickle(&[], &[b' '; 5000], Duration::from_millis(50)),
        p if p.contains("/slowblob/") => {
            let m = json!({"schemaVersion": 2, "config": {"digest": digest_of(b"c"), "size": 5000}, "layers": []});
            c.respond(
                200,
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
                m.to_string().as_bytes(),
            )
        }
        _ => c.trickle(
            &[("Content-Type", "application/json")],
            &[b' '; 5000],
            Duration::from_millis(50),
        ),
    });
    let tmp = tempfile::tempdir().unwrap();
    let (msg, took, _d) = pull_err(&h, "silent/app:v1", fast(tmp.path()));
    assert!(msg.contains("no answer within 1 s"), "{msg}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let (msg, took, _d) = pull_err(&h, "slow/app:v1", fast(tmp.path()));
    assert!(msg.contains("below the minimum of 1000 bytes/s"), "{msg}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // A trickling blob is tried again (once, in these settings), and the
    // final error says so once.
    let (msg, took, _d) = pull_err(&h, "slowblob/app:v1", fast(tmp.path()));
    assert!(
        msg.contains("after 2 attempts") && msg.contains("bytes/s"),
        "{msg}"
    );
    assert_eq!(msg.matches("below the minimum").count(), 1, "{msg}");
    let blob = format!("/v2/slowblob/app/blobs/{}", digest_of(b"c"));
    assert_eq!(h.count(&blob), 2);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// Two layers declared as 1,000 bytes: one sent with a 2 GiB length, one
/// as an endless chunked body. Both stop at 1,001 bytes, are not retried,
/// and leave nothing in the store.
#[test]
fn blobs_stop_at_their_declared_size() {
    let (raw, gz) = layer(&[("a", b"a")]);
    let cfg = serde_json::to_vec(&config_for(&[&raw, &raw], true)).unwrap();
    let (big, chunked) = (digest_of(b"big"), digest_of(b"chunked"));
    let cd = digest_of(&cfg);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": [{"mediaType": GZ, "digest": big, "size": 1000}, {"mediaType": GZ, "digest": chunked, "size": 1000}],
    }))
    .unwrap();
    let _ = gz;
    let (b2, c2) = (big.clone(), chunked.clone());
    let h = Hostile::start(move |req: &Req, c: &mut Conn| {
        let p = req.path.as_str();
        if p == "/v2/" {
            c.respond(200, &[], b"{}")
        } else if p.ends_with("/manifests/v1") {
            c.respond(
                200,
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
                &manifest,
            )
        } else if p.ends_with(&cd) {
            c.respond(200, &[], &cfg)
        } else if p.ends_with(&b2) {
            c.endless(200, &[("Content-Length", "2147483648")], false)
        } else if p.ends_with(&c2) {
            c.endless(200, &[], true)
        } else {
            c.respond(404, &[], b"")
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let (msg, _took, dir) = pull_err(&h, "app:v1", fast(tmp.path()));
    assert_eq!(
        msg.matches("more than the 1000 bytes declared").count(),
        2,
        "{msg}"
    );
    for d in [&big, &chunked] {
        assert_eq!(
            h.count(&format!("/v2/app/blobs/{d}")),
            1,
            "{d} was fetched again"
        );
        assert!(!dir
            .path()
            .join("store/blobs")
            .join(d.replace(':', "/"))
            .exists());
    }
    // What the server managed to write before the client hung up: the
    // 1,001 bytes read plus socket buffers, nowhere near 2 GiB.
    eprintln!("the server wrote {} bytes before rbuild hung up", h.sent());
    assert!(h.sent() < 64 << 20, "server wrote {} bytes", h.sent());
    assert_eq!(blob_files(dir.path()), 1, "only the config is stored");
}

#[test]
fn error_and_token_bodies_are_capped() {
    let h = Hostile::start(|req: &Req, c: &mut Conn| {
        let host = req.header("host").unwrap_or("").to_string();
        match req.path.as_str() {
            "/v2/" => c.respond(200, &[], b"{}"),
            p if p.starts_with("/v2/missing/") => {
                c.endless(404, &[("Content-Length", "1073741824")], false)
            }
            p if p.starts_with("/v2/broken/") => c.endless(500, &[], true),
            p if p.starts_with("/token") => {
                c.endless(200, &[("Content-Type", "application/json")], true)
            }
            _ => {
                let realm = format!("Bearer realm=\"http://{host}/token\",service=\"t\"");
                c.respond(401, &[("WWW-Authenticate", &realm)], b"")
            }
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let (msg, _, _d) = pull_err(&h, "missing/app:v1", fast(tmp.path()));
    assert!(msg.contains("not found (HTTP 404)"), "{msg}");
    let (msg, _, _d) = pull_err(&h, "broken/app:v1", fast(tmp.path()));
    assert!(msg.contains("server error (HTTP 500)"), "{msg}");
    assert_eq!(h.count("/v2/broken/app/manifests/v1"), 2, "one retry");
    let (msg, _, _d) = pull_err(&h, "token/app:v1", fast(tmp.path()));
    assert!(msg.contains("more than the 1048576 bytes allowed"), "{msg}");
    // Three bodies of 1 GiB or more were offered; rbuild read 64 KiB or
    // 1 MiB of each (plus what the socket buffers took).
    eprintln!("the server wrote {} bytes before rbuild hung up", h.sent());
    assert!(h.sent() < 128 << 20, "server wrote {} bytes", h.sent());
}

/// Manifests rbuild must refuse before fetching any layer.
#[test]
fn bad_manifests_are_refused_before_any_layer_is_fetched() {
    let (raw, gz) = layer(&[("f", b"x")]);
    let cfg = config_for(&[&raw], true);
    let mut img = Image::new(
        "mystery",
        "v1",
        &[(gz.clone(), "application/x-mystery")],
        cfg.clone(),
    );
    for file in Image::new("bad", "v1", &[(gz.clone(), GZ)], cfg.clone()).files {
        let body = String::from_utf8(file.2.clone()).unwrap_or_default();
        let body = body.replace(&digest_of(&gz), "sha256:../../../../x");
        img.add(&file.0, &file.1, body.into_bytes());
    }
    let many: Vec<(Vec<u8>, &str)> = (0..1001)
        .map(|i| (format!("{i}").into_bytes(), GZ))
        .collect();
    let raws: Vec<Vec<u8>> = many.iter().map(|(b, _)| b.clone()).collect();
    let refs: Vec<&[u8]> = raws.iter().map(|r| r.as_slice()).collect();
    img.files
        .extend(Image::new("many", "v1", &many, config_for(&refs, false)).files);
    let mut short = cfg.clone();
    short["rootfs"]["diff_ids"] = json!([]);
    img.files
        .extend(Image::new("short", "v1", &[(gz.clone(), GZ)], short).files);
    let h = Hostile::start(move |req: &Req, c: &mut Conn| img.serve(req, c));
    let tmp = tempfile::tempdir().unwrap();

    let (msg, _, _d) = pull_err(&h, "mystery:v1", fast(tmp.path()));
    assert!(
        msg.contains("media type \"application/x-mystery\""),
        "{msg}"
    );
    let (msg, _, _d) = pull_err(&h, "bad:v1", fast(tmp.path()));
    assert!(
        msg.contains("invalid digest \"sha256:../../../../x\""),
        "{msg}"
    );
    let (msg, _, _d) = pull_err(&h, "many:v1", fast(tmp.path()));
    assert!(
        msg.contains("1001 layers, more than the limit of 1000") && msg.contains("--max-layers"),
        "{msg}"
    );
    let blobs: Vec<String> = h
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.contains("/blobs/"))
        .collect();
    assert!(blobs.is_empty(), "layers fetched: {blobs:?}");
    assert!(
        h.requests().iter().all(|r| r.path.starts_with("/v2/")),
        "{:?}",
        h.requests()
    );

    let (msg, _, _d) = pull_err(&h, "short:v1", fast(tmp.path()));
    assert!(msg.contains("0 diff_ids for 1 layers"), "{msg}");
    // A raised limit lets the big image through to the blobs.
    let raised = Settings {
        max_layers: 2000,
        ..fast(tmp.path())
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/many:v1", h.addr())).unwrap();
    let pulled = registry::pull(&reference, &store, &raised, &PullOptions::default());
    let layers = pulled.map(|p| p.layers.len()).map_err(|e| format!("{e:#}"));
    assert_eq!(layers, Ok(1001));
}

#[test]
fn a_refused_connection_is_retried_until_the_registry_is_up() {
    let port = common::free_port();
    let (raw, gz) = layer(&[("f", b"late")]);
    let img = Image::new("late", "v1", &[(gz, GZ)], config_for(&[&raw], true));
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        Hostile::start_with(
            l,
            None,
            std::sync::Arc::new(move |r: &Req, c: &mut Conn| img.serve(r, c)),
        )
    });
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings {
        retries: 4,
        backoff_ms: 200,
        ..fast(tmp.path())
    };
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let reference = Reference::parse(&format!("127.0.0.1:{port}/late:v1")).unwrap();
    let pulled = registry::pull(&reference, &store, &settings, &PullOptions::default());
    let _server = starter.join().unwrap();
    let pulled = pulled.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(pulled.layers.len(), 1);
}

#[test]
fn cli_reports_each_retry_once_and_the_final_error_once() {
    let env = common::Env::new();
    let port = common::free_port();
    let start = Instant::now();
    let out = env.rbuild(&["pull", &format!("127.0.0.1:{port}/a:b")]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let warnings: Vec<&&str> = lines.iter().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 4, "{err}");
    for (i, w) in warnings.iter().enumerate() {
        assert_eq!(w.matches("Connection refused").count(), 1, "{w}");
        assert!(w.contains(&format!("attempt {} of 5", i + 1)), "{w}");
    }
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(errors[0].matches("Connection refused").count(), 1, "{err}");
    assert!(errors[0].contains("after 5 attempts"), "{err}");
    assert!(
        start.elapsed() > Duration::from_millis(2500),
        "retried with backoff"
    );
}

// ------------------------------------------------------------------ TLS

/// Exactly the certificate docker's "test an insecure registry" guide
/// makes: self-signed, `CA:TRUE` (openssl's default for -x509), an IP SAN.
fn docker_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (key, crt) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    let out = std::process::Command::new("openssl")
        .args(["req", "-newkey", "rsa:4096", "-nodes", "-sha256", "-keyout"])
        .arg(&key)
        .args([
            "-addext",
            "subjectAltName = IP:127.0.0.1",
            "-x509",
            "-days",
            "365",
        ])
        .args(["-subj", "/CN=rbuild test registry", "-out"])
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

/// An image in a fresh store; returns the store and manifest digest.
fn local_image(dir: &Path) -> (Store, String) {
    use rbuild::registry::BlobStore;
    let store = Store::open(dir).unwrap();
    let (raw, gz) = layer(&[("tls.txt", b"over tls")]);
    let img = Image::new("x", "v1", &[(gz, GZ)], config_for(&[&raw], true));
    let mut manifest = String::new();
    for (path, _, bytes) in &img.files {
        let d = digest_of(bytes);
        store
            .write_blob(&d, Some(bytes.len() as u64), &mut &bytes[..])
            .unwrap();
        if path.contains("/manifests/") {
            manifest = d;
        }
    }
    (store, manifest)
}

#[test]
fn dockers_self_signed_certificate_is_trusted_where_configured_and_nowhere_else() {
    if common::tool("docker-registry", "docker-registry").is_none()
        || common::tool("openssl", "openssl").is_none()
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (crt, key) = docker_cert(tmp.path(), "domain");
    let (other, _) = docker_cert(tmp.path(), "other");
    let reg = common::RegistryGuard::start(common::RegistryConf {
        tls: Some((crt.clone(), key)),
        htpasswd: None,
    });
    let (src, mdigest) = local_image(&tmp.path().join("src"));
    let dest = Reference::parse(&format!("{}/tls/app:v1", reg.addr())).unwrap();
    let mut settings = fast(tmp.path());
    settings.response_timeout = Duration::from_secs(30);
    settings.ca_files = vec![crt.clone()];
    registry::push(
        &src,
        &mdigest,
        &dest,
        &settings,
        &registry::PushOptions::default(),
    )
    .unwrap_or_else(|e| panic!("push with the pinned certificate: {e:#}"));

    // The CLI with SSL_CERT_FILE, as a CI job would set it.
    let env = common::Env::new();
    let pull = |cert: &Path, reference: &str| {
        std::process::Command::new(common::rbuild_bin())
            .arg("--root")
            .arg(env.root())
            .args(["pull", reference])
            .env("SSL_CERT_FILE", cert)
            .output()
            .unwrap()
    };
    let out = pull(&crt, &dest.to_string());
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Strict otherwise: another self-signed certificate is not trusted,
    // and the pinned one is only good for the name it was made for.
    let out = pull(&other, &dest.to_string());
    let err = common::stderr(&out);
    assert!(
        !out.status.success() && err.contains("TLS certificate verification failed"),
        "{err}"
    );
    let by_name = format!("localhost:{}/tls/app:v1", reg.port);
    let out = pull(&crt, &by_name);
    let err = common::stderr(&out);
    assert!(
        !out.status.success() && err.contains("not valid for name"),
        "{err}"
    );
    assert!(!err.contains("http://"), "no plain-HTTP fallback: {err}");
}

/// A pinned certificate is trusted only within its validity dates.
#[test]
fn an_expired_pinned_certificate_is_refused() {
    if common::tool("openssl", "openssl").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (key, csr, crt) = (
        tmp.path().join("k.pem"),
        tmp.path().join("c.csr"),
        tmp.path().join("c.crt"),
    );
    let ext = tmp.path().join("ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:TRUE\n",
    )
    .unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |x: &str| std::ffi::OsStr::new(x).to_owned();
    openssl(&[
        &s("req"),
        &s("-newkey"),
        &s("rsa:2048"),
        &s("-nodes"),
        &s("-subj"),
        &s("/CN=old"),
        &s("-keyout"),
        key.as_os_str(),
        &s("-out"),
        csr.as_os_str(),
    ]);
    // Signed by itself, valid until yesterday.
    openssl(&[
        &s("x509"),
        &s("-req"),
        &s("-in"),
        csr.as_os_str(),
        &s("-signkey"),
        key.as_os_str(),
        &s("-days"),
        &s("-1"),
        &s("-extfile"),
        ext.as_os_str(),
        &s("-out"),
        crt.as_os_str(),
    ]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let h = Hostile::start_with(
        listener,
        Some(tls_wrap(&crt, &key)),
        std::sync::Arc::new(|_r: &Req, c: &mut Conn| c.respond(200, &[], b"{}")),
    );
    let mut settings = fast(tmp.path());
    settings.ca_files = vec![crt];
    let (msg, _, _d) = pull_err(&h, "app:v1", settings);
    assert!(
        msg.contains("TLS certificate verification failed") && msg.contains("Expired"),
        "{msg}"
    );
}

/// A TLS registry whose token realm is plain HTTP gets no credentials;
/// an HTTPS realm (on any host, as docker allows) gets them.
#[test]
fn credentials_never_go_to_a_plain_http_realm_of_a_tls_registry() {
    if common::tool("openssl", "openssl").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (crt, key) = docker_cert(tmp.path(), "realm");
    let wrap = tls_wrap(&crt, &key);
    let plain = Hostile::start(|_r: &Req, c: &mut Conn| c.respond(200, &[], br#"{"token":"t"}"#));
    let plain_realm = format!("http://{}/token", plain.addr());
    // One TLS registry whose realm is plain HTTP, one whose realm is itself.
    let tls_server = |realm: Option<String>| {
        let handler = move |r: &Req, c: &mut Conn| {
            if r.path.starts_with("/token") {
                // An expiry no clock can hold.
                let body = br#"{"token":"t","expires_in":18446744073709551615}"#;
                return c.respond(200, &[], body);
            }
            if r.header("authorization") == Some("Bearer t") {
                return c.respond(404, &[], b"");
            }
            let own = format!("https://{}/token", r.header("host").unwrap_or(""));
            let challenge = format!(
                "Bearer realm=\"{}\",service=\"reg\"",
                realm.as_deref().unwrap_or(&own)
            );
            c.respond(401, &[("WWW-Authenticate", &challenge)], b"")
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Hostile::start_with(listener, Some(wrap.clone()), std::sync::Arc::new(handler))
    };
    let downgrade = tls_server(Some(plain_realm));
    let tls = tls_server(None);
    let mut settings = fast(tmp.path());
    settings.ca_files = vec![crt];
    // u:secret, for both registries.
    let auth = json!({"auths": {
        tls.addr(): {"auth": "dTpzZWNyZXQ="},
        downgrade.addr(): {"auth": "dTpzZWNyZXQ="},
    }});
    std::fs::create_dir_all(tmp.path().join("docker")).unwrap();
    std::fs::write(tmp.path().join("docker/config.json"), auth.to_string()).unwrap();

    let (msg, _, _d) = pull_err(&downgrade, "plain/app:v1", settings.clone());
    assert!(msg.contains("token realm over plain HTTP"), "{msg}");
    assert!(plain.requests().is_empty(), "the plain realm was contacted");

    let (msg, _, _d) = pull_err(&tls, "tls/app:v1", settings);
    assert!(msg.contains("HTTP 404"), "{msg}");
    let token_reqs: Vec<Req> = tls
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    assert_eq!(token_reqs.len(), 1);
    assert_eq!(
        token_reqs[0].header("authorization"),
        Some("Basic dTpzZWNyZXQ=")
    );
}

// ------------------------------------------------------------ builds on bad bases

/// `rbuild --root ROOT ARGS…` with extra environment variables.
fn rbuild_with(env: &common::Env, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::rbuild_bin());
    cmd.arg("--root").arg(env.root()).args(args);
    cmd.env_remove("SOURCE_DATE_EPOCH")
        .env("RBUILD_REGISTRY_TIMEOUT", "5");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("running rbuild")
}

/// Leftover unpack views in the store's temp dir.
fn rootfs_leftovers(env: &common::Env) -> Vec<String> {
    std::fs::read_dir(env.root().join("rbuild/tmp"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("rootfs-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Base images served by one registry: without history, with a wrong
/// diff_id, and with a small gzip that expands to 4 MiB.
fn bad_bases() -> Hostile {
    let (raw, gz) = layer(&[("etc/base.txt", b"base")]);
    let mut all = Image::new(
        "nohist",
        "v1",
        &[(gz.clone(), GZ)],
        config_for(&[&raw], false),
    );
    let mut wrong = config_for(&[&raw], true);
    wrong["rootfs"]["diff_ids"] = json!([digest_of(b"not this layer")]);
    all.files
        .extend(Image::new("wrongdiff", "v1", &[(gz, GZ)], wrong).files);
    let zeros = vec![0u8; 4 << 20];
    let (raw, gz) = layer(&[("zeros", &zeros)]);
    assert!(gz.len() < 64 << 10, "the bomb is small compressed");
    all.files
        .extend(Image::new("bomb", "v1", &[(gz, GZ)], config_for(&[&raw], true)).files);
    Hostile::start(move |r: &Req, c: &mut Conn| all.serve(r, c))
}

/// A Dockerfile whose COPY makes rbuild unpack `base`.
fn dockerfile(h: &Hostile, base: &str) -> String {
    format!(
        "FROM {}/{base}:v1\nCOPY a.txt /a.txt\nWORKDIR /w\n",
        h.addr()
    )
}

#[test]
fn a_base_without_history_builds() {
    let h = bad_bases();
    let env = common::Env::new();
    let dockerfile = |base: &str| dockerfile(&h, base);
    let ctx = env.context(
        "nohist",
        &[("Dockerfile", &dockerfile("nohist")), ("a.txt", "a")],
    );
    let out = rbuild_with(&env, &["build", "-t", "ok:v1", ctx.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = env.rbuild_ok(&["inspect", "ok:v1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = v["Config"]["rootfs"]["diff_ids"].as_array().unwrap().len();
    let history = v["Config"]["history"].as_array().unwrap();
    let with_layer = history
        .iter()
        .filter(|h| h["empty_layer"] != json!(true))
        .count();
    assert_eq!(with_layer, layers, "history and layers agree: {history:?}");
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_fails_the_build() {
    let h = bad_bases();
    let env = common::Env::new();
    let dockerfile = |base: &str| dockerfile(&h, base);

    let ctx = env.context(
        "wrong",
        &[("Dockerfile", &dockerfile("wrongdiff")), ("a.txt", "a")],
    );
    let out = rbuild_with(&env, &["build", "-t", "bad:v1", ctx.to_str().unwrap()], &[]);
    let err = common::stderr(&out);
    assert!(
        !out.status.success() && err.contains("but the image config says"),
        "{err}"
    );
    assert!(
        env.rbuild(&["inspect", "bad:v1"]).status.code() != Some(0),
        "no image tagged"
    );
    assert_eq!(rootfs_leftovers(&env), Vec::<String>::new());
}

#[test]
fn a_layer_expanding_past_the_limit_fails_the_build() {
    let h = bad_bases();
    let env = common::Env::new();
    let dockerfile = |base: &str| dockerfile(&h, base);

    let ctx = env.context(
        "bomb",
        &[("Dockerfile", &dockerfile("bomb")), ("a.txt", "a")],
    );
    let args = ["build", "-t", "bomb:v1", ctx.to_str().unwrap()];
    let out = rbuild_with(&env, &args, &[("RBUILD_MAX_LAYER_SIZE", "1M")]);
    let err = common::stderr(&out);
    assert!(
        !out.status.success() && err.contains("expands to more than 1048576 bytes"),
        "{err}"
    );
    assert!(err.contains("--max-layer-size"), "{err}");
    assert_eq!(rootfs_leftovers(&env), Vec::<String>::new());
    // The flag raises the limit.
    let out = rbuild_with(
        &env,
        &[
            "build",
            "--max-layer-size",
            "8M",
            "-t",
            "bomb:v1",
            ctx.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
}

/// An endless layer, as a writer that keeps producing.
struct Endless;

impl std::io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        buf.fill(b'z');
        Ok(buf.len())
    }
}

/// A registry that opens an upload session and then reads nothing of
/// the streamed PATCH: the stream fails at the response timeout, and a
/// cancel ends it even with no timeout (a build's end waits for it).
#[test]
fn a_streamed_layer_the_registry_stops_reading_fails_or_is_cancelled() {
    let h = Hostile::start(|req: &Req, c: &mut Conn| match req.method.as_str() {
        _ if req.path == "/v2/" => c.respond(200, &[], b"{}"),
        "POST" => c.respond(202, &[("Location", "/v2/app/blobs/uploads/u1")], b""),
        _ => c.silence(),
    });
    let stream = |settings: Settings, cancel: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        let dest = Reference::parse(&format!("{}/app:v1", h.addr())).unwrap();
        within(30, move || {
            registry::upload_streamed(&settings, &dest, Box::new(Endless), cancel, || {
                Some(digest_of(b"never"))
            })
            .map_err(|e| format!("{e:#}"))
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let (res, took) = stream(fast(tmp.path()), Default::default());
    let msg = res.expect_err("a stalled stream must fail");
    assert!(
        msg.contains("took none of the body") && msg.contains("--registry-timeout"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // No timeout at all: only the cancel can end it.
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let unbounded = Settings {
        response_timeout: Duration::ZERO,
        min_speed: 0,
        ..fast(tmp.path())
    };
    let (res, took) = stream(unbounded, cancel);
    let msg = res.expect_err("a cancelled stream must fail");
    assert!(msg.contains("cancelled"), "{msg}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Neither asked to commit anything.
    assert!(h.requests().iter().all(|r| r.method != "PUT"));
}
