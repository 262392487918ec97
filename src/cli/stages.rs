//! The long-running stages: `pipeline`, `ingest`, `infer`, `monitor`, `bridge`, `registry`.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Run ingest and infer fused in one process (the default deployment).
#[derive(Debug, clap::Args)]
pub(crate) struct PipelineCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    #[command(flatten)]
    pub(crate) ingest: IngestArgs,
    #[command(flatten)]
    pub(crate) infer: InferArgs,
    /// Serve Prometheus metrics (`GET /metrics`, `GET /healthz`) on this address; `off`
    /// serves none, port 0 any free port.
    #[arg(long, default_value = "127.0.0.1:9401", value_name = "ADDR|off")]
    pub(crate) metrics_listen: MetricsListen,
}

impl PipelineCommand {
    pub(crate) async fn run(self, shutdown: Shutdown) -> Result<()> {
        let Self { endpoints, ingest, infer, metrics_listen } = self;
        serve_metrics(metrics_listen).await?;
        let mut ingest_config = IngestConfig::new(KafkaConfig::new(&endpoints.bootstrap), &endpoints.registry_url);
        ingest_config.group_id = ingest.group.clone();
        ingest_config.input_topic = ingest.input_topic.clone();
        ingest_config.dead_letter_topic = ingest.dead_letter_topic.clone();
        ingest_config.predictions_topic = infer.predictions_topic.clone();
        ingest_config.event_window = ingest.event_window();
        let config = streamscore::pipeline::PipelineConfig {
            ingest: ingest_config,
            infer: infer.config(&endpoints)?,
            models: ingest.store.dir.clone(),
            tenants: tenants_for(infer.policy.as_deref(), &ingest.tenants)?,
            max_record_bytes: ingest.max_record_bytes,
            channel_capacity: 10_000,
        };
        let stats = Arc::new(streamscore_telemetry::LiveStats::default());
        tracing::info!("pipeline running (ingest + infer fused)");
        let backend = streamscore_infer::selection::select(infer.backend)?;
        let summary = streamscore::pipeline::run(config, backend, stats, shutdown).await?;
        tracing::info!(
            consumed = summary.consumed,
            validated = summary.validated,
            dead_lettered = summary.dead_lettered,
            "pipeline stopped"
        );

        Ok(())
    }
}

/// Run the ingest stage on its own: validate requests, dead-letter bad ones, write
/// validated requests to the validated topic.
#[derive(Debug, clap::Args)]
pub(crate) struct IngestCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    #[command(flatten)]
    pub(crate) ingest: IngestArgs,
    /// Topic validated requests are written to.
    #[arg(long, default_value = streamscore_contracts::topics::VALIDATED)]
    pub(crate) validated_topic: String,
    /// Serve Prometheus metrics (`GET /metrics`, `GET /healthz`) on this address; `off`
    /// serves none, port 0 any free port.
    #[arg(long, default_value = "127.0.0.1:9402", value_name = "ADDR|off")]
    pub(crate) metrics_listen: MetricsListen,
    /// Tenant policy: its tenants replace `--tenants`, its pins decide the version a request
    /// is validated against (the one routing will score), and tenants with
    /// `kafka_principals` are read from their own topics (`<input topic>.<tenant>`) and
    /// refused elsewhere.
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
}

impl IngestCommand {
    pub(crate) async fn run(self, shutdown: Shutdown) -> Result<()> {
        let Self { endpoints, ingest, validated_topic, metrics_listen, policy } = self;
        run_ingest(endpoints, ingest, validated_topic, metrics_listen, policy, shutdown).await?;

        Ok(())
    }
}

