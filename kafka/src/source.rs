//! The at-least-once source every stage reads through: consume, hand out `(record, Ack)`,
//! track offsets, store and commit.
//!
//! - **Offsets.** A record's offset is stored only once it and every record before it on its
//!   partition are finished ([`Ack`]); see [`OffsetTracker`].
//! - **In-flight bound.** At most `max_in_flight` records are handed out and unfinished; past
//!   that, [`Source::next`] waits for acknowledgements.
//! - **The consumer is always polled.** A background task polls it and hands batches over a
//!   small channel. A stage that falls behind is simply waited for (librdkafka stops
//!   fetching once its own queue is full); one that has taken nothing for 2 s (waiting out a
//!   registry outage) gets its partitions paused while the task keeps polling, so the member
//!   stays in its group and rebalances are served; they resume once the stage has drained
//!   half the channel.
//! - **Idle.** With no record for a second the partitions are paused and the high
//!   watermarks looked at every 250 ms instead, so an idle stage costs the broker one
//!   ListOffsets request per look rather than a fetch every 20 ms ([`IdlePolicy`]).
//! - **Rebalances.** Each assignment of a partition is a new [`Assignment`] generation; the
//!   tracker forgets revoked partitions and acknowledgements of old generations are ignored.
//!   In checkpoint mode the assigned partitions start from their checkpoint, with its state
//!   ([`checkpoint`](crate::checkpoint)).
//! - **Shutdown.** [`Source::close`] waits (bounded) for in-flight records, commits what is
//!   finished and leaves the group.
//! - **Lag** comes from librdkafka's statistics (the high watermarks fetches already carry):
//!   no extra requests to the broker.
//! - **Consume errors.** Fatal consumer errors stop the stage; transient ones (a broker
//!   restarting) are logged and waited out by librdkafka.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::ack::{Ack, Assignment, Finished};
use crate::checkpoint::{self, CheckpointError, CheckpointKey};
use crate::config::{KafkaConfig, KafkaError as SetupError};
use crate::offsets::{OffsetTracker, SafePosition};

/// What a source reads and how.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Consumer group.
    pub group: String,
    pub topics: Vec<String>,
    /// Stage name, for metrics labels and logs.
    pub stage: &'static str,
    /// Records handed out and not yet finished before [`Source::next`] waits.
    pub max_in_flight: usize,
    /// How often finished offsets are committed (checkpoint mode: checkpointed, then committed).
    pub commit_every: Duration,
    /// Topic of offset-aligned state checkpoints; `Some` turns checkpoint mode on.
    pub checkpoints: Option<String>,
    /// Pausing while no records come, to spare the broker; `None`: always fetching.
    pub idle: Option<IdlePolicy>,
}

impl SourceConfig {
    pub fn new(group: impl Into<String>, topics: &[&str], stage: &'static str) -> Self {
        Self {
            group: group.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            stage,
            max_in_flight: 20_000,
            commit_every: Duration::from_secs(1),
            checkpoints: None,
            idle: IdlePolicy::from_env(),
        }
    }
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("consuming {topics}: {source}")]
    Consume { topics: String, source: KafkaError },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What the source did, for a stage's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceSummary {
    pub consumed: u64,
    /// Records still unfinished when the source closed (redelivered after a restart).
    pub unfinished: usize,
}

/// The assignments of this consumer, shared with its rebalance callback.
#[derive(Debug, Default)]
struct Assignments {
    current: HashMap<(Arc<str>, i32), Arc<Assignment>>,
    /// Bumped with every change of `current`, under the same lock (and mirrored in the shared
    /// atomic the poller stamps records with), so a reader gets an assignment and its epoch
    /// together.
    epoch: u64,
    next_generation: u64,
    /// A failure in a callback that must stop the stage.
    fatal: Option<String>,
}

/// The consumer's context: rebalances (with checkpoints), statistics.
#[derive(Debug)]
pub struct SourceContext {
    kafka: KafkaConfig,
    group: String,
    stage: &'static str,
    checkpoints: Option<String>,
    assignments: Arc<Mutex<Assignments>>,
    /// Bumped at every rebalance, so the source refreshes its copy of the assignments.
    epoch: Arc<AtomicU64>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::telemetry::client_requests(self.stage, &statistics);
        crate::telemetry::consumer_lag(&self.group, &statistics);
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(group = self.group, error = %code, "rebalance error; leaving the assignment");
                let _ = consumer.unassign();
                self.set_assignments(HashMap::new());
            }
        }
    }
}

