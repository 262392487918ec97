//! Kafka plumbing shared by every stage.
//!
//! - [`config`]: one place that turns a bootstrap address and overrides into rdkafka clients.
//! - [`topics`]: the topics streamscore needs (partitions, retention) and idempotent creation.
//! - [`offsets`]: at-least-once offset tracking (store only what every output acknowledged).
//! - [`produce`]: enqueueing records without waiting for their acknowledgement.
//!
//! tansu (the local broker) does not auto-create topics, so the project creates them itself.

pub mod audit;
pub mod config;
pub mod offsets;
pub mod produce;
pub mod topics;

pub use config::{KafkaConfig, KafkaError};
pub use offsets::{Ack, OffsetTracker};
pub use topics::{ensure_topics, event_topics, TopicOutcome, TopicSpec};
