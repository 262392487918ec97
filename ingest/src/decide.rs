//! The decision for one record: validated request, dead letter, or retry later.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use streamscore_contracts::codec::{DecodeError, WireHeader};
use streamscore_contracts::{
    Codec, DeadLetter, DeadLetterReason, InferenceRequest, Lineage, OutcomeStatus, PredictionOutcome, SourceOffset,
    Stage, ValidatedRequest,
};
use streamscore_control::{RolloutTable, Rollouts};
use streamscore_modelstore::{FeatureError, ModelStore, Pins, RouteError, SharedStore};
use uuid::Uuid;

/// Which tenants are known. (The tenant policy file replaces this list with the quota issue.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// Any tenant is accepted.
    Any,
    /// Only these.
    Only(HashSet<String>),
}

impl Tenants {
    /// Parses `*` or a comma-separated list.
    pub fn parse(list: &str) -> Self {
        if list.trim() == "*" {
            return Self::Any;
        }
        Self::Only(list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
    }

    pub fn knows(&self, tenant: &str) -> bool {
        match self {
            Tenants::Any => true,
            Tenants::Only(set) => set.contains(tenant),
        }
    }
}

/// What the tenant policy decides for ingest: which tenants are known and the versions they
/// are pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub tenants: Tenants,
    pub pins: Pins,
}

/// The admission in force, swapped whole when the policy changes (a follower of the policy
/// file holds a clone): a record is judged by the old one or the new one, never a mix.
pub type SharedAdmission = Arc<streamscore_contracts::current::Current<Admission>>;

fn shared(admission: Admission) -> SharedAdmission {
    Arc::new(streamscore_contracts::current::Current::new(admission))
}

/// Tenants bound to Kafka principals, each with a topic of its own.
///
/// Kafka does not tell a consumer who produced a record, so the binding goes through topics:
/// a bound tenant's requests come on `<requests topic>.<tenant>`, which only its principals
/// may write (the broker's ACLs, printed by `streamscore acls`). Ingest reads those topics
/// beside the shared one, and refuses (`TENANT_MISMATCH`) a record on a tenant's topic that
/// claims another tenant, and a record on any other topic that claims a bound tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantTopics {
    /// Topic → tenant.
    by_topic: HashMap<String, String>,
    /// Tenant → topic.
    by_tenant: HashMap<String, String>,
}

impl TenantTopics {
    /// The topic of `tenant`'s requests when it is bound: `<requests_topic>.<tenant>`.
    pub fn topic_for(requests_topic: &str, tenant: &str) -> String {
        format!("{requests_topic}.{tenant}")
    }

    /// Binds each of `tenants` to its topic next to `requests_topic`.
    pub fn new<'a>(requests_topic: &str, tenants: impl IntoIterator<Item = &'a str>) -> Self {
        let mut topics = Self::default();
        for tenant in tenants {
            let topic = Self::topic_for(requests_topic, tenant);
            topics.by_topic.insert(topic.clone(), tenant.to_owned());
            topics.by_tenant.insert(tenant.to_owned(), topic);
        }
        topics
    }

    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }

    /// The tenants' topics, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.by_topic.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// The topic a bound tenant's requests must come on.
    pub fn topic_of(&self, tenant: &str) -> Option<&str> {
        self.by_tenant.get(tenant).map(String::as_str)
    }

    /// Why a record on `topic` may not claim `tenant`, if it may not.
    pub fn refusal(&self, topic: &str, tenant: &str) -> Option<String> {
        match (self.by_topic.get(topic), self.by_tenant.get(tenant)) {
            (Some(owner), _) if owner != tenant => {
                Some(format!("topic {topic} carries only tenant {owner:?}'s requests, not {tenant:?}'s"))
            }
            (None, Some(own)) => Some(format!(
                "tenant {tenant:?} is bound to Kafka principals: its requests are accepted only on topic {own}, not {topic}"
            )),
            _ => None,
        }
    }
}

/// Why a record on `topic` with `key` may not carry a request of `tenant` (`TENANT_MISMATCH`):
/// its key names another tenant (quotas and partitioning go by the key; a record without a
/// key is taken on its body's word), or `bound` ties the tenant or the topic to another.
pub fn tenant_refusal(key: Option<&[u8]>, topic: &str, tenant: &str, bound: &TenantTopics) -> Option<String> {
    if let Some(key) = key.filter(|key| *key != tenant.as_bytes()) {
        return Some(format!(
            "the record key {:?} names another tenant than the body's {tenant:?}",
            String::from_utf8_lossy(key)
        ));
    }
    bound.refusal(topic, tenant)
}

