//! Rust types of the event contracts, one per file of `schemas/`.
//!
//! Field names, order and types match the `.avsc` files; `tests/contracts.rs` proves it by
//! comparing the Parsing Canonical Form of each derived schema with its file's.

use std::collections::HashMap;

use apache_avro::AvroSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lineage::Lineage;
use crate::schemas::{self, SchemaFile};

/// Features by name, as requests and predictions carry them (an Avro `map` of `double`).
///
/// Hashed with foldhash rather than std's SipHash: a request's 16 names are hashed when it is
/// decoded and again when it is checked, and ingest's decision per request fell from 3.29 to
/// 2.80 µs with it (`cargo bench --bench ingest`). Its seeds
/// are random per process and per map, as std's are, so a producer cannot pick keys that
/// collide.
pub type Features = HashMap<String, f64, FeatureHasher>;

/// The hasher of [`Features`].
pub type FeatureHasher = foldhash::fast::RandomState;

/// The Avro schema of a [`Features`] field (`#[avro(with = ...)]`: apache-avro derives one
/// only for std's hasher).
pub fn features_schema(
    _: &mut std::collections::HashSet<apache_avro::schema::Name>,
    _: apache_avro::schema::NamespaceRef<'_>,
) -> apache_avro::Schema {
    apache_avro::Schema::map(apache_avro::Schema::Double).build()
}

/// An event type of the contracts: a Rust type bound to its schema file.
pub trait Event: Serialize + DeserializeOwned + AvroSchema + Send + Sync + 'static {
    /// The schema file this type matches.
    const SCHEMA: SchemaFile;

    /// Reads a whole record written with this type's own schema without apache-avro, for a
    /// type on a hot path; `None` (the default): the codec reads it through apache-avro, which
    /// also gives any error.
    fn read_direct(_body: &[u8]) -> Option<Self> {
        None
    }
}

/// `io.streamscore.v1.InferenceRequest`: a scoring request, the source of truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct InferenceRequest {
    pub request_id: String,
    pub tenant: String,
    pub model: String,
    /// `None`: the tenant's pinned version, else the model's default.
    pub model_version: Option<String>,
    #[avro(with = features_schema)]
    pub features: Features,
    /// Event time: when the client created the request, µs since the epoch.
    #[avro(with = crate::lineage::timestamp_micros)]
    pub created_at: i64,
    pub reply_to: Option<String>,
    #[serde(default)]
    pub attributes: HashMap<String, String>,
}

/// `io.streamscore.v1.ValidatedRequest`: a request that passed ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct ValidatedRequest {
    pub lineage: Lineage,
    pub request: InferenceRequest,
    pub writer_schema_id: i32,
    /// The version ingest validated the features against (request, pin, default). `None`:
    /// no model store at ingest, or an event written before version 2 of the schema.
    #[serde(default)]
    pub model_version: Option<String>,
    /// The checked input vector of `model_version`, in its feature order. Infer scores it as
    /// is when it routes the request to that version, and checks the features itself when
    /// it is `None` or the version differs.
    #[serde(default)]
    pub feature_vector: Option<Vec<f32>>,
    /// When the request record reached the broker (its Kafka timestamp, µs): the clock quotas
    /// run on. `None`: an event written before version 3 of the schema.
    #[serde(default)]
    #[avro(with = crate::lineage::optional_timestamp_micros)]
    pub received_at: Option<i64>,
}

impl ValidatedRequest {
    /// A request as ingest hands it on, without a checked vector (no model store).
    pub fn new(lineage: Lineage, request: InferenceRequest, writer_schema_id: i32) -> Self {
        Self { lineage, request, writer_schema_id, model_version: None, feature_vector: None, received_at: None }
    }

    /// The time quotas measure this request by: when it reached the broker, else (an event of
    /// an older ingest) its own `created_at`.
    pub fn quota_time(&self) -> i64 {
        self.received_at.unwrap_or(self.request.created_at)
    }

