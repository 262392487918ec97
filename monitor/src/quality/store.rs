//! The join's state: an embedded SQLite database on local disk (`<dir>/quality.sqlite3`).
//!
//! Why SQLite (rusqlite, bundled, already a workspace dependency): the join needs point
//! lookups by request id (a label finds its outcomes, an outcome its pending labels), range
//! deletes by time (the horizon), a scan of the labeled pairs per refresh, and atomic
//! batches that survive `kill -9`. SQLite in WAL mode gives all four in one file, with
//! `synchronous=FULL` for a commit that survives a power loss too, and a bounded page cache
//! instead of a heap that grows with the horizon. A key-value store (sled, RocksDB) would add
//! a dependency and hand-written secondary indexes for the same work.
//!
//! - **Bounded.** Outcomes are kept for the label horizon after their request's creation,
//!   pending labels until the horizon has passed without their request, labeled pairs for the
//!   retention; `evict` deletes the rest.
//! - **Rebuildable.** The topics are the truth: a store that is new (or deleted) is filled by
//!   reading the prediction and feedback topics from their start ([`super::rebuild`]).
//! - **Restart-safe.** Every change is idempotent: an outcome is keyed by (request, model,
//!   version) and a label by (request, tenant), so a record delivered again after a crash
//!   changes nothing and counts nothing twice. A record's offset is committed only after the
//!   transaction holding its change is (the monitor finishes its `Ack` then).
//! - **Outbox.** A label to dead-letter is written to `outbox` in the same transaction and
//!   deleted once its dead letter is acknowledged, so a crash in between sends it again
//!   (with the same event id) instead of losing it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use streamscore_contracts::DeadLetterReason;

/// The database file under the store's directory.
pub const FILE: &str = "quality.sqlite3";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("quality store {path}: {source}; delete the directory to rebuild it from the topics")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("quality store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A scored outcome, as the join keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub request_id: String,
    pub model: String,
    pub version: String,
    pub tenant: String,
    pub shadow: bool,
    /// The request's event time, µs: the prediction time windows go by.
    pub created_at: i64,
    pub score: f64,
    /// Score at or above the version's threshold; `None` when the threshold is unknown.
    pub predicted: Option<bool>,
}

/// A valid label, with the record it came in (dead-lettered with its bytes if it is never
/// joined).
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub request_id: String,
    pub tenant: String,
    pub actual: f64,
    pub observed_at: i64,
    pub record: Record,
}

/// A feedback record's coordinates and bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The record in six columns of `row` from `at` on: topic, partition, offset, key, value
    /// (a NULL value is empty), timestamp in ms.
    fn from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            topic: row.get(at)?,
            partition: row.get(at + 1)?,
            offset: row.get(at + 2)?,
            key: row.get(at + 3)?,
            value: row.get::<_, Option<Vec<u8>>>(at + 4)?.unwrap_or_default(),
            timestamp_ms: row.get(at + 5)?,
        })
    }
}

/// A label the join refuses, waiting in the outbox for its dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub id: i64,
    pub reason: DeadLetterReason,
    pub detail: String,
    pub request_id: Option<String>,
    pub tenant: Option<String>,
    pub record: Record,
}

/// What a label did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelOutcome {
    /// Joined to this many outcomes (the primary and shadows).
    Joined(usize),
    /// The request's outcome is not known (yet): kept until the horizon has passed.
    Pending,
    /// The same label again (a redelivery): nothing changed.
    Duplicate,
    /// A later label for the same request and tenant: it replaces the earlier one.
    Corrected,
    /// An earlier label than the one kept: ignored.
    Stale,
    /// Refused (tenant, horizon): written to the outbox.
    Refused(DeadLetterReason),
}

impl LabelOutcome {
    /// The metric label of the outcome.
    pub fn name(self) -> &'static str {
        match self {
            Self::Joined(_) => "joined",
            Self::Pending => "pending",
            Self::Duplicate => "duplicate",
            Self::Corrected => "corrected",
            Self::Stale => "stale",
            Self::Refused(_) => "dead_letter",
        }
    }
}

