//! Quality per model version and tenant over sliding windows of prediction time, computed
//! from the store; exported as Prometheus gauges, and readable by another process (a rollout
//! controller) through [`read`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::figures::{figures, Figures, Pair};
use super::store::{self, QualityStore, StoreError};

/// The windows of prediction time (the request's creation) quality is computed over, with
/// their metric label; `all` is every labeled pair the store keeps (its retention).
pub const WINDOWS: [(&str, Option<i64>); 4] =
    [("1h", Some(3_600_000_000)), ("24h", Some(86_400_000_000)), ("7d", Some(604_800_000_000)), ("all", None)];

/// The tenant label of a version's figures over every tenant.
pub const ALL_TENANTS: &str = "_all";

/// The figures of one (model, version, tenant, window).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityRow {
    pub model: String,
    pub version: String,
    /// A tenant, or [`ALL_TENANTS`].
    pub tenant: String,
    pub window: &'static str,
    /// Predictions made in the window (counted per minute of their request's creation).
    pub predictions: u64,
    /// Labeled predictions over predictions.
    pub labeled_share: Option<f64>,
    #[serde(flatten)]
    pub figures: Figures,
}

/// Quality at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QualityReport {
    /// When it was computed, µs since the epoch (windows end here).
    pub at: i64,
    pub rows: Vec<QualityRow>,
}

impl QualityReport {
    /// The row of `model`/`version` over every tenant in `window`.
    pub fn version(&self, model: &str, version: &str, window: &str) -> Option<&QualityRow> {
        self.rows
            .iter()
            .find(|r| r.model == model && r.version == version && r.tenant == ALL_TENANTS && r.window == window)
    }
}

/// The report of the store under `dir` at `now`, read while the monitor runs (a rollout
/// controller's way to the figures; the monitor exports the same as metrics).
pub fn read(dir: &Path, now: i64, thresholds: &dyn Fn(&str, &str) -> Option<f64>) -> Result<QualityReport, StoreError> {
    let conn = QualityStore::open_reader(dir)?;
    compute(&conn, now, thresholds).map_err(|source| StoreError::Sqlite { path: dir.join(store::FILE), source })
}

/// The report at `now` from a connection to the store; `thresholds(model, version)` gives a
/// version's threshold where the labeled pairs lack it (`None`: keep what they say).
pub fn compute(
    conn: &rusqlite::Connection,
    now: i64,
    thresholds: &dyn Fn(&str, &str) -> Option<f64>,
) -> rusqlite::Result<QualityReport> {
    let widest = WINDOWS.iter().filter_map(|(_, w)| *w).max().unwrap_or(0);
    let (minutes, totals) = store::volumes(conn, store::minute_of(now.saturating_sub(widest)))?;
    type Key = (String, String, String);
    let mut groups: BTreeMap<Key, Vec<(i64, Pair)>> = BTreeMap::new();
    // Streamed from the store into the groups (a pair is 40 bytes; rows are not kept).
    store::for_each_labeled(conn, i64::MIN, |row| {
        let predicted = row.predicted.or_else(|| thresholds(&row.model, &row.version).map(|t| row.score >= t));
        let pair = Pair { score: row.score, predicted, actual: row.actual, delay_us: row.observed_at - row.created_at };
        for tenant in [row.tenant.as_str(), ALL_TENANTS] {
            let key = (row.model.clone(), row.version.clone(), tenant.to_owned());
            match groups.get_mut(&key) {
                Some(pairs) => pairs.push((row.created_at, pair)),
                None => {
                    groups.insert(key, vec![(row.created_at, pair)]);
                }
            }
        }
    })?;
    // Keys with predictions but no label yet still get a row (labeled 0).
    for (model, version, tenant) in totals.keys() {
        for t in [tenant.as_str(), ALL_TENANTS] {
            groups.entry((model.clone(), version.clone(), t.to_owned())).or_default();
        }
    }
    let mut report = QualityReport { at: now, rows: Vec::new() };
    for ((model, version, tenant), pairs) in &groups {
        for (window, length) in WINDOWS {
            let from = length.map_or(i64::MIN, |l| now.saturating_sub(l));
            let mut selected: Vec<Pair> = pairs.iter().filter(|(at, _)| *at >= from).map(|(_, p)| *p).collect();
            let predictions = match length {
                Some(_) => {
                    let first = store::minute_of(from);
                    let sum = |key: &Key| {
                        minutes
                            .get(key)
                            .map_or(0, |m| m.iter().filter(|(minute, _)| *minute >= first).map(|(_, n)| n).sum())
                    };
                    volume(&minutes, &totals, model, version, tenant, &sum, false)
                }
                None => volume(
                    &minutes,
                    &totals,
                    model,
                    version,
                    tenant,
                    &|key: &Key| totals.get(key).copied().unwrap_or(0),
                    true,
                ),
            };
            let figures = figures(&mut selected);
            #[allow(clippy::cast_precision_loss)]
            let labeled_share = (predictions > 0).then(|| figures.labeled as f64 / predictions as f64);
            report.rows.push(QualityRow {
                model: model.clone(),
                version: version.clone(),
                tenant: tenant.clone(),
                window,
                predictions,
                labeled_share,
                figures,
            });
        }
    }
    Ok(report)
}

