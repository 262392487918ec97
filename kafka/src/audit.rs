//! Writing the audit log: one hash chain per writer, appended to the audit topic.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use streamscore_contracts::audit::AuditChain;
use streamscore_contracts::{AuditRecord, Codec, Lineage};
use tokio::sync::Mutex;

use crate::config::{KafkaConfig, KafkaError};

/// Why an audit entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Setup(#[from] KafkaError),
    #[error("registering the audit schema: {0}")]
    Registry(#[from] streamscore_contracts::RegistryError),
    #[error("encoding an audit entry: {0}")]
    Encode(#[from] streamscore_contracts::EncodeError),
    #[error("writing an audit entry: {0}")]
    Write(#[from] rdkafka::error::KafkaError),
}

/// Appends this writer's entries to the audit topic, in chain order.
pub struct AuditWriter {
    topic: String,
    codec: Codec<AuditRecord>,
    producer: FutureProducer,
    chain: Mutex<AuditChain>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl AuditWriter {
    pub async fn new(
        kafka: &KafkaConfig,
        registry_url: &str,
        topic: &str,
        stage: &str,
        instance: &str,
    ) -> Result<Self, AuditError> {
        let codec = Codec::<AuditRecord>::with_url(registry_url, topic);
        codec.register().await?;
        Ok(Self {
            topic: topic.to_owned(),
            codec,
            producer: kafka.producer()?,
            chain: Mutex::new(AuditChain::new(stage, instance)),
        })
    }

    /// Appends an entry and waits until the broker has it.
    pub async fn record(
        &self,
        kind: &str,
        subject: &str,
        lineage: Option<Lineage>,
        details: HashMap<String, String>,
    ) -> Result<AuditRecord, AuditError> {
        // The lock spans the write so entries reach the topic in chain order.
        let mut chain = self.chain.lock().await;
        let entry = chain.append(kind, subject, lineage, details);
        let bytes = self.codec.encode(&entry)?;
        let key = entry.instance.as_bytes();
        self.producer
            .send(FutureRecord::to(&self.topic).key(key).payload(&bytes[..]), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)?;
        Ok(entry)
    }
}