impl SourceContext {
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let restored = match &self.checkpoints {
            None => HashMap::new(),
            Some(topic) => match checkpoint::read(&self.kafka, topic, &self.group) {
                Ok(restored) => restored,
                Err(e) => {
                    // Without its checkpoint a partition would meet the wrong state: stop.
                    tracing::error!(group = self.group, error = %e, "cannot read checkpoints");
                    self.lock().fatal = Some(format!("reading checkpoints at assignment: {e}"));
                    HashMap::new()
                }
            },
        };
        // Each topic's partition count, for stages that check where a key belongs (ingest's
        // WRONG_PARTITION): a change of the count is a rebalance, so it is read again then.
        let mut partitions: HashMap<String, i32> = HashMap::new();
        for element in tpl.elements() {
            if partitions.contains_key(element.topic()) {
                continue;
            }
            match consumer.fetch_metadata(Some(element.topic()), Duration::from_secs(10)) {
                Ok(metadata) => {
                    let count = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == element.topic())
                        .map_or(0, |t| t.partitions().len());
                    partitions.insert(element.topic().to_owned(), i32::try_from(count).unwrap_or(i32::MAX));
                }
                Err(e) => {
                    // Without the count a record's partition cannot be checked: stop.
                    tracing::error!(group = self.group, topic = element.topic(), error = %e, "cannot read the topic's metadata");
                    self.lock().fatal =
                        Some(format!("reading the partition count of {} at assignment: {e}", element.topic()));
                    partitions.insert(element.topic().to_owned(), 0);
                }
            }
        }
        let mut assigned = HashMap::new();
        let mut generation = self.lock().next_generation;
        for element in tpl.elements() {
            let key = CheckpointKey {
                group: self.group.clone(),
                topic: element.topic().to_owned(),
                partition: element.partition(),
            };
            let checkpoint = restored.get(&key);
            generation += 1;
            let assignment = Assignment {
                topic: Arc::from(element.topic()),
                partition: element.partition(),
                partitions: partitions.get(element.topic()).copied().unwrap_or(0),
                generation,
                restored: checkpoint.map(|c| c.state.clone()).unwrap_or_default(),
            };
            assigned.insert((Arc::clone(&assignment.topic), assignment.partition), Arc::new(assignment));
        }
        for (topic, partition) in assigned.keys() {
            let key = CheckpointKey { group: self.group.clone(), topic: topic.to_string(), partition: *partition };
            if let Some(checkpoint) = restored.get(&key) {
                if let Err(e) = tpl.set_partition_offset(topic, *partition, Offset::Offset(checkpoint.next_offset)) {
                    tracing::warn!(topic = %topic, partition, error = %e, "cannot start from the checkpoint");
                }
            }
        }
        tracing::info!(
            group = self.group,
            partitions = assigned.len(),
            checkpoints = restored.len(),
            "partitions assigned"
        );
        if let Err(e) = consumer.assign(tpl) {
            tracing::error!(group = self.group, error = %e, "assign failed");
            self.lock().fatal = Some(format!("assign failed: {e}"));
        }
        self.lock().next_generation = generation;
        self.set_assignments(assigned);
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        tracing::info!(group = self.group, partitions = tpl.count(), "partitions revoked");
        if self.checkpoints.is_none() {
            // Stored offsets of finished records go to the group before another member takes
            // the partitions. (In checkpoint mode only checkpointed offsets are committed.)
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    tracing::warn!(group = self.group, error = %e, "commit at revoke failed; records may be redelivered")
                }
            }
        }
        let _ = consumer.unassign();
        self.set_assignments(HashMap::new());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Assignments> {
        self.assignments.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_assignments(&self, current: HashMap<(Arc<str>, i32), Arc<Assignment>>) {
        set_assignments(&self.assignments, &self.epoch, current);
    }
}

/// Replaces the assignments and moves the epoch, both under the lock.
fn set_assignments(
    assignments: &Mutex<Assignments>,
    epoch: &AtomicU64,
    current: HashMap<(Arc<str>, i32), Arc<Assignment>>,
) {
    let mut locked = assignments.lock().unwrap_or_else(PoisonError::into_inner);
    locked.current = current;
    locked.epoch += 1;
    epoch.store(locked.epoch, Ordering::Release);
}

