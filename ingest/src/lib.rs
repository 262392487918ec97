//! Ingest: turns records of `inference.requests` into validated requests or dead letters.
//!
//! - [`decide`]: the per-record decision — size limit, Confluent/Avro decoding through the
//!   registry, request id, finite features — with a typed [`DeadLetterReason`] for every
//!   refusal and the original bytes kept.
//!
//! Tenant, model and feature-range checks join when the tenant policy and the model store
//! land; the consumer loop (at-least-once, poison records never stall a partition) with them.
//!
//! [`DeadLetterReason`]: streamscore_contracts::DeadLetterReason

pub mod decide;

pub use decide::{Decision, RawRecord, RequestDecider};
