//! Ingest: turns records of `inference.requests` into validated requests or dead letters.
//!
//! - [`decide`]: the per-record decision — size limit, Confluent/Avro decoding through the
//!   registry, request id, tenant, model and version, features (names, count, kinds, finite,
//!   ranges) — with a typed [`DeadLetterReason`] for every refusal and the original bytes kept.
//! - [`stage`]: the consumer-group loop: at-least-once (offsets stored only after the output is
//!   acknowledged), hand-off to infer in process or through `inference.validated`.
//! - [`telemetry`]: what the stage logs and counts.
//!
//! [`DeadLetterReason`]: streamscore_contracts::DeadLetterReason

pub mod decide;
pub mod stage;
pub mod telemetry;

pub use decide::{check as check_request, Decision, RawRecord, RequestDecider, TenantTopics, Tenants};
pub use stage::{run, run_with_stats, Handoff, IngestConfig, IngestSummary, StageError};
