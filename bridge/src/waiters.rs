//! Callers waiting for their outcomes: a bounded map from request id to a one-shot channel,
//! the answers that came after their caller gave up (for `GET /v1/requests/{id}`), and the
//! handshake with the predictions listener (see [`crate::listen`]).
//!
//! The listener reads the predictions topic only while someone waits. A caller registers
//! before it publishes; if the listener is idle, the caller waits until the listener has
//! positioned itself at the topic's end ([`Waiters::register`]), so an outcome can never
//! be written before the position the listener reads from.
//!
//! - **Shares.** The map holds at most `capacity` rows, and one tenant at most its `share`
//!   of them (see [`default_share`]), so a tenant at its share leaves every other tenant its
//!   own ([`WaitError::TenantFull`], a 429 for that tenant alone).
//! - **Nothing left behind.** A registration is a [`Registration`]: dropped before it is
//!   settled (the caller's future dropped, its client hung up), it forgets every request
//!   still waiting, so the listener can go idle again.
//! - **Only the caller's tenant.** An outcome is handed to a waiter only when it names the
//!   waiter's tenant ([`Completion::WrongTenant`] otherwise).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use streamscore_contracts::PredictionOutcome;
use tokio::sync::{oneshot, watch};

/// How long an id whose caller gave up (504) is still looked for, and an answer kept.
pub const KEEP_LATE: Duration = Duration::from_secs(300);
/// How many such ids and answers are kept, oldest dropped first.
pub const MAX_LATE: usize = 100_000;

/// The share of a pool of `capacity` waiters each of `tenants` tenants may hold: an equal
/// part, so that shares never add up to more than the pool and no tenant at its share can make
/// another wait for room, but at least one full call ([`crate::api::MAX_ROWS`] rows, or the
/// whole pool when it is smaller). Past `capacity / MAX_ROWS` tenants that floor makes the
/// shares add up to more than the pool; [`crate::serve`] warns.
pub fn default_share(capacity: usize, tenants: usize) -> usize {
    (capacity / tenants.max(1)).max(capacity.min(crate::api::MAX_ROWS))
}

/// Why a caller cannot wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("{waiting} requests are waiting for outcomes, the limit is {capacity}; retry shortly")]
    Full { waiting: usize, capacity: usize },
    #[error(
        "tenant {tenant} has {waiting} requests waiting for outcomes and this call would add {adding}; \
         a tenant may have {share} waiting at once: retry when some are answered"
    )]
    TenantFull { tenant: String, waiting: usize, adding: usize, share: usize },
    #[error("the predictions listener did not start reading in time")]
    NotListening,
}

/// What `GET /v1/requests/{id}` finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The outcome, kept for a caller that gave up.
    Answered(Box<PredictionOutcome>),
    /// Its caller gave up and the outcome has not come yet.
    Pending,
    /// Waited on by a caller right now.
    Waiting,
    /// Not a request of this tenant that this bridge instance knows.
    Unknown,
}

#[derive(Debug)]
struct Waiter {
    tenant: String,
    tx: oneshot::Sender<PredictionOutcome>,
}

#[derive(Debug)]
struct Late {
    tenant: String,
    since: Instant,
    outcome: Option<Box<PredictionOutcome>>,
}

/// What [`Waiters::complete`] did with an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Handed to its waiting caller.
    Handed,
    /// Kept (or already kept) for a caller that gave up.
    Kept,
    /// A waiter or kept id of another tenant than the outcome names: not handed over.
    WrongTenant,
    /// Nobody wants it.
    Unclaimed,
}

#[derive(Debug, Default)]
struct Inner {
    waiting: HashMap<String, Waiter>,
    /// Rows waiting per tenant (tenants with none are absent).
    held: HashMap<String, usize>,
    late: HashMap<String, Late>,
    /// `late`'s ids, oldest first.
    late_order: VecDeque<String>,
    /// Entries of `late` still without an outcome (kept so the listener's check is O(1)).
    unanswered: usize,
    /// Whether the listener reads from a position at or before every registered request.
    live: bool,
}

impl Inner {
    /// Removes a waiter, giving back its tenant's slot.
    fn remove_waiter(&mut self, id: &str) -> Option<Waiter> {
        let waiter = self.waiting.remove(id)?;
        self.release(&waiter.tenant);
        Some(waiter)
    }

