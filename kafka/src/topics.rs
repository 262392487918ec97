//! The topics streamscore needs and their idempotent creation.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use streamscore_contracts::topics;

use crate::config::{KafkaConfig, KafkaError};

/// A topic to create: name, partitions and topic-level configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Topic configs, e.g. `retention.ms = -1`.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// An event topic: kept forever (`retention.ms=-1`, `retention.bytes=-1`).
    pub fn event(name: &str, partitions: i32) -> Self {
        Self {
            name: name.to_owned(),
            partitions,
            replication: 1,
            configs: vec![
                ("retention.ms".to_owned(), "-1".to_owned()),
                ("retention.bytes".to_owned(), "-1".to_owned()),
            ],
        }
    }

    /// A request topic: an event topic whose records carry the broker's append time
    /// (`message.timestamp.type=LogAppendTime`). Ingest measures a request's age, and infer its
    /// quota, from its record's timestamp: with the broker's time a producer cannot move
    /// either. Brokers that do not honour the setting (tansu 0.6 keeps the producer's create
    /// time) leave the producer's clock in the timestamp; see README "Quotas".
    pub fn requests(name: &str, partitions: i32) -> Self {
        let mut spec = Self::event(name, partitions);
        spec.configs.push(("message.timestamp.type".to_owned(), "LogAppendTime".to_owned()));
        spec
    }

    /// The bridge's kept answers: compacted by key and deleted after `retention` (what a
    /// retry may get back), not kept forever (`cleanup.policy=compact,delete`).
    pub fn expiring(name: &str, partitions: i32, retention: Duration) -> Self {
        Self {
            name: name.to_owned(),
            partitions,
            replication: 1,
            configs: vec![
                ("cleanup.policy".to_owned(), "compact,delete".to_owned()),
                ("retention.ms".to_owned(), retention.as_millis().to_string()),
            ],
        }
    }

    /// A compacted single-partition state topic, like the registry's `_schemas`.
    pub fn state(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            partitions: 1,
            replication: 1,
            configs: vec![
                ("cleanup.policy".to_owned(), "compact".to_owned()),
                ("retention.ms".to_owned(), "-1".to_owned()),
            ],
        }
    }
}

/// How long the bridge's answers to idempotent calls are kept (as long as a retry gets one).
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Partitions of the request, validated and prediction topics on a Kafka cluster: room for
/// six pipeline instances in one consumer group.
pub const CLUSTER_PARTITIONS: i32 = 6;

/// Partitions of those topics on the local stack (one tansu broker on one machine).
///
/// tansu's cost grows with requests, and the producer sends one request per partition per
/// linger, while each fetch costs about 1 ms of broker CPU per partition it names. Measured
/// with `cargo bench --bench pipeline_load -- --bench partitions N paced 2000 20` on this
/// machine: 1 partition, broker 170–290 CPU-µs per event; 6 partitions, 380–440. Idle
/// (`idle 20`): 2.1% of a core against 3.2%. A single machine gains nothing from more.
pub const LOCAL_PARTITIONS: i32 = 1;

/// The event topics for a cluster ([`CLUSTER_PARTITIONS`]).
pub fn event_topics() -> Vec<TopicSpec> {
    event_topics_with(CLUSTER_PARTITIONS)
}

/// The event topics with `partitions` for requests, validated requests, predictions and
/// feedback, which are keyed by tenant and share a partition count so a tenant stays on "the
/// same" partition number across them. Dead letters get up to 3. The audit log has one
/// partition: its hash chain needs a total order; the rollouts one, compacted. The bridge's
/// idempotency answers up to 3 (every bridge reads them all), kept 24 h.
pub fn event_topics_with(partitions: i32) -> Vec<TopicSpec> {
    vec![
        TopicSpec::requests(topics::REQUESTS, partitions),
        TopicSpec::event(topics::VALIDATED, partitions),
        TopicSpec::event(topics::PREDICTIONS, partitions),
        TopicSpec::event(topics::DEAD_LETTER, partitions.min(3)),
        TopicSpec::event(topics::AUDIT, 1),
        TopicSpec::event(topics::ALERTS, 1),
        TopicSpec::event(topics::FEEDBACK, partitions),
        // The models' rollouts: one record per model, compacted (every stage follows it).
        TopicSpec::state(topics::ROLLOUTS),
        // The bridge's answers to idempotent calls, read back by every instance.
        TopicSpec::expiring(topics::IDEMPOTENCY, partitions.min(3), IDEMPOTENCY_RETENTION),
    ]
}

/// What [`ensure_topics`] did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created { name: String, partitions: i32 },
    Existed { name: String, partitions: i32 },
}

impl std::fmt::Display for TopicOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicOutcome::Created { name, partitions } => {
                write!(f, "created {name} ({})", plural(*partitions))
            }
            TopicOutcome::Existed { name, partitions } => {
                write!(f, "exists  {name} ({})", plural(*partitions))
            }
        }
    }
}

fn plural(partitions: i32) -> String {
    format!("{partitions} partition{}", if partitions == 1 { "" } else { "s" })
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(config: &KafkaConfig, specs: &[TopicSpec]) -> Result<Vec<TopicOutcome>, KafkaError> {
    let admin = config.admin()?;
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            spec.configs.iter().fold(
                NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|e| KafkaError::CreateTopic { topic: "*".to_owned(), reason: e.to_string() })?;
    let mut outcomes = Vec::with_capacity(specs.len());
    for (spec, result) in specs.iter().zip(results) {
        match result {
            Ok(_) => outcomes.push(TopicOutcome::Created { name: spec.name.clone(), partitions: spec.partitions }),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => outcomes.push(TopicOutcome::Existed {
                name: spec.name.clone(),
                partitions: partition_count(config, &spec.name)?,
            }),
            Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, reason: code.to_string() }),
        }
    }
    Ok(outcomes)
}

/// The number of partitions of `topic` (0 if the broker does not know it).
pub fn partition_count(config: &KafkaConfig, topic: &str) -> Result<i32, KafkaError> {
    let consumer: BaseConsumer = config
        .client_config()
        .create()
        .map_err(|source| KafkaError::Client { bootstrap: config.bootstrap.clone(), source })?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|source| KafkaError::Metadata { topic: topic.to_owned(), source })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
}
