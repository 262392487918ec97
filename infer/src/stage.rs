//! The infer stage: route each validated request to a model version, micro-batch per version,
//! score off the reactor, write one prediction outcome per request (and one per shadow
//! version), and acknowledge the request once its outcomes are acknowledged.

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
use streamscore_kafka::{Ack, KafkaConfig, Sink, SinkError};
use streamscore_modelstore::{ModelVersion, Refused, SharedStore};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, Scorer};
use crate::batcher::{self, BatchConfig};
use crate::quota::{self, Policy, Quotas};
use crate::router::{self, Availability, QuotaOutcome, Route};
use streamscore_telemetry::LiveStats;

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

/// A request waiting in a batch.
#[derive(Debug)]
struct Item {
    validated: ValidatedRequest,
    ack: Ack,
    enqueued: Instant,
    /// Tier of the tenant (1 first), for fair batches.
    tier: u8,
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
    retry::register(&codec).await?;
    let audit = Arc::new(
        AuditWriter::new(
            &config.kafka,
            &config.registry_url,
            &config.audit_topic,
            Stage::Infer.as_str(),
            &config.instance,
        )
        .await?,
    );
    audit.schema_registered(&codec).await?;
    let committer = Committer::new(Arc::clone(&audit));
    let audit_key = audit.key().await;
    let (errors_tx, mut errors) = mpsc::unbounded_channel();
    let (released_tx, mut released) = mpsc::unbounded_channel::<String>();
    let mut quotas = match &config.policy {
        None => None,
        Some(path) => {
            let policy = Policy::load(path)?;
            audit.record("POLICY_LOADED", &path.display().to_string(), None, policy_details(&policy)).await?;
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
        config,
    });