    /// The checked vector, if ingest checked the request against `version` and the vector has
    /// `features` finite values; `None` means: check the features.
    pub fn vector_for(&self, version: &str, features: usize) -> Option<&[f32]> {
        let vector = self.feature_vector.as_deref()?;
        (self.model_version.as_deref() == Some(version)
            && vector.len() == features
            && vector.iter().all(|v| v.is_finite()))
        .then_some(vector)
    }
}

/// `io.streamscore.v1.OutcomeStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeStatus {
    Scored,
    Rejected,
    Failed,
}

/// `io.streamscore.v1.PredictionOutcome`: the answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct PredictionOutcome {
    pub lineage: Lineage,
    pub status: OutcomeStatus,
    pub shadow: bool,
    pub model: String,
    pub model_version: Option<String>,
    pub model_sha256: Option<String>,
    pub backend: Option<String>,
    pub score: Option<f64>,
    pub label: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub retry_after_ms: Option<i64>,
    #[avro(with = features_schema)]
    pub features: Features,
    pub batch_size: i32,
    pub queue_wait_us: i64,
    pub inference_us: i64,
    #[avro(with = crate::lineage::timestamp_micros)]
    pub request_created_at: i64,
    pub reply_to: Option<String>,
    /// The rollout state whose split chose the version, when one did.
    #[serde(default)]
    pub routed_by: Option<RoutedBy>,
    /// Set when the request asked for an explanation (attribute `explain` = `true`) and it
    /// was scored. Appended with a null default: the schema stays BACKWARD compatible.
    #[serde(default)]
    pub explanation: Option<Explanation>,
}

/// The request attribute that asks for an explanation, and the value that does.
pub const EXPLAIN_ATTRIBUTE: &str = "explain";

/// Whether a request asks for an explanation: `Ok(true)` for the attribute `explain` =
/// `"true"`, `Ok(false)` without it or for `"false"`; any other value is an error (the caller
/// gets an explicit rejection, not a silent guess).
pub fn wants_explanation(request: &InferenceRequest) -> Result<bool, String> {
    match request.attributes.get(EXPLAIN_ATTRIBUTE).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!("attribute {EXPLAIN_ATTRIBUTE} = {other:?}: expected \"true\" or \"false\"")),
    }
}

/// `io.streamscore.v1.Explanation`: baseline Shapley values of one prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct Explanation {
    /// `exact_shapley` or `sampled_shapley`.
    pub method: String,
    pub baseline_score: f64,
    /// The score of the request's row in the explanation's own batches:
    /// `baseline_score + Σ attribution`.
    pub score: f64,
    /// Every feature, in the model's input order.
    pub attributions: Vec<Attribution>,
    /// The reason codes: at most five features by largest |attribution|, largest first.
    pub top: Vec<Attribution>,
    pub permutations: Option<i32>,
    pub error_bound: Option<f64>,
}

/// `io.streamscore.v1.Attribution`: one feature's share of `score - baseline_score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct Attribution {
    pub feature: String,
    pub value: f64,
    pub baseline: f64,
    pub attribution: f64,
}

