//! Per-tenant quotas, enforced where the work is done (infer), from a policy file.
//!
//! - [`policy`]: the TOML policy file, validated with errors that name file, tenant and field.
//! - [`bucket`]: the event-time token bucket (exact, replayable).
//! - [`fair`]: fair batch selection by tier and tenant.
//!
//! **Partitions moving between instances.** Requests are keyed by tenant, so one instance owns
//! a tenant's bucket at a time. Bucket state is checkpointed (see [`Quotas::checkpoint`]) and a
//! new owner — or the same one after a restart — starts from the last checkpoint instead of a
//! full bucket, so a restart loop cannot reset quotas. Requests redelivered after the
//! checkpoint may be charged twice: quotas err on the strict side, never the loose one.

pub mod bucket;
pub mod fair;
pub mod policy;
pub mod state;

use std::collections::HashMap;

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
        reason: &'static str,
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

/// Quota state of the tenants this instance owns.
#[derive(Debug, Clone)]
pub struct Quotas {
    policy: Policy,
    buckets: HashMap<String, Bucket>,
    in_flight: HashMap<String, u32>,
    restored: HashMap<String, Checkpoint>,
}

impl Quotas {
    pub fn new(policy: Policy) -> Self {
        Self { policy, buckets: HashMap::new(), in_flight: HashMap::new(), restored: HashMap::new() }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Restores checkpoints (applied when each tenant is first seen).
    pub fn restore(&mut self, checkpoints: impl IntoIterator<Item = Checkpoint>) {
        for checkpoint in checkpoints {
            self.buckets.remove(&checkpoint.tenant);
            self.restored.insert(checkpoint.tenant.clone(), checkpoint);
        }
    }

    /// Current bucket state of every tenant seen.
    pub fn checkpoint(&self) -> Vec<Checkpoint> {
        let mut out: Vec<Checkpoint> = self
            .buckets
            .iter()
            .map(|(tenant, b)| Checkpoint {
                tenant: tenant.clone(),
                tokens_micro: b.tokens_micro(),
                last_us: b.last_us(),
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }

    /// Replaces the policy (a reload). Buckets keep their tokens, capped at the new burst.
    pub fn reload(&mut self, policy: Policy) {
        self.buckets.retain(|tenant, bucket| match policy.tenant(tenant) {
            Some(p) => {
                bucket.reconfigure(p.rate_per_sec, p.burst);
                true
            }
            None => false,
        });
        self.policy = policy;
    }

    /// Decides a request of `tenant` for `model` with event time `at_us`.
    pub fn decide(&mut self, tenant: &str, model: &str, at_us: i64) -> QuotaDecision {
        let Some(policy) = self.policy.tenant(tenant) else {
            return QuotaDecision::UnknownTenant;
        };
        if !policy.allowed_models.is_empty() && !policy.allowed_models.iter().any(|m| m == model) {
            return QuotaDecision::ModelNotAllowed;
        }
        let in_flight = self.in_flight.get(tenant).copied().unwrap_or(0);
        // Look up before inserting: the hot path allocates no key.
        if in_flight >= policy.max_in_flight {
            return QuotaDecision::Reject { reason: "IN_FLIGHT_EXCEEDED", retry_after_ms: 1 };
        }
        let (rate, burst) = (policy.rate_per_sec, policy.burst);
        let max_delay_us = match policy.on_exceed {
            OnExceed::Reject => 0,
            OnExceed::Delay => i64::try_from(policy.max_delay_ms.saturating_mul(1000)).unwrap_or(i64::MAX),
        };
        if !self.buckets.contains_key(tenant) {
            let bucket = match self.restored.remove(tenant) {
                Some(c) => Bucket::restore(rate, burst, c.tokens_micro, c.last_us),
                None => Bucket::full(rate, burst, at_us),
            };
            self.buckets.insert(tenant.to_owned(), bucket);
        }
        let Some(bucket) = self.buckets.get_mut(tenant) else { return QuotaDecision::UnknownTenant };
        let decision = match bucket.decide(at_us, max_delay_us) {
            BucketDecision::Admit => QuotaDecision::Admit,
            BucketDecision::Delay { wait_us } => QuotaDecision::Delay { wait_us },
            BucketDecision::Reject { retry_after_ms } => {
                QuotaDecision::Reject { reason: "QUOTA_EXCEEDED", retry_after_ms }
            }
        };
        if matches!(decision, QuotaDecision::Admit | QuotaDecision::Delay { .. }) {
            match self.in_flight.get_mut(tenant) {
                Some(n) => *n += 1,
                None => {
                    self.in_flight.insert(tenant.to_owned(), 1);
                }
            }
        }
        decision
    }

    /// A request admitted earlier has its answer.
    pub fn release(&mut self, tenant: &str) {
        if let Some(n) = self.in_flight.get_mut(tenant) {
            *n = n.saturating_sub(1);
        }
    }

    /// Tier of a tenant (for fair selection); unknown tenants last.
    pub fn tier(&self, tenant: &str) -> u8 {
        self.policy.tenant(tenant).map_or(u8::MAX, |p| p.tier)
    }

    /// Tokens left for `tenant`, for the gauge.
    pub fn tokens(&self, tenant: &str) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        self.buckets.get(tenant).map(|b| b.tokens_micro() as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests;