/// What an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PredictionOutcome {
    /// False for a redelivered outcome (already kept).
    pub new: bool,
    /// Labels it joined (pending ones, or one already joined to its request's other outcomes).
    pub joined: usize,
    /// Pending labels it refused (another tenant's, or past the horizon).
    pub refused: usize,
}

/// One labeled prediction, as the figures need it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledRow {
    pub model: String,
    pub version: String,
    pub tenant: String,
    pub shadow: bool,
    pub created_at: i64,
    pub score: f64,
    pub predicted: Option<bool>,
    pub actual: f64,
    pub observed_at: i64,
}

/// Sizes, for the metrics and the report per million predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub predictions: u64,
    pub labels: u64,
    pub pending: u64,
    pub labeled: u64,
    pub outbox: u64,
    /// The database file and its write-ahead log.
    pub bytes: u64,
}

/// Predictions made per (model, version, tenant) and minute of their request's creation.
pub type Volumes = HashMap<(String, String, String), Vec<(i64, u64)>>;
/// Predictions made per (model, version, tenant) since the store started.
pub type Totals = HashMap<(String, String, String), u64>;

const MINUTE_US: i64 = 60_000_000;

/// The store; see the module documentation.
#[derive(Debug)]
pub struct QualityStore {
    conn: Connection,
    path: PathBuf,
    /// Labels count for outcomes up to this long after the request's creation, µs.
    horizon_us: i64,
    fresh: bool,
    in_transaction: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, tenant TEXT NOT NULL,
    shadow INTEGER NOT NULL, created_at INTEGER NOT NULL, score REAL NOT NULL, predicted INTEGER,
    PRIMARY KEY (request_id, model, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (created_at);
CREATE TABLE IF NOT EXISTS labels (
    request_id TEXT NOT NULL, tenant TEXT NOT NULL, actual REAL NOT NULL, observed_at INTEGER NOT NULL,
    joined INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    record_key BLOB, record_value BLOB, record_timestamp_ms INTEGER,
    PRIMARY KEY (request_id, tenant)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_pending ON labels (expires_at) WHERE joined = 0;
CREATE INDEX IF NOT EXISTS labels_joined ON labels (observed_at) WHERE joined = 1;
CREATE TABLE IF NOT EXISTS labeled (
    request_id TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, tenant TEXT NOT NULL,
    shadow INTEGER NOT NULL, created_at INTEGER NOT NULL, score REAL NOT NULL, predicted INTEGER,
    actual REAL NOT NULL, observed_at INTEGER NOT NULL,
    PRIMARY KEY (request_id, model, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labeled_by_time ON labeled (created_at);
CREATE TABLE IF NOT EXISTS volume (
    model TEXT NOT NULL, version TEXT NOT NULL, tenant TEXT NOT NULL, minute INTEGER NOT NULL,
    predictions INTEGER NOT NULL,
    PRIMARY KEY (model, version, tenant, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    model TEXT NOT NULL, version TEXT NOT NULL, tenant TEXT NOT NULL, predictions INTEGER NOT NULL,
    PRIMARY KEY (model, version, tenant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, reason TEXT NOT NULL, detail TEXT NOT NULL, request_id TEXT, tenant TEXT,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    record_key BLOB, record_value BLOB, record_timestamp_ms INTEGER,
    UNIQUE (topic, partition, offset)
);
CREATE TABLE IF NOT EXISTS degraded (
    model TEXT NOT NULL, version TEXT NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (model, version)
) WITHOUT ROWID;
";

impl QualityStore {
    /// Opens (or creates) the store under `dir`. `horizon_us`: how long after a request's
    /// creation its label still counts.
    pub fn open(dir: &Path, horizon_us: i64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_owned(), source })?;
        let path = dir.join(FILE);
        let fresh = !path.exists();
        let conn = Connection::open(&path).map_err(|source| StoreError::Sqlite { path: path.clone(), source })?;
        let mut store = Self { conn, path, horizon_us, fresh, in_transaction: false };
        store.setup()?;
        Ok(store)
    }

    /// A second connection to the store at `dir`, for reading while the monitor writes (WAL
    /// readers do not block the writer): refreshes, and a controller reading the figures.
    pub fn open_reader(dir: &Path) -> Result<Connection, StoreError> {
        let path = dir.join(FILE);
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite { path: path.clone(), source })?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|source| StoreError::Sqlite { path, source })?;
        Ok(conn)
    }

    fn setup(&mut self) -> Result<(), StoreError> {
        let sql = format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -32768; {SCHEMA}");
        self.conn.execute_batch(&sql).map_err(|e| self.error(e))?;
        if self.fresh {
            let now = streamscore_contracts::now_micros().to_string();
            self.conn
                .execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('created_at', ?1)", [now])
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }

    /// Whether this store was created by this open (it must be rebuilt from the topics).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the rebuild done (a store whose rebuild was interrupted is rebuilt again).
    pub fn set_rebuilt(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('rebuilt', '1')", [])
            .map_err(|e| self.error(e))?;
        self.fresh = false;
        Ok(())
    }

    /// Whether the store was rebuilt from the topics (or built from the start) completely.
    pub fn rebuilt(&self) -> Result<bool, StoreError> {
        let value: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'rebuilt'", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.error(e))?;
        Ok(value.is_some())
    }

    /// Starts a batch of changes (if none is open); [`QualityStore::commit`] makes them durable.
    pub fn begin(&mut self) -> Result<(), StoreError> {
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.error(e))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Commits the open batch (durable once this returns).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.in_transaction {
            self.conn.execute_batch("COMMIT").map_err(|e| self.error(e))?;
            self.in_transaction = false;
        }
        Ok(())
    }

    /// Keeps a scored outcome and joins the labels waiting for it.
    pub fn add_prediction(&mut self, p: &Prediction) -> Result<PredictionOutcome, StoreError> {
        self.begin()?;
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO predictions
                 (request_id, model, version, tenant, shadow, created_at, score, predicted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    p.request_id,
                    p.model,
                    p.version,
                    p.tenant,
                    p.shadow,
                    p.created_at,
                    p.score,
                    p.predicted
                ])
            })
            .map_err(|e| self.error(e))?;
        let mut outcome = PredictionOutcome { new: inserted == 1, ..PredictionOutcome::default() };
        if !outcome.new {
            return Ok(outcome);
        }
        let minute = p.created_at.div_euclid(MINUTE_US);
        self.conn
            .prepare_cached(
                "INSERT INTO volume (model, version, tenant, minute, predictions) VALUES (?1, ?2, ?3, ?4, 1)
                 ON CONFLICT DO UPDATE SET predictions = predictions + 1",
            )
            .and_then(|mut s| s.execute(params![p.model, p.version, p.tenant, minute]))
            .and_then(|_| {
                self.conn
                    .prepare_cached(
                        "INSERT INTO totals (model, version, tenant, predictions) VALUES (?1, ?2, ?3, 1)
                         ON CONFLICT DO UPDATE SET predictions = predictions + 1",
                    )?
                    .execute(params![p.model, p.version, p.tenant])
            })
            .map_err(|e| self.error(e))?;
        // Labels of this request: joined ones (to its other outcomes) and pending ones.
        let labels = self.labels_of(&p.request_id)?;
        for label in labels {
            if label.joined {
                if label.tenant == p.tenant && label.observed_at - p.created_at <= self.horizon_us {
                    self.insert_labeled(p, label.actual, label.observed_at)?;
                    outcome.joined += 1;
                }
                continue;
            }
            match self.refusal(&label.tenant, label.observed_at, std::slice::from_ref(p)) {
                None => {
                    self.insert_labeled(p, label.actual, label.observed_at)?;
                    self.conn
                        .prepare_cached(
                            "UPDATE labels SET joined = 1, record_key = NULL, record_value = NULL
                             WHERE request_id = ?1 AND tenant = ?2",
                        )
                        .and_then(|mut s| s.execute(params![p.request_id, label.tenant]))
                        .map_err(|e| self.error(e))?;
                    outcome.joined += 1;
                }
                Some((reason, detail)) => {
                    self.refuse(reason, &detail, Some(&p.request_id), Some(&label.tenant), &label.record)?;
                    self.conn
                        .prepare_cached("DELETE FROM labels WHERE request_id = ?1 AND tenant = ?2")
                        .and_then(|mut s| s.execute(params![p.request_id, label.tenant]))
                        .map_err(|e| self.error(e))?;
                    outcome.refused += 1;
                }
            }
        }
        Ok(outcome)
    }

