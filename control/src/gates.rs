//! The gates a rollout step must hold, and their thresholds (the policy's `[rollout_gates]`,
//! with safe defaults).

use serde::Deserialize;

/// Thresholds of the rollout gates. Every field has a default; a policy may set any of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateThresholds {
    /// Most candidate outcomes that may be `FAILED` (`MODEL_ERROR`) or refused, as a share.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// Most the candidate's p99 latency may exceed the incumbent's, as a ratio.
    #[serde(default = "default_max_p99_ratio")]
    pub max_p99_ratio: f64,
    /// Most PSI between the candidate's and the incumbent's score distributions on the same
    /// traffic (10 equal-width bins over [0, 1]).
    #[serde(default = "default_max_score_psi")]
    pub max_score_psi: f64,
    /// Least share of shadowed requests on which the candidate's label agrees with the
    /// incumbent's.
    #[serde(default = "default_min_label_agreement")]
    pub min_label_agreement: f64,
    /// Whether a drift alert on the candidate (monitor.alerts) fails the step.
    #[serde(default = "default_fail_on_drift")]
    pub fail_on_drift: bool,
    /// Whether the candidate judged `QUALITY_DEGRADED` by the monitor's quality join (its
    /// labels against the quality policy) fails the step.
    #[serde(default = "default_fail_on_quality")]
    pub fail_on_quality: bool,
}

fn default_max_error_rate() -> f64 {
    0.01
}
fn default_max_p99_ratio() -> f64 {
    2.0
}
fn default_max_score_psi() -> f64 {
    0.25
}
fn default_min_label_agreement() -> f64 {
    0.95
}
fn default_fail_on_drift() -> bool {
    true
}
fn default_fail_on_quality() -> bool {
    true
}

impl Default for GateThresholds {
    fn default() -> Self {
        Self {
            max_error_rate: default_max_error_rate(),
            max_p99_ratio: default_max_p99_ratio(),
            max_score_psi: default_max_score_psi(),
            min_label_agreement: default_min_label_agreement(),
            fail_on_drift: default_fail_on_drift(),
            fail_on_quality: default_fail_on_quality(),
        }
    }
}

// Thresholds are compared as configuration (a policy reload); `problem` refuses NaN.
impl Eq for GateThresholds {}

impl GateThresholds {
    /// Why these thresholds cannot be used, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let share =
            |name: &str, v: f64| (!(0.0..=1.0).contains(&v)).then(|| format!("{name} = {v} is not a share in 0..=1"));
        share("max_error_rate", self.max_error_rate)
            .or_else(|| share("min_label_agreement", self.min_label_agreement))
            .or_else(|| {
                (!(self.max_p99_ratio >= 1.0)).then(|| format!("max_p99_ratio = {} is below 1", self.max_p99_ratio))
            })
            .or_else(|| {
                (!(self.max_score_psi >= 0.0)).then(|| format!("max_score_psi = {} is negative", self.max_score_psi))
            })
    }
}

/// What a step has seen of its rollout's two versions, outcome by outcome.
#[derive(Debug, Clone, Default)]
pub struct StepFigures {
    pub incumbent: VersionFigures,
    pub candidate: VersionFigures,
    /// Shadowed requests whose labels from both versions were seen, and how many agreed.
    pub compared: u64,
    pub agreed: u64,
    /// Labels of one version waiting for the other's, by request id (bounded).
    pending: std::collections::HashMap<String, (Version, String)>,
    /// Drift alerts on the candidate raised during the step (feature names).
    pub drift: Vec<String>,
    /// Why the candidate is `QUALITY_DEGRADED` (ground truth joined by the monitor), if it is.
    pub quality: Option<String>,
}

/// Which side of the rollout an outcome is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Incumbent,
    Candidate,
}

/// One version's outcomes in a step.
#[derive(Debug, Clone, Default)]
pub struct VersionFigures {
    pub outcomes: u64,
    /// `FAILED` (`MODEL_ERROR`), or rejected because the version could not run
    /// (`MODEL_REFUSED`, `MODEL_NOT_LOADED`).
    pub errors: u64,
    /// Request created → outcome written, µs.
    latencies: Vec<i64>,
    /// Scores in 10 equal-width bins over [0, 1].
    pub score_bins: [u64; 10],
}

