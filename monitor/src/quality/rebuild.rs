//! Filling a new store from the topics: every outcome of the prediction topic and every
//! label of the feedback topic up to their ends as they are at start-up, read without a
//! consumer group. The stage's own group then goes on from its committed offsets; what it
//! reads again is already in the store and changes nothing.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use streamscore_contracts::{Codec, PredictionOutcome};
use streamscore_kafka::{KafkaConfig, Shutdown};
use streamscore_modelstore::ModelStore;
use tokio::sync::mpsc;

use super::join::Quality;
use crate::stage::MonitorError;

/// Records per hand-over from the reading thread.
const CHUNK: usize = 1_000;

/// Reads `topics` from their start to their current ends on a blocking thread, handing
/// chunks of records over `tx`.
fn read(kafka: &KafkaConfig, topics: &[String], tx: &mpsc::Sender<Vec<OwnedMessage>>) -> Result<u64, String> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "streamscore-quality-rebuild")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
        for p in 0..i32::try_from(partitions).unwrap_or(0) {
            let (low, high) =
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map_err(|e| e.to_string())?;
            if high > low {
                assignment.add_partition_offset(topic, p, Offset::Offset(low)).map_err(|e| e.to_string())?;
                ends.push((topic.clone(), p, high));
            }
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let mut read = 0_u64;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut idle_since = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                idle_since = Instant::now();
                let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
                // Records past a partition's end at start-up are applied too: the stage's source
                // reads them again, and they change nothing then.
                if let Some(at) =
                    ends.iter().position(|(t, p, end)| *t == topic && *p == partition && offset + 1 >= *end)
                {
                    ends.swap_remove(at);
                }
                chunk.push(message.detach());
                read += 1;
                if chunk.len() >= CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                    return Ok(read);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None if idle_since.elapsed() > Duration::from_secs(30) => {
                return Err(format!("no record for 30 s with {} partitions not read to their end", ends.len()));
            }
            None => {}
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
    Ok(read)
}

/// Fills `quality`'s store from `predictions_topic` and the feedback topic.
pub async fn rebuild(
    quality: &mut Quality,
    kafka: &KafkaConfig,
    predictions: &Codec<PredictionOutcome>,
    predictions_topic: &str,
    models: &ModelStore,
    shutdown: &Shutdown,
) -> Result<(), MonitorError> {
    let started = Instant::now();
    let topics = vec![predictions_topic.to_owned(), quality.config.feedback_topic.clone()];
    tracing::info!(store = %quality.config.store_dir.display(), ?topics, "quality store is new: rebuilding it from the topics");
    let (tx, mut rx) = mpsc::channel(4);
    let reading = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || read(&kafka, &topics, &tx))
    };
    let mut applied = 0_u64;
    while let Some(chunk) = rx.recv().await {
        for message in chunk {
            if message.topic() == predictions_topic {
                let bytes = message.payload().unwrap_or_default();
                let decoded = crate::stage::decode_when_up(predictions, bytes, predictions_topic, shutdown).await?;
                if let Some(outcome) = decoded {
                    quality.on_prediction(&outcome, models)?;
                }
            } else {
                quality.on_feedback(&message, None, shutdown).await?;
            }
            applied += 1;
        }
        quality.commit()?;
    }
    let read = reading
        .await
        .map_err(|e| MonitorError::Quality(format!("rebuild reader panicked: {e}")))?
        .map_err(|e| MonitorError::Quality(format!("rebuilding the quality store from the topics: {e}")))?;
    quality.store_mut().set_rebuilt()?;
    quality.commit()?;
    tracing::info!(read, applied, seconds = started.elapsed().as_secs_f64(), "quality store rebuilt");
    Ok(())
}
