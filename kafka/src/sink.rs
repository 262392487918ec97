//! The at-least-once sink every stage writes its outputs through: encode, enqueue, delivery,
//! then the input's [`Ack`].
//!
//! Records are enqueued without waiting; the producer keeps many requests in flight. The
//! delivery callback (on the producer's polling thread) releases the output's hold on its
//! input's [`Ack`], so no future or task is made per record. A record the broker refuses for
//! good (after the producer's own retries, `message.timeout.ms`) never releases its hold: the
//! input's offset is never stored, and [`Sink::failed`] resolves so the stage stops with the
//! error. A restart redelivers the input.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;

use crate::ack::{Ack, AckInner};
use crate::config::{KafkaConfig, KafkaError as SetupError};

/// The record header that carries a committed output's hash: the HMAC of its value under the
/// audit key, as its `BATCH_COMMITTED` entry lists it
/// (`streamscore_contracts::audit::AuditKey::event_hash`). A reader holding the key (the HTTP
/// bridge) tells the writer's copy of an event from one forged by someone who can only write
/// the topic, without waiting for the commitment.
pub const MAC_HEADER: &str = "streamscore-mac";
/// The header naming the audit key the [`MAC_HEADER`] was made with (its id, not the key).
pub const KEY_ID_HEADER: &str = "streamscore-key-id";

/// What seals a committed output: its commitment hash and the id of the key that made it.
#[derive(Debug, Clone, Copy)]
pub struct Seal<'a> {
    pub hash: &'a str,
    pub key_id: &'a str,
}

/// Why an output could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error(
        "the broker did not acknowledge a record for {topic}: {reason}; the input will be redelivered after a restart"
    )]
    Delivery { topic: String, reason: String },
    #[error("a record of {bytes} bytes for {topic} is larger than the producer's message.max.bytes ({max})")]
    TooLarge { topic: String, bytes: usize, max: usize },
    #[error("enqueueing a record for {topic}: {reason}")]
    Enqueue { topic: String, reason: String },
}

/// The producer's context: releases holds on delivery, remembers the first failure.
#[derive(Debug)]
pub struct SinkContext {
    failure: watch::Sender<Option<SinkError>>,
    name: &'static str,
    /// Records acknowledged (`streamscore_sink_records_total`).
    delivered: metrics::Counter,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::telemetry::client_requests(self.name, &statistics);
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Arc<AckInner>;

    fn delivery(&self, result: &DeliveryResult<'_>, hold: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.delivered.increment(1);
                hold.release();
            }
            Err((error, message)) => {
                let failure = SinkError::Delivery { topic: message.topic().to_owned(), reason: error.to_string() };
                tracing::error!(error = %failure, "output not acknowledged");
                metrics::counter!("streamscore_sink_delivery_failures_total", "stage" => self.name).increment(1);
                // The first failure is the one reported; the hold is dropped, never released.
                self.failure.send_if_modified(|f| f.is_none() && f.replace(failure).is_none());
            }
        }
    }
}

/// Where a stage's outputs go; see the module documentation.
pub struct Sink {
    producer: ThreadedProducer<SinkContext>,
    failed: watch::Receiver<Option<SinkError>>,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("max_message_bytes", &self.max_message_bytes).finish_non_exhaustive()
    }
}

impl Sink {
    /// A sink for stage `name` (a metrics label) with the stage producer settings.
    pub fn new(kafka: &KafkaConfig, name: &'static str) -> Result<Self, SetupError> {
        let (failure, failed) = watch::channel(None);
        let config = kafka.stage_producer_config();
        let max_message_bytes =
            config.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(crate::config::MESSAGE_MAX_BYTES);
        let producer = config
            .create_with_context(SinkContext {
                failure,
                name,
                delivered: metrics::counter!("streamscore_sink_records_total", "stage" => name),
            })
            .map_err(|source| SetupError::Client { bootstrap: kafka.bootstrap.clone(), source })?;
        Ok(Self { producer, failed, max_message_bytes })
    }

    /// The largest record the producer accepts (key, value and overhead together).
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Enqueues one output of the input `ack` belongs to; the hold it takes is released when
    /// the broker acknowledges the record. Waits (without blocking the reactor) while the
    /// producer's queue is full.
    pub async fn send(&self, topic: &str, key: &[u8], payload: &[u8], ack: &Ack) -> Result<(), SinkError> {
        self.send_record(topic, key, payload, ack, None).await
    }

    /// [`Sink::send`] for an output the audit log commits: the record carries its `seal` in
    /// the [`MAC_HEADER`] and [`KEY_ID_HEADER`] headers.
    pub async fn send_sealed(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        ack: &Ack,
        seal: Seal<'_>,
    ) -> Result<(), SinkError> {
        self.send_record(topic, key, payload, ack, Some(seal)).await
    }

    async fn send_record(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        ack: &Ack,
        seal: Option<Seal<'_>>,
    ) -> Result<(), SinkError> {
        if let Some(failure) = self.failed.borrow().clone() {
            return Err(failure);
        }
        let mut record = BaseRecord::with_opaque_to(topic, ack.output()).key(key).payload(payload);
        if let Some(seal) = seal {
            record = record.headers(
                OwnedHeaders::new_with_capacity(2)
                    .insert(Header { key: MAC_HEADER, value: Some(seal.hash) })
                    .insert(Header { key: KEY_ID_HEADER, value: Some(seal.key_id) }),
            );
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Err(SinkError::TooLarge {
                        topic: topic.to_owned(),
                        bytes: key.len() + payload.len(),
                        max: self.max_message_bytes,
                    })
                }
                // The record (and its hold) is dropped: the input is never finished.
                Err((e, _)) => return Err(SinkError::Enqueue { topic: topic.to_owned(), reason: e.to_string() }),
            }
        }
    }

    /// Resolves with the first delivery failure (never, while all goes well).
    pub async fn failed(&self) -> SinkError {
        let mut failed = self.failed.clone();
        loop {
            if let Some(failure) = failed.borrow_and_update().clone() {
                return failure;
            }
            if failed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The first delivery failure, if one happened.
    pub fn failure(&self) -> Option<SinkError> {
        self.failed.borrow().clone()
    }

    /// Waits up to `timeout` for every enqueued record to be delivered (or to fail).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, in_flight = self.producer.in_flight_count(), "outputs still in flight at shutdown; their inputs will be redelivered");
        }
    }
}
