//! Consumer lag of every stage's group, per partition, in records and in seconds (age of the
//! oldest record the group has not committed).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use streamscore_kafka::KafkaConfig;

/// A group and the topic it consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagTarget {
    pub group: String,
    pub topic: String,
}

/// Lag of one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub records: i64,
    pub seconds: f64,
}

/// Measures the lag of `targets` (blocking: run it off the reactor). Groups with no committed
/// offsets on a topic are skipped.
pub fn measure(kafka: &KafkaConfig, targets: &[LagTarget]) -> Vec<Lag> {
    let mut out = Vec::new();
    for target in targets {
        let Ok(partitions) = streamscore_kafka::topics::partition_count(kafka, &target.topic) else { continue };
        let Ok(consumer) = kafka
            .client_config()
            .set("group.id", &target.group)
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>()
        else {
            continue;
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&target.topic, p);
        }
        let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(5)) else { continue };
        for element in committed.elements() {
            let Some(position) = element.offset().to_raw().filter(|o| *o >= 0) else { continue };
            let Ok((_, high)) = consumer.fetch_watermarks(&target.topic, element.partition(), Duration::from_secs(2))
            else {
                continue;
            };
            let records = (high - position).max(0);
            let seconds = if records == 0 {
                0.0
            } else {
                age_of(kafka, &target.topic, element.partition(), position).unwrap_or(0.0)
            };
            let lag = Lag {
                group: target.group.clone(),
                topic: target.topic.clone(),
                partition: element.partition(),
                records,
                seconds,
            };
            #[allow(clippy::cast_precision_loss)]
            {
                let labels = [
                    ("group", lag.group.clone()),
                    ("topic", lag.topic.clone()),
                    ("partition", lag.partition.to_string()),
                ];
                metrics::gauge!("streamscore_consumer_lag_records", &labels).set(lag.records as f64);
                metrics::gauge!("streamscore_consumer_lag_seconds", &labels).set(lag.seconds);
            }
            out.push(lag);
        }
    }
    out
}

/// Seconds since the record at `offset` was written.
fn age_of(kafka: &KafkaConfig, topic: &str, partition: i32, offset: i64) -> Option<f64> {
    let reader: BaseConsumer = kafka
        .client_config()
        .set("group.id", "streamscore-lag-probe")
        .set("enable.auto.commit", "false")
        .create()
        .ok()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).ok()?;
    reader.assign(&tpl).ok()?;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) {
            let written_ms = message.timestamp().to_millis()?;
            #[allow(clippy::cast_precision_loss)]
            return Some(((streamscore_contracts::now_micros() / 1000 - written_ms).max(0)) as f64 / 1000.0);
        }
    }
    None
}