/// `io.streamscore.v1.DeadLetterReason`: why a record could not become a valid request.
///
/// `TENANT_MISMATCH`: the record key names another tenant than the body;
/// `WRONG_PARTITION`: the record is not on its tenant's partition (Kafka's default
/// partitioner over the tenant), where the tenant's quota is decided;
/// `TIMESTAMP_OUT_OF_RANGE`: `created_at` is outside ingest's event-time window;
/// `MODEL_REFUSED`: the version the request routes to was refused when the store loaded it.
/// Feedback on `inference.feedback` the monitor refuses: `FEEDBACK_UNKNOWN_REQUEST`, no scored
/// outcome of the request within the label horizon (never scored, or scored more than the
/// horizon before the label); `FEEDBACK_TENANT_MISMATCH`, a label from another tenant than the
/// request's (a tenant labels only its own requests); `FEEDBACK_INVALID`, an `actual` that is
/// not a label of the model (1.0 or 0.0) or no tenant. NaN and infinities are `NON_FINITE`.
/// `UNDECODABLE`: not Confluent-framed Avro, or a body that does not decode;
/// `UNKNOWN_SCHEMA`: the header's schema id is not in the registry; `SCHEMA_INVALID`: the
/// writer's schema cannot be resolved to the request schema; the rest name the failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeadLetterReason {
    Undecodable,
    UnknownSchema,
    SchemaInvalid,
    MissingRequestId,
    MalformedRequestId,
    UnknownTenant,
    UnknownModel,
    UnknownModelVersion,
    FeatureMissing,
    FeatureUnexpected,
    FeatureType,
    FeatureOutOfRange,
    NonFinite,
    TooLarge,
    TenantMismatch,
    TimestampOutOfRange,
    ModelRefused,
    Other,
    // Appended after `OTHER`: symbols keep their indices, so the schema stays BACKWARD
    // compatible.
    WrongPartition,
    FeedbackUnknownRequest,
    FeedbackTenantMismatch,
    FeedbackInvalid,
}

impl DeadLetterReason {
    /// The reason code as written on the wire.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Undecodable => "UNDECODABLE",
            Self::UnknownSchema => "UNKNOWN_SCHEMA",
            Self::SchemaInvalid => "SCHEMA_INVALID",
            Self::MissingRequestId => "MISSING_REQUEST_ID",
            Self::MalformedRequestId => "MALFORMED_REQUEST_ID",
            Self::UnknownTenant => "UNKNOWN_TENANT",
            Self::UnknownModel => "UNKNOWN_MODEL",
            Self::UnknownModelVersion => "UNKNOWN_MODEL_VERSION",
            Self::FeatureMissing => "FEATURE_MISSING",
            Self::FeatureUnexpected => "FEATURE_UNEXPECTED",
            Self::FeatureType => "FEATURE_TYPE",
            Self::FeatureOutOfRange => "FEATURE_OUT_OF_RANGE",
            Self::NonFinite => "NON_FINITE",
            Self::TooLarge => "TOO_LARGE",
            Self::TenantMismatch => "TENANT_MISMATCH",
            Self::TimestampOutOfRange => "TIMESTAMP_OUT_OF_RANGE",
            Self::ModelRefused => "MODEL_REFUSED",
            Self::Other => "OTHER",
            Self::WrongPartition => "WRONG_PARTITION",
            Self::FeedbackUnknownRequest => "FEEDBACK_UNKNOWN_REQUEST",
            Self::FeedbackTenantMismatch => "FEEDBACK_TENANT_MISMATCH",
            Self::FeedbackInvalid => "FEEDBACK_INVALID",
        }
    }
}

/// `io.streamscore.v1.DeadLetter`: a bad record with its reason and original bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct DeadLetter {
    pub lineage: Lineage,
    pub reason: DeadLetterReason,
    pub detail: String,
    #[avro(with)]
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub original_key: Option<Vec<u8>>,
    #[avro(with)]
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub original_value: Option<Vec<u8>>,
    pub writer_schema_id: Option<i32>,
    pub original_timestamp_ms: Option<i64>,
    /// Set when `original_value` was cut to fit: the value's length as it arrived.
    #[serde(default)]
    pub original_value_length: Option<i64>,
    /// Set when `original_value` was cut: sha256 (hex) of the whole value as it arrived.
    #[serde(default)]
    pub original_value_sha256: Option<String>,
}

/// Room a dead letter leaves for everything but the original value: lineage, detail and the
/// encoding's own bytes.
const DEAD_LETTER_OVERHEAD: usize = 4096;