impl VersionFigures {
    fn record(&mut self, outcome: &streamscore_contracts::PredictionOutcome) {
        use streamscore_contracts::OutcomeStatus;
        self.outcomes += 1;
        let error = match outcome.status {
            OutcomeStatus::Failed => true,
            OutcomeStatus::Rejected => {
                matches!(outcome.reason.as_deref(), Some("MODEL_ERROR" | "MODEL_REFUSED" | "MODEL_NOT_LOADED"))
            }
            OutcomeStatus::Scored => false,
        };
        if error {
            self.errors += 1;
        }
        if let Some(score) = outcome.score.filter(|s| s.is_finite()) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 0..=9
            let bin = ((score.clamp(0.0, 1.0) * 10.0) as usize).min(9);
            self.score_bins[bin] += 1;
        }
        if self.latencies.len() < MAX_LATENCIES {
            self.latencies.push((outcome.lineage.written_at - outcome.request_created_at).max(0));
        }
    }

    /// The share of outcomes that were errors.
    #[allow(clippy::cast_precision_loss)]
    pub fn error_rate(&self) -> f64 {
        if self.outcomes == 0 {
            0.0
        } else {
            self.errors as f64 / self.outcomes as f64
        }
    }

    /// p99 of request created → outcome written, µs (0 without outcomes).
    pub fn p99_us(&self) -> i64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0;
        }
        let rank = (sorted.len() * 99).div_ceil(100).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// Latencies kept per version and step (enough for a p99; the rest are still counted).
const MAX_LATENCIES: usize = 100_000;
/// Labels waiting for their pair, at most.
const MAX_PENDING: usize = 200_000;

/// A gate's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every gate holds, with enough samples and time: the next step.
    Pass,
    /// Not enough samples or time yet to pass; nothing failed.
    Wait,
    /// A gate failed: roll back, for this reason.
    Fail(String),
}

impl StepFigures {
    /// Counts `outcome` if it belongs to `rollout`'s two versions and was written during its
    /// step.
    pub fn record(
        &mut self,
        rollout: &streamscore_contracts::Rollout,
        outcome: &streamscore_contracts::PredictionOutcome,
    ) {
        if outcome.model != rollout.model || outcome.lineage.written_at < rollout.step_started_at {
            return;
        }
        let Some(version) = outcome.model_version.as_deref() else { return };
        let side = if rollout.candidate.as_deref() == Some(version) {
            Version::Candidate
        } else if version == rollout.incumbent {
            Version::Incumbent
        } else {
            return;
        };
        match side {
            Version::Incumbent => self.incumbent.record(outcome),
            Version::Candidate => self.candidate.record(outcome),
        }
        // Label agreement on the same request: a primary and its shadow.
        if let (Some(id), Some(label)) = (outcome.lineage.request_id.as_deref(), outcome.label.as_deref()) {
            match self.pending.remove(id) {
                Some((other, other_label)) if other != side => {
                    self.compared += 1;
                    if other_label == label {
                        self.agreed += 1;
                    }
                }
                Some(same) => {
                    self.pending.insert(id.to_owned(), same);
                }
                None if self.pending.len() < MAX_PENDING => {
                    self.pending.insert(id.to_owned(), (side, label.to_owned()));
                }
                None => {}
            }
        }
    }

    /// A drift alert on `version` of `rollout`'s model raised during its step.
    pub fn record_drift(
        &mut self,
        rollout: &streamscore_contracts::Rollout,
        alert: &streamscore_contracts::DriftAlert,
    ) {
        if alert.model == rollout.model
            && rollout.candidate.as_deref() == Some(alert.model_version.as_str())
            && alert.detected_at >= rollout.step_started_at
        {
            self.drift.push(alert.feature.clone());
        }
    }

    /// PSI of the candidate's scores against the incumbent's (0 without both).
    pub fn score_psi(&self) -> f64 {
        let incumbent: u64 = self.incumbent.score_bins.iter().sum();
        if incumbent == 0 || self.candidate.score_bins.iter().sum::<u64>() == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let reference: Vec<f64> = self.incumbent.score_bins.iter().map(|&c| c as f64 / incumbent as f64).collect();
        streamscore_contracts::drift_stats::psi(&reference, &self.candidate.score_bins)
    }

