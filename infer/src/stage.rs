//! The infer stage: route each validated request to a model version, micro-batch per version,
//! score off the reactor, write one prediction outcome per request (and one per shadow
//! version), and acknowledge the request once its outcomes are acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use streamscore_contracts::{topics, Codec, Lineage, OutcomeStatus, PredictionOutcome, Stage, ValidatedRequest};
use streamscore_kafka::audit::AuditWriter;
use streamscore_kafka::produce::enqueue;
use streamscore_kafka::{Ack, KafkaConfig};
use streamscore_modelstore::{ModelVersion, RouteError, SharedStore};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, Scorer};
use crate::batcher::{self, BatchConfig};
use streamscore_monitor::LiveStats;

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
    #[error("a prediction was not acknowledged by the broker: {0}")]
    Delivery(String),
    #[error("loading model {0}")]
    Load(#[from] BackendError),
    #[error("model store: {0}")]
    Store(#[from] streamscore_modelstore::StoreError),
}

/// What the stage needs.
#[derive(Debug, Clone)]
pub struct InferConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub predictions_topic: String,
    pub audit_topic: String,
    pub batch: BatchConfig,
    /// Shadow version per model: scored on the same batches, written flagged as shadow.
    pub shadow: HashMap<String, String>,
    /// Pinned version per tenant (used when a request names no version).
    pub pins: HashMap<String, String>,
    pub instance: String,
    /// How often to look for versions dropped into the store; `None` = never.
    pub rescan_every: Option<Duration>,
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
            pins: HashMap::new(),
            instance: instance.into(),
            rescan_every: Some(Duration::from_secs(5)),
        }
    }
}

/// A model version ready to score.
#[derive(Debug)]
struct Loaded {
    version: Arc<ModelVersion>,
    scorer: Arc<dyn Scorer>,
}

/// A request waiting in a batch.
#[derive(Debug)]
struct Item {
    validated: ValidatedRequest,
    ack: Ack,
    enqueued: Instant,
}

/// Shared by the batch tasks.
struct Shared {
    config: InferConfig,
    backend_name: &'static str,
    codec: Codec<PredictionOutcome>,
    producer: FutureProducer,
    stats: Arc<LiveStats>,
    errors: mpsc::UnboundedSender<InferError>,
}

