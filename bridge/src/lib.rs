//! The HTTP bridge: synchronous callers over the Kafka pipeline.
//!
//! `streamscore bridge` serves Open Inference Protocol v2 (so KServe and Triton clients work
//! unchanged) and streamscore's own JSON. Each call becomes `InferenceRequest`s on the
//! requests topic, `reply_to` this instance; the answer is the pipeline's outcome, read back
//! from the predictions topic ([`listen`]) and handed over only when the pipeline sealed it,
//! with callers parked in a bounded map where each tenant has its share ([`waiters`]). API
//! keys from the tenant policy ([`auth`]) or JWT bearer tokens checked against a JWKS
//! ([`jwt`]) decide the tenant; both files are re-read when they change ([`rotate`]), as is
//! the certificate when the bridge serves HTTPS ([`tls`]).
//! [`api`] is the routes (one table, [`api::ROUTES`], which [`openapi`] documents), [`ready`]
//! the readiness checks.

pub mod api;
pub mod auth;
pub mod authlog;
pub mod idempotency;
pub mod jwt;
pub mod listen;
pub mod openapi;
pub mod ready;
pub mod rotate;
pub mod waiters;

pub use streamscore_tls as tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use streamscore_contracts::audit::AuditKey;
use streamscore_contracts::{Codec, InferenceRequest, PredictionOutcome};
use streamscore_kafka::KafkaConfig;
use streamscore_modelstore::{ModelStore, SharedStore};

/// Renders the process's metrics in Prometheus text format (`GET /metrics`).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Default time a caller waits for its outcome.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);
/// Default bound on callers waiting at once (rows, for batches).
pub const DEFAULT_MAX_WAITERS: usize = 10_000;
/// Default body limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the bridge needs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub requests_topic: String,
    pub predictions_topic: String,
    /// Where `POST /v1/feedback` publishes labels.
    pub feedback_topic: String,
    /// Where answers to idempotent calls are kept and read back from (made if missing), so a
    /// retry after a restart or to another instance gets the first answer
    /// ([`idempotency::topic`]); `None`: kept in this process's memory only.
    pub idempotency_topic: Option<String>,
    pub models: PathBuf,
    /// The tenant policy: API keys, allowed models, pins, quotas (for `RateLimit-*`).
    pub policy: PathBuf,
    /// This instance's `reply_to` id; unique per running bridge.
    pub instance: String,
    pub deadline: Duration,
    /// Rows waiting for outcomes at once, all tenants together.
    pub max_waiters: usize,
    /// Rows one tenant may have waiting at once; `None`: [`waiters::default_share`] of
    /// `max_waiters` over the policy's tenants with API keys.
    pub max_waiters_per_tenant: Option<usize>,
    pub max_body_bytes: usize,
    /// The rollouts topic a call is validated by (as routing will score it).
    pub rollouts_topic: String,
    /// The audit key the stages seal their outcomes with; `None`: read at start from the
    /// environment, as the stages do ([`AuditKey::from_env`]).
    pub audit_key: Option<AuditKey>,
    /// JWT bearer tokens beside the API keys; `None`: API keys only.
    pub jwt: Option<JwtConfig>,
    /// The audit topic authentication events go to (refusals per tenant per window, reloads
    /// with their fingerprints: [`authlog`]); `None`: not recorded.
    pub audit_topic: Option<String>,
    /// How long refusals are counted before one entry per tenant and code is written.
    pub audit_window: Duration,
    /// HTTPS with this certificate and key, and client certificates when it says so; `None`:
    /// plain HTTP.
    pub tls: Option<tls::ServerFiles>,
    /// How often the policy, JWKS and certificate files are checked for a change
    /// ([`rotate::POLL`]).
    pub reload_every: Duration,
}

/// Where the JWKS is and what a token must say.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// A JWKS document (`{"keys": [...]}`), re-read when it changes.
    pub jwks_file: PathBuf,
    pub expect: jwt::Expectations,
}