/// Why a record of `tenant` on `partition` of a topic of `partitions` partitions may not buy
/// quota (`WRONG_PARTITION`): a tenant's requests are decided on one partition's ordered stream,
/// the one Kafka's default partitioner gives its key (murmur2 of the tenant), so that neither a
/// missing key, another tenant's key nor a producer choosing partitions can spread a tenant over
/// several partitions, each deciding its quota apart. `partitions` 0 means unknown: no check.
pub fn partition_refusal(topic: &str, partition: i32, partitions: i32, tenant: &str) -> Option<String> {
    if partitions <= 1 {
        return None;
    }
    let home = streamscore_contracts::partition::partition_for(tenant.as_bytes(), partitions);
    (home != partition).then(|| {
        format!(
            "the record is on partition {partition} of {topic}, but tenant {tenant:?}'s requests belong on partition \
             {home} of its {partitions} (Kafka's default partitioner: murmur2 of the key {tenant:?}): key each request \
             by its tenant, and set partitioner=murmur2_random in librdkafka-based producers (Python, Go, .NET, C)"
        )
    })
}

/// Default largest record value accepted, in bytes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 * 1024;

/// A record as consumed, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// How many partitions the topic has (0: unknown, no partition check).
    pub partitions: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's Kafka timestamp: the broker's append time where the topic has
    /// `LogAppendTime`, else the producer's create time.
    pub timestamp_ms: Option<i64>,
}

impl<'a> RawRecord<'a> {
    /// The record as a Kafka consumer delivered it, on a topic of `partitions` partitions.
    pub fn from_message(message: &'a impl rdkafka::message::Message, partitions: i32) -> Self {
        Self {
            topic: message.topic(),
            partition: message.partition(),
            partitions,
            offset: message.offset(),
            key: message.key(),
            value: message.payload(),
            timestamp_ms: message.timestamp().to_millis().filter(|t| *t >= 0),
        }
    }

    /// When the record reached the broker (µs), if it has a timestamp.
    pub fn received_at(&self) -> Option<i64> {
        self.timestamp_ms.map(|ms| ms.saturating_mul(1000))
    }

    fn source(&self) -> SourceOffset {
        SourceOffset::new(self.topic, self.partition, self.offset)
    }
}

/// What to do with one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Hand to infer.
    Valid(Box<ValidatedRequest>),
    /// Write to the dead-letter topic; when the request named a `reply_to`, also write the
    /// rejected outcome so the waiting caller learns what happened.
    DeadLetter(Box<DeadLetter>, Option<Box<PredictionOutcome>>),
    /// The registry could not be reached: try this record again, do not skip it.
    Retry(DecodeError),
}

/// How far a request's `created_at` may lie before and after the moment ingest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeWindow {
    pub past: std::time::Duration,
    pub future: std::time::Duration,
}

impl Default for EventTimeWindow {
    /// A day back (late and replayed producers), five minutes ahead (clock skew).
    fn default() -> Self {
        Self { past: std::time::Duration::from_secs(24 * 3600), future: std::time::Duration::from_secs(300) }
    }
}

impl EventTimeWindow {
    /// Why `created_at` (µs) is outside the window around `received_at` (µs: when the record
    /// reached the broker), if it is.
    pub fn check(&self, created_at: i64, received_at: i64) -> Option<String> {
        let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let earliest = received_at.saturating_sub(micros(self.past));
        let latest = received_at.saturating_add(micros(self.future));
        (created_at < earliest || created_at > latest).then(|| {
            format!(
                "created_at {created_at} µs is outside [{earliest}, {latest}]: more than {} s before or {} s after \
                 the record reached the broker",
                self.past.as_secs(),
                self.future.as_secs()
            )
        })
    }
}

/// Decides records of the request topic.
#[derive(Debug)]
pub struct RequestDecider {
    codec: Arc<Codec<InferenceRequest>>,
    instance: String,
    max_record_bytes: usize,
    /// Tenants and pins, which a policy reload replaces.
    admission: SharedAdmission,
    tenant_topics: TenantTopics,
    models: Option<SharedStore>,
    rollouts: RolloutTable,
    window: EventTimeWindow,
    /// The clock, µs since the epoch (tests set their own).
    now: fn() -> i64,
}

