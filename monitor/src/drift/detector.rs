//! Drift detection for one model version: tumbling event-time windows, a sliding view of the
//! last N, four statistics per feature and for the score, alerts after K consecutive windows
//! over a threshold, and dataset-level drift when enough features drift.

use std::collections::{HashMap, VecDeque};

use streamscore_contracts::{DriftAlert, DriftMethod, Severity};

use super::stats;
use super::window::{Histogram, Window};

/// Warn and alert thresholds of one method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub warn: f64,
    pub alert: f64,
}

/// Thresholds per method. Defaults: PSI 0.10 / 0.25 (the usual rule of thumb), Jensen-Shannon
/// distance 0.10 / 0.20, binned KS 0.10 / 0.20, normalized Wasserstein 0.05 / 0.10, missing or
/// non-finite ratio 0.01 / 0.05.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub psi: Threshold,
    pub jensen_shannon: Threshold,
    pub kolmogorov_smirnov: Threshold,
    pub wasserstein: Threshold,
    pub missing_ratio: Threshold,
}

impl Thresholds {
    /// Applies overrides like `psi=0.1:0.25,js=0.1:0.2,ks=…,wasserstein=…,missing=…`
    /// (method=warn:alert), saying precisely what is wrong with a bad one.
    pub fn with_overrides(mut self, spec: &str) -> Result<Self, String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (method, values) =
                part.split_once('=').ok_or_else(|| format!("{part:?}: expected method=warn:alert"))?;
            let (warn, alert) = values.split_once(':').ok_or_else(|| format!("{part:?}: expected warn:alert"))?;
            let number =
                |text: &str| text.trim().parse::<f64>().map_err(|_| format!("{part:?}: {text:?} is not a number"));
            let threshold = Threshold { warn: number(warn)?, alert: number(alert)? };
            if !(threshold.warn > 0.0 && threshold.warn <= threshold.alert) {
                return Err(format!("{part:?}: need 0 < warn <= alert"));
            }
            match method.trim().to_ascii_lowercase().as_str() {
                "psi" => self.psi = threshold,
                "js" | "jensen_shannon" => self.jensen_shannon = threshold,
                "ks" | "kolmogorov_smirnov" => self.kolmogorov_smirnov = threshold,
                "wasserstein" => self.wasserstein = threshold,
                "missing" | "missing_ratio" => self.missing_ratio = threshold,
                other => return Err(format!("{part:?}: unknown method {other:?} (psi, js, ks, wasserstein, missing)")),
            }
        }
        Ok(self)
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            psi: Threshold { warn: 0.10, alert: 0.25 },
            jensen_shannon: Threshold { warn: 0.10, alert: 0.20 },
            kolmogorov_smirnov: Threshold { warn: 0.10, alert: 0.20 },
            wasserstein: Threshold { warn: 0.05, alert: 0.10 },
            missing_ratio: Threshold { warn: 0.01, alert: 0.05 },
        }
    }
}

/// How the detector windows and decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// Tumbling window length in event time.
    pub window_us: i64,
    /// Close a window after this many events even before its time is up (0 = time only).
    pub window_events: u64,
    /// Windows merged into the sliding view that is compared with the reference.
    pub sliding_windows: usize,
    /// Consecutive windows over a threshold before an alert.
    pub consecutive: u32,
    /// A sliding view with fewer events is not evaluated.
    pub min_events: u64,
    /// Dataset-level drift when at least this share of features drift.
    pub dataset_share: f64,
    pub thresholds: Thresholds,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            window_us: 10_000_000,
            window_events: 0,
            sliding_windows: 3,
            consecutive: 2,
            min_events: 500,
            dataset_share: 0.5,
            thresholds: Thresholds::default(),
        }
    }
}

/// Name used for the score in alerts.
pub const SCORE: &str = "__score__";
/// Name used for dataset-level drift in alerts.
pub const DATASET: &str = "__dataset__";

/// What a model version's metadata gives the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub model: String,
    pub version: String,
    pub feature_names: Vec<String>,
    pub feature_edges: Vec<Vec<f64>>,
    pub feature_shares: Vec<Vec<f64>>,
    pub score_edges: Vec<f64>,
    pub score_shares: Vec<f64>,
}

