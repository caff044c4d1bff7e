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

use std::future::Future;
use std::io::{self, Read};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
    /// Where the answer came from (after redirects).
    pub url: reqwest::Url,
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

/// What ends a request early, besides its own timeout: the caller's
/// `cancel`, and a registry that stops taking the body (or, the body
/// sent, does not answer) for `stall`. Without it a registry that read
/// nothing more kept the upload's threads, and a build waiting for its
/// streamed push, blocked until the request's timeout (a year for a
/// streamed body, whose length and so whose fair time are unknown), and
/// a cancel went unseen: it is checked by the body's reader, which a
/// full queue no longer calls.
#[derive(Clone, Default)]
pub(super) struct Watch {
    pub stall: Option<Duration>,
    pub cancel: Option<Arc<AtomicBool>>,
}

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
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Answer> {
        let watch = Watch {
            stall: self.stall_limit(),
            cancel,
        };
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
            let answer = send(
                &http,
                req,
                open()?,
                len,
                self.answer_window(),
                &watch,
                &failed,
            )?;
            if answer.status == StatusCode::UNAUTHORIZED && !reauthed {
                reauthed = true;
                let had = self.note_challenge(&answer.url, &base, &answer.headers);
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
/// within `window` (a trickling error body is cut there). A read error,
/// a cancel or a stall (`watch`) fails the body, so the registry never
/// sees it end: an upload cut short is never committed.
fn send(
    http: &reqwest::Client,
    mut req: reqwest::Request,
    body: Box<dyn Read + Send>,
    len: Option<u64>,
    window: Duration,
    watch: &Watch,
    what: &str,
) -> Result<Answer> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("{what}: starting the upload's runtime: {e}"))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let flow = Arc::new(Flow::new());
    // Not joined: when the request ends early the thread ends at its next
    // read, whose send finds the queue closed.
    let pumped = flow.clone();
    std::thread::Builder::new()
        .name("upload-read".into())
        .spawn(move || pump(body, tx, &pumped))
        .map_err(|e| anyhow!("{what}: starting the upload's reader: {e}"))?;
    let pieces = Pieces {
        rx,
        len,
        sent: 0,
        flow: flow.clone(),
    };
    *req.body_mut() = Some(reqwest::Body::wrap(pieces));
    rt.block_on(async move {
        let fail = |e: reqwest::Error| anyhow!("{what}: {}", error_chain(&e));
        let sent = async { http.execute(req).await.map_err(fail) };
        // Dropping the request (a stall or a cancel) drops the queue's
        // receiver: the reader thread ends at its next piece.
        let mut resp = first_of(sent, watched(&flow, watch, what)).await?;
        let status = resp.status();
        let url = resp.url().clone();
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
            url,
            status,
            headers,
            text: String::from_utf8_lossy(&text).into_owned(),
        })
    })
}

/// Whether the connection takes the body, for `watched`: pieces ready and
/// not taken yet, since when (ms from `start`) the connection has taken
/// none of them, and when the body ended (ms + 1; 0: not yet).
struct Flow {
    start: Instant,
    waiting: AtomicUsize,
    since: AtomicU64,
    ended: AtomicU64,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            start: Instant::now(),
            waiting: AtomicUsize::new(0),
            since: AtomicU64::new(0),
            ended: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A piece is ready: with none waiting, the connection's time to take
    /// one starts now (a slow writer is not the registry's stall).
    fn ready(&self) {
        if self.waiting.fetch_add(1, Ordering::SeqCst) == 0 {
            self.since.store(self.now(), Ordering::SeqCst);
        }
    }

    fn taken(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.since.store(self.now(), Ordering::SeqCst);
    }

    fn end(&self) {
        self.ended.store(self.now() + 1, Ordering::SeqCst);
    }
}

/// Fails when `watch` says the request is over: cancelled, or `stall`
/// without the connection taking a ready piece, or without an answer
/// once the body has ended. Never returns otherwise.
async fn watched(flow: &Flow, watch: &Watch, what: &str) -> Result<reqwest::Response> {
    const TICK: Duration = Duration::from_millis(100);
    loop {
        tokio::time::sleep(TICK).await;
        if watch
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            bail!("{what}: cancelled");
        }
        let Some(stall) = watch.stall else { continue };
        let limit = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        let now = flow.now();
        let ended = flow.ended.load(Ordering::SeqCst);
        if ended > 0 && now.saturating_sub(ended - 1) > limit {
            bail!(
                "{what}: no answer within {} s of the body's end\n\
                 hint: on a slow link raise --registry-timeout",
                stall.as_secs_f32()
            );
        }
        let waiting = flow.waiting.load(Ordering::SeqCst) > 0;
        if ended == 0 && waiting && now.saturating_sub(flow.since.load(Ordering::SeqCst)) > limit {
            bail!(
                "{what}: the registry took none of the body for {} s\n\
                 hint: on a slow link raise --registry-timeout",
                stall.as_secs_f32()
            );
        }
    }
}