type Consumer_ = StreamConsumer<SourceContext>;
/// Records with the rebalance epoch they were received in.
type Batch = Result<Vec<(u64, OwnedMessage)>, KafkaError>;

/// Batches handed from the polling task to the stage.
const CHANNEL_BATCHES: usize = 8;
/// Most records in one batch.
const BATCH: usize = 256;
/// A stage that has not taken a batch for this long is stalled: its partitions are paused.
const STALLED_AFTER: Duration = Duration::from_secs(2);

/// An at-least-once consumer; see the module documentation.
pub struct Source {
    consumer: Arc<Consumer_>,
    config: SourceConfig,
    assignments: Arc<Mutex<Assignments>>,
    epoch: Arc<AtomicU64>,
    seen_epoch: u64,
    /// The source's copy of the assignments, refreshed when the epoch moves.
    local: Vec<Arc<Assignment>>,
    batches: mpsc::Receiver<Batch>,
    /// Received records with their rebalance epoch; those of an older epoch are dropped (the
    /// partitions were assigned again and are fetched again from their committed position).
    ready: VecDeque<(u64, OwnedMessage)>,
    stop_polling: watch::Sender<bool>,
    poller: tokio::task::JoinHandle<()>,
    tracker: OffsetTracker,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    commit_timer: tokio::time::Interval,
    committer: Option<Committer>,
    consumed: u64,
    /// Record timestamp → finished, per record.
    finish_latency: metrics::Histogram,
    /// Records consumed (`streamscore_source_records_total`), a handle kept so the hot path
    /// only adds to an atomic.
    records: metrics::Counter,
    on_finished: Option<Box<dyn Fn(i64) + Send + Sync>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("group", &self.config.group)
            .field("topics", &self.config.topics)
            .field("in_flight", &self.tracker.in_flight())
            .finish_non_exhaustive()
    }
}