    /// Joins a valid label to its request's outcomes, or keeps it pending until they come
    /// (at most until `now` passes its observation, or its reading, plus the horizon).
    pub fn add_label(&mut self, label: &Label, now: i64) -> Result<LabelOutcome, StoreError> {
        self.begin()?;
        let kept: Option<(f64, i64, bool)> = self
            .conn
            .prepare_cached("SELECT actual, observed_at, joined FROM labels WHERE request_id = ?1 AND tenant = ?2")
            .and_then(|mut s| {
                s.query_row(params![label.request_id, label.tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| self.error(e))?;
        if let Some((actual, observed_at, joined)) = kept {
            if actual.to_bits() == label.actual.to_bits() && observed_at == label.observed_at {
                return Ok(LabelOutcome::Duplicate);
            }
            if label.observed_at <= observed_at {
                return Ok(LabelOutcome::Stale);
            }
            // A correction: the later label replaces the kept one wherever it counts.
            self.conn
                .prepare_cached("UPDATE labels SET actual = ?3, observed_at = ?4 WHERE request_id = ?1 AND tenant = ?2")
                .and_then(|mut s| s.execute(params![label.request_id, label.tenant, label.actual, label.observed_at]))
                .map_err(|e| self.error(e))?;
            if joined {
                self.conn
                    .prepare_cached(
                        "UPDATE labeled SET actual = ?3, observed_at = ?4 WHERE request_id = ?1 AND tenant = ?2",
                    )
                    .and_then(|mut s| {
                        s.execute(params![label.request_id, label.tenant, label.actual, label.observed_at])
                    })
                    .map_err(|e| self.error(e))?;
            }
            return Ok(LabelOutcome::Corrected);
        }
        let outcomes = self.predictions_of(&label.request_id)?;
        if outcomes.is_empty() {
            let expires_at = label.observed_at.min(now).saturating_add(self.horizon_us);
            let r = &label.record;
            self.conn
                .prepare_cached(
                    "INSERT INTO labels (request_id, tenant, actual, observed_at, joined, expires_at,
                     topic, partition, offset, record_key, record_value, record_timestamp_ms)
                     VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        label.request_id,
                        label.tenant,
                        label.actual,
                        label.observed_at,
                        expires_at,
                        r.topic,
                        r.partition,
                        r.offset,
                        r.key,
                        r.value,
                        r.timestamp_ms
                    ])
                })
                .map_err(|e| self.error(e))?;
            return Ok(LabelOutcome::Pending);
        }
        if let Some((reason, detail)) = self.refusal(&label.tenant, label.observed_at, &outcomes) {
            self.refuse(reason, &detail, Some(&label.request_id), Some(&label.tenant), &label.record)?;
            return Ok(LabelOutcome::Refused(reason));
        }
        for p in &outcomes {
            self.insert_labeled(p, label.actual, label.observed_at)?;
        }
        let r = &label.record;
        self.conn
            .prepare_cached(
                "INSERT INTO labels (request_id, tenant, actual, observed_at, joined, expires_at,
                 topic, partition, offset) VALUES (?1, ?2, ?3, ?4, 1, 0, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    label.request_id,
                    label.tenant,
                    label.actual,
                    label.observed_at,
                    r.topic,
                    r.partition,
                    r.offset
                ])
            })
            .map_err(|e| self.error(e))?;
        Ok(LabelOutcome::Joined(outcomes.len()))
    }

    /// A label refused before the join (undecodable, not a label, another tenant's key):
    /// written to the outbox in this batch.
    pub fn refuse(
        &mut self,
        reason: DeadLetterReason,
        detail: &str,
        request_id: Option<&str>,
        tenant: Option<&str>,
        record: &Record,
    ) -> Result<(), StoreError> {
        self.begin()?;
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO outbox (reason, detail, request_id, tenant, topic, partition, offset,
                 record_key, record_value, record_timestamp_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    reason.code(),
                    detail,
                    request_id,
                    tenant,
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key,
                    record.value,
                    record.timestamp_ms
                ])
            })
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Why a label of `tenant` observed at `observed_at` may not join `outcomes` (all of one
    /// request), if it may not.
    fn refusal(&self, tenant: &str, observed_at: i64, outcomes: &[Prediction]) -> Option<(DeadLetterReason, String)> {
        let p = outcomes.first()?;
        if p.tenant != tenant {
            return Some((
                DeadLetterReason::FeedbackTenantMismatch,
                format!(
                    "request {} is {}'s, not {tenant}'s: a tenant labels only its own requests",
                    p.request_id, p.tenant
                ),
            ));
        }
        let delay = observed_at.saturating_sub(p.created_at);
        if delay > self.horizon_us {
            #[allow(clippy::cast_precision_loss)]
            return Some((
                DeadLetterReason::FeedbackUnknownRequest,
                format!(
                    "observed {:.0} s after request {} was created, past the label horizon ({:.0} s)",
                    delay as f64 / 1e6,
                    p.request_id,
                    self.horizon_us as f64 / 1e6
                ),
            ));
        }
        None
    }

    fn insert_labeled(&self, p: &Prediction, actual: f64, observed_at: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO labeled (request_id, model, version, tenant, shadow, created_at, score,
                 predicted, actual, observed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    p.request_id,
                    p.model,
                    p.version,
                    p.tenant,
                    p.shadow,
                    p.created_at,
                    p.score,
                    p.predicted,
                    actual,
                    observed_at
                ])
            })
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    fn predictions_of(&self, request_id: &str) -> Result<Vec<Prediction>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT request_id, model, version, tenant, shadow, created_at, score, predicted
                 FROM predictions WHERE request_id = ?1",
            )
            .and_then(|mut s| {
                s.query_map([request_id], |r| {
                    Ok(Prediction {
                        request_id: r.get(0)?,
                        model: r.get(1)?,
                        version: r.get(2)?,
                        tenant: r.get(3)?,
                        shadow: r.get(4)?,
                        created_at: r.get(5)?,
                        score: r.get(6)?,
                        predicted: r.get(7)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.error(e))
    }

    fn labels_of(&self, request_id: &str) -> Result<Vec<KeptLabel>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT tenant, actual, observed_at, joined, topic, partition, offset, record_key, record_value,
                 record_timestamp_ms FROM labels WHERE request_id = ?1",
            )
            .and_then(|mut s| s.query_map([request_id], |r| KeptLabel::from_row(r, 0))?.collect())
            .map_err(|e| self.error(e))
    }

    /// Pending labels whose horizon passed by `now` without their request: moved to the
    /// outbox (`FEEDBACK_UNKNOWN_REQUEST`). Returns how many.
    pub fn expire_pending(&mut self, now: i64) -> Result<usize, StoreError> {
        self.begin()?;
        let expired: Vec<(String, KeptLabel)> = self
            .conn
            .prepare_cached(
                "SELECT request_id, tenant, actual, observed_at, joined, topic, partition, offset, record_key,
                 record_value, record_timestamp_ms FROM labels WHERE joined = 0 AND expires_at < ?1",
            )
            .and_then(|mut s| s.query_map([now], |r| Ok((r.get(0)?, KeptLabel::from_row(r, 1)?)))?.collect())
            .map_err(|e| self.error(e))?;
        #[allow(clippy::cast_precision_loss)]
        let horizon = self.horizon_us as f64 / 1e6;
        for (request_id, label) in &expired {
            let detail = format!(
                "no scored outcome of request {request_id} within the label horizon ({horizon:.0} s): never scored, \
                 dead-lettered, or scored more than the horizon before the label"
            );
            self.refuse(
                DeadLetterReason::FeedbackUnknownRequest,
                &detail,
                Some(request_id),
                Some(&label.tenant),
                &label.record,
            )?;
            self.conn
                .prepare_cached("DELETE FROM labels WHERE request_id = ?1 AND tenant = ?2")
                .and_then(|mut s| s.execute(params![request_id, label.tenant]))
                .map_err(|e| self.error(e))?;
        }
        Ok(expired.len())
    }

    /// Deletes what no label can join any more: outcomes of requests created more than the
    /// horizon ago, joined labels observed more than the horizon ago, labeled pairs and
    /// volumes of requests created before `keep_from`.
    pub fn evict(&mut self, now: i64, keep_from: i64) -> Result<(), StoreError> {
        self.begin()?;
        let before = now.saturating_sub(self.horizon_us);
        let minute = keep_from.min(before).div_euclid(MINUTE_US);
        self.conn
            .execute("DELETE FROM predictions WHERE created_at < ?1", [before])
            .and_then(|_| self.conn.execute("DELETE FROM labels WHERE joined = 1 AND observed_at < ?1", [before]))
            .and_then(|_| self.conn.execute("DELETE FROM labeled WHERE created_at < ?1", [keep_from]))
            .and_then(|_| self.conn.execute("DELETE FROM volume WHERE minute < ?1", [minute]))
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    /// Labels waiting in the outbox for their dead letter, at most `limit`, oldest first,
    /// leaving out the ids in `sending`.
    pub fn outbox(&self, limit: usize, sending: &std::collections::HashSet<i64>) -> Result<Vec<Refused>, StoreError> {
        let mut out = Vec::new();
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, reason, detail, request_id, tenant, topic, partition, offset, record_key, record_value,
                 record_timestamp_ms FROM outbox ORDER BY id",
            )
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |r| {
                let reason: String = r.get(1)?;
                Ok(Refused {
                    id: r.get(0)?,
                    reason: reason_from_code(&reason),
                    detail: r.get(2)?,
                    request_id: r.get(3)?,
                    tenant: r.get(4)?,
                    record: Record::from_row(r, 5)?,
                })
            })
            .map_err(|e| self.error(e))?;
        for row in rows {
            let row = row.map_err(|e| self.error(e))?;
            if !sending.contains(&row.id) {
                out.push(row);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The dead letter of outbox entry `id` was acknowledged.
    pub fn sent(&mut self, id: i64) -> Result<(), StoreError> {
        self.begin()?;
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    /// The degradations recorded (model, version → what was below its threshold).
    pub fn degraded(&self) -> Result<HashMap<(String, String), String>, StoreError> {
        degraded(&self.conn).map_err(|e| self.error(e))
    }

    /// Records that (model, version) is degraded (`Some(detail)`) or no longer is.
    pub fn set_degraded(&mut self, model: &str, version: &str, detail: Option<&str>) -> Result<(), StoreError> {
        self.begin()?;
        let result = match detail {
            Some(detail) => self.conn.execute(
                "INSERT OR REPLACE INTO degraded (model, version, detail) VALUES (?1, ?2, ?3)",
                params![model, version, detail],
            ),
            None => {
                self.conn.execute("DELETE FROM degraded WHERE model = ?1 AND version = ?2", params![model, version])
            }
        };
        result.map(|_| ()).map_err(|e| self.error(e))
    }

    /// Sizes of what the store holds.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        stats(&self.conn, &self.path).map_err(|e| self.error(e))
    }
}

/// A label as kept, with its record while it is pending.
#[derive(Debug)]
struct KeptLabel {
    tenant: String,
    actual: f64,
    observed_at: i64,
    joined: bool,
    record: Record,
}

impl KeptLabel {
    /// The label in ten columns of `row` from `at` on: tenant, actual, observed_at, joined,
    /// then its record's six ([`Record::from_row`]).
    fn from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            tenant: row.get(at)?,
            actual: row.get(at + 1)?,
            observed_at: row.get(at + 2)?,
            joined: row.get(at + 3)?,
            record: Record::from_row(row, at + 4)?,
        })
    }
}

