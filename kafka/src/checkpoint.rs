//! Offset-aligned state checkpoints: the position of a consumer group on a partition together
//! with the state its stage had reached there, in one record of a compacted topic.
//!
//! A stage that keeps state per partition (quota buckets) must meet the same state when it
//! reprocesses a record after a crash, or a redelivered request could be decided differently.
//! Kafka's commit metadata would carry it, but tansu does not return it, so the [`Source`]
//! writes one checkpoint record per partition whose position moved — `{next_offset, state}`,
//! keyed by group, topic and partition — and commits the group's offset only after the
//! checkpoint is acknowledged. A checkpoint is therefore never behind the committed offset.
//! When a partition is assigned, the source reads its latest checkpoint, starts from its
//! `next_offset` and hands its state to the stage ([`Assignment::restored`]); records between
//! the committed offset and the checkpoint, if any, were finished and are not redelivered.
//!
//! [`Source`]: crate::Source
//! [`Assignment::restored`]: crate::Assignment::restored

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::offsets::SafePosition;

/// The key of a checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CheckpointKey {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

/// The value of a checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The next offset to consume.
    pub next_offset: i64,
    /// The stage's state at that offset, keyed (e.g. tenant → quota bucket).
    pub state: HashMap<String, String>,
}

/// Errors reading or writing checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint topic {topic}: {source}")]
    Kafka { topic: String, source: rdkafka::error::KafkaError },
    #[error("checkpoint topic {topic} was not read to its end ({reached} of {high}) within {waited:?}")]
    Incomplete { topic: String, reached: i64, high: i64, waited: Duration },
}

/// Reads the latest checkpoint of every partition of `group` from `topic` (one partition,
/// compacted). Blocking: a few fetches.
pub fn read(
    kafka: &KafkaConfig,
    topic: &str,
    group: &str,
) -> Result<HashMap<CheckpointKey, Checkpoint>, CheckpointError> {
    let error = |source| CheckpointError::Kafka { topic: topic.to_owned(), source };
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{group}.checkpoint-reader"))
        .set("enable.auto.commit", "false")
        // A short read at assignment: tansu answers every fetch after this wait.
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(error)?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).map_err(error)?;
    let mut latest = HashMap::new();
    if high <= low {
        return Ok(latest);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(low)).map_err(error)?;
    consumer.assign(&assignment).map_err(error)?;
    let waited = Duration::from_secs(30);
    let deadline = std::time::Instant::now() + waited;
    let mut reached = low;
    while reached < high {
        if std::time::Instant::now() > deadline {
            return Err(CheckpointError::Incomplete { topic: topic.to_owned(), reached, high, waited });
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.map_err(error)?;
        reached = message.offset() + 1;
        let (Some(key), Some(value)) = (message.key(), message.payload()) else { continue };
        let Ok(key) = serde_json::from_slice::<CheckpointKey>(key) else { continue };
        if key.group != group {
            continue;
        }
        match serde_json::from_slice::<Checkpoint>(value) {
            Ok(checkpoint) => {
                latest.insert(key, checkpoint);
            }
            Err(e) => tracing::warn!(topic, offset = message.offset(), error = %e, "unreadable checkpoint; skipped"),
        }
    }
    Ok(latest)
}

/// Writes the checkpoints of `positions` and waits until the broker has them all.
pub async fn write(
    producer: &FutureProducer,
    topic: &str,
    group: &str,
    positions: &[SafePosition],
) -> Result<(), CheckpointError> {
    let records: Vec<(Vec<u8>, Vec<u8>)> = positions
        .iter()
        .map(|position| {
            let key = CheckpointKey {
                group: group.to_owned(),
                topic: position.topic.to_string(),
                partition: position.partition,
            };
            let value = Checkpoint { next_offset: position.next_offset, state: position.state.clone() };
            (serde_json::to_vec(&key).unwrap_or_default(), serde_json::to_vec(&value).unwrap_or_default())
        })
        .collect();
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, value)| {
            producer.send(FutureRecord::to(topic).key(key).payload(value).partition(0), Duration::from_secs(30))
        })
        .collect();
    for delivery in futures::future::join_all(deliveries).await {
        delivery.map_err(|(source, _)| CheckpointError::Kafka { topic: topic.to_owned(), source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_readable_json() {
        let key = CheckpointKey { group: "g".to_owned(), topic: "t".to_owned(), partition: 2 };
        let value = Checkpoint { next_offset: 7, state: HashMap::from([("tenant-01".to_owned(), "5:9".to_owned())]) };
        let text = serde_json::to_string(&value).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).ok(), Some(value));
        assert_eq!(serde_json::to_string(&key).unwrap_or_default(), r#"{"group":"g","topic":"t","partition":2}"#);
    }
}
