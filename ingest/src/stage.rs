//! The ingest stage: the request topic through the at-least-once [`Source`], each record
//! decided, the result handed on: a validated request to infer (an in-process channel in the
//! fused pipeline, or the `inference.validated` topic through the [`Sink`] when ingest runs on
//! its own), a dead letter to the dead-letter topic. A poison record is dead-lettered like any
//! other bad record and never stalls its partition; only a registry outage makes a record
//! wait ([`streamscore_kafka::retry`]), and a stop request is honoured while it waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamscore_contracts::audit::AuditKey;
use streamscore_contracts::{topics, Codec, DeadLetter, PredictionOutcome, ValidatedRequest};
use streamscore_kafka::audit::{AuditWriter, Committer};
use streamscore_kafka::retry::{self, Attempt};
use streamscore_kafka::{
    Ack, KafkaConfig, Seal, Shutdown, Sink, SinkError, Source, SourceConfig, SourceError, Stopped,
};
use tokio::sync::mpsc;

use crate::decide::{Decision, RawRecord, RequestDecider};
use crate::telemetry;

/// Errors that stop the stage. Restarting resumes from the last stored offsets; nothing is
/// lost.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Setup(#[from] streamscore_kafka::KafkaError),
    #[error("schema registry: {0}")]
    Registry(#[from] streamscore_contracts::RegistryError),
    #[error("encoding an output: {0}")]
    Encode(#[from] streamscore_contracts::EncodeError),
    #[error("the infer stage stopped taking requests")]
    HandoffClosed,
    #[error("audit log: {0}")]
    Audit(#[from] streamscore_kafka::audit::AuditError),
    /// A stop request came during start-up (the registry or the broker not answering yet).
    #[error("start-up stopped")]
    Stopped(#[from] Stopped),
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
    /// Offset-aligned state checkpoints (the fused pipeline with quotas: the quota buckets are
    /// committed with the request offsets).
    pub checkpoints: Option<String>,
    /// How long a stop waits for records in flight before committing and leaving.
    pub drain_timeout: Duration,
    /// The event-time window of `created_at` (applied by the decider the fused pipeline builds;
    /// see [`RequestDecider::with_event_time_window`](crate::RequestDecider::with_event_time_window)).
    pub event_window: crate::decide::EventTimeWindow,
    /// Topics of tenants bound to Kafka principals, read beside `input_topic` (see
    /// [`TenantTopics`](crate::TenantTopics)).
    pub tenant_topics: Vec<String>,
    /// The audit log, where every dead letter and rejection is committed.
    pub audit_topic: String,
    /// This instance, naming its audit chain.
    pub instance: String,
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
            checkpoints: None,
            drain_timeout: Duration::from_secs(5),
            event_window: crate::decide::EventTimeWindow::default(),
            tenant_topics: Vec::new(),
            audit_topic: topics::AUDIT.to_owned(),
            instance: streamscore_contracts::lineage::default_instance(),
        }
    }

    /// The source's configuration.
    pub fn source(&self) -> SourceConfig {
        let topics: Vec<&str> =
            std::iter::once(self.input_topic.as_str()).chain(self.tenant_topics.iter().map(String::as_str)).collect();
        let mut source = SourceConfig::new(&self.group_id, &topics, "ingest");
        source.max_in_flight = self.max_in_flight;
        source.checkpoints = self.checkpoints.clone();
        source
    }
}

/// Counts of what the stage did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSummary {
    pub consumed: u64,
    pub validated: u64,
    pub dead_lettered: u64,
}

/// Runs the stage until `shutdown` is requested, then drains in-flight work and commits. A
/// stop during start-up (registering the contracts, the audit chain's first entries) is
/// [`StageError::Stopped`], naming what it waited for.
pub async fn run(
    config: IngestConfig,
    decider: RequestDecider,
    handoff: Handoff,
    shutdown: impl Into<Shutdown>,
) -> Result<IngestSummary, StageError> {
    run_with_stats(config, decider, handoff, Arc::default(), shutdown).await
}

/// The stage's codecs, registered once the registry answers.
struct Codecs {
    dead_letters: Codec<DeadLetter>,
    rejections: Codec<PredictionOutcome>,
    validated: Option<Codec<ValidatedRequest>>,
    committer: Arc<Committer>,
    audit_key: AuditKey,
}

