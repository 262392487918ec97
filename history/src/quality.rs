//! `streamscore quality`: model quality per version computed from the topics alone (never
//! from the monitor's store): every scored outcome of the prediction topic (primary and
//! shadow), every label of the feedback topic, joined by request id as the monitor joins
//! them, with the same figures ([`streamscore_monitor::quality::figures`]).
//!
//! Outcomes count once per (request, model, version) whatever their redelivered copies; a
//! label counts once per (request, tenant), the latest `observed_at` winning (a correction),
//! and only for its own tenant's request, within the label horizon of the request's
//! creation, with a valid `actual` (the monitor dead-letters the others).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use streamscore_contracts::{Codec, Feedback, PredictionOutcome};
use streamscore_kafka::KafkaConfig;
use streamscore_modelstore::ModelStore;
use streamscore_monitor::quality::figures::{figures, Figures, Pair};

/// What to compute.
#[derive(Debug, Clone)]
pub struct QualityConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub predictions_topic: String,
    pub feedback_topic: String,
    /// The model store: each version's threshold (precision, recall, F1).
    pub models: PathBuf,
    /// Only this model (`name`) or version (`name@version`).
    pub model: Option<String>,
    /// Prediction time (the request's `created_at`, µs) from, inclusive.
    pub from: Option<i64>,
    /// Prediction time up to, inclusive.
    pub to: Option<i64>,
    /// Labels count up to this long after the request's creation, µs.
    pub horizon_us: i64,
    /// One row per labeled prediction, as Parquet.
    pub out: Option<PathBuf>,
}

/// One version's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VersionQuality {
    pub model: String,
    pub version: String,
    pub labeled: u64,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub ece: Option<f64>,
    /// Scored outcomes of the version in the range.
    pub predictions: u64,
    pub labeled_share: Option<f64>,
    pub positives: u64,
    pub delay_p50_seconds: Option<f64>,
    pub delay_p99_seconds: Option<f64>,
}

/// What the labels did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LabelCounts {
    /// Feedback records read (copies included).
    pub records: u64,
    /// Distinct (request, tenant) labels kept.
    pub labels: u64,
    /// Labels joined to at least one outcome in the range.
    pub joined: u64,
    /// Labels of requests without a scored outcome in the range (unknown requests, or
    /// outside `--model`, `--from`, `--to`).
    pub unmatched: u64,
    /// Labels not counted, by reason (the monitor's dead-letter reasons).
    pub refused: BTreeMap<String, u64>,
}

/// The report.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct QualityReport {
    pub versions: Vec<VersionQuality>,
    pub labels: LabelCounts,
    /// Rows written to `--out`.
    pub rows: u64,
    pub seconds: f64,
}

/// One labeled prediction, as `--out` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledRow {
    pub request_id: String,
    pub tenant: String,
    pub model: String,
    pub version: String,
    pub shadow: bool,
    pub created_at: i64,
    pub score: f64,
    pub label: Option<String>,
    pub actual: f64,
    pub observed_at: i64,
    pub features: BTreeMap<String, f64>,
}