/// Run the infer stage on its own, reading the validated topic.
#[derive(Debug, clap::Args)]
pub(crate) struct InferCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    #[command(flatten)]
    pub(crate) infer: InferArgs,
    /// Topic validated requests are read from.
    #[arg(long, default_value = streamscore_contracts::topics::VALIDATED)]
    pub(crate) validated_topic: String,
    /// Consumer group.
    #[arg(long, default_value = "streamscore-infer")]
    pub(crate) group: String,
    #[command(flatten)]
    pub(crate) store: ModelStoreArgs,
    /// Where records of the validated topic that can never be read go.
    #[arg(long, default_value = streamscore_contracts::topics::DEAD_LETTER)]
    pub(crate) dead_letter_topic: String,
    /// Serve Prometheus metrics (`GET /metrics`, `GET /healthz`) on this address; `off`
    /// serves none, port 0 any free port.
    #[arg(long, default_value = "127.0.0.1:9403", value_name = "ADDR|off")]
    pub(crate) metrics_listen: MetricsListen,
}

impl InferCommand {
    pub(crate) async fn run(self, shutdown: Shutdown) -> Result<()> {
        let Self { endpoints, infer, validated_topic, group, store, dead_letter_topic, metrics_listen } = self;
        serve_metrics(metrics_listen).await?;
        let mut config = infer.config(&endpoints)?;
        let store = streamscore_modelstore::SharedStore::new(store.open()?);
        let kafka = KafkaConfig::new(&endpoints.bootstrap);
        if let Some(topic) = config.rollouts_topic.clone() {
            config.rollouts = streamscore_control::follow(&kafka, &endpoints.registry_url, &topic, &shutdown)
                .await
                .with_context(|| format!("following the rollouts on {topic}"))?;
        }
        let input = streamscore_infer::source::ValidatedInput {
            topic: validated_topic,
            group,
            dead_letter_topic,
            checkpoints: config.policy.as_ref().map(|_| config.quota_state_topic.clone()),
            audit_topic: config.audit_topic.clone(),
            instance: config.instance.clone(),
            drain_timeout: std::time::Duration::from_secs(5),
        };
        if let Some(topic) = &input.checkpoints {
            shutdown
                .race(
                    || format!("the broker at {} to create {topic}", kafka.bootstrap),
                    ensure_topics(&kafka, &[streamscore_kafka::TopicSpec::state(topic)]),
                )
                .await??;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(10_000);
        let stats = Arc::new(streamscore_telemetry::LiveStats::default());
        let backend = streamscore_infer::selection::select(infer.backend)?;
        let stage = tokio::spawn(streamscore_infer::run(config, store, backend, rx, stats, shutdown.clone()));
        let consumed =
            streamscore_infer::source::consume_validated(&kafka, &endpoints.registry_url, &input, tx, shutdown).await;
        // The stage's own failure is the cause when both failed.
        stage.await.context("the infer stage panicked")??;
        consumed?;

        Ok(())
    }
}

/// Monitor predictions: drift per model version against the reference distributions,
/// latency, alerts on monitor.alerts and the audit log.
#[derive(Debug, clap::Args)]
pub(crate) struct MonitorCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    #[command(flatten)]
    pub(crate) store: ModelStoreArgs,
    /// Topic predictions are read from.
    #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
    pub(crate) predictions_topic: String,
    /// Topic dead letters are read from (counted by reason; refused inputs count in drift).
    #[arg(long, default_value = streamscore_contracts::topics::DEAD_LETTER)]
    pub(crate) dead_letter_topic: String,
    /// Topic drift alerts are written to.
    #[arg(long, default_value = streamscore_contracts::topics::ALERTS)]
    pub(crate) alerts_topic: String,
    /// Topic of the audit log.
    #[arg(long, default_value = streamscore_contracts::topics::AUDIT)]
    pub(crate) audit_topic: String,
    /// Consumer group.
    #[arg(long, default_value = "streamscore-monitor")]
    pub(crate) group: String,
    /// Tumbling window length in event-time seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) window_secs: f64,
    /// Windows merged into the sliding view.
    #[arg(long, default_value_t = 3)]
    pub(crate) sliding_windows: usize,
    /// Consecutive windows over a threshold before an alert.
    #[arg(long, default_value_t = 2)]
    pub(crate) consecutive: u32,
    /// Also close a window after this many predictions (0 = by time only).
    #[arg(long, default_value_t = 0)]
    pub(crate) window_events: u64,
    /// Threshold overrides, `method=warn:alert,...` for psi, js, ks, wasserstein, missing
    /// (defaults: psi=0.1:0.25, js=0.1:0.2, ks=0.1:0.2, wasserstein=0.05:0.1, missing=0.01:0.05).
    #[arg(long, default_value = "")]
    pub(crate) thresholds: String,
    /// A consumer group whose lag is measured and exported, `GROUP=TOPIC` (repeatable;
    /// default: the stages' default groups, streamscore-pipeline=inference.requests ...).
    #[arg(long = "lag-target", value_name = "GROUP=TOPIC")]
    pub(crate) lag_targets: Vec<String>,
    /// Seconds between lag measurements (each costs the broker a few requests per group).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) lag_every_secs: f64,
    /// The tenant policy whose `[rollout_gates]` set the rollout controller's thresholds
    /// (defaults without it).
    #[arg(long)]
    pub(crate) policy: Option<PathBuf>,
    /// Do not run the rollout controller in this monitor.
    #[arg(long)]
    pub(crate) no_controller: bool,
    /// The rollouts the controller moves.
    #[arg(long, default_value = streamscore_contracts::topics::ROLLOUTS)]
    pub(crate) rollouts_topic: String,
    /// Share of scored predictions explained for `streamscore_attribution_mean_abs` (mean |φ|
    /// per feature and version), 0 to 1; 0 = off. Each costs one explanation on tract (2^16
    /// rows for the shipped models), one at a time: samples that come while one runs are skipped.
    #[arg(long, default_value_t = 0.001, value_name = "RATE")]
    pub(crate) attribution_sample: f64,
    /// Explanations per window of a version's mean |φ|.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub(crate) attribution_window: usize,
    /// Serve Prometheus metrics (`GET /metrics`, `GET /healthz`) on this address; `off`
    /// serves none, port 0 any free port.
    #[arg(long, default_value = "127.0.0.1:9404", value_name = "ADDR|off")]
    pub(crate) metrics_listen: MetricsListen,
    /// Where the quality join keeps its state (SQLite, `quality.sqlite3`); a missing store is
    /// rebuilt from the prediction and feedback topics.
    #[arg(long, env = "STREAMSCORE_QUALITY_STORE", default_value = ".streamscore/quality", value_name = "DIR")]
    pub(crate) quality_store: PathBuf,
    /// No quality join (labels are not read).
    #[arg(long)]
    pub(crate) no_quality: bool,
    /// Topic labels are read from.
    #[arg(long, default_value = streamscore_contracts::topics::FEEDBACK)]
    pub(crate) feedback_topic: String,
    /// Labels count for predictions up to this long after the request's creation; a label
    /// of a request still unknown after it is dead-lettered (FEEDBACK_UNKNOWN_REQUEST).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub(crate) label_horizon: std::time::Duration,
    /// How long labeled predictions are kept (the `all` window).
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub(crate) quality_retention: std::time::Duration,
    /// Seconds between computations of the quality figures (and checks of the policy).
    #[arg(long, default_value_t = 30.0)]
    pub(crate) quality_every_secs: f64,
    /// The quality thresholds (QUALITY_DEGRADED); a missing file at the default path means
    /// no thresholds.
    #[arg(long, env = "STREAMSCORE_QUALITY_POLICY", default_value = "policies/quality.toml", value_name = "FILE")]
    pub(crate) quality_policy: PathBuf,
}