impl BridgeConfig {
    /// Defaults for everything but where things are; the instance id is the host, the pid and
    /// a random suffix, so a restarted bridge (the same pid in a container) is a new instance.
    pub fn new(kafka: KafkaConfig, registry_url: &str, models: PathBuf, policy: PathBuf) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Self {
            kafka,
            registry_url: registry_url.to_owned(),
            requests_topic: streamscore_contracts::topics::REQUESTS.to_owned(),
            predictions_topic: streamscore_contracts::topics::PREDICTIONS.to_owned(),
            feedback_topic: streamscore_contracts::topics::FEEDBACK.to_owned(),
            idempotency_topic: Some(streamscore_contracts::topics::IDEMPOTENCY.to_owned()),
            models,
            policy,
            instance: format!("bridge:{}:{}", streamscore_contracts::lineage::default_instance(), &suffix[..8]),
            deadline: DEFAULT_DEADLINE,
            max_waiters: DEFAULT_MAX_WAITERS,
            max_waiters_per_tenant: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            rollouts_topic: streamscore_contracts::topics::ROLLOUTS.to_owned(),
            audit_key: None,
            jwt: None,
            audit_topic: None,
            audit_window: authlog::DEFAULT_WINDOW,
            tls: None,
            reload_every: rotate::POLL,
        }
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("tenant policy: {0}")]
    Policy(String),
    #[error("JWKS {path}: {reason}")]
    Jwks { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} and key {key}: {reason}")]
    Tls { cert: PathBuf, key: PathBuf, reason: String },
    #[error("audit key: {0}")]
    AuditKey(String),
    #[error("model store {path}: {reason}")]
    Models { path: PathBuf, reason: String },
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("starting a reader thread (predictions, idempotency answers): {0}")]
    Listener(std::io::Error),
}

/// A running bridge's shared state.
pub struct Bridge {
    pub config: BridgeConfig,
    store: SharedStore,
    /// The policy's keys, tenants and pins, swapped whole when the file changes.
    authority: Arc<rotate::Current<rotate::Authority>>,
    /// The JWKS (swapped whole when the file changes) and what a token must say.
    jwt: Option<(Arc<rotate::Current<jwt::Jwks>>, jwt::Expectations)>,
    /// The answers kept for `Idempotency-Key` (and repeated request id) retries.
    idempotency: idempotency::Idempotency,
    /// Where kept answers are written for the other instances and the next start.
    journal: Option<idempotency::topic::Journal>,
    /// Where refusals go (the audit log, when configured).
    authlog: authlog::AuthLog,
    /// The rollouts in force (a model's split, after the pins).
    rollouts: streamscore_control::RolloutTable,
    request_codec: Arc<Codec<InferenceRequest>>,
    /// Registered on the first `POST /v1/feedback`.
    feedback_codec: Codec<streamscore_contracts::Feedback>,
    producer: FutureProducer,
    waiters: Arc<waiters::Waiters>,
    broker: ready::BrokerCheck,
    metrics: Option<MetricsRender>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("config", &self.config)
            .field("keys", &self.authority.get().keys)
            .finish_non_exhaustive()
    }
}

