//! Infer deployed on its own: validated requests from the `inference.validated` topic through
//! the at-least-once [`Source`] (an offset is stored once its prediction is acknowledged).
//!
//! The same two rules as everywhere: a record the registry cannot resolve *now* waits (never
//! acknowledged, never dead-lettered); a record that can never be read is poison and goes to
//! the dead-letter topic with its reason and original bytes, then its offset moves on.

use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use streamscore_contracts::{Codec, DeadLetter, DecodeError, Lineage, SourceOffset, Stage, ValidatedRequest};
use streamscore_kafka::retry::{self, Attempt};
use streamscore_kafka::{Ack, KafkaConfig, Shutdown, Sink, Source, SourceConfig, Stopped};
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
    let sink = Sink::new(kafka, "infer-source")?;
    let mut config = SourceConfig::new(&input.group, &[&input.topic], "infer");
    config.checkpoints = input.checkpoints.clone();
    let mut source = Source::open(kafka, config)?;
    let mut failure = None;
    loop {
        let (message, ack) = tokio::select! {
            biased;
            _ = shutdown.requested() => break,
            e = sink.failed() => { failure = Some(e.into()); break }
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
                if let Err(e) = dead_letter(&sink, &dead_letters, input, &message, &e, ack).await {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    drop(output);
    let closed = source.close(input.drain_timeout).await;
    sink.flush(Duration::from_secs(2));
    if let Some(failure) = failure {
        return Err(failure);
    }
    closed?;
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

/// A record of the validated topic that can never be read: dead-lettered with its bytes.
async fn dead_letter(
    sink: &Sink,
    codec: &Codec<DeadLetter>,
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
    sink.send(&input.dead_letter_topic, message.key().unwrap_or_default(), &bytes, &ack).await?;
    ack.done();
    Ok(())
}