impl MonitorCommand {
    pub(crate) async fn run(self, shutdown: Shutdown) -> Result<()> {
        let Self {
            endpoints,
            store,
            predictions_topic,
            dead_letter_topic,
            alerts_topic,
            audit_topic,
            group,
            window_secs,
            sliding_windows,
            consecutive,
            window_events,
            thresholds,
            lag_targets,
            lag_every_secs,
            attribution_sample,
            attribution_window,
            metrics_listen,
            policy,
            no_controller,
            rollouts_topic,
            quality_store,
            no_quality,
            feedback_topic,
            label_horizon,
            quality_retention,
            quality_every_secs,
            quality_policy,
        } = self;
        serve_metrics(metrics_listen).await?;
        let store = store.open()?;
        // What the quality join judges QUALITY_DEGRADED, read by the controller's gates.
        let degraded = streamscore_monitor::quality::Degraded::default();
        // The rollout controller, unless told not to (one acts per cluster, whichever monitor
        // leads; the others stand by).
        let controller = if no_controller {
            None
        } else {
            let mut controller = streamscore_control::controller::ControllerConfig::new(
                KafkaConfig::new(&endpoints.bootstrap),
                &endpoints.registry_url,
                &streamscore_contracts::lineage::default_instance(),
            );
            controller.predictions_topic.clone_from(&predictions_topic);
            controller.rollouts_topic = rollouts_topic;
            controller.alerts_topic.clone_from(&alerts_topic);
            controller.audit_topic.clone_from(&audit_topic);
            controller.degraded = (!no_quality).then(|| degraded.clone());
            if let Some(path) = &policy {
                controller.thresholds = streamscore_infer::quota::Policy::load(path)?.rollout_gates();
            }
            let shutdown = shutdown.clone();
            Some(tokio::spawn(async move { streamscore_control::controller::run(controller, shutdown).await }))
        };
        let mut config = streamscore_monitor::stage::MonitorConfig::new(
            KafkaConfig::new(&endpoints.bootstrap),
            &endpoints.registry_url,
            streamscore_contracts::lineage::default_instance(),
        );
        config.predictions_topic = predictions_topic;
        config.dead_letter_topic = dead_letter_topic;
        config.alerts_topic = alerts_topic;
        config.audit_topic = audit_topic;
        config.group = group;
        if !lag_targets.is_empty() {
            config.lag_targets = lag_targets
                .iter()
                .map(|t| {
                    t.split_once('=')
                        .filter(|(g, topic)| !g.is_empty() && !topic.is_empty())
                        .map(|(group, topic)| streamscore_monitor::lag::LagTarget {
                            group: group.to_owned(),
                            topic: topic.to_owned(),
                        })
                        .with_context(|| format!("--lag-target {t:?}: expected GROUP=TOPIC"))
                })
                .collect::<Result<_>>()?;
        }
        anyhow::ensure!(lag_every_secs.is_finite() && lag_every_secs > 0.0, "--lag-every-secs must be above 0");
        config.lag_every = std::time::Duration::from_secs_f64(lag_every_secs);
        anyhow::ensure!(
            (0.0..=1.0).contains(&attribution_sample),
            "--attribution-sample {attribution_sample}: a share from 0 (off) to 1"
        );
        anyhow::ensure!(attribution_window >= 1, "--attribution-window must be at least 1");
        config.attribution = streamscore_monitor::attribution::AttributionConfig {
            sample_rate: attribution_sample,
            window: attribution_window,
        };
        #[allow(clippy::cast_possible_truncation)]
        {
            config.detector.window_us = (window_secs * 1e6) as i64;
        }
        config.detector.sliding_windows = sliding_windows;
        config.detector.consecutive = consecutive;
        config.detector.window_events = window_events;
        config.detector.thresholds =
            config.detector.thresholds.with_overrides(&thresholds).map_err(|e| anyhow::anyhow!("--thresholds {e}"))?;
        if !no_quality {
            anyhow::ensure!(
                quality_every_secs.is_finite() && quality_every_secs > 0.0,
                "--quality-every-secs must be above 0"
            );
            let mut quality = streamscore_monitor::quality::QualityConfig::new(quality_store);
            quality.feedback_topic = feedback_topic;
            quality.horizon = label_horizon;
            quality.retention = quality_retention;
            quality.every = std::time::Duration::from_secs_f64(quality_every_secs);
            quality.degraded = degraded;
            quality.policy = if quality_policy.is_file()
                || quality_policy != std::path::Path::new("policies/quality.toml")
            {
                streamscore_monitor::quality::QualityPolicy::load(&quality_policy)?
            } else {
                tracing::warn!(policy = %quality_policy.display(), "no quality policy: no version is judged QUALITY_DEGRADED");
                streamscore_monitor::quality::QualityPolicy::default()
            };
            config.quality = Some(quality);
        }
        let summary = streamscore_monitor::stage::run(config, store, shutdown).await?;
        tracing::info!(predictions = summary.predictions, alerts = summary.alerts.len(), "monitor stopped");
        if let Some(controller) = controller {
            controller.await.context("the rollout controller panicked")?.context("the rollout controller")?;
        }

        Ok(())
    }
}

