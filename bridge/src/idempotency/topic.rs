//! The kept answers on Kafka (`bridge.idempotency`), so a retry after a restart, or to another
//! instance, gets the first answer and publishes nothing.
//!
//! - **Written when kept.** [`Journal::write`] produces one `IdempotentAnswer` per kept answer
//!   (Confluent-framed, subject `<topic>-value`), keyed by the hex [`super::key_hash`] (never the
//!   caller's key) and sealed like the stages' outputs: the `streamscore-mac` header is the HMAC
//!   of the value under the audit key, `streamscore-key-id` names the key. The caller's answer
//!   waits for the broker's acknowledgement at most [`WRITE_WAIT`]; a record not acknowledged is
//!   logged and counted (`streamscore_bridge_idempotency_write_failures_total{reason}`), and
//!   only this instance knows the answer: a retry after a restart, or to another instance,
//!   publishes again.
//! - **Read back at start, then followed.** [`spawn`] reads the topic from its first offset to
//!   the ends it had when the reader started; until then the store answers
//!   [`super::Begin::Loading`] (the bridge is not ready and answers 503 `IDEMPOTENCY_LOADING`).
//!   It then keeps reading, so an answer kept by another instance is known here within about
//!   [`FETCH_WAIT_MS`]. No consumer group is joined (the partitions are assigned) and nothing is
//!   committed. Answers older than [`super::TTL`] by the record's timestamp or its `kept_at`,
//!   whichever is older, are skipped.
//! - **Only the bridges' answers.** A record whose seal does not verify under the bridge's audit
//!   key (anyone who can write the topic could write one) is never handed to a caller: it is
//!   skipped, counted (`streamscore_bridge_idempotency_refused_total{reason}`) and logged, as
//!   is a record that does not decode.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use streamscore_contracts::audit::AuditKey;
use streamscore_contracts::{Codec, IdempotentAnswer};
use streamscore_kafka::sink::{KEY_ID_HEADER, MAC_HEADER};
use streamscore_kafka::{KafkaConfig, Shutdown, TopicSpec};

use super::{Answer, Idempotency, Kept};
use crate::listen::{partitions_of, seal_of, verify_seal};

/// How long a caller's answer waits for the broker to acknowledge its record.
pub const WRITE_WAIT: Duration = Duration::from_millis(500);
/// How long a fetch of the topic waits for records: an answer kept by another instance is
/// known here within about this long, and the broker answers each bridge about twice a second
/// while idle (the rollouts follower's figure).
pub const FETCH_WAIT_MS: &str = "500";

/// Writes kept answers to the topic.
pub struct Journal {
    topic: String,
    producer: FutureProducer,
    codec: Arc<Codec<IdempotentAnswer>>,
    key: AuditKey,
    instance: String,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Journal {
    /// A journal producing with `producer`; `codec` is registered by the reader ([`spawn`])
    /// before any call with a key is served.
    pub fn new(
        topic: &str,
        producer: FutureProducer,
        codec: Arc<Codec<IdempotentAnswer>>,
        key: AuditKey,
        instance: &str,
    ) -> Self {
        Self { topic: topic.to_owned(), producer, codec, key, instance: instance.to_owned() }
    }

    /// Writes `answer`, waiting at most [`WRITE_WAIT`] for the broker's acknowledgement; a
    /// failure is logged and counted, never the caller's.
    pub async fn write(&self, answer: &Answer) {
        let record = IdempotentAnswer {
            key_sha256: streamscore_contracts::hex(&answer.key),
            request_sha256: streamscore_contracts::hex(&answer.fingerprint),
            status: i32::from(answer.kept.status),
            content_type: answer.kept.content_type.clone(),
            body: answer.kept.body.to_vec(),
            kept_at: answer.at,
            instance: self.instance.clone(),
        };
        let bytes = match self.codec.encode(&record) {
            Ok(bytes) => bytes,
            Err(e) => return write_failed("encode", &self.topic, &e),
        };
        let mac = self.key.event_hash(&bytes);
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header { key: MAC_HEADER, value: Some(&mac) })
            .insert(Header { key: KEY_ID_HEADER, value: Some(self.key.id()) });
        let record =
            FutureRecord::to(&self.topic).key(record.key_sha256.as_bytes()).payload(bytes.as_slice()).headers(headers);
        let delivery = match streamscore_kafka::produce::enqueue(&self.producer, record).await {
            Ok(delivery) => delivery,
            Err(e) => return write_failed("enqueue", &self.topic, &e),
        };
        // The delivery is followed to its end even when the caller has its answer first.
        let topic = self.topic.clone();
        let (done, acknowledged) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => write_failed("delivery", &topic, &e),
                Err(_) => write_failed("delivery", &topic, &"the producer dropped the record"),
            }
            let _ = done.send(());
        });
        if tokio::time::timeout(WRITE_WAIT, acknowledged).await.is_err() {
            tracing::debug!(topic = self.topic, "a kept answer not acknowledged yet; answering the caller");
        }
    }
}

