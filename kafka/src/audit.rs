//! Writing the audit log: one keyed hash chain per writer (a stage instance, from its start),
//! appended to the audit topic, and the commitments of every output the stage writes.
//!
//! Entries go out in chain order on one producer (one request in flight at a time). A
//! commitment ([`AuditWriter::commit`]) holds the acknowledgements of the records whose outputs
//! it covers until the broker has it: a record's offset is stored only once its outputs *and*
//! their commitment are acknowledged, so an output is never left uncommitted by a record the
//! group has moved past. The chain's head (the last acknowledged entry) is checkpointed outside
//! Kafka when `STREAMSCORE_AUDIT_HEAD_DIR` is set, and the next chain of the same stage and
//! instance names it in its first entry: a truncated or deleted chain shows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use streamscore_contracts::audit::{commitment_details, kinds, AuditChain, AuditKey, ChainHead};
use streamscore_contracts::{AuditRecord, Codec, Lineage};
use tokio::sync::{watch, Mutex};

use crate::ack::{Ack, Gate};
use crate::config::{KafkaConfig, KafkaError};

/// The directory where writers checkpoint their chain heads (outside Kafka).
pub const HEAD_DIR_ENV: &str = "STREAMSCORE_AUDIT_HEAD_DIR";

/// How long [`AuditWriter::close`] waits for commitments still waiting for their outputs.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How often, at most, a head checkpoint is rewritten while entries flow.
const HEAD_EVERY: Duration = Duration::from_secs(1);