impl DeadLetter {
    /// Cuts `original_value` so the whole dead letter fits in `max_record_bytes` (the
    /// producer's limit), keeping the value's first bytes, its length and its sha256. A record
    /// too large for the dead-letter topic is still dead-lettered, never dropped.
    pub fn fit(&mut self, max_record_bytes: usize) {
        let others = DEAD_LETTER_OVERHEAD
            + self.detail.len()
            + self.original_key.as_ref().map_or(0, Vec::len)
            + self.lineage.event_id.len()
            + self.lineage.request_id.as_ref().map_or(0, String::len)
            + self.lineage.tenant.as_ref().map_or(0, String::len)
            + self.lineage.source.topic.len();
        let budget = max_record_bytes.saturating_sub(others);
        let Some(value) = self.original_value.as_mut() else { return };
        if value.len() <= budget {
            return;
        }
        self.original_value_length = Some(i64::try_from(value.len()).unwrap_or(i64::MAX));
        self.original_value_sha256 = Some(crate::sha256_hex(value));
        value.truncate(budget);
    }
}

/// `io.streamscore.v1.AuditRecord`: one entry of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct AuditRecord {
    pub audit_id: String,
    pub seq: i64,
    pub stage: String,
    pub instance: String,
    pub kind: String,
    pub subject: String,
    pub lineage: Option<Lineage>,
    pub details: HashMap<String, String>,
    #[avro(with = crate::lineage::timestamp_micros)]
    pub occurred_at: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// `io.streamscore.v1.Feedback`: ground truth for one scored request, on `inference.feedback`
/// (keyed by tenant). Any Confluent Avro serializer can write it; the bridge's
/// `POST /v1/feedback` publishes the same events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct Feedback {
    pub request_id: String,
    pub tenant: String,
    /// 1.0 for the positive label (fraud), 0.0 for the negative.
    pub actual: f64,
    /// When the outcome became known, µs since the epoch.
    #[avro(with = crate::lineage::timestamp_micros)]
    pub observed_at: i64,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub attributes: Option<HashMap<String, String>>,
}

/// `io.streamscore.v1.IdempotentAnswer`: the HTTP bridge's answer to the first call with an
/// idempotency key, on `bridge.idempotency` (keyed by `key_sha256`), sealed like the stages'
/// outputs. Every bridge instance reads them back, so a retry after a restart or to another
/// instance gets the first answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct IdempotentAnswer {
    /// sha256 (hex) of the tenant, a zero byte and the key; never the key itself.
    pub key_sha256: String,
    /// sha256 (hex) of the request the key was first used for.
    pub request_sha256: String,
    pub status: i32,
    #[serde(default)]
    pub content_type: Option<String>,
    #[avro(with)]
    #[serde(with = "apache_avro::serde::bytes")]
    pub body: Vec<u8>,
    /// When the answer was kept, µs since the epoch.
    #[avro(with = crate::lineage::timestamp_micros)]
    pub kept_at: i64,
    /// The bridge instance that answered.
    pub instance: String,
}

/// `io.streamscore.v1.DriftMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DriftMethod {
    Psi,
    JensenShannon,
    KolmogorovSmirnov,
    Wasserstein,
    MissingRatio,
    Other,
}

/// Why an outcome is not a score (`PredictionOutcome.reason`): the one typed list infer,
/// quotas, replay, lineage and the bridge share. On the wire it stays a string (`code`), so a
/// reason added later never breaks a reader of the outcome schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeReason {
    /// Over the tenant's rate (`retry_after_ms` says when a token is back).
    QuotaExceeded,
    /// Over the tenant's in-flight limit: load shedding on the wall clock, decided anew on a
    /// redelivery.
    InFlightExceeded,
    /// The policy does not let this tenant call.
    UnknownTenant,
    /// The tenant may not use this model.
    ModelNotAllowed,
    UnknownModel,
    UnknownModelVersion,
    /// The version was refused when loaded (bad sha256, a graph the backend cannot run).
    ModelRefused,
    /// In the store but not loaded by this instance yet.
    ModelNotLoaded,
    /// The features do not fit the version that scores them.
    FeaturesInvalid,
    /// The backend failed on the batch.
    ModelError,
    /// Scored (status `SCORED`) by the model's fallback version, because the version the
    /// request routed to failed, was refused or is not loaded; the detail says which and why.
    Fallback,
    /// The attribute `explain` is neither `"true"` nor `"false"`.
    ExplainInvalid,
    /// An explanation was asked of a version that has no baseline in its `metadata.json`.
    ExplanationUnavailable,
}

