//! The *description* keys of seeded chunks: while a fetched layer's chunks
//! are verified in stream order, their tar stream is followed here and
//! each chunk is described the way the layer writer describes a chunk of
//! context files it knows by sha256 (`chunkcache::KeyHasher`: tar headers
//! and padding as literal bytes, a regular file's content as its sha256
//! and the range). Recorded under that key, a seeded chunk is found by a
//! rebuild's writer *without reading the files* — and so the rebuild can
//! resume the layer's unchanged start (`chunked_resume.rs`) as a warm
//! store does.
//!
//! Why this is sound whatever the stream holds: every file digest used
//! here is computed here, over exactly the bytes the description says are
//! that file's content, from chunks that were decompressed and checked. A
//! description therefore always names the chunk's true bytes; parsing a
//! hostile tar wrongly can only give a key no writer asks for (a miss).

use std::collections::VecDeque;

use sha2::{Digest, Sha256};

use super::chunkcache::KeyHasher;

/// PAX extended headers larger than this stop the description (rbuild's
/// are a few hundred bytes; a `size=` in one must be read).
const MAX_PAX: u64 = 1 << 20;

enum Part {
    Lit(Vec<u8>),
    /// A range of a regular file's content; `None` until the file ends
    /// (only the file being read can be unfinished).
    File {
        digest: Option<[u8; 32]>,
        off: u64,
        len: u64,
    },
}

enum State {
    Header(Vec<u8>),
    /// `left` content bytes of an entry: a regular file's (hashed) or other.
    Content {
        left: u64,
        file: bool,
        size: u64,
    },
    Pax {
        left: u64,
        buf: Vec<u8>,
        size: u64,
    },
    Pad(u64),
    /// The end-of-archive blocks and anything after them: literal.
    Trailer,
    /// Unparseable: no further keys.
    Broken,
}

/// Follows one layer's tar stream, chunk by chunk, in order.
pub(super) struct Describer {
    tag: String,
    state: State,
    file: Sha256,
    file_off: u64,
    /// The size a PAX header set for the next entry.
    pax_size: Option<u64>,
    parts: Vec<Part>,
    /// Chunks waiting for the file being read to end: (chunk, parts).
    pending: VecDeque<(usize, Vec<Part>)>,
    done: Vec<(usize, [u8; 32])>,
}

impl Describer {
    pub(super) fn new(tag: &str) -> Self {
        Describer {
            tag: tag.to_string(),
            state: State::Header(Vec::with_capacity(512)),
            file: Sha256::new(),
            file_off: 0,
            pax_size: None,
            parts: Vec::new(),
            pending: VecDeque::new(),
            done: Vec::new(),
        }
    }

    /// Stops describing (a chunk missing from the stream, or junk).
    pub(super) fn break_off(&mut self) {
        self.state = State::Broken;
        self.parts.clear();
        self.pending.clear();
    }

    fn literal(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        if let Some(Part::Lit(v)) = self.parts.last_mut() {
            v.extend_from_slice(b);
        } else {
            self.parts.push(Part::Lit(b.to_vec()));
        }
    }

    fn file_bytes(&mut self, b: &[u8]) {
        self.file.update(b);
        let len = b.len() as u64;
        match self.parts.last_mut() {
            Some(Part::File {
                digest: None,
                len: l,
                ..
            }) => *l += len,
            _ => self.parts.push(Part::File {
                digest: None,
                off: self.file_off,
                len,
            }),
        }
        self.file_off += len;
    }

