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
//! by a current-thread runtime on the calling thread, sends them.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, Result};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use tokio::sync::mpsc;

use super::body::MAX_ERROR_BODY;
use super::client::error_chain;

/// The most one read asks for, and so the largest piece sent.
const PIECE: usize = 1 << 20;
/// Pieces read ahead of the connection: at most `QUEUE * PIECE` bytes.
const QUEUE: usize = 4;

/// A registry's answer: status, headers and the start of its body.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// At most `MAX_ERROR_BODY` bytes of the body (errors explain here).
    pub text: String,
}

/// Sends `req` with `body` as its body (chunked: its length is not known)
/// and waits for the answer, reading what its body brings within `window`
/// (a trickling error body is cut there). A read error fails the body, so
/// the registry never sees it end: an upload cut short is never committed.
pub(super) fn send(
    req: reqwest::RequestBuilder,
    body: Box<dyn Read + Send>,
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
    let req = req.body(reqwest::Body::wrap(Pieces(rx)));
    rt.block_on(async move {
        let fail = |e: reqwest::Error| anyhow!("{what}: {}", error_chain(&e));
        let mut resp = req.send().await.map_err(fail)?;
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
/// gone (the queue closed).
fn pump(mut body: Box<dyn Read + Send>, tx: mpsc::Sender<io::Result<Bytes>>) {
    loop {
        let mut buf = vec![0u8; PIECE];
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
        buf.truncate(n);
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return;
        }
    }
}

/// The queue as an HTTP body: its end (the sender dropped) ends the body.
struct Pieces(mpsc::Receiver<io::Result<Bytes>>);

impl HttpBody for Pieces {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-request HTTP/1.1 server on loopback: returns the chunked body
    /// it received (None if the body never ended) and answers `answer`.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<Option<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/up", l.local_addr().expect("addr"));
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().ok()?;
            let mut r = BufReader::new(s.try_clone().ok()?);
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = Vec::new();
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
            let _ = s.write_all(answer.as_bytes());
            ended.then_some(body)
        });
        (url, h)
    }

    const WINDOW: Duration = Duration::from_secs(30);

    #[test]
    fn a_trickling_answer_is_cut_at_the_window() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/up", l.local_addr().expect("addr"));
        // Reads the request, answers 400 with a body it never finishes.
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().ok()?;
            let mut r = BufReader::new(s.try_clone().ok()?);
            let mut line = String::new();
            while r.read_line(&mut line).ok()? > 0 && !line.ends_with("0\r\n\r\n") {}
            let mut s = s;
            s.write_all(b"HTTP/1.1 400 Bad\r\nContent-Length: 100000\r\n\r\n{\"errors\"")
                .ok()?;
            std::thread::sleep(Duration::from_secs(5));
            Some(())
        });
        let started = std::time::Instant::now();
        let req = reqwest::Client::new().patch(&url);
        let window = Duration::from_millis(500);
        let a = send(
            req,
            Box::new(io::Cursor::new(vec![7u8; 1000])),
            window,
            "test",
        )
        .expect("an answer");
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
        let (url, h) =
            serve_once("HTTP/1.1 202 Accepted\r\nLocation: /next\r\nContent-Length: 2\r\n\r\nok");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let req = reqwest::Client::new().patch(&url);
        let a = send(req, Box::new(io::Cursor::new(data.clone())), WINDOW, "test").expect("send");
        assert_eq!(a.status, StatusCode::ACCEPTED);
        assert_eq!(
            a.headers.get("location").map(|v| v.as_bytes()),
            Some(&b"/next"[..])
        );
        assert_eq!(a.text, "ok");
        assert_eq!(h.join().expect("server"), Some(data));
    }

    #[test]
    fn a_read_error_never_lets_the_body_end() {
        let (url, h) = serve_once("HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n");
        let req = reqwest::Client::new().patch(&url);
        let r = send(req, Box::new(FailAfter(5000)), WINDOW, "test");
        assert!(r.is_err(), "a failed body must fail the request");
        assert_eq!(
            h.join().expect("server"),
            None,
            "the server saw the body end"
        );
    }
}
