//! The rollout controller: evaluates each rolling-out model's gates every second on the
//! outcomes of its current step, moves it to the next step when they hold, rolls it back when
//! one fails, and writes (and audits) each change with the figures of the moment.
//!
//! - **Once per cluster.** Every controller joins one consumer group on the control topic (one
//!   partition); only the member it is assigned to acts. The others keep reading, so a new
//!   leader has the step's figures at once.
//! - **Survives a restart.** Its only state is the figures of each model's current step, and a
//!   controller that starts reads the predictions (and drift alerts) from the earliest step
//!   start of the rollouts in force: the figures are rebuilt from the topics.
//! - **Rollback within seconds.** A gate is judged as soon as the candidate has a tenth of the
//!   step's samples; the change reaches every stage within the followers' fetch wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use streamscore_contracts::{Codec, DriftAlert, PredictionOutcome, Rollout, RolloutStatus};
use streamscore_kafka::audit::AuditWriter;
use streamscore_kafka::{KafkaConfig, Shutdown};
use tokio::sync::mpsc;

use crate::gates::{GateThresholds, StepFigures, Verdict};
use crate::lifecycle::{self, Change};
use crate::publish::{PublishError, Publisher};
use crate::table::{self, FollowError};

/// What the controller needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub rollouts_topic: String,
    pub predictions_topic: String,
    pub alerts_topic: String,
    pub audit_topic: String,
    pub instance: String,
    pub thresholds: GateThresholds,
    /// How often the gates are evaluated.
    pub every: Duration,
    /// The versions the monitor's quality join has judged `QUALITY_DEGRADED` (model, version →
    /// why), when it runs in the same process: a step whose candidate is in it fails.
    pub degraded: Option<Degraded>,
}

/// `(model, version)` → why it is `QUALITY_DEGRADED` (the monitor's quality join keeps it).
pub type Degraded = Arc<std::sync::RwLock<HashMap<(String, String), String>>>;