impl RequestDecider {
    /// A decider that checks framing, decoding and request ids only; add tenants and a model
    /// store with [`RequestDecider::with_tenants`] and [`RequestDecider::with_models`].
    pub fn new(codec: Arc<Codec<InferenceRequest>>, instance: impl Into<String>) -> Self {
        Self {
            codec,
            instance: instance.into(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            admission: shared(Admission { tenants: Tenants::Any, pins: Pins::default() }),
            tenant_topics: TenantTopics::default(),
            models: None,
            rollouts: RolloutTable::empty(),
            window: EventTimeWindow::default(),
            now: streamscore_contracts::now_micros,
        }
    }

    /// The event-time window `created_at` must fall in (default: a day back, 5 minutes ahead).
    #[must_use]
    pub fn with_event_time_window(mut self, window: EventTimeWindow) -> Self {
        self.window = window;
        self
    }

    /// The clock the window is measured from (tests).
    #[must_use]
    pub fn with_clock(mut self, now: fn() -> i64) -> Self {
        self.now = now;
        self
    }

    #[must_use]
    pub fn with_tenants(mut self, tenants: Tenants) -> Self {
        let pins = self.admission.get().pins.clone();
        self.admission = shared(Admission { tenants, pins });
        self
    }

    /// Binds tenants to their own topics (see [`TenantTopics`]).
    #[must_use]
    pub fn with_tenant_topics(mut self, topics: TenantTopics) -> Self {
        self.tenant_topics = topics;
        self
    }

    /// Validates against the versions tenants are pinned to (the policy's and the stage's
    /// pins), as routing will score them.
    #[must_use]
    pub fn with_pins(mut self, pins: Pins) -> Self {
        let tenants = self.admission.get().tenants.clone();
        self.admission = shared(Admission { tenants, pins });
        self
    }

    /// The tenants and pins this decider judges by, to replace when the policy changes.
    pub fn admission(&self) -> SharedAdmission {
        Arc::clone(&self.admission)
    }

    /// Validates against the version each model's rollout splits a request to (when it names
    /// no version and has no pin), as routing will score it.
    #[must_use]
    pub fn with_rollouts(mut self, rollouts: RolloutTable) -> Self {
        self.rollouts = rollouts;
        self
    }

    /// Validates model, version and features against `models`.
    #[must_use]
    pub fn with_models(mut self, models: SharedStore) -> Self {
        self.models = Some(models);
        self
    }

    #[must_use]
    pub fn with_max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }

    /// Resolves, together, the schema ids of `values` (the record about to be decided and the
    /// ones behind it) when the first is not known yet: a stream of new ids costs one round
    /// of concurrent registry lookups, not one round trip per record.
    pub async fn prefetch_schemas<'a>(&self, mut values: impl Iterator<Item = &'a [u8]>) {
        let id = |value: &[u8]| WireHeader::parse(value).ok().map(|(header, _)| header.schema_id);
        let Some(first) = values.next().and_then(id) else { return };
        if !self.codec.would_fetch(first) {
            return;
        }
        let ids: Vec<u32> = std::iter::once(first).chain(values.take(1024).filter_map(id)).collect();
        self.codec.prefetch(ids).await;
    }

    /// Decides one record.
    pub async fn decide(&self, record: RawRecord<'_>) -> Decision {
        let value = record.value.unwrap_or_default();
        if value.len() > self.max_record_bytes {
            let detail =
                format!("record of {} bytes exceeds the limit of {} bytes", value.len(), self.max_record_bytes);
            return self.dead_letter(record, DeadLetterReason::TooLarge, detail, None, None);
        }
        let decoded = match self.codec.decode(value).await {
            Ok(decoded) => decoded,
            Err(e) if e.is_retryable() => return Decision::Retry(e),
            Err(e) => {
                let schema_id = e.schema_id();
                return self.dead_letter(record, e.reason(), e.to_string(), schema_id, None);
            }
        };
        let request = decoded.value;
        let models = self.models.as_ref().map(SharedStore::current);
        let rollouts = self.rollouts.current();
        let admission = self.admission.get();
        let checked = match validate(&request, &admission.tenants, models.as_deref(), &admission.pins, &rollouts) {
            Ok(checked) => checked,
            Err((reason, detail)) => {
                return self.dead_letter(record, reason, detail, Some(decoded.schema_id), Some(&request))
            }
        };
        // Event time drives drift windows: one far-future created_at would push a version's
        // windows ahead. It is judged against when the record reached the broker, not against
        // the clock now: a backlog read after an outage is as young as it was when it arrived,
        // and a redelivered record is judged exactly as the first time. (A record without a
        // timestamp is judged against ingest's clock.)
        let received_at = record.received_at();
        if let Some(detail) = self.window.check(request.created_at, received_at.unwrap_or_else(self.now)) {
            return self.dead_letter(
                record,
                DeadLetterReason::TimestampOutOfRange,
                detail,
                Some(decoded.schema_id),
                Some(&request),
            );
        }
        if let Some(detail) = tenant_refusal(record.key, record.topic, &request.tenant, &self.tenant_topics) {
            return self.dead_letter(
                record,
                DeadLetterReason::TenantMismatch,
                detail,
                Some(decoded.schema_id),
                Some(&request),
            );
        }
        if let Some(detail) = partition_refusal(record.topic, record.partition, record.partitions, &request.tenant) {
            return self.dead_letter(
                record,
                DeadLetterReason::WrongPartition,
                detail,
                Some(decoded.schema_id),
                Some(&request),
            );
        }
        let lineage = Lineage::derive(
            record.source(),
            Stage::Ingest,
            "validated",
            &self.instance,
            Some(request.request_id.clone()),
            Some(request.tenant.clone()),
        );
        let mut validated =
            ValidatedRequest::new(lineage, request, i32::try_from(decoded.schema_id).unwrap_or(i32::MAX));
        // Validated once: infer scores this vector when it routes the request to this version.
        if let Some(Checked { version, vector }) = checked {
            validated.model_version = Some(version);
            validated.feature_vector = Some(vector);
        }
        // Quotas run on the broker's clock, which the producer does not set through the body.
        validated.received_at = received_at;
        Decision::Valid(Box::new(validated))
    }

    fn dead_letter(
        &self,
        record: RawRecord<'_>,
        reason: DeadLetterReason,
        detail: String,
        schema_id: Option<u32>,
        request: Option<&InferenceRequest>,
    ) -> Decision {
        let lineage = Lineage::derive(
            record.source(),
            Stage::Ingest,
            "dead-letter",
            &self.instance,
            request.map(|r| r.request_id.clone()).filter(|id| !id.is_empty()),
            request.map(|r| r.tenant.clone()),
        );
        let reply =
            request.filter(|r| r.reply_to.is_some()).map(|r| Box::new(self.rejection(record, r, reason, &detail)));
        Decision::DeadLetter(
            Box::new(DeadLetter {
                lineage,
                reason,
                detail,
                original_key: record.key.map(<[u8]>::to_vec),
                original_value: record.value.map(<[u8]>::to_vec),
                writer_schema_id: schema_id.and_then(|id| i32::try_from(id).ok()),
                original_timestamp_ms: record.timestamp_ms,
                original_value_length: None,
                original_value_sha256: None,
            }),
            reply,
        )
    }

    /// The rejected outcome a synchronous caller reads for a request ingest refused.
    fn rejection(
        &self,
        record: RawRecord<'_>,
        request: &InferenceRequest,
        reason: DeadLetterReason,
        detail: &str,
    ) -> PredictionOutcome {
        let lineage = Lineage::derive(
            record.source(),
            Stage::Ingest,
            "rejection",
            &self.instance,
            Some(request.request_id.clone()).filter(|id| !id.is_empty()),
            Some(request.tenant.clone()),
        );
        let mut outcome = PredictionOutcome::new(lineage, request, OutcomeStatus::Rejected);
        outcome.reason = Some(reason.code().to_owned());
        outcome.detail = Some(detail.to_owned());
        outcome
    }
}

/// The dead-letter reason for a feature error.
pub fn feature_reason(error: &FeatureError) -> DeadLetterReason {
    match error {
        FeatureError::Missing(_) => DeadLetterReason::FeatureMissing,
        FeatureError::Unexpected(..) => DeadLetterReason::FeatureUnexpected,
        FeatureError::NonFinite { .. } => DeadLetterReason::NonFinite,
        FeatureError::Type { .. } => DeadLetterReason::FeatureType,
        FeatureError::OutOfRange { .. } => DeadLetterReason::FeatureOutOfRange,
    }
}

/// The dead-letter reason for a routing error.
pub fn route_reason(error: &RouteError) -> DeadLetterReason {
    match error {
        RouteError::UnknownModel { .. } => DeadLetterReason::UnknownModel,
        RouteError::UnknownVersion { .. } => DeadLetterReason::UnknownModelVersion,
        RouteError::Refused { .. } => DeadLetterReason::ModelRefused,
    }
}