/// Serve synchronous HTTP callers over the pipeline: Open Inference Protocol v2
/// (/v2/models/{model}/infer, as KServe and Triton clients send it) and streamscore's
/// JSON (/v1/models/{model}/predict). API keys from the tenant policy, or JWT bearer tokens
/// signed by a key of --jwks-file, decide the tenant; both files are re-read when they change.
#[derive(Debug, clap::Args)]
pub(crate) struct BridgeCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    /// Address to listen on (also serves /metrics, /healthz, /ready, /openapi.json).
    #[arg(long, env = "STREAMSCORE_BRIDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Tenant policy file: API keys (api_key_sha256), allowed models, pins, quotas.
    #[arg(long, default_value = "policies/tenants.toml")]
    pub(crate) policy: PathBuf,
    #[command(flatten)]
    pub(crate) store: ModelStoreArgs,
    /// Topic requests are published to.
    #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
    pub(crate) requests_topic: String,
    /// Topic outcomes are read from.
    #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
    pub(crate) predictions_topic: String,
    /// Topic `POST /v1/feedback` publishes labels to.
    #[arg(long, default_value = streamscore_contracts::topics::FEEDBACK)]
    pub(crate) feedback_topic: String,
    /// Topic the answers to idempotent calls are kept on for 24 h (made if missing): read back
    /// before the bridge is ready, then followed, so a retry after a restart or to another
    /// instance gets the first answer and publishes nothing.
    #[arg(long, default_value = streamscore_contracts::topics::IDEMPOTENCY)]
    pub(crate) idempotency_topic: String,
    /// How long a caller waits for its outcome before a 504, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub(crate) deadline_ms: u64,
    /// Callers (rows) waiting at once before new calls get 503.
    #[arg(long, default_value_t = streamscore_bridge::DEFAULT_MAX_WAITERS)]
    pub(crate) max_waiters: usize,
    /// Rows one tenant may have waiting at once before its calls get 429 (default: --max-waiters
    /// divided by the policy's tenants with an API key, at least one full call of 1,000 rows).
    #[arg(long)]
    pub(crate) max_waiters_per_tenant: Option<usize>,
    /// Largest request body in bytes (chunked bodies included): 413 above.
    #[arg(long, default_value_t = streamscore_bridge::DEFAULT_MAX_BODY_BYTES)]
    pub(crate) max_body_bytes: usize,
    /// This instance's reply_to id (default: bridge:host:pid:random, new at every start).
    #[arg(long)]
    pub(crate) instance: Option<String>,
    #[command(flatten)]
    pub(crate) jwt: JwtArgs,
    /// Record authentication events on this audit topic (e.g. audit.log): refusals per tenant
    /// and code each minute, and the policy, JWKS and certificate loaded and reloaded with
    /// their sha256. Not recorded without it.
    #[arg(long)]
    pub(crate) audit_topic: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM: the certificate, then intermediates);
    /// re-read within seconds when it changes. Without it the bridge speaks plain HTTP.
    #[arg(long, env = "STREAMSCORE_BRIDGE_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "STREAMSCORE_BRIDGE_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Mutual TLS: callers must show a client certificate this CA (PEM) signed; a subject the
    /// tenant policy lists (`client_certificate_subjects`) calls as that tenant without a key
    /// or token. Re-read within seconds when it changes.
    #[arg(long, env = "STREAMSCORE_BRIDGE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: a caller without a certificate may still connect (and needs an
    /// API key or a token); one with a certificate the CA did not sign is still refused.
    #[arg(long, requires = "tls_client_ca")]
    pub(crate) tls_client_optional: bool,
}

