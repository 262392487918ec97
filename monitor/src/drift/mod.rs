//! Drift: binned counts per model version in event-time windows, compared with the reference
//! distributions shipped in the model metadata.
//!
//! - [`stats`]: PSI, Jensen-Shannon distance, binned Kolmogorov-Smirnov, normalized Wasserstein.
//! - [`window`]: mergeable binned counts.
//! - [`detector`]: windows, sliding views, thresholds, K-consecutive alerts, dataset drift.

pub mod detector;
/// The statistics themselves live with [`streamscore_contracts::DriftMethod`], which names
/// them (the rollout controller computes PSI too).
pub use streamscore_contracts::drift_stats as stats;
pub mod window;

pub use detector::{Detector, DetectorConfig, Reference, Threshold, Thresholds};