/// Checks a decoded request: id, tenant, then (with a store) model, version and features.
/// Ingest's own check, also used by the HTTP bridge before it publishes a request, so a caller
/// hears synchronously what ingest would dead-letter.
pub fn check(
    request: &InferenceRequest,
    tenants: &Tenants,
    models: Option<&ModelStore>,
    pins: &Pins,
    rollouts: &Rollouts,
) -> Option<(DeadLetterReason, String)> {
    validate(request, tenants, models, pins, rollouts).err()
}

/// What a passed check found, with a model store: the version routing will score and the
/// request's features as that version's input vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub version: String,
    pub vector: Vec<f32>,
}

/// [`check`], keeping what it found: `Ok(None)` without a model store.
pub fn validate(
    request: &InferenceRequest,
    tenants: &Tenants,
    models: Option<&ModelStore>,
    pins: &Pins,
    rollouts: &Rollouts,
) -> Result<Option<Checked>, (DeadLetterReason, String)> {
    if let Some(problem) = check_content(request) {
        return Err(problem);
    }
    if !tenants.knows(&request.tenant) {
        return Err((DeadLetterReason::UnknownTenant, format!("tenant {:?} is not known", request.tenant)));
    }
    let Some(models) = models else { return Ok(None) };
    // The version routing will score: the request's, else the tenant's pin, else its model's
    // rollout split, else the default.
    let pin = pins.get(&request.tenant, &request.model);
    let split = match (&request.model_version, pin) {
        (None, None) => rollouts.route(&request.model, &request.request_id),
        _ => None,
    };
    let version = models
        .route(&request.model, request.model_version.as_deref(), pin.or(split.as_ref().map(|s| s.version.as_str())))
        .map_err(|e| (route_reason(&e), e.to_string()))?;
    match version.check(&request.features) {
        Ok(vector) => Ok(Some(Checked { version: version.meta.version.clone(), vector })),
        Err(e) => Err((feature_reason(&e), format!("{} {}: {e}", request.model, version.meta.version))),
    }
}

