//! Quota checkpoints in a compacted Kafka topic, keyed by tenant, so a new owner of a tenant's
//! partition (or a restarted instance) starts from the last checkpoint, not a full bucket.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use streamscore_kafka::{ensure_topics, KafkaConfig, TopicSpec};

use super::Checkpoint;

/// The default checkpoint topic.
pub const TOPIC: &str = "quota.state";

/// The value of a checkpoint record (the key is the tenant). Tokens are micro-tokens, written
/// as a string because they may exceed JSON's safe integers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Value {
    tokens_micro: String,
    last_us: i64,
}

fn encode(c: &Checkpoint) -> String {
    serde_json::to_string(&Value { tokens_micro: c.tokens_micro.to_string(), last_us: c.last_us }).unwrap_or_default()
}

fn decode(tenant: &str, value: &[u8]) -> Option<Checkpoint> {
    let value: Value = serde_json::from_slice(value).ok()?;
    Some(Checkpoint {
        tenant: tenant.to_owned(),
        tokens_micro: value.tokens_micro.parse().ok()?,
        last_us: value.last_us,
    })
}

/// Reads every checkpoint (the latest per tenant).
pub fn load(kafka: &KafkaConfig, topic: &str) -> Result<Vec<Checkpoint>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "streamscore-quota-restore")
        .set("enable.auto.commit", "false")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let mut latest = HashMap::new();
    if high > low {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
            let message = message?;
            if let (Some(key), Some(value)) = (message.key(), message.payload()) {
                let tenant = String::from_utf8_lossy(key).into_owned();
                if let Some(checkpoint) = decode(&tenant, value) {
                    latest.insert(tenant, checkpoint);
                }
            }
            if message.offset() + 1 >= high {
                break;
            }
        }
    }
    Ok(latest.into_values().collect())
}

/// Creates the topic if needed.
pub async fn ensure(kafka: &KafkaConfig, topic: &str) -> Result<(), streamscore_kafka::KafkaError> {
    ensure_topics(kafka, &[TopicSpec::state(topic)]).await.map(|_| ())
}

/// Writes checkpoints (waits for the broker).
pub async fn save(
    producer: &FutureProducer,
    topic: &str,
    checkpoints: &[Checkpoint],
) -> Result<(), rdkafka::error::KafkaError> {
    for c in checkpoints {
        let value = encode(c);
        producer
            .send(FutureRecord::to(topic).key(c.tenant.as_bytes()).payload(value.as_bytes()), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip() {
        let c = Checkpoint { tenant: "t".to_owned(), tokens_micro: -250_000, last_us: 1_764_000_000_000_000 };
        assert_eq!(decode("t", encode(&c).as_bytes()), Some(c));
        assert_eq!(decode("t", b"garbage"), None);
    }
}