/// Serves the bridge on `listener` until `shutdown` resolves.
pub async fn serve(
    config: BridgeConfig,
    listener: tokio::net::TcpListener,
    metrics: Option<MetricsRender>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BridgeError> {
    let policy_files = vec![config.policy.clone()];
    let (policy_sha256, policy_bytes) = rotate::fingerprint(&policy_files)
        .ok_or_else(|| BridgeError::Policy(format!("cannot read {}", config.policy.display())))?;
    let authority = rotate::Authority::parse(&config.policy, &policy_bytes[0]).map_err(BridgeError::Policy)?;
    let keys = &authority.keys;
    if keys.is_empty() && config.jwt.is_none() {
        tracing::warn!(policy = %config.policy.display(), "no tenant has an api_key_sha256 and no JWKS is given: every call will be refused (401)");
    }
    let jwks = match &config.jwt {
        None => None,
        Some(jwt) => {
            let files = vec![jwt.jwks_file.clone()];
            let (sha256, bytes) = rotate::fingerprint(&files)
                .ok_or_else(|| BridgeError::Jwks { path: jwt.jwks_file.clone(), reason: "cannot read it".into() })?;
            let jwks = jwt::Jwks::parse(&bytes[0])
                .map_err(|e| BridgeError::Jwks { path: jwt.jwks_file.clone(), reason: e.to_string() })?;
            for skipped in &jwks.skipped {
                tracing::warn!(jwks = %jwt.jwks_file.display(), "JWKS key not used: {skipped}");
            }
            Some((sha256, jwks))
        }
    };
    let tls = match &config.tls {
        None => None,
        Some(files) => Some(tls::Tls::load(files.clone()).map_err(|reason| BridgeError::Tls {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason,
        })?),
    };
    let audit_key = match config.audit_key.clone() {
        Some(key) => key,
        None => AuditKey::from_env().map_err(BridgeError::AuditKey)?,
    };
    if !audit_key.is_keyed() {
        tracing::warn!(
            "no audit key (STREAMSCORE_AUDIT_KEY_FILE or STREAMSCORE_AUDIT_KEY): outcomes are checked against \
             the unkeyed seal, which anyone who can write the predictions topic can forge; give the bridge the \
             stages' audit key"
        );
    }
    // With tokens, any tenant the policy names may call; with keys only, those with a key. The
    // share is set at start: a policy reload changes who may call, not the shares.
    let callers = if config.jwt.is_some() { authority.policy.file.tenants.len() } else { keys.tenants() };
    let share = config
        .max_waiters_per_tenant
        .unwrap_or_else(|| waiters::default_share(config.max_waiters, callers))
        .min(config.max_waiters);
    if callers * share > config.max_waiters {
        tracing::warn!(
            max_waiters = config.max_waiters,
            share,
            tenants = callers,
            "the tenants' shares of the waiters add up to more than --max-waiters: a tenant below its share can \
             get 503 while others hold theirs; raise --max-waiters to tenants × share to rule that out",
        );
    }
    let key_count = keys.len();
    let store = SharedStore::new(
        ModelStore::open(&config.models)
            .map_err(|e| BridgeError::Models { path: config.models.clone(), reason: e.to_string() })?,
    );
    let producer: FutureProducer = {
        let mut client = config.kafka.client_config();
        client
            .set("acks", "all")
            // A caller waits on this record: send it now rather than batch it.
            .set("linger.ms", "1")
            // Requests go to their tenant's partition, where ingest decides its quota.
            .set("partitioner", streamscore_kafka::config::PARTITIONER)
            .set("enable.idempotence", "false")
            // A broker that cannot take the record within most of the caller's deadline is
            // down for that caller (503), not a record to deliver minutes later.
            .set("message.timeout.ms", (config.deadline.as_millis() * 3 / 4).max(1).to_string());
        for (key, value) in &config.kafka.overrides {
            client.set(key, value);
        }
        client.create().map_err(|e| BridgeError::Kafka(e.to_string()))?
    };
    let request_codec = Arc::new(Codec::<InferenceRequest>::with_url(&config.registry_url, &config.requests_topic));
    let feedback_codec = Codec::with_url(&config.registry_url, &config.feedback_topic);
    let outcome_codec = Arc::new(Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic));
    let waiters = Arc::new(waiters::Waiters::new(config.max_waiters, share));
    let stop = Arc::new(AtomicBool::new(false));
    let listener_thread = listen::spawn(
        listen::ListenConfig {
            kafka: config.kafka.clone(),
            predictions_topic: config.predictions_topic.clone(),
            instance: config.instance.clone(),
            audit_key: audit_key.clone(),
        },
        outcome_codec,
        Arc::clone(&waiters),
        Arc::clone(&stop),
        tokio::runtime::Handle::current(),
    )
    .map_err(BridgeError::Listener)?;
    // The request schema's id: calls are refused (503) until the registry has answered.
    let shutdown = streamscore_kafka::Shutdown::after(shutdown);
    // Answers kept before (by this instance before a restart, or by others) are read back
    // before a call with a key is served, then followed.
    let (idempotency, journal, idempotency_reader) = match &config.idempotency_topic {
        None => (idempotency::Idempotency::new(), None, None),
        Some(topic) => {
            let store = idempotency::Idempotency::loading();
            let codec = Arc::new(Codec::with_url(&config.registry_url, topic));
            let reader = idempotency::topic::spawn(
                idempotency::topic::FollowConfig {
                    kafka: config.kafka.clone(),
                    topic: topic.clone(),
                    audit_key: audit_key.clone(),
                },
                Arc::clone(&codec),
                store.clone(),
                shutdown.clone(),
                tokio::runtime::Handle::current(),
            )
            .map_err(BridgeError::Listener)?;
            let journal =
                idempotency::topic::Journal::new(topic, producer.clone(), codec, audit_key.clone(), &config.instance);
            (store, Some(journal), Some(reader))
        }
    };
    // The audit chain stops after the server (its own stop), so the refusals of the last
    // calls are written and a chain still starting when the bridge is told to stop starts.
    let (authlog, auditing) = match &config.audit_topic {
        None => (authlog::AuthLog::off(), None),
        Some(topic) => {
            let (stopper, stopped) = streamscore_kafka::Shutdown::new();
            let (log, task) = authlog::spawn(
                config.kafka.clone(),
                config.registry_url.clone(),
                topic.clone(),
                config.instance.clone(),
                config.audit_window,
                stopped,
            );
            (log, Some((stopper, task)))
        }
    };
    authlog.loaded("tenant policy", &policy_sha256);
    if let Some((sha256, _)) = &jwks {
        authlog.loaded("JWKS", sha256);
    }
    for (what, sha256) in tls.iter().flat_map(tls::Tls::fingerprints) {
        authlog.loaded(what, &sha256);
    }
    let rollouts = streamscore_control::table::follow_in_background(
        &config.kafka,
        &config.registry_url,
        &config.rollouts_topic,
        &shutdown,
    );
    // Versions dropped into the model store are served within 5 s, as infer loads them.
    let rescanning = {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.requested() => return,
                }
                match store.current().rescan() {
                    Ok((next, added)) => {
                        for version in &added {
                            tracing::info!(model = version.key(), "model version found; served from now on");
                        }
                        store.replace(next);
                    }
                    Err(e) => tracing::warn!(error = %e, "model store rescan failed; keeping the versions in hand"),
                }
            }
        })
    };
    let registration = {
        let (codec, shutdown) = (Arc::clone(&request_codec), shutdown.clone());
        tokio::spawn(async move {
            if let Ok(Err(e)) = streamscore_kafka::retry::register(codec.as_ref(), &shutdown).await {
                tracing::error!(error = %e, "the registry refused the request schema; the bridge cannot publish");
            }
        })
    };
    tracing::info!(
        instance = %config.instance,
        deadline_ms = config.deadline.as_millis() as u64,
        keys = key_count,
        jwt = config.jwt.is_some(),
        tls = config.tls.is_some(),
        max_waiters = config.max_waiters,
        max_waiters_per_tenant = share,
        "bridge serving",
    );
    let broker = ready::BrokerCheck::of_producer(producer.clone(), config.requests_topic.clone());
    let authority = Arc::new(rotate::Current::new(authority));
    let mut watchers = vec![tls::files::watch(
        "tenant policy",
        policy_files,
        policy_sha256,
        Arc::clone(&authority),
        {
            let path = config.policy.clone();
            move |contents: &[Vec<u8>]| rotate::Authority::parse(&path, &contents[0])
        },
        config.reload_every,
        rotate::reported(authlog.clone()),
    )];
    let jwt = match (jwks, &config.jwt) {
        (Some((sha256, jwks)), Some(jwt)) => {
            let current = Arc::new(rotate::Current::new(jwks));
            watchers.push(tls::files::watch(
                "JWKS",
                vec![jwt.jwks_file.clone()],
                sha256,
                Arc::clone(&current),
                |contents: &[Vec<u8>]| {
                    let jwks = jwt::Jwks::parse(&contents[0]).map_err(|e| e.to_string())?;
                    for skipped in &jwks.skipped {
                        tracing::warn!("JWKS key not used: {skipped}");
                    }
                    Ok(jwks)
                },
                config.reload_every,
                rotate::reported(authlog.clone()),
            ));
            Some((current, jwt.expect.clone()))
        }
        _ => None,
    };
    if let Some(tls) = &tls {
        watchers.extend(tls.watch(config.reload_every, rotate::reported(authlog.clone())));
    }
    let bridge = Arc::new(Bridge {
        config,
        store,
        authority,
        jwt,
        idempotency,
        journal,
        authlog,
        rollouts,
        request_codec,
        feedback_codec,
        producer,
        waiters: Arc::clone(&waiters),
        broker,
        metrics,
    });
    match &tls {
        None => warp::serve(api::routes(bridge)).incoming(listener).graceful(shutdown.wait()).run().await,
        Some(tls) => {
            let failures = metrics::counter!("streamscore_bridge_tls_handshake_failures_total");
            tls.serve(api::routes(bridge), listener, failures, shutdown.wait()).await;
        }
    }
    registration.abort();
    rescanning.abort();
    for watcher in watchers {
        watcher.abort();
    }
    if let Some((stopper, mut auditing)) = auditing {
        // The last refusals are written and the chain closed; the broker being gone costs
        // at most this wait.
        stopper.stop(streamscore_kafka::StopReason::Requested("the bridge stopped".to_owned()));
        if tokio::time::timeout(Duration::from_secs(15), &mut auditing).await.is_err() {
            tracing::warn!("the bridge's audit chain was not closed within 15 s");
            auditing.abort();
        }
    }
    stop.store(true, Ordering::Relaxed);
    waiters.wake_listener();
    let _ = tokio::task::spawn_blocking(move || listener_thread.join()).await;
    if let Some(reader) = idempotency_reader {
        // It stops within one poll (a setup under way gives way to the stop).
        let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use streamscore_contracts::{Lineage, OutcomeStatus, PredictionOutcome, SourceOffset, Stage};

    pub fn outcome(tenant: &str, id: &str) -> PredictionOutcome {
        PredictionOutcome {
            lineage: Lineage::derive(
                SourceOffset::new("t", 0, 0),
                Stage::Infer,
                "prediction",
                "test",
                Some(id.to_owned()),
                Some(tenant.to_owned()),
            ),
            status: OutcomeStatus::Scored,
            shadow: false,
            model: "fraud".to_owned(),
            model_version: Some("1".to_owned()),
            model_sha256: None,
            backend: Some("cpu".to_owned()),
            score: Some(0.5),
            label: Some("legit".to_owned()),
            reason: None,
            detail: None,
            retry_after_ms: None,
            features: streamscore_contracts::Features::default(),
            batch_size: 1,
            queue_wait_us: 0,
            inference_us: 0,
            request_created_at: 0,
            reply_to: Some("me".to_owned()),
            routed_by: None,
            explanation: None,
        }
    }
}