/// JWT bearer tokens beside the API keys (OAuth 2.0 access tokens from an identity provider).
#[derive(Debug, clap::Args)]
pub(crate) struct JwtArgs {
    /// A JWKS document (`{"keys": [...]}`) whose RS256, ES256 (P-256) or EdDSA (Ed25519) keys
    /// sign the bearer tokens the bridge takes; re-read within seconds when it changes. HMAC
    /// and `none` are never accepted.
    #[arg(long, env = "STREAMSCORE_BRIDGE_JWKS_FILE", requires_all = ["jwt_issuer", "jwt_audience"])]
    pub(crate) jwks_file: Option<PathBuf>,
    /// The `iss` a token must carry.
    #[arg(long, env = "STREAMSCORE_BRIDGE_JWT_ISSUER", requires = "jwks_file")]
    pub(crate) jwt_issuer: Option<String>,
    /// The `aud` a token must name (this bridge).
    #[arg(long, env = "STREAMSCORE_BRIDGE_JWT_AUDIENCE", requires = "jwks_file")]
    pub(crate) jwt_audience: Option<String>,
    /// The claim naming the caller's tenant (a tenant the policy lists).
    #[arg(long, default_value = "tenant")]
    pub(crate) jwt_tenant_claim: String,
}

impl JwtArgs {
    fn config(self) -> Option<streamscore_bridge::JwtConfig> {
        let (jwks_file, issuer, audience) = (self.jwks_file?, self.jwt_issuer?, self.jwt_audience?);
        Some(streamscore_bridge::JwtConfig {
            jwks_file,
            expect: streamscore_bridge::jwt::Expectations { issuer, audience, tenant_claim: self.jwt_tenant_claim },
        })
    }
}

