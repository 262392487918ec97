//! `streamscore replay`: re-scores the request history offline, never writing a live topic.
//!
//! The requests topic is the source of truth. Each request in the range is decoded, checked as
//! ingest checks it (content, tenant, record key and partition, model, features), put through
//! the quotas of the tenant policy (partition by partition in offset order, as the pipeline
//! meets them), routed (the request's version, else the tenant's pin, else the
//! default; or the version `--model` forces) and scored by the CPU backend, in batches.
//!
//! - **Same version** (no `--model`): every score must be bit-identical to the original
//!   prediction's and every quota decision the same; any difference is a failure.
//! - **Another version** (`--model fraud@2`): an agreement report against the original
//!   predictions: label agreement, quantiles of the score difference, label changes per tenant,
//!   and the rows that flip.
//!
//! The requests of tenants bound to principals are read from their own topics too. Ingest's
//! event-time window and the quotas run on when each record reached the broker (its Kafka
//! timestamp), as the pipeline's do. Not reproducible offline, so not compared: in-flight
//! limits (`IN_FLIGHT_EXCEEDED` depends on timing). A range that starts mid-history starts
//! every quota bucket full.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use streamscore_contracts::audit::Position;
use streamscore_contracts::{Codec, InferenceRequest, OutcomeStatus, PredictionOutcome};
use streamscore_control::Rollouts;
use streamscore_infer::quota::{Policy, QuotaDecision, Quotas};
use streamscore_infer::{Backend, Scorer, TractBackend};
use streamscore_kafka::KafkaConfig;
use streamscore_modelstore::ModelStore;

/// One end of the range: event time (µs) or an offset (in every partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Time(i64),
    Offset(i64),
}

impl Bound {
    /// `offset:N`, or an RFC 3339 time, or µs since the epoch.
    pub fn parse(text: &str) -> Result<Self> {
        match text.strip_prefix("offset:") {
            Some(n) => Ok(Self::Offset(n.parse().with_context(|| format!("{text:?}: offset:N"))?)),
            None => Ok(Self::Time(crate::audit::parse_time(text)?)),
        }
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub requests_topic: String,
    pub predictions_topic: String,
    pub dead_letter_topic: String,
    pub models: PathBuf,
    pub policy: Option<PathBuf>,
    /// Known tenants when there is no policy (the pipeline's `--tenants`).
    pub tenants: streamscore_ingest::Tenants,
    pub from: Option<Bound>,
    pub to: Option<Bound>,
    pub tenant: Option<String>,
    /// `(model, version)`: score every request for `model` with this version.
    pub model: Option<(String, String)>,
    /// `.jsonl` or `.parquet`.
    pub out: PathBuf,
    pub progress: bool,
    /// Where the replay itself is recorded (`REPLAYED`, in a chain of its own), if anywhere.
    pub audit_topic: Option<String>,
}

impl Bound {
    /// As [`Bound::parse`] reads it back.
    pub fn text(&self) -> String {
        match self {
            Bound::Time(t) => t.to_string(),
            Bound::Offset(o) => format!("offset:{o}"),
        }
    }
}

/// One replayed request, flat.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub request_id: String,
    pub tenant: String,
    pub partition: i32,
    pub offset: i64,
    pub created_at: i64,
    /// `scored`, `rejected` or `dead-lettered`.
    pub decision: String,
    pub reason: Option<String>,
    pub model: String,
    pub version: Option<String>,
    pub score: Option<f64>,
    pub label: Option<String>,
    pub original_decision: Option<String>,
    pub original_reason: Option<String>,
    pub original_version: Option<String>,
    pub original_score: Option<f64>,
    pub original_label: Option<String>,
    /// `score - original_score`, when both exist.
    pub score_diff: Option<f64>,
    pub label_changed: bool,
    pub decision_changed: bool,
    /// The request's features, as it carried them (empty when it could not be decoded).
    pub features: BTreeMap<String, f64>,
}

/// A request whose label flips under the other version.
#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    pub request_id: String,
    pub tenant: String,
    pub original_label: String,
    pub label: String,
    pub original_score: f64,
    pub score: f64,
}