    let mut models: HashMap<String, Arc<Loaded>> = HashMap::new();
    let mut batchers: HashMap<String, mpsc::Sender<Item>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Every version first, so shadows are loaded before the batchers that use them start.
    // A version that does not load is refused (audited) and the others are served.
    let mut refused = Refusals::default();
    let mut quota_metrics = QuotaMetrics::default();
    for refusal in store.current().refused() {
        refused.store_refused(&audit, refusal).await?;
    }
    let versions: Vec<Arc<ModelVersion>> = store.current().versions().collect();
    let mut last_failure = None;
    for version in &versions {
        if let Err(e) = load(backend.as_ref(), &audit, Arc::clone(version), &mut models, &mut refused).await? {
            last_failure = Some(e);
        }
    }
    if let (true, Some(failure)) = (models.is_empty(), last_failure) {
        // Nothing to serve: the backend cannot run any version (for CUDA, say so and stop).
        return Err(InferError::Load(failure));
    }
    for version in &versions {
        start_batcher(&shared, &version.key(), &models, &mut batchers, &mut tasks);
    }
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

fn policy_details(policy: &Policy) -> HashMap<String, String> {
    HashMap::from([
        ("sha256".to_owned(), policy.sha256.clone()),
        ("version".to_owned(), policy.file.version.to_string()),
        ("tenants".to_owned(), policy.file.tenants.len().to_string()),
    ])
}

/// Reloads the policy file if its content changed; a file that does not validate is refused
/// (logged and audited) and the loaded policy stays.
async fn reload_policy(quotas: &mut Quotas, audit: &AuditWriter) -> Result<(), InferError> {
    let path = quotas.policy().path.clone();
    let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
    let sha256 = streamscore_contracts::sha256_hex(&bytes);
    if sha256 == quotas.policy().sha256 {
        return Ok(());
    }
    let subject = path.display().to_string();
    match Policy::parse(&path, &bytes) {
        Ok(policy) => {
            tracing::info!(
                path = subject,
                sha256 = policy.sha256,
                version = policy.file.version,
                "tenant policy reloaded"
            );
            audit.record("POLICY_RELOADED", &subject, None, policy_details(&policy)).await?;
            quotas.reload(policy);
        }
        Err(e) => {
            tracing::error!(error = %e, "tenant policy refused; keeping the loaded one");
            let details = HashMap::from([("sha256".to_owned(), sha256), ("error".to_owned(), e.to_string())]);
            audit.record("POLICY_REFUSED", &subject, None, details).await?;
        }
    }
    Ok(())
}

/// Quota, then routing ([`crate::router`]), then the version's batcher (possibly after a
/// quota delay) or a rejection.
async fn route_one(
    shared: &Arc<Shared>,
    store: &SharedStore,
    mut quotas: Option<&mut Quotas>,
    quota_metrics: &mut QuotaMetrics,
    batchers: &HashMap<String, mpsc::Sender<Item>>,
    refused: &Refusals,
    validated: ValidatedRequest,
    ack: Ack,
) -> Result<(), InferError> {
    let tenant = &validated.request.tenant;
    if let Some(q) = quotas.as_deref_mut() {
        // The bucket this request meets is the one committed with its partition's offset
        // (once per assignment), and the bucket it leaves is committed with its own offset:
        // a redelivered request is decided exactly as it was the first time.
        let assignment = ack.assignment();
        q.adopt(tenant, assignment.generation, assignment.restored.get(tenant).map(String::as_str));
    }
    let availability = |key: &str| {
        if batchers.contains_key(key) {
            Availability::Loaded
        } else {
            refused.0.get(key).map_or(Availability::NotLoaded, |reason| Availability::Refused(reason.clone()))
        }
    };
    let current = store.current();
    let (route, quota) =
        router::route(&validated.request, quotas.as_deref_mut(), &shared.config.pins, &current, availability);
    if let Some(q) = quotas {
        if let Some(snapshot) = q.snapshot(tenant) {
            ack.set_state(tenant.clone(), snapshot);
        }
        if let Some(outcome) = quota {
            quota_metrics.record(q, tenant, outcome, &route);
        }
    }
    match route {
        Route::Score { version, delay_us, tier, .. } => {
            let key = version.key();
            let Some(tx) = batchers.get(&key) else {
                return Err(InferError::Delivery(format!("batcher of {key} missing")));
            };
            let item = Item { validated, ack, enqueued: Instant::now(), tier };
            if delay_us == 0 {
                tx.send(item).await.map_err(|_| InferError::Delivery(format!("batcher of {key} stopped")))?;
            } else {
                // Other tenants go on while this request waits its turn.
                let tx = tx.clone();
                let wait = Duration::from_micros(u64::try_from(delay_us).unwrap_or(0));
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(item).await;
                });
            }
            Ok(())
        }
        Route::Reject { reason, detail, retry_after_ms, admitted } => {
            reject(shared, validated, ack, reason, detail, retry_after_ms, admitted).await
        }
    }
}

/// The quota metrics, with a handle per tenant label kept: no label is built per request.
#[derive(Debug, Default)]
struct QuotaMetrics {
    by_tenant: HashMap<String, TenantQuotaMetrics>,
}

#[derive(Debug)]
struct TenantQuotaMetrics {
    admitted: metrics::Counter,
    delayed: metrics::Counter,
    rejected: metrics::Counter,
    tokens: metrics::Gauge,
}

impl QuotaMetrics {
    fn record(&mut self, quotas: &Quotas, tenant: &str, outcome: QuotaOutcome, route: &Route) {
        // Labels stay bounded: a tenant outside the policy counts as `_default`.
        let label = if quotas.policy().file.tenants.contains_key(tenant) { tenant } else { "_default" };
        if !self.by_tenant.contains_key(label) {
            let counter = |decision: &'static str| metrics::counter!("streamscore_quota_decisions_total", "tenant" => label.to_owned(), "decision" => decision);
            let handles = TenantQuotaMetrics {
                admitted: counter("admitted"),
                delayed: counter("delayed"),
                rejected: counter("rejected"),
                tokens: metrics::gauge!("streamscore_quota_tokens", "tenant" => label.to_owned()),
            };
            self.by_tenant.insert(label.to_owned(), handles);
        }
        let Some(handles) = self.by_tenant.get(label) else { return };
        match outcome {
            QuotaOutcome::Admitted => handles.admitted.increment(1),
            QuotaOutcome::Delayed => handles.delayed.increment(1),
            QuotaOutcome::Rejected => handles.rejected.increment(1),
        }
        if let Some(tokens) = quotas.tokens(tenant) {
            handles.tokens.set(tokens);
        }
        if let Route::Score { delay_us, .. } = route {
            if *delay_us > 0 {
                #[allow(clippy::cast_precision_loss)]
                metrics::histogram!("streamscore_quota_delay_seconds").record(*delay_us as f64 / 1e6);
            }
        }
    }
}