impl BridgeCommand {
    pub(crate) async fn run(self, shutdown: Shutdown) -> Result<()> {
        let Self {
            endpoints,
            listen,
            policy,
            store,
            requests_topic,
            predictions_topic,
            feedback_topic,
            idempotency_topic,
            deadline_ms,
            max_waiters,
            max_waiters_per_tenant,
            max_body_bytes,
            instance,
            jwt,
            audit_topic,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_client_optional,
        } = self;
        let mut config = streamscore_bridge::BridgeConfig::new(
            KafkaConfig::new(&endpoints.bootstrap),
            &endpoints.registry_url,
            store.dir,
            policy,
        );
        config.requests_topic = requests_topic;
        config.predictions_topic = predictions_topic;
        config.feedback_topic = feedback_topic;
        config.idempotency_topic = Some(idempotency_topic);
        config.deadline = std::time::Duration::from_millis(deadline_ms);
        config.max_waiters = max_waiters;
        config.max_waiters_per_tenant = max_waiters_per_tenant;
        config.max_body_bytes = max_body_bytes;
        config.jwt = jwt.config();
        config.audit_topic = audit_topic;
        config.tls = tls_cert.zip(tls_key).map(|(cert, key)| streamscore_bridge::tls::ServerFiles {
            cert,
            key,
            client: tls_client_ca.map(|ca| streamscore_bridge::tls::ClientAuth { ca, required: !tls_client_optional }),
        });
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        if let Some(instance) = instance {
            config.instance = instance;
        }
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let prometheus = streamscore_telemetry::install_recorder();
        let metrics: streamscore_bridge::MetricsRender = Arc::new(move || prometheus.render());
        println!("bridge on {scheme}://{listen} (Open Inference Protocol v2 on /v2, streamscore JSON on /v1)");
        streamscore_bridge::serve(config, listener, Some(metrics), shutdown.wait()).await?;
        tracing::info!("bridge stopped");

        Ok(())
    }
}