impl Source {
    /// Joins the group and starts polling.
    pub fn open(kafka: &KafkaConfig, config: SourceConfig) -> Result<Self, SourceError> {
        let assignments = Arc::new(Mutex::new(Assignments::default()));
        let epoch = Arc::new(AtomicU64::new(0));
        let context = SourceContext {
            kafka: kafka.clone(),
            group: config.group.clone(),
            stage: config.stage,
            checkpoints: config.checkpoints.clone(),
            assignments: Arc::clone(&assignments),
            epoch: Arc::clone(&epoch),
        };
        let mut client = kafka.stage_consumer_config(&config.group);
        if config.checkpoints.is_some() {
            // Offsets are committed by the source, after their checkpoint.
            client.set("enable.auto.commit", "false");
        }

        let consumer: Consumer_ = client
            .create_with_context(context)
            .map_err(|source| SetupError::Client { bootstrap: kafka.bootstrap.clone(), source })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|source| SourceError::Consume { topics: topics.join(","), source })?;
        let consumer = Arc::new(consumer);
        let (batch_tx, batches) = mpsc::channel(CHANNEL_BATCHES);
        let (stop_polling, stop) = watch::channel(false);
        let poller =
            tokio::spawn(poll(Arc::clone(&consumer), batch_tx, stop, config.stage, config.idle, Arc::clone(&epoch)));
        let committer = match &config.checkpoints {
            Some(topic) => {
                Some(Committer::start(kafka, topic, &config.group, Arc::clone(&consumer), Arc::clone(&assignments))?)
            }
            None => None,
        };
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let config_stage = config.stage;
        let mut commit_timer = tokio::time::interval(config.commit_every);
        commit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            consumer,
            config,
            assignments,
            epoch,
            seen_epoch: u64::MAX,
            local: Vec::new(),
            batches,
            ready: VecDeque::new(),
            stop_polling,
            poller,
            tracker: OffsetTracker::default(),
            finished_tx,
            finished_rx,
            commit_timer,
            committer,
            consumed: 0,
            finish_latency: metrics::histogram!("streamscore_source_finish_seconds", "stage" => config_stage),
            records: metrics::counter!("streamscore_source_records_total", "stage" => config_stage),
            on_finished: None,
        })
    }

    /// Calls `hook` with each finished record's latency in µs: from its Kafka timestamp (the
    /// producer's create time, or the broker's append time) to every output acknowledged.
    pub fn on_finished(&mut self, hook: impl Fn(i64) + Send + Sync + 'static) {
        self.on_finished = Some(Box::new(hook));
    }

    /// The group this source consumes as.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    /// Records handed out and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// The next record and what is owed for it. Cancel-safe: a record is handed out only when
    /// this returns.
    /// The records already fetched and not handed out yet, in the order [`Source::next`] will
    /// hand them out (a look ahead, e.g. to resolve their schema ids together).
    pub fn buffered(&self) -> impl Iterator<Item = &OwnedMessage> {
        self.ready.iter().filter(|(epoch, _)| *epoch == self.seen_epoch).map(|(_, message)| message)
    }

    pub async fn next(&mut self) -> Result<(OwnedMessage, Ack), SourceError> {
        loop {
            self.check_fatal()?;
            if self.tracker.in_flight() < self.config.max_in_flight {
                self.refresh_assignments();
                while let Some((epoch, message)) = self.ready.pop_front() {
                    if epoch == self.seen_epoch {
                        if let Some(handed) = self.hand_out(message) {
                            return Ok(handed);
                        }
                    }
                }
            }
            let can_take = self.tracker.in_flight() < self.config.max_in_flight;
            tokio::select! {
                biased;
                Some(finished) = self.finished_rx.recv() => self.finish(finished),
                _ = self.commit_timer.tick() => self.commit_tick(),
                batch = self.batches.recv(), if can_take => match batch {
                    Some(Ok(batch)) => self.ready.extend(batch),
                    Some(Err(source)) => {
                        return Err(SourceError::Consume { topics: self.config.topics.join(","), source });
                    }
                    None => {
                        let source = KafkaError::Canceled;
                        return Err(SourceError::Consume { topics: self.config.topics.join(","), source });
                    }
                },
            }
        }
    }

    fn check_fatal(&self) -> Result<(), SourceError> {
        match &self.assignments.lock().unwrap_or_else(PoisonError::into_inner).fatal {
            Some(reason) => Err(SourceError::Consume {
                topics: self.config.topics.join(","),
                source: KafkaError::Subscription(reason.clone()),
            }),
            None => Ok(()),
        }
    }

    /// After a rebalance: the new assignments, and the tracker forgets revoked partitions and
    /// starts the assigned ones over (every assignment is a new generation).
    fn refresh_assignments(&mut self) {
        if self.epoch.load(Ordering::Acquire) == self.seen_epoch {
            return;
        }
        // The assignments and their epoch together: read apart, a rebalance in between would
        // pair one epoch's records with another epoch's assignments.
        let (local, epoch) = {
            let locked = self.assignments.lock().unwrap_or_else(PoisonError::into_inner);
            (locked.current.values().cloned().collect(), locked.epoch)
        };
        self.local = local;
        self.seen_epoch = epoch;
        let local = &self.local;
        self.tracker.retain(|t, p| local.iter().any(|a| &*a.topic == t && a.partition == p));
        for assignment in &self.local {
            self.tracker.assign(assignment);
        }
    }

    /// Hands out a record received in the current epoch, under the assignment of that epoch.
    /// Not handed out: a record taken after a rebalance moved the epoch on (its partition may
    /// be revoked; it was fetched under a generation that is over), and one whose partition
    /// the assignment does not hold. Its partition's owner reads it again from the committed
    /// position, so nothing is lost, and it is never acknowledged, or checkpointed with its
    /// state, for a partition this consumer does not own.
    fn hand_out(&mut self, message: OwnedMessage) -> Option<(OwnedMessage, Ack)> {
        if self.epoch.load(Ordering::Acquire) != self.seen_epoch {
            return None;
        }
        let (topic, partition) = (message.topic(), message.partition());
        let Some(assignment) = self.local.iter().find(|a| a.partition == partition && &*a.topic == topic).cloned()
        else {
            tracing::debug!(
                topic,
                partition,
                offset = message.offset(),
                "a record of a partition not assigned; left to its owner"
            );
            return None;
        };
        self.tracker.begin(&assignment, message.offset());
        self.consumed += 1;
        self.records.increment(1);
        let timestamp_ms = message.timestamp().to_millis().unwrap_or(-1);
        let ack = Ack::for_assignment(assignment, message.offset(), timestamp_ms, self.finished_tx.clone());
        Some((message, ack))
    }

    fn finish(&mut self, first: Finished) {
        let mut next = Some(first);
        while let Some(finished) = next {
            if finished.timestamp_ms >= 0 {
                // Until the outputs were acknowledged (what their consumers waited for), not
                // until the commitment that followed them.
                let micros = (finished.outputs_at_ms - finished.timestamp_ms).max(0) * 1000;
                #[allow(clippy::cast_precision_loss)]
                self.finish_latency.record(micros as f64 / 1e6);
                if let Some(hook) = &self.on_finished {
                    hook(micros);
                }
            }
            self.tracker.done(finished);
            next = self.finished_rx.try_recv().ok();
        }
        if self.committer.is_none() {
            let moved = self.tracker.take_moved();
            self.store(&moved);
        }
    }

    /// Plain mode: hands safe offsets to librdkafka, which commits them in the background.
    fn store(&self, moved: &[SafePosition]) {
        if moved.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(moved.len());
        for position in moved {
            let _ = tpl.add_partition_offset(&position.topic, position.partition, Offset::Offset(position.next_offset));
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // A partition was revoked meanwhile: its new owner resumes from the last commit.
            tracing::debug!(error = %e, "offsets not stored");
        }
    }

    fn commit_tick(&mut self) {
        // Assignments may have changed with no record since: forget revoked partitions.
        self.refresh_assignments();
        if let Some(committer) = &self.committer {
            let moved = self.tracker.take_moved();
            if !moved.is_empty() {
                committer.submit(moved);
            }
        }
    }

    /// Stops taking records, waits up to `timeout` for those in flight, commits what is
    /// finished and leaves the group.
    pub async fn close(mut self, timeout: Duration) -> Result<SourceSummary, SourceError> {
        let _ = self.stop_polling.send(true);
        let deadline = tokio::time::Instant::now() + timeout;
        while self.tracker.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, self.finished_rx.recv()).await {
                Ok(Some(finished)) => self.finish(finished),
                _ => break,
            }
        }
        let unfinished = self.tracker.in_flight();
        if unfinished > 0 {
            tracing::warn!(
                group = self.config.group,
                unfinished,
                "stopping with unacknowledged records; they will be redelivered"
            );
        }
        let _ = (&mut self.poller).await;
        let mut result = Ok(());
        match self.committer.take() {
            Some(committer) => {
                let moved = self.tracker.take_moved();
                result = committer.finish(moved).await;
            }
            None => {
                let moved = self.tracker.take_moved();
                self.store(&moved);
                match self.consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "final commit failed; the last second of records may be redelivered")
                    }
                }
            }
        }
        self.consumer.unsubscribe();
        result?;
        Ok(SourceSummary { consumed: self.consumed, unfinished })
    }
}