/// Versions refused by the store or the backend, by `model/version`, with the reason. Each
/// refusal is audited (`MODEL_REFUSED`) once per reason, not at every rescan.
#[derive(Debug, Default)]
struct Refusals(HashMap<String, String>);

impl Refusals {
    async fn refuse(
        &mut self,
        audit: &AuditWriter,
        key: String,
        reason: String,
        mut details: HashMap<String, String>,
    ) -> Result<(), InferError> {
        if self.0.get(&key) == Some(&reason) {
            return Ok(());
        }
        details.insert("reason".to_owned(), reason.clone());
        audit.record("MODEL_REFUSED", &key, None, details).await?;
        metrics::counter!("streamscore_infer_models_refused_total").increment(1);
        tracing::error!(model = key, reason, "model version refused; the other versions are served");
        self.0.insert(key, reason);
        Ok(())
    }

    async fn store_refused(&mut self, audit: &AuditWriter, refusal: &Refused) -> Result<(), InferError> {
        let mut details = HashMap::from([("path".to_owned(), refusal.path.display().to_string())]);
        if let Some(sha256) = &refusal.sha256 {
            details.insert("sha256".to_owned(), sha256.clone());
        }
        self.refuse(audit, refusal.key(), refusal.reason.clone(), details).await
    }
}