/// Serve the Confluent-compatible schema registry, its state in a Kafka topic.
#[derive(Debug, clap::Args)]
pub(crate) struct RegistryCommand {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub(crate) bootstrap: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub(crate) listen: SocketAddr,
    /// Topic holding the registry's state.
    #[arg(long, default_value = streamscore_registry::DEFAULT_TOPIC)]
    pub(crate) topic: String,
    /// Users allowed to write: one `name:role:sha256-of-password` per line, role reader,
    /// writer (register) or admin (delete, config); re-read within seconds when it changes.
    /// Without it the registry is open to all.
    #[arg(long, env = "STREAMSCORE_REGISTRY_USERS_FILE")]
    pub(crate) users_file: Option<PathBuf>,
    /// Reads need a user too (default: reads are open).
    #[arg(long)]
    pub(crate) auth_reads: bool,
    /// Serve HTTPS with this certificate chain (PEM: the certificate, then intermediates);
    /// re-read within seconds when it changes. Without it the registry speaks plain HTTP.
    /// Clients trust it with STREAMSCORE_REGISTRY_CA (the stages) or `ssl.ca.location`
    /// (Confluent's clients).
    #[arg(long, env = "STREAMSCORE_REGISTRY_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "STREAMSCORE_REGISTRY_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

impl RegistryCommand {
    pub(crate) async fn run(self, shutdown: Shutdown) -> Result<()> {
        let Self { bootstrap, listen, topic, users_file, auth_reads, tls_cert, tls_key } = self;
        let (auth, users) = match &users_file {
            Some(path) => {
                let (sha256, contents) = streamscore_tls::files::fingerprint(std::slice::from_ref(path))
                    .with_context(|| format!("reading {}", path.display()))?;
                let text = String::from_utf8(contents.into_iter().next().unwrap_or_default())
                    .with_context(|| format!("{} is not UTF-8", path.display()))?;
                let auth = streamscore_registry::Auth::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                    .with_authenticated_reads(auth_reads);
                (auth, Some((path.clone(), sha256)))
            }
            None => {
                tracing::warn!(
                    "no --users-file: anyone who can reach the registry may register, delete and reconfigure"
                );
                (streamscore_registry::Auth::open(), None)
            }
        };
        let tls = match tls_cert.zip(tls_key) {
            None => None,
            Some((cert, key)) => {
                Some(streamscore_tls::Tls::load(streamscore_tls::ServerFiles::new(cert.clone(), key.clone())).map_err(
                    |e| anyhow::anyhow!("TLS certificate {} and key {}: {e}", cert.display(), key.display()),
                )?)
            }
        };
        let kafka = KafkaConfig::new(bootstrap);
        let store = shutdown
            .race(
                || format!("the broker at {} to read the registry's topic {topic}", kafka.bootstrap),
                streamscore_registry::Store::open(&kafka, &topic),
            )
            .await?
            .context("opening the registry's topic")?;
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%listen, topic, "schema registry serving {scheme}://{listen}");
        let prometheus = streamscore_telemetry::install_recorder();
        let metrics: streamscore_registry::api::MetricsRender = Arc::new(move || prometheus.render());
        let auth = Arc::new(streamscore_registry::Current::new(auth));
        let mut watchers = Vec::new();
        if let Some((path, sha256)) = users {
            let every = streamscore_tls::files::POLL;
            let report = |_: &streamscore_tls::Reload| {};
            watchers.push(streamscore_registry::auth::watch(
                path,
                sha256,
                auth_reads,
                Arc::clone(&auth),
                every,
                report,
            ));
        }
        if let Some(tls) = &tls {
            watchers.extend(tls.watch(streamscore_tls::files::POLL, streamscore_registry::auth::count_reload));
        }
        streamscore_registry::serve_with(Arc::new(store), auth, Some(metrics), listener, tls.as_ref(), shutdown.wait())
            .await;
        for watcher in watchers {
            watcher.abort();
        }
        tracing::info!("schema registry stopped");

