//! A request body read from a blocking `Read` and sent in large pieces.
//!
//! reqwest's blocking body reads its `Read` 8 KiB at a time, zeroes a new
//! buffer for each piece and hands it to the connection's thread through
//! a channel that holds one piece: a 238 MB layer became about 29,000
//! thread switches, 0.7-0.9 CPU-s of a CI job on two cores (the
//! `stream-push` and `reqwest-internal` threads; docs/benchmarks.md).
//! Here a thread of its own reads pieces of up to `PIECE` bytes (as much
//! as the reader has, so a slow writer's bytes are not held back) into a
//! queue of `QUEUE`, and one request on reqwest's async client, driven
//! by a current-thread runtime on the calling thread, sends them. Used
//! for a layer streamed while it is written (`stream`) and for stored
//! blobs of at least `BIG_BODY` bytes (`push`).

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::StatusCode;
use tokio::sync::mpsc;

use super::body::MAX_ERROR_BODY;
use super::client::{api_error_from, error_chain, Registry};

/// The most one read asks for, and so the largest piece sent.
const PIECE: usize = 1 << 20;
/// Pieces read ahead of the connection: at most `QUEUE * PIECE` bytes.
const QUEUE: usize = 4;
/// Stored blobs at least this big are uploaded here. Below it the
/// blocking client's kept-alive connection is worth more than the pieces
/// (each request here opens a connection of its own).
pub(super) const BIG_BODY: u64 = 8 << 20;

/// A registry's answer: status, headers and the start of its body.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// At most `MAX_ERROR_BODY` bytes of the body (errors explain here).
    pub text: String,
}

impl Answer {
    /// `Registry::expect_status` for an answer: an error unless its
    /// status is one of `ok`.
    pub(super) fn expect(self, ok: &[StatusCode], what: &str) -> Result<Answer> {
        if ok.contains(&self.status) {
            return Ok(self);
        }
        if self.status.is_success() {
            bail!("{what}: unexpected HTTP status {}", self.status);
        }
        Err(api_error_from(self.status, &self.text, what).into())
    }
}

/// A body for `Registry::send_big`: opened again for each attempt (a
/// streamed body that cannot be fails its second opening).
pub(super) type OpenBody<'a> = &'a dyn Fn() -> Result<Box<dyn Read + Send>>;

impl Registry {
    /// What `send` does for one request, for a body too big for the
    /// blocking client's 8 KiB pieces: the credentials `send` would add,
    /// and one more attempt after a 401 that names a usable challenge,
    /// with the body opened again. Nothing else is retried here. `len` is
    /// the body's length when known (else it is sent chunked).
    pub(super) fn send_big(
        &self,
        scopes: &[String],
        what: &str,
        build: &dyn Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
        open: OpenBody<'_>,
        len: Option<u64>,
    ) -> Result<Answer> {
        let base = self.base_url()?;
        let http = self.big_client()?;
        let failed = format!("{what}: request to {} failed", self.host());
        let mut reauthed = false;
        loop {
            let mut req = build(&http, &base)
                .build()
                .map_err(|e| anyhow!("{what}: invalid request: {}", error_chain(&e)))?;
            let (value, used) = self.credential_for(req.url(), &base, scopes)?;
            if let Some(value) = value {
                req.headers_mut().insert(AUTHORIZATION, value);
            }
            let answer = send(&http, req, open()?, len, self.answer_window(), &failed)?;
            if answer.status == StatusCode::UNAUTHORIZED && !reauthed {
                reauthed = true;
                let had = self.note_challenge(&answer.headers);
                self.forget_token(scopes, used.as_deref());
                if had && (self.has_credentials() || self.is_bearer()) {
                    continue;
                }
            }
            return Ok(answer);
        }
    }
}

/// Sends `req` on `http` with `body` as its body (`len` bytes, or chunked
/// when unknown) and waits for the answer, reading what its body brings
/// within `window` (a trickling error body is cut there). A read error
/// fails the body, so the registry never sees it end: an upload cut short
/// is never committed.
fn send(
    http: &reqwest::Client,
    mut req: reqwest::Request,
    body: Box<dyn Read + Send>,
    len: Option<u64>,
    window: Duration,
    what: &str,
) -> Result<Answer> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("{what}: starting the upload's runtime: {e}"))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    // Not joined: when the request ends early the thread ends at its next
    // read, whose send finds the queue closed.
    std::thread::Builder::new()
        .name("upload-read".into())
        .spawn(move || pump(body, tx))
        .map_err(|e| anyhow!("{what}: starting the upload's reader: {e}"))?;
    *req.body_mut() = Some(reqwest::Body::wrap(Pieces { rx, len }));
    rt.block_on(async move {
        let fail = |e: reqwest::Error| anyhow!("{what}: {}", error_chain(&e));
        let mut resp = http.execute(req).await.map_err(fail)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut text = Vec::new();
        let read = async {
            while (text.len() as u64) < MAX_ERROR_BODY {
                match resp.chunk().await {
                    Ok(Some(c)) => text.extend_from_slice(&c),
                    // The start of an error body is enough to explain it.
                    Ok(None) | Err(_) => break,
                }
            }
        };
        let _what_came_in_time_is_enough = tokio::time::timeout(window, read).await;
        text.truncate(usize::try_from(MAX_ERROR_BODY).unwrap_or(usize::MAX));
        Ok(Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&text).into_owned(),
        })
    })
}