/// Loads a version into the backend and records the load (with its sha256) in the audit log.
/// A version the backend cannot load is refused (audited) and the error returned inside `Ok`:
/// only a failure to write the audit log stops the stage.
async fn load(
    backend: &dyn Backend,
    audit: &AuditWriter,
    version: Arc<ModelVersion>,
    models: &mut HashMap<String, Arc<Loaded>>,
    refused: &mut Refusals,
) -> Result<Result<(), BackendError>, InferError> {
    let key = version.key();
    let scorer = match backend.load(&version) {
        Ok(scorer) => scorer,
        Err(e) => {
            let details = HashMap::from([
                ("sha256".to_owned(), version.meta.sha256.clone()),
                ("requested_backend".to_owned(), backend.name().to_owned()),
                ("path".to_owned(), version.onnx_path.display().to_string()),
            ]);
            refused.refuse(audit, key, e.to_string(), details).await?;
            return Ok(Err(e));
        }
    };
    refused.0.remove(&key);
    let runs_on = scorer.backend();
    models.insert(key.clone(), Arc::new(Loaded { version: Arc::clone(&version), scorer }));
    let details = HashMap::from([
        ("sha256".to_owned(), version.meta.sha256.clone()),
        ("backend".to_owned(), runs_on.to_owned()),
        ("requested_backend".to_owned(), backend.name().to_owned()),
        ("path".to_owned(), version.onnx_path.display().to_string()),
    ]);
    audit.record("MODEL_LOADED", &key, None, details).await?;
    metrics::gauge!(
        "streamscore_backend_info",
        "model" => key.clone(),
        "backend" => runs_on,
        "requested" => backend.name(),
    )
    .set(1.0);
    tracing::info!(
        model = key,
        sha256 = version.meta.sha256,
        backend = runs_on,
        requested = backend.name(),
        "model loaded"
    );
    Ok(Ok(()))
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
        let order = |items: &[Item]| {
            quota::fair::fair_order(items.iter().map(|i| (i.validated.request.tenant.as_str(), i.tier)))
        };
        batcher::run_fair(rx, config, order, |batch| {
            let shared = Arc::clone(&shared_for_batches);
            let loaded = Arc::clone(&loaded);
            let shadow = shadow.clone();
            running.spawn(async move {
                // A panic in a batch (a scorer, the outcome code) stops the stage with an error
                // naming it; the batch's requests are never acknowledged, so nothing is lost.
                let scored = std::panic::AssertUnwindSafe(score_batch(&shared, &loaded, shadow.as_deref(), batch))
                    .catch_unwind()
                    .await;
                let error = match scored {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e,
                    Err(payload) => InferError::Panicked {
                        what: format!("a batch of {}", loaded.version.key()),
                        message: panic_message(payload.as_ref()),
                    },
                };
                let _ = shared.errors.send(error);
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
    let panicked = |version: &ModelVersion| {
        let what = format!("the scorer of {}", version.key());
        move |message| InferError::Panicked { what, message }
    };
    let primary = score(Arc::clone(&loaded.scorer), input.clone(), n).await.map_err(panicked(&loaded.version))?;
    let inference_us = micros(started.elapsed());
    let shadow_scores = match shadow {
        Some(s) => Some((s, score(Arc::clone(&s.scorer), input.clone(), n).await.map_err(panicked(&s.version))?)),
        None => None,
    };
    metrics::histogram!("streamscore_infer_batch_size").record(batch.len() as f64);
    metrics::histogram!("streamscore_infer_inference_seconds", "model" => loaded.version.key())
        .record(started.elapsed().as_secs_f64());

    let mut row_index = 0;
    let quotas = shared.config.policy.is_some();
    let mut events = Vec::with_capacity(batch.len() * if shadow.is_some() { 2 } else { 1 });
    let mut acks = Vec::with_capacity(batch.len());
    for (item, row) in batch.into_iter().zip(&rows) {
        let queue_wait_us = micros(started.duration_since(item.enqueued));
        metrics::histogram!("streamscore_infer_queue_wait_seconds").record(queue_wait_us as f64 / 1e6);
        let outcome = match row {
            Ok(range) => {
                let i = row_index;
                row_index += 1;
                let seen = seen_features(&loaded.version, &input[range.clone()]);
                let mut outcome = outcome_for(shared, loaded, &item, "prediction", false, seen.clone());
                outcome.batch_size = i32::try_from(rows.len()).unwrap_or(i32::MAX);
                outcome.queue_wait_us = queue_wait_us;
                outcome.inference_us = inference_us;
                fill_score(&mut outcome, &loaded.version, primary.as_ref().map(|s| s[i]));
                if let Some((s, scores)) = &shadow_scores {
                    let mut shadow_outcome =
                        outcome_for(shared, s, &item, &format!("shadow/{}", s.version.meta.version), true, seen);
                    shadow_outcome.batch_size = outcome.batch_size;
                    shadow_outcome.queue_wait_us = queue_wait_us;
                    fill_score(&mut shadow_outcome, &s.version, scores.as_ref().map(|s| s[i]));
                    shared.stats.shadow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    events.push(send(shared, &shadow_outcome, &item.ack).await?);
                }
                outcome
            }
            Err(detail) => {
                let mut outcome = outcome_for(shared, loaded, &item, "prediction", false, HashMap::new());
                outcome.status = OutcomeStatus::Rejected;
                outcome.reason = Some(OutcomeReason::FeaturesInvalid.code().to_owned());
                outcome.detail = Some(detail.clone());
                outcome
            }
        };
        count(shared, &outcome, loaded.scorer.backend());
        events.push(send(shared, &outcome, &item.ack).await?);
        // The request has its answer (written; acknowledged by the broker shortly).
        if quotas {
            let _ = shared.released.send(item.validated.request.tenant);
        }
        acks.push(item.ack);
    }
    // One audit entry commits the batch's outputs; each request is done once it is acknowledged.
    shared.committer.audit().commit(&events, acks).await?;
    Ok(())
}

/// Scores off the reactor. `Ok(Err(_))`: the model failed (the rows get FAILED outcomes);
/// `Err(message)`: the scorer panicked.
async fn score(
    scorer: Arc<dyn Scorer>,
    input: Vec<f32>,
    rows: usize,
) -> Result<Result<Vec<f32>, BackendError>, String> {
    if rows == 0 {
        return Ok(Ok(Vec::new()));
    }
    match tokio::task::spawn_blocking(move || scorer.score(&input, rows)).await {
        Ok(scores) => Ok(scores),
        Err(e) if e.is_panic() => Err(panic_message(e.into_panic().as_ref())),
        Err(e) => Ok(Err(BackendError::Run { rows, reason: format!("scoring task failed: {e}") })),
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn outcome_for(
    shared: &Shared,
    loaded: &Loaded,
    item: &Item,
    kind: &str,
    shadow: bool,
    features: HashMap<String, f64>,
) -> PredictionOutcome {
    let request = &item.validated.request;
    let version = &loaded.version;
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
        backend: Some(loaded.scorer.backend().to_owned()),
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
            outcome.reason = Some(OutcomeReason::ModelError.code().to_owned());
            outcome.detail = Some(e.to_string());
        }
    }
}

/// Counts an outcome; `backend`: what scored it (`none` for a rejection before scoring).
fn count(shared: &Shared, outcome: &PredictionOutcome, backend: &'static str) {
    use std::sync::atomic::Ordering::Relaxed;
    let (status, counter) = match outcome.status {
        OutcomeStatus::Scored => ("scored", &shared.stats.scored),
        OutcomeStatus::Rejected => ("rejected", &shared.stats.rejected),
        OutcomeStatus::Failed => ("failed", &shared.stats.failed),
    };
    counter.fetch_add(1, Relaxed);
    // Labels stay bounded: a model or version the store does not have (a rejection) is
    // `_unknown`, whatever the request named.
    let (model, version) = match outcome.reason.as_deref().and_then(OutcomeReason::parse) {
        Some(OutcomeReason::UnknownModel) => ("_unknown".to_owned(), "_unknown".to_owned()),
        Some(OutcomeReason::UnknownModelVersion) => (outcome.model.clone(), "_unknown".to_owned()),
        _ => (outcome.model.clone(), outcome.model_version.clone().unwrap_or_default()),
    };
    metrics::counter!(
        "streamscore_infer_predictions_total",
        "model" => model,
        "version" => version,
        "backend" => backend,
        "status" => status,
    )
    .increment(1);
}

/// Enqueues an outcome of the request `ack` belongs to; returns its event id and the hash its
/// commitment carries.
async fn send(shared: &Shared, outcome: &PredictionOutcome, ack: &Ack) -> Result<(String, String), InferError> {
    let bytes = shared.codec.encode(outcome)?;
    let key = outcome.lineage.tenant.as_deref().unwrap_or_default();
    shared.sink.send(&shared.config.predictions_topic, key.as_bytes(), &bytes, ack).await?;
    Ok((outcome.lineage.event_id.clone(), shared.audit_key.event_hash(&bytes)))
}

/// Writes a rejection for a request that cannot be scored, then acknowledges it. `admitted`:
/// the request holds a quota in-flight slot to give back.
async fn reject(
    shared: &Shared,
    validated: ValidatedRequest,
    ack: Ack,
    reason: OutcomeReason,
    detail: String,
    retry_after_ms: Option<i64>,
    admitted: bool,
) -> Result<(), InferError> {
    let outcome = crate::outcome::rejected(&validated, &shared.config.instance, reason, detail, retry_after_ms);
    count(shared, &outcome, "none");
    let event = send(shared, &outcome, &ack).await?;
    if admitted {
        let _ = shared.released.send(validated.request.tenant);
    }
    shared.committer.add(vec![event], ack).await?;
    Ok(())
}