        Ok(())
    }
}

pub(crate) async fn run_ingest(
    endpoints: Endpoints,
    args: IngestArgs,
    validated_topic: String,
    metrics: MetricsListen,
    policy: Option<PathBuf>,
    shutdown: Shutdown,
) -> Result<()> {
    use streamscore_contracts::{Codec, InferenceRequest};
    use streamscore_ingest::{Handoff, RequestDecider, TenantTopics};
    serve_metrics(metrics).await?;
    let tenants = tenants_for(policy.as_deref(), &args.tenants)?;
    let (tenant_topics, pins, loaded) = match &policy {
        Some(path) => {
            let policy = streamscore_infer::quota::Policy::load(path)?;
            let topics = TenantTopics::new(&args.input_topic, policy.bound_tenants().map(|(t, _)| t));
            (topics, policy.pins(), Some(policy))
        }
        None => (TenantTopics::default(), streamscore_modelstore::Pins::default(), None),
    };
    let models = streamscore_modelstore::SharedStore::new(args.store.open()?);
    let kafka = KafkaConfig::new(&endpoints.bootstrap);
    let rollouts_topic = streamscore_contracts::topics::ROLLOUTS;
    let rollouts = streamscore_control::follow(&kafka, &endpoints.registry_url, rollouts_topic, &shutdown)
        .await
        .with_context(|| format!("following the rollouts on {rollouts_topic}"))?;
    // Versions dropped into the model store are validated against within 5 s, as infer loads
    // them (the fused pipeline shares infer's store).
    tokio::spawn({
        let (models, shutdown) = (models.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.requested() => return,
                }
                match models.current().rescan() {
                    Ok((next, _)) => models.replace(next),
                    Err(e) => tracing::warn!(error = %e, "model store rescan failed; keeping the versions in hand"),
                }
            }
        }
    });
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&endpoints.registry_url, &args.input_topic));
    let decider = RequestDecider::new(codec, streamscore_contracts::lineage::default_instance())
        .with_tenants(tenants)
        .with_tenant_topics(tenant_topics.clone())
        .with_pins(pins)
        .with_rollouts(rollouts)
        .with_models(models)
        .with_max_record_bytes(args.max_record_bytes)
        .with_event_time_window(args.event_window());
    // The policy's tenants and pins are followed without a restart, as infer follows it.
    if let Some(policy) = loaded {
        streamscore::pipeline::follow_policy(
            policy,
            Default::default(),
            true,
            decider.admission(),
            streamscore::pipeline::POLICY_POLL,
            shutdown.clone(),
        );
    }
    let mut config = IngestConfig::new(kafka, &endpoints.registry_url);
    config.group_id = args.group;
    config.input_topic = args.input_topic;
    config.dead_letter_topic = args.dead_letter_topic;
    config.tenant_topics = tenant_topics.topics();
    if !tenant_topics.is_empty() {
        let specs: Vec<_> = tenant_topics
            .topics()
            .iter()
            .map(|t| streamscore_kafka::TopicSpec::requests(t, streamscore_kafka::topics::CLUSTER_PARTITIONS))
            .collect();
        shutdown
            .race(
                || format!("the broker at {} to create the tenants' topics", config.kafka.bootstrap),
                streamscore_kafka::ensure_topics(&config.kafka, &specs),
            )
            .await?
            .context("creating the tenants' topics")?;
    }
    tracing::info!(
        input = config.input_topic,
        tenant_topics = ?config.tenant_topics,
        output = validated_topic,
        group = config.group_id,
        "ingest running"
    );
    let summary = streamscore_ingest::run(config, decider, Handoff::Topic { topic: validated_topic }, shutdown).await?;
    tracing::info!(
        consumed = summary.consumed,
        validated = summary.validated,
        dead_lettered = summary.dead_lettered,
        "ingest stopped"
    );
    Ok(())
}