    /// What PSI between two samples of one distribution comes to by chance alone, about:
    /// (bins - 1) × (1/n₁ + 1/n₂) (PSI is twice the KL-symmetrised divergence, whose sampling
    /// noise is χ²-distributed with bins - 1 degrees of freedom). Infinite without both.
    #[allow(clippy::cast_precision_loss)]
    pub fn psi_noise(&self) -> f64 {
        let incumbent: u64 = self.incumbent.score_bins.iter().sum();
        let candidate: u64 = self.candidate.score_bins.iter().sum();
        if incumbent == 0 || candidate == 0 {
            return f64::INFINITY;
        }
        9.0 * (1.0 / incumbent as f64 + 1.0 / candidate as f64)
    }

    /// Whether the score PSI says something: both versions have scores enough that chance
    /// alone stays under a quarter of the threshold (about 290 scores each for 0.25). Before
    /// that a small step's PSI is noise (a good candidate read 0.28 on 100 against 48).
    pub fn psi_judgeable(&self, t: &GateThresholds) -> bool {
        self.psi_noise() <= t.max_score_psi / 4.0
    }

    /// Whether both versions have latencies enough for a p99 that is not their maximum.
    fn p99_judgeable(&self) -> bool {
        self.candidate.latencies.len() >= 100 && self.incumbent.latencies.len() >= 100
    }

    /// The share of compared labels that agree (1 without any).
    #[allow(clippy::cast_precision_loss)]
    pub fn agreement(&self) -> f64 {
        if self.compared == 0 {
            1.0
        } else {
            self.agreed as f64 / self.compared as f64
        }
    }

    /// Each gate's figure beside its threshold, for the audit entry and `rollout status`.
    pub fn figures(&self, thresholds: &GateThresholds) -> std::collections::HashMap<String, String> {
        let ratio = self.p99_ratio();
        std::collections::HashMap::from([
            ("candidate_outcomes".to_owned(), self.candidate.outcomes.to_string()),
            ("incumbent_outcomes".to_owned(), self.incumbent.outcomes.to_string()),
            (
                "error_rate".to_owned(),
                format!("{:.4} (max {})", self.candidate.error_rate(), thresholds.max_error_rate),
            ),
            (
                "p99_ms".to_owned(),
                format!(
                    "candidate {:.1}, incumbent {:.1}, ratio {:.2} (max {})",
                    self.candidate.p99_us() as f64 / 1000.0,
                    self.incumbent.p99_us() as f64 / 1000.0,
                    ratio,
                    thresholds.max_p99_ratio
                ),
            ),
            ("score_psi".to_owned(), format!("{:.4} (max {})", self.score_psi(), thresholds.max_score_psi)),
            (
                "label_agreement".to_owned(),
                format!("{:.4} of {} (min {})", self.agreement(), self.compared, thresholds.min_label_agreement),
            ),
            ("drift_alerts".to_owned(), if self.drift.is_empty() { "none".to_owned() } else { self.drift.join(",") }),
            ("quality".to_owned(), self.quality.clone().unwrap_or_else(|| "not degraded".to_owned())),
        ])
    }

    #[allow(clippy::cast_precision_loss)]
    fn p99_ratio(&self) -> f64 {
        let (c, i) = (self.candidate.p99_us(), self.incumbent.p99_us());
        if c == 0 || i == 0 {
            1.0
        } else {
            c as f64 / i as f64
        }
    }

    /// The verdict on `rollout`'s step at `now` (µs): a gate fails once the candidate has
    /// enough outcomes to judge it (a tenth of the step's samples, at least 20); the step
    /// passes once it has all its samples and its time and every gate holds, the score PSI
    /// on samples that can tell (while the incumbent still answers some of the traffic).
    pub fn verdict(&self, rollout: &streamscore_contracts::Rollout, thresholds: &GateThresholds, now: i64) -> Verdict {
        let samples = u64::try_from(rollout.min_samples.max(1)).unwrap_or(1);
        let judged = self.candidate.outcomes >= (samples / 10).max(20).min(samples);
        if judged {
            if let Some(reason) = self.failure(thresholds) {
                return Verdict::Fail(reason);
            }
        }
        let enough_time = now - rollout.step_started_at >= rollout.step_secs.saturating_mul(1_000_000);
        let incumbent_answers = rollout.status == streamscore_contracts::RolloutStatus::Shadow
            || rollout.split.iter().any(|share| share.version == rollout.incumbent && share.basis_points > 0);
        let psi_told = !incumbent_answers || self.psi_judgeable(thresholds);
        if self.candidate.outcomes >= samples && enough_time && psi_told {
            match self.failure(thresholds) {
                Some(reason) => Verdict::Fail(reason),
                None => Verdict::Pass,
            }
        } else {
            Verdict::Wait
        }
    }

