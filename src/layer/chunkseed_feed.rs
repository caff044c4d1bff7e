//! Handing seeded chunks to a layer write while the seeding still runs.
//!
//! Without it the write waited for the whole seed (download, verify every
//! chunk, record them) before it looked up its first chunk. With a feed,
//! the seeding publishes each chunk the moment it has verified it (its
//! compressed bytes in memory, with the same record a finished seed
//! writes), and a write that looks up a key the feed may still deliver
//! waits for it instead of compressing the chunk again.
//!
//! Which keys are worth waiting for is a *hint*: the keys the remote chunk
//! index claims. Waiting on a lying claim costs time, never correctness:
//! the write only ever takes a chunk under the key rbuild computed from
//! its verified bytes, and the wait ends when the seeding does.
//!
//! A chunk handed over before the whole blob matched its digest is
//! verified on its own (it decompresses alone to the bytes its key
//! describes) but not yet vouched for by the blob's digest. So the feed
//! counts what it served; the engine keeps a layer written with served
//! chunks only if the seeding then succeeded (the whole blob matched, in
//! one download attempt), and writes it again without the seed otherwise
//! (`engine::stage`, docs/cache.md).
//!
//! Memory: the feed holds at most [`HELD_BYTES_MAX`] compressed bytes.
//! When the earlier blob is not stored (the feed is the only way its
//! chunks reach the write: [`SeedFeed::hold_back`]), a full feed makes the
//! seeding wait for the write to take chunks, which pauses the download.
//! That wait can never deadlock: while a lookup waits for a key and the
//! seeding waits for room, the feed drops the chunks it has held longest
//! (the write went past them, or wants a chunk that is not coming; it
//! compresses any it later asks for); once the write is done with the
//! feed ([`SeedFeed::close`]) nothing is held or waited for; and a seeding
//! kept waiting [`STALL_MAX`] by a write that has not started taking
//! drops what it cannot hold rather than leave the download idle (a
//! proxy or the minimum-speed check would cut it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::chunkcache::Hit;

/// The most compressed bytes the feed holds for the write at once. 32 MiB
/// lets the download run ahead of the write by about 40 chunks of 0.8 MB,
/// far more than the write has in flight (its two workers and the resumed
/// chunk), so a write that keeps up never waits on a chunk already
/// downloaded: in the fresh CI job (a 230 MB layer) every chunk reaches
/// the write and none is dropped. More only helps while the write has not
/// started (the files are still being gathered), when the download is not
/// what the job waits for; and it adds to the job's peak RSS (81-172 MB
/// for the fresh CI job, docs/benchmarks.md).
pub(crate) const HELD_BYTES_MAX: usize = 32 << 20;
/// How long a seeding waits for room while the write takes nothing, before
/// it drops what does not fit: well under the 60 s in which a registry
/// body must deliver its minimum speed (`registry::body`).
pub(crate) const STALL_MAX: Duration = Duration::from_secs(20);

/// Seeded chunks on their way to a layer write (see the module doc).
pub struct SeedFeed {
    state: Mutex<FeedState>,
    /// Lookups wait here for a chunk (or the seeding's end).
    ready: Condvar,
    /// A seeding waits here for room (or a lookup that waits).
    room: Condvar,
    cap: usize,
    stall: Duration,
    /// The write stopped resuming: the hash states of later chunks are
    /// of no use to it, so the seeding stops hashing the tar (the new
    /// blob's own records carry every state a later rebuild needs).
    resume_over: std::sync::atomic::AtomicBool,
}

impl Default for SeedFeed {
    fn default() -> Self {
        Self::with_limits(HELD_BYTES_MAX, STALL_MAX)
    }
}

#[derive(Default)]
struct FeedState {
    /// The keys the index claims; None until it is read.
    hinted: Option<HashSet<[u8; 32]>>,
    /// Held chunks by key, with the order they came in.
    hits: HashMap<[u8; 32], (u64, Hit)>,
    order: VecDeque<(u64, [u8; 32])>,
    seq: u64,
    held: usize,
    /// The most ever held at once.
    peak: usize,
    /// The seeding waits for room rather than drop a chunk.
    hold_back: bool,
    /// The keys lookups wait for right now.
    waiting: Vec<[u8; 32]>,
    /// The seeding waited [`STALL_MAX`] while nothing was taken: until
    /// the next take it drops what does not fit.
    stalled: bool,
    /// The seeding ended (its records, if any, are written).
    done: bool,
    /// The write is done with the feed: nothing is held any more.
    closed: bool,
    /// It ended with every byte checked against the blob's digest.
    verified: bool,
    /// Download attempts begun (a retry starts the blob again).
    attempts: usize,
    /// Attempts that began after a chunk was served: what was served
    /// came from a download whose digest was never checked.
    tainted: bool,
    served: usize,
    published: usize,
    /// Chunks dropped for room (held longest, or not taken in).
    dropped: usize,
}

