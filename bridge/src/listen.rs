//! The predictions listener: reads the predictions topic from its end and hands each outcome
//! addressed to this instance (`reply_to`) to its waiting caller.
//!
//! - **From the end.** The listener assigns every partition at its high watermark when it
//!   starts reading, so a restarted bridge never hands old outcomes to new callers. It uses no
//!   consumer group and commits nothing.
//! - **Only while wanted.** With nobody waiting for a second, it unassigns the partitions and
//!   the broker sees no fetches at all; the next caller wakes it, and publishes only once the
//!   listener is positioned again (see [`crate::waiters`]).
//! - **Several instances.** Each instance has its own `reply_to` id and reads every partition
//!   of the predictions topic, dropping outcomes addressed to others. That costs each instance
//!   a read of the whole topic while it has callers; see the README for when a reply topic per
//!   instance is the better design.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use streamscore_contracts::{Codec, PredictionOutcome};
use streamscore_kafka::KafkaConfig;

use crate::waiters::Waiters;

/// Nobody waiting for this long: stop fetching.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// What the listener needs.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub kafka: KafkaConfig,
    pub predictions_topic: String,
    /// This instance's `reply_to`.
    pub instance: String,
}

/// Runs the listener on its own thread until `stop` is set.
pub fn spawn(
    config: ListenConfig,
    codec: Arc<Codec<PredictionOutcome>>,
    waiters: Arc<Waiters>,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("bridge-listener".to_owned()).spawn(move || {
        if let Err(e) = run(&config, &codec, &waiters, &stop, &runtime) {
            tracing::error!(error = %e, "the predictions listener stopped");
        }
    })
}

fn consumer(config: &ListenConfig) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    let mut client = config.kafka.client_config();
    client
        // Required by librdkafka for a consumer; no group is joined (assign, never subscribe)
        // and nothing is committed.
        .set("group.id", format!("streamscore-bridge-{}", config.instance))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", streamscore_kafka::config::FETCH_WAIT_MAX_MS)
        .set("fetch.min.bytes", "1");
    for (key, value) in &config.kafka.overrides {
        client.set(key, value);
    }
    client.create()
}

/// Assigns every partition at its high watermark.
fn position_at_end(consumer: &BaseConsumer, topic: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions (does it exist?)"));
    }
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| format!("end of {topic}/{partition}: {e}"))?;
        assignment.add_partition_offset(topic, partition, Offset::Offset(high)).map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| format!("assigning {topic}: {e}"))
}

fn run(
    config: &ListenConfig,
    codec: &Codec<PredictionOutcome>,
    waiters: &Waiters,
    stop: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    let consumer = consumer(config).map_err(|e| format!("creating the predictions consumer: {e}"))?;
    let mut live = false;
    let mut idle_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if !live {
            if !waiters.wait_until_wanted(Duration::from_millis(200)) {
                continue;
            }
            match position_at_end(&consumer, &config.predictions_topic) {
                Ok(()) => {
                    live = true;
                    idle_since = None;
                    waiters.set_live();
                    metrics::gauge!("streamscore_bridge_listening").set(1.0);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot position the predictions listener; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            continue;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let Some(bytes) = message.payload() else { continue };
                let outcome = match codec.decode_cached(bytes) {
                    Ok(decoded) => decoded.value,
                    // An id this process has not seen yet: one registry lookup, then cached.
                    Err(_) => match runtime.block_on(codec.decode(bytes)) {
                        Ok(decoded) => decoded.value,
                        Err(e) => {
                            tracing::warn!(
                                topic = message.topic(),
                                partition = message.partition(),
                                offset = message.offset(),
                                error = %e,
                                "a prediction the bridge cannot decode; skipped",
                            );
                            continue;
                        }
                    },
                };
                if outcome.shadow || outcome.reply_to.as_deref() != Some(config.instance.as_str()) {
                    continue;
                }
                let Some(request_id) = outcome.lineage.request_id.clone() else { continue };
                if !waiters.complete(&request_id, outcome) {
                    metrics::counter!("streamscore_bridge_unclaimed_outcomes_total").increment(1);
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "reading predictions"),
            None => {}
        }
        if waiters.wanted() {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= IDLE_AFTER && waiters.go_idle() {
            if let Err(e) = consumer.unassign() {
                tracing::warn!(error = %e, "unassigning the predictions topic");
            }
            live = false;
            metrics::gauge!("streamscore_bridge_listening").set(0.0);
        }
    }
    Ok(())
}
