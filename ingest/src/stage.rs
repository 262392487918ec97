//! The ingest stage's consumer loop.
//!
//! Consumes the request topic as a consumer group, decides each record, and hands the result
//! on: a validated request to infer (an in-process channel in the fused pipeline, or the
//! `inference.validated` topic when ingest runs on its own), a dead letter to the dead-letter
//! topic. An input offset is stored only after its output is acknowledged ([`OffsetTracker`]);
//! produce requests stay in flight meanwhile. A poison record is dead-lettered like any other
//! bad record and never stalls its partition; only a registry outage makes a record wait.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use streamscore_contracts::{topics, Codec, DeadLetter, ValidatedRequest};
use streamscore_kafka::produce::enqueue;
use streamscore_kafka::{Ack, KafkaConfig, OffsetTracker};
use tokio::sync::mpsc;

use crate::decide::{Decision, RawRecord, RequestDecider};
use crate::telemetry;

/// Errors that stop the stage. Restarting resumes from the last stored offsets; nothing is
/// lost.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Setup(#[from] streamscore_kafka::KafkaError),
    #[error("schema registry: {0}")]
    Registry(#[from] streamscore_contracts::RegistryError),
    #[error("encoding an output: {0}")]
    Encode(#[from] streamscore_contracts::EncodeError),
    #[error("an output was not acknowledged by the broker: {0}")]
    Delivery(String),
    #[error("the infer stage stopped taking requests")]
    HandoffClosed,
}

/// Where validated requests go.
#[derive(Debug)]
pub enum Handoff {
    /// To the `inference.validated` topic (ingest deployed on its own).
    Topic { topic: String },
    /// To infer in this process; infer acknowledges each request once its prediction is
    /// acknowledged.
    Channel(mpsc::Sender<(ValidatedRequest, Ack)>),
}

/// What the stage needs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub group_id: String,
    pub input_topic: String,
    pub dead_letter_topic: String,
    /// Where rejections of refused requests that named a `reply_to` go.
    pub predictions_topic: String,
    /// Records in flight (handed out, output not yet acknowledged) before consuming pauses.
    pub max_in_flight: usize,
}

impl IngestConfig {
    pub fn new(kafka: KafkaConfig, registry_url: impl Into<String>) -> Self {
        Self {
            kafka,
            registry_url: registry_url.into(),
            group_id: "streamscore-ingest".to_owned(),
            input_topic: topics::REQUESTS.to_owned(),
            dead_letter_topic: topics::DEAD_LETTER.to_owned(),
            predictions_topic: topics::PREDICTIONS.to_owned(),
            max_in_flight: 20_000,
        }
    }
}

/// Counts of what the stage did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSummary {
    pub consumed: u64,
    pub validated: u64,
    pub dead_lettered: u64,
}

/// The request consumer, configured for at-least-once: offsets are stored by the stage and
/// committed in the background.
pub fn consumer(config: &IngestConfig) -> Result<StreamConsumer, StageError> {
    let consumer: StreamConsumer = config.kafka.stage_consumer_config(&config.group_id).create()?;
    consumer.subscribe(&[&config.input_topic])?;
    Ok(consumer)
}

/// Runs the stage until `shutdown` resolves, then drains in-flight work and commits.
pub async fn run(
    config: IngestConfig,
    decider: RequestDecider,
    handoff: Handoff,
    shutdown: impl Future<Output = ()>,
) -> Result<IngestSummary, StageError> {
    run_with_stats(config, decider, handoff, Arc::default(), shutdown).await
}