impl Codecs {
    async fn register(config: &IngestConfig, handoff: &Handoff, shutdown: &Shutdown) -> Result<Self, StageError> {
        let audit = AuditWriter::new(
            &config.kafka,
            &config.registry_url,
            &config.audit_topic,
            streamscore_contracts::Stage::Ingest.as_str(),
            &config.instance,
            shutdown,
        )
        .await?;
        let audit_key = audit.key().await;
        let codecs = Self {
            dead_letters: Codec::with_url(&config.registry_url, &config.dead_letter_topic),
            rejections: Codec::with_url(&config.registry_url, &config.predictions_topic),
            validated: match handoff {
                Handoff::Topic { topic } => Some(Codec::with_url(&config.registry_url, topic)),
                Handoff::Channel(_) => None,
            },
            committer: Committer::new(Arc::new(audit)),
            audit_key,
        };
        retry::register(&codecs.dead_letters, shutdown).await??;
        retry::register(&codecs.rejections, shutdown).await??;
        let audit = codecs.committer.audit();
        audit.schema_registered(&codecs.dead_letters).await?;
        audit.schema_registered(&codecs.rejections).await?;
        if let Some(codec) = &codecs.validated {
            retry::register(codec, shutdown).await??;
            audit.schema_registered(codec).await?;
        }
        Ok(codecs)
    }
}

/// [`run`], counting into `stats` for a live view.
pub async fn run_with_stats(
    config: IngestConfig,
    decider: RequestDecider,
    handoff: Handoff,
    stats: Arc<streamscore_telemetry::LiveStats>,
    shutdown: impl Into<Shutdown>,
) -> Result<IngestSummary, StageError> {
    use std::sync::atomic::Ordering::Relaxed;
    let shutdown = shutdown.into();
    // The registry first, on its own (as infer does): a stop while it is down is named as a
    // wait for the registry, not taken by the race below (seen 1 in 18 starts: "waiting for
    // the broker (the audit chain's first entries)").
    let audit_codec = Codec::<streamscore_contracts::AuditRecord>::with_url(&config.registry_url, &config.audit_topic);
    streamscore_kafka::retry::register(&audit_codec, &shutdown).await??;
    // Start-up: every wait gives way to a stop (the registry's inside, by name; the broker's
    // audit entries here).
    let codecs = shutdown
        .race(
            || format!("the broker at {} (the audit chain's first entries)", config.kafka.bootstrap),
            Codecs::register(&config, &handoff, &shutdown),
        )
        .await??;
    let sink = Sink::new(&config.kafka, "ingest")?;
    let mut source = Source::open(&config.kafka, config.source())?;
    let latencies = Arc::clone(&stats);
    source.on_finished(move |micros| latencies.record_latency(u64::try_from(micros).unwrap_or(0)));
    let mut summary = IngestSummary::default();
    let mut failure = None;
    let mut ticking = tokio::spawn(Arc::clone(&codecs.committer).tick());

    loop {
        let (message, ack) = tokio::select! {
            biased;
            _ = shutdown.requested() => break,
            e = sink.failed() => { failure = Some(StageError::from(e)); break }
            e = codecs.committer.audit().failed() => {
                failure = Some(streamscore_kafka::audit::AuditError::Delivery(e).into());
                break
            }
            // The committer stopped: its records would never finish; say why and stop.
            stopped = &mut ticking => {
                failure = Some(match stopped {
                    Ok(e) => e.into(),
                    Err(e) => streamscore_kafka::audit::AuditError::Delivery(format!("the committer stopped: {e}")).into(),
                });
                break
            }
            next = source.next() => match next {
                Ok(next) => next,
                Err(e) => { failure = Some(e.into()); break }
            },
        };
        let started = Instant::now();
        summary.consumed += 1;
        stats.consumed.fetch_add(1, Relaxed);
        // A registry outage makes the record wait here; a stop request still stops.
        let decision = tokio::select! {
            biased;
            _ = shutdown.requested() => break,
            decision = async {
                // New schema ids (this record's and those buffered behind it) are looked up
                // together rather than one registry round trip per record.
                let values = std::iter::once(&message)
                    .chain(source.buffered())
                    .filter_map(|m| rdkafka::message::Message::payload(m));
                decider.prefetch_schemas(values).await;
                let record = RawRecord::from_message(&message, ack.assignment().partitions);
                decide_with_retry(&decider, record, &shutdown).await
            } => match decision {
                Ok(decision) => decision,
                Err(_stopped) => break,
            },
        };
        let result = match decision {
            Decision::Valid(validated) => {
                telemetry::Validated(&validated, started.elapsed()).emit();
                summary.validated += 1;
                match &handoff {
                    Handoff::Topic { topic } => {
                        hand_to_topic(&sink, codecs.validated.as_ref(), topic, &validated, ack).await
                    }
                    Handoff::Channel(tx) => tokio::select! {
                        biased;
                        _ = shutdown.requested() => break,
                        sent = tx.send((*validated, ack)) => sent.map_err(|_| StageError::HandoffClosed),
                    },
                }
            }
            Decision::DeadLetter(dead_letter, reply) => {
                telemetry::DeadLettered(&dead_letter, started.elapsed()).emit();
                summary.dead_lettered += 1;
                stats.dead_lettered.fetch_add(1, Relaxed);
                dead_letter_one(&sink, &codecs, &config, *dead_letter, reply.map(|r| *r), ack).await
            }
            Decision::Retry(_) => unreachable!("decide_with_retry never returns Retry"),
        };
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }

    // Infer (in this process) sees its input close and finishes what it has.
    drop(handoff);
    ticking.abort();
    if failure.is_none() {
        // What waits for its commitment is committed before the source drains.
        if let Err(e) = codecs.committer.flush().await {
            failure = Some(e.into());
        }
    }
    let closed = source.close(config.drain_timeout).await;
    sink.flush(Duration::from_secs(2));
    if let Some(failure) = failure {
        return Err(failure);
    }
    closed?;
    let counts = std::collections::HashMap::from([
        ("consumed".to_owned(), summary.consumed.to_string()),
        ("validated".to_owned(), summary.validated.to_string()),
        ("dead_lettered".to_owned(), summary.dead_lettered.to_string()),
    ]);
    codecs.committer.audit().close(counts).await?;
    Ok(summary)
}

