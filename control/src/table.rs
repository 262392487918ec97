//! The live view of every model's rollout, followed from `control.rollouts` by every stage that
//! routes (ingest, infer, the bridge) and read once by replay.
//!
//! The follower reads the compacted topic from its start (the latest record of each model is
//! its state), answers only once it has read to the end as it was when it started, then keeps
//! reading; a change applies in a stage within one fetch wait ([`FETCH_WAIT_MS`]) of being
//! written. Records of an older generation than the one held are ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use streamscore_contracts::{Codec, Rollout, RoutedBy};
use streamscore_kafka::{KafkaConfig, Shutdown, TopicSpec};
use tokio::sync::watch;

use crate::split;

/// How long a fetch of the control topic waits for records: a change applies within about
/// this long; the broker answers a follower about twice a second.
pub const FETCH_WAIT_MS: &str = "500";

/// The rollouts in force, one per model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollouts {
    by_model: HashMap<String, Arc<Rollout>>,
}

/// Where a rollout's split sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub version: String,
    pub routed_by: RoutedBy,
}

impl Rollouts {
    /// A table of these rollouts (the latest generation of each model wins).
    pub fn of(rollouts: impl IntoIterator<Item = Rollout>) -> Self {
        let mut table = Self::default();
        for rollout in rollouts {
            table.apply(rollout);
        }
        table
    }

    /// Takes `rollout` unless the table holds a later generation of its model; returns whether
    /// it changed anything.
    pub fn apply(&mut self, rollout: Rollout) -> bool {
        match self.by_model.get(&rollout.model) {
            Some(held) if held.generation >= rollout.generation && **held == rollout => false,
            Some(held) if held.generation > rollout.generation => false,
            _ => {
                self.by_model.insert(rollout.model.clone(), Arc::new(rollout));
                true
            }
        }
    }

    pub fn get(&self, model: &str) -> Option<&Arc<Rollout>> {
        self.by_model.get(model)
    }

    /// Every rollout, by model.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Rollout>> {
        self.by_model.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    /// The version `model`'s rollout sends `request_id` to, with what chose it; `None` when
    /// the model has no rollout (routing goes to the model's default).
    pub fn route(&self, model: &str, request_id: &str) -> Option<Routed> {
        let rollout = self.by_model.get(model)?;
        let version = split::choose(&rollout.split, model, request_id)?;
        Some(Routed {
            version: version.to_owned(),
            routed_by: RoutedBy {
                rollout_id: rollout.rollout_id.clone(),
                generation: rollout.generation,
                step: if rollout.status == streamscore_contracts::RolloutStatus::Canary { rollout.step } else { -1 },
            },
        })
    }

    /// The version scored as a shadow on `model`'s batches under its rollout, if any.
    pub fn shadow_of(&self, model: &str) -> Option<&str> {
        self.by_model.get(model).and_then(|r| r.shadow.as_deref())
    }
}

/// A stage's handle on the rollouts in force; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct RolloutTable {
    rx: watch::Receiver<Arc<Rollouts>>,
}

impl RolloutTable {
    /// A table with no rollouts that never changes (a stage run without a control topic).
    pub fn empty() -> Self {
        Self::fixed(Rollouts::default())
    }

    /// A table that never changes.
    pub fn fixed(rollouts: Rollouts) -> Self {
        let (tx, rx) = watch::channel(Arc::new(rollouts));
        // The sender is dropped: `current` keeps answering the last value.
        drop(tx);
        Self { rx }
    }

    /// The rollouts in force now.
    pub fn current(&self) -> Arc<Rollouts> {
        Arc::clone(&self.rx.borrow())
    }

    /// Resolves at the next change (never, for a fixed table).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why the rollouts cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Kafka(#[from] streamscore_kafka::KafkaError),
    #[error("reading {topic}: {source}")]
    Read { topic: String, source: rdkafka::error::KafkaError },
    #[error(transparent)]
    Stopped(#[from] streamscore_kafka::Stopped),
    #[error("the rollouts follower stopped: {0}")]
    Thread(String),
}

/// The control topic: one partition (one order for every model), compacted.
pub fn topic_spec(topic: &str) -> TopicSpec {
    TopicSpec::state(topic)
}

/// Follows `topic` (made if missing) until `shutdown`: returns once the table holds every
/// rollout written before the call.
pub async fn follow(
    kafka: &KafkaConfig,
    registry_url: &str,
    topic: &str,
    shutdown: &Shutdown,
) -> Result<RolloutTable, FollowError> {
    let waiting = || format!("the broker at {} (the rollouts on {topic})", kafka.bootstrap);
    shutdown.race(waiting, streamscore_kafka::ensure_topics(kafka, &[topic_spec(topic)])).await??;
    let (tx, rx) = watch::channel(Arc::new(Rollouts::default()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), FollowError>>();
    let stop = Arc::new(AtomicBool::new(false));
    let follower = Follower {
        kafka: kafka.clone(),
        codec: Codec::<Rollout>::with_url(registry_url, topic),
        topic: topic.to_owned(),
        tx,
        stop: Arc::clone(&stop),
        runtime: tokio::runtime::Handle::current(),
    };
    std::thread::Builder::new()
        .name("rollouts".to_owned())
        .spawn(move || follower.run(ready_tx))
        .map_err(|e| FollowError::Thread(e.to_string()))?;
    let stopper = shutdown.clone();
    tokio::spawn(async move {
        stopper.requested().await;
        stop.store(true, Ordering::Relaxed);
    });
    match shutdown.race(waiting, ready_rx).await? {
        Ok(ready) => ready?,
        Err(_) => return Err(FollowError::Thread("exited before reading the topic".to_owned())),
    }
    Ok(RolloutTable { rx })
}

/// [`follow`] without waiting: the table is empty until the topic is read (retried every 5 s
/// while the broker does not answer), then follows it. For a stage whose start must not wait
/// on the broker (the HTTP bridge, which only validates by it).
pub fn follow_in_background(kafka: &KafkaConfig, registry_url: &str, topic: &str, shutdown: &Shutdown) -> RolloutTable {
    let (tx, rx) = watch::channel(Arc::new(Rollouts::default()));
    let (kafka, registry_url, topic, shutdown) =
        (kafka.clone(), registry_url.to_owned(), topic.to_owned(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            match follow(&kafka, &registry_url, &topic, &shutdown).await {
                Ok(mut table) => loop {
                    tx.send_replace(table.current());
                    tokio::select! {
                        () = table.changed() => {}
                        _ = shutdown.requested() => return,
                    }
                },
                Err(FollowError::Stopped(_)) => return,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot read the rollouts yet; retrying in 5 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = shutdown.requested() => return,
                    }
                }
            }
        }
    });
    RolloutTable { rx }
}

