//! What the monitor does with outcomes and labels: the join's part of the stage, between the
//! source's records and the [`QualityStore`], with the outbox's dead letters, the refreshes
//! of the figures and the `QUALITY_DEGRADED` / `QUALITY_RECOVERED` audit entries.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};
use streamscore_contracts::{
    Codec, DeadLetter, DeadLetterReason, DecodeError, Feedback, Lineage, OutcomeStatus, PredictionOutcome,
    SourceOffset, Stage,
};
use streamscore_kafka::audit::{AuditWriter, Committer};
use streamscore_kafka::retry::{self, Attempt};
use streamscore_kafka::{Ack, Finished, Seal, Shutdown, Sink, Stopped};
use streamscore_modelstore::ModelStore;
use tokio::sync::mpsc;

use super::policy::QualityPolicy;
use super::report::{self, QualityReport};
use super::store::{Label, LabelOutcome, Prediction, QualityStore, Record};
use crate::stage::MonitorError;

/// What the join needs.
#[derive(Debug, Clone)]
pub struct QualityConfig {
    /// Where the store lives (`<dir>/quality.sqlite3`); created, and rebuilt from the topics,
    /// when missing.
    pub store_dir: PathBuf,
    pub feedback_topic: String,
    /// Labels count for outcomes up to this long after their request's creation.
    pub horizon: Duration,
    /// Labeled pairs are kept this long after their request's creation (the `all` window).
    pub retention: Duration,
    /// How often the figures are computed, exported and checked against the policy.
    pub every: Duration,
    /// Changes are committed in batches this often at most (their records wait for it).
    pub commit_every: Duration,
    pub policy: QualityPolicy,
    /// The versions now `QUALITY_DEGRADED`, with why, kept current after every check: the
    /// rollout controller in the same process fails a step whose candidate is in it.
    pub degraded: Degraded,
}

/// `(model, version)` → the thresholds it breaches, shared with whoever reads it.
pub type Degraded = std::sync::Arc<std::sync::RwLock<HashMap<(String, String), String>>>;

impl QualityConfig {
    pub fn new(store_dir: PathBuf) -> Self {
        Self {
            store_dir,
            feedback_topic: streamscore_contracts::topics::FEEDBACK.to_owned(),
            horizon: Duration::from_secs(30 * 86_400),
            retention: Duration::from_secs(90 * 86_400),
            every: Duration::from_secs(30),
            commit_every: Duration::from_millis(100),
            policy: QualityPolicy::default(),
            degraded: Degraded::default(),
        }
    }
}

/// Records per batch, at most, before a commit.
const BATCH: usize = 2_000;
/// Dead letters sent from the outbox per commit, at most.
const OUTBOX_BATCH: usize = 256;

/// The join as the stage runs it.
pub struct Quality {
    pub config: QualityConfig,
    store: QualityStore,
    feedback: Codec<Feedback>,
    dead_letters: Codec<DeadLetter>,
    dead_letter_topic: String,
    committer: Arc<Committer>,
    instance: String,
    /// Records whose changes wait for the next commit.
    owed: Vec<Ack>,
    last_commit: Instant,
    /// Outbox entries whose dead letter is in flight.
    sending: HashSet<i64>,
    sent_tx: mpsc::UnboundedSender<Finished>,
    sent_rx: mpsc::UnboundedReceiver<Finished>,
    /// The last report computed.
    pub last: Option<QualityReport>,
}

