//! The registry's durable state: an append-only Kafka topic (like Confluent's `_schemas`),
//! read from the beginning at start-up and tailed while serving.
//!
//! A write appends records, then waits until the tailing reader has applied them, so a
//! client that got a reply reads its own write, and the state is always what the topic says.
//! Writes of one instance are serialized by [`Store::write_lock`]. Run one registry instance
//! per topic: instances do not elect a leader, so two writers could allocate the same id.
//!
//! The reader also checks, every [`TOPIC_CHECK_EVERY`], that the topic is still there. Gone
//! (deleted: on tansu 0.6 deleting any topic deletes them all), the store says so once, stops
//! reading (a topic made again under the same name holds other offsets) and keeps serving
//! what it holds: reads, and registrations of schemas it already has, answer as before;
//! writes are refused with 50001 saying why and what to do.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use streamscore_kafka::{ensure_topics, KafkaConfig, KafkaError, TopicSpec};
use tokio::sync::{watch, Mutex, MutexGuard};

use crate::error::ApiError;
use crate::state::{LogRecord, State};

/// How long a write waits for its records to be acknowledged and applied.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long start-up waits to read the topic to its end.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the reader checks that the topic still exists (one metadata request).
pub const TOPIC_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("registry topic {topic}: {source}")]
    Topic { topic: String, source: rdkafka::error::KafkaError },
    #[error(
        "registry topic {topic} was not read to its end (offset {high}) within {CATCH_UP_TIMEOUT:?}; reached {reached}"
    )]
    CatchUp { topic: String, high: i64, reached: i64 },
}

/// Registry state backed by a Kafka topic.
pub struct Store {
    topic: String,
    state: Arc<RwLock<State>>,
    producer: FutureProducer,
    applied: watch::Receiver<i64>,
    write_lock: Mutex<()>,
    /// The offset after the last record this store wrote (acknowledged by the broker), applied
    /// or not: writes are planned only once the state has caught up with it.
    written: AtomicI64,
    write_timeout: Duration,
    /// Tests only: the reader stops applying records while set.
    hold: Arc<AtomicBool>,
    /// Why the topic is gone, once the reader found it gone.
    lost: Arc<OnceLock<String>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens the store on `topic` (created if missing), reading it to its end before returning.
    pub async fn open(kafka: &KafkaConfig, topic: &str) -> Result<Self, StoreError> {
        ensure_topics(kafka, &[TopicSpec::state(topic)]).await?;
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", format!("streamscore-registry-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|source| StoreError::Topic { topic: topic.to_owned(), source })?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|source| StoreError::Topic { topic: topic.to_owned(), source })?;
        consumer.assign(&assignment).map_err(|source| StoreError::Topic { topic: topic.to_owned(), source })?;
        let (_, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .map_err(|source| StoreError::Topic { topic: topic.to_owned(), source })?;

        let state = Arc::new(RwLock::new(State::default()));
        let (applied_tx, applied) = watch::channel(0_i64);
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(OnceLock::new());
        let reader = {
            let state = Arc::clone(&state);
            let reader = Reader { stop: Arc::clone(&stop), hold: Arc::clone(&hold), lost: Arc::clone(&lost) };
            let topic = topic.to_owned();
            std::thread::Builder::new()
                .name("registry-reader".to_owned())
                .spawn(move || tail(&consumer, &topic, &state, &applied_tx, &reader))
                .map_err(|e| {
                    StoreError::Kafka(KafkaError::CreateTopic {
                        topic: "reader thread".to_owned(),
                        reason: e.to_string(),
                    })
                })?
        };
        let mut store = Self {
            topic: topic.to_owned(),
            state,
            producer: kafka.producer()?,
            applied,
            write_lock: Mutex::new(()),
            written: AtomicI64::new(0),
            write_timeout: WRITE_TIMEOUT,
            hold,
            lost,
            stop,
            reader: Some(reader),
        };
        if let Err(reached) = store.wait_applied(high, CATCH_UP_TIMEOUT).await {
            store.shutdown();
            return Err(StoreError::CatchUp { topic: topic.to_owned(), high, reached });
        }
        tracing::info!(topic, records = high, "registry state loaded");
        Ok(store)
    }

    /// The current state, for reads and for planning writes.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serializes writers: plan under this guard, then [`Store::append`]. The guard is given
    /// only once every record this store wrote is applied, so a write is never planned on
    /// stale state: after a 50002 (a record acknowledged but not applied in time) the next
    /// writer waits for it, or gets a 50002 itself, rather than hand out that record's id
    /// again to another schema.
    pub async fn writer(&self) -> Result<MutexGuard<'_, ()>, ApiError> {
        let guard = self.write_lock.lock().await;
        let written = self.written.load(Ordering::SeqCst);
        self.wait_applied(written, self.write_timeout).await.map_err(|reached| {
            ApiError::timeout(format!(
                "an earlier write (up to offset {written}) is not applied yet (at {reached}); no write is planned on stale state"
            ))
        })?;
        Ok(guard)
    }

    /// How long a write waits to be acknowledged and applied (default 15 s).
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    /// Tests only: while `on`, the reader applies nothing (a registry whose reads lag its writes).
    #[doc(hidden)]
    pub fn hold_applying(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }

    /// Why the store's topic is gone, if the reader found it gone (the store then serves what
    /// it holds and refuses writes).
    pub fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    /// Appends records and waits until they are applied to the state.
    pub async fn append(&self, records: &[LogRecord]) -> Result<(), ApiError> {
        if let Some(lost) = self.lost() {
            return Err(ApiError::store(format!("{lost}; this registry refuses writes until then")));
        }
        let mut last = None;
        for record in records {
            let key = serde_json::to_vec(&record.key).map_err(ApiError::store)?;
            let mut message = FutureRecord::<Vec<u8>, str>::to(&self.topic).key(&key).partition(0);
            if let Some(value) = &record.value {
                message = message.payload(value.as_str());
            }
            let delivery =
                self.producer.send(message, self.write_timeout).await.map_err(|(e, _)| ApiError::store(e))?;
            self.written.fetch_max(delivery.offset + 1, Ordering::SeqCst);
            last = Some(delivery.offset);
        }
        if let Some(offset) = last {
            self.wait_applied(offset + 1, self.write_timeout).await.map_err(|reached| {
                ApiError::timeout(format!("record at offset {offset} not applied yet (at {reached})"))
            })?;
        }
        Ok(())
    }

    /// Waits until every record before `next` is applied; on timeout returns how far it got.
    async fn wait_applied(&self, next: i64, timeout: Duration) -> Result<(), i64> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|&a| a >= next)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(*self.applied.borrow()),
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("topic", &self.topic)
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the reader thread shares with the store.
struct Reader {
    stop: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    lost: Arc<OnceLock<String>>,
}