impl ControllerConfig {
    pub fn new(kafka: KafkaConfig, registry_url: &str, instance: &str) -> Self {
        use streamscore_contracts::topics;
        Self {
            kafka,
            registry_url: registry_url.to_owned(),
            rollouts_topic: topics::ROLLOUTS.to_owned(),
            predictions_topic: topics::PREDICTIONS.to_owned(),
            alerts_topic: topics::ALERTS.to_owned(),
            audit_topic: topics::AUDIT.to_owned(),
            instance: instance.to_owned(),
            thresholds: GateThresholds::default(),
            every: Duration::from_secs(1),
            degraded: None,
        }
    }
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Follow(#[from] FollowError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("audit log: {0}")]
    Audit(#[from] streamscore_kafka::audit::AuditError),
    #[error(transparent)]
    Stopped(#[from] streamscore_kafka::Stopped),
    #[error("reading {topic}: {source}")]
    Read { topic: String, source: rdkafka::error::KafkaError },
    #[error("the controller's reader stopped: {0}")]
    Reader(String),
}

/// What the reader thread saw.
enum Seen {
    Outcome(Box<PredictionOutcome>),
    Alert(Box<DriftAlert>),
}

/// The consumer group whose one member leads the rollouts of `topic`.
pub fn leader_group(topic: &str) -> String {
    format!("streamscore-rollout-controller.{topic}")
}

/// Runs the controller until `shutdown`.
pub async fn run(config: ControllerConfig, shutdown: Shutdown) -> Result<(), ControllerError> {
    let mut table = table::follow(&config.kafka, &config.registry_url, &config.rollouts_topic, &shutdown).await?;
    let stage = "controller";
    let waiting = || format!("the broker at {} (the controller's audit chain)", config.kafka.bootstrap);
    let audit = Arc::new(
        shutdown
            .race(
                waiting,
                AuditWriter::new(
                    &config.kafka,
                    &config.registry_url,
                    &config.audit_topic,
                    stage,
                    &config.instance,
                    &shutdown,
                ),
            )
            .await??,
    );
    let publisher = shutdown
        .race(
            waiting,
            Publisher::new(&config.kafka, &config.registry_url, &config.rollouts_topic, Arc::clone(&audit), &shutdown),
        )
        .await??;
    // Where the step figures are rebuilt from: the earliest step start in force (or now).
    let now_us = streamscore_contracts::now_micros();
    let since_us = table
        .current()
        .all()
        .filter(|r| matches!(r.status, RolloutStatus::Shadow | RolloutStatus::Canary))
        .map(|r| r.step_started_at)
        .min()
        .unwrap_or(now_us)
        .min(now_us);
    let (tx, mut seen) = mpsc::channel::<Seen>(10_000);
    let stop = Arc::new(AtomicBool::new(false));
    let leader = Arc::new(AtomicBool::new(false));
    let reader = Reader {
        kafka: config.kafka.clone(),
        outcomes: Codec::with_url(&config.registry_url, &config.predictions_topic),
        alerts: Codec::with_url(&config.registry_url, &config.alerts_topic),
        predictions_topic: config.predictions_topic.clone(),
        alerts_topic: config.alerts_topic.clone(),
        rollouts_topic: config.rollouts_topic.clone(),
        since_ms: since_us / 1000,
        tx,
        stop: Arc::clone(&stop),
        leader: Arc::clone(&leader),
        runtime: tokio::runtime::Handle::current(),
    };
    let reading = std::thread::Builder::new()
        .name("rollout-controller".to_owned())
        .spawn(move || reader.run())
        .map_err(|e| ControllerError::Reader(e.to_string()))?;
    tracing::info!(instance = config.instance, since_us, "rollout controller running");

    let mut steps: HashMap<String, (i64, StepFigures)> = HashMap::new();
    let mut acted: HashMap<String, i64> = HashMap::new();
    let mut every = tokio::time::interval(config.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = 'control: loop {
        tokio::select! {
            _ = shutdown.requested() => break Ok(()),
            () = table.changed() => {}
            item = seen.recv() => {
                let Some(item) = item else { break Err(ControllerError::Reader("the reader stopped".to_owned())) };
                let rollouts = table.current();
                match item {
                    Seen::Outcome(outcome) => {
                        if let Some(rollout) = rollouts.get(&outcome.model) {
                            step_of(&mut steps, rollout).record(rollout, &outcome);
                        }
                    }
                    Seen::Alert(alert) => {
                        if let Some(rollout) = rollouts.get(&alert.model) {
                            step_of(&mut steps, rollout).record_drift(rollout, &alert);
                        }
                    }
                }
            }
            _ = every.tick() => {
                let rollouts = table.current();
                for rollout in rollouts.all() {
                    let figures = step_of(&mut steps, rollout);
                    publish_gauges(rollout, figures);
                    if !leader.load(Ordering::Relaxed)
                        || !matches!(rollout.status, RolloutStatus::Shadow | RolloutStatus::Canary)
                        || acted.get(&rollout.model) == Some(&rollout.generation)
                    {
                        continue;
                    }
                    let now = streamscore_contracts::now_micros();
                    figures.quality = match (&config.degraded, &rollout.candidate) {
                        (Some(degraded), Some(candidate)) => degraded
                            .read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get(&(rollout.model.clone(), candidate.clone()))
                            .cloned(),
                        _ => None,
                    };
                    let verdict = figures.verdict(rollout, &config.thresholds, now);
                    tracing::debug!(
                        model = rollout.model,
                        generation = rollout.generation,
                        in_step_ms = (now - rollout.step_started_at) / 1000,
                        candidate = figures.candidate.outcomes,
                        incumbent = figures.incumbent.outcomes,
                        psi = figures.score_psi(),
                        agreement = figures.agreement(),
                        compared = figures.compared,
                        ?verdict,
                        "rollout gates"
                    );
                    let change = |reason: String| Change {
                        by: format!("controller/{}", config.instance),
                        reason,
                        at: now,
                        figures: figures.figures(&config.thresholds),
                    };
                    let next = match verdict {
                        Verdict::Wait => continue,
                        Verdict::Pass => lifecycle::advance(
                            rollout,
                            change(format!(
                                "gates held for {} s over {} candidate outcomes",
                                (now - rollout.step_started_at) / 1_000_000,
                                figures.candidate.outcomes
                            )),
                        ),
                        Verdict::Fail(reason) => {
                            tracing::warn!(model = rollout.model, reason, "a rollout gate failed; rolling back");
                            lifecycle::rollback(rollout, change(format!("gate failed: {reason}")))
                        }
                    };
                    let next = match next {
                        Ok(next) => next,
                        Err(e) => {
                            tracing::warn!(model = rollout.model, error = %e, "the controller cannot move this rollout");
                            acted.insert(rollout.model.clone(), rollout.generation);
                            continue;
                        }
                    };
                    if let Err(e) = publisher.publish(Some(rollout), &next).await {
                        break 'control Err(e.into());
                    }
                    // A change not yet read back is not judged twice.
                    acted.insert(rollout.model.clone(), rollout.generation);
                }
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || reading.join()).await;
    audit.close(HashMap::new()).await?;
    result
}

/// The figures of `rollout`'s current step (new ones when its generation moved on).
fn step_of<'a>(steps: &'a mut HashMap<String, (i64, StepFigures)>, rollout: &Rollout) -> &'a mut StepFigures {
    let entry = steps.entry(rollout.model.clone()).or_insert_with(|| (rollout.generation, StepFigures::default()));
    if entry.0 != rollout.generation {
        *entry = (rollout.generation, StepFigures::default());
    }
    &mut entry.1
}

fn publish_gauges(rollout: &Rollout, figures: &StepFigures) {
    let model = rollout.model.clone();
    // (Each version's share is infer's, `streamscore_rollout_share`: it routes by it.)
    metrics::gauge!("streamscore_rollout_step", "model" => model.clone()).set(f64::from(rollout.step));
    #[allow(clippy::cast_precision_loss)]
    for (gate, value) in [
        ("error_rate", figures.candidate.error_rate()),
        ("score_psi", figures.score_psi()),
        ("label_agreement", figures.agreement()),
        ("candidate_p99_seconds", figures.candidate.p99_us() as f64 / 1e6),
        ("incumbent_p99_seconds", figures.incumbent.p99_us() as f64 / 1e6),
        ("candidate_outcomes", figures.candidate.outcomes as f64),
    ] {
        metrics::gauge!("streamscore_rollout_gate", "model" => model.clone(), "gate" => gate).set(value);
    }
}

struct Reader {
    kafka: KafkaConfig,
    outcomes: Codec<PredictionOutcome>,
    alerts: Codec<DriftAlert>,
    predictions_topic: String,
    alerts_topic: String,
    rollouts_topic: String,
    since_ms: i64,
    tx: mpsc::Sender<Seen>,
    stop: Arc<AtomicBool>,
    leader: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

impl Reader {
    fn consumer(&self, group: &str) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
        let mut config = self.kafka.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", "200");
        for (key, value) in &self.kafka.overrides {
            config.set(key, value);
        }
        config.create()
    }

    /// Assigns every partition of `topics` from the first record at or after `since_ms`.
    fn assign_since(&self, consumer: &BaseConsumer, topics: &[&str]) -> Result<(), rdkafka::error::KafkaError> {
        let mut wanted = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for partition in metadata.topics().iter().filter(|t| t.name() == *topic).flat_map(|t| t.partitions()) {
                wanted.add_partition_offset(topic, partition.id(), Offset::Offset(self.since_ms))?;
            }
        }
        let mut start = consumer.offsets_for_times(wanted, Duration::from_secs(10))?;
        for element in start.clone().elements() {
            // No record at or after the time: from the end.
            if element.offset() == Offset::End || element.offset().to_raw().is_none_or(|o| o < 0) {
                start.set_partition_offset(element.topic(), element.partition(), Offset::End)?;
            }
        }
        consumer.assign(&start)
    }

    fn run(self) {
        let setup = || -> Result<(BaseConsumer, BaseConsumer), rdkafka::error::KafkaError> {
            let data = self.consumer(&format!("streamscore-controller-{}", uuid::Uuid::new_v4().simple()))?;
            // Alerts may not exist yet (no monitor ran): only the predictions then.
            let metadata = data.fetch_metadata(Some(&self.alerts_topic), Duration::from_secs(10))?;
            let alerts_exist =
                metadata.topics().iter().any(|t| t.name() == self.alerts_topic && !t.partitions().is_empty());
            if alerts_exist {
                self.assign_since(&data, &[&self.predictions_topic, &self.alerts_topic])?;
            } else {
                self.assign_since(&data, &[&self.predictions_topic])?;
            }
            let leadership = self.consumer(&leader_group(&self.rollouts_topic))?;
            leadership.subscribe(&[&self.rollouts_topic])?;
            Ok((data, leadership))
        };
        let (data, leadership) = match setup() {
            Ok(consumers) => consumers,
            Err(e) => {
                tracing::error!(error = %e, "the rollout controller cannot read its topics");
                return;
            }
        };
        while !self.stop.load(Ordering::Relaxed) {
            // Serves the group (rebalances); the one member assigned the partition leads.
            let _ = leadership.poll(Duration::ZERO);
            let leads = leadership.assignment().is_ok_and(|a| a.count() > 0);
            if self.leader.swap(leads, Ordering::Relaxed) != leads {
                tracing::info!(leads, "rollout controller leadership");
            }
            let Some(message) = data.poll(Duration::from_millis(200)) else { continue };
            let Ok(message) = message else { continue };
            let Some(bytes) = message.payload() else { continue };
            let item = if message.topic() == self.predictions_topic {
                let decoded = match self.outcomes.decode_cached(bytes) {
                    Ok(d) => Ok(d),
                    Err(_) => self.runtime.block_on(self.outcomes.decode(bytes)),
                };
                decoded.ok().map(|d| Seen::Outcome(Box::new(d.value)))
            } else {
                let decoded = match self.alerts.decode_cached(bytes) {
                    Ok(d) => Ok(d),
                    Err(_) => self.runtime.block_on(self.alerts.decode(bytes)),
                };
                decoded.ok().map(|d| Seen::Alert(Box::new(d.value)))
            };
            if let Some(item) = item {
                if self.tx.blocking_send(item).is_err() {
                    return;
                }
            }
        }
    }
}