/// Reads the topics and computes the report (and the rows, to `config.out`).
pub async fn quality(config: &QualityConfig) -> Result<QualityReport> {
    if let Some(out) = &config.out {
        if out.extension().and_then(|e| e.to_str()) != Some("parquet") {
            bail!("--out {}: name a .parquet file", out.display());
        }
    }
    let started = Instant::now();
    let store = ModelStore::open(&config.models).with_context(|| format!("loading {}", config.models.display()))?;
    let (model, version) = match config.model.as_deref() {
        None => (None, None),
        Some(m) => match m.split_once('@') {
            Some((name, v)) => (Some(name), Some(v)),
            None => (Some(m), None),
        },
    };
    let topics = [config.predictions_topic.as_str(), config.feedback_topic.as_str()];
    let [predictions, feedback] = crate::audit::read_topics(&config.kafka, topics, false).await?;

    // Outcomes, once per (request, model, version); the first copy read stands (copies of
    // one outcome say the same).
    let outcomes = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    let mut kept: HashMap<(String, String, String), PredictionOutcome> = HashMap::new();
    let mut by_request: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for (_, _, bytes) in &predictions {
        let Ok(decoded) = outcomes.decode(bytes).await else { continue };
        let o = decoded.value;
        let (Some(request_id), Some(v), Some(_)) = (o.lineage.request_id.clone(), o.model_version.clone(), o.score)
        else {
            continue;
        };
        if o.status != streamscore_contracts::OutcomeStatus::Scored
            || model.is_some_and(|m| m != o.model)
            || version.is_some_and(|want| want != v)
            || config.from.is_some_and(|t| o.request_created_at < t)
            || config.to.is_some_and(|t| o.request_created_at > t)
        {
            continue;
        }
        let key = (request_id.clone(), o.model.clone(), v);
        if let std::collections::hash_map::Entry::Vacant(slot) = kept.entry(key.clone()) {
            slot.insert(o);
            by_request.entry(request_id).or_default().push(key);
        }
    }

    // Labels, once per (request, tenant): the latest observation wins.
    let labels_codec = Codec::<Feedback>::with_url(&config.registry_url, &config.feedback_topic);
    let mut counts = LabelCounts::default();
    let mut labels: HashMap<(String, String), Feedback> = HashMap::new();
    let refuse = |counts: &mut LabelCounts, reason: &str| *counts.refused.entry(reason.to_owned()).or_default() += 1;
    for (_, key, bytes) in &feedback {
        counts.records += 1;
        let f = match labels_codec.decode(bytes).await {
            Ok(decoded) => decoded.value,
            Err(e) => {
                refuse(&mut counts, e.reason().code());
                continue;
            }
        };
        if let Some((reason, _)) = streamscore_monitor::quality::join::check(&f, key.as_deref()) {
            refuse(&mut counts, reason.code());
            continue;
        }
        match labels.entry((f.request_id.clone(), f.tenant.clone())) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(f);
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                if f.observed_at > slot.get().observed_at {
                    slot.insert(f);
                }
            }
        }
    }
    counts.labels = labels.len() as u64;

    // The join.
    let mut pairs: BTreeMap<(String, String), Vec<Pair>> = BTreeMap::new();
    let mut rows: Vec<LabeledRow> = Vec::new();
    for ((request_id, tenant), label) in &labels {
        let Some(keys) = by_request.get(request_id) else {
            counts.unmatched += 1;
            continue;
        };
        let first = &kept[&keys[0]];
        if first.lineage.tenant.as_deref() != Some(tenant.as_str()) {
            refuse(&mut counts, "FEEDBACK_TENANT_MISMATCH");
            continue;
        }
        if label.observed_at.saturating_sub(first.request_created_at) > config.horizon_us {
            refuse(&mut counts, "FEEDBACK_UNKNOWN_REQUEST");
            continue;
        }
        counts.joined += 1;
        for key in keys {
            let o = &kept[key];
            let score = o.score.unwrap_or_default();
            let threshold = store.get(&o.model, &key.2).map(|m| m.meta.threshold);
            pairs.entry((o.model.clone(), key.2.clone())).or_default().push(Pair {
                score,
                predicted: threshold.map(|t| score >= t),
                actual: label.actual,
                delay_us: label.observed_at - o.request_created_at,
            });
            if config.out.is_some() {
                rows.push(LabeledRow {
                    request_id: request_id.clone(),
                    tenant: tenant.clone(),
                    model: o.model.clone(),
                    version: key.2.clone(),
                    shadow: o.shadow,
                    created_at: o.request_created_at,
                    score,
                    label: o.label.clone(),
                    actual: label.actual,
                    observed_at: label.observed_at,
                    features: o.features.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                });
            }
        }
    }
    let mut predictions_per_version: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (_, m, v) in kept.keys() {
        *predictions_per_version.entry((m.clone(), v.clone())).or_default() += 1;
    }
    let mut report = QualityReport { labels: counts, ..QualityReport::default() };
    for ((m, v), predictions) in &predictions_per_version {
        let mut selected = pairs.remove(&(m.clone(), v.clone())).unwrap_or_default();
        let f: Figures = figures(&mut selected);
        #[allow(clippy::cast_precision_loss)]
        let labeled_share = (*predictions > 0).then(|| f.labeled as f64 / *predictions as f64);
        report.versions.push(VersionQuality {
            model: m.clone(),
            version: v.clone(),
            labeled: f.labeled,
            auc: f.auc,
            log_loss: f.log_loss,
            brier: f.brier,
            precision: f.precision,
            recall: f.recall,
            f1: f.f1,
            ece: f.ece,
            predictions: *predictions,
            labeled_share,
            positives: f.positives,
            delay_p50_seconds: f.delay_p50_seconds,
            delay_p99_seconds: f.delay_p99_seconds,
        });
    }
    if let Some(out) = &config.out {
        rows.sort_by(|a, b| (a.created_at, &a.request_id, &a.version).cmp(&(b.created_at, &b.request_id, &b.version)));
        let order = feature_order(&store, &rows);
        crate::replay_parquet::write_labeled(out, &rows, &order)?;
        report.rows = rows.len() as u64;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Feature columns: each model's input order as its metadata lists it, then any other name
/// the rows carry, sorted.
fn feature_order(store: &ModelStore, rows: &[LabeledRow]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for row in rows {
        if seen.insert((row.model.clone(), row.version.clone())) {
            if let Some(m) = store.get(&row.model, &row.version) {
                for f in &m.meta.features {
                    if !order.contains(&f.name) {
                        order.push(f.name.clone());
                    }
                }
            }
        }
    }
    let rest: BTreeSet<&String> = rows.iter().flat_map(|r| r.features.keys()).filter(|n| !order.contains(n)).collect();
    order.extend(rest.into_iter().cloned());
    order
}

/// The report for a person.
pub fn describe(report: &QualityReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let l = &report.labels;
    let _ = writeln!(
        out,
        "{} feedback records, {} labels, {} joined to outcomes, {} without an outcome in the range ({:.2} s)",
        l.records, l.labels, l.joined, l.unmatched, report.seconds
    );
    for (reason, n) in &l.refused {
        let _ = writeln!(out, "  not counted: {n} {reason}");
    }
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    for v in &report.versions {
        let _ = writeln!(
            out,
            "{}/{}: {} labeled of {} ({}), auc {}, log loss {}, brier {}, precision {}, recall {}, f1 {}, ece {}, label delay p50 {} s p99 {} s",
            v.model,
            v.version,
            v.labeled,
            v.predictions,
            v.labeled_share.map_or_else(|| "-".to_owned(), |s| format!("{:.1}%", s * 100.0)),
            f(v.auc),
            f(v.log_loss),
            f(v.brier),
            f(v.precision),
            f(v.recall),
            f(v.f1),
            f(v.ece),
            f(v.delay_p50_seconds),
            f(v.delay_p99_seconds),
        );
    }
    if report.rows > 0 {
        let _ = writeln!(out, "{} rows written", report.rows);
    }
    out
}
