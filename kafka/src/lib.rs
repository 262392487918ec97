//! Kafka plumbing shared by every stage: one at-least-once source and one sink.
//!
//! - [`source`]: consume → `(record, Ack)` → offset tracker → store and commit; the in-flight
//!   bound, rebalances, a bounded drain on shutdown, lag from librdkafka's statistics.
//! - [`sink`]: encode → enqueue → delivery → [`Ack`]; a failed delivery stops the stage.
//! - [`ack`]: what is owed for one input record.
//! - [`offsets`]: at-least-once offset tracking (store only what every output acknowledged).
//! - [`checkpoint`]: offsets committed together with a stage's per-partition state (quotas).
//! - [`retry`]: the retryable-error rule (wait with backoff, never dead-letter), until shutdown.
//! - [`shutdown`]: the process's stop request, raced by every wait on an outside service.
//! - [`config`]: client settings, each chosen by measurement against the local broker.
//! - [`topics`]: the topics streamscore needs (partitions, retention) and idempotent creation.
//! - [`audit`]: the hash-chained audit log writer.
//!
//! tansu (the local broker) does not auto-create topics, so the project creates them itself.

pub mod ack;
pub mod audit;
pub mod checkpoint;
pub mod config;
pub mod offsets;
pub mod produce;
pub mod retry;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod topics;

pub use ack::{Ack, Assignment, Finished};
pub use config::{KafkaConfig, KafkaError};
pub use offsets::OffsetTracker;
pub use shutdown::{Shutdown, StopReason, Stopped};
pub use sink::{Seal, Sink, SinkError};
pub use source::{IdlePolicy, Source, SourceConfig, SourceError, SourceSummary};
pub use topics::{ensure_topics, event_topics, event_topics_with, TopicOutcome, TopicSpec};