impl OutcomeReason {
    pub const ALL: [Self; 13] = [
        Self::QuotaExceeded,
        Self::InFlightExceeded,
        Self::UnknownTenant,
        Self::ModelNotAllowed,
        Self::UnknownModel,
        Self::UnknownModelVersion,
        Self::ModelRefused,
        Self::ModelNotLoaded,
        Self::FeaturesInvalid,
        Self::ModelError,
        Self::Fallback,
        Self::ExplainInvalid,
        Self::ExplanationUnavailable,
    ];

    /// The reason code as written on the wire.
    pub const fn code(self) -> &'static str {
        match self {
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::InFlightExceeded => "IN_FLIGHT_EXCEEDED",
            Self::UnknownTenant => "UNKNOWN_TENANT",
            Self::ModelNotAllowed => "MODEL_NOT_ALLOWED",
            Self::UnknownModel => "UNKNOWN_MODEL",
            Self::UnknownModelVersion => "UNKNOWN_MODEL_VERSION",
            Self::ModelRefused => "MODEL_REFUSED",
            Self::ModelNotLoaded => "MODEL_NOT_LOADED",
            Self::FeaturesInvalid => "FEATURES_INVALID",
            Self::ModelError => "MODEL_ERROR",
            Self::Fallback => "FALLBACK",
            Self::ExplainInvalid => "EXPLAIN_INVALID",
            Self::ExplanationUnavailable => "EXPLANATION_UNAVAILABLE",
        }
    }

    /// The reason a wire code names (`None` for a code this build does not know).
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether the same request, delivered again, is decided the same way (everything but the
    /// wall-clock in-flight limit).
    pub const fn reproducible(self) -> bool {
        !matches!(self, Self::InFlightExceeded)
    }
}

impl std::fmt::Display for OutcomeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// `io.streamscore.v1.Severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Warn,
    Alert,
    Resolved,
}

/// `io.streamscore.v1.DriftAlert`: a feature of a model version drifted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct DriftAlert {
    pub alert_id: String,
    pub model: String,
    pub model_version: String,
    pub feature: String,
    pub method: DriftMethod,
    pub statistic: f64,
    pub warn_threshold: f64,
    pub alert_threshold: f64,
    pub severity: Severity,
    #[avro(with = crate::lineage::timestamp_micros)]
    pub window_start: i64,
    #[avro(with = crate::lineage::timestamp_micros)]
    pub window_end: i64,
    pub bin_edges: Vec<f64>,
    pub current_counts: Vec<i64>,
    pub reference_shares: Vec<f64>,
    pub consecutive_windows: i32,
    #[avro(with = crate::lineage::timestamp_micros)]
    pub detected_at: i64,
    pub stage: String,
    pub instance: String,
}

/// `io.streamscore.v1.RolloutStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutStatus {
    Experiment,
    Shadow,
    Canary,
    Paused,
    Promoted,
    RolledBack,
}

impl RolloutStatus {
    /// The symbol as written on the wire.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Experiment => "EXPERIMENT",
            Self::Shadow => "SHADOW",
            Self::Canary => "CANARY",
            Self::Paused => "PAUSED",
            Self::Promoted => "PROMOTED",
            Self::RolledBack => "ROLLED_BACK",
        }
    }
}