    fn failure(&self, t: &GateThresholds) -> Option<String> {
        let error_rate = self.candidate.error_rate();
        if error_rate > t.max_error_rate {
            return Some(format!("candidate error rate {error_rate:.4} is over {}", t.max_error_rate));
        }
        let ratio = self.p99_ratio();
        if self.p99_judgeable() && ratio > t.max_p99_ratio {
            return Some(format!(
                "candidate p99 latency is {ratio:.2} times the incumbent's (max {})",
                t.max_p99_ratio
            ));
        }
        let psi = self.score_psi();
        if self.psi_judgeable(t) && psi > t.max_score_psi {
            return Some(format!(
                "candidate scores diverge from the incumbent's: PSI {psi:.4} over {}",
                t.max_score_psi
            ));
        }
        if self.compared >= 20 && self.agreement() < t.min_label_agreement {
            return Some(format!(
                "candidate labels agree with the incumbent's on {:.4} of {} shadowed requests (min {})",
                self.agreement(),
                self.compared,
                t.min_label_agreement
            ));
        }
        if t.fail_on_drift && !self.drift.is_empty() {
            return Some(format!("drift alerts on the candidate: {}", self.drift.join(", ")));
        }
        if let Some(why) = self.quality.as_ref().filter(|_| t.fail_on_quality) {
            return Some(format!("the candidate is QUALITY_DEGRADED: {why}"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn figures(incumbent: &[u64; 10], candidate: &[u64; 10]) -> StepFigures {
        let mut f = StepFigures::default();
        f.incumbent.score_bins = *incumbent;
        f.incumbent.outcomes = incumbent.iter().sum();
        f.candidate.score_bins = *candidate;
        f.candidate.outcomes = candidate.iter().sum();
        f
    }

    /// A step's PSI is judged only once chance alone cannot make it cross the threshold: the
    /// same distribution on 48 and 100 scores reads well over 0.25 by chance and is not a
    /// failure; a real divergence on hundreds of scores is.
    #[test]
    fn psi_fails_a_step_only_on_samples_that_can_tell() {
        let t = GateThresholds::default();
        // 48 against 100 scores, drawn from one distribution but lumpy, as small samples are.
        let small = figures(&[30, 10, 3, 2, 1, 1, 1, 0, 0, 0], &[50, 30, 5, 3, 3, 2, 2, 2, 2, 1]);
        assert!(small.score_psi() > t.max_score_psi, "noise alone crosses the threshold: {}", small.score_psi());
        assert!(!small.psi_judgeable(&t));
        assert_eq!(small.failure(&t), None, "not judged on 48 scores");

        let diverging =
            figures(&[400, 200, 50, 20, 10, 5, 5, 5, 3, 2], &[100, 100, 100, 100, 100, 100, 50, 50, 50, 50]);
        assert!(diverging.psi_judgeable(&t));
        let reason = diverging.failure(&t).expect("a real divergence fails");
        assert!(reason.contains("PSI"), "{reason}");

        let same = figures(&[400, 200, 50, 20, 10, 5, 5, 5, 3, 2], &[402, 198, 51, 19, 10, 5, 5, 5, 3, 2]);
        assert!(same.psi_judgeable(&t));
        assert_eq!(same.failure(&t), None);
    }

    /// A candidate the monitor judged QUALITY_DEGRADED fails its step, unless the policy says not.
    #[test]
    fn a_degraded_candidate_fails_its_step() {
        let mut t = GateThresholds::default();
        let mut f = StepFigures::default();
        assert_eq!(f.failure(&t), None);
        f.quality = Some("auc 0.61 < 0.80".to_owned());
        assert!(f.failure(&t).expect("degraded").contains("QUALITY_DEGRADED: auc 0.61"));
        t.fail_on_quality = false;
        assert_eq!(f.failure(&t), None);
    }

    /// The p99 gate needs 100 latencies a side: below that a p99 is a maximum.
    #[test]
    fn the_p99_gate_waits_for_a_p99() {
        let t = GateThresholds::default();
        let mut f = StepFigures::default();
        f.incumbent.latencies = vec![1_000; 50];
        f.candidate.latencies = vec![5_000; 50];
        assert_eq!(f.failure(&t), None);
        f.incumbent.latencies = vec![1_000; 200];
        f.candidate.latencies = vec![5_000; 200];
        assert!(f.failure(&t).expect("5x the incumbent's p99").contains("p99"));
    }
}