/// The report, printed and written as JSON beside the output.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// `same-version`, or `other-version <model>@<version>`.
    pub mode: String,
    pub requests: usize,
    pub scored: usize,
    pub rejected: usize,
    pub dead_lettered: usize,
    /// Rows with an original prediction to compare with.
    pub compared: usize,
    /// Originals refused for in-flight limits: timing, not reproducible offline.
    pub not_reproducible: usize,
    pub seconds: f64,
    /// Of which reading the topics from the broker.
    pub read_seconds: f64,
    pub events_per_sec: f64,
    pub policy_sha256: Option<String>,
    /// Same version: scores that are not bit-identical, and decisions that differ.
    pub score_mismatches: usize,
    pub decision_mismatches: usize,
    pub first_mismatches: Vec<String>,
    /// Another version: the share of compared rows whose label is the same.
    pub label_agreement: Option<f64>,
    /// Another version: |score difference| at p50, p90, p99 and max.
    pub score_diff_quantiles: BTreeMap<String, f64>,
    /// Another version: per tenant, `[compared, labels changed]`.
    pub label_changes_per_tenant: BTreeMap<String, [usize; 2]>,
    /// Another version: the rows that flip (the first 1,000).
    pub flips: Vec<Flip>,
    pub flips_total: usize,
}

impl ReplayReport {
    /// Same version: nothing differs.
    pub fn ok(&self) -> bool {
        self.score_mismatches == 0 && self.decision_mismatches == 0
    }
}

#[derive(Debug, Clone)]
struct Original {
    decision: String,
    reason: Option<String>,
    version: Option<String>,
    score: Option<f64>,
    label: Option<String>,
    /// When the pipeline decided (ingest's event-time window is relative to it).
    written_at: i64,
    /// The rollout state whose split chose the original version, if one did.
    routed_by: Option<streamscore_contracts::RoutedBy>,
}

/// The original answers, by the request's position (the fused pipeline: the requests topic or
/// a bound tenant's own) and by request id (stages deployed apart, where outcomes point at the
/// validated topic).
#[derive(Debug, Default)]
struct Originals {
    by_position: HashMap<(String, i32, i64), Original>,
    by_id: HashMap<String, Original>,
}

impl Originals {
    fn add(&mut self, lineage: &streamscore_contracts::Lineage, original: Original) {
        let source = &lineage.source;
        self.by_position
            .entry((source.topic.clone(), source.partition, source.offset))
            .or_insert_with(|| original.clone());
        if let Some(id) = &lineage.request_id {
            self.by_id.entry(id.clone()).or_insert(original);
        }
    }

    fn get(&self, position: &Position, request_id: Option<&str>) -> Option<&Original> {
        self.by_position
            .get(&(position.topic.clone(), position.partition, position.offset))
            .or_else(|| request_id.and_then(|id| self.by_id.get(id)))
    }
}

fn decision_of(status: OutcomeStatus) -> &'static str {
    match status {
        OutcomeStatus::Scored => "scored",
        OutcomeStatus::Rejected => "rejected",
        OutcomeStatus::Failed => "failed",
    }
}

/// Whether a request at `offset` created at `created_at` is in the range `from`..=`to`.
pub fn in_range(bound: (Option<Bound>, Option<Bound>), offset: i64, created_at: i64) -> bool {
    let after = match bound.0 {
        None => true,
        Some(Bound::Time(t)) => created_at >= t,
        Some(Bound::Offset(o)) => offset >= o,
    };
    let before = match bound.1 {
        None => true,
        Some(Bound::Time(t)) => created_at <= t,
        Some(Bound::Offset(o)) => offset <= o,
    };
    after && before
}

