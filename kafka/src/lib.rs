//! Kafka plumbing shared by every stage.
//!
//! - [`config`]: one place that turns a bootstrap address and overrides into rdkafka clients.
//! - [`topics`]: the topics streamscore needs (partitions, retention) and idempotent creation.
//!
//! tansu (the local broker) does not auto-create topics, so the project creates them itself.

pub mod config;
pub mod topics;

pub use config::{KafkaConfig, KafkaError};
pub use topics::{ensure_topics, event_topics, TopicOutcome, TopicSpec};
