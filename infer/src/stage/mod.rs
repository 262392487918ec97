//! The infer stage: route each validated request to a model version, micro-batch per version,
//! score off the reactor, write one prediction outcome per request (and one per shadow
//! version), and acknowledge the request once its outcomes are acknowledged.

mod models;
mod routing;
mod scoring;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use streamscore_contracts::audit::AuditKey;
use streamscore_contracts::{
    topics, Codec, Lineage, OutcomeReason, OutcomeStatus, PredictionOutcome, Stage, ValidatedRequest,
};
use streamscore_kafka::audit::{AuditWriter, Committer};
use streamscore_kafka::retry;
use streamscore_kafka::{Ack, KafkaConfig, Seal, Sink, SinkError};
use streamscore_modelstore::{ModelVersion, Refused, SharedStore};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, Scorer};
use crate::batcher::{self, BatchConfig};
use crate::quota::{self, Policy, Quotas};
use crate::router::{self, Availability, QuotaOutcome, Route};
use streamscore_telemetry::LiveStats;

use self::models::*;
use self::routing::*;
use self::scoring::*;

/// Errors that stop the stage (restarting resumes without loss).
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Setup(#[from] streamscore_kafka::KafkaError),
    #[error("schema registry: {0}")]
    Registry(#[from] streamscore_contracts::RegistryError),
    #[error("audit log: {0}")]
    Audit(#[from] streamscore_kafka::audit::AuditError),
    #[error("encoding a prediction: {0}")]
    Encode(#[from] streamscore_contracts::EncodeError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Source(#[from] streamscore_kafka::SourceError),
    #[error("{0}")]
    Delivery(String),
    #[error("{what} panicked: {message}; the stage stops, and a restart resumes from the last committed offsets without loss")]
    Panicked { what: String, message: String },
    #[error("loading model {0}")]
    Load(#[from] BackendError),
    #[error("model store: {0}")]
    Store(#[from] streamscore_modelstore::StoreError),
    #[error("tenant policy: {0}")]
    Policy(#[from] quota::PolicyError),
    /// A stop request came during start-up (the registry or the broker not answering yet).
    #[error("start-up stopped")]
    Stopped(#[from] streamscore_kafka::Stopped),
}

/// What the stage needs.
#[derive(Debug, Clone)]
pub struct InferConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub predictions_topic: String,
    pub audit_topic: String,
    pub batch: BatchConfig,
    /// Shadow version per model: scored on the same batches, written flagged as shadow (a
    /// model's rollout, while it shadows its candidate, comes first).
    pub shadow: HashMap<String, String>,
    /// The rollouts in force (`control.rollouts`): a model's split routes what names no
    /// version and has no pin. Filled by whoever starts the stage from `rollouts_topic`.
    pub rollouts: streamscore_control::RolloutTable,
    /// The topic of the rollouts to follow (`None`: none, every model answers its default).
    pub rollouts_topic: Option<String>,
    /// Pinned version per tenant (used when a request names no version).
    pub pins: HashMap<String, String>,
    pub instance: String,
    /// How often to look for versions dropped into the store and a changed policy file (and to
    /// checkpoint quota state); `None` = never.
    pub rescan_every: Option<Duration>,
    /// The tenant policy file; `None` = no quotas.
    pub policy: Option<std::path::PathBuf>,
    /// Compacted topic of quota checkpoints: the quota buckets committed with the request
    /// offsets, so a redelivered request is decided as it was the first time (the source
    /// that feeds this stage reads and writes it; see `streamscore_kafka::checkpoint`).
    pub quota_state_topic: String,
}

impl InferConfig {
    pub fn new(kafka: KafkaConfig, registry_url: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            kafka,
            registry_url: registry_url.into(),
            predictions_topic: topics::PREDICTIONS.to_owned(),
            audit_topic: topics::AUDIT.to_owned(),
            batch: BatchConfig::default(),
            shadow: HashMap::new(),
            rollouts: streamscore_control::RolloutTable::empty(),
            rollouts_topic: Some(topics::ROLLOUTS.to_owned()),
            pins: HashMap::new(),
            instance: instance.into(),
            rescan_every: Some(Duration::from_secs(5)),
            policy: None,
            quota_state_topic: QUOTA_CHECKPOINTS.to_owned(),
        }
    }
}

/// The default topic of quota checkpoints.
pub const QUOTA_CHECKPOINTS: &str = "quota.checkpoints";

/// A model version ready to score.
#[derive(Debug)]
struct Loaded {
    version: Arc<ModelVersion>,
    scorer: Arc<dyn Scorer>,
}

/// A request waiting in a batch. Boxed on its way (`Queued`): an item is some 500 bytes, and a
/// backlog's fair ordering moves a thousand at a time, which by value cost the drain about 6%
/// of the pipeline's CPU in copies and page faults on fresh memory.
#[derive(Debug)]
struct Item {
    validated: ValidatedRequest,
    /// The rollout whose split chose this request's version, if one did.
    routed_by: Option<streamscore_contracts::RoutedBy>,
    /// Set when the model's fallback version scores this request: the version that could not
    /// (`model/version`), and why.
    fallback: Option<(String, String)>,
    ack: Ack,
    enqueued: Instant,
    /// Tier of the tenant (1 first), for fair batches.
    tier: u8,
}

/// What the batchers pass around.
type Queued = Box<Item>;

/// The two lanes of a loaded version: its batches, and its explained requests, scored and
/// explained apart so that an explanation (2^16 coalition rows) never holds up the requests
/// batched with it.
#[derive(Debug, Clone)]
struct Lanes {
    plain: mpsc::Sender<Queued>,
    explain: mpsc::Sender<Queued>,
}

/// Shared by the batch tasks.
struct Shared {
    config: InferConfig,
    codec: Codec<PredictionOutcome>,
    sink: Sink,
    /// Commits every output in the audit log (a batch's in one entry; rejections in batches).
    committer: Arc<Committer>,
    audit_key: AuditKey,
    stats: Arc<LiveStats>,
    errors: mpsc::UnboundedSender<InferError>,
    /// Tenants whose admitted request got its answer (quota in-flight accounting).
    released: mpsc::UnboundedSender<String>,
    /// Every loaded version, by key: a batch finds its rollout's shadow here.
    loaded: std::sync::RwLock<HashMap<String, Arc<Loaded>>>,
    /// Every version's batcher, by key: a batch that failed finds its fallback's here. Weak, so
    /// that closing the input still closes every batcher (a fallback after that is FAILED).
    /// Per version: its plain lane and its explanation lane.
    batchers: std::sync::RwLock<HashMap<String, (mpsc::WeakSender<Queued>, mpsc::WeakSender<Queued>)>>,
    /// The model store (its fallbacks).
    store: SharedStore,
}

/// Runs the stage until `input` closes; returns when every batch is written. Start-up
/// (registering the contract, the audit chain, loading the models) gives way to `shutdown`
/// with [`InferError::Stopped`]; after it, the stage stops when its input closes.
pub async fn run(
    config: InferConfig,
    store: SharedStore,
    backend: Arc<dyn Backend>,
    mut input: mpsc::Receiver<(ValidatedRequest, Ack)>,
    stats: Arc<LiveStats>,
    shutdown: streamscore_kafka::Shutdown,
) -> Result<(), InferError> {
    let codec = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    retry::register(&codec, &shutdown).await??;
    let broker = || format!("the broker at {} (the audit chain's first entries)", config.kafka.bootstrap);
    let audit = Arc::new(
        shutdown
            .race(
                broker,
                AuditWriter::new(
                    &config.kafka,
                    &config.registry_url,
                    &config.audit_topic,
                    Stage::Infer.as_str(),
                    &config.instance,
                    &shutdown,
                ),
            )
            .await??,
    );
    shutdown.race(broker, audit.schema_registered(&codec)).await??;
    let committer = Committer::new(Arc::clone(&audit));
    let audit_key = audit.key().await;
    let (errors_tx, mut errors) = mpsc::unbounded_channel();
    let (released_tx, mut released) = mpsc::unbounded_channel::<String>();
    let mut quotas = match &config.policy {
        None => None,
        Some(path) => {
            let policy = Policy::load(path)?;
            let subject = path.display().to_string();
            let loaded = audit.record("POLICY_LOADED", &subject, None, policy_details(&policy));
            shutdown.race(broker, loaded).await??;
            // Bucket state comes with each partition's assignment (offset-aligned checkpoints).
            Some(Quotas::new(policy))
        }
    };
    let shared = Arc::new(Shared {
        sink: Sink::new(&config.kafka, "infer")?,
        committer: Arc::clone(&committer),
        audit_key,
        codec,
        stats,
        errors: errors_tx,
        released: released_tx,
        loaded: std::sync::RwLock::default(),
        batchers: std::sync::RwLock::default(),
        store: store.clone(),
        config,
    });

    let mut models: HashMap<String, Arc<Loaded>> = HashMap::new();
    let mut batchers: HashMap<String, Lanes> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Every version first, so shadows are loaded before the batchers that use them start.
    // A version that does not load is refused (audited) and the others are served.
    let mut refused = Refusals::default();
    let mut quota_metrics = QuotaMetrics::default();
    let versions: Vec<Arc<ModelVersion>> = store.current().versions().collect();
    let mut last_failure = None;
    let loading = async {
        for refusal in store.current().refused() {
            refused.store_refused(&audit, refusal).await?;
        }
        for version in &versions {
            if let Err(e) = load(backend.as_ref(), &audit, Arc::clone(version), &mut models, &mut refused).await? {
                last_failure = Some(e);
            }
        }
        Ok::<_, InferError>(())
    };
    shutdown
        .race(|| format!("the models to load and the broker at {}", shared.config.kafka.bootstrap), loading)
        .await??;
    if let (true, Some(failure)) = (models.is_empty(), last_failure) {
        // Nothing to serve: the backend cannot run any version (for CUDA, say so and stop).
        return Err(InferError::Load(failure));
    }
    for version in &versions {
        start_batcher(&shared, &version.key(), &models, &mut batchers, &mut tasks);
    }
    export_shares(&store.current(), &shared.config.rollouts.current());
    let mut rescan = tokio::time::interval(shared.config.rescan_every.unwrap_or(Duration::from_secs(3600)));
    rescan.tick().await;
    let mut ticking = tokio::spawn(Arc::clone(&committer).tick());

    let failure = loop {
        tokio::select! {
            Some(error) = errors.recv() => break Some(error),
            failed = shared.sink.failed() => break Some(failed.into()),
            failed = audit.failed() => break Some(InferError::Audit(streamscore_kafka::audit::AuditError::Delivery(failed))),
            // The committer stopped: its requests would never finish; say why and stop.
            stopped = &mut ticking => break Some(InferError::Audit(match stopped {
                Ok(e) => e,
                Err(e) => streamscore_kafka::audit::AuditError::Delivery(format!("the committer stopped: {e}")),
            })),
            Some(joined) = tasks.join_next() => {
                if let Err(e) = joined {
                    break Some(panicked("a batcher", &e));
                }
            }
            Some(tenant) = released.recv() => {
                if let Some(q) = quotas.as_mut() {
                    q.release(&tenant);
                }
            }
            _ = rescan.tick(), if shared.config.rescan_every.is_some() => {
                export_shares(&store.current(), &shared.config.rollouts.current());
                if let Some(q) = quotas.as_mut() {
                    reload_policy(q, &audit).await?;
                }
                match store.current().rescan() {
                    Ok((next, added)) => {
                        for refusal in next.refused() {
                            refused.store_refused(&audit, refusal).await?;
                        }
                        store.replace(next);
                        for version in added {
                            let key = version.key();
                            if load(backend.as_ref(), &audit, version, &mut models, &mut refused).await?.is_ok() {
                                start_batcher(&shared, &key, &models, &mut batchers, &mut tasks);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "model store rescan failed; keeping the loaded versions"),
                }
            }
            item = input.recv() => {
                let Some((validated, ack)) = item else { break None };
                route_one(&shared, &store, quotas.as_mut(), &mut quota_metrics, &batchers, &refused, validated, ack).await?;
            }
        }
    };
    if let Some(failure) = failure {
        // Unfinished requests are never acknowledged: their offsets stay where they are.
        ticking.abort();
        shared.sink.flush(Duration::from_secs(2));
        return Err(failure);
    }
    // Input closed: close the batchers, let them flush, wait for every batch.
    drop(batchers);
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result {
            return Err(panicked("a batcher", &e));
        }
    }
    ticking.abort();
    if let Ok(error) = errors.try_recv() {
        return Err(error);
    }
    committer.flush().await?;
    shared.sink.flush(Duration::from_secs(5));
    if let Some(failure) = shared.sink.failure() {
        return Err(failure.into());
    }
    let stats = &shared.stats;
    let counts = HashMap::from([
        ("scored".to_owned(), stats.scored.load(std::sync::atomic::Ordering::Relaxed).to_string()),
        ("rejected".to_owned(), stats.rejected.load(std::sync::atomic::Ordering::Relaxed).to_string()),
        ("failed".to_owned(), stats.failed.load(std::sync::atomic::Ordering::Relaxed).to_string()),
    ]);
    audit.close(counts).await?;
    Ok(())
}

/// A task's panic as the stage's error.
fn panicked(what: &str, error: &tokio::task::JoinError) -> InferError {
    InferError::Panicked { what: what.to_owned(), message: error.to_string() }
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}