/// Why an audit entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Setup(#[from] KafkaError),
    #[error("registering the audit schema: {0}")]
    Registry(#[from] streamscore_contracts::RegistryError),
    #[error("encoding an audit entry: {0}")]
    Encode(#[from] streamscore_contracts::EncodeError),
    #[error("writing an audit entry: {0}")]
    Write(#[from] rdkafka::error::KafkaError),
    #[error("audit key: {0}")]
    Key(String),
    #[error("an audit entry was not acknowledged: {0}")]
    Delivery(String),
    /// A stop request came while the writer was starting (the registry not answering).
    #[error("start-up stopped")]
    Stopped(#[from] crate::shutdown::Stopped),
}

/// The last acknowledged entry, and the ones sent and not yet acknowledged.
#[derive(Debug)]
struct Heads {
    chain: String,
    topic: String,
    sent: BTreeMap<i64, String>,
    acknowledged: Option<ChainHead>,
    written: Option<Instant>,
}

/// Appends this writer's entries to the audit topic, in chain order.
pub struct AuditWriter {
    topic: String,
    codec: Codec<AuditRecord>,
    producer: FutureProducer,
    chain: Mutex<AuditChain>,
    heads: Arc<SyncMutex<Heads>>,
    head_file: Option<PathBuf>,
    failure: Arc<watch::Sender<Option<String>>>,
    failed: watch::Receiver<Option<String>>,
    /// Commitments waiting for their outputs or their own acknowledgement.
    committing: watch::Sender<usize>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("topic", &self.topic)
            .field("head_file", &self.head_file)
            .finish_non_exhaustive()
    }
}

/// The head checkpoint file of `stage`/`instance` under `dir`.
pub fn head_file(dir: &Path, stage: &str, instance: &str) -> PathBuf {
    let name: String = format!("{stage}-{instance}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    dir.join(format!("{name}.head.json"))
}

/// Every head checkpoint under `dir` (for `audit verify --heads DIR`).
pub fn read_heads(dir: &Path) -> Result<Vec<ChainHead>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut heads = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.to_string_lossy().ends_with(".head.json") {
            let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            heads.push(serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?);
        }
    }
    Ok(heads)
}

impl AuditWriter {
    /// A writer keyed from the environment ([`AuditKey::from_env`]), checkpointing its head
    /// under `STREAMSCORE_AUDIT_HEAD_DIR` when set. Writes the chain's `CHAIN_STARTED` entry.
    /// Registering the audit schema waits out registry outages until `shutdown`.
    pub async fn new(
        kafka: &KafkaConfig,
        registry_url: &str,
        topic: &str,
        stage: &str,
        instance: &str,
        shutdown: &crate::shutdown::Shutdown,
    ) -> Result<Self, AuditError> {
        let key = AuditKey::from_env().map_err(AuditError::Key)?;
        let head_file = std::env::var_os(HEAD_DIR_ENV)
            .filter(|d| !d.is_empty())
            .map(|dir| head_file(Path::new(&dir), stage, instance));
        Self::with(kafka, registry_url, topic, stage, instance, key, head_file, shutdown).await
    }

    /// A writer with this key and head checkpoint file.
    #[allow(clippy::too_many_arguments)]
    pub async fn with(
        kafka: &KafkaConfig,
        registry_url: &str,
        topic: &str,
        stage: &str,
        instance: &str,
        key: AuditKey,
        head_file: Option<PathBuf>,
        shutdown: &crate::shutdown::Shutdown,
    ) -> Result<Self, AuditError> {
        let codec = Codec::<AuditRecord>::with_url(registry_url, topic);
        crate::retry::register(&codec, shutdown).await??;
        let mut config = kafka.client_config();
        config
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", crate::config::MESSAGE_TIMEOUT_MS)
            // Chain order on the topic: one request in flight, so a retry cannot reorder.
            .set("max.in.flight.requests.per.connection", "1");
        for (k, v) in &kafka.overrides {
            config.set(k, v);
        }
        let producer: FutureProducer =
            config.create().map_err(|source| KafkaError::Client { bootstrap: kafka.bootstrap.clone(), source })?;
        if !key.is_keyed() {
            tracing::warn!(
                "the audit log is not keyed: anyone who can write the audit topic could write a consistent forgery; \
                 set {} (or {})",
                streamscore_contracts::audit::KEY_FILE_ENV,
                streamscore_contracts::audit::KEY_ENV
            );
        }
        // The previous chain of this writer on this audit log (a head kept for another log is
        // that log's: linking to it would read here as a deleted chain).
        let previous: Option<ChainHead> = head_file
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice::<ChainHead>(&bytes).ok())
            .filter(|head| head.topic.is_empty() || head.topic == topic);
        let (failure, failed) = watch::channel(None);
        let chain = AuditChain::new(stage, instance, key, streamscore_contracts::now_micros());
        let heads = Heads {
            chain: chain.id().to_owned(),
            topic: topic.to_owned(),
            sent: BTreeMap::new(),
            acknowledged: None,
            written: None,
        };
        let writer = Self {
            topic: topic.to_owned(),
            codec,
            producer,
            chain: Mutex::new(chain),
            heads: Arc::new(SyncMutex::new(heads)),
            head_file,
            failure: Arc::new(failure),
            failed,
            committing: watch::channel(0).0,
        };
        let mut details = HashMap::new();
        if let Some(previous) = previous {
            details.insert("previous_chain".to_owned(), previous.chain);
            details.insert("previous_seq".to_owned(), previous.seq.to_string());
            details.insert("previous_hash".to_owned(), previous.hash);
        }
        let subject = writer.chain.lock().await.id().to_owned();
        writer.record(kinds::CHAIN_STARTED, &subject, None, details).await?;
        writer.schema_registered(&writer.codec).await?;
        Ok(writer)
    }

    /// Records that this writer's stage writes `codec`'s contract under its registered id
    /// (`SCHEMA_REGISTERED`: subject, id, schema name and the sha256 of its text).
    pub async fn schema_registered<T: streamscore_contracts::Event>(&self, codec: &Codec<T>) -> Result<(), AuditError> {
        let details = HashMap::from([
            ("id".to_owned(), codec.schema_id().map_or_else(|| "unregistered".to_owned(), |id| id.to_string())),
            ("schema".to_owned(), T::SCHEMA.full_name.to_owned()),
            ("sha256".to_owned(), streamscore_contracts::sha256_hex(T::SCHEMA.text.as_bytes())),
        ]);
        self.record("SCHEMA_REGISTERED", codec.subject(), None, details).await.map(|_| ())
    }

    /// The key entries are written with.
    pub async fn key(&self) -> AuditKey {
        self.chain.lock().await.key().clone()
    }

    /// Resolves once an entry was not acknowledged (the stage should stop: the records it
    /// covers are never finished, so nothing is lost).
    pub async fn failed(&self) -> String {
        let mut failed = self.failed.clone();
        loop {
            if let Some(reason) = failed.borrow_and_update().clone() {
                return reason;
            }
            if failed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Appends an entry and waits until the broker has it.
    pub async fn record(
        &self,
        kind: &str,
        subject: &str,
        lineage: Option<Lineage>,
        details: HashMap<String, String>,
    ) -> Result<AuditRecord, AuditError> {
        let (entry, delivery) = {
            // The lock spans the send so entries reach the topic in chain order.
            let mut chain = self.chain.lock().await;
            let entry = chain.append(kind, subject, lineage, details);
            let delivery = self.send(&entry).await?;
            (entry, delivery)
        };
        match delivery.await {
            Ok(Ok(_)) => {
                let force = entry.kind == kinds::CHAIN_STARTED || entry.kind == kinds::STAGE_STOPPED;
                acknowledged(&self.heads, self.head_file.as_deref(), entry.seq, force);
                Ok(entry)
            }
            Ok(Err((e, _))) => Err(AuditError::Write(e)),
            Err(_) => Err(AuditError::Delivery("the producer dropped the entry".to_owned())),
        }
    }

    /// Commits output events (`(event_id, hash)`, in the order they were sent) of the records
    /// `acks` belong to, in one `BATCH_COMMITTED` entry, once the broker has acknowledged every
    /// one of those outputs: a commitment names only what is durable, so a crash can leave
    /// outputs without their commitment (written again, and committed, when their records are
    /// redelivered) but never a commitment without its outputs. Each record is finished once
    /// the broker has the entry too; an output or an entry that fails never finishes its
    /// records (a failed entry makes [`AuditWriter::failed`] resolve).
    pub async fn commit(self: &Arc<Self>, events: Vec<(String, String)>, acks: Vec<Ack>) -> Result<(), AuditError> {
        if acks.is_empty() && events.is_empty() {
            return Ok(());
        }
        let sources = sources(&acks);
        let (gate, outputs_acknowledged) = Gate::new(acks.len());
        for ack in acks {
            ack.done_through(&gate);
        }
        let writer = Arc::clone(self);
        self.committing.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            writer.commit_when_acknowledged(events, sources, gate, outputs_acknowledged).await;
            writer.committing.send_modify(|n| *n -= 1);
        });
        Ok(())
    }

    /// Waits for every output of a commitment to be acknowledged, then writes the commitment
    /// and, once the broker has it, lets its records finish.
    async fn commit_when_acknowledged(
        &self,
        events: Vec<(String, String)>,
        sources: String,
        gate: Arc<Gate>,
        outputs_acknowledged: tokio::sync::oneshot::Receiver<()>,
    ) {
        // Never opens when an output failed: the stage stops on the sink's failure, and the
        // records are redelivered after a restart.
        if outputs_acknowledged.await.is_err() {
            return;
        }
        let details = commitment_details(&events, sources);
        let sent = {
            let mut chain = self.chain.lock().await;
            let entry = chain.append(kinds::BATCH_COMMITTED, &format!("{} events", events.len()), None, details);
            self.send(&entry).await.map(|delivery| (entry.seq, delivery))
        };
        let failed = |reason: String| self.failure.send_if_modified(|f| f.is_none() && f.replace(reason).is_none());
        let (seq, delivery) = match sent {
            Ok(sent) => sent,
            Err(e) => {
                tracing::error!(error = %e, "audit commitment not sent");
                failed(e.to_string());
                return;
            }
        };
        match delivery.await {
            Ok(Ok(_)) => {
                acknowledged(&self.heads, self.head_file.as_deref(), seq, false);
                gate.pass();
            }
            Ok(Err((e, _))) => {
                tracing::error!(seq, error = %e, "audit commitment not acknowledged");
                failed(e.to_string());
            }
            Err(_) => {
                failed("audit producer closed".to_owned());
            }
        }
    }

    /// Ends the chain cleanly (`STAGE_STOPPED`) and checkpoints its head, after the
    /// commitments still waiting for their outputs (for at most [`CLOSE_WAIT`]: one whose
    /// outputs failed never comes).
    pub async fn close(&self, details: HashMap<String, String>) -> Result<(), AuditError> {
        let mut committing = self.committing.subscribe();
        if tokio::time::timeout(CLOSE_WAIT, committing.wait_for(|n| *n == 0)).await.is_err() {
            tracing::warn!(
                waiting = *committing.borrow(),
                "closing the audit chain with commitments still waiting for their outputs; their records are redelivered"
            );
        }
        let subject = self.chain.lock().await.id().to_owned();
        self.record(kinds::STAGE_STOPPED, &subject, None, details).await.map(|_| ())
    }

    async fn send(&self, entry: &AuditRecord) -> Result<rdkafka::producer::DeliveryFuture, AuditError> {
        let bytes = self.codec.encode(entry)?;
        self.heads.lock().unwrap_or_else(PoisonError::into_inner).sent.insert(entry.seq, entry.hash.clone());
        let mut record = FutureRecord::to(&self.topic).key(entry.instance.as_bytes()).payload(&bytes[..]);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(AuditError::Write(e)),
            }
        }
    }
}

