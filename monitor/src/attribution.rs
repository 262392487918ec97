//! What drives each model version, watched next to its input drift: the mean |φ| (Shapley
//! value, `streamscore_infer::explain`) of every feature over a sample of scored predictions,
//! as the gauge `streamscore_attribution_mean_abs{model,version,feature}`.
//!
//! - **Sample**: a primary scored prediction is taken when a hash of its event id falls below
//!   the rate (`--attribution-sample`, 0 = off), so every monitor, and a redelivered record,
//!   samples the same predictions.
//! - **Explanation**: the one the outcome carries (its request asked for it), else computed
//!   here from the features the outcome carries, by the version's model on tract, on the
//!   blocking pool, one at a time: while one runs, further samples are skipped (counted), so
//!   the monitor never falls behind its topic for it. An outcome whose version this store does
//!   not have (or whose file's sha256 differs) or whose version has no baseline is skipped.
//! - **Windows**: every `window` explanations of a version, the gauges are set to that window's
//!   means; a shift in what drives the model moves them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use streamscore_contracts::{Explanation, OutcomeStatus, PredictionOutcome};
use streamscore_infer::{Backend, Scorer, TractBackend};
use streamscore_modelstore::{ModelStore, ModelVersion};
use streamscore_telemetry::catalog::ATTRIBUTION_MEAN_ABS;

/// How predictions are sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttributionConfig {
    /// Share of scored predictions explained, 0 to 1 (0: off).
    pub sample_rate: f64,
    /// Explanations per window of a version's means.
    pub window: usize,
}

impl Default for AttributionConfig {
    /// One prediction in a thousand, windows of 50: at the main job's 2,000 requests/s, two
    /// explanations a second (11 to 27 ms each on tract here: 2 to 6% of a core) and a window
    /// every 25 s.
    fn default() -> Self {
        Self { sample_rate: 0.001, window: 50 }
    }
}

/// The running sums of a version's current window, and its last closed window's means.
#[derive(Debug, Default)]
struct Window {
    sums: Vec<f64>,
    count: usize,
    latest: Option<Vec<(String, f64)>>,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<(String, String), Window>,
    scorers: HashMap<String, Arc<dyn Scorer>>,
}

/// Samples predictions and keeps each version's windows of mean |φ|.
#[derive(Debug)]
pub struct Sampler {
    config: AttributionConfig,
    store: ModelStore,
    state: Arc<Mutex<State>>,
    busy: Arc<AtomicBool>,
}

impl Sampler {
    pub fn new(config: AttributionConfig, store: ModelStore) -> Self {
        Self { config, store, state: Arc::default(), busy: Arc::default() }
    }

    /// Whether the prediction with this event id is in the sample (a hash of the id against the
    /// rate: the same answer everywhere, every time).
    pub fn sampled(&self, event_id: &str) -> bool {
        if self.config.sample_rate <= 0.0 {
            return false;
        }
        // FNV-1a of the id, then splitmix64's finalizer to spread it over the high bits:
        // fixed across processes, uniform enough for a share.
        let mut hash =
            event_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^= hash >> 31;
        #[allow(clippy::cast_precision_loss)]
        let share = (hash >> 11) as f64 / (1_u64 << 53) as f64;
        share < self.config.sample_rate
    }

    /// Offers a prediction: sampled, it adds its explanation (carried, or computed off the
    /// reactor) to its version's window.
    pub fn offer(&self, outcome: &PredictionOutcome) {
        if outcome.status != OutcomeStatus::Scored || outcome.shadow || !self.sampled(&outcome.lineage.event_id) {
            return;
        }
        let Some(version) = outcome.model_version.as_deref().and_then(|v| self.store.get(&outcome.model, v)) else {
            return count("skipped");
        };
        if outcome.model_sha256.as_deref().is_some_and(|sha| !sha.eq_ignore_ascii_case(&version.meta.sha256)) {
            return count("skipped");
        }
        if let Some(explanation) = &outcome.explanation {
            count("carried");
            return add(&self.state, &version, explanation, self.config.window);
        }
        let Some(row) = version
            .meta
            .features
            .iter()
            .map(|f| outcome.features.get(&f.name).map(|v| *v as f32))
            .collect::<Option<Vec<f32>>>()
        else {
            return count("skipped");
        };
        if version.meta.baseline.is_none() || self.busy.swap(true, Ordering::AcqRel) {
            return count("skipped");
        }
        let (state, busy, window) = (Arc::clone(&self.state), Arc::clone(&self.busy), self.config.window);
        tokio::task::spawn_blocking(move || {
            let explained = scorer(&state, &version).and_then(|scorer| {
                streamscore_infer::explain::explain_row(scorer.as_ref(), &version, &row).map_err(|e| e.to_string())
            });
            match explained {
                Ok(explanation) => {
                    count("explained");
                    add(&state, &version, &explanation, window);
                }
                Err(e) => {
                    tracing::warn!(model = version.key(), error = %e, "a sampled prediction could not be explained");
                    count("skipped");
                }
            }
            busy.store(false, Ordering::Release);
        });
    }