/// Predictions of (model, version, tenant), or of every tenant of the version.
fn volume(
    minutes: &store::Volumes,
    totals: &std::collections::HashMap<(String, String, String), u64>,
    model: &str,
    version: &str,
    tenant: &str,
    count: &dyn Fn(&(String, String, String)) -> u64,
    all_time: bool,
) -> u64 {
    if tenant != ALL_TENANTS {
        return count(&(model.to_owned(), version.to_owned(), tenant.to_owned()));
    }
    let keys: Vec<&(String, String, String)> =
        if all_time { totals.keys().collect() } else { minutes.keys().collect() };
    keys.into_iter().filter(|(m, v, _)| m == model && v == version).map(count).sum()
}

/// Sets the gauges of `report`: per (model, version, tenant, window) the counts and figures
/// (NaN where a figure is undefined, so an alert comparing it stays quiet).
pub fn export(report: &QualityReport) {
    for row in &report.rows {
        let labels = [
            ("model", row.model.clone()),
            ("version", row.version.clone()),
            ("tenant", row.tenant.clone()),
            ("window", row.window.to_owned()),
        ];
        #[allow(clippy::cast_precision_loss)]
        let values = [
            ("streamscore_quality_predictions", Some(row.predictions as f64)),
            ("streamscore_quality_labeled", Some(row.figures.labeled as f64)),
            ("streamscore_quality_labeled_ratio", row.labeled_share),
            ("streamscore_quality_auc", row.figures.auc),
            ("streamscore_quality_log_loss", row.figures.log_loss),
            ("streamscore_quality_brier_score", row.figures.brier),
            ("streamscore_quality_precision", row.figures.precision),
            ("streamscore_quality_recall", row.figures.recall),
            ("streamscore_quality_f1", row.figures.f1),
            ("streamscore_quality_calibration_error", row.figures.ece),
        ];
        for (name, value) in values {
            set(name, &labels, value);
        }
        for (percentile, value) in [("50", row.figures.delay_p50_seconds), ("99", row.figures.delay_p99_seconds)] {
            metrics::gauge!(
                "streamscore_quality_label_delay_seconds",
                "model" => row.model.clone(),
                "version" => row.version.clone(),
                "tenant" => row.tenant.clone(),
                "window" => row.window,
                "percentile" => percentile,
            )
            .set(value.unwrap_or(f64::NAN));
        }
    }
}

fn set(name: &'static str, labels: &[(&'static str, String); 4], value: Option<f64>) {
    let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect();
    let value = value.unwrap_or(f64::NAN);
    // One call per name so tests/metrics.rs finds each in the sources.
    match name {
        "streamscore_quality_predictions" => metrics::gauge!("streamscore_quality_predictions", labels).set(value),
        "streamscore_quality_labeled" => metrics::gauge!("streamscore_quality_labeled", labels).set(value),
        "streamscore_quality_labeled_ratio" => metrics::gauge!("streamscore_quality_labeled_ratio", labels).set(value),
        "streamscore_quality_auc" => metrics::gauge!("streamscore_quality_auc", labels).set(value),
        "streamscore_quality_log_loss" => metrics::gauge!("streamscore_quality_log_loss", labels).set(value),
        "streamscore_quality_brier_score" => metrics::gauge!("streamscore_quality_brier_score", labels).set(value),
        "streamscore_quality_precision" => metrics::gauge!("streamscore_quality_precision", labels).set(value),
        "streamscore_quality_recall" => metrics::gauge!("streamscore_quality_recall", labels).set(value),
        "streamscore_quality_f1" => metrics::gauge!("streamscore_quality_f1", labels).set(value),
        "streamscore_quality_calibration_error" => {
            metrics::gauge!("streamscore_quality_calibration_error", labels).set(value);
        }
        _ => {}
    }
}