/// `topic/partition:first-last` per partition of the records `acks` belong to.
fn sources(acks: &[Ack]) -> String {
    let mut ranges: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for ack in acks {
        let assignment = ack.assignment();
        let range = ranges.entry((assignment.topic.to_string(), assignment.partition)).or_insert((i64::MAX, i64::MIN));
        range.0 = range.0.min(ack.offset());
        range.1 = range.1.max(ack.offset());
    }
    ranges.iter().map(|((t, p), (a, b))| format!("{t}/{p}:{a}-{b}")).collect::<Vec<_>>().join(";")
}

/// Records that entry `seq` is acknowledged; the head is the last entry acknowledged with
/// every earlier one. Writes the head checkpoint (atomically) at most every [`HEAD_EVERY`],
/// or now when `force`.
fn acknowledged(heads: &SyncMutex<Heads>, file: Option<&Path>, seq: i64, force: bool) {
    let mut heads = heads.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(hash) = heads.sent.get(&seq).cloned() else { return };
    heads.sent.insert(seq, format!("acked:{hash}"));
    // Advance over the acknowledged prefix.
    let mut head = heads.acknowledged.clone();
    while let Some((&first, value)) = heads.sent.iter().next() {
        let Some(hash) = value.strip_prefix("acked:") else { break };
        head = Some(ChainHead {
            chain: heads.chain.clone(),
            seq: first,
            hash: hash.to_owned(),
            topic: heads.topic.clone(),
        });
        heads.sent.remove(&first);
    }
    if head.is_none() {
        return;
    }
    heads.acknowledged = head;
    let (Some(file), Some(head)) = (file, heads.acknowledged.clone()) else { return };
    if !force && heads.written.is_some_and(|at| at.elapsed() < HEAD_EVERY) {
        return;
    }
    heads.written = Some(Instant::now());
    drop(heads);
    write_head(file, head);
}