impl std::fmt::Debug for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quality").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Quality {
    /// Opens the store (a new one is rebuilt from the topics by the caller, see
    /// [`Quality::needs_rebuild`]).
    pub async fn open(
        config: QualityConfig,
        registry_url: &str,
        dead_letter_topic: &str,
        audit: Arc<AuditWriter>,
        instance: &str,
        shutdown: &Shutdown,
    ) -> Result<Self, MonitorError> {
        let store = QualityStore::open(&config.store_dir, micros(config.horizon))?;
        let feedback = Codec::<Feedback>::with_url(registry_url, &config.feedback_topic);
        let dead_letters = Codec::<DeadLetter>::with_url(registry_url, dead_letter_topic);
        retry::register(&dead_letters, shutdown).await??;
        audit.schema_registered(&dead_letters).await?;
        let (sent_tx, sent_rx) = mpsc::unbounded_channel();
        Ok(Self {
            config,
            store,
            feedback,
            dead_letters,
            dead_letter_topic: dead_letter_topic.to_owned(),
            committer: Committer::new(audit),
            instance: instance.to_owned(),
            owed: Vec::new(),
            last_commit: Instant::now(),
            sending: HashSet::new(),
            sent_tx,
            sent_rx,
            last: None,
        })
    }

    /// Whether the store is new, or its rebuild was cut short: it must be filled from the
    /// topics before the stage reads on.
    pub fn needs_rebuild(&self) -> Result<bool, MonitorError> {
        Ok(self.store.is_fresh() || !self.store.rebuilt()?)
    }

    /// The store, for the rebuild.
    pub(crate) fn store_mut(&mut self) -> &mut QualityStore {
        &mut self.store
    }

    /// Keeps a scored outcome (primary or shadow) and joins its labels (the rebuild's way in;
    /// the stage uses [`Quality::add_prediction`]). Anything but a score is not a prediction
    /// to label.
    pub fn on_prediction(&mut self, outcome: &PredictionOutcome, models: &ModelStore) -> Result<(), MonitorError> {
        if let Some(p) = prediction_of(outcome, models) {
            self.store.add_prediction(&p)?;
        }
        Ok(())
    }

    /// Keeps a prediction; `ack` is finished once the change is committed.
    pub fn add_prediction(&mut self, p: &Prediction, ack: Ack) -> Result<(), MonitorError> {
        self.store.add_prediction(p)?;
        self.owed.push(ack);
        Ok(())
    }

    /// `ack`'s record changed nothing here, but it is finished in order with the batch.
    pub fn owe(&mut self, ack: Ack) -> Result<(), MonitorError> {
        self.owed.push(ack);
        Ok(())
    }

    /// A feedback record: decoded (waiting out registry outages), checked, joined or kept
    /// pending, or refused to the outbox with its reason.
    pub async fn on_feedback(
        &mut self,
        message: &OwnedMessage,
        ack: Option<Ack>,
        shutdown: &Shutdown,
    ) -> Result<(), MonitorError> {
        let record = Record {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            timestamp_ms: message.timestamp().to_millis(),
        };
        let decoded = decode(&self.feedback, &record.value, shutdown).await?;
        // A store failure stops the stage: the record is never finished, so it comes again.
        let (name, reason) = match self.feedback(decoded, &record)? {
            LabelOutcome::Refused(reason) => ("dead_letter", reason.code()),
            outcome => (outcome.name(), ""),
        };
        metrics::counter!("streamscore_quality_feedback_total", "outcome" => name, "reason" => reason).increment(1);
        if let Some(ack) = ack {
            self.owed.push(ack);
        }
        Ok(())
    }

    fn feedback(
        &mut self,
        decoded: Result<Feedback, DecodeError>,
        record: &Record,
    ) -> Result<LabelOutcome, MonitorError> {
        let now = streamscore_contracts::now_micros();
        let feedback = match decoded {
            Ok(feedback) => feedback,
            Err(e) => {
                self.store.refuse(e.reason(), &e.to_string(), None, None, record)?;
                return Ok(LabelOutcome::Refused(e.reason()));
            }
        };
        if let Some((reason, detail)) = check(&feedback, record.key.as_deref()) {
            let request = (!feedback.request_id.is_empty()).then_some(feedback.request_id.as_str());
            let tenant = (!feedback.tenant.is_empty()).then_some(feedback.tenant.as_str());
            self.store.refuse(reason, &detail, request, tenant, record)?;
            return Ok(LabelOutcome::Refused(reason));
        }
        let label = Label {
            request_id: feedback.request_id,
            tenant: feedback.tenant,
            actual: feedback.actual,
            observed_at: feedback.observed_at,
            record: record.clone(),
        };
        Ok(self.store.add_label(&label, now)?)
    }

    /// When the batch is due (its size or age): commits it, finishes its records, and sends
    /// what waits in the outbox. Called after every record and on the stage's timer.
    pub async fn tick(&mut self, sink: &Sink) -> Result<(), MonitorError> {
        while let Ok(finished) = self.sent_rx.try_recv() {
            // The dead letter and its commitment are acknowledged: out of the outbox.
            self.store.sent(finished.offset)?;
            self.sending.remove(&finished.offset);
        }
        if self.owed.len() < BATCH && self.last_commit.elapsed() < self.config.commit_every {
            return Ok(());
        }
        self.commit()?;
        self.send_outbox(sink).await
    }

    /// Commits the batch now and finishes its records.
    pub fn commit(&mut self) -> Result<(), MonitorError> {
        self.store.commit()?;
        self.last_commit = Instant::now();
        for ack in self.owed.drain(..) {
            ack.done();
        }
        Ok(())
    }

    async fn send_outbox(&mut self, sink: &Sink) -> Result<(), MonitorError> {
        let refused = self.store.outbox(OUTBOX_BATCH, &self.sending)?;
        if refused.is_empty() {
            return Ok(());
        }
        let key = self.committer.audit().key().await;
        for r in refused {
            let source = SourceOffset::new(&r.record.topic, r.record.partition, r.record.offset);
            let mut dead_letter = DeadLetter {
                lineage: Lineage::derive(source, Stage::Monitor, "dead-letter", &self.instance, r.request_id, r.tenant),
                reason: r.reason,
                detail: r.detail,
                original_key: r.record.key,
                writer_schema_id: streamscore_contracts::WireHeader::parse(&r.record.value)
                    .ok()
                    .and_then(|(h, _)| i32::try_from(h.schema_id).ok()),
                original_value: Some(r.record.value),
                original_timestamp_ms: r.record.timestamp_ms,
                original_value_length: None,
                original_value_sha256: None,
            };
            dead_letter.fit(sink.max_message_bytes());
            tracing::warn!(reason = dead_letter.reason.code(), detail = dead_letter.detail, "feedback dead-lettered");
            let bytes = self.dead_letters.encode(&dead_letter)?;
            let hash = key.event_hash(&bytes);
            let ack = Ack::new(0, r.id, self.sent_tx.clone());
            let record_key = dead_letter.original_key.as_deref().unwrap_or_default();
            let seal = Seal { hash: &hash, key_id: key.id() };
            sink.send_sealed(&self.dead_letter_topic, record_key, &bytes, &ack, seal).await?;
            self.committer.add(vec![(dead_letter.lineage.event_id.clone(), hash)], ack).await?;
            self.sending.insert(r.id);
        }
        self.committer.flush().await?;
        Ok(())
    }

    /// Expires pending labels, evicts what no label can join any more, computes the figures
    /// (off the reactor, on a reader connection), exports them and checks them against the
    /// policy: a version past a threshold is `QUALITY_DEGRADED` (audited once, until it is
    /// `QUALITY_RECOVERED`).
    pub async fn refresh(&mut self, sink: &Sink) -> Result<(), MonitorError> {
        let now = streamscore_contracts::now_micros();
        self.store.expire_pending(now)?;
        self.store.evict(now, now.saturating_sub(micros(self.config.retention)))?;
        self.commit()?;
        self.send_outbox(sink).await?;
        let dir = self.config.store_dir.clone();
        let computed = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            report::read(&dir, now, &|_, _| None).map(|r| (r, started.elapsed()))
        })
        .await
        .map_err(|e| MonitorError::Quality(format!("computing the figures panicked: {e}")))?;
        let (report, took) = computed?;
        report::export(&report);
        let stats = self.store.stats()?;
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!("streamscore_quality_pending_labels").set(stats.pending as f64);
            metrics::gauge!("streamscore_quality_store_bytes").set(stats.bytes as f64);
        }
        tracing::debug!(rows = report.rows.len(), took_ms = took.as_millis() as u64, "quality figures");
        self.judge(&report).await?;
        self.last = Some(report);
        Ok(())
    }

    async fn judge(&mut self, report: &QualityReport) -> Result<(), MonitorError> {
        let recorded = self.store.degraded()?;
        let mut versions: Vec<(String, String)> =
            report.rows.iter().map(|r| (r.model.clone(), r.version.clone())).collect();
        versions.sort_unstable();
        versions.dedup();
        for (model, version) in versions {
            let thresholds = self.config.policy.for_version(&model, &version);
            let Some(row) = report.version(&model, &version, thresholds.window()) else { continue };
            let breaches = thresholds.breaches(&row.figures);
            let degraded = !breaches.is_empty();
            metrics::gauge!("streamscore_quality_degraded", "model" => model.clone(), "version" => version.clone())
                .set(if degraded { 1.0 } else { 0.0 });
            let was = recorded.contains_key(&(model.clone(), version.clone()));
            let subject = format!("{model}/{version}");
            let mut details = HashMap::from([
                ("window".to_owned(), row.window.to_owned()),
                ("labeled".to_owned(), row.figures.labeled.to_string()),
            ]);
            if degraded && !was {
                let detail = breaches.join(", ");
                tracing::warn!(model, version, window = row.window, %detail, "QUALITY_DEGRADED");
                details.insert("breaches".to_owned(), detail.clone());
                self.committer.audit().record("QUALITY_DEGRADED", &subject, None, details).await?;
                self.store.set_degraded(&model, &version, Some(&detail))?;
            } else if !degraded && was && row.figures.labeled >= thresholds.min_labeled.unwrap_or(100) {
                tracing::info!(model, version, window = row.window, "QUALITY_RECOVERED");
                self.committer.audit().record("QUALITY_RECOVERED", &subject, None, details).await?;
                self.store.set_degraded(&model, &version, None)?;
            }
        }
        let now = self.store.degraded()?;
        *self.config.degraded.write().unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        self.commit()
    }

    /// Commits what is owed and waits (bounded) for the outbox's dead letters in flight.
    pub async fn close(&mut self, sink: &Sink) -> Result<(), MonitorError> {
        self.commit()?;
        self.send_outbox(sink).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.sending.is_empty() && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(100), self.sent_rx.recv()).await {
                Ok(Some(finished)) => {
                    self.store.sent(finished.offset)?;
                    self.sending.remove(&finished.offset);
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        self.store.commit()?;
        Ok(())
    }
}