/// Checks a decoded request's own content (no tenants or model store needed).
fn check_content(request: &InferenceRequest) -> Option<(DeadLetterReason, String)> {
    if request.request_id.trim().is_empty() {
        return Some((DeadLetterReason::MissingRequestId, "request_id is empty".to_owned()));
    }
    if Uuid::try_parse(&request.request_id).is_err() {
        return Some((
            DeadLetterReason::MalformedRequestId,
            format!("request_id {:?} is not a UUID in canonical form", request.request_id),
        ));
    }
    let mut non_finite: Vec<&str> =
        request.features.iter().filter(|(_, v)| !v.is_finite()).map(|(name, _)| name.as_str()).collect();
    if !non_finite.is_empty() {
        non_finite.sort_unstable();
        return Some((DeadLetterReason::NonFinite, format!("non-finite values in features {non_finite:?}")));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn request(id: &str, value: f64) -> InferenceRequest {
        InferenceRequest {
            request_id: id.to_owned(),
            tenant: "acme".to_owned(),
            model: "fraud".to_owned(),
            model_version: None,
            features: streamscore_contracts::Features::from_iter([("amount".to_owned(), value)]),
            created_at: 0,
            reply_to: None,
            attributes: HashMap::new(),
        }
    }

    /// A store with fraud/1 and a fraud/3 that is fraud/2 with `amount` renamed `amount_eur`.
    fn store_with_renamed_feature() -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud");
        let fraud = dir.path().join("fraud");
        for (from, to) in [("1", "1"), ("2", "3")] {
            std::fs::create_dir_all(fraud.join(to)).expect("version dir");
            for file in ["model.onnx", "metadata.json", "golden.json"] {
                std::fs::copy(shipped.join(from).join(file), fraud.join(to).join(file)).expect("copy");
            }
        }
        let metadata = std::fs::read_to_string(fraud.join("3/metadata.json")).expect("metadata");
        let mut metadata: serde_json::Value = serde_json::from_str(&metadata).expect("metadata is JSON");
        metadata["version"] = "3".into();
        let text = serde_json::to_string(&metadata).expect("JSON").replace("\"amount\"", "\"amount_eur\"");
        std::fs::write(fraud.join("3/metadata.json"), text).expect("write");
        let family = serde_json::json!({"name": "fraud", "default_version": "1", "versions": ["1", "3"]});
        std::fs::write(fraud.join("model.json"), family.to_string()).expect("write");
        let store = ModelStore::open(dir.path()).expect("the store opens");
        (dir, store)
    }

    #[test]
    fn a_pinned_request_is_judged_against_the_version_it_is_pinned_to() {
        let (_dir, store) = store_with_renamed_feature();
        let v1 = store.route("fraud", Some("1"), None).expect("fraud/1");
        let features: streamscore_contracts::Features =
            v1.meta.features.iter().map(|f| (f.name.clone(), f.min)).collect();
        let mut renamed = features.clone();
        let amount = renamed.remove("amount").expect("fraud/1 has amount");
        renamed.insert("amount_eur".to_owned(), amount);
        let request = |features: &streamscore_contracts::Features| {
            let mut r = request(&uuid::Uuid::new_v4().to_string(), 0.0);
            r.tenant = "initech".to_owned();
            r.features = features.clone();
            r
        };
        let pins =
            Pins::new(HashMap::from([("initech".to_owned(), HashMap::from([("fraud".to_owned(), "3".to_owned())]))]));
        let check = |r: &InferenceRequest, pins: &Pins| {
            check(r, &Tenants::Any, Some(&store), pins, &Rollouts::default()).map(|c| c.0)
        };
        // Pinned to 3: its features pass, fraud/1's do not.
        assert_eq!(check(&request(&renamed), &pins), None);
        assert!(
            matches!(
                check(&request(&features), &pins),
                Some(DeadLetterReason::FeatureMissing | DeadLetterReason::FeatureUnexpected)
            ),
            "{:?}",
            check(&request(&features), &pins)
        );
        // Without the pin the default (1) judges: the other way round.
        assert_eq!(check(&request(&features), &Pins::default()), None);
        assert!(check(&request(&renamed), &Pins::default()).is_some());
        // A version named in the request wins over the pin.
        let mut named = request(&features);
        named.model_version = Some("1".to_owned());
        assert_eq!(check(&named, &pins), None);
        // A rollout that sends everything to 3 judges what names no version and has no pin.
        let to_3 = streamscore_contracts::Rollout {
            model: "fraud".to_owned(),
            generation: 1,
            rollout_id: "r".to_owned(),
            status: streamscore_contracts::RolloutStatus::Promoted,
            incumbent: "1".to_owned(),
            candidate: Some("3".to_owned()),
            split: vec![streamscore_contracts::Share { version: "3".to_owned(), basis_points: 10_000 }],
            shadow: None,
            steps: vec![100],
            step: 0,
            step_secs: 0,
            min_samples: 0,
            step_started_at: 0,
            resume_status: None,
            changed_at: 0,
            changed_by: "t".to_owned(),
            reason: String::new(),
            figures: HashMap::new(),
        };
        let rolled = Rollouts::of([to_3]);
        let routed =
            |r: &InferenceRequest| super::check(r, &Tenants::Any, Some(&store), &Pins::default(), &rolled).map(|c| c.0);
        assert_eq!(routed(&request(&renamed)), None, "3's features pass under the rollout");
        assert!(routed(&request(&features)).is_some(), "1's do not");
        assert_eq!(routed(&named), None, "a named version still wins");
    }

    #[test]
    fn a_bound_tenant_is_accepted_only_on_its_own_topic() {
        let topics = TenantTopics::new("inference.requests", ["acme"]);
        assert_eq!(topics.topics(), ["inference.requests.acme"]);
        assert_eq!(topics.topic_of("acme"), Some("inference.requests.acme"));
        assert_eq!(topics.refusal("inference.requests.acme", "acme"), None);
        assert_eq!(topics.refusal("inference.requests", "globex"), None, "unbound tenants stay on the shared topic");
        let elsewhere = topics.refusal("inference.requests", "acme").unwrap_or_default();
        assert!(elsewhere.contains("only on topic inference.requests.acme"), "{elsewhere}");
        let foreign = topics.refusal("inference.requests.acme", "globex").unwrap_or_default();
        assert!(foreign.contains("carries only tenant \"acme\""), "{foreign}");
        assert_eq!(TenantTopics::default().refusal("anything", "acme"), None);
    }

    #[test]
    fn content_checks_give_typed_reasons() {
        let good = "2b1f4c4e-3d9a-4f4e-9b1a-6c1d2e3f4a5b";
        let check =
            |r: &InferenceRequest| check(r, &Tenants::parse("acme"), None, &Pins::default(), &Rollouts::default());
        let mut stranger = request(good, 1.0);
        stranger.tenant = "stranger".to_owned();
        assert_eq!(check(&stranger).map(|c| c.0), Some(DeadLetterReason::UnknownTenant));
        assert_eq!(check(&request(good, 1.0)), None);
        assert_eq!(check(&request("", 1.0)).map(|c| c.0), Some(DeadLetterReason::MissingRequestId));
        assert_eq!(check(&request("not-a-uuid", 1.0)).map(|c| c.0), Some(DeadLetterReason::MalformedRequestId));
        assert_eq!(check(&request(good, f64::NAN)).map(|c| c.0), Some(DeadLetterReason::NonFinite));
        assert_eq!(check(&request(good, f64::INFINITY)).map(|c| c.0), Some(DeadLetterReason::NonFinite));
    }

    #[tokio::test]
    async fn oversized_and_unframed_records_are_dead_lettered_without_the_registry() {
        // The registry URL is never called: these records fail before a schema is needed.
        let codec = Arc::new(Codec::<InferenceRequest>::with_url("http://127.0.0.1:9", "inference.requests"));
        let decider = RequestDecider::new(codec, "test").with_max_record_bytes(8);
        let record = |value: &'static [u8]| RawRecord {
            topic: "inference.requests",
            partition: 0,
            partitions: 1,
            offset: 7,
            key: Some(b"acme"),
            value: Some(value),
            timestamp_ms: Some(1),
        };
        for (bytes, reason) in [
            (&b"0123456789"[..], DeadLetterReason::TooLarge),
            (&b""[..], DeadLetterReason::Undecodable),
            (&b"\x01\x00\x00\x00\x01"[..], DeadLetterReason::Undecodable),
        ] {
            match decider.decide(record(bytes)).await {
                Decision::DeadLetter(dl, _) => {
                    assert_eq!(dl.reason, reason);
                    assert_eq!(dl.original_value.as_deref(), Some(bytes), "original bytes kept");
                    assert_eq!(dl.original_key.as_deref(), Some(&b"acme"[..]));
                    assert_eq!(dl.lineage.source, SourceOffset::new("inference.requests", 0, 7));
                }
                other => panic!("expected a dead letter for {bytes:?}, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_body_claiming_another_tenant_than_its_key_is_refused() {
        // The schema id is known: nothing asks the registry.
        let codec =
            Arc::new(Codec::<InferenceRequest>::with_url("http://127.0.0.1:9", "inference.requests").with_known_id(1));
        let decider = RequestDecider::new(Arc::clone(&codec), "test").with_tenants(Tenants::parse("acme,globex"));
        let mut body = request("2b1f4c4e-3d9a-4f4e-9b1a-6c1d2e3f4a5b", 1.0);
        body.created_at = streamscore_contracts::now_micros();
        let value = codec.encode(&body).expect("encodes");
        let record = |key: Option<&'static [u8]>| RawRecord {
            topic: "inference.requests",
            partition: 0,
            partitions: 1,
            offset: 3,
            key,
            value: Some(&value),
            timestamp_ms: Some(body.created_at / 1000),
        };
        match decider.decide(record(Some(b"globex"))).await {
            Decision::DeadLetter(dl, _) => {
                assert_eq!(dl.reason, DeadLetterReason::TenantMismatch);
                assert!(dl.detail.contains("globex") && dl.detail.contains("acme"), "{}", dl.detail);
                assert_eq!(dl.lineage.tenant.as_deref(), Some("acme"));
            }
            other => panic!("a key naming globex on acme's body: {other:?}"),
        }
        assert!(matches!(decider.decide(record(Some(b"acme"))).await, Decision::Valid(_)), "its own key");
        assert!(matches!(decider.decide(record(None)).await, Decision::Valid(_)), "no key: the body's word");
    }

    #[tokio::test]
    async fn a_tenant_is_decided_on_its_own_partition_only() {
        let codec =
            Arc::new(Codec::<InferenceRequest>::with_url("http://127.0.0.1:9", "inference.requests").with_known_id(1));
        let decider = RequestDecider::new(Arc::clone(&codec), "test");
        let mut body = request("2b1f4c4e-3d9a-4f4e-9b1a-6c1d2e3f4a5b", 1.0);
        body.created_at = streamscore_contracts::now_micros();
        let value = codec.encode(&body).expect("encodes");
        let home = streamscore_contracts::partition::partition_for(b"acme", 3);
        let record = |partition: i32, key: Option<&'static [u8]>| RawRecord {
            topic: "inference.requests",
            partition,
            partitions: 3,
            offset: 3,
            key,
            value: Some(&value),
            timestamp_ms: Some(body.created_at / 1000),
        };
        for key in [Some(&b"acme"[..]), None] {
            assert!(
                matches!(decider.decide(record(home, key)).await, Decision::Valid(_)),
                "home partition, key {key:?}"
            );
            for other in (0..3).filter(|p| *p != home) {
                match decider.decide(record(other, key)).await {
                    Decision::DeadLetter(dl, _) => {
                        assert_eq!(dl.reason, DeadLetterReason::WrongPartition);
                        assert!(dl.detail.contains(&format!("partition {home}")), "{}", dl.detail);
                        assert!(dl.detail.contains("murmur2_random"), "says what to do: {}", dl.detail);
                    }
                    other => panic!("acme on partition {other:?} of 3 (home {home}) must not buy quota"),
                }
            }
        }
        // A topic of one partition (or an unknown count) takes every record.
        assert!(matches!(
            decider.decide(RawRecord { partition: 0, partitions: 1, ..record(0, None) }).await,
            Decision::Valid(_)
        ));
    }

    #[tokio::test]
    async fn created_at_outside_the_event_time_window_is_refused() {
        const NOW: i64 = 1_800_000_000_000_000;
        let codec =
            Arc::new(Codec::<InferenceRequest>::with_url("http://127.0.0.1:9", "inference.requests").with_known_id(1));
        let decider = RequestDecider::new(Arc::clone(&codec), "test").with_clock(|| NOW);
        let hour = 3_600_000_000_i64;
        for (created_at, valid) in [
            (NOW, true),
            (NOW - 23 * hour, true),
            (NOW + 4 * 60_000_000, true),
            (NOW - 25 * hour, false),
            (NOW + 6 * 60_000_000, false),
            (i64::MAX, false),
            (i64::MIN, false),
            (0, false),
        ] {
            let mut body = request("2b1f4c4e-3d9a-4f4e-9b1a-6c1d2e3f4a5b", 1.0);
            body.created_at = created_at;
            let value = codec.encode(&body).expect("encodes");
            // Judged against when the record reached the broker (its timestamp), else the clock.
            for (timestamp_ms, at) in [(Some(NOW / 1000), "its timestamp"), (None, "ingest's clock")] {
                let record = RawRecord {
                    topic: "inference.requests",
                    partition: 0,
                    partitions: 1,
                    offset: 1,
                    key: Some(b"acme"),
                    value: Some(&value),
                    timestamp_ms,
                };
                match decider.decide(record).await {
                    Decision::Valid(v) => {
                        assert!(valid, "{created_at} passed against {at}");
                        assert_eq!(v.received_at, timestamp_ms.map(|ms| ms * 1000), "the quota clock");
                    }
                    Decision::DeadLetter(dl, _) => {
                        assert!(!valid, "{created_at} against {at}: {}", dl.detail);
                        assert_eq!(dl.reason, DeadLetterReason::TimestampOutOfRange);
                    }
                    Decision::Retry(e) => panic!("{created_at}: {e}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_backlog_is_as_young_as_when_it_reached_the_broker() {
        // Requests that reached the broker 30 hours ago, read now (after an outage): the same
        // age as when they arrived, so scored, not dead-lettered; with ingest's clock they
        // would all be TIMESTAMP_OUT_OF_RANGE.
        const NOW: i64 = 1_800_000_000_000_000;
        let arrived = NOW - 30 * 3_600_000_000;
        let codec =
            Arc::new(Codec::<InferenceRequest>::with_url("http://127.0.0.1:9", "inference.requests").with_known_id(1));
        let decider = RequestDecider::new(Arc::clone(&codec), "test").with_clock(|| NOW);
        let mut body = request("2b1f4c4e-3d9a-4f4e-9b1a-6c1d2e3f4a5b", 1.0);
        body.created_at = arrived - 2_000_000;
        let value = codec.encode(&body).expect("encodes");
        let record = RawRecord {
            topic: "inference.requests",
            partition: 0,
            partitions: 1,
            offset: 1,
            key: Some(b"acme"),
            value: Some(&value),
            timestamp_ms: Some(arrived / 1000),
        };
        match decider.decide(record).await {
            Decision::Valid(v) => assert_eq!(v.received_at, Some(arrived)),
            other => panic!("a 30-hour backlog: {other:?}"),
        }
    }
}
