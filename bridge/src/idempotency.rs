//! Idempotent retries: a call carrying `Idempotency-Key`, or else the caller's own request id
//! (the body's `id`), is answered once; the same key again (same tenant) within [`TTL`] gets
//! the first answer back and publishes nothing, the same key with another request (method,
//! path, query or body) is a 422, and the same key while the first call is still running is a
//! 409.
//!
//! Keys are held by [`key_hash`]: the sha256 of the tenant, a zero byte and the key, so one
//! tenant's key is never another's and the caller's key is never kept or written as given. A
//! request id is keyed as [`REQUEST_ID_PREFIX`] and the id: the prefix holds a space, which no
//! `Idempotency-Key` may, so the two never collide.
//!
//! Memory is bounded: at most [`MAX_ENTRIES`] keys and [`MAX_BYTES`] of kept answers, the
//! oldest forgotten first (and any past [`TTL`]). Answers are also written to Kafka and read
//! back by every instance ([`topic`]), so a restarted bridge, or another instance, knows them;
//! answers read back count against the same bounds. Until the topic is read to its end a store
//! made with [`Idempotency::loading`] answers [`Begin::Loading`].

pub mod topic;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

/// How long an answer is kept for a retry.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Keys kept at most, all tenants together.
pub const MAX_ENTRIES: usize = 100_000;
/// Bytes of kept answers at most (bodies and keys), all tenants together.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
/// The longest key taken.
pub const MAX_KEY_LEN: usize = 255;
/// What a caller's request id is keyed as, before the id: `request-id <id>`.
pub const REQUEST_ID_PREFIX: &str = "request-id ";

/// A key as held: see [`key_hash`].
pub type KeyHash = [u8; 32];

/// The sha256 of `tenant`, a zero byte and `key`.
pub fn key_hash(tenant: &str, key: &str) -> KeyHash {
    let mut bytes = Vec::with_capacity(tenant.len() + 1 + key.len());
    bytes.extend_from_slice(tenant.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    streamscore_contracts::sha256(&bytes)
}

/// A kept answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// An answer as [`Claim::keep`] kept it, for the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub key: KeyHash,
    pub fingerprint: [u8; 32],
    pub kept: Kept,
    /// When it was kept, µs since the epoch.
    pub at: i64,
}

#[derive(Debug)]
enum Entry {
    Running { fingerprint: [u8; 32] },
    Answered { fingerprint: [u8; 32], kept: Kept, at: i64 },
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<KeyHash, Entry>,
    /// Answered keys with when they were kept, oldest first. A key answered again (read back
    /// from another instance) has a newer line; its older line frees nothing.
    order: VecDeque<(KeyHash, i64)>,
    bytes: usize,
}

/// What a call with a key does.
#[derive(Debug)]
pub enum Begin {
    /// First time: run the call, then [`Claim::keep`] its answer (dropped, the key is free).
    Run(Claim),
    /// Answered before: this is the answer.
    Replay(Kept),
    /// The key was used for another request.
    Mismatch,
    /// The first call with this key is still running.
    Running,
    /// The answers kept before this process started are still being read.
    Loading,
}

/// What [`Idempotency::learn`] did with an answer read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Now kept.
    Kept,
    /// Kept already, or an older answer than the one kept.
    Known,
    /// A call with this key runs here; its answer will be the later one.
    Running,
    /// Older than [`TTL`].
    Expired,
}

/// The kept answers of every tenant.
#[derive(Debug, Clone)]
pub struct Idempotency {
    inner: Arc<Mutex<Inner>>,
    loaded: Arc<AtomicBool>,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::new()
    }
}

impl Idempotency {
    /// A store that knows no answer from before and serves at once (memory only).
    pub fn new() -> Self {
        Self { inner: Arc::default(), loaded: Arc::new(AtomicBool::new(true)) }
    }

    /// A store that answers [`Begin::Loading`] until [`Idempotency::set_loaded`]: the answers
    /// kept before (on the topic) are being read into it.
    pub fn loading() -> Self {
        Self { inner: Arc::default(), loaded: Arc::new(AtomicBool::new(false)) }
    }

    /// Every answer kept before is read: calls with keys are served from now on.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// How a call with the key `key` ([`key_hash`]) for a request fingerprinted `fingerprint`
    /// goes.
    pub fn begin(&self, key: KeyHash, fingerprint: [u8; 32]) -> Begin {
        if !self.is_loaded() {
            return Begin::Loading;
        }
        let mut inner = lock(&self.inner);
        inner.expire(streamscore_contracts::now_micros());
        match inner.entries.get(&key) {
            Some(Entry::Running { fingerprint: f }) | Some(Entry::Answered { fingerprint: f, .. })
                if *f != fingerprint =>
            {
                Begin::Mismatch
            }
            Some(Entry::Running { .. }) => Begin::Running,
            Some(Entry::Answered { kept, .. }) => Begin::Replay(kept.clone()),
            None => {
                inner.entries.insert(key, Entry::Running { fingerprint });
                Begin::Run(Claim { inner: Arc::clone(&self.inner), key: Some(key), fingerprint })
            }
        }
    }