/// Replays, writes the rows to `config.out` and the report beside it; returns the report.
pub async fn replay(config: &ReplayConfig) -> Result<ReplayReport> {
    let parquet = match config.out.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => false,
        Some("parquet") => true,
        _ => bail!("--out {}: name a .jsonl or a .parquet file", config.out.display()),
    };
    let started = Instant::now();
    let store = ModelStore::open(&config.models).with_context(|| format!("loading {}", config.models.display()))?;
    let policy = config.policy.as_deref().map(Policy::load).transpose()?;
    // Tenants bound to Kafka principals come on topics of their own, as the pipeline has it.
    let bound = streamscore_ingest::TenantTopics::new(
        &config.requests_topic,
        policy.iter().flat_map(|p| p.bound_tenants().map(|(t, _)| t)),
    );
    // Ingest judged each request against the version routing scores (pins included).
    let pins = policy.as_ref().map(streamscore_infer::quota::Policy::pins).unwrap_or_default();
    let tenants = match &policy {
        None => config.tenants.clone(),
        Some(p) => match p.file.unknown_tenants {
            streamscore_infer::quota::policy::UnknownTenants::Default => streamscore_ingest::Tenants::Any,
            streamscore_infer::quota::policy::UnknownTenants::Refuse => {
                streamscore_ingest::Tenants::Only(p.file.tenants.keys().cloned().collect())
            }
        },
    };

    // The history, and the original answers. The requests are on the shared topic and, for
    // tenants bound to principals, on their own topics (absent ones read as empty).
    let topics = [config.predictions_topic.as_str(), config.dead_letter_topic.as_str()];
    let reading = crate::audit::read_topics(&config.kafka, topics, false);
    let mut request_topics = vec![(config.requests_topic.clone(), false)];
    request_topics.extend(bound.topics().into_iter().map(|t| (t, true)));
    let readers: Vec<_> = request_topics
        .into_iter()
        .map(|(topic, may_be_missing)| {
            let kafka = config.kafka.clone();
            tokio::task::spawn_blocking(move || -> Result<(i32, Vec<crate::audit::Read>)> {
                match crate::audit::read_topic_timed(&kafka, &topic) {
                    Ok(records) => Ok((crate::audit::partitions(&kafka, &topic)?, records)),
                    Err(_) if may_be_missing && crate::audit::partitions(&kafka, &topic)? == 0 => Ok((0, Vec::new())),
                    Err(e) => Err(e),
                }
            })
        })
        .collect();
    let [predictions, dead_letters] = reading.await?;
    // Every rollout state by (model, generation), from the audit log (the control topic keeps
    // only each model's latest): the split each original answer was routed under.
    let audit_topic = config.audit_topic.clone().unwrap_or_else(|| streamscore_contracts::topics::AUDIT.to_owned());
    let [audit] = crate::audit::read_topics(&config.kafka, [audit_topic.as_str()], true).await?;
    let audit_codec = Codec::<streamscore_contracts::AuditRecord>::with_url(&config.registry_url, &audit_topic);
    let mut rollout_states: HashMap<(String, i64), streamscore_contracts::Rollout> = HashMap::new();
    for (_, _, bytes) in &audit {
        if !contains(bytes, b"ROLLOUT_") {
            continue;
        }
        let Ok(entry) = audit_codec.decode(bytes).await else { continue };
        if let Some(state) = streamscore_control::publish::state_of(&entry.value.details) {
            rollout_states.insert((state.model.clone(), state.generation), state);
        }
    }
    // Each request with its topic's partition count (ingest's WRONG_PARTITION check).
    let mut requests: Vec<(i32, crate::audit::Read)> = Vec::new();
    for reader in readers {
        let (partitions, records) = reader.await.context("a reader panicked")??;
        requests.extend(records.into_iter().map(|r| (partitions, r)));
    }
    let read_seconds = started.elapsed().as_secs_f64();
    let mut originals = Originals::default();
    // Dead letters first: a refused request's rejection (to its reply-to) is ingest's too.
    let letters = Codec::<streamscore_contracts::DeadLetter>::with_url(&config.registry_url, &config.dead_letter_topic);
    for (_, _, bytes) in &dead_letters {
        let Ok(decoded) = letters.decode(bytes).await else { continue };
        let d = decoded.value;
        let original = Original {
            decision: "dead-lettered".to_owned(),
            reason: Some(d.reason.code().to_owned()),
            version: None,
            score: None,
            label: None,
            written_at: d.lineage.written_at,
            routed_by: None,
        };
        originals.add(&d.lineage, original);
    }
    let outcomes = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    for (_, _, bytes) in &predictions {
        let Ok(decoded) = outcomes.decode(bytes).await else { continue };
        let o = decoded.value;
        if o.shadow || o.lineage.stage == "ingest" {
            continue;
        }
        let original = Original {
            decision: decision_of(o.status).to_owned(),
            reason: o.reason,
            version: o.model_version,
            score: o.score,
            label: o.label,
            written_at: o.lineage.written_at,
            routed_by: o.routed_by,
        };
        originals.add(&o.lineage, original);
    }
    // Partition by partition, in offset order: how the pipeline met them.
    requests.sort_by(|a, b| a.1.position.cmp(&b.1.position));
    let codec = Codec::<InferenceRequest>::with_url(&config.registry_url, &config.requests_topic);
    let progress = config.progress.then(|| {
        let bar = indicatif::ProgressBar::new(requests.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} replay [{bar:40}] {pos}/{len} requests, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let mut quotas = policy.clone().map(Quotas::new);
    let mut adopted = std::collections::HashSet::new();
    let mut rows: Vec<Row> = Vec::new();
    // Rows waiting to be scored, by version: (row index, input vector).
    let mut pending: BTreeMap<String, Vec<(usize, Vec<f32>)>> = BTreeMap::new();
    for (i, (partitions, record)) in requests.iter().enumerate() {
        let (position, key, bytes) = (&record.position, &record.key, &record.value);
        // When the record reached the broker: the clock of the event-time window and quotas.
        let received_at = record.timestamp_ms.map(|ms| ms.saturating_mul(1000));
        if let Some(bar) = &progress {
            if i % 1024 == 0 {
                bar.set_position(i as u64);
            }
        }
        let decoded = if bytes.len() > streamscore_ingest::decide::DEFAULT_MAX_RECORD_BYTES {
            Err(streamscore_contracts::DeadLetterReason::TooLarge)
        } else {
            codec.decode(bytes).await.map(|d| d.value).map_err(|e| e.reason())
        };
        let request = match decoded {
            Ok(request) => request,
            Err(reason) => {
                // Undecodable: in range by offset only, for no tenant.
                let by_offset = matches!(config.from, None | Some(Bound::Offset(_)))
                    && matches!(config.to, None | Some(Bound::Offset(_)));
                if by_offset && config.tenant.is_none() && in_range((config.from, config.to), position.offset, 0) {
                    let original = originals.get(position, None);
                    rows.push(Row {
                        request_id: String::new(),
                        tenant: String::new(),
                        partition: position.partition,
                        offset: position.offset,
                        created_at: 0,
                        decision: "dead-lettered".to_owned(),
                        reason: Some(reason.code().to_owned()),
                        model: String::new(),
                        version: None,
                        score: None,
                        label: None,
                        original_decision: original.map(|o| o.decision.clone()),
                        original_reason: original.and_then(|o| o.reason.clone()),
                        original_version: None,
                        original_score: None,
                        original_label: None,
                        score_diff: None,
                        label_changed: false,
                        decision_changed: false,
                        features: BTreeMap::new(),
                    });
                }
                continue;
            }
        };
        if !in_range((config.from, config.to), position.offset, request.created_at) {
            continue;
        }
        if config.tenant.as_ref().is_some_and(|t| *t != request.tenant) {
            continue;
        }
        let original = originals.get(position, Some(&request.request_id));
        // The rollout the original answer was routed under (its state, from the audit log), so
        // the split decides again exactly as it did.
        let rollouts_at = original
            .and_then(|o| o.routed_by.as_ref())
            .and_then(|r| rollout_states.get(&(request.model.clone(), r.generation)))
            .map(|state| Rollouts::of([state.clone()]))
            .unwrap_or_default();
        let mut row = Row {
            request_id: request.request_id.clone(),
            tenant: request.tenant.clone(),
            partition: position.partition,
            offset: position.offset,
            created_at: request.created_at,
            decision: "scored".to_owned(),
            reason: None,
            model: request.model.clone(),
            version: None,
            score: None,
            label: None,
            original_decision: original.map(|o| o.decision.clone()),
            original_reason: original.and_then(|o| o.reason.clone()),
            original_version: original.and_then(|o| o.version.clone()),
            original_score: original.and_then(|o| o.score),
            original_label: original.and_then(|o| o.label.clone()),
            score_diff: None,
            label_changed: false,
            decision_changed: false,
            features: request.features.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        // Ingest's checks, in its order.
        if let Some((reason, _)) =
            streamscore_ingest::check_request(&request, &tenants, Some(&store), &pins, &rollouts_at)
        {
            row.decision = "dead-lettered".to_owned();
            row.reason = Some(reason.code().to_owned());
            rows.push(row);
            continue;
        }
        // The event-time window, measured from when the record reached the broker (else, for
        // a record without a timestamp, from when the pipeline originally decided).
        let window = received_at
            .or(original.map(|o| o.written_at))
            .and_then(|at| streamscore_ingest::decide::EventTimeWindow::default().check(request.created_at, at));
        if window.is_some() {
            row.decision = "dead-lettered".to_owned();
            row.reason = Some("TIMESTAMP_OUT_OF_RANGE".to_owned());
            rows.push(row);
            continue;
        }
        if streamscore_ingest::decide::tenant_refusal(key.as_deref(), &position.topic, &request.tenant, &bound)
            .is_some()
        {
            row.decision = "dead-lettered".to_owned();
            row.reason = Some("TENANT_MISMATCH".to_owned());
            rows.push(row);
            continue;
        }
        if streamscore_ingest::decide::partition_refusal(
            &position.topic,
            position.partition,
            *partitions,
            &request.tenant,
        )
        .is_some()
        {
            row.decision = "dead-lettered".to_owned();
            row.reason = Some("WRONG_PARTITION".to_owned());
            rows.push(row);
            continue;
        }
        // An explanation asked for with a value that means nothing was refused before its
        // quota; one that will run (its version has a baseline) cost the tenant's explain cost.
        let pin = policy.as_ref().and_then(|p| p.pin(&request.tenant, &request.model));
        let Ok(explain) = streamscore_contracts::wants_explanation(&request) else {
            row.decision = "rejected".to_owned();
            row.reason = Some("EXPLAIN_INVALID".to_owned());
            rows.push(row);
            continue;
        };
        // The version the pipeline routed to (the request's, its pin, its split): what the
        // explanation's cost was decided on.
        let live_split = match (request.model_version.as_deref(), pin) {
            (None, None) => rollouts_at.route(&request.model, &request.request_id),
            _ => None,
        };
        let explainable = explain
            && store
                .route(
                    &request.model,
                    request.model_version.as_deref(),
                    pin.or(live_split.as_ref().map(|s| s.version.as_str())),
                )
                .is_ok_and(|v| v.meta.baseline_row().is_some());
        // Quotas, on the clock the pipeline decided them on: when each request reached the
        // broker (its `created_at` for a record without a timestamp).
        if let Some(q) = quotas.as_mut() {
            if adopted.insert(request.tenant.clone()) {
                q.adopt(&request.tenant, 1, None);
            }
            let at = received_at.unwrap_or(request.created_at);
            let decision = q.decide_request(&request.tenant, &request.model, at, explainable);
            q.release(&request.tenant);
            let refused = match decision {
                QuotaDecision::Admit | QuotaDecision::Delay { .. } => None,
                QuotaDecision::Reject { reason, .. } => Some(reason.code().to_owned()),
                QuotaDecision::UnknownTenant => Some("UNKNOWN_TENANT".to_owned()),
                QuotaDecision::ModelNotAllowed => Some("MODEL_NOT_ALLOWED".to_owned()),
            };
            if let Some(reason) = refused {
                row.decision = "rejected".to_owned();
                row.reason = Some(reason);
                rows.push(row);
                continue;
            }
        }
        // Routing, or the version asked for.
        let forced = config.model.as_ref().filter(|(m, _)| *m == request.model).map(|(_, v)| v.as_str());
        let requested = forced.or(request.model_version.as_deref());
        let split = match (requested, pin) {
            (None, None) => rollouts_at.route(&request.model, &request.request_id),
            _ => None,
        };
        let chosen = if forced.is_some() { None } else { pin.or(split.as_ref().map(|s| s.version.as_str())) };
        let version = match store.route(&request.model, requested, chosen) {
            Ok(version) => version,
            Err(e) => {
                row.decision = "rejected".to_owned();
                row.reason = Some(match e {
                    streamscore_modelstore::RouteError::UnknownModel { .. } => "UNKNOWN_MODEL".to_owned(),
                    streamscore_modelstore::RouteError::UnknownVersion { .. } => "UNKNOWN_MODEL_VERSION".to_owned(),
                    streamscore_modelstore::RouteError::Refused { .. } => "MODEL_REFUSED".to_owned(),
                });
                rows.push(row);
                continue;
            }
        };
        row.version = Some(version.meta.version.clone());
        if explain && !explainable && forced.is_none() {
            row.decision = "rejected".to_owned();
            row.reason = Some("EXPLANATION_UNAVAILABLE".to_owned());
            rows.push(row);
            continue;
        }
        match version.check(&request.features) {
            Ok(vector) => {
                pending.entry(version.key()).or_default().push((rows.len(), vector.to_vec()));
            }
            Err(_) => {
                row.decision = "rejected".to_owned();
                row.reason = Some("FEATURES_INVALID".to_owned());
            }
        }
        rows.push(row);
    }

    // Scoring, by version, in batches.
    let mut scorers: HashMap<String, Arc<dyn Scorer>> = HashMap::new();
    for (key, items) in &pending {
        let (model, version) = key.split_once('/').unwrap_or((key.as_str(), ""));
        let loaded = store.get(model, version).with_context(|| format!("{key} is not in the store"))?;
        let scorer = match scorers.get(key) {
            Some(s) => Arc::clone(s),
            None => {
                let s = TractBackend.load(&loaded)?;
                scorers.insert(key.clone(), Arc::clone(&s));
                s
            }
        };
        for chunk in items.chunks(1024) {
            let input: Vec<f32> = chunk.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            let scores = scorer.score(&input, chunk.len())?;
            for ((index, _), score) in chunk.iter().zip(scores) {
                let score = f64::from(score);
                rows[*index].score = Some(score);
                rows[*index].label = Some(loaded.meta.label(score).to_owned());
            }
        }
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }

    // Comparison.
    let mut report = ReplayReport {
        mode: config.model.as_ref().map_or("same-version".to_owned(), |(m, v)| format!("other-version {m}@{v}")),
        requests: rows.len(),
        policy_sha256: policy.as_ref().map(|p| p.sha256.clone()),
        ..ReplayReport::default()
    };
    let mut diffs = Vec::new();
    for row in &mut rows {
        match row.decision.as_str() {
            "scored" => report.scored += 1,
            "rejected" => report.rejected += 1,
            _ => report.dead_lettered += 1,
        }
        let Some(original) = row.original_decision.clone() else { continue };
        if row.original_reason.as_deref() == Some("IN_FLIGHT_EXCEEDED") {
            report.not_reproducible += 1;
            continue;
        }
        report.compared += 1;
        row.decision_changed =
            original != row.decision || (row.decision != "scored" && row.reason != row.original_reason);
        if let (Some(a), Some(b)) = (row.score, row.original_score) {
            row.score_diff = Some(a - b);
        }
        row.label_changed = row.label.is_some() && row.original_label.is_some() && row.label != row.original_label;
        if config.model.is_none() {
            let same_bits = match (row.score, row.original_score) {
                (Some(a), Some(b)) => a.to_bits() == b.to_bits(),
                (None, None) => true,
                _ => false,
            };
            if row.decision_changed {
                report.decision_mismatches += 1;
            }
            if !same_bits && !row.decision_changed {
                report.score_mismatches += 1;
            }
            if (row.decision_changed || !same_bits) && report.first_mismatches.len() < 20 {
                report.first_mismatches.push(format!(
                    "{} ({}/{}@{}): original {} {:?} {:?}, replayed {} {:?} {:?}",
                    row.request_id,
                    config.requests_topic,
                    row.partition,
                    row.offset,
                    original,
                    row.original_reason,
                    row.original_score,
                    row.decision,
                    row.reason,
                    row.score
                ));
            }
        } else if let (Some(diff), Some(label), Some(original_label)) =
            (row.score_diff, &row.label, &row.original_label)
        {
            diffs.push(diff.abs());
            let tenant = report.label_changes_per_tenant.entry(row.tenant.clone()).or_default();
            tenant[0] += 1;
            if row.label_changed {
                tenant[1] += 1;
                report.flips_total += 1;
                if report.flips.len() < 1000 {
                    report.flips.push(Flip {
                        request_id: row.request_id.clone(),
                        tenant: row.tenant.clone(),
                        original_label: original_label.clone(),
                        label: label.clone(),
                        original_score: row.original_score.unwrap_or_default(),
                        score: row.score.unwrap_or_default(),
                    });
                }
            }
        }
    }
    if config.model.is_some() {
        let compared: usize = report.label_changes_per_tenant.values().map(|c| c[0]).sum();
        if compared > 0 {
            report.label_agreement = Some(1.0 - report.flips_total as f64 / compared as f64);
        }
        diffs.sort_by(f64::total_cmp);
        if !diffs.is_empty() {
            let at = |q: f64| diffs[((q * diffs.len() as f64).ceil() as usize).clamp(1, diffs.len()) - 1];
            for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
                report.score_diff_quantiles.insert(name.to_owned(), at(q));
            }
        }
    }

    if parquet {
        crate::replay_parquet::write(&config.out, &rows)?;
    } else {
        let file = std::fs::File::create(&config.out).with_context(|| format!("creating {}", config.out.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for row in &rows {
            serde_json::to_writer(&mut out, row)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.read_seconds = read_seconds;
    report.events_per_sec = requests.len() as f64 / report.seconds.max(1e-9);
    let report_path = report_path(&config.out);
    let report_bytes = serde_json::to_vec_pretty(&report)?;
    std::fs::write(&report_path, &report_bytes).with_context(|| format!("writing {}", report_path.display()))?;
    if let Some(topic) = &config.audit_topic {
        record(config, topic, &report, &report_bytes).await?;
    }
    Ok(report)
}

/// The replay in the audit log: what was replayed, how, and the sha256 of its report.
async fn record(config: &ReplayConfig, topic: &str, report: &ReplayReport, report_bytes: &[u8]) -> Result<()> {
    let audit = streamscore_kafka::audit::AuditWriter::new(
        &config.kafka,
        &config.registry_url,
        topic,
        "replay",
        &streamscore_contracts::lineage::default_instance(),
        // No signal handler here: SIGTERM ends a replay at once, as any short command.
        &streamscore_kafka::Shutdown::never(),
    )
    .await
    .context("recording the replay in the audit log")?;
    let mut details = HashMap::from([
        ("requests_topic".to_owned(), config.requests_topic.clone()),
        ("from".to_owned(), config.from.map(|b| b.text()).unwrap_or_default()),
        ("to".to_owned(), config.to.map(|b| b.text()).unwrap_or_default()),
        ("tenant".to_owned(), config.tenant.clone().unwrap_or_default()),
        ("mode".to_owned(), report.mode.clone()),
        ("requests".to_owned(), report.requests.to_string()),
        ("compared".to_owned(), report.compared.to_string()),
        ("ok".to_owned(), report.ok().to_string()),
        ("report_sha256".to_owned(), streamscore_contracts::sha256_hex(report_bytes)),
        ("out".to_owned(), config.out.display().to_string()),
    ]);
    if let Some(sha256) = &report.policy_sha256 {
        details.insert("policy_sha256".to_owned(), sha256.clone());
    }
    if let Some(agreement) = report.label_agreement {
        details.insert("label_agreement".to_owned(), agreement.to_string());
    }
    audit.record("REPLAYED", &config.requests_topic, None, details).await?;
    audit.close(HashMap::new()).await?;
    Ok(())
}

/// `<out>.report.json`.
pub fn report_path(out: &std::path::Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".report.json");
    PathBuf::from(name)
}

/// A human view of `report`.
pub fn describe(report: &ReplayReport, out: &std::path::Path) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "replayed {} requests in {:.2} s ({:.0} requests/s; reading the topics {:.2} s, replaying {:.0}/s): {} scored, \
         {} rejected, {} dead-lettered; {} compared with their original answer{}",
        report.requests,
        report.seconds,
        report.events_per_sec,
        report.read_seconds,
        report.requests as f64 / (report.seconds - report.read_seconds).max(1e-9),
        report.scored,
        report.rejected,
        report.dead_lettered,
        report.compared,
        if report.not_reproducible > 0 {
            format!(" ({} in-flight refusals not reproducible offline)", report.not_reproducible)
        } else {
            String::new()
        }
    );
    if report.mode == "same-version" {
        if report.ok() {
            let _ = writeln!(text, "ok: every score bit-identical and every decision the same");
        } else {
            let _ = writeln!(
                text,
                "FAILED: {} scores not bit-identical, {} decisions differ; the first:",
                report.score_mismatches, report.decision_mismatches
            );
            for line in &report.first_mismatches {
                let _ = writeln!(text, "  {line}");
            }
        }
    } else {
        let _ = writeln!(
            text,
            "{}: label agreement {}, |score difference| {}",
            report.mode,
            report.label_agreement.map_or("-".to_owned(), |a| format!("{:.2}%", a * 100.0)),
            report.score_diff_quantiles.iter().map(|(k, v)| format!("{k} {v:.6}")).collect::<Vec<_>>().join(", ")
        );
        for (tenant, [n, changed]) in &report.label_changes_per_tenant {
            let _ = writeln!(text, "  {tenant}: {changed} of {n} labels change");
        }
        let _ = writeln!(text, "  {} rows flip (in the report)", report.flips_total);
    }
    let _ = writeln!(text, "rows: {}; report: {}", out.display(), report_path(out).display());
    text
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