fn write_failed(reason: &'static str, topic: &str, error: &dyn std::fmt::Display) {
    metrics::counter!("streamscore_bridge_idempotency_write_failures_total", "reason" => reason).increment(1);
    tracing::warn!(
        topic,
        reason,
        error = %error,
        "a kept answer was not written to the idempotency topic: only this instance knows it, and a retry \
         after a restart or to another instance publishes again",
    );
}

/// What the reader needs.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    pub kafka: KafkaConfig,
    pub topic: String,
    /// The audit key the records are sealed with (the bridge's).
    pub audit_key: AuditKey,
}

/// The topic as the bridge makes it when it is missing: one partition, compacted, 24 h.
pub fn topic_spec(topic: &str) -> TopicSpec {
    TopicSpec::expiring(topic, 1, streamscore_kafka::topics::IDEMPOTENCY_RETENTION)
}

/// Reads the topic into `store` on its own thread, marks it loaded once read to the ends it had
/// at start, and follows it until `shutdown`. A broker or registry not answering is retried
/// every second.
pub fn spawn(
    config: FollowConfig,
    codec: Arc<Codec<IdempotentAnswer>>,
    store: Idempotency,
    shutdown: Shutdown,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, shutdown) = (Arc::clone(&stop), shutdown.clone());
        runtime.spawn(async move {
            shutdown.requested().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let reader = Reader { config, codec, store, shutdown, stop, runtime };
    std::thread::Builder::new().name("bridge-idempotency".to_owned()).spawn(move || reader.run())
}

struct Reader {
    config: FollowConfig,
    codec: Arc<Codec<IdempotentAnswer>>,
    store: Idempotency,
    shutdown: Shutdown,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

/// Why a setup did not finish.
enum SetupError {
    Stopped,
    Failed(String),
}

impl Reader {
    fn run(self) {
        let started = Instant::now();
        metrics::gauge!("streamscore_bridge_idempotency_loaded").set(0.0);
        let (consumer, mut ends) = loop {
            match self.setup() {
                Ok(set) => break set,
                Err(SetupError::Stopped) => return,
                Err(SetupError::Failed(e)) => {
                    tracing::warn!(topic = self.config.topic, error = %e, "cannot read the idempotency topic yet; calls with a key get 503 until it is read; retrying in 1 s");
                    for _ in 0..10 {
                        if self.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        };
        let mut refusals = Refusals::default();
        let mut read = 0_u64;
        while !self.stop.load(Ordering::Relaxed) {
            if !self.store.is_loaded() && ends.is_empty() {
                self.store.set_loaded();
                metrics::gauge!("streamscore_bridge_idempotency_loaded").set(1.0);
                tracing::info!(
                    topic = self.config.topic,
                    records = read,
                    answers = self.store.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "the kept answers are read back; calls with a key are served",
                );
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    if ends.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
                        ends.remove(&message.partition());
                    }
                    read += 1;
                    self.take(&message, &mut refusals);
                }
                Some(Err(e)) => tracing::warn!(topic = self.config.topic, error = %e, "reading the idempotency topic"),
                // Records at the end may be gone (compacted, deleted): the position says.
                None if !ends.is_empty() => {
                    if let Ok(positions) = consumer.position() {
                        for element in positions.elements() {
                            if let Offset::Offset(at) = element.offset() {
                                if ends.get(&element.partition()).is_some_and(|end| at >= *end) {
                                    ends.remove(&element.partition());
                                }
                            }
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// Makes the topic if missing, registers the contract, and assigns every partition from its
    /// start; returns the consumer and, per partition with records, its end at start.
    fn setup(&self) -> Result<(BaseConsumer, HashMap<i32, i64>), SetupError> {
        let topic = &self.config.topic;
        let waiting = || format!("the broker and registry (the idempotency topic {topic})");
        let race = |result: Result<Result<(), String>, streamscore_kafka::Stopped>| match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SetupError::Failed(e)),
            Err(_) => Err(SetupError::Stopped),
        };
        race(self.runtime.block_on(self.shutdown.race(waiting, async {
            streamscore_kafka::ensure_topics(&self.config.kafka, &[topic_spec(topic)])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })))?;
        race(self.runtime.block_on(
            self.shutdown.race(waiting, async { self.codec.register().await.map(|_| ()).map_err(|e| e.to_string()) }),
        ))?;
        let failed = |what: &str, e: rdkafka::error::KafkaError| SetupError::Failed(format!("{what}: {e}"));
        let mut client = self.config.kafka.client_config();
        client
            // Required by librdkafka for a consumer; no group is joined (assign, never
            // subscribe) and nothing is committed.
            .set("group.id", format!("streamscore-bridge-idempotency-{}", uuid::Uuid::new_v4().simple()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT_MS);
        for (key, value) in &self.config.kafka.overrides {
            client.set(key, value);
        }
        let consumer: BaseConsumer = client.create().map_err(|e| failed("creating the consumer", e))?;
        let timeout = Duration::from_secs(5);
        let partitions = partitions_of(&consumer, topic, timeout).map_err(SetupError::Failed)?;
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            let (low, high) =
                consumer.fetch_watermarks(topic, partition, timeout).map_err(|e| failed("watermarks", e))?;
            if high > low {
                ends.insert(partition, high);
            }
            assignment.add_partition_offset(topic, partition, Offset::Beginning).map_err(|e| failed("assigning", e))?;
        }
        consumer.assign(&assignment).map_err(|e| failed("assigning", e))?;
        Ok((consumer, ends))
    }

    /// Keeps the answer a record holds, if its seal verifies and it decodes.
    fn take(&self, message: &BorrowedMessage<'_>, refusals: &mut Refusals) {
        let Some(bytes) = message.payload() else { return }; // a tombstone
        let (mac, key_id) = seal_of(message);
        if let Err(reason) = verify_seal(&self.config.audit_key, bytes, mac, key_id) {
            return refusals.emit(reason.label(), message);
        }
        let decoded = match self.codec.decode_cached(bytes) {
            Ok(decoded) => Ok(decoded),
            // An id this process has not seen yet: one registry lookup, then cached.
            Err(_) => self.runtime.block_on(self.codec.decode(bytes)),
        };
        let Ok(record) = decoded.map(|d| d.value) else { return refusals.emit("undecodable", message) };
        let key = streamscore_contracts::sha256_from_hex(&record.key_sha256);
        let fingerprint = streamscore_contracts::sha256_from_hex(&record.request_sha256);
        let (Some(key), Some(fingerprint), Ok(status)) = (key, fingerprint, u16::try_from(record.status)) else {
            return refusals.emit("undecodable", message);
        };
        // The older of the two times: a sealed record written again later does not live longer.
        let appended = message.timestamp().to_millis().map(|ms| ms.saturating_mul(1000));
        let at = appended.map_or(record.kept_at, |t| t.min(record.kept_at));
        let kept = Kept { status, content_type: record.content_type, body: record.body.into() };
        self.store.learn(Answer { key, fingerprint, kept, at });
    }
}

/// How often each kind of refusal is logged at most; the metric counts every one.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Records not kept: counted each, logged at most once per [`LOG_EVERY`] per reason with the
/// number since the last line.
#[derive(Debug, Default)]
struct Refusals {
    logged: HashMap<&'static str, (Option<Instant>, u64)>,
}

impl Refusals {
    fn emit(&mut self, reason: &'static str, message: &BorrowedMessage<'_>) {
        metrics::counter!("streamscore_bridge_idempotency_refused_total", "reason" => reason).increment(1);
        let (last, since) = self.logged.entry(reason).or_default();
        *since += 1;
        if last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        let count = std::mem::take(since);
        *last = Some(Instant::now());
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            count,
            reason,
            "a record of the idempotency topic is not a bridge's sealed answer; skipped, never replayed \
             (something other than a bridge writes the topic, or a bridge has another audit key)",
        );
    }
}