    /// Keeps an answer another instance (or this one, before a restart) gave, read back from
    /// the topic: kept at `at` (µs since the epoch), unless it is past [`TTL`], a call with the
    /// key runs here, or a later answer for the key is kept already.
    pub fn learn(&self, answer: Answer) -> Learned {
        let now = streamscore_contracts::now_micros();
        if expired(now, answer.at) {
            return Learned::Expired;
        }
        let mut inner = lock(&self.inner);
        match inner.entries.get(&answer.key) {
            Some(Entry::Running { .. }) => return Learned::Running,
            Some(Entry::Answered { at, .. }) if *at >= answer.at => return Learned::Known,
            Some(Entry::Answered { .. }) => inner.forget(&answer.key),
            None => {}
        }
        inner.insert(answer.key, answer.fingerprint, answer.kept, answer.at);
        inner.expire(now);
        Learned::Kept
    }

    /// Keys held (running or answered).
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of kept answers.
    pub fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn size(kept: &Kept) -> usize {
    32 + kept.body.len() + kept.content_type.as_ref().map_or(0, String::len) + 64
}

/// Whether an answer kept at `at` is past [`TTL`] at `now` (µs since the epoch).
fn expired(now: i64, at: i64) -> bool {
    now.saturating_sub(at) >= i64::try_from(TTL.as_micros()).unwrap_or(i64::MAX)
}

impl Inner {
    fn insert(&mut self, key: KeyHash, fingerprint: [u8; 32], kept: Kept, at: i64) {
        self.bytes += size(&kept);
        self.order.push_back((key, at));
        self.entries.insert(key, Entry::Answered { fingerprint, kept, at });
    }

    /// Forgets the answer to `key`.
    fn forget(&mut self, key: &KeyHash) {
        if let Some(Entry::Answered { kept, .. }) = self.entries.remove(key) {
            self.bytes -= size(&kept);
        }
    }

    /// Forgets answers past their time, and the oldest while over a bound.
    fn expire(&mut self, now: i64) {
        while let Some(&(key, at)) = self.order.front() {
            let over = self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES;
            if !over && !expired(now, at) {
                break;
            }
            self.order.pop_front();
            // Only the line of the answer held: a key answered again has a newer one.
            if matches!(self.entries.get(&key), Some(Entry::Answered { at: held, .. }) if *held == at) {
                self.forget(&key);
            }
        }
    }
}

/// The right to answer a key first; dropped without [`Claim::keep`], the key is free again.
#[derive(Debug)]
pub struct Claim {
    inner: Arc<Mutex<Inner>>,
    key: Option<KeyHash>,
    fingerprint: [u8; 32],
}

impl Claim {
    /// Keeps `kept` as the answer to every retry with this key; returns it as the topic keeps it.
    pub fn keep(mut self, kept: Kept) -> Option<Answer> {
        let key = self.key.take()?;
        let mut inner = lock(&self.inner);
        let now = streamscore_contracts::now_micros();
        inner.entries.remove(&key);
        inner.insert(key, self.fingerprint, kept.clone(), now);
        inner.expire(now);
        Some(Answer { key, fingerprint: self.fingerprint, kept, at: now })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.inner).entries.remove(&key);
        }
    }
}

