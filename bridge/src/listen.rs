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
//! - **Only the pipeline's outcomes.** Anyone who can write the predictions topic can write an
//!   outcome with a caller's request id and `reply_to`. The stages seal every outcome they
//!   commit (the `streamscore-mac` header: the HMAC of the record's value under the audit key,
//!   as its audit-log commitment lists it); the listener hands a caller only an outcome whose
//!   seal verifies under the bridge's own audit key and that names the caller's tenant. Any
//!   other is skipped, counted (`streamscore_bridge_unauthenticated_outcomes_total{reason}`)
//!   and logged ([`Refused`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use streamscore_contracts::audit::AuditKey;
use streamscore_contracts::{Codec, PredictionOutcome};
use streamscore_kafka::sink::{KEY_ID_HEADER, MAC_HEADER};
use streamscore_kafka::KafkaConfig;

use crate::waiters::{Completion, Waiters};

/// Nobody waiting for this long: stop fetching.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// What the listener needs.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub kafka: KafkaConfig,
    pub predictions_topic: String,
    /// This instance's `reply_to`.
    pub instance: String,
    /// The audit key the stages seal their outcomes with.
    pub audit_key: AuditKey,
}

/// Why an outcome addressed to this instance was not handed to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `streamscore-mac` header: not written by a stage.
    Missing,
    /// Sealed under another audit key than the bridge's (`streamscore-key-id` differs).
    WrongKey,
    /// The seal does not match the record's bytes under the bridge's key.
    BadMac,
    /// Sealed, but for another tenant than the caller waiting on its request id.
    WrongTenant,
}

impl Refused {
    pub const ALL: [Refused; 4] = [Refused::Missing, Refused::WrongKey, Refused::BadMac, Refused::WrongTenant];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Missing => "missing",
            Refused::WrongKey => "wrong_key",
            Refused::BadMac => "bad_mac",
            Refused::WrongTenant => "wrong_tenant",
        }
    }
}

/// Checks a record's seal: its MAC header (`mac`) against the HMAC of its `value` under `key`,
/// compared in constant time, and its key id header (`key_id`) against the key's.
pub fn verify_seal(key: &AuditKey, value: &[u8], mac: Option<&[u8]>, key_id: Option<&[u8]>) -> Result<(), Refused> {
    let mac = mac.ok_or(Refused::Missing)?;
    if key_id.is_some_and(|id| id != key.id().as_bytes()) {
        return Err(Refused::WrongKey);
    }
    if constant_time_eq(mac, key.event_hash(value).as_bytes()) {
        Ok(())
    } else {
        Err(Refused::BadMac)
    }
}

/// Equal slices, in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The seal headers of a record: (MAC, key id).
pub(crate) fn seal_of<'a>(message: &'a rdkafka::message::BorrowedMessage<'_>) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let Some(headers) = message.headers() else { return (None, None) };
    let mut seal = (None, None);
    for header in headers.iter() {
        match header.key {
            MAC_HEADER => seal.0 = header.value,
            KEY_ID_HEADER => seal.1 = header.value,
            _ => {}
        }
    }
    seal
}

/// How often each kind of refusal is logged at most; the metric counts every one.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Refused outcomes: counted each, logged at most once per [`LOG_EVERY`] per reason with the
/// number since the last line.
#[derive(Debug, Default)]
struct Refusals {
    /// Per reason (in [`Refused::ALL`]'s order): when it was last logged, refusals since.
    logged: [(Option<Instant>, u64); 4],
}

