//! Per-tenant quotas, enforced where the work is done (infer), from a policy file.
//!
//! - [`policy`]: the TOML policy file, validated with errors that name file, tenant and field.
//! - [`bucket`]: the event-time token bucket (exact, replayable).
//! - [`fair`]: fair batch selection by tier and tenant.
//!
//! **Redeliveries and partitions moving between instances.** Requests are keyed by tenant, so
//! one instance owns a tenant's bucket at a time. The bucket a request leaves behind is
//! committed with the request's offset ([`Quotas::snapshot`], `streamscore_kafka::checkpoint`),
//! and the owner of a newly assigned partition — another instance, or the same one after a
//! crash — starts each tenant from the bucket committed there ([`Quotas::adopt`]). Buckets run
//! on event time, so a redelivered request meets exactly the bucket it met the first time and
//! gets the same decision; a restart loop can neither reset a quota nor charge a request twice.
//! The one decision that depends on the wall clock, the in-flight limit, is load shedding: a
//! redelivery decides it anew, and its rejection has an event id of its own.

pub mod bucket;
pub mod fair;
pub mod policy;

use std::collections::HashMap;

use streamscore_contracts::OutcomeReason;

pub use bucket::{Bucket, BucketDecision};
pub use policy::{OnExceed, Policy, PolicyError, TenantPolicy};

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaDecision {
    Admit,
    /// Admitted; process after this many microseconds.
    Delay {
        wait_us: i64,
    },
    /// Over quota: an explicit rejection with a retry hint.
    Reject {
        reason: OutcomeReason,
        retry_after_ms: i64,
    },
    /// The policy does not let this tenant call.
    UnknownTenant,
    /// The tenant may not use this model.
    ModelNotAllowed,
}

/// A bucket checkpoint: tenant, micro-tokens, event time of the last refill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub tenant: String,
    pub tokens_micro: i128,
    pub last_us: i64,
}

impl Checkpoint {
    /// Reads a [`Quotas::snapshot`].
    fn parse(tenant: &str, text: &str) -> Option<Self> {
        let (tokens, last) = text.split_once(':')?;
        Some(Self { tenant: tenant.to_owned(), tokens_micro: tokens.parse().ok()?, last_us: last.parse().ok()? })
    }
}

/// What the hot path needs of a tenant's policy, resolved once per tenant (and per reload).
#[derive(Debug, Clone)]
struct Limits {
    allowed_models: Vec<String>,
    max_in_flight: u32,
    max_delay_us: i64,
    tier: u8,
    /// Tokens an explained request takes.
    explain_cost: u32,
}

impl Limits {
    fn of(policy: &TenantPolicy) -> Self {
        Self {
            allowed_models: policy.allowed_models.clone(),
            max_in_flight: policy.max_in_flight,
            max_delay_us: match policy.on_exceed {
                OnExceed::Reject => 0,
                OnExceed::Delay => i64::try_from(policy.max_delay_ms.saturating_mul(1000)).unwrap_or(i64::MAX),
            },
            tier: policy.tier,
            explain_cost: policy.explain_cost(),
        }
    }
}

/// One tenant's quota state.
#[derive(Debug, Clone)]
struct TenantState {
    bucket: Bucket,
    in_flight: u32,
    limits: Limits,
}

/// Quota state of the tenants this instance owns.
#[derive(Debug, Clone)]
pub struct Quotas {
    policy: Policy,
    tenants: HashMap<String, TenantState>,
    restored: HashMap<String, Checkpoint>,
    /// The assignment generation each tenant's bucket was adopted for.
    origins: HashMap<String, u64>,
}

