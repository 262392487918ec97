//! Infer deployed on its own: validated requests from the `inference.validated` topic, with
//! the same at-least-once rule (an offset is stored once its prediction is acknowledged).

use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use streamscore_contracts::{Codec, ValidatedRequest};
use streamscore_kafka::{Ack, KafkaConfig, OffsetTracker};
use tokio::sync::mpsc;

use crate::stage::InferError;

/// Consumes `topic` as group `group` and hands each validated request to `output` until
/// `shutdown` resolves; then waits (bounded) for outstanding acknowledgements and commits.
pub async fn consume_validated(
    kafka: &KafkaConfig,
    registry_url: &str,
    topic: &str,
    group: &str,
    output: mpsc::Sender<(ValidatedRequest, Ack)>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), InferError> {
    let consumer: StreamConsumer = kafka.stage_consumer_config(group).create()?;
    consumer.subscribe(&[topic])?;
    let codec = Codec::<ValidatedRequest>::with_url(registry_url, topic);
    let (ack_tx, mut acks) = mpsc::unbounded_channel();
    let mut tracker = OffsetTracker::default();
    let store = |tracker: &mut OffsetTracker, partition: i32, offset: i64| {
        if let Some(safe) = tracker.done(partition, offset) {
            let _ = consumer.store_offset(topic, partition, safe);
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some((partition, offset)) = acks.recv() => store(&mut tracker, partition, offset),
            message = consumer.recv() => {
                let message = message?;
                let (partition, offset) = (message.partition(), message.offset());
                tracker.begin(partition, offset);
                let ack = Ack::new(partition, offset, ack_tx.clone());
                match codec.decode(message.payload().unwrap_or_default()).await {
                    Ok(decoded) => {
                        if output.send((decoded.value, ack)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        // Our own topic: a record that does not decode is a bug upstream. Say so
                        // loudly and move on rather than stall the partition.
                        tracing::error!(partition, offset, error = %e, "undecodable record on the validated topic; skipped");
                        metrics::counter!("streamscore_infer_undecodable_validated_total").increment(1);
                        ack.done();
                    }
                }
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tracker.in_flight() > 0 {
        match tokio::time::timeout_at(deadline, acks.recv()).await {
            Ok(Some((partition, offset))) => store(&mut tracker, partition, offset),
            _ => break,
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
}