/// What a feed did, for the step's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Chunks published (verified, with a key the write may ask for).
    pub published: usize,
    /// Chunks the write took.
    pub served: usize,
    /// Chunks dropped to keep the feed under its bound.
    pub dropped: usize,
    /// The most compressed bytes held at once.
    pub peak: usize,
}

impl SeedFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// A feed holding at most `cap` bytes, whose seeding drops what does
    /// not fit after waiting `stall` with nothing taken.
    pub(crate) fn with_limits(cap: usize, stall: Duration) -> Self {
        SeedFeed {
            state: Mutex::default(),
            ready: Condvar::new(),
            room: Condvar::new(),
            cap,
            stall,
            resume_over: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        // A panic while the lock was held left plain data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys the remote index claims: what a lookup may wait for.
    pub fn set_hints(&self, keys: impl IntoIterator<Item = [u8; 32]>) {
        self.lock().hinted = Some(keys.into_iter().collect());
        self.ready.notify_all();
    }

    /// The feed is the only way the chunks reach the write (the earlier
    /// blob is not stored): a full feed makes the seeding wait for room
    /// instead of dropping the chunk.
    pub fn hold_back(&self) {
        self.lock().hold_back = true;
    }

    /// A download (first or retried) of the blob begins.
    pub fn begin_attempt(&self) {
        let mut s = self.lock();
        s.attempts += 1;
        if s.attempts > 1 && s.served > 0 {
            s.tainted = true;
        }
        // What an earlier attempt published is not this one's.
        s.clear();
        drop(s);
        self.room.notify_all();
    }

    /// A verified chunk, recorded under `key` (its own, computed here).
    /// May wait for room (see the module doc).
    pub(crate) fn publish(&self, key: [u8; 32], hit: Hit) {
        let len = hit.bytes.len();
        let mut s = self.lock();
        s.published += 1;
        let mut since = Instant::now();
        loop {
            if s.closed {
                return;
            }
            if s.held + len <= self.cap || s.hits.is_empty() {
                break;
            }
            if s.waits_for_more() {
                // The write waits for a chunk not held: make room by
                // dropping the chunks held longest (but not one a lookup
                // is about to wake up to).
                while s.held + len > self.cap && s.drop_oldest() {}
                if s.held + len <= self.cap {
                    break;
                }
            }
            if !s.hold_back || s.stalled {
                s.dropped += 1;
                return;
            }
            let left = self.stall.saturating_sub(since.elapsed());
            if left.is_zero() {
                s.stalled = true;
                continue;
            }
            let served = s.served;
            s = match self.room.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
            if s.served != served {
                since = Instant::now();
            }
        }
        s.seq += 1;
        let seq = s.seq;
        s.held += len;
        s.peak = s.peak.max(s.held);
        s.order.push_back((seq, key));
        if let Some((_, old)) = s.hits.insert(key, (seq, hit)) {
            s.held -= old.bytes.len();
        }
        drop(s);
        self.ready.notify_all();
    }

    /// The seeding ended; `verified`: the whole blob matched its digest
    /// (and, if it was stored, its chunks are recorded). Wakes every
    /// waiting lookup; what is held stays for the write to take, unless
    /// the seeding failed.
    pub fn finish(&self, verified: bool) {
        let mut s = self.lock();
        if !s.done {
            s.done = true;
            s.verified = verified;
        }
        if !s.verified {
            s.clear();
        }
        drop(s);
        self.ready.notify_all();
        self.room.notify_all();
    }

    /// The write is done with the feed: what is held is freed, and a
    /// seeding still running no longer waits for room.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.clear();
        drop(s);
        self.room.notify_all();
        self.ready.notify_all();
    }

    /// The chunk published under `key`, waiting for it while the seeding
    /// runs and the index claims it (or has not been read yet). None: not
    /// (or no longer) here; once [`SeedFeed::done`], the records have it
    /// if the seeding stored the blob and verified it.
    pub(crate) fn take(&self, key: &[u8; 32]) -> Option<Hit> {
        let mut s = self.lock();
        loop {
            if let Some((_, hit)) = s.hits.remove(key) {
                s.held -= hit.bytes.len();
                s.served += 1;
                s.stalled = false;
                drop(s);
                self.room.notify_all();
                return Some(hit);
            }
            let worth_waiting =
                !s.done && !s.closed && s.hinted.as_ref().is_none_or(|h| h.contains(key));
            if !worth_waiting {
                return None;
            }
            s.waiting.push(*key);
            // A seeding waiting for room makes it now (module doc).
            self.room.notify_all();
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            if let Some(at) = s.waiting.iter().position(|k| k == key) {
                s.waiting.swap_remove(at);
            }
        }
    }

    pub(crate) fn end_resume(&self) {
        self.resume_over
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn resume_over(&self) -> bool {
        self.resume_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn done(&self) -> bool {
        self.lock().done
    }

    /// Chunks handed to the write before the seeding ended.
    pub fn served(&self) -> usize {
        self.lock().served
    }

    /// What the feed did so far.
    pub fn stats(&self) -> FeedStats {
        let s = self.lock();
        FeedStats {
            published: s.published,
            served: s.served,
            dropped: s.dropped,
            peak: s.peak,
        }
    }

    /// Whether what was served may stay in a layer: the seeding ended
    /// with the whole blob matching its digest, in the same download
    /// attempt the served chunks came from.
    pub fn trusted(&self) -> bool {
        let s = self.lock();
        s.done && s.verified && !s.tainted
    }
}

impl FeedState {
    fn clear(&mut self) {
        self.hits.clear();
        self.order.clear();
        self.held = 0;
    }

    /// Whether a lookup waits for a chunk that is not held (one whose
    /// chunk is held only has yet to wake up).
    fn waits_for_more(&self) -> bool {
        self.waiting.iter().any(|k| !self.hits.contains_key(k))
    }

    /// Drops the chunk held longest that no lookup waits for; false when
    /// there is none.
    fn drop_oldest(&mut self) -> bool {
        // Entries taken (or replaced) since are not held under their seq.
        let held =
            |s: &Self, (seq, key): &(u64, [u8; 32])| s.hits.get(key).is_some_and(|(n, _)| n == seq);
        while self.order.front().is_some_and(|e| !held(self, e)) {
            self.order.pop_front();
        }
        let victim = self
            .order
            .iter()
            .position(|e| held(self, e) && !self.waiting.contains(&e.1));
        let Some((_, key)) = victim.and_then(|at| self.order.remove(at)) else {
            return false;
        };
        if let Some((_, hit)) = self.hits.remove(&key) {
            self.held -= hit.bytes.len();
            self.dropped += 1;
        }
        true
    }
}

impl std::fmt::Debug for SeedFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("SeedFeed")
            .field("held", &s.held)
            .field("done", &s.done)
            .field("served", &s.served)
            .finish_non_exhaustive()
    }
}