/// When the poller lets the broker rest: see [`crate::config::IDLE_AFTER_MS`].
#[derive(Debug, Clone, Copy)]
pub struct IdlePolicy {
    /// No record for this long: the partitions are paused.
    pub after: Duration,
    /// While paused, the high watermarks are compared with the consumer's positions this
    /// often (one ListOffsets request); new records resume fetching at once.
    pub probe_every: Duration,
}

impl IdlePolicy {
    /// The default policy, or `$STREAMSCORE_IDLE_MS` (`after:probe_every` in ms, or `off`).
    pub fn from_env() -> Option<Self> {
        let ms = Duration::from_millis;
        match std::env::var("STREAMSCORE_IDLE_MS") {
            Ok(text) if text.trim() == "off" => None,
            Ok(text) => {
                let parts: Vec<u64> = text.split(':').filter_map(|p| p.trim().parse().ok()).collect();
                match parts[..] {
                    [after, every] => Some(Self { after: ms(after), probe_every: ms(every) }),
                    _ => {
                        tracing::warn!(text, "STREAMSCORE_IDLE_MS: expected after:probe_every; using the defaults");
                        Self::from_env_default()
                    }
                }
            }
            Err(_) => Self::from_env_default(),
        }
    }

    fn from_env_default() -> Option<Self> {
        use crate::config::{IDLE_AFTER_MS, IDLE_PROBE_EVERY_MS};
        Some(Self {
            after: Duration::from_millis(IDLE_AFTER_MS),
            probe_every: Duration::from_millis(IDLE_PROBE_EVERY_MS),
        })
    }
}