/// Reads `body` into the queue until it ends, fails, or the request is
/// gone (the queue closed). Buffers come back from the connection when
/// it is done with them (`Piece`): a fresh 1 MiB for each piece cost page
/// faults and a memset each time.
fn pump(mut body: Box<dyn Read + Send>, tx: mpsc::Sender<io::Result<Bytes>>) {
    let (back, spare) = crossbeam_channel::bounded(QUEUE + 2);
    loop {
        let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0u8; PIECE]);
        let n = loop {
            match body.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                Ok(n) => break n,
            }
        };
        if n == 0 {
            return;
        }
        let piece = Piece {
            buf,
            len: n,
            back: back.clone(),
        };
        if tx.blocking_send(Ok(Bytes::from_owner(piece))).is_err() {
            return;
        }
    }
}

/// A piece's bytes, its buffer handed back to `pump` when dropped.
struct Piece {
    buf: Vec<u8>,
    len: usize,
    back: crossbeam_channel::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        // Full or gone: the buffer is simply freed.
        let _ = self.back.try_send(std::mem::take(&mut self.buf));
    }
}

/// The queue as an HTTP body: its end (the sender dropped) ends the body.
struct Pieces {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    /// The body's length, when known: sent as its Content-Length.
    len: Option<u64>,
}

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        self.len.map(SizeHint::with_exact).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-request HTTP/1.1 server on loopback: returns the body it
    /// received (None if the body never ended), answers `answer`, and
    /// keeps the connection open for `linger` after it.
    fn serve_once(
        answer: &'static [u8],
        linger: Duration,
    ) -> (String, std::thread::JoinHandle<Option<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/up", l.local_addr().expect("addr"));
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().ok()?;
            let mut r = BufReader::new(s.try_clone().ok()?);
            let mut line = String::new();
            let mut sized = None;
            loop {
                line.clear();
                if r.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                if line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    sized = v.trim().parse::<usize>().ok();
                }
            }
            let mut body = Vec::new();
            if let Some(n) = sized {
                body.resize(n, 0);
                r.read_exact(&mut body).ok()?;
                let mut s = s;
                let _ = s.write_all(answer);
                std::thread::sleep(linger);
                return Some(body);
            }
            let ended = loop {
                line.clear();
                if r.read_line(&mut line).ok()? == 0 {
                    break false;
                }
                let Ok(n) = usize::from_str_radix(line.trim(), 16) else {
                    break false;
                };
                let mut chunk = vec![0u8; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    break false;
                }
                if n == 0 {
                    break true;
                }
                body.extend_from_slice(&chunk[..n]);
            };
            let mut s = s;
            let _ = s.write_all(answer);
            std::thread::sleep(linger);
            ended.then_some(body)
        });
        (url, h)
    }

    const WINDOW: Duration = Duration::from_secs(30);

    fn patch(url: &str) -> (reqwest::Client, reqwest::Request) {
        let http = reqwest::Client::new();
        let req = http.patch(url).build().expect("request");
        (http, req)
    }

    /// `body` (of length `len`, if told) sent to a one-request server
    /// that answers `answer`: the result, and the body the server saw
    /// end, if it did.
    fn send_once(
        answer: &'static [u8],
        body: Box<dyn Read + Send>,
        len: Option<u64>,
    ) -> (Result<Answer>, Option<Vec<u8>>) {
        let (url, h) = serve_once(answer, Duration::ZERO);
        let (http, req) = patch(&url);
        let r = send(&http, req, body, len, WINDOW, "test");
        (r, h.join().expect("server"))
    }

    /// `n` bytes of a pattern that repeats every `period`.
    fn pattern(n: u32, period: u32) -> Vec<u8> {
        (0..n).map(|i| (i % period) as u8).collect()
    }

    #[test]
    fn a_body_of_known_length_goes_with_it_and_a_short_one_fails() {
        let created = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let data = pattern(2_500_000, 241);
        let len = Some(data.len() as u64);
        let (r, got) = send_once(created, Box::new(io::Cursor::new(data.clone())), len);
        assert_eq!(r.expect("send").status, StatusCode::CREATED);
        assert_eq!(got, Some(data.clone()));
        // A body that ends before its length: the request fails, and the
        // server never gets the length it was promised.
        let short = Box::new(io::Cursor::new(data[..1000].to_vec()));
        let (r, got) = send_once(created, short, len);
        assert!(r.is_err());
        assert_eq!(got, None);
    }

    #[test]
    fn a_trickling_answer_is_cut_at_the_window() {
        // Answers 400 with a body it never finishes.
        let answer = b"HTTP/1.1 400 Bad\r\nContent-Length: 100000\r\n\r\n{\"errors\"";
        let (url, server) = serve_once(answer, Duration::from_secs(5));
        let started = std::time::Instant::now();
        let (http, req) = patch(&url);
        let window = Duration::from_millis(500);
        let body = Box::new(io::Cursor::new(vec![7u8; 1000]));
        let a = send(&http, req, body, None, window, "test").expect("an answer");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.text, "{\"errors\"");
        let _ = server.join();
    }

    struct FailAfter(usize);

    impl Read for FailAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("writer gone"));
            }
            let n = buf.len().min(self.0).min(1000);
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn the_body_arrives_whole_and_the_answer_is_kept() {
        let data = pattern(3_000_000, 251);
        let (r, got) = send_once(
            b"HTTP/1.1 202 Accepted\r\nLocation: /next\r\nContent-Length: 2\r\n\r\nok",
            Box::new(io::Cursor::new(data.clone())),
            None,
        );
        let a = r.expect("send");
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_eq!(
            a.headers.get("location").map(|v| v.as_bytes()),
            Some(&b"/next"[..])
        );
        assert_eq!(a.text, "ok");
        assert_eq!(got, Some(data));
    }

    #[test]
    fn a_read_error_never_lets_the_body_end() {
        let (r, got) = send_once(
            b"HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n",
            Box::new(FailAfter(5000)),
            None,
        );
        assert!(r.is_err(), "a failed body must fail the request");
        assert_eq!(got, None, "the server saw the body end");
    }
}