/// Marks the feed finished (unverified) when the seeding ends without
/// saying so itself: an error or a panic never leaves a lookup waiting.
pub struct FeedGuard<'a>(pub &'a SeedFeed);

impl Drop for FeedGuard<'_> {
    fn drop(&mut self) {
        self.0.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(n: u8) -> Hit {
        sized(n, 10)
    }

    fn sized(n: u8, len: usize) -> Hit {
        Hit {
            blob: "sha256:x".into(),
            offset: 0,
            crc: 0,
            ulen: 1,
            ucrc: 0,
            tar_off: 0,
            states: None,
            bytes: vec![n; len],
        }
    }

    #[test]
    fn a_lookup_waits_only_for_hinted_keys_and_never_past_the_end() {
        let feed = std::sync::Arc::new(SeedFeed::new());
        feed.set_hints([[1; 32], [2; 32]]);
        // Not claimed: no wait.
        assert!(feed.take(&[3; 32]).is_none());
        let f = feed.clone();
        let t = std::thread::spawn(move || f.take(&[1; 32]).map(|h| h.bytes[0]));
        std::thread::sleep(std::time::Duration::from_millis(50));
        feed.publish([1; 32], hit(7));
        assert_eq!(t.join().unwrap(), Some(7));
        // A claimed key that never comes: the wait ends with the seeding.
        let f = feed.clone();
        let t = std::thread::spawn(move || f.take(&[2; 32]).is_none());
        std::thread::sleep(std::time::Duration::from_millis(50));
        feed.finish(false);
        assert!(t.join().unwrap());
        assert_eq!(feed.served(), 1);
        assert!(!feed.trusted());
    }

    #[test]
    fn a_retry_after_serving_taints_the_feed() {
        let feed = SeedFeed::new();
        feed.begin_attempt();
        feed.publish([1; 32], hit(1));
        assert!(feed.take(&[1; 32]).is_some());
        feed.begin_attempt();
        feed.finish(true);
        assert!(!feed.trusted());
        let clean = SeedFeed::new();
        clean.begin_attempt();
        clean.begin_attempt();
        clean.publish([1; 32], hit(1));
        assert!(clean.take(&[1; 32]).is_some());
        clean.finish(true);
        assert!(clean.trusted());
    }

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    /// A feed bounded at 100 bytes that holds chunks back, and a seeding
    /// thread publishing `count` chunks of 30 bytes into it, then ending.
    fn seeding_held_back(count: u8) -> (std::sync::Arc<SeedFeed>, std::thread::JoinHandle<()>) {
        let feed = std::sync::Arc::new(SeedFeed::with_limits(100, Duration::from_secs(60)));
        feed.hold_back();
        feed.set_hints((0..count).map(key));
        let f = feed.clone();
        let seeding = std::thread::spawn(move || {
            for n in 0..count {
                f.publish(key(n), sized(n, 30));
            }
            f.finish(true);
        });
        (feed, seeding)
    }

    /// A seeding that must hold chunks back waits for the write: the
    /// feed never holds more than its bound, and a slow write still gets
    /// every chunk, in order.
    #[test]
    fn a_full_feed_makes_the_seeding_wait_for_a_slow_write() {
        let (feed, seeding) = seeding_held_back(50);
        for n in 0..50 {
            if n % 10 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            let got = feed.take(&key(n)).map(|h| h.bytes[0]);
            assert_eq!(got, Some(n), "chunk {n}");
        }
        seeding.join().unwrap();
        let stats = feed.stats();
        assert!(stats.peak <= 100, "{stats:?}");
        assert_eq!((stats.served, stats.dropped), (50, 0), "{stats:?}");
        assert!(feed.trusted());
    }

    /// The write asks for a chunk later than the ones held (it went past
    /// them, e.g. they were of a changed file) while the seeding waits
    /// for room: the chunks held longest are dropped, nobody deadlocks.
    #[test]
    fn a_write_waiting_past_held_chunks_gets_them_dropped() {
        let (feed, seeding) = seeding_held_back(10);
        // Chunks 0-2 fill the feed; the write wants chunk 6 first.
        let got = feed.take(&key(6)).map(|h| h.bytes[0]);
        assert_eq!(got, Some(6));
        // The oldest were dropped to make room; later ones are still held.
        assert!(feed.take(&key(0)).is_none());
        for n in 7..10 {
            assert_eq!(feed.take(&key(n)).map(|h| h.bytes[0]), Some(n));
        }
        seeding.join().unwrap();
        let stats = feed.stats();
        assert!(stats.peak <= 100, "{stats:?}");
        assert!(stats.dropped >= 4, "{stats:?}");
        // Once the seeding ended no lookup waits, held or not.
        assert!(feed.take(&key(3)).is_none());
        assert!(feed.take(&key(42)).is_none());
    }

    /// A write that never takes (it has not started, or is done): the
    /// seeding neither waits forever nor holds more than the bound.
    #[test]
    fn a_seeding_is_never_held_by_a_write_that_takes_nothing() {
        let feed = std::sync::Arc::new(SeedFeed::with_limits(100, Duration::from_millis(50)));
        feed.hold_back();
        let started = Instant::now();
        for n in 0..10 {
            feed.publish(key(n), sized(n, 30));
        }
        // Waited about one stall, then dropped what did not fit.
        assert!(started.elapsed() < Duration::from_secs(5));
        let stats = feed.stats();
        assert_eq!((stats.peak, stats.dropped), (90, 7), "{stats:?}");
        // The earliest chunks (a resuming write's first) are still held.
        assert!(feed.take(&key(0)).is_some());
        // Once the write is done with the feed, nothing is held or waited for.
        feed.close();
        let f = feed.clone();
        let late = std::thread::spawn(move || f.publish(key(20), sized(20, 90)));
        late.join().unwrap();
        assert!(feed.take(&key(1)).is_none());
        assert_eq!(feed.stats().served, 1);
    }
}