/// Whether `key` can be an idempotency key: 1 to [`MAX_KEY_LEN`] visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(body: &str) -> Kept {
        Kept { status: 200, content_type: Some("application/json".into()), body: Bytes::from(body.to_owned()) }
    }

    fn key(tenant: &str, key: &str) -> KeyHash {
        key_hash(tenant, key)
    }

    fn answer(tenant: &str, k: &str, fingerprint: u8, body: &str, at: i64) -> Answer {
        Answer { key: key(tenant, k), fingerprint: [fingerprint; 32], kept: kept(body), at }
    }

    #[test]
    fn a_key_answers_once_then_replays_and_refuses_another_request() {
        let store = Idempotency::new();
        let Begin::Run(claim) = store.begin(key("acme", "k1"), [1; 32]) else { panic!("first") };
        assert!(matches!(store.begin(key("acme", "k1"), [1; 32]), Begin::Running));
        assert!(matches!(store.begin(key("acme", "k1"), [2; 32]), Begin::Mismatch));
        let kept_answer = claim.keep(kept("{\"a\":1}")).expect("kept");
        assert_eq!((kept_answer.key, kept_answer.fingerprint), (key("acme", "k1"), [1; 32]));
        assert!(matches!(store.begin(key("acme", "k1"), [1; 32]), Begin::Replay(k) if k == kept("{\"a\":1}")));
        assert!(matches!(store.begin(key("acme", "k1"), [2; 32]), Begin::Mismatch));
        // Another tenant's key of the same name is its own.
        assert!(matches!(store.begin(key("globex", "k1"), [2; 32]), Begin::Run(_)));
    }

    #[test]
    fn a_claim_dropped_unanswered_frees_the_key() {
        let store = Idempotency::new();
        drop(store.begin(key("acme", "k1"), [1; 32]));
        assert!(store.is_empty());
        assert!(matches!(store.begin(key("acme", "k1"), [2; 32]), Begin::Run(_)));
    }

    #[test]
    fn kept_answers_are_bounded_oldest_first() {
        let store = Idempotency::new();
        let body = "x".repeat(1024 * 1024);
        for i in 0..(MAX_BYTES / body.len() + 10) {
            let Begin::Run(claim) = store.begin(key("acme", &format!("k{i}")), [0; 32]) else { panic!("new key") };
            claim.keep(kept(&body));
        }
        assert!(store.bytes() <= MAX_BYTES, "{} bytes kept", store.bytes());
        assert!(matches!(store.begin(key("acme", "k0"), [0; 32]), Begin::Run(_)), "the oldest was forgotten");
        let last = format!("k{}", MAX_BYTES / body.len() + 9);
        assert!(matches!(store.begin(key("acme", &last), [0; 32]), Begin::Replay(_)), "the newest is kept");
    }

    #[test]
    fn answers_read_back_count_against_the_bounds() {
        let store = Idempotency::new();
        let body = "x".repeat(1024 * 1024);
        let now = streamscore_contracts::now_micros();
        let n = MAX_BYTES / body.len() + 10;
        for i in 0..n {
            assert_eq!(store.learn(answer("acme", &format!("k{i}"), 0, &body, now)), Learned::Kept);
        }
        assert!(store.bytes() <= MAX_BYTES, "{} bytes kept", store.bytes());
        assert!(matches!(store.begin(key("acme", "k0"), [0; 32]), Begin::Run(_)), "the oldest was forgotten");
        assert!(matches!(store.begin(key("acme", &format!("k{}", n - 1)), [0; 32]), Begin::Replay(_)));
    }

    #[test]
    fn an_answer_read_back_replays_unless_expired_running_or_older() {
        let store = Idempotency::loading();
        assert!(matches!(store.begin(key("acme", "k1"), [1; 32]), Begin::Loading), "nothing is served while loading");
        let now = streamscore_contracts::now_micros();
        let day: i64 = 24 * 60 * 60 * 1_000_000;
        assert_eq!(u128::try_from(day), Ok(TTL.as_micros()));
        assert_eq!(store.learn(answer("acme", "old", 1, "old", now - day - 1)), Learned::Expired);
        assert_eq!(store.learn(answer("acme", "k1", 1, "first", now - 10)), Learned::Kept);
        store.set_loaded();
        assert!(matches!(store.begin(key("acme", "old"), [1; 32]), Begin::Run(_)), "an expired answer is not kept");
        assert!(matches!(store.begin(key("acme", "k1"), [1; 32]), Begin::Replay(k) if k == kept("first")));
        assert!(matches!(store.begin(key("acme", "k1"), [2; 32]), Begin::Mismatch));
        // Our own record read back, or an older one: nothing changes.
        assert_eq!(store.learn(answer("acme", "k1", 1, "first", now - 10)), Learned::Known);
        assert_eq!(store.learn(answer("acme", "k1", 3, "older", now - 20)), Learned::Known);
        assert!(matches!(store.begin(key("acme", "k1"), [1; 32]), Begin::Replay(k) if k == kept("first")));
        // A later answer to the key (used again after it expired somewhere) replaces it, and the
        // first answer's line in the order does not forget the later one.
        assert_eq!(store.learn(answer("acme", "k1", 4, "later", now - 5)), Learned::Kept);
        assert!(matches!(store.begin(key("acme", "k1"), [4; 32]), Begin::Replay(k) if k == kept("later")));
        lock(&store.inner).expire(now - 10 + day);
        assert!(matches!(store.begin(key("acme", "k1"), [4; 32]), Begin::Replay(_)), "held past the first's TTL");
        assert_eq!(store.bytes(), size(&kept("later")), "one answer counted");
        // A call running here is not overtaken by an answer read back.
        let Begin::Run(claim) = store.begin(key("acme", "k2"), [5; 32]) else { panic!("new key") };
        assert_eq!(store.learn(answer("acme", "k2", 6, "theirs", now)), Learned::Running);
        claim.keep(kept("ours"));
        assert!(matches!(store.begin(key("acme", "k2"), [5; 32]), Begin::Replay(k) if k == kept("ours")));
    }

    #[test]
    fn a_request_id_never_collides_with_a_header_key() {
        let id = "order-1";
        let as_request_id = format!("{REQUEST_ID_PREFIX}{id}");
        assert!(!valid_key(&as_request_id), "no Idempotency-Key can be the request id's key");
        assert_ne!(key_hash("acme", &as_request_id), key_hash("acme", id));
        assert_ne!(key_hash("acme", "k"), key_hash("acm", "e\0k"), "the zero byte separates tenant and key");
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(valid_key("order-42_retry"));
        assert!(!valid_key("") && !valid_key("a b") && !valid_key(&"k".repeat(256)) && !valid_key("é"));
    }
}