    fn release(&mut self, tenant: &str) {
        if let Some(held) = self.held.get_mut(tenant) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.held.remove(tenant);
            }
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(id) = self.late_order.front() {
            let expired = self.late.get(id).is_none_or(|l| now.duration_since(l.since) > KEEP_LATE);
            if !expired && self.late_order.len() <= MAX_LATE {
                break;
            }
            if let Some(id) = self.late_order.pop_front() {
                if self.late.remove(&id).is_some_and(|l| l.outcome.is_none()) {
                    self.unanswered -= 1;
                }
            }
        }
    }

    /// Ids the listener must look for: callers waiting, and late ones not answered yet.
    fn wanted(&self) -> bool {
        !self.waiting.is_empty() || self.unanswered > 0
    }

    /// Keeps `late` under `id`, counting it while it has no outcome.
    fn insert_late(&mut self, id: &str, late: Late) {
        let unanswered = late.outcome.is_none();
        match self.late.insert(id.to_owned(), late) {
            Some(previous) if previous.outcome.is_none() => self.unanswered -= 1,
            Some(_) => {}
            None => self.late_order.push_back(id.to_owned()),
        }
        if unanswered {
            self.unanswered += 1;
        }
    }
}

/// The waiters of one bridge instance.
#[derive(Debug)]
pub struct Waiters {
    inner: Mutex<Inner>,
    capacity: usize,
    /// The rows one tenant may have waiting at once.
    share: usize,
    /// Wakes the listener when the first caller registers.
    wake: Condvar,
    live_tx: watch::Sender<bool>,
}

/// One caller's registered requests. Dropping it unsettled (the caller's future dropped: its
/// client hung up, or it failed before publishing) forgets every request still waiting.
#[derive(Debug)]
#[must_use = "dropping a registration forgets its requests"]
pub struct Registration {
    waiters: Arc<Waiters>,
    ids: Vec<String>,
    receivers: Vec<oneshot::Receiver<PredictionOutcome>>,
    settled: bool,
}

impl Registration {
    /// The receivers of the outcomes, in the order of the ids (taken once).
    pub fn take_receivers(&mut self) -> Vec<oneshot::Receiver<PredictionOutcome>> {
        std::mem::take(&mut self.receivers)
    }

    /// The caller stops waiting for the ids from `from` on (its deadline): their outcomes are
    /// kept for `GET /v1/requests/{id}` when they come.
    pub fn give_up(mut self, from: usize) {
        self.waiters.give_up(self.ids.get(from..).unwrap_or_default());
        self.settled = true;
    }

    /// Every outcome came.
    pub fn finish(mut self) {
        self.settled = true;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.settled {
            self.waiters.forget(&self.ids);
        }
    }
}

