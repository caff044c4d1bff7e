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

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::chunkcache::Hit;

/// The most compressed bytes the feed holds for the write at once; a
/// chunk published past it goes only to the records, which the write
/// finds once the seeding has written them.
const HELD_BYTES_MAX: usize = 256 << 20;

/// Seeded chunks on their way to a layer write (see the module doc).
#[derive(Default)]
pub struct SeedFeed {
    state: Mutex<FeedState>,
    ready: Condvar,
    /// The write stopped resuming: the hash states of later chunks are
    /// of no use to it, so the seeding stops hashing the tar (the new
    /// blob's own records carry every state a later rebuild needs).
    resume_over: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct FeedState {
    /// The keys the index claims; None until it is read.
    hinted: Option<HashSet<[u8; 32]>>,
    hits: HashMap<[u8; 32], Hit>,
    held: usize,
    /// The seeding ended (its records, if any, are written).
    done: bool,
    /// It ended with every byte checked against the blob's digest.
    verified: bool,
    /// Download attempts begun (a retry starts the blob again).
    attempts: usize,
    /// Attempts that began after a chunk was served: what was served
    /// came from a download whose digest was never checked.
    tainted: bool,
    served: usize,
}

impl SeedFeed {
    pub fn new() -> Self {
        Self::default()
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

    /// A download (first or retried) of the blob begins.
    pub fn begin_attempt(&self) {
        let mut s = self.lock();
        s.attempts += 1;
        if s.attempts > 1 && s.served > 0 {
            s.tainted = true;
        }
        // What an earlier attempt published is not this one's.
        s.hits.clear();
        s.held = 0;
    }

    /// A verified chunk, recorded under `key` (its own, computed here).
    pub(crate) fn publish(&self, key: [u8; 32], hit: Hit) {
        let mut s = self.lock();
        if s.held + hit.bytes.len() > HELD_BYTES_MAX {
            return;
        }
        s.held += hit.bytes.len();
        if let Some(old) = s.hits.insert(key, hit) {
            s.held -= old.bytes.len();
        }
        drop(s);
        self.ready.notify_all();
    }

    /// The seeding ended; `verified`: the whole blob matched its digest
    /// and its chunks are recorded. Wakes every waiting lookup.
    pub fn finish(&self, verified: bool) {
        let mut s = self.lock();
        if !s.done {
            s.done = true;
            s.verified = verified;
        }
        s.hits.clear();
        s.held = 0;
        drop(s);
        self.ready.notify_all();
    }

    /// The chunk published under `key`, waiting for it while the seeding
    /// runs and the index claims it (or has not been read yet). None: not
    /// (or no longer) here; once [`SeedFeed::done`], the records have it
    /// if the seeding verified it.
    pub(crate) fn take(&self, key: &[u8; 32]) -> Option<Hit> {
        let mut s = self.lock();
        loop {
            if let Some(hit) = s.hits.remove(key) {
                s.held -= hit.bytes.len();
                s.served += 1;
                return Some(hit);
            }
            let worth_waiting = !s.done && s.hinted.as_ref().is_none_or(|h| h.contains(key));
            if !worth_waiting {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
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

    /// Whether what was served may stay in a layer: the seeding ended
    /// with the whole blob matching its digest, in the same download
    /// attempt the served chunks came from.
    pub fn trusted(&self) -> bool {
        let s = self.lock();
        s.done && s.verified && !s.tainted
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
        Hit {
            blob: "sha256:x".into(),
            offset: 0,
            crc: 0,
            ulen: 1,
            ucrc: 0,
            tar_off: 0,
            states: None,
            bytes: vec![n; 10],
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
}
