//! Topic names and the event each one carries.
//!
//! Subjects follow Confluent's TopicNameStrategy: the value schema of topic `t` is
//! registered under `t-value`.

use crate::schemas::{self, SchemaFile};

/// Requests from producers; the source of truth. Keyed by tenant.
pub const REQUESTS: &str = "inference.requests";
/// Validated requests, when ingest and infer run as separate processes. Keyed by tenant.
pub const VALIDATED: &str = "inference.validated";
/// Prediction outcomes (scored, rejected, failed). Keyed by tenant.
pub const PREDICTIONS: &str = "inference.predictions";
/// Records that could not become valid requests, with a typed reason.
pub const DEAD_LETTER: &str = "inference.dead-letter";
/// The hash-chained audit log.
pub const AUDIT: &str = "audit.log";
/// Drift alerts from the monitor.
pub const ALERTS: &str = "monitor.alerts";
/// The rollout of each model (compacted, keyed by model): the split every stage routes by.
pub const ROLLOUTS: &str = "control.rollouts";
/// Ground truth: a label per request id, often days after the score. Keyed by tenant.
pub const FEEDBACK: &str = "inference.feedback";
/// The HTTP bridge's answers to idempotent calls, kept 24 h so a retry after a restart (or to
/// another instance) gets the first answer. Keyed by the sha256 of tenant and key.
pub const IDEMPOTENCY: &str = "bridge.idempotency";

/// Every topic of a contract with the schema of its values (the event topics, and the
/// bridge's idempotency answers).
pub const EVENT_TOPICS: [(&str, SchemaFile); 9] = [
    (REQUESTS, schemas::INFERENCE_REQUEST),
    (VALIDATED, schemas::VALIDATED_REQUEST),
    (PREDICTIONS, schemas::PREDICTION_OUTCOME),
    (DEAD_LETTER, schemas::DEAD_LETTER),
    (AUDIT, schemas::AUDIT_RECORD),
    (ALERTS, schemas::DRIFT_ALERT),
    (ROLLOUTS, schemas::ROLLOUT),
    (FEEDBACK, schemas::FEEDBACK),
    (IDEMPOTENCY, schemas::IDEMPOTENT_ANSWER),
];

/// The registry subject of a topic's values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}