async fn hand_to_topic(
    sink: &Sink,
    codec: Option<&Codec<ValidatedRequest>>,
    topic: &str,
    validated: &ValidatedRequest,
    ack: Ack,
) -> Result<(), StageError> {
    let codec = codec.ok_or(StageError::HandoffClosed)?;
    let bytes = codec.encode(validated)?;
    sink.send(topic, validated.request.tenant.as_bytes(), &bytes, &ack).await?;
    ack.done();
    Ok(())
}

/// Writes a dead letter (cut to fit the producer's limit) and, for a request that named a
/// `reply_to`, its rejected outcome; the record is finished once both are acknowledged.
async fn dead_letter_one(
    sink: &Sink,
    codecs: &Codecs,
    config: &IngestConfig,
    mut dead_letter: DeadLetter,
    reply: Option<PredictionOutcome>,
    ack: Ack,
) -> Result<(), StageError> {
    dead_letter.fit(sink.max_message_bytes());
    if dead_letter.original_value_length.is_some() {
        telemetry::DeadLetterCut(&dead_letter).emit();
    }
    let bytes = codecs.dead_letters.encode(&dead_letter)?;
    let key = dead_letter.original_key.as_deref().unwrap_or_default();
    let hash = codecs.audit_key.event_hash(&bytes);
    let key_id = codecs.audit_key.id();
    sink.send_sealed(&config.dead_letter_topic, key, &bytes, &ack, Seal { hash: &hash, key_id }).await?;
    let mut events = vec![(dead_letter.lineage.event_id.clone(), hash)];
    if let Some(outcome) = reply {
        let bytes = codecs.rejections.encode(&outcome)?;
        let key = outcome.lineage.tenant.as_deref().unwrap_or_default();
        let hash = codecs.audit_key.event_hash(&bytes);
        sink.send_sealed(&config.predictions_topic, key.as_bytes(), &bytes, &ack, Seal { hash: &hash, key_id }).await?;
        events.push((outcome.lineage.event_id.clone(), hash));
    }
    // Done once the outputs and their commitment in the audit log are acknowledged.
    codecs.committer.add(events, ack).await?;
    Ok(())
}

/// Decides a record, waiting out registry outages (the record is never skipped) until a stop
/// is requested.
async fn decide_with_retry(
    decider: &RequestDecider,
    record: RawRecord<'_>,
    shutdown: &Shutdown,
) -> Result<Decision, Stopped> {
    retry::until_done(
        shutdown,
        || "the schema registry (a record waits for its writer schema)".to_owned(),
        || async {
            match decider.decide(record).await {
                Decision::Retry(e) => Attempt::Retry(e),
                decision => Attempt::Done(decision),
            }
        },
        |e, _| telemetry::RegistryUnavailable(e).emit(),
    )
    .await
}
