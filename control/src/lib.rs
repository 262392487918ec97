//! The control plane of streamscore: model rollouts.
//!
//! Each model's rollout (a fixed A/B split, or a candidate version going from shadow through
//! canary steps to promotion, with automatic rollback when a gate fails) is one record of the
//! compacted `control.rollouts` topic, keyed by model, and every change is also an audit entry.
//! Every stage that routes follows the topic, so a change applies everywhere within seconds;
//! outcomes record the rollout generation they were routed under, so replay reproduces every
//! split decision.
//!
//! - [`split`]: the deterministic split of requests by request id.
//! - [`lifecycle`]: how a rollout moves (the next state of every command and gate decision).
//! - [`table`]: the live view a stage routes by, followed from the topic.
//! - [`publish`]: writing a change and its audit entry.
//! - [`gates`]: the gates and their thresholds; [`controller`]: the loop that evaluates them.

pub mod controller;
pub mod gates;
pub mod lifecycle;
pub mod publish;
pub mod split;
pub mod table;

pub use lifecycle::{Change, RolloutError};
pub use table::{follow, FollowError, RolloutTable, Rollouts, Routed};
