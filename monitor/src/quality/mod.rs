//! Model quality from ground truth: labels on `inference.feedback` joined to the outcomes
//! they label, quality per model version and tenant over sliding windows of prediction time,
//! and the policy that marks a version `QUALITY_DEGRADED`.
//!
//! - [`figures`]: AUC, log loss, Brier, precision/recall/F1, calibration error, label delay
//!   (scikit-learn's definitions).
//! - [`store`]: the join's state in SQLite on local disk (bounded, rebuildable, restart-safe).
//! - [`join`]: what the stage does with outcomes and labels, the outbox's dead letters, the
//!   refreshes and the audit entries.
//! - [`rebuild`]: filling a new store from the topics.
//! - [`report`]: the figures per window, exported as gauges and readable from the store by
//!   another process ([`report::read`]: what a rollout controller gates on).
//! - [`policy`]: the thresholds (`policies/quality.toml`).

pub mod figures;
pub mod join;
pub mod policy;
pub mod rebuild;
pub mod report;
pub mod store;

pub use join::{Degraded, Quality, QualityConfig};
pub use policy::QualityPolicy;
pub use report::{QualityReport, QualityRow};
pub use store::QualityStore;
