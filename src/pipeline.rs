//! The fused pipeline: ingest and infer in one process, joined by a bounded in-process
//! channel (no second Kafka hop). A request's offset is stored only after its prediction or
//! dead letter is acknowledged.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use streamscore_contracts::{Codec, InferenceRequest};
use streamscore_infer::{Backend, InferConfig};
use streamscore_ingest::{Handoff, IngestConfig, IngestSummary, RequestDecider, Tenants};
use streamscore_modelstore::{ModelStore, SharedStore};
use streamscore_monitor::LiveStats;
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

/// Runs ingest and infer until `shutdown` resolves, then drains both.
pub async fn run(
    config: PipelineConfig,
    backend: Arc<dyn Backend>,
    stats: Arc<LiveStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<IngestSummary> {
    // The topics this deployment uses (idempotent; tansu never auto-creates them).
    let specs = [
        streamscore_kafka::TopicSpec::event(&config.ingest.input_topic, 6),
        streamscore_kafka::TopicSpec::event(&config.ingest.dead_letter_topic, 3),
        streamscore_kafka::TopicSpec::event(&config.infer.predictions_topic, 6),
        streamscore_kafka::TopicSpec::event(&config.infer.audit_topic, 1),
    ];
    streamscore_kafka::ensure_topics(&config.ingest.kafka, &specs).await.context("creating the pipeline's topics")?;
    let store = SharedStore::new(
        ModelStore::open(&config.models)
            .with_context(|| format!("loading the model store {}", config.models.display()))?,
    );
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&config.ingest.registry_url, &config.ingest.input_topic));
    let decider = RequestDecider::new(codec, config.infer.instance.clone())
        .with_tenants(config.tenants.clone())
        .with_models(store.clone())
        .with_max_record_bytes(config.max_record_bytes);
    let (tx, rx) = mpsc::channel(config.channel_capacity);
    let infer = tokio::spawn(streamscore_infer::run(config.infer.clone(), store, backend, rx, Arc::clone(&stats)));
    let ingest =
        streamscore_ingest::run_with_stats(config.ingest.clone(), decider, Handoff::Channel(tx), stats, shutdown).await;
    // Ingest has returned and dropped its end of the channel: infer drains and stops.
    let inferred = infer.await.context("the infer stage panicked")?;
    let summary = ingest.context("ingest stage")?;
    inferred.context("infer stage")?;
    Ok(summary)
}
