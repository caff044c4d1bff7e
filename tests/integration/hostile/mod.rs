//! Small misbehaving registries for tests: a std TcpListener in a thread,
//! one thread per connection, each answer a closure. Every server stops on
//! drop, and every connection thread gives up after a deadline, so no
//! test can hang or stream forever: "endless" bodies run until the client
//! hangs up, and the bytes actually written are counted.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// No connection thread lives longer than this.
pub const CONN_DEADLINE: Duration = Duration::from_secs(60);

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The connection a handler answers on, with the server's counters.
pub struct Conn<'a> {
    pub stream: &'a mut dyn ReadWrite,
    stop: &'a AtomicBool,
    sent: &'a AtomicU64,
    started: Instant,
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

impl Conn<'_> {
    /// Whether the handler should give up (server dropped or deadline).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.started.elapsed() > CONN_DEADLINE
    }

    /// Write and count; false once the client is gone.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        if self.stream.write_all(bytes).is_err() || self.stream.flush().is_err() {
            return false;
        }
        self.sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        true
    }

    /// A whole response with a Content-Length body.
    pub fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = self.send(head.as_bytes()) && self.send(body);
    }

    /// Headers as given, then zeros until the client hangs up (chunked
    /// when `chunked`, else the headers should carry a length or none).
    pub fn endless(&mut self, status: u16, headers: &[(&str, &str)], chunked: bool) {
        let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
        if chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if !self.send(head.as_bytes()) {
            return;
        }
        let block = vec![b'0'; 64 << 10];
        let chunk = [
            format!("{:x}\r\n", block.len()).into_bytes(),
            block.clone(),
            b"\r\n".to_vec(),
        ]
        .concat();
        let piece = if chunked { &chunk } else { &block };
        while !self.stopping() && self.send(piece) {}
    }

    /// Headers, then `body` one byte every `every`.
    pub fn trickle(&mut self, headers: &[(&str, &str)], body: &[u8], every: Duration) {
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if !self.send(head.as_bytes()) {
            return;
        }
        for b in body {
            if self.stopping() || !self.send(&[*b]) {
                return;
            }
            std::thread::sleep(every);
        }
    }

    /// Say nothing until the client gives up or the server stops.
    pub fn silence(&mut self) {
        while !self.stopping() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub type Handler = dyn Fn(&Req, &mut Conn) + Send + Sync;
/// Wraps an accepted socket (e.g. in TLS) before the request is read.
pub type Wrap = dyn Fn(TcpStream) -> Option<Box<dyn ReadWrite + Send>> + Send + Sync;

/// A running server; stopped (and its threads told to end) on drop.
pub struct Hostile {
    pub port: u16,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Hostile {
    pub fn start(handler: impl Fn(&Req, &mut Conn) + Send + Sync + 'static) -> Hostile {
        Self::start_with(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            None,
            Arc::new(handler),
        )
    }

    pub fn start_with(
        listener: TcpListener,
        wrap: Option<Arc<Wrap>>,
        handler: Arc<Handler>,
    ) -> Hostile {
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop2, sent2, log2) = (stop.clone(), sent.clone(), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, st, se, lg, w) = (
                    handler.clone(),
                    stop2.clone(),
                    sent2.clone(),
                    log2.clone(),
                    wrap.clone(),
                );
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut stream: Box<dyn ReadWrite + Send> = match &w {
                        Some(w) => match w(conn) {
                            Some(s) => s,
                            None => return,
                        },
                        None => Box::new(conn),
                    };
                    let Some(req) = read_request(&mut stream) else {
                        return;
                    };
                    lg.lock().unwrap().push(req.clone());
                    let mut c = Conn {
                        stream: &mut *stream,
                        stop: &st,
                        sent: &se,
                        started: Instant::now(),
                    };
                    h(&req, &mut c);
                });
            }
        });
        Hostile {
            port,
            stop,
            sent,
            log,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Body and header bytes written so far, over all connections.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    /// How many requests asked for `path`.
    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn read_request(stream: &mut dyn ReadWrite) -> Option<Req> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    // Request bodies (uploads) are not needed by these servers: GETs only.
    Some(Req {
        method,
        path,
        headers,
    })
}

// ------------------------------------------------------------ image content

pub fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A tar holding `files`, and its gzip.
pub fn layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        tar.append_data(&mut h, name, *content).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    (raw, gz.finish().unwrap())
}

/// A static image: path → (content type, bytes), served by [`Image::serve`].
#[derive(Default, Clone)]
pub struct Image {
    pub files: Vec<(String, String, Vec<u8>)>,
}

impl Image {
    /// An image of `repo:tag` from gzip layers, a config JSON value (its
    /// `rootfs.diff_ids` filled from `diff_ids` unless already set) and
    /// per-layer media types.
    pub fn new(
        repo: &str,
        tag: &str,
        layers: &[(Vec<u8>, &str)],
        config: serde_json::Value,
    ) -> Image {
        let mut img = Image::default();
        let cfg = serde_json::to_vec(&config).unwrap();
        let cd = digest_of(&cfg);
        img.add(
            &format!("/v2/{repo}/blobs/{cd}"),
            "application/octet-stream",
            cfg.clone(),
        );
        let mut descs = Vec::new();
        for (blob, mt) in layers {
            let d = digest_of(blob);
            img.add(
                &format!("/v2/{repo}/blobs/{d}"),
                "application/octet-stream",
                blob.clone(),
            );
            descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
            "layers": descs,
        }))
        .unwrap();
        img.add(
            &format!("/v2/{repo}/manifests/{tag}"),
            "application/vnd.oci.image.manifest.v1+json",
            manifest,
        );
        img
    }

    pub fn add(&mut self, path: &str, content_type: &str, bytes: Vec<u8>) {
        self.files
            .push((path.to_string(), content_type.to_string(), bytes));
    }

    /// Answer `/v2/` and the stored paths; 404 for the rest.
    pub fn serve(&self, req: &Req, c: &mut Conn) {
        if req.path == "/v2/" {
            return c.respond(200, &[], b"{}");
        }
        match self.files.iter().find(|(p, _, _)| *p == req.path) {
            Some((_, ct, body)) => c.respond(200, &[("Content-Type", ct)], body),
            None => c.respond(
                404,
                &[("Content-Type", "application/json")],
                br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}"#,
            ),
        }
    }
}

pub const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The usual config for one layer whose tar is `raw`.
pub fn config_for(raws: &[&[u8]], with_history: bool) -> serde_json::Value {
    let ids: Vec<String> = raws.iter().map(|r| digest_of(r)).collect();
    let mut c = serde_json::json!({
        "architecture": host_arch(), "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": ids},
    });
    if with_history {
        c["history"] = serde_json::json!(raws
            .iter()
            .map(|_| serde_json::json!({"created_by": "test"}))
            .collect::<Vec<_>>());
    }
    c
}

pub fn host_arch() -> String {
    rbuild::oci::Platform::host().arch
}

/// Wrap accepted sockets in TLS with the PEM certificate and key given.
pub fn tls_wrap(crt: &std::path::Path, key: &std::path::Path) -> Arc<Wrap> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(crt)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let config = Arc::new(config);
    Arc::new(move |tcp| {
        let conn = rustls::ServerConnection::new(config.clone()).ok()?;
        Some(Box::new(rustls::StreamOwned::new(conn, tcp)) as Box<dyn ReadWrite + Send>)
    })
}