/// [`run`], counting into `stats` for a live view.
pub async fn run_with_stats(
    config: IngestConfig,
    decider: RequestDecider,
    handoff: Handoff,
    stats: Arc<streamscore_monitor::LiveStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<IngestSummary, StageError> {
    use std::sync::atomic::Ordering::Relaxed;
    let consumer = Arc::new(consumer(&config)?);
    let producer = config.kafka.producer()?;
    let dead_letters = Codec::<DeadLetter>::with_url(&config.registry_url, &config.dead_letter_topic);
    dead_letters.register().await?;
    let rejections =
        Codec::<streamscore_contracts::PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    rejections.register().await?;
    let validated_codec = match &handoff {
        Handoff::Topic { topic } => {
            let codec = Codec::<ValidatedRequest>::with_url(&config.registry_url, topic);
            codec.register().await?;
            Some(codec)
        }
        Handoff::Channel(_) => None,
    };

    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(i32, i64)>();
    let mut deliveries: FuturesUnordered<Delivery> = FuturesUnordered::new();
    let mut tracker = OffsetTracker::default();
    let mut summary = IngestSummary::default();
    let mut lag_timer = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some((partition, offset)) = ack_rx.recv() => {
                store(&consumer, &config.input_topic, &mut tracker, partition, offset);
            }
            Some(result) = deliveries.next() => result?,
            _ = lag_timer.tick() => report_lag(&consumer),
            message = consumer.recv(), if tracker.in_flight() < config.max_in_flight => {
                let message = message?.detach();
                let started = Instant::now();
                let record = RawRecord::from_message(&message);
                tracker.begin(record.partition, record.offset);
                summary.consumed += 1;
                stats.consumed.fetch_add(1, Relaxed);
                let ack = Ack::new(record.partition, record.offset, ack_tx.clone());
                let decision = decide_with_retry(&decider, record).await;
                match decision {
                    Decision::Valid(validated) => {
                        telemetry::Validated(&validated, started.elapsed()).emit();
                        summary.validated += 1;
                        match (&handoff, &validated_codec) {
                            (Handoff::Topic { topic }, Some(codec)) => {
                                let bytes = codec.encode(&validated)?;
                                let key = validated.request.tenant.as_bytes();
                                let future = enqueue(&producer, FutureRecord::to(topic).key(key).payload(&bytes[..])).await?;
                                deliveries.push(Delivery::new(vec![future], ack));
                            }
                            (Handoff::Channel(tx), _) => {
                                tx.send((*validated, ack)).await.map_err(|_| StageError::HandoffClosed)?;
                            }
                            (Handoff::Topic { .. }, None) => unreachable!("a topic hand-off always has its codec"),
                        }
                    }
                    Decision::DeadLetter(dead_letter, reply) => {
                        telemetry::DeadLettered(&dead_letter, started.elapsed()).emit();
                        summary.dead_lettered += 1;
                        stats.dead_lettered.fetch_add(1, Relaxed);
                        let mut futures = vec![send_dead_letter(&producer, &dead_letters, &config.dead_letter_topic, &dead_letter).await?];
                        if let Some(outcome) = reply {
                            let bytes = rejections.encode(&outcome)?;
                            let key = outcome.lineage.tenant.clone().unwrap_or_default();
                            let record = FutureRecord::to(&config.predictions_topic).key(key.as_bytes()).payload(&bytes[..]);
                            futures.push(enqueue(&producer, record).await?);
                        }
                        deliveries.push(Delivery::new(futures, ack));
                    }
                    Decision::Retry(_) => unreachable!("decide_with_retry never returns Retry"),
                }
            }
        }
    }

    // Drain: finish what is in flight so its offsets can be stored, then commit.
    let deadline = Instant::now() + Duration::from_secs(15);
    while tracker.in_flight() > 0 && Instant::now() < deadline {
        tokio::select! {
            Some((partition, offset)) = ack_rx.recv() => store(&consumer, &config.input_topic, &mut tracker, partition, offset),
            Some(result) = deliveries.next() => result?,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    if tracker.in_flight() > 0 {
        tracing::warn!(
            in_flight = tracker.in_flight(),
            "stopping with unacknowledged records; they will be redelivered"
        );
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "final commit failed; the last second of records may be redelivered");
    }
    Ok(summary)
}

/// Decides a record, waiting out registry outages (the record is never skipped).
async fn decide_with_retry(decider: &RequestDecider, record: RawRecord<'_>) -> Decision {
    let mut backoff = Duration::from_millis(100);
    loop {
        match decider.decide(record).await {
            Decision::Retry(e) => {
                telemetry::RegistryUnavailable(&e).emit();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            decision => return decision,
        }
    }
}

async fn send_dead_letter(
    producer: &FutureProducer,
    codec: &Codec<DeadLetter>,
    topic: &str,
    dead_letter: &DeadLetter,
) -> Result<DeliveryFuture, StageError> {
    let bytes = codec.encode(dead_letter)?;
    let key = dead_letter.original_key.as_deref().unwrap_or_default();
    Ok(enqueue(producer, FutureRecord::to(topic).key(key).payload(&bytes[..])).await?)
}

fn store(consumer: &StreamConsumer, topic: &str, tracker: &mut OffsetTracker, partition: i32, offset: i64) {
    if let Some(safe) = tracker.done(partition, offset) {
        if let Err(e) = consumer.store_offset(topic, partition, safe) {
            // The partition was revoked meanwhile: its new owner resumes from the last commit.
            tracing::debug!(partition, offset = safe, error = %e, "offset not stored");
        }
    }
}

fn report_lag(consumer: &Arc<StreamConsumer>) {
    let consumer = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || {
        let Ok(positions) = consumer.position() else { return };
        for element in positions.elements() {
            let Some(position) = element.offset().to_raw() else { continue };
            if let Ok((_, high)) =
                consumer.fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(1))
            {
                if position >= 0 {
                    telemetry::ConsumerLag { partition: element.partition(), records: (high - position).max(0) }.emit();
                }
            }
        }
    });
}

/// Produced outputs awaiting their acknowledgements; when all are acknowledged, the input's
/// [`Ack`] is done.
struct Delivery {
    inner: std::pin::Pin<Box<dyn Future<Output = Result<(), StageError>> + Send + Sync>>,
}

impl Delivery {
    fn new(futures: Vec<DeliveryFuture>, ack: Ack) -> Self {
        Self {
            inner: Box::pin(async move {
                for future in futures {
                    match future.await {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => return Err(StageError::Delivery(e.to_string())),
                        Err(_) => return Err(StageError::Delivery("producer dropped the delivery".to_owned())),
                    }
                }
                ack.done();
                Ok(())
            }),
        }
    }
}

impl Future for Delivery {
    type Output = Result<(), StageError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