impl Refusals {
    fn emit(&mut self, reason: Refused, key: &AuditKey, message: &rdkafka::message::BorrowedMessage<'_>) {
        metrics::counter!("streamscore_bridge_unauthenticated_outcomes_total", "reason" => reason.label()).increment(1);
        let (last, since) = &mut self.logged[reason as usize];
        *since += 1;
        if last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        let count = std::mem::take(since);
        *last = Some(Instant::now());
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match reason {
            Refused::WrongKey => {
                let theirs = seal_of(message).1.map(String::from_utf8_lossy).unwrap_or_default();
                tracing::error!(
                    topic, partition, offset, count, sealed_with = %theirs, ours = key.id(),
                    "outcomes addressed to this bridge are sealed with another audit key than the bridge's, so \
                     their callers get no answer: give the bridge the same audit key as the stages \
                     (STREAMSCORE_AUDIT_KEY_FILE or STREAMSCORE_AUDIT_KEY, as in the stack's stack.env)",
                );
            }
            Refused::WrongTenant => tracing::warn!(
                topic,
                partition,
                offset,
                count,
                "an outcome for a waiting request names another tenant than its caller's; skipped \
                 (someone wrote a request with this bridge's request id and reply_to)",
            ),
            Refused::Missing | Refused::BadMac => tracing::warn!(
                topic,
                partition,
                offset,
                count,
                reason = reason.label(),
                "an outcome addressed to this bridge is not sealed by the pipeline; skipped \
                 (something other than the stages writes the predictions topic, or the stages are older \
                 than the bridge: upgrade them first)",
            ),
        }
    }
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

/// The partitions of `topic` (at least one), as the broker's metadata names them.
pub(crate) fn partitions_of(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<i32>, String> {
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
    Ok(partitions)
}

/// Assigns every partition at its high watermark.
fn position_at_end(consumer: &BaseConsumer, topic: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    let mut assignment = TopicPartitionList::new();
    for partition in partitions_of(consumer, topic, timeout)? {
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
    let mut refusals = Refusals::default();
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
                let (mac, key_id) = seal_of(&message);
                if let Err(reason) = verify_seal(&config.audit_key, bytes, mac, key_id) {
                    refusals.emit(reason, &config.audit_key, &message);
                    continue;
                }
                match waiters.complete(&request_id, outcome) {
                    Completion::Handed | Completion::Kept => {}
                    Completion::WrongTenant => refusals.emit(Refused::WrongTenant, &config.audit_key, &message),
                    Completion::Unclaimed => {
                        metrics::counter!("streamscore_bridge_unclaimed_outcomes_total").increment(1);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_seal_made_with_the_bridges_key_over_these_bytes_verifies() {
        let key = AuditKey::new(b"0123456789abcdef0123456789abcdef");
        let other = AuditKey::new(b"another key, as long as the first");
        let value = b"an outcome's record bytes";
        let mac = key.event_hash(value);
        let id = key.id().as_bytes();
        assert_eq!(verify_seal(&key, value, Some(mac.as_bytes()), Some(id)), Ok(()));
        assert_eq!(verify_seal(&key, value, Some(mac.as_bytes()), None), Ok(()), "the MAC decides");
        assert_eq!(verify_seal(&key, value, None, Some(id)), Err(Refused::Missing));
        assert_eq!(verify_seal(&key, value, None, None), Err(Refused::Missing));
        let theirs = other.event_hash(value);
        assert_eq!(
            verify_seal(&key, value, Some(theirs.as_bytes()), Some(other.id().as_bytes())),
            Err(Refused::WrongKey)
        );
        assert_eq!(verify_seal(&key, value, Some(theirs.as_bytes()), Some(id)), Err(Refused::BadMac));
        assert_eq!(verify_seal(&key, b"other bytes", Some(mac.as_bytes()), Some(id)), Err(Refused::BadMac));
        assert_eq!(verify_seal(&key, value, Some(&mac.as_bytes()[..31]), Some(id)), Err(Refused::BadMac));
        assert_eq!(verify_seal(&key, value, Some(mac.to_uppercase().as_bytes()), Some(id)), Err(Refused::BadMac));
    }

    #[test]
    fn reasons_are_the_catalogs_labels() {
        let labels: Vec<&str> = Refused::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, ["missing", "wrong_key", "bad_mac", "wrong_tenant"]);
        for (i, reason) in Refused::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "Refusals indexes by discriminant");
        }
    }
}