/// A duration in µs, saturating.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The prediction a scored outcome is, with its version's threshold applied; `None` for
/// rejections, failures and outcomes without a request id, version or score.
pub fn prediction_of(outcome: &PredictionOutcome, models: &ModelStore) -> Option<Prediction> {
    if outcome.status != OutcomeStatus::Scored {
        return None;
    }
    let version = outcome.model_version.clone()?;
    let score = outcome.score?;
    let threshold = models.get(&outcome.model, &version).map(|m| m.meta.threshold);
    Some(Prediction {
        request_id: outcome.lineage.request_id.clone()?,
        tenant: outcome.lineage.tenant.clone()?,
        model: outcome.model.clone(),
        version,
        shadow: outcome.shadow,
        created_at: outcome.request_created_at,
        score,
        predicted: threshold.map(|t| score >= t),
    })
}

/// What is wrong with a label, if anything: its reason and a detail saying what to do.
pub fn check(feedback: &Feedback, key: Option<&[u8]>) -> Option<(DeadLetterReason, String)> {
    if feedback.request_id.trim().is_empty() {
        return Some((DeadLetterReason::MissingRequestId, "feedback without a request_id".to_owned()));
    }
    if feedback.tenant.trim().is_empty() {
        return Some((DeadLetterReason::FeedbackInvalid, "feedback without a tenant".to_owned()));
    }
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        if key != feedback.tenant.as_bytes() {
            return Some((
                DeadLetterReason::TenantMismatch,
                format!(
                    "the record key {:?} names another tenant than the feedback ({:?}); key feedback by its tenant",
                    String::from_utf8_lossy(key),
                    feedback.tenant
                ),
            ));
        }
    }
    if !feedback.actual.is_finite() {
        return Some((
            DeadLetterReason::NonFinite,
            format!("actual is {}: give 1.0 (positive) or 0.0 (negative)", feedback.actual),
        ));
    }
    if feedback.actual != 0.0 && feedback.actual != 1.0 {
        return Some((
            DeadLetterReason::FeedbackInvalid,
            format!(
                "actual {} is not a label of a binary model: give 1.0 (positive) or 0.0 (negative)",
                feedback.actual
            ),
        ));
    }
    None
}

/// Decodes a feedback record, waiting out registry outages until a stop is requested.
async fn decode(
    codec: &Codec<Feedback>,
    bytes: &[u8],
    shutdown: &Shutdown,
) -> Result<Result<Feedback, DecodeError>, Stopped> {
    retry::until_done(
        shutdown,
        || "the schema registry (a feedback record waits for its writer schema)".to_owned(),
        || async {
            match codec.decode(bytes).await {
                Ok(decoded) => Attempt::Done(Ok(decoded.value)),
                Err(e) if e.is_retryable() => Attempt::Retry(e),
                Err(e) => Attempt::Done(Err(e)),
            }
        },
        |e, wait| tracing::warn!(error = %e, ?wait, "schema registry unavailable; the feedback record waits"),
    )
    .await
}