impl Waiters {
    /// At most `capacity` rows waiting, at most `share` of them one tenant's.
    pub fn new(capacity: usize, share: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity,
            share: share.min(capacity),
            wake: Condvar::new(),
            live_tx: watch::channel(false).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn share(&self) -> usize {
        self.share
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Registers one caller's requests (all or none), then waits, at most `wait`, until the
    /// listener reads from a position before anything they could cause. A call of more rows
    /// than a tenant's share can never fit: it is [`WaitError::Full`], like a full pool.
    pub async fn register(
        self: &Arc<Self>,
        tenant: &str,
        ids: &[String],
        wait: Duration,
    ) -> Result<Registration, WaitError> {
        let mut receivers = Vec::with_capacity(ids.len());
        let (live, waiting) = {
            let mut inner = self.lock();
            let held = inner.held.get(tenant).copied().unwrap_or(0);
            if ids.len() <= self.share && held + ids.len() > self.share {
                return Err(WaitError::TenantFull {
                    tenant: tenant.to_owned(),
                    waiting: held,
                    adding: ids.len(),
                    share: self.share,
                });
            }
            if inner.waiting.len() + ids.len() > self.capacity || ids.len() > self.share {
                return Err(WaitError::Full { waiting: inner.waiting.len(), capacity: self.capacity });
            }
            *inner.held.entry(tenant.to_owned()).or_default() += ids.len();
            for id in ids {
                let (tx, rx) = oneshot::channel();
                if let Some(replaced) = inner.waiting.insert(id.clone(), Waiter { tenant: tenant.to_owned(), tx }) {
                    // Ids are fresh UUIDs; were one ever reused, its slot still counts once.
                    inner.release(&replaced.tenant);
                }
                receivers.push(rx);
            }
            (inner.live, inner.waiting.len())
        };
        // From here on, dropping the caller's future forgets what it registered.
        let registration = Registration { waiters: Arc::clone(self), ids: ids.to_vec(), receivers, settled: false };
        metrics::gauge!("streamscore_bridge_waiters").set(waiting as f64);
        if !live {
            self.wake.notify_all();
            let mut live_rx = self.live_tx.subscribe();
            let started = tokio::time::timeout(wait, live_rx.wait_for(|live| *live)).await;
            if !matches!(started, Ok(Ok(_))) {
                return Err(WaitError::NotListening);
            }
        }
        Ok(registration)
    }

    /// Drops callers that will not wait (they failed before publishing, or went away).
    fn forget(&self, ids: &[String]) {
        let mut inner = self.lock();
        for id in ids {
            inner.remove_waiter(id);
        }
        let waiting = inner.waiting.len();
        drop(inner);
        metrics::gauge!("streamscore_bridge_waiters").set(waiting as f64);
    }

    /// The caller of `ids` gave up (deadline): their outcomes are kept when they come.
    fn give_up(&self, ids: &[String]) {
        let now = Instant::now();
        let mut inner = self.lock();
        for id in ids {
            if let Some(waiter) = inner.remove_waiter(id) {
                inner.insert_late(id, Late { tenant: waiter.tenant, since: now, outcome: None });
            }
        }
        inner.prune(now);
        let waiting = inner.waiting.len();
        drop(inner);
        metrics::gauge!("streamscore_bridge_waiters").set(waiting as f64);
    }

    /// An outcome addressed to this instance: hands it to its caller, or keeps it for a caller
    /// that gave up, when it names that caller's tenant.
    pub fn complete(&self, request_id: &str, outcome: PredictionOutcome) -> Completion {
        let mut inner = self.lock();
        let tenant = outcome.lineage.tenant.as_deref();
        if let Some(waiter) = inner.waiting.get(request_id) {
            if tenant != Some(waiter.tenant.as_str()) {
                return Completion::WrongTenant;
            }
            let Some(waiter) = inner.remove_waiter(request_id) else { return Completion::Unclaimed };
            let waiting = inner.waiting.len();
            drop(inner);
            metrics::gauge!("streamscore_bridge_waiters").set(waiting as f64);
            if let Err(outcome) = waiter.tx.send(outcome) {
                // The caller went away between its deadline and here: keep the answer.
                self.keep(request_id, waiter.tenant, outcome);
            }
            return Completion::Handed;
        }
        if let Some(late) = inner.late.get_mut(request_id) {
            if tenant != Some(late.tenant.as_str()) {
                return Completion::WrongTenant;
            }
            if late.outcome.is_none() {
                late.outcome = Some(Box::new(outcome));
                inner.unanswered -= 1;
            }
            return Completion::Kept;
        }
        Completion::Unclaimed
    }

    fn keep(&self, request_id: &str, tenant: String, outcome: PredictionOutcome) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.insert_late(request_id, Late { tenant, since: now, outcome: Some(Box::new(outcome)) });
        inner.prune(now);
    }

    /// A request of `tenant` by id.
    pub fn lookup(&self, tenant: &str, request_id: &str) -> Lookup {
        let mut inner = self.lock();
        inner.prune(Instant::now());
        if inner.waiting.get(request_id).is_some_and(|w| w.tenant == tenant) {
            return Lookup::Waiting;
        }
        match inner.late.get(request_id) {
            Some(late) if late.tenant == tenant => match &late.outcome {
                Some(outcome) => Lookup::Answered(outcome.clone()),
                None => Lookup::Pending,
            },
            _ => Lookup::Unknown,
        }
    }

    // The listener's side.

    /// Whether any outcome is wanted now.
    pub fn wanted(&self) -> bool {
        let mut inner = self.lock();
        inner.prune(Instant::now());
        inner.wanted()
    }

    /// The listener stops reading, unless someone registered meanwhile. Returns whether it
    /// went idle.
    pub fn go_idle(&self) -> bool {
        let mut inner = self.lock();
        if inner.wanted() {
            return false;
        }
        inner.live = false;
        self.live_tx.send_replace(false);
        true
    }

    /// Blocks the listener thread until someone wants an outcome or `timeout` passes.
    pub fn wait_until_wanted(&self, timeout: Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .wake
            .wait_timeout_while(inner, timeout, |inner| !inner.wanted())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.wanted()
    }

    /// The listener reads from the topic's end as of now: callers registered so far may publish.
    pub fn set_live(&self) {
        let mut inner = self.lock();
        inner.live = true;
        self.live_tx.send_replace(true);
    }

    /// Wakes a listener blocked in [`Self::wait_until_wanted`] (at shutdown).
    pub fn wake_listener(&self) {
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str) -> PredictionOutcome {
        crate::tests::outcome("acme", id)
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn waiters(capacity: usize) -> Arc<Waiters> {
        Arc::new(Waiters::new(capacity, capacity))
    }

    #[tokio::test]
    async fn a_caller_waits_for_the_listener_then_gets_its_own_outcome() {
        let waiters = waiters(10);
        let listener = {
            let waiters = Arc::clone(&waiters);
            std::thread::spawn(move || {
                assert!(waiters.wait_until_wanted(Duration::from_secs(5)), "woken by the registration");
                waiters.set_live();
            })
        };
        let mut registration =
            waiters.register("acme", &ids(&["a"]), Duration::from_secs(5)).await.expect("registered");
        listener.join().expect("listener");
        assert!(!waiters.go_idle(), "someone waits: the listener stays");
        assert_eq!(waiters.complete("b", outcome("b")), Completion::Unclaimed, "not ours");
        assert_eq!(waiters.complete("a", outcome("a")), Completion::Handed);
        let answer = registration.take_receivers().remove(0).await.expect("answer");
        assert_eq!(answer.lineage.request_id.as_deref(), Some("a"));
        registration.finish();
        assert!(waiters.go_idle(), "nobody waits: idle");
    }

    #[tokio::test]
    async fn the_map_is_bounded_and_all_or_none_of_a_callers_ids_are_registered() {
        let waiters = waiters(2);
        waiters.set_live();
        let _held = waiters.register("acme", &ids(&["a"]), Duration::from_secs(1)).await.expect("one");
        let full = waiters.register("globex", &ids(&["b", "c"]), Duration::from_secs(1)).await.expect_err("full");
        assert_eq!(full, WaitError::Full { waiting: 1, capacity: 2 });
        assert_eq!(waiters.waiting(), 1, "nothing of the refused caller stays");
    }

    #[tokio::test]
    async fn a_tenant_at_its_share_leaves_the_others_theirs() {
        // A pool of 4, 2 per tenant: acme at its share is refused, globex still fits.
        let waiters = Arc::new(Waiters::new(4, 2));
        waiters.set_live();
        let acme = waiters.register("acme", &ids(&["a1", "a2"]), Duration::from_secs(1)).await.expect("acme");
        let refused = waiters.register("acme", &ids(&["a3"]), Duration::from_secs(1)).await.expect_err("share");
        assert_eq!(refused, WaitError::TenantFull { tenant: "acme".to_owned(), waiting: 2, adding: 1, share: 2 });
        let globex =
            waiters.register("globex", &ids(&["g1", "g2"]), Duration::from_secs(1)).await.expect("globex's share");
        assert_eq!(waiters.waiting(), 4);
        // Slots come back as outcomes come, as callers give up and as they go away.
        assert_eq!(waiters.complete("a1", outcome("a1")), Completion::Handed);
        let _more = waiters.register("acme", &ids(&["a3"]), Duration::from_secs(1)).await.expect("a slot back");
        acme.give_up(1);
        drop(globex);
        assert_eq!(waiters.waiting(), 1, "only a3 waits");
        let big = waiters.register("globex", &ids(&["x", "y", "z"]), Duration::from_secs(1)).await;
        assert_eq!(big.expect_err("over any share"), WaitError::Full { waiting: 1, capacity: 4 });
    }

    #[test]
    fn shares_split_the_pool_but_fit_a_full_call() {
        assert_eq!(default_share(10_000, 4), 2_500);
        assert_eq!(default_share(10_000, 1), 10_000);
        assert_eq!(default_share(10_000, 0), 10_000, "no keyed tenant: one share");
        assert_eq!(default_share(10_000, 40), 1_000, "a full call still fits");
        assert_eq!(default_share(500, 4), 500, "a pool smaller than a call: the whole pool");
        assert_eq!(default_share(0, 4), 0);
    }

    #[tokio::test]
    async fn an_answer_after_the_deadline_is_kept_for_its_tenant_only() {
        let waiters = waiters(10);
        waiters.set_live();
        let registration = waiters.register("acme", &ids(&["a"]), Duration::from_secs(1)).await.expect("registered");
        assert_eq!(waiters.lookup("acme", "a"), Lookup::Waiting);
        registration.give_up(0);
        assert_eq!(waiters.lookup("acme", "a"), Lookup::Pending);
        assert!(waiters.wanted(), "the listener still looks for it");
        assert_eq!(waiters.complete("a", crate::tests::outcome("globex", "a")), Completion::WrongTenant);
        assert_eq!(waiters.lookup("acme", "a"), Lookup::Pending, "not another tenant's outcome");
        assert_eq!(waiters.complete("a", outcome("a")), Completion::Kept);
        assert!(matches!(waiters.lookup("acme", "a"), Lookup::Answered(_)));
        assert_eq!(waiters.lookup("other", "a"), Lookup::Unknown, "another tenant cannot read it");
        assert!(!waiters.wanted(), "answered: nothing left to look for");
    }

    #[tokio::test]
    async fn late_answers_are_bounded_and_counted_right_when_the_oldest_go() {
        let waiters = waiters(MAX_LATE + 1);
        waiters.set_live();
        let all: Vec<String> = (0..=MAX_LATE).map(|i| format!("r{i}")).collect();
        let registration = waiters.register("acme", &all, Duration::from_secs(1)).await.expect("registered");
        registration.give_up(0);
        assert_eq!(waiters.lookup("acme", "r0"), Lookup::Unknown, "the oldest made room");
        assert_eq!(waiters.lookup("acme", "r1"), Lookup::Pending);
        for id in &all[1..] {
            assert_eq!(waiters.complete(id, outcome(id)), Completion::Kept);
        }
        assert!(!waiters.wanted(), "every kept id answered: nothing left to look for");
    }

    #[tokio::test]
    async fn an_outcome_naming_another_tenant_is_not_handed_to_the_caller() {
        let waiters = waiters(10);
        waiters.set_live();
        let mut registration =
            waiters.register("acme", &ids(&["a"]), Duration::from_secs(1)).await.expect("registered");
        let mut rx = registration.take_receivers();
        assert_eq!(waiters.complete("a", crate::tests::outcome("globex", "a")), Completion::WrongTenant);
        assert_eq!(waiters.waiting(), 1, "the caller still waits for its own");
        assert!(rx[0].try_recv().is_err(), "nothing handed over");
        assert_eq!(waiters.complete("a", outcome("a")), Completion::Handed);
        assert_eq!(rx.remove(0).await.expect("answer").lineage.tenant.as_deref(), Some("acme"));
        registration.finish();
    }

    #[tokio::test]
    async fn a_caller_dropped_while_the_listener_starts_leaves_nothing_behind() {
        let waiters = waiters(10);
        let both = ids(&["a", "b"]);
        let registering = waiters.register("acme", &both, Duration::from_secs(10));
        // The caller goes away (its client hung up) while the listener is still positioning.
        assert!(tokio::time::timeout(Duration::from_millis(20), registering).await.is_err());
        assert_eq!(waiters.waiting(), 0, "its waiters went with it");
        assert!(!waiters.wanted(), "the listener may go idle");
    }

    #[tokio::test]
    async fn a_caller_dropped_while_it_waits_for_outcomes_leaves_nothing_behind() {
        let waiters = waiters(2);
        waiters.set_live();
        let registration = waiters.register("acme", &ids(&["a", "b"]), Duration::from_secs(1)).await.expect("ok");
        assert_eq!(waiters.complete("a", outcome("a")), Completion::Handed);
        drop(registration);
        assert_eq!(waiters.waiting(), 0);
        assert!(!waiters.wanted(), "the listener may go idle");
        let again = waiters.register("acme", &ids(&["c", "d"]), Duration::from_secs(1)).await;
        assert!(again.is_ok(), "its slots came back");
    }

    #[tokio::test]
    async fn a_listener_that_never_starts_fails_the_caller_and_forgets_it() {
        let waiters = waiters(10);
        let error = waiters.register("acme", &ids(&["a"]), Duration::from_millis(50)).await.expect_err("no listener");
        assert_eq!(error, WaitError::NotListening);
        assert_eq!(waiters.waiting(), 0);
    }
}