impl Reference {
    /// From a model version's metadata.
    pub fn from_metadata(meta: &streamscore_modelstore::ModelMetadata) -> Self {
        let (mut names, mut edges, mut shares) = (Vec::new(), Vec::new(), Vec::new());
        for f in &meta.features {
            let dist = meta.reference.features.get(&f.name);
            names.push(f.name.clone());
            edges.push(dist.map(|d| d.edges.clone()).unwrap_or_default());
            shares.push(dist.map_or_else(|| vec![1.0], |d| d.shares.clone()));
        }
        Self {
            model: meta.name.clone(),
            version: meta.version.clone(),
            feature_names: names,
            feature_edges: edges,
            feature_shares: shares,
            score_edges: meta.reference.score.edges.clone(),
            score_shares: meta.reference.score.shares.clone(),
        }
    }
}

/// The state of one (variable, method) pair across windows.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    windows: u32,
    /// Severity already alerted for this streak.
    alerted: Option<Severity>,
}

/// Status of the latest evaluation, for the live view and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Variables (features or the score) over a warn threshold in the latest view.
    pub drifting: Vec<String>,
    pub windows_closed: u64,
    /// Latest statistic per (variable, method).
    pub latest: Vec<(String, DriftMethod, f64)>,
}

/// Drift detector of one model version.
#[derive(Debug, Clone)]
pub struct Detector {
    reference: Reference,
    config: DetectorConfig,
    instance: String,
    current: Option<Window>,
    closed: VecDeque<Window>,
    streaks: HashMap<(usize, DriftMethod), Streak>,
    status: Status,
}

const METHODS: [DriftMethod; 4] =
    [DriftMethod::Psi, DriftMethod::JensenShannon, DriftMethod::KolmogorovSmirnov, DriftMethod::Wasserstein];