/// Runs the stage until `input` closes; returns when every batch is written.
pub async fn run(
    config: InferConfig,
    store: SharedStore,
    backend: Arc<dyn Backend>,
    mut input: mpsc::Receiver<(ValidatedRequest, Ack)>,
    stats: Arc<LiveStats>,
) -> Result<(), InferError> {
    let codec = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    codec.register().await?;
    let audit = AuditWriter::new(
        &config.kafka,
        &config.registry_url,
        &config.audit_topic,
        Stage::Infer.as_str(),
        &config.instance,
    )
    .await?;
    let (errors_tx, mut errors) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        producer: config.kafka.producer()?,
        backend_name: backend.name(),
        codec,
        stats,
        errors: errors_tx,
        config,
    });
    metrics::gauge!("streamscore_backend_info", "backend" => shared.backend_name).set(1.0);

    let mut models: HashMap<String, Arc<Loaded>> = HashMap::new();
    let mut batchers: HashMap<String, mpsc::Sender<Item>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Every version first, so shadows are loaded before the batchers that use them start.
    let versions: Vec<Arc<ModelVersion>> = store.current().versions().collect();
    for version in &versions {
        load(&shared, backend.as_ref(), &audit, Arc::clone(version), &mut models).await?;
    }
    for version in &versions {
        start_batcher(&shared, &version.key(), &models, &mut batchers, &mut tasks);
    }
    let mut rescan = tokio::time::interval(shared.config.rescan_every.unwrap_or(Duration::from_secs(3600)));
    rescan.tick().await;

    loop {
        tokio::select! {
            Some(error) = errors.recv() => return Err(error),
            _ = rescan.tick(), if shared.config.rescan_every.is_some() => {
                match store.current().rescan() {
                    Ok((next, added)) => {
                        store.replace(next);
                        for version in added {
                            let key = version.key();
                            load(&shared, backend.as_ref(), &audit, version, &mut models).await?;
                            start_batcher(&shared, &key, &models, &mut batchers, &mut tasks);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "model store rescan failed; keeping the loaded versions"),
                }
            }
            item = input.recv() => {
                let Some((validated, ack)) = item else { break };
                let request = &validated.request;
                let pin = shared.config.pins.get(&request.tenant).map(String::as_str);
                match store.current().route(&request.model, request.model_version.as_deref(), pin) {
                    Ok(version) => {
                        let key = version.key();
                        if let Some(tx) = batchers.get(&key) {
                            let item = Item { validated, ack, enqueued: Instant::now() };
                            if tx.send(item).await.is_err() {
                                return Err(InferError::Delivery(format!("batcher of {key} stopped")));
                            }
                        } else {
                            reject(&shared, validated, ack, "MODEL_NOT_LOADED", format!("{key} is in the store but not loaded")).await?;
                        }
                    }
                    Err(e) => {
                        let reason = match e {
                            RouteError::UnknownModel { .. } => "UNKNOWN_MODEL",
                            RouteError::UnknownVersion { .. } => "UNKNOWN_MODEL_VERSION",
                        };
                        reject(&shared, validated, ack, reason, e.to_string()).await?;
                    }
                }
            }
        }
    }
    // Input closed: close the batchers, let them flush, wait for every batch.
    drop(batchers);
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result {
            tracing::error!(error = %e, "a batch task panicked");
        }
    }
    if let Ok(error) = errors.try_recv() {
        return Err(error);
    }
    Ok(())
}

/// Loads a version into the backend and records the load (with its sha256) in the audit log.
async fn load(
    shared: &Arc<Shared>,
    backend: &dyn Backend,
    audit: &AuditWriter,
    version: Arc<ModelVersion>,
    models: &mut HashMap<String, Arc<Loaded>>,
) -> Result<(), InferError> {
    let key = version.key();
    let scorer = backend.load(&version)?;
    models.insert(key.clone(), Arc::new(Loaded { version: Arc::clone(&version), scorer }));
    let details = HashMap::from([
        ("sha256".to_owned(), version.meta.sha256.clone()),
        ("backend".to_owned(), shared.backend_name.to_owned()),
        ("path".to_owned(), version.onnx_path.display().to_string()),
    ]);
    audit.record("MODEL_LOADED", &key, None, details).await?;
    tracing::info!(model = key, sha256 = version.meta.sha256, backend = shared.backend_name, "model loaded");
    Ok(())
}

/// Starts the batcher of a loaded version (with its shadow, if one is configured and loaded).
fn start_batcher(
    shared: &Arc<Shared>,
    key: &str,
    models: &HashMap<String, Arc<Loaded>>,
    batchers: &mut HashMap<String, mpsc::Sender<Item>>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let Some(loaded) = models.get(key).cloned() else { return };
    let version = Arc::clone(&loaded.version);
    let key = key.to_owned();
    let (tx, rx) = mpsc::channel::<Item>(shared.config.batch.max_batch * 4);
    batchers.insert(key.clone(), tx);
    let shadow = shared
        .config
        .shadow
        .get(&version.meta.name)
        .filter(|v| **v != version.meta.version)
        .and_then(|v| models.get(&format!("{}/{v}", version.meta.name)).cloned());
    let shared_for_batches = Arc::clone(shared);
    let config = shared.config.batch;
    tasks.spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        batcher::run(rx, config, |batch| {
            let shared = Arc::clone(&shared_for_batches);
            let loaded = Arc::clone(&loaded);
            let shadow = shadow.clone();
            running.spawn(async move {
                if let Err(e) = score_batch(&shared, &loaded, shadow.as_deref(), batch).await {
                    let _ = shared.errors.send(e);
                }
            });
        })
        .await;
        while running.join_next().await.is_some() {}
    });
}