/// The poller's state with no records coming.
#[derive(Debug, Clone, Copy)]
enum Idle {
    /// Records came lately (or the stage is behind): fetching all the time.
    Active { since: tokio::time::Instant },
    /// Paused to spare the broker; the next look at the high watermarks is due then.
    Resting { until: tokio::time::Instant },
}

/// Polls the consumer for ever (until stopped), handing batches to the source; pauses the
/// assigned partitions while the source does not take them, and while no records come
/// (resuming them briefly now and then to look).
async fn poll(
    consumer: Arc<Consumer_>,
    tx: mpsc::Sender<Batch>,
    mut stop: watch::Receiver<bool>,
    stage: &'static str,
    idle_policy: Option<IdlePolicy>,
    epoch: Arc<AtomicU64>,
) {
    use tokio::time::Instant;
    // A rebalance runs inside `recv`, so the epoch read after a record arrives is the one it
    // was fetched under.
    let stamp = |message: rdkafka::message::BorrowedMessage<'_>| (epoch.load(Ordering::Acquire), message.detach());
    let mut batch: Vec<(u64, OwnedMessage)> = Vec::with_capacity(BATCH);
    let mut paused = false;
    let mut idle = Idle::Active { since: Instant::now() };
    // Committed offsets of partitions nothing was consumed from yet, while resting.
    let mut committed: HashMap<(String, i32), i64> = HashMap::new();
    let mut last_warning: Option<Instant> = None;
    loop {
        if batch.is_empty() {
            let wake = match (idle, idle_policy) {
                (_, None) => None,
                (Idle::Active { since }, Some(policy)) => Some(since + policy.after),
                (Idle::Resting { until }, Some(_)) => Some(until),
            };
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                message = consumer.recv() => match message {
                    Ok(message) => {
                        batch.push(stamp(message));
                        while batch.len() < BATCH {
                            match consumer.recv().now_or_never() {
                                Some(Ok(message)) => batch.push(stamp(message)),
                                _ => break,
                            }
                        }
                        if matches!(idle, Idle::Resting { .. }) {
                            set_paused(&consumer, false); // a record of a partition assigned meanwhile
                        }
                        idle = Idle::Active { since: Instant::now() };
                    }
                    Err(e) => {
                        if fatal(&e) {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                            tracing::warn!(stage, error = %e, "consumer error; librdkafka retries");
                            last_warning = Some(Instant::now());
                        }
                        metrics::counter!("streamscore_source_consume_errors_total", "stage" => stage).increment(1);
                        continue;
                    }
                },
                () = sleep_until(wake) => {
                    let Some(policy) = idle_policy else { continue };
                    idle = match idle {
                        Idle::Active { .. } => {
                            set_paused(&consumer, true);
                            committed.clear();
                            Idle::Resting { until: Instant::now() + policy.probe_every }
                        }
                        Idle::Resting { .. } => {
                            let probe = Arc::clone(&consumer);
                            let mut known = std::mem::take(&mut committed);
                            let (new_records, known) = tokio::task::spawn_blocking(move || {
                                let new = has_new_records(&probe, &mut known);
                                (new, known)
                            })
                            .await
                            .unwrap_or((true, HashMap::new()));
                            committed = known;
                            if new_records {
                                set_paused(&consumer, false);
                                wake_fetcher(&consumer).await;
                                Idle::Active { since: Instant::now() }
                            } else {
                                Idle::Resting { until: Instant::now() + policy.probe_every }
                            }
                        }
                    };
                    continue;
                }
            }
        }
        match tx.try_reserve() {
            Ok(permit) => {
                permit.send(Ok(std::mem::take(&mut batch)));
                if paused {
                    set_paused(&consumer, false);
                    paused = false;
                }
            }
            Err(mpsc::error::TrySendError::Closed(())) => return,
            Err(mpsc::error::TrySendError::Full(())) => {
                // The stage is behind: librdkafka stops fetching by itself once its own queue
                // is full, so a short wait costs nothing. Only a stage stalled for longer
                // (waiting out a registry outage) gets its partitions paused, so that the
                // consumer can be polled (group membership, rebalances) meanwhile.
                if !paused {
                    tokio::select! {
                        biased;
                        _ = stop.changed() => return,
                        permit = tx.reserve() => match permit {
                            Ok(permit) => {
                                permit.send(Ok(std::mem::take(&mut batch)));
                                continue;
                            }
                            Err(_) => return,
                        },
                        () = tokio::time::sleep(STALLED_AFTER) => {}
                    }
                }
                if !paused {
                    set_paused(&consumer, true);
                    paused = true;
                    metrics::counter!("streamscore_source_pauses_total", "stage" => stage).increment(1);
                }
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    // Resume once half the channel is free, not at the first free slot.
                    permits = tx.reserve_many(CHANNEL_BATCHES / 2) => match permits {
                        Ok(mut permits) => {
                            if let Some(permit) = permits.next() {
                                permit.send(Ok(std::mem::take(&mut batch)));
                            }
                            set_paused(&consumer, false);
                            paused = false;
                            idle = Idle::Active { since: Instant::now() };
                        }
                        Err(_) => return,
                    },
                    // Polling keeps the member in its group and serves rebalances; a record of
                    // a partition assigned meanwhile (not paused yet) waits in the batch.
                    message = consumer.recv() => {
                        if let Ok(message) = message {
                            batch.push(stamp(message));
                            set_paused(&consumer, true);
                        }
                    }
                }
            }
        }
    }
}

