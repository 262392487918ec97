//! The fused pipeline: ingest and infer in one process, joined by a bounded in-process
//! channel (no second Kafka hop). A request's offset is stored only after its prediction or
//! dead letter is acknowledged.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use streamscore_contracts::{Codec, InferenceRequest};
use streamscore_infer::{Backend, InferConfig};
use streamscore_ingest::{Handoff, IngestConfig, IngestSummary, RequestDecider, Tenants};
use streamscore_kafka::Shutdown;
use streamscore_modelstore::{ModelStore, SharedStore};
use streamscore_telemetry::LiveStats;
use tokio::sync::mpsc;

/// What the fused pipeline needs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub ingest: IngestConfig,
    pub infer: InferConfig,
    pub models: PathBuf,
    pub tenants: Tenants,
    pub max_record_bytes: usize,
    /// Validated requests waiting for infer before ingest pauses.
    pub channel_capacity: usize,
}

/// Runs ingest and infer until `shutdown` is requested, then drains both. Every start-up wait
/// (the broker creating topics, the registry, the audit chains, the models) gives way to it
/// with an error whose chain holds [`streamscore_kafka::Stopped`].
pub async fn run(
    mut config: PipelineConfig,
    backend: Arc<dyn Backend>,
    stats: Arc<LiveStats>,
    shutdown: impl Into<Shutdown>,
) -> Result<IngestSummary> {
    let shutdown = shutdown.into();
    // The rollouts in force, read to the end before the first request is routed; ingest
    // validates and infer routes by the same table.
    if let Some(topic) = config.infer.rollouts_topic.clone() {
        config.infer.rollouts =
            streamscore_control::follow(&config.ingest.kafka, &config.ingest.registry_url, &topic, &shutdown)
                .await
                .with_context(|| format!("following the rollouts on {topic}"))?;
    }
    // The topics this deployment uses, if missing (tansu never auto-creates them; the local
    // stack and `streamscore topics` create them with their own partition counts).
    use streamscore_kafka::topics::CLUSTER_PARTITIONS;
    let mut specs = vec![
        streamscore_kafka::TopicSpec::requests(&config.ingest.input_topic, CLUSTER_PARTITIONS),
        streamscore_kafka::TopicSpec::event(&config.ingest.dead_letter_topic, 3),
        streamscore_kafka::TopicSpec::event(&config.infer.predictions_topic, CLUSTER_PARTITIONS),
        streamscore_kafka::TopicSpec::event(&config.infer.audit_topic, 1),
    ];
    let mut ingest_config = config.ingest.clone();
    // One audit log, each stage its own chain.
    ingest_config.audit_topic.clone_from(&config.infer.audit_topic);
    ingest_config.instance.clone_from(&config.infer.instance);
    // Tenants bound to Kafka principals come on topics of their own.
    let mut tenant_topics = streamscore_ingest::TenantTopics::default();
    // Ingest judges a request against the version routing will score: the policy's pins,
    // under the stage's own --pins.
    let mut pins = streamscore_modelstore::Pins::default();
    if let Some(path) = &config.infer.policy {
        let policy = streamscore_infer::quota::Policy::load(path)?;
        pins = policy.pins();
        tenant_topics =
            streamscore_ingest::TenantTopics::new(&config.ingest.input_topic, policy.bound_tenants().map(|(t, _)| t));
        for topic in tenant_topics.topics() {
            specs.push(streamscore_kafka::TopicSpec::requests(&topic, CLUSTER_PARTITIONS));
        }
        ingest_config.tenant_topics = tenant_topics.topics();
    }
    if config.infer.policy.is_some() {
        // Quota buckets are committed with the request offsets (a redelivery is decided as
        // the first time).
        specs.push(streamscore_kafka::TopicSpec::state(&config.infer.quota_state_topic));
        ingest_config.checkpoints = Some(config.infer.quota_state_topic.clone());
    }
    shutdown
        .race(
            || format!("the broker at {} to create the pipeline's topics", config.ingest.kafka.bootstrap),
            streamscore_kafka::ensure_topics(&config.ingest.kafka, &specs),
        )
        .await?
        .context("creating the pipeline's topics")?;
    let store = SharedStore::new(
        ModelStore::open(&config.models)
            .with_context(|| format!("loading the model store {}", config.models.display()))?,
    );
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&config.ingest.registry_url, &config.ingest.input_topic));
    let stats_for_infer = Arc::clone(&stats);
    let decider = RequestDecider::new(codec, config.infer.instance.clone())
        .with_tenants(config.tenants.clone())
        .with_tenant_topics(tenant_topics)
        .with_models(store.clone())
        .with_pins(pins.with_every_model(config.infer.pins.clone()))
        .with_rollouts(config.infer.rollouts.clone())
        .with_max_record_bytes(config.max_record_bytes)
        .with_event_time_window(config.ingest.event_window);
    let (tx, rx) = mpsc::channel(config.channel_capacity);
    // Infer stopping (an error, a panic in a batch) stops ingest too: it would otherwise wait
    // for records that nothing will score.
    let (infer_stopped, infer_stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let infer = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = streamscore_infer::run(
                config.infer.clone(),
                store,
                backend,
                rx,
                Arc::clone(&stats_for_infer),
                shutdown,
            )
            .await;
            let _ = infer_stopped.send(());
            result
        }
    });
    let shutdown = shutdown.or_after(
        async {
            let _ = infer_stopped_rx.await;
        },
        "the infer stage stopped",
    );
    let ingest =
        streamscore_ingest::run_with_stats(ingest_config, decider, Handoff::Channel(tx), stats, shutdown).await;
    // Ingest has returned and dropped its end of the channel: infer drains and stops. An infer
    // failure is the cause of ingest's "stopped taking requests", so it is reported first.
    let inferred = infer.await.context("the infer stage panicked")?;
    inferred.context("infer stage")?;
    ingest.context("ingest stage")
}