/// The exact features the model saw, by name.
fn seen_features(version: &ModelVersion, row: &[f32]) -> HashMap<String, f64> {
    version.meta.features.iter().zip(row).map(|(f, v)| (f.name.clone(), f64::from(*v))).collect()
}

async fn score_batch(
    shared: &Shared,
    loaded: &Loaded,
    shadow: Option<&Loaded>,
    batch: Vec<Item>,
) -> Result<(), InferError> {
    let started = Instant::now();
    let features = loaded.scorer.features();
    let mut input = Vec::with_capacity(batch.len() * features);
    let mut rows: Vec<Result<std::ops::Range<usize>, String>> = Vec::with_capacity(batch.len());
    for item in &batch {
        match loaded.version.check(&item.validated.request.features) {
            Ok(vector) => {
                let start = input.len();
                input.extend_from_slice(&vector);
                rows.push(Ok(start..input.len()));
            }
            Err(e) => rows.push(Err(e.to_string())),
        }
    }
    let n = input.len() / features.max(1);
    let primary = score(Arc::clone(&loaded.scorer), input.clone(), n).await;
    let inference_us = micros(started.elapsed());
    let shadow_scores = match shadow {
        Some(s) => Some((s, score(Arc::clone(&s.scorer), input.clone(), n).await)),
        None => None,
    };
    metrics::histogram!("streamscore_infer_batch_size").record(batch.len() as f64);
    metrics::histogram!("streamscore_infer_inference_seconds", "model" => loaded.version.key())
        .record(started.elapsed().as_secs_f64());

    let mut deliveries = Vec::with_capacity(batch.len() * 2);
    let mut acks = Vec::with_capacity(batch.len());
    let mut row_index = 0;
    for (item, row) in batch.iter().zip(&rows) {
        let queue_wait_us = micros(started.duration_since(item.enqueued));
        metrics::histogram!("streamscore_infer_queue_wait_seconds").record(queue_wait_us as f64 / 1e6);
        let outcome = match row {
            Ok(range) => {
                let i = row_index;
                row_index += 1;
                let seen = seen_features(&loaded.version, &input[range.clone()]);
                let mut outcome = outcome_for(shared, &loaded.version, item, "prediction", false, seen.clone());
                outcome.batch_size = i32::try_from(batch.len()).unwrap_or(i32::MAX);
                outcome.queue_wait_us = queue_wait_us;
                outcome.inference_us = inference_us;
                fill_score(&mut outcome, &loaded.version, primary.as_ref().map(|s| s[i]));
                if let Some((s, scores)) = &shadow_scores {
                    let mut shadow_outcome = outcome_for(
                        shared,
                        &s.version,
                        item,
                        &format!("shadow/{}", s.version.meta.version),
                        true,
                        seen,
                    );
                    shadow_outcome.batch_size = outcome.batch_size;
                    shadow_outcome.queue_wait_us = queue_wait_us;
                    fill_score(&mut shadow_outcome, &s.version, scores.as_ref().map(|s| s[i]));
                    shared.stats.shadow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    deliveries.push(send(shared, &shadow_outcome).await?);
                }
                outcome
            }
            Err(detail) => {
                let mut outcome = outcome_for(shared, &loaded.version, item, "prediction", false, HashMap::new());
                outcome.status = OutcomeStatus::Rejected;
                outcome.reason = Some("FEATURES_INVALID".to_owned());
                outcome.detail = Some(detail.clone());
                outcome
            }
        };
        count(shared, &outcome);
        deliveries.push(send(shared, &outcome).await?);
        acks.push((item.validated.request.created_at, ()));
    }
    try_join_all(deliveries).await?;
    let now = streamscore_contracts::now_micros();
    for (item, (created_at, ())) in batch.into_iter().zip(acks) {
        shared.stats.record_latency(u64::try_from(now - created_at).unwrap_or(0));
        item.ack.done();
    }
    Ok(())
}

