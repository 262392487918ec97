//! Infer deployed on its own: validated requests from the `inference.validated` topic through
//! the at-least-once [`Source`] (an offset is stored once its prediction is acknowledged).
//!
//! The same two rules as everywhere: a record the registry cannot resolve *now* waits (never
//! acknowledged, never dead-lettered); a record that can never be read is poison and goes to
//! the dead-letter topic with its reason and original bytes, then its offset moves on.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use streamscore_contracts::{Codec, DeadLetter, DecodeError, Lineage, SourceOffset, Stage, ValidatedRequest};
use streamscore_kafka::audit::{AuditError, AuditWriter, Committer};
use streamscore_kafka::retry::{self, Attempt};
use streamscore_kafka::{Ack, KafkaConfig, Seal, Shutdown, Sink, Source, SourceConfig, Stopped};
use tokio::sync::mpsc;

use crate::stage::InferError;

/// Where standalone infer reads from.
#[derive(Debug, Clone)]
pub struct ValidatedInput {
    pub topic: String,
    pub group: String,
    /// Where records of the validated topic that can never be read go.
    pub dead_letter_topic: String,
    /// Offset-aligned checkpoints (with quotas on).
    pub checkpoints: Option<String>,
    /// Where the dead letters of unreadable records are committed, like every other output.
    pub audit_topic: String,
    pub instance: String,
    pub drain_timeout: Duration,
}

/// Consumes the validated topic and hands each request to `output` until `shutdown` is
/// requested; then closes `output` (infer finishes what it has), waits (bounded) for
/// outstanding acknowledgements and commits. A stop during start-up (registering the dead
/// letter contract) is [`InferError::Stopped`].
pub async fn consume_validated(
    kafka: &KafkaConfig,
    registry_url: &str,
    input: &ValidatedInput,
    output: mpsc::Sender<(ValidatedRequest, Ack)>,
    shutdown: impl Into<Shutdown>,
) -> Result<(), InferError> {
    let shutdown = shutdown.into();
    let codec = Codec::<ValidatedRequest>::with_url(registry_url, &input.topic);
    let dead_letters = Codec::<DeadLetter>::with_url(registry_url, &input.dead_letter_topic);
    retry::register(&dead_letters, &shutdown).await??;
    // The dead letters this reader writes are committed in an audit chain of its own (a writer
    // of its own: `<instance>/validated-source`), like every output of every stage.
    let writer_instance = format!("{}/validated-source", input.instance);
    let broker = || format!("the broker at {} (the audit chain's first entries)", kafka.bootstrap);
    let audit = shutdown
        .race(
            broker,
            AuditWriter::new(
                kafka,
                registry_url,
                &input.audit_topic,
                Stage::Infer.as_str(),
                &writer_instance,
                &shutdown,
            ),
        )
        .await??;
    shutdown.race(broker, audit.schema_registered(&dead_letters)).await??;
    let committer = Committer::new(Arc::new(audit));
    let sink = Sink::new(kafka, "infer-source")?;
    let mut config = SourceConfig::new(&input.group, &[&input.topic], "infer");
    config.checkpoints = input.checkpoints.clone();
    let mut source = Source::open(kafka, config)?;
    let mut failure = None;
    let mut ticking = tokio::spawn(Arc::clone(&committer).tick());
    loop {
        let (message, ack) = tokio::select! {
            biased;
            _ = shutdown.requested() => break,
            e = sink.failed() => { failure = Some(e.into()); break }
            e = committer.audit().failed() => { failure = Some(AuditError::Delivery(e).into()); break }
            stopped = &mut ticking => {
                failure = Some(match stopped {
                    Ok(e) => e.into(),
                    Err(e) => AuditError::Delivery(format!("the committer stopped: {e}")).into(),
                });
                break
            }
            next = source.next() => match next {
                Ok(next) => next,
                Err(e) => { failure = Some(e.into()); break }
            },
        };
        let bytes = message.payload().unwrap_or_default();
        // A registry outage makes the record wait here; a stop request still stops.
        let Ok(decoded) = decode_when_up(&codec, bytes, &shutdown).await else { break };
        match decoded {
            Ok(validated) => {
                let sent = tokio::select! {
                    biased;
                    _ = shutdown.requested() => break,
                    sent = output.send((validated, ack)) => sent,
                };
                if sent.is_err() {
                    break; // infer stopped; its error is the one reported
                }
            }
            Err(e) => {
                if let Err(e) = dead_letter(&sink, &dead_letters, &committer, input, &message, &e, ack).await {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    drop(output);
    ticking.abort();
    if failure.is_none() {
        if let Err(e) = committer.flush().await {
            failure = Some(e.into());
        }
    }
    let closed = source.close(input.drain_timeout).await;
    sink.flush(Duration::from_secs(2));
    if let Some(failure) = failure {
        return Err(failure);
    }
    closed?;
    committer.audit().close(std::collections::HashMap::new()).await?;
    Ok(())
}

/// Decodes, waiting out registry outages until a stop is requested; only a final answer
/// (poison) is returned as the inner error.
async fn decode_when_up(
    codec: &Codec<ValidatedRequest>,
    bytes: &[u8],
    shutdown: &Shutdown,
) -> Result<Result<ValidatedRequest, DecodeError>, Stopped> {
    retry::until_done(
        shutdown,
        || "the schema registry (a record waits for its writer schema)".to_owned(),
        || async {
            match codec.decode(bytes).await {
                Ok(decoded) => Attempt::Done(Ok(decoded.value)),
                Err(e) if e.is_retryable() => Attempt::Retry(e),
                Err(e) => Attempt::Done(Err(e)),
            }
        },
        |e, wait| {
            tracing::warn!(error = %e, ?wait, "schema registry unavailable; the record waits");
            metrics::counter!("streamscore_infer_registry_retries_total").increment(1);
        },
    )
    .await
}

/// A record of the validated topic that can never be read: dead-lettered with its bytes, and
/// the dead letter committed in the audit log.
async fn dead_letter(
    sink: &Sink,
    codec: &Codec<DeadLetter>,
    committer: &Committer,
    input: &ValidatedInput,
    message: &OwnedMessage,
    error: &DecodeError,
    ack: Ack,
) -> Result<(), InferError> {
    let source = SourceOffset::new(message.topic(), message.partition(), message.offset());
    tracing::error!(%source, %error, "unreadable record on the validated topic; dead-lettered");
    metrics::counter!("streamscore_infer_undecodable_validated_total").increment(1);
    let mut dead_letter = DeadLetter {
        lineage: Lineage::derive(source, Stage::Infer, "dead-letter", &input.instance, None, None),
        reason: error.reason(),
        detail: error.to_string(),
        original_key: message.key().map(<[u8]>::to_vec),
        original_value: message.payload().map(<[u8]>::to_vec),
        writer_schema_id: error.schema_id().and_then(|id| i32::try_from(id).ok()),
        original_timestamp_ms: message.timestamp().to_millis(),
        original_value_length: None,
        original_value_sha256: None,
    };
    dead_letter.fit(sink.max_message_bytes());
    let bytes = codec.encode(&dead_letter)?;
    let key = committer.audit().key().await;
    let hash = key.event_hash(&bytes);
    let seal = Seal { hash: &hash, key_id: key.id() };
    sink.send_sealed(&input.dead_letter_topic, message.key().unwrap_or_default(), &bytes, &ack, seal).await?;
    committer.add(vec![(dead_letter.lineage.event_id.clone(), hash)], ack).await?;
    Ok(())
}