/// `io.streamscore.v1.Share`: a version's share of a model's routed traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct Share {
    pub version: String,
    /// In 1/10,000 of the traffic.
    pub basis_points: i32,
}

/// `io.streamscore.v1.Rollout`: one model's rollout state on `control.rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct Rollout {
    pub model: String,
    pub generation: i64,
    pub rollout_id: String,
    pub status: RolloutStatus,
    pub incumbent: String,
    pub candidate: Option<String>,
    pub split: Vec<Share>,
    pub shadow: Option<String>,
    pub steps: Vec<i32>,
    pub step: i32,
    pub step_secs: i64,
    pub min_samples: i64,
    #[avro(with = crate::lineage::timestamp_micros)]
    pub step_started_at: i64,
    pub resume_status: Option<RolloutStatus>,
    #[avro(with = crate::lineage::timestamp_micros)]
    pub changed_at: i64,
    pub changed_by: String,
    pub reason: String,
    #[serde(default)]
    pub figures: HashMap<String, String>,
}

/// `io.streamscore.v1.RoutedBy`: the rollout state an outcome's version was chosen under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
pub struct RoutedBy {
    pub rollout_id: String,
    pub generation: i64,
    /// The canary step (-1: not a canary step: an experiment, a promotion, a rollback).
    pub step: i32,
}

impl Event for Rollout {
    const SCHEMA: SchemaFile = schemas::ROLLOUT;
}

impl Event for InferenceRequest {
    const SCHEMA: SchemaFile = schemas::INFERENCE_REQUEST;

    fn read_direct(body: &[u8]) -> Option<Self> {
        crate::codec::request::read_request(body)
    }
}
impl Event for Feedback {
    const SCHEMA: SchemaFile = schemas::FEEDBACK;
}
impl Event for IdempotentAnswer {
    const SCHEMA: SchemaFile = schemas::IDEMPOTENT_ANSWER;
}
impl Event for ValidatedRequest {
    const SCHEMA: SchemaFile = schemas::VALIDATED_REQUEST;
}
impl PredictionOutcome {
    /// The one way an outcome starts (ingest's rejections, infer's scores and rejections):
    /// about `request`, written with `lineage`, with `status` and nothing decided yet — no
    /// version, score, reason or features; the writer fills in what it decided.
    pub fn new(lineage: Lineage, request: &InferenceRequest, status: OutcomeStatus) -> Self {
        Self {
            lineage,
            status,
            shadow: false,
            model: request.model.clone(),
            model_version: request.model_version.clone(),
            model_sha256: None,
            backend: None,
            score: None,
            label: None,
            reason: None,
            detail: None,
            retry_after_ms: None,
            features: Features::default(),
            batch_size: 0,
            queue_wait_us: 0,
            inference_us: 0,
            request_created_at: request.created_at,
            reply_to: request.reply_to.clone(),
            routed_by: None,
            explanation: None,
        }
    }
}

impl Event for PredictionOutcome {
    const SCHEMA: SchemaFile = schemas::PREDICTION_OUTCOME;
}
impl Event for DeadLetter {
    const SCHEMA: SchemaFile = schemas::DEAD_LETTER;
}
impl Event for AuditRecord {
    const SCHEMA: SchemaFile = schemas::AUDIT_RECORD;
}
impl Event for DriftAlert {
    const SCHEMA: SchemaFile = schemas::DRIFT_ALERT;
}

#[cfg(test)]
mod reason_tests {
    use super::OutcomeReason;

    #[test]
    fn every_outcome_reason_round_trips_through_its_code() {
        for reason in OutcomeReason::ALL {
            assert_eq!(OutcomeReason::parse(reason.code()), Some(reason));
            assert_eq!(reason.to_string(), reason.code());
        }
        assert_eq!(OutcomeReason::parse("NOT_A_REASON"), None);
        assert!(!OutcomeReason::InFlightExceeded.reproducible() && OutcomeReason::QuotaExceeded.reproducible());
    }
}