impl Quotas {
    pub fn new(policy: Policy) -> Self {
        Self { policy, tenants: HashMap::new(), restored: HashMap::new(), origins: HashMap::new() }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Restores checkpoints (applied when each tenant is first seen).
    pub fn restore(&mut self, checkpoints: impl IntoIterator<Item = Checkpoint>) {
        for checkpoint in checkpoints {
            self.tenants.remove(&checkpoint.tenant);
            self.restored.insert(checkpoint.tenant.clone(), checkpoint);
        }
    }

    /// Makes `tenant`'s bucket the one committed for assignment `generation` of its partition:
    /// `restored` (a [`Quotas::snapshot`]) or, with none, a full bucket at the next event. Once
    /// per generation; later calls for the same generation keep the live bucket.
    pub fn adopt(&mut self, tenant: &str, generation: u64, restored: Option<&str>) {
        if self.origins.get(tenant) == Some(&generation) {
            return;
        }
        self.origins.insert(tenant.to_owned(), generation);
        self.tenants.remove(tenant);
        match restored.and_then(|text| Checkpoint::parse(tenant, text)) {
            Some(checkpoint) => {
                self.restored.insert(tenant.to_owned(), checkpoint);
            }
            None => {
                self.restored.remove(tenant);
            }
        }
    }

    /// The bucket `tenant` has now, as text for [`Quotas::adopt`] (`tokens_micro:last_us`).
    pub fn snapshot(&self, tenant: &str) -> Option<String> {
        self.tenants.get(tenant).map(|t| format!("{}:{}", t.bucket.tokens_micro(), t.bucket.last_us()))
    }

    /// Current bucket state of every tenant seen.
    pub fn checkpoint(&self) -> Vec<Checkpoint> {
        let mut out: Vec<Checkpoint> = self
            .tenants
            .iter()
            .map(|(tenant, t)| Checkpoint {
                tenant: tenant.clone(),
                tokens_micro: t.bucket.tokens_micro(),
                last_us: t.bucket.last_us(),
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }

    /// Replaces the policy (a reload). Buckets keep their tokens, capped at the new burst.
    pub fn reload(&mut self, policy: Policy) {
        self.tenants.retain(|tenant, state| match policy.tenant(tenant) {
            Some(p) => {
                state.bucket.reconfigure(p.rate_per_sec, p.burst);
                state.limits = Limits::of(p);
                true
            }
            None => false,
        });
        self.policy = policy;
    }

    /// The state of a tenant seen for the first time (from its checkpoint if there is one).
    fn first_sight(&mut self, tenant: &str, at_us: i64) -> Option<&mut TenantState> {
        let policy = self.policy.tenant(tenant)?;
        let (rate, burst) = (policy.rate_per_sec, policy.burst);
        let bucket = match self.restored.remove(tenant) {
            Some(c) => Bucket::restore(rate, burst, c.tokens_micro, c.last_us),
            None => Bucket::full(rate, burst, at_us),
        };
        let state = TenantState { bucket, in_flight: 0, limits: Limits::of(policy) };
        Some(self.tenants.entry(tenant.to_owned()).or_insert(state))
    }

    /// Decides a request of `tenant` for `model` with event time `at_us`.
    pub fn decide(&mut self, tenant: &str, model: &str, at_us: i64) -> QuotaDecision {
        self.decide_request(tenant, model, at_us, false)
    }

    /// [`Quotas::decide`] for a request that is (`explained`) or is not explained: an explained
    /// request takes the tenant's `explain_cost` in tokens instead of one.
    pub fn decide_request(&mut self, tenant: &str, model: &str, at_us: i64, explained: bool) -> QuotaDecision {
        // One hash lookup on the hot path; a new tenant takes the slow path once.
        let state = match self.tenants.get_mut(tenant) {
            Some(state) => state,
            None => match self.first_sight(tenant, at_us) {
                Some(state) => state,
                None => return QuotaDecision::UnknownTenant,
            },
        };
        let limits = &state.limits;
        if !limits.allowed_models.is_empty() && !limits.allowed_models.iter().any(|m| m == model) {
            return QuotaDecision::ModelNotAllowed;
        }
        if state.in_flight >= limits.max_in_flight {
            return QuotaDecision::Reject { reason: OutcomeReason::InFlightExceeded, retry_after_ms: 1 };
        }
        let cost = if explained { limits.explain_cost } else { 1 };
        let decision = match state.bucket.decide_cost(at_us, limits.max_delay_us, cost) {
            BucketDecision::Admit => QuotaDecision::Admit,
            BucketDecision::Delay { wait_us } => QuotaDecision::Delay { wait_us },
            BucketDecision::Reject { retry_after_ms } => {
                QuotaDecision::Reject { reason: OutcomeReason::QuotaExceeded, retry_after_ms }
            }
        };
        if matches!(decision, QuotaDecision::Admit | QuotaDecision::Delay { .. }) {
            state.in_flight += 1;
        }
        decision
    }

    /// A request admitted earlier has its answer.
    pub fn release(&mut self, tenant: &str) {
        if let Some(state) = self.tenants.get_mut(tenant) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }

    /// Tier of a tenant (for fair selection); unknown tenants last.
    pub fn tier(&self, tenant: &str) -> u8 {
        match self.tenants.get(tenant) {
            Some(state) => state.limits.tier,
            None => self.policy.tenant(tenant).map_or(u8::MAX, |p| p.tier),
        }
    }

    /// Tokens left for `tenant`, for the gauge.
    pub fn tokens(&self, tenant: &str) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        self.tenants.get(tenant).map(|t| t.bucket.tokens_micro() as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests;