/// Whichever of `a` and `b` ends first (`b` is polled second).
async fn first_of<T>(a: impl Future<Output = T>, b: impl Future<Output = T>) -> T {
    let (mut a, mut b) = (pin!(a), pin!(b));
    std::future::poll_fn(|cx| match a.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(v),
        Poll::Pending => b.as_mut().poll(cx),
    })
    .await
}

/// Reads `body` into the queue until it ends, fails, or the request is
/// gone (the queue closed). Buffers come back from the connection when
/// it is done with them (`Piece`): a fresh 1 MiB for each piece cost page
/// faults and a memset each time.
fn pump(mut body: Box<dyn Read + Send>, tx: mpsc::Sender<io::Result<Bytes>>, flow: &Flow) {
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
        flow.ready();
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
    /// Bytes handed to the connection: a body of known length may not be
    /// polled again after its last byte, so that is its end too.
    sent: u64,
    flow: Arc<Flow>,
}

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = self.rx.poll_recv(cx);
        match &polled {
            Poll::Ready(Some(Ok(b))) => {
                self.flow.taken();
                self.sent += b.len() as u64;
                if self.len.is_some_and(|l| self.sent >= l) {
                    self.flow.end();
                }
            }
            Poll::Ready(None) => self.flow.end(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled.map(|o| o.map(|r| r.map(Frame::data)))
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
        let r = send(&http, req, body, len, WINDOW, &Watch::default(), "test");
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
        let a = send(&http, req, body, None, window, &Watch::default(), "test").expect("an answer");
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

    /// A server that reads a request's head and then nothing more,
    /// keeping the connection open for `hold`.
    fn deaf(hold: Duration) -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/up", l.local_addr().expect("addr"));
        std::thread::spawn(move || {
            let Ok((s, _)) = l.accept() else { return };
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            std::thread::sleep(hold);
        });
        url
    }

    /// An endless body.
    struct Zeros;

    impl Read for Zeros {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(0);
            Ok(buf.len())
        }
    }

    /// `body` (of length `len`, if told) sent to `url` under `watch`: the
    /// error it must end with, within `limit`.
    fn fails_within(
        url: &str,
        body: Box<dyn Read + Send>,
        len: Option<u64>,
        watch: Watch,
        limit: Duration,
    ) -> String {
        let (http, req) = patch(url);
        let started = Instant::now();
        let r = send(&http, req, body, len, WINDOW, &watch, "test");
        let e = format!("{:#}", r.err().expect("the upload must fail"));
        assert!(started.elapsed() < limit, "{:?}: {e}", started.elapsed());
        e
    }

    fn stall_after(secs: u64) -> Watch {
        Watch {
            stall: Some(Duration::from_secs(secs)),
            cancel: None,
        }
    }

    #[test]
    fn a_registry_that_stops_reading_fails_the_upload_at_the_stall_limit() {
        let url = deaf(Duration::from_secs(30));
        let e = fails_within(
            &url,
            Box::new(Zeros),
            None,
            stall_after(1),
            Duration::from_secs(10),
        );
        assert!(e.contains("took none of the body for 1 s"), "{e}");
        assert!(e.contains("hint: "), "{e}");
    }

    #[test]
    fn a_cancel_ends_an_upload_the_registry_stopped_reading() {
        let url = deaf(Duration::from_secs(30));
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            flag.store(true, Ordering::Relaxed);
        });
        // No stall limit: only the cancel can end it.
        let cancelled = Watch {
            stall: None,
            cancel: Some(cancel),
        };
        let e = fails_within(
            &url,
            Box::new(Zeros),
            None,
            cancelled,
            Duration::from_secs(5),
        );
        assert!(e.contains("cancelled"), "{e}");
    }

    #[test]
    fn a_body_sent_and_never_answered_fails_at_the_stall_limit() {
        // Reads the whole body, then answers nothing for 30 s.
        let (url, _server) = serve_once(b"", Duration::from_secs(30));
        let body = Box::new(io::Cursor::new(pattern(100_000, 7)));
        let e = fails_within(
            &url,
            body,
            Some(100_000),
            stall_after(1),
            Duration::from_secs(10),
        );
        assert!(e.contains("no answer within 1 s"), "{e}");
    }

    /// Bytes in small pieces, `gap` apart: a writer slower than the limit.
    struct Slow {
        left: usize,
        gap: Duration,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Ok(0);
            }
            std::thread::sleep(self.gap);
            let n = buf.len().min(self.left).min(1000);
            buf[..n].fill(b's');
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_writer_slower_than_the_stall_limit_is_not_a_stall() {
        let (url, h) = serve_once(
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        );
        let (http, req) = patch(&url);
        let stall = Watch {
            stall: Some(Duration::from_millis(300)),
            cancel: None,
        };
        let body = Box::new(Slow {
            left: 3000,
            gap: Duration::from_millis(700),
        });
        let r = send(&http, req, body, None, WINDOW, &stall, "test");
        assert_eq!(r.expect("send").status, StatusCode::ACCEPTED);
        assert_eq!(h.join().expect("server"), Some(vec![b's'; 3000]));
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