    /// The next bytes of the tar stream (of the current chunk).
    pub(super) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Broken);
            self.state = match state {
                State::Broken => return,
                State::Trailer => {
                    self.literal(data);
                    data = &[];
                    State::Trailer
                }
                State::Header(mut buf) => {
                    let n = (512 - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..n]);
                    self.literal(&data[..n]);
                    data = &data[n..];
                    if buf.len() < 512 {
                        State::Header(buf)
                    } else {
                        self.header(&buf)
                    }
                }
                State::Content { left, file, size } => {
                    let n = left.min(data.len() as u64) as usize;
                    if file {
                        self.file_bytes(&data[..n]);
                    } else {
                        self.literal(&data[..n]);
                    }
                    data = &data[n..];
                    match left - n as u64 {
                        0 => {
                            if file {
                                self.file_ended();
                            }
                            padding(size)
                        }
                        left => State::Content { left, file, size },
                    }
                }
                State::Pax {
                    left,
                    mut buf,
                    size,
                } => {
                    let n = left.min(data.len() as u64) as usize;
                    buf.extend_from_slice(&data[..n]);
                    self.literal(&data[..n]);
                    data = &data[n..];
                    match left - n as u64 {
                        0 => match pax_size(&buf) {
                            Ok(s) => {
                                self.pax_size = s;
                                padding(size)
                            }
                            Err(()) => State::Broken,
                        },
                        left => State::Pax { left, buf, size },
                    }
                }
                State::Pad(left) => {
                    let n = left.min(data.len() as u64) as usize;
                    self.literal(&data[..n]);
                    data = &data[n..];
                    match left - n as u64 {
                        0 => State::Header(Vec::with_capacity(512)),
                        left => State::Pad(left),
                    }
                }
            };
            if matches!(self.state, State::Broken) {
                self.break_off();
                return;
            }
        }
    }

    /// What follows a complete 512-byte header block.
    fn header(&mut self, h: &[u8]) -> State {
        if h.iter().all(|b| *b == 0) {
            return State::Trailer;
        }
        let Some(mut size) = octal_or_base256(&h[124..136]) else {
            return State::Broken;
        };
        let kind = h[156];
        if !matches!(kind, b'x' | b'g') {
            if let Some(s) = self.pax_size.take() {
                size = s;
            }
        }
        match kind {
            _ if size == 0 => State::Header(Vec::with_capacity(512)),
            b'x' if size <= MAX_PAX => State::Pax {
                left: size,
                buf: Vec::new(),
                size,
            },
            b'x' => State::Broken,
            b'0' | 0 => {
                self.file = Sha256::new();
                self.file_off = 0;
                State::Content {
                    left: size,
                    file: true,
                    size,
                }
            }
            _ => State::Content {
                left: size,
                file: false,
                size,
            },
        }
    }

    /// The file being read ended: its digest completes every part of it.
    fn file_ended(&mut self) {
        let digest: [u8; 32] = std::mem::take(&mut self.file).finalize().into();
        let fill = |parts: &mut Vec<Part>| {
            for p in parts.iter_mut() {
                if let Part::File { digest: d, .. } = p {
                    d.get_or_insert(digest);
                }
            }
        };
        fill(&mut self.parts);
        while let Some((i, mut parts)) = self.pending.pop_front() {
            fill(&mut parts);
            let key = self.key(&parts);
            self.done.push((i, key));
        }
    }

    /// Chunk `index` ends here.
    pub(super) fn end_chunk(&mut self, index: usize) {
        if matches!(self.state, State::Broken) {
            return;
        }
        let parts = std::mem::take(&mut self.parts);
        let open = parts
            .iter()
            .any(|p| matches!(p, Part::File { digest: None, .. }));
        if open || !self.pending.is_empty() {
            self.pending.push_back((index, parts));
        } else {
            let key = self.key(&parts);
            self.done.push((index, key));
        }
    }

    fn key(&self, parts: &[Part]) -> [u8; 32] {
        let mut h = KeyHasher::new(&self.tag);
        for p in parts {
            match p {
                Part::Lit(v) => h.literal(v),
                Part::File {
                    digest: Some(d),
                    off,
                    len,
                } => h.file(d, *off, *len),
                // Never: keys are only made once every file part is known.
                Part::File { digest: None, .. } => h.literal(&[]),
            }
        }
        h.finish()
    }

    /// The description keys found so far, by chunk index.
    pub(super) fn take_keys(&mut self) -> Vec<(usize, [u8; 32])> {
        std::mem::take(&mut self.done)
    }
}

fn padding(size: u64) -> State {
    match size % 512 {
        0 => State::Header(Vec::with_capacity(512)),
        r => State::Pad(512 - r),
    }
}

/// A tar numeric field: NUL/space-terminated octal, or base-256 (high bit).
fn octal_or_base256(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        if f[0] != 0x80 || f[1..4].iter().any(|b| *b != 0) {
            return None;
        }
        return Some(f[4..].iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)));
    }
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// The `size` record of a PAX extended header, if any (`Err` when the
/// header is not PAX records).
fn pax_size(buf: &[u8]) -> Result<Option<u64>, ()> {
    let mut rest = buf;
    let mut size = None;
    while !rest.is_empty() {
        let sp = rest.iter().position(|b| *b == b' ').ok_or(())?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .map_err(|_| ())?
            .parse()
            .map_err(|_| ())?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(());
        }
        let rec = &rest[sp + 1..len - 1];
        if let Some(v) = rec.strip_prefix(b"size=") {
            let v = std::str::from_utf8(v).map_err(|_| ())?;
            size = Some(v.parse().map_err(|_| ())?);
        }
        rest = &rest[len..];
    }
    Ok(size)
}
