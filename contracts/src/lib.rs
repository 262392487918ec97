//! Event contracts of streamscore: what goes on the wire and how.
//!
//! - [`schemas`]: the Avro schemas in `schemas/*.avsc` (the one source of truth), embedded.
//! - [`topics`]: topic names and which schema each carries (subjects by TopicNameStrategy).
//! - [`events`]: Rust types matching the schemas, with [`lineage`] on every derived event.
//! - [`codec`]: the Confluent wire format (magic byte, 4-byte schema id, Avro body),
//!   with writer→reader schema resolution and typed decode errors.

pub mod audit;
pub mod codec;
pub mod events;
pub mod lineage;
pub mod schemas;
pub mod topics;

pub use codec::{Codec, DecodeError, Decoded, EncodeError, RegistryError, WireHeader};
pub use events::{
    AuditRecord, DeadLetter, DeadLetterReason, DriftAlert, DriftMethod, Event, InferenceRequest, OutcomeStatus,
    PredictionOutcome, Severity, ValidatedRequest,
};
pub use lineage::{now_micros, Lineage, SourceOffset, Stage};

/// The sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    sha2::Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
