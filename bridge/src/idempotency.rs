//! Idempotent retries: a call carrying `Idempotency-Key` is answered once; the same key again
//! (same tenant) within [`TTL`] gets the first answer back and publishes nothing, the same key
//! with another request (method, path, query or body) is a 422, and the same key while the
//! first call is still running is a 409.
//!
//! Memory is bounded: at most [`MAX_ENTRIES`] keys and [`MAX_BYTES`] of kept answers, the
//! oldest forgotten first (and any past [`TTL`]). Kept answers live in this process only: a
//! restarted bridge does not know the keys it answered before.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long an answer is kept for a retry.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Keys kept at most, all tenants together.
pub const MAX_ENTRIES: usize = 100_000;
/// Bytes of kept answers at most (bodies and keys), all tenants together.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
/// The longest key taken.
pub const MAX_KEY_LEN: usize = 255;

/// A kept answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Debug)]
enum Entry {
    Running { fingerprint: [u8; 32] },
    Answered { fingerprint: [u8; 32], kept: Kept },
}

type Id = (String, String);

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Id, Entry>,
    /// Answered keys, oldest first.
    order: VecDeque<(Id, Instant)>,
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
}

/// The kept answers of every tenant.
#[derive(Debug, Default)]
pub struct Idempotency {
    inner: Arc<Mutex<Inner>>,
}

impl Idempotency {
    pub fn new() -> Self {
        Self::default()
    }

    /// How a call by `tenant` with `key` for a request fingerprinted `fingerprint` goes.
    pub fn begin(&self, tenant: &str, key: &str, fingerprint: [u8; 32]) -> Begin {
        let mut inner = lock(&self.inner);
        inner.expire(Instant::now());
        let id = (tenant.to_owned(), key.to_owned());
        match inner.entries.get(&id) {
            Some(Entry::Running { fingerprint: f }) | Some(Entry::Answered { fingerprint: f, .. })
                if *f != fingerprint =>
            {
                Begin::Mismatch
            }
            Some(Entry::Running { .. }) => Begin::Running,
            Some(Entry::Answered { kept, .. }) => Begin::Replay(kept.clone()),
            None => {
                inner.entries.insert(id.clone(), Entry::Running { fingerprint });
                Begin::Run(Claim { inner: Arc::clone(&self.inner), id: Some(id), fingerprint })
            }
        }
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

fn size(id: &Id, kept: &Kept) -> usize {
    id.0.len() + id.1.len() + kept.body.len() + kept.content_type.as_ref().map_or(0, String::len) + 64
}

impl Inner {
    /// Forgets answers past their time, and the oldest while over a bound.
    fn expire(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            let over = self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES;
            if !over && now.duration_since(*at) < TTL {
                break;
            }
            let id = id.clone();
            self.order.pop_front();
            if let Some(Entry::Answered { kept, .. }) = self.entries.remove(&id) {
                self.bytes -= size(&id, &kept);
            }
        }
    }
}

/// The right to answer a key first; dropped without [`Claim::keep`], the key is free again.
#[derive(Debug)]
pub struct Claim {
    inner: Arc<Mutex<Inner>>,
    id: Option<Id>,
    fingerprint: [u8; 32],
}

impl Claim {
    /// Keeps `kept` as the answer to every retry with this key.
    pub fn keep(mut self, kept: Kept) {
        let Some(id) = self.id.take() else { return };
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        inner.bytes += size(&id, &kept);
        inner.order.push_back((id.clone(), now));
        inner.entries.insert(id, Entry::Answered { fingerprint: self.fingerprint, kept });
        inner.expire(now);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            lock(&self.inner).entries.remove(&id);
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

    #[test]
    fn a_key_answers_once_then_replays_and_refuses_another_request() {
        let store = Idempotency::new();
        let Begin::Run(claim) = store.begin("acme", "k1", [1; 32]) else { panic!("first") };
        assert!(matches!(store.begin("acme", "k1", [1; 32]), Begin::Running));
        assert!(matches!(store.begin("acme", "k1", [2; 32]), Begin::Mismatch));
        claim.keep(kept("{\"a\":1}"));
        assert!(matches!(store.begin("acme", "k1", [1; 32]), Begin::Replay(k) if k == kept("{\"a\":1}")));
        assert!(matches!(store.begin("acme", "k1", [2; 32]), Begin::Mismatch));
        // Another tenant's key of the same name is its own.
        assert!(matches!(store.begin("globex", "k1", [2; 32]), Begin::Run(_)));
    }

    #[test]
    fn a_claim_dropped_unanswered_frees_the_key() {
        let store = Idempotency::new();
        drop(store.begin("acme", "k1", [1; 32]));
        assert!(store.is_empty());
        assert!(matches!(store.begin("acme", "k1", [2; 32]), Begin::Run(_)));
    }

    #[test]
    fn kept_answers_are_bounded_oldest_first() {
        let store = Idempotency::new();
        let body = "x".repeat(1024 * 1024);
        for i in 0..(MAX_BYTES / body.len() + 10) {
            let Begin::Run(claim) = store.begin("acme", &format!("k{i}"), [0; 32]) else { panic!("new key") };
            claim.keep(kept(&body));
        }
        assert!(store.bytes() <= MAX_BYTES, "{} bytes kept", store.bytes());
        assert!(matches!(store.begin("acme", "k0", [0; 32]), Begin::Run(_)), "the oldest was forgotten");
        let last = format!("k{}", MAX_BYTES / body.len() + 9);
        assert!(matches!(store.begin("acme", &last, [0; 32]), Begin::Replay(_)), "the newest is kept");
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(valid_key("order-42_retry"));
        assert!(!valid_key("") && !valid_key("a b") && !valid_key(&"k".repeat(256)) && !valid_key("é"));
    }
}