fn write_head(file: &Path, head: ChainHead) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&head).unwrap_or_default())?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        tracing::warn!(file = %file.display(), error = %e, "cannot write the audit head checkpoint");
    }
}

/// Commits outputs written one record at a time (rejections, dead letters) in batches: a
/// `BATCH_COMMITTED` entry once [`Committer::MAX_EVENTS`] events wait, or at the next
/// [`Committer::tick`].
pub struct Committer {
    audit: Arc<AuditWriter>,
    pending: SyncMutex<Pending>,
}

/// Events waiting for their commitment, and the records they answer.
type Pending = (Vec<(String, String)>, Vec<Ack>);

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    pub const MAX_EVENTS: usize = 256;
    /// How long an output waits for its commitment, at most (its record's offset waits too).
    pub const EVERY: Duration = Duration::from_millis(10);

    pub fn new(audit: Arc<AuditWriter>) -> Arc<Self> {
        Arc::new(Self { audit, pending: SyncMutex::new((Vec::new(), Vec::new())) })
    }

    pub fn audit(&self) -> &Arc<AuditWriter> {
        &self.audit
    }

    /// The outputs `events` of the record `ack` belongs to: committed (and the record marked
    /// done) with the next batch.
    pub async fn add(&self, events: Vec<(String, String)>, ack: Ack) -> Result<(), AuditError> {
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.0.extend(events);
            pending.1.push(ack);
            pending.0.len() >= Self::MAX_EVENTS
        };
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    /// Commits what waits now.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (events, acks) = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        self.audit.commit(events, acks).await
    }

    /// Flushes every [`Committer::EVERY`] until an entry cannot be sent.
    pub async fn tick(self: Arc<Self>) -> AuditError {
        let mut every = tokio::time::interval(Self::EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let waiting = !self.pending.lock().unwrap_or_else(PoisonError::into_inner).1.is_empty();
            if waiting {
                if let Err(e) = self.flush().await {
                    return e;
                }
            }
        }
    }
}