/// Whether any assigned partition has records past the consumer's position: one ListOffsets
/// request for all of them (plus, once per rest, an OffsetFetch for partitions nothing was
/// consumed from). Any doubt counts as new records.
fn has_new_records(consumer: &Consumer_, committed: &mut HashMap<(String, i32), i64>) -> bool {
    let timeout = Duration::from_secs(2);
    let (Ok(assignment), Ok(positions)) = (consumer.assignment(), consumer.position()) else { return true };
    if assignment.count() == 0 {
        return false;
    }
    let mut ends = TopicPartitionList::with_capacity(assignment.count());
    for element in assignment.elements() {
        let _ = ends.add_partition_offset(element.topic(), element.partition(), Offset::End);
    }
    let Ok(ends) = consumer.offsets_for_times(ends, timeout) else { return true };
    let mut unknown = TopicPartitionList::new();
    let mut behind = Vec::new();
    for element in ends.elements() {
        let Some(end) = element.offset().to_raw() else { return true };
        let key = (element.topic().to_owned(), element.partition());
        let position = positions
            .find_partition(element.topic(), element.partition())
            .and_then(|p| p.offset().to_raw())
            .filter(|o| *o >= 0)
            .or_else(|| committed.get(&key).copied());
        match position {
            Some(position) if end <= position => {}
            Some(_) => return true,
            None => {
                unknown.add_partition(element.topic(), element.partition());
                behind.push((key, end));
            }
        }
    }
    if behind.is_empty() {
        return false;
    }
    let Ok(found) = consumer.committed_offsets(unknown, timeout) else { return true };
    let mut new_records = false;
    for ((topic, partition), end) in behind {
        let at = found.find_partition(&topic, partition).and_then(|p| p.offset().to_raw()).filter(|o| *o >= 0);
        match at {
            Some(at) => {
                committed.insert((topic, partition), at);
                new_records |= end > at;
            }
            // No commit yet: anything in the partition is new.
            None => new_records |= end > 0,
        }
    }
    new_records
}

/// librdkafka's broker thread notices a resumed partition only when something wakes it (or
/// after its 1 s idle timeout): a resume alone leaves the first record after a pause waiting
/// up to a second. A small request on the same connection — a high-watermark query of one
/// assigned partition — wakes it, and it fetches at once.
async fn wake_fetcher(consumer: &Arc<Consumer_>) {
    let Some((topic, partition)) =
        consumer.assignment().ok().and_then(|a| a.elements().first().map(|e| (e.topic().to_owned(), e.partition())))
    else {
        return;
    };
    let consumer = Arc::clone(consumer);
    let _ =
        tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, partition, Duration::from_secs(2))).await;
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn set_paused(consumer: &Consumer_, paused: bool) {
    let Ok(assignment) = consumer.assignment() else { return };
    let result = if paused { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    if let Err(e) = result {
        tracing::debug!(paused, error = %e, "pause/resume");
    }
}

/// Errors after which the consumer cannot go on.
fn fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::MessageConsumptionFatal(_))
}

