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
    let mut loaded_policy = None;
    if let Some(path) = &config.infer.policy {
        let policy = streamscore_infer::quota::Policy::load(path)?;
        pins = policy.pins();
        tenant_topics =
            streamscore_ingest::TenantTopics::new(&config.ingest.input_topic, policy.bound_tenants().map(|(t, _)| t));
        for topic in tenant_topics.topics() {
            specs.push(streamscore_kafka::TopicSpec::requests(&topic, CLUSTER_PARTITIONS));
        }
        ingest_config.tenant_topics = tenant_topics.topics();
        loaded_policy = Some(policy);
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
    // Ingest follows the policy as infer does: tenants (when they came from it) and pins.
    let following = loaded_policy.map(|policy| {
        let tenants_from_policy = config.tenants == ingest_tenants(&policy);
        follow_policy(
            policy,
            config.infer.pins.clone(),
            tenants_from_policy,
            decider.admission(),
            POLICY_POLL,
            shutdown.clone(),
        )
    });
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
    if let Some(following) = following {
        following.abort();
    }
    let inferred = infer.await.context("the infer stage panicked")?;
    inferred.context("infer stage")?;
    ingest.context("ingest stage")
}

/// How often ingest reads the tenant policy for a change (infer reads it at every model store
/// rescan, 5 s).
pub const POLICY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The tenants ingest knows under `policy`: any (`unknown_tenants = "default"`), or only those
/// it lists.
pub fn ingest_tenants(policy: &streamscore_infer::quota::Policy) -> Tenants {
    use streamscore_infer::quota::policy::UnknownTenants;
    match policy.file.unknown_tenants {
        UnknownTenants::Default => Tenants::Any,
        UnknownTenants::Refuse => Tenants::Only(policy.file.tenants.keys().cloned().collect()),
    }
}

/// Follows the tenant policy for ingest: every `every`, when the file's sha256 has moved from
/// `loaded`'s, the new policy's pins (under the stage's own `stage_pins`) and, when
/// `tenants_from_policy`, its tenants replace `admission`'s, so a tenant removed is refused
/// (`UNKNOWN_TENANT`) and a pin moved is validated against from then on, without a restart. A
/// file that does not parse is refused (logged) and the admission in force stays. Tenants'
/// own topics (`kafka_principals`) are subscribed at start: a change to them is logged and
/// takes a restart. Ends at `shutdown` (or abort it).
pub fn follow_policy(
    loaded: streamscore_infer::quota::Policy,
    stage_pins: std::collections::HashMap<String, String>,
    tenants_from_policy: bool,
    admission: streamscore_ingest::decide::SharedAdmission,
    every: std::time::Duration,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = loaded.path.clone();
        let bound = |p: &streamscore_infer::quota::Policy| -> Vec<String> {
            p.bound_tenants().map(|(t, _)| t.to_owned()).collect()
        };
        let (mut seen, bound_at_start) = (loaded.sha256.clone(), bound(&loaded));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.requested() => return,
            }
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let sha256 = streamscore_contracts::sha256_hex(&bytes);
            if sha256 == seen {
                continue;
            }
            seen = sha256;
            match streamscore_infer::quota::Policy::parse(&path, &bytes) {
                Ok(policy) => {
                    let current = admission.get();
                    let tenants = if tenants_from_policy { ingest_tenants(&policy) } else { current.tenants.clone() };
                    let pins = policy.pins().with_every_model(stage_pins.clone());
                    admission.set(streamscore_ingest::decide::Admission { tenants, pins });
                    tracing::info!(
                        path = %path.display(),
                        sha256 = policy.sha256,
                        version = policy.file.version,
                        "tenant policy reloaded by ingest: its tenants and pins judge requests from now on"
                    );
                    if bound(&policy) != bound_at_start {
                        tracing::warn!(
                            path = %path.display(),
                            "the tenants bound to Kafka principals changed; their topics are read as at start \
                             until the stage restarts"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "tenant policy refused by ingest; keeping the loaded one");
                }
            }
        }
    })
}