/// The dead-letter reason a stored code names (`OTHER` for one this build does not know).
fn reason_from_code(code: &str) -> DeadLetterReason {
    use DeadLetterReason as R;
    [
        R::FeedbackUnknownRequest,
        R::FeedbackTenantMismatch,
        R::FeedbackInvalid,
        R::NonFinite,
        R::TenantMismatch,
        R::MissingRequestId,
        R::Undecodable,
        R::UnknownSchema,
        R::SchemaInvalid,
    ]
    .into_iter()
    .find(|r| r.code() == code)
    .unwrap_or(R::Other)
}

/// Calls `f` with each labeled pair of a request created at or after `from` (µs), one at a
/// time (a refresh over millions of pairs holds none of the rows).
pub fn for_each_labeled(conn: &Connection, from: i64, mut f: impl FnMut(LabeledRow)) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(
        "SELECT model, version, tenant, shadow, created_at, score, predicted, actual, observed_at
         FROM labeled WHERE created_at >= ?1",
    )?;
    let mut rows = statement.query([from])?;
    while let Some(r) = rows.next()? {
        f(LabeledRow {
            model: r.get(0)?,
            version: r.get(1)?,
            tenant: r.get(2)?,
            shadow: r.get(3)?,
            created_at: r.get(4)?,
            score: r.get(5)?,
            predicted: r.get(6)?,
            actual: r.get(7)?,
            observed_at: r.get(8)?,
        });
    }
    Ok(())
}

