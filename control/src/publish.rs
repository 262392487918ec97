//! Writing a rollout change: the new state to `control.rollouts` (keyed by model, acknowledged
//! by the broker), then its audit entry (`ROLLOUT_STARTED`, `ROLLOUT_STEP`, `ROLLOUT_PROMOTED`,
//! `ROLLOUT_ROLLED_BACK`, `ROLLOUT_PAUSED`, `ROLLOUT_RESUMED`, `ROLLOUT_SPLIT`) naming who or
//! what made it, why, the gate figures of the moment and the whole state, which replay reads
//! back (compaction keeps only each model's latest record; the audit log keeps them all).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use streamscore_contracts::{Codec, Rollout};
use streamscore_kafka::audit::{AuditError, AuditWriter};
use streamscore_kafka::{KafkaConfig, Shutdown};

use crate::lifecycle::audit_kind;
use crate::split;

/// Why a change could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Kafka(#[from] streamscore_kafka::KafkaError),
    #[error("schema registry: {0}")]
    Registry(#[from] streamscore_contracts::RegistryError),
    #[error("encoding a rollout: {0}")]
    Encode(#[from] streamscore_contracts::EncodeError),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("the broker did not acknowledge the rollout of {model}: {reason}")]
    Delivery { model: String, reason: String },
    #[error(transparent)]
    Stopped(#[from] streamscore_kafka::Stopped),
}

/// Writes rollout changes, each with its audit entry.
pub struct Publisher {
    topic: String,
    codec: Codec<Rollout>,
    producer: FutureProducer,
    audit: Arc<AuditWriter>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher to `topic` whose changes are audited in `audit` (its chain is the writer's:
    /// `control/<user@host>` for the command, `controller/<instance>` for the gates).
    pub async fn new(
        kafka: &KafkaConfig,
        registry_url: &str,
        topic: &str,
        audit: Arc<AuditWriter>,
        shutdown: &Shutdown,
    ) -> Result<Self, PublishError> {
        let codec = Codec::<Rollout>::with_url(registry_url, topic);
        streamscore_kafka::retry::register(&codec, shutdown).await??;
        audit.schema_registered(&codec).await?;
        Ok(Self { topic: topic.to_owned(), codec, producer: kafka.producer()?, audit })
    }

    pub fn audit(&self) -> &Arc<AuditWriter> {
        &self.audit
    }

    /// Writes `to` (the state after `from`), then audits it.
    pub async fn publish(&self, from: Option<&Rollout>, to: &Rollout) -> Result<(), PublishError> {
        let bytes = self.codec.encode(to)?;
        let record = FutureRecord::to(&self.topic).key(to.model.as_bytes()).payload(&bytes);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| PublishError::Delivery { model: to.model.clone(), reason: e.to_string() })?;
        let kind = audit_kind(from, to);
        self.audit.record(kind, &to.model, None, audit_details(to)).await?;
        tracing::info!(
            model = to.model,
            kind,
            generation = to.generation,
            split = split::describe(&to.split),
            by = to.changed_by,
            reason = to.reason,
            "rollout change written"
        );
        Ok(())
    }
}

/// The details of a rollout's audit entry: the whole state (JSON, what replay reads), and its
/// main fields and figures flat, for people reading the log.
pub fn audit_details(rollout: &Rollout) -> HashMap<String, String> {
    let mut details = HashMap::from([
        ("state".to_owned(), serde_json::to_string(rollout).unwrap_or_default()),
        ("generation".to_owned(), rollout.generation.to_string()),
        ("rollout_id".to_owned(), rollout.rollout_id.clone()),
        ("status".to_owned(), rollout.status.code().to_owned()),
        ("split".to_owned(), split::describe(&rollout.split)),
        ("by".to_owned(), rollout.changed_by.clone()),
        ("reason".to_owned(), rollout.reason.clone()),
    ]);
    for (name, value) in &rollout.figures {
        details.insert(format!("figure.{name}"), value.clone());
    }
    details
}

/// The state recorded in a rollout audit entry's details.
pub fn state_of(details: &HashMap<String, String>) -> Option<Rollout> {
    details.get("state").and_then(|json| serde_json::from_str(json).ok())
}