/// Checkpoint mode: writes checkpoints, then commits their offsets, one batch at a time.
struct Committer {
    tx: mpsc::UnboundedSender<Vec<SafePosition>>,
    task: tokio::task::JoinHandle<Result<(), CheckpointError>>,
}

impl Committer {
    fn start(
        kafka: &KafkaConfig,
        topic: &str,
        group: &str,
        consumer: Arc<Consumer_>,
        assignments: Arc<Mutex<Assignments>>,
    ) -> Result<Self, SourceError> {
        let producer: FutureProducer = kafka.producer()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<SafePosition>>();
        let (topic, group) = (topic.to_owned(), group.to_owned());
        let task = tokio::spawn(async move {
            while let Some(mut positions) = rx.recv().await {
                // Merge whatever queued up: the latest position per partition wins.
                while let Ok(more) = rx.try_recv() {
                    positions.extend(more);
                }
                let mut latest: HashMap<(Arc<str>, i32), SafePosition> = HashMap::new();
                for position in positions {
                    latest.insert((Arc::clone(&position.topic), position.partition), position);
                }
                let positions: Vec<SafePosition> = latest.into_values().collect();
                if let Err(e) = checkpoint::write(&producer, &topic, &group, &positions).await {
                    assignments.lock().unwrap_or_else(PoisonError::into_inner).fatal =
                        Some(format!("writing checkpoints: {e}"));
                    return Err(e);
                }
                let mut tpl = TopicPartitionList::with_capacity(positions.len());
                for p in &positions {
                    let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next_offset));
                }
                let mode = if rx.is_closed() { CommitMode::Sync } else { CommitMode::Async };
                if let Err(e) = consumer.commit(&tpl, mode) {
                    // The checkpoint is ahead of the commit, which is safe: the next
                    // assignment starts from the checkpoint.
                    tracing::debug!(error = %e, "commit after checkpoint failed");
                }
            }
            Ok(())
        });
        Ok(Self { tx, task })
    }

    fn submit(&self, positions: Vec<SafePosition>) {
        let _ = self.tx.send(positions);
    }

    async fn finish(self, last: Vec<SafePosition>) -> Result<(), SourceError> {
        if !last.is_empty() {
            let _ = self.tx.send(last);
        }
        drop(self.tx);
        match self.task.await {
            Ok(result) => result.map_err(SourceError::from),
            Err(e) => Err(SourceError::Checkpoint(CheckpointError::Incomplete {
                topic: format!("committer task: {e}"),
                reached: 0,
                high: 0,
                waited: Duration::ZERO,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Timestamp;

    use super::*;

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(Some(b"v".to_vec()), None, "t".to_owned(), Timestamp::NotAvailable, partition, offset, None)
    }

    fn assigned(generation: u64) -> HashMap<(Arc<str>, i32), Arc<Assignment>> {
        let assignment =
            Assignment { topic: Arc::from("t"), partition: 0, partitions: 1, generation, restored: HashMap::new() };
        HashMap::from([((Arc::from("t"), 0), Arc::new(assignment))])
    }

    #[tokio::test]
    async fn a_record_is_handed_out_under_the_assignment_it_was_fetched_under_or_not_at_all() {
        // No broker is reached: the consumer is made and subscribed, nothing is fetched.
        let kafka = KafkaConfig::new("127.0.0.1:1");
        let mut source = Source::open(&kafka, SourceConfig::new("g", &["t"], "test")).expect("a source");
        set_assignments(&source.assignments, &source.epoch, assigned(1));
        // `next` refreshes, then takes a record of that epoch; the partition is revoked before
        // the record is handed out. Handing it out under a later assignment (or none) would
        // acknowledge, and checkpoint, a partition this consumer no longer owns.
        source.refresh_assignments();
        set_assignments(&source.assignments, &source.epoch, HashMap::new());
        assert!(source.hand_out(message(0, 5)).is_none(), "a record of a revoked partition is left to its owner");
        assert_eq!(source.in_flight(), 0);
        // Assigned again (generation 2): its records are handed out under that generation.
        set_assignments(&source.assignments, &source.epoch, assigned(2));
        source.refresh_assignments();
        let (_, ack) = source.hand_out(message(0, 5)).expect("handed out");
        assert_eq!(ack.assignment().generation, 2);
    }
}