async fn score(scorer: Arc<dyn Scorer>, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, BackendError> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || scorer.score(&input, rows))
        .await
        .unwrap_or_else(|e| Err(BackendError::Run { rows, reason: format!("scoring task failed: {e}") }))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn outcome_for(
    shared: &Shared,
    version: &ModelVersion,
    item: &Item,
    kind: &str,
    shadow: bool,
    features: HashMap<String, f64>,
) -> PredictionOutcome {
    let request = &item.validated.request;
    PredictionOutcome {
        lineage: Lineage::derive(
            item.validated.lineage.source.clone(),
            Stage::Infer,
            kind,
            &shared.config.instance,
            Some(request.request_id.clone()),
            Some(request.tenant.clone()),
        ),
        status: OutcomeStatus::Scored,
        shadow,
        model: request.model.clone(),
        model_version: Some(version.meta.version.clone()),
        model_sha256: Some(version.meta.sha256.clone()),
        backend: Some(shared.backend_name.to_owned()),
        score: None,
        label: None,
        reason: None,
        detail: None,
        retry_after_ms: None,
        features,
        batch_size: 0,
        queue_wait_us: 0,
        inference_us: 0,
        request_created_at: request.created_at,
        reply_to: request.reply_to.clone(),
    }
}

fn fill_score(outcome: &mut PredictionOutcome, version: &ModelVersion, score: Result<f32, &BackendError>) {
    match score {
        Ok(score) => {
            let score = f64::from(score);
            outcome.score = Some(score);
            outcome.label = Some(version.meta.label(score).to_owned());
        }
        Err(e) => {
            outcome.status = OutcomeStatus::Failed;
            outcome.reason = Some("MODEL_ERROR".to_owned());
            outcome.detail = Some(e.to_string());
        }
    }
}

fn count(shared: &Shared, outcome: &PredictionOutcome) {
    use std::sync::atomic::Ordering::Relaxed;
    let (status, counter) = match outcome.status {
        OutcomeStatus::Scored => ("scored", &shared.stats.scored),
        OutcomeStatus::Rejected => ("rejected", &shared.stats.rejected),
        OutcomeStatus::Failed => ("failed", &shared.stats.failed),
    };
    counter.fetch_add(1, Relaxed);
    metrics::counter!(
        "streamscore_infer_predictions_total",
        "model" => outcome.model.clone(),
        "version" => outcome.model_version.clone().unwrap_or_default(),
        "backend" => shared.backend_name,
        "status" => status,
    )
    .increment(1);
}

type DeliveryResult = Result<(), InferError>;

async fn send(
    shared: &Shared,
    outcome: &PredictionOutcome,
) -> Result<impl std::future::Future<Output = DeliveryResult>, InferError> {
    let bytes = shared.codec.encode(outcome)?;
    let key = outcome.lineage.tenant.clone().unwrap_or_default();
    let future = enqueue(
        &shared.producer,
        FutureRecord::to(&shared.config.predictions_topic).key(key.as_bytes()).payload(&bytes[..]),
    )
    .await?;
    Ok(async move {
        match future.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(InferError::Delivery(e.to_string())),
            Err(_) => Err(InferError::Delivery("producer dropped the delivery".to_owned())),
        }
    })
}

/// Writes a rejection for a request that cannot be scored, then acknowledges it.
async fn reject(
    shared: &Shared,
    validated: ValidatedRequest,
    ack: Ack,
    reason: &str,
    detail: String,
) -> Result<(), InferError> {
    let outcome = crate::outcome::rejected(&validated, &shared.config.instance, reason, detail, None);
    count(shared, &outcome);
    let delivery = send(shared, &outcome).await?;
    let errors = shared.errors.clone();
    tokio::spawn(async move {
        match delivery.await {
            Ok(()) => ack.done(),
            Err(e) => {
                let _ = errors.send(e);
            }
        }
    });
    Ok(())
}