    /// The last closed window's mean |φ| per feature of `model/version`, in input order.
    pub fn latest(&self, model: &str, version: &str) -> Option<Vec<(String, f64)>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.windows.get(&(model.to_owned(), version.to_owned()))?.latest.clone()
    }

    /// Whether an explanation is being computed now.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("streamscore_monitor_attribution_samples_total", "outcome" => outcome).increment(1);
}

/// The version's tract scorer, loaded once.
fn scorer(state: &Mutex<State>, version: &ModelVersion) -> Result<Arc<dyn Scorer>, String> {
    let key = version.key();
    if let Some(scorer) = state.lock().unwrap_or_else(PoisonError::into_inner).scorers.get(&key) {
        return Ok(Arc::clone(scorer));
    }
    let scorer = TractBackend.load(version).map_err(|e| e.to_string())?;
    state.lock().unwrap_or_else(PoisonError::into_inner).scorers.insert(key, Arc::clone(&scorer));
    Ok(scorer)
}

/// Adds an explanation to its version's window; a full window sets the gauges.
fn add(state: &Mutex<State>, version: &ModelVersion, explanation: &Explanation, window: usize) {
    let names: Vec<&str> = version.meta.features.iter().map(|f| f.name.as_str()).collect();
    if explanation.attributions.len() != names.len()
        || explanation.attributions.iter().zip(&names).any(|(a, n)| a.feature != *n)
    {
        return count("skipped");
    }
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let key = (version.meta.name.clone(), version.meta.version.clone());
    let w = state.windows.entry(key.clone()).or_default();
    w.sums.resize(names.len(), 0.0);
    for (sum, a) in w.sums.iter_mut().zip(&explanation.attributions) {
        *sum += a.attribution.abs();
    }
    w.count += 1;
    if w.count < window.max(1) {
        return;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = w.count as f64;
    let means: Vec<(String, f64)> =
        names.iter().zip(&w.sums).map(|(name, sum)| ((*name).to_owned(), sum / n)).collect();
    for (feature, mean) in &means {
        metrics::gauge!(
            ATTRIBUTION_MEAN_ABS,
            "model" => key.0.clone(),
            "version" => key.1.clone(),
            "feature" => feature.clone(),
        )
        .set(*mean);
    }
    w.sums.iter_mut().for_each(|s| *s = 0.0);
    w.count = 0;
    w.latest = Some(means);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use streamscore_contracts::{Lineage, SourceOffset, Stage};

    use super::*;

    fn store() -> ModelStore {
        ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).expect("the shipped models")
    }

    fn outcome(i: i64, version: &ModelVersion) -> PredictionOutcome {
        let source = SourceOffset::new("inference.requests", 0, i);
        let lineage = Lineage::derive(source, Stage::Infer, "prediction", "t", None, None);
        let mut generator = streamscore_synth::Generator::new(u64::try_from(i).unwrap());
        let request = streamscore_contracts::InferenceRequest {
            request_id: format!("r-{i}"),
            tenant: "acme".to_owned(),
            model: "fraud".to_owned(),
            model_version: Some(version.meta.version.clone()),
            features: generator.next(0).by_name(),
            created_at: 0,
            reply_to: None,
            attributes: HashMap::new(),
        };
        let mut outcome = PredictionOutcome::new(lineage, &request, OutcomeStatus::Scored);
        // The features as the model saw them (f32), as infer writes them.
        outcome.features = request.features.iter().map(|(k, v)| (k.clone(), f64::from(*v as f32))).collect();
        outcome.model_sha256 = Some(version.meta.sha256.clone());
        outcome
    }

    #[test]
    fn sampling_is_a_fixed_share_of_event_ids() {
        let sampler = Sampler::new(AttributionConfig { sample_rate: 0.25, window: 1 }, store());
        let ids: Vec<String> = (0..4000).map(|i| format!("e-{i}")).collect();
        let picked: Vec<bool> = ids.iter().map(|id| sampler.sampled(id)).collect();
        let share = picked.iter().filter(|p| **p).count() as f64 / 4000.0;
        assert!((0.22..0.28).contains(&share), "{share}");
        assert_eq!(picked, ids.iter().map(|id| sampler.sampled(id)).collect::<Vec<_>>());
        let off = Sampler::new(AttributionConfig { sample_rate: 0.0, window: 1 }, store());
        assert!(ids.iter().all(|id| !off.sampled(id)));
    }

    /// Every sampled prediction of a window is explained here (one at a time, off the reactor)
    /// and the window's means are each feature's mean |φ| over those predictions.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_window_of_explanations_gives_each_features_mean_absolute_attribution() {
        let store = store();
        let version = store.get("fraud", "2").expect("fraud/2");
        let sampler = Sampler::new(AttributionConfig { sample_rate: 1.0, window: 4 }, store.clone());
        let scorer = TractBackend.load(&version).unwrap();
        let mut expected = vec![0.0_f64; version.meta.features.len()];
        for i in 0..4 {
            let outcome = outcome(i, &version);
            while sampler.busy() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            sampler.offer(&outcome);
            let row: Vec<f32> = version.meta.features.iter().map(|f| outcome.features[&f.name] as f32).collect();
            let e = streamscore_infer::explain::explain_row(scorer.as_ref(), &version, &row).unwrap();
            for (sum, a) in expected.iter_mut().zip(&e.attributions) {
                *sum += a.attribution.abs() / 4.0;
            }
        }
        while sampler.busy() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let latest = sampler.latest("fraud", "2").expect("a closed window");
        assert_eq!(latest.len(), expected.len());
        for ((name, mean), want) in latest.iter().zip(&expected) {
            assert!((mean - want).abs() < 1e-12, "{name}: {mean} vs {want}");
        }
        assert!(latest.iter().any(|(_, m)| *m > 0.0));
        assert!(sampler.latest("fraud", "1").is_none(), "no window of another version");
    }

    /// A carried explanation is used as is; a shadow, a rejection, an unknown version or a
    /// file with another sha256 are not sampled.
    #[tokio::test(flavor = "multi_thread")]
    async fn carried_explanations_count_and_others_are_left_out() {
        let store = store();
        let version = store.get("fraud", "1").expect("fraud/1");
        let sampler = Sampler::new(AttributionConfig { sample_rate: 1.0, window: 1 }, store.clone());
        let attributions: Vec<streamscore_contracts::Attribution> = version
            .meta
            .features
            .iter()
            .enumerate()
            .map(|(j, f)| streamscore_contracts::Attribution {
                feature: f.name.clone(),
                value: 0.0,
                baseline: 0.0,
                attribution: if j == 0 { -0.5 } else { 0.0 },
            })
            .collect();
        let mut carried = outcome(1, &version);
        carried.explanation = Some(Explanation {
            method: "exact_shapley".to_owned(),
            baseline_score: 0.5,
            score: 0.0,
            top: attributions[..1].to_vec(),
            attributions,
            permutations: None,
            error_bound: None,
        });
        let mut others = Vec::new();
        for change in 0..4 {
            let mut o = outcome(2, &version);
            match change {
                0 => o.shadow = true,
                1 => o.status = OutcomeStatus::Rejected,
                2 => o.model_version = Some("9".to_owned()),
                _ => o.model_sha256 = Some("00".repeat(32)),
            }
            others.push(o);
        }
        for o in &others {
            sampler.offer(o);
        }
        assert!(!sampler.busy() && sampler.latest("fraud", "1").is_none(), "none of them explained");
        sampler.offer(&carried);
        let latest = sampler.latest("fraud", "1").expect("the carried explanation closed a window of 1");
        assert_eq!(latest[0].1, 0.5);
        assert!(latest[1..].iter().all(|(_, m)| *m == 0.0));
    }
}