/// Applies every record of the topic, in order, until told to stop or the topic is gone.
fn tail(consumer: &BaseConsumer, topic: &str, state: &RwLock<State>, applied: &watch::Sender<i64>, reader: &Reader) {
    let mut checked = Instant::now();
    while !reader.stop.load(Ordering::Relaxed) {
        if checked.elapsed() >= TOPIC_CHECK_EVERY {
            checked = Instant::now();
            if let Some(gone) = topic_gone(consumer, topic) {
                let subjects = state.read().unwrap_or_else(PoisonError::into_inner).subjects(false).len();
                let reason = format!(
                    "the registry's topic {topic} is gone from the broker ({gone}); restore it and restart the \
                     registry, or restart it to start empty (then register the schemas again)"
                );
                tracing::error!(
                    topic,
                    subjects,
                    "{reason}. Serving the {subjects} subjects it holds from memory: reads and registrations of \
                     known schemas answer, writes are refused"
                );
                let _ = reader.lost.set(reason);
                return;
            }
        }
        if reader.hold.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let key = message.key().unwrap_or_default();
                state.write().unwrap_or_else(PoisonError::into_inner).apply(key, message.payload());
                applied.send_replace(message.offset() + 1);
            }
            Some(Err(e)) => {
                tracing::warn!(topic, error = %e, "reading the registry topic");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Why `topic` is gone, if the broker says it is (a broker that does not answer says nothing).
fn topic_gone(consumer: &BaseConsumer, topic: &str) -> Option<String> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        None => Some("the broker no longer lists it".to_owned()),
        Some(t) => match t.error() {
            Some(e) => {
                let code = rdkafka::types::RDKafkaErrorCode::from(e);
                (code == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
                    .then(|| format!("the broker says: {code}"))
            }
            None if t.partitions().is_empty() => Some("the broker lists it without partitions".to_owned()),
            None => None,
        },
    }
}
