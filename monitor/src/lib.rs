//! Monitor: drift per model version ([`drift`]), model quality from ground truth joined to
//! the predictions ([`quality`]), latency ([`latency`]), consumer lag ([`lag`]), what drives
//! each version ([`attribution`]: mean |φ| over sampled predictions) and the stage that runs
//! them ([`stage`]). Its metrics are recorded with the
//! `metrics` macros and served by [`streamscore_telemetry`], like every stage's.

pub mod attribution;
pub mod drift;
pub mod lag;
pub mod latency;
pub mod quality;
pub mod stage;
