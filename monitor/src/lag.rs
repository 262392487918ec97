//! Consumer lag of every stage's group, per partition, in records and in seconds (age of the
//! oldest record the group has not committed).
//!
//! A probe costs the broker, per group: one OffsetFetch, one ListOffsets per partition, and —
//! only for a partition that lags — one small fetch (at most 100 kB) of the oldest uncommitted
//! record. The clients
//! are made once and kept, so a probe opens no connections. Stages also report their own lag
//! from librdkafka's statistics (free: fetch responses carry the high watermark), so this
//! probe runs every [`MonitorConfig::lag_every`](crate::stage::MonitorConfig) (10 s) and is
//! what sees a stage that is down.

use std::collections::HashMap;
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

/// Measures lag with clients made once.
pub struct LagProbe {
    kafka: KafkaConfig,
    targets: Vec<LagTarget>,
    /// One consumer per group (committed offsets are read as the group).
    groups: HashMap<String, BaseConsumer>,
    /// Reads the oldest uncommitted record of a lagging partition.
    reader: Option<BaseConsumer>,
}

impl std::fmt::Debug for LagProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagProbe").field("targets", &self.targets).finish_non_exhaustive()
    }
}

impl LagProbe {
    pub fn new(kafka: KafkaConfig, targets: Vec<LagTarget>) -> Self {
        Self { kafka, targets, groups: HashMap::new(), reader: None }
    }

    fn group(&mut self, group: &str) -> Option<&BaseConsumer> {
        if !self.groups.contains_key(group) {
            let consumer = self
                .kafka
                .client_config()
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create::<BaseConsumer>()
                .ok()?;
            self.groups.insert(group.to_owned(), consumer);
        }
        self.groups.get(group)
    }

    /// Measures every target (blocking: run it off the reactor) and exports the gauges.
    /// Groups with no committed offsets on a topic are skipped.
    pub fn measure(&mut self) -> Vec<Lag> {
        let mut out = Vec::new();
        for target in self.targets.clone() {
            let Some(consumer) = self.group(&target.group) else { continue };
            let Ok(metadata) = consumer.fetch_metadata(Some(&target.topic), Duration::from_secs(5)) else { continue };
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == target.topic && t.error().is_none())
                .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(0));
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&target.topic, p);
            }
            let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(5)) else { continue };
            let mut lagging = Vec::new();
            for element in committed.elements() {
                let Some(position) = element.offset().to_raw().filter(|o| *o >= 0) else { continue };
                let Ok((_, high)) =
                    consumer.fetch_watermarks(&target.topic, element.partition(), Duration::from_secs(2))
                else {
                    continue;
                };
                lagging.push((element.partition(), position, (high - position).max(0)));
            }
            for (partition, position, records) in lagging {
                let seconds =
                    if records == 0 { 0.0 } else { self.age_of(&target.topic, partition, position).unwrap_or(0.0) };
                let lag = Lag { group: target.group.clone(), topic: target.topic.clone(), partition, records, seconds };
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
    fn age_of(&mut self, topic: &str, partition: i32, offset: i64) -> Option<f64> {
        if self.reader.is_none() {
            self.reader = self
                .kafka
                .client_config()
                .set("group.id", "streamscore-lag-probe")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "10")
                // One record is wanted; tansu reads (and holds its storage for) everything up to
                // the fetch's byte limit, 5 MB by default: 2,000 lagging records held the
                // pipeline's produce requests for ~70 ms at every probe.
                .set("fetch.max.bytes", "100000")
                .set("max.partition.fetch.bytes", "100000")
                .create()
                .ok();
        }
        let reader = self.reader.as_ref()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).ok()?;
        reader.assign(&tpl).ok()?;
        let started = std::time::Instant::now();
        let mut age = None;
        while started.elapsed() < Duration::from_secs(2) {
            if let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) {
                let written_ms = message.timestamp().to_millis()?;
                #[allow(clippy::cast_precision_loss)]
                {
                    age = Some(((streamscore_contracts::now_micros() / 1000 - written_ms).max(0)) as f64 / 1000.0);
                }
                break;
            }
        }
        // Nothing assigned between probes: no fetches.
        let _ = reader.unassign();
        age
    }
}

/// Measures the lag of `targets` once (blocking). For repeated measurements keep a
/// [`LagProbe`].
pub fn measure(kafka: &KafkaConfig, targets: &[LagTarget]) -> Vec<Lag> {
    LagProbe::new(kafka.clone(), targets.to_vec()).measure()
}