/// The labeled pairs of requests created at or after `from` (µs).
pub fn labeled(conn: &Connection, from: i64) -> rusqlite::Result<Vec<LabeledRow>> {
    let mut statement = conn.prepare_cached(
        "SELECT model, version, tenant, shadow, created_at, score, predicted, actual, observed_at
         FROM labeled WHERE created_at >= ?1",
    )?;
    let rows = statement.query_map([from], |r| {
        Ok(LabeledRow {
            model: r.get(0)?,
            version: r.get(1)?,
            tenant: r.get(2)?,
            shadow: r.get(3)?,
            created_at: r.get(4)?,
            score: r.get(5)?,
            predicted: r.get(6)?,
            actual: r.get(7)?,
            observed_at: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// Predictions per minute from minute `from` on, and in total since the store started.
pub fn volumes(conn: &Connection, from_minute: i64) -> rusqlite::Result<(Volumes, Totals)> {
    let mut minutes: Volumes = HashMap::new();
    let mut statement =
        conn.prepare_cached("SELECT model, version, tenant, minute, predictions FROM volume WHERE minute >= ?1")?;
    let rows = statement.query_map([from_minute], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?),
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (key, minute, n) = row?;
        minutes.entry(key).or_default().push((minute, u64::try_from(n).unwrap_or(0)));
    }
    let mut totals = HashMap::new();
    let mut statement = conn.prepare_cached("SELECT model, version, tenant, predictions FROM totals")?;
    let rows = statement.query_map([], |r| {
        Ok(((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?), r.get::<_, i64>(3)?))
    })?;
    for row in rows {
        let (key, n) = row?;
        totals.insert(key, u64::try_from(n).unwrap_or(0));
    }
    Ok((minutes, totals))
}

/// The minute (since the epoch) of a µs time.
pub fn minute_of(micros: i64) -> i64 {
    micros.div_euclid(MINUTE_US)
}

fn degraded(conn: &Connection) -> rusqlite::Result<HashMap<(String, String), String>> {
    let mut statement = conn.prepare_cached("SELECT model, version, detail FROM degraded")?;
    let rows = statement.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
    rows.collect()
}

/// Sizes of the store `conn` reads.
pub fn stats(conn: &Connection, path: &Path) -> rusqlite::Result<StoreStats> {
    let count = |sql: &str| -> rusqlite::Result<u64> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| u64::try_from(n).unwrap_or(0))
    };
    let file = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(StoreStats {
        predictions: count("SELECT COUNT(*) FROM predictions")?,
        labels: count("SELECT COUNT(*) FROM labels WHERE joined = 1")?,
        pending: count("SELECT COUNT(*) FROM labels WHERE joined = 0")?,
        labeled: count("SELECT COUNT(*) FROM labeled")?,
        outbox: count("SELECT COUNT(*) FROM outbox")?,
        bytes: file(path.to_owned()) + file(PathBuf::from(wal)),
    })
}

#[cfg(test)]
mod tests;