impl Detector {
    pub fn new(reference: Reference, config: DetectorConfig, instance: &str) -> Self {
        Self {
            reference,
            config,
            instance: instance.to_owned(),
            current: None,
            closed: VecDeque::new(),
            streaks: HashMap::new(),
            status: Status::default(),
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    fn window_at(&self, event_us: i64) -> Window {
        // Saturating: an event time near i64's ends (a hostile created_at that got through)
        // gives a window at the edge, never an overflow.
        let start = event_us.div_euclid(self.config.window_us).saturating_mul(self.config.window_us);
        let end = start.saturating_add(self.config.window_us);
        Window::new(start, end, &self.reference.feature_edges, &self.reference.score_edges)
    }

    /// Counts one prediction (its features by name and score) at event time `event_us`;
    /// returns the alerts of any window this closed. Late events count in the open window.
    pub fn observe<S: std::hash::BuildHasher>(
        &mut self,
        event_us: i64,
        features: &HashMap<String, f64, S>,
        score: Option<f64>,
        detected_at: i64,
    ) -> Vec<DriftAlert> {
        let mut alerts = Vec::new();
        let needs_new = match &self.current {
            None => true,
            Some(w) => event_us >= w.end_us || (self.config.window_events > 0 && w.events >= self.config.window_events),
        };
        if needs_new {
            if let Some(done) = self.current.take() {
                alerts = self.close(done, detected_at);
            }
            let mut next = self.window_at(event_us);
            if let Some(last) = self.closed.back() {
                next.start_us = next.start_us.max(last.end_us.min(event_us));
            }
            self.current = Some(next);
        }
        let edges = &self.reference.feature_edges;
        if let Some(window) = self.current.as_mut() {
            for (i, name) in self.reference.feature_names.iter().enumerate() {
                window.features[i].add(&edges[i], features.get(name).copied());
            }
            if let Some(score) = score {
                window.score.add(&self.reference.score_edges, Some(score));
            }
            window.events += 1;
        }
        alerts
    }

    /// Closes the open window now (end of stream, or a timer); returns its alerts.
    pub fn flush(&mut self, detected_at: i64) -> Vec<DriftAlert> {
        match self.current.take() {
            Some(window) => self.close(window, detected_at),
            None => Vec::new(),
        }
    }

    fn close(&mut self, window: Window, detected_at: i64) -> Vec<DriftAlert> {
        self.closed.push_back(window);
        while self.closed.len() > self.config.sliding_windows.max(1) {
            self.closed.pop_front();
        }
        self.status.windows_closed += 1;
        let mut view = self.closed[0].clone();
        for w in self.closed.iter().skip(1) {
            view.merge(w);
        }
        if view.events < self.config.min_events {
            return Vec::new();
        }
        let mut alerts = Vec::new();
        let mut drifting_features = 0;
        self.status.drifting.clear();
        self.status.latest.clear();
        let variables = self.reference.feature_names.len() + 1;
        for v in 0..variables {
            // Cloned (a few numbers) so the streak state can be updated while they are in use.
            let (name, histogram, shares, edges) = if v < self.reference.feature_names.len() {
                let r = &self.reference;
                (r.feature_names[v].clone(), &view.features[v], r.feature_shares[v].clone(), r.feature_edges[v].clone())
            } else {
                (SCORE.to_owned(), &view.score, self.reference.score_shares.clone(), self.reference.score_edges.clone())
            };
            let (shares, edges) = (&shares, &edges);
            if histogram.total() == 0 || shares.len() != histogram.counts.len() {
                continue;
            }
            let mut over = false;
            for method in METHODS {
                let (statistic, threshold) = match method {
                    DriftMethod::Psi => (stats::psi(shares, &histogram.counts), self.config.thresholds.psi),
                    DriftMethod::JensenShannon => {
                        (stats::jensen_shannon(shares, &histogram.counts), self.config.thresholds.jensen_shannon)
                    }
                    DriftMethod::KolmogorovSmirnov => (
                        stats::kolmogorov_smirnov(shares, &histogram.counts),
                        self.config.thresholds.kolmogorov_smirnov,
                    ),
                    _ => (stats::wasserstein(shares, &histogram.counts), self.config.thresholds.wasserstein),
                };
                self.status.latest.push((name.clone(), method, statistic));
                over |= statistic >= threshold.warn;
                alerts.extend(self.judge(
                    v,
                    method,
                    statistic,
                    threshold,
                    &name,
                    &view,
                    histogram,
                    shares,
                    edges,
                    detected_at,
                ));
            }
            #[allow(clippy::cast_precision_loss)]
            let missing = (histogram.missing + histogram.non_finite) as f64 / histogram.total() as f64;
            alerts.extend(self.judge(
                v,
                DriftMethod::MissingRatio,
                missing,
                self.config.thresholds.missing_ratio,
                &name,
                &view,
                histogram,
                shares,
                edges,
                detected_at,
            ));
            if over {
                self.status.drifting.push(name);
                if v < self.reference.feature_names.len() {
                    drifting_features += 1;
                }
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let share = f64::from(drifting_features) / self.reference.feature_names.len().max(1) as f64;
        let dataset = Threshold { warn: self.config.dataset_share, alert: self.config.dataset_share };
        let empty = Histogram::default();
        alerts.extend(self.judge(
            usize::MAX,
            DriftMethod::Other,
            share,
            dataset,
            DATASET,
            &view,
            &empty,
            &[],
            &[],
            detected_at,
        ));
        alerts
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        variable: usize,
        method: DriftMethod,
        statistic: f64,
        threshold: Threshold,
        name: &str,
        view: &Window,
        histogram: &Histogram,
        shares: &[f64],
        edges: &[f64],
        detected_at: i64,
    ) -> Option<DriftAlert> {
        let streak = self.streaks.entry((variable, method)).or_default();
        let level = if statistic >= threshold.alert {
            Some(Severity::Alert)
        } else if statistic >= threshold.warn {
            Some(Severity::Warn)
        } else {
            None
        };
        let severity = match level {
            None => {
                let was = streak.alerted.take();
                streak.windows = 0;
                was.map(|_| Severity::Resolved)?
            }
            Some(level) => {
                streak.windows += 1;
                if streak.windows < self.config.consecutive {
                    return None;
                }
                let escalates = match (streak.alerted, level) {
                    (None, _) | (Some(Severity::Warn), Severity::Alert) => true,
                    _ => false,
                };
                if !escalates {
                    return None;
                }
                streak.alerted = Some(level);
                level
            }
        };
        let consecutive = i32::try_from(streak.windows).unwrap_or(i32::MAX);
        let alert_id = uuid::Uuid::new_v5(
            &streamscore_contracts::lineage::EVENT_ID_NAMESPACE,
            format!(
                "drift/{}/{}/{name}/{method:?}/{}/{severity:?}",
                self.reference.model, self.reference.version, view.end_us
            )
            .as_bytes(),
        );
        Some(DriftAlert {
            alert_id: alert_id.to_string(),
            model: self.reference.model.clone(),
            model_version: self.reference.version.clone(),
            feature: name.to_owned(),
            method,
            statistic,
            warn_threshold: threshold.warn,
            alert_threshold: threshold.alert,
            severity,
            window_start: view.start_us,
            window_end: view.end_us,
            bin_edges: edges.to_vec(),
            current_counts: histogram.counts.iter().map(|&c| i64::try_from(c).unwrap_or(i64::MAX)).collect(),
            reference_shares: shares.to_vec(),
            consecutive_windows: consecutive,
            detected_at,
            stage: "monitor".to_owned(),
            instance: self.instance.clone(),
        })
    }
}