struct Follower {
    kafka: KafkaConfig,
    codec: Codec<Rollout>,
    topic: String,
    tx: watch::Sender<Arc<Rollouts>>,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

impl Follower {
    fn run(self, ready: tokio::sync::oneshot::Sender<Result<(), FollowError>>) {
        let read = |source| FollowError::Read { topic: self.topic.clone(), source };
        let setup = || -> Result<(BaseConsumer, HashMap<i32, i64>), FollowError> {
            let mut config = self.kafka.client_config();
            config
                .set("group.id", format!("streamscore-rollouts-{}", uuid::Uuid::new_v4().simple()))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "false")
                .set("fetch.wait.max.ms", FETCH_WAIT_MS);
            for (key, value) in &self.kafka.overrides {
                config.set(key, value);
            }
            let consumer: BaseConsumer = config.create().map_err(read)?;
            let metadata = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10)).map_err(read)?;
            let mut ends = HashMap::new();
            let mut assignment = TopicPartitionList::new();
            for partition in metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())) {
                let (_, high) =
                    consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(10)).map_err(read)?;
                if high > 0 {
                    ends.insert(partition, high);
                }
                assignment.add_partition_offset(&self.topic, partition, Offset::Beginning).map_err(read)?;
            }
            consumer.assign(&assignment).map_err(read)?;
            Ok((consumer, ends))
        };
        let (consumer, mut ends) = match setup() {
            Ok(set) => set,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut ready = Some(ready);
        let mut table = Rollouts::default();
        while !self.stop.load(Ordering::Relaxed) {
            if ends.is_empty() {
                if let Some(ready) = ready.take() {
                    self.tx.send_replace(Arc::new(table.clone()));
                    let _ = ready.send(Ok(()));
                }
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    if ends.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
                        ends.remove(&message.partition());
                    }
                    let Some(bytes) = message.payload() else { continue }; // a tombstone
                    let decoded = match self.codec.decode_cached(bytes) {
                        Ok(decoded) => Ok(decoded),
                        Err(_) => self.runtime.block_on(self.codec.decode(bytes)),
                    };
                    match decoded {
                        Ok(decoded) => {
                            let rollout = decoded.value;
                            let (model, generation) = (rollout.model.clone(), rollout.generation);
                            if table.apply(rollout) {
                                tracing::info!(model, generation, "rollout changed");
                                if ready.is_none() {
                                    self.tx.send_replace(Arc::new(table.clone()));
                                }
                            }
                        }
                        Err(e) => tracing::warn!(
                            topic = self.topic,
                            offset = message.offset(),
                            error = %e,
                            "a record of the rollouts topic that does not decode; skipped"
                        ),
                    }
                }
                Some(Err(e)) => tracing::warn!(topic = self.topic, error = %e, "reading the rollouts"),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use streamscore_contracts::{RolloutStatus, Share};

    use super::*;

    fn rollout(model: &str, generation: i64, shares: &[(&str, i32)]) -> Rollout {
        Rollout {
            model: model.to_owned(),
            generation,
            rollout_id: format!("r-{model}"),
            status: RolloutStatus::Canary,
            incumbent: "1".to_owned(),
            candidate: Some("2".to_owned()),
            split: shares.iter().map(|(v, b)| Share { version: (*v).to_owned(), basis_points: *b }).collect(),
            shadow: Some("2".to_owned()),
            steps: vec![20, 100],
            step: 0,
            step_secs: 1,
            min_samples: 1,
            step_started_at: 0,
            resume_status: None,
            changed_at: 0,
            changed_by: "t".to_owned(),
            reason: String::new(),
            figures: HashMap::new(),
        }
    }

    #[test]
    fn the_latest_generation_of_each_model_routes() {
        let table = Rollouts::of([
            rollout("fraud", 2, &[("1", 8_000), ("2", 2_000)]),
            rollout("fraud", 1, &[("1", 10_000)]),
            rollout("churn", 1, &[("7", 10_000)]),
        ]);
        assert_eq!(table.get("fraud").map(|r| r.generation), Some(2), "an older generation does not win");
        let routed = table.route("churn", "r").expect("a rollout");
        assert_eq!(routed.version, "7");
        assert_eq!(routed.routed_by, RoutedBy { rollout_id: "r-churn".to_owned(), generation: 1, step: 0 });
        assert_eq!(table.route("other", "r"), None, "no rollout: the model's default");
        assert_eq!(table.shadow_of("fraud"), Some("2"));
        let fixed = RolloutTable::fixed(table.clone());
        assert_eq!(*fixed.current(), table);
    }
}
