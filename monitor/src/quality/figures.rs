//! Quality figures of labeled predictions: ROC AUC, log loss, Brier score, precision, recall
//! and F1 at the version's threshold, expected calibration error, label delay.
//!
//! The definitions are scikit-learn's, so an analyst's notebook and the monitor agree to the
//! last digits (tests compare them within 1e-9): `roc_auc_score` (the trapezoidal ROC, ties
//! counted half), `log_loss` (probabilities clipped to `[eps, 1 - eps]`, `eps` the double's
//! machine epsilon), `brier_score_loss`, `precision_score`, `recall_score`, `f1_score`. The
//! calibration error uses 10 equal-width bins of the score (`[0, 0.1)`, ..., `[0.9, 1]`),
//! weighted by their share of the labels. Delay percentiles interpolate linearly between
//! ranks (numpy's default).

use serde::Serialize;

/// One labeled prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// The model's score, a probability of the positive label.
    pub score: f64,
    /// Whether the score was at or above the version's threshold; `None` when the threshold
    /// is unknown (a version no longer in the model store).
    pub predicted: Option<bool>,
    /// The label: 1.0 positive, 0.0 negative.
    pub actual: f64,
    /// From the request's creation to the label's observation, µs.
    pub delay_us: i64,
}

/// The figures of a set of labeled predictions; `None` where a figure is undefined (AUC
/// with one class only, precision without a predicted positive, anything without labels).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub labeled: u64,
    pub positives: u64,
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub ece: Option<f64>,
    pub delay_p50_seconds: Option<f64>,
    pub delay_p99_seconds: Option<f64>,
}

/// Bins of the expected calibration error.
pub const ECE_BINS: usize = 10;

/// The figures of `pairs` (any order; sorted in place by score).
pub fn figures(pairs: &mut [Pair]) -> Figures {
    let labeled = pairs.len() as u64;
    if pairs.is_empty() {
        return Figures::default();
    }
    #[allow(clippy::cast_precision_loss)]
    let n = pairs.len() as f64;
    let positive = |p: &Pair| p.actual >= 0.5;
    let positives = pairs.iter().filter(|p| positive(p)).count() as u64;
    let log_loss = pairs.iter().map(|p| pair_log_loss(p.score, p.actual)).sum::<f64>() / n;
    let brier = pairs.iter().map(|p| (p.actual - p.score).powi(2)).sum::<f64>() / n;
    let (precision, recall, f1) = if pairs.iter().all(|p| p.predicted.is_some()) {
        let (mut tp, mut fp, mut fn_) = (0_u64, 0_u64, 0_u64);
        for p in pairs.iter() {
            match (p.predicted == Some(true), positive(p)) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                (false, false) => {}
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        (ratio(tp, tp + fp), ratio(tp, tp + fn_), ratio(2 * tp, 2 * tp + fp + fn_))
    } else {
        (None, None, None)
    };
    let ece = {
        let mut bins = [(0_u64, 0.0_f64, 0.0_f64); ECE_BINS];
        for p in pairs.iter() {
            let bin = &mut bins[ece_bin(p.score)];
            bin.0 += 1;
            bin.1 += p.score;
            bin.2 += p.actual;
        }
        // Each bin weighs its share of the labels: (n_b / n) · |mean actual - mean score|.
        bins.iter().filter(|b| b.0 > 0).map(|&(_, scores, actuals)| (actuals - scores).abs() / n).sum::<f64>()
    };
    let mut delays: Vec<i64> = pairs.iter().map(|p| p.delay_us).collect();
    delays.sort_unstable();
    pairs.sort_by(|a, b| a.score.total_cmp(&b.score));
    Figures {
        labeled,
        positives,
        auc: roc_auc(pairs),
        log_loss: Some(log_loss),
        brier: Some(brier),
        precision,
        recall,
        f1,
        ece: Some(ece),
        delay_p50_seconds: percentile(&delays, 0.5).map(|us| us / 1e6),
        delay_p99_seconds: percentile(&delays, 0.99).map(|us| us / 1e6),
    }
}

/// The bin of `score` in the calibration error: `[i/10, (i+1)/10)`, the last one closed.
pub fn ece_bin(score: f64) -> usize {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bin = (score.clamp(0.0, 1.0) * ECE_BINS as f64).floor() as usize;
    bin.min(ECE_BINS - 1)
}

/// One pair's log loss, with the score clipped as scikit-learn clips it.
pub fn pair_log_loss(score: f64, actual: f64) -> f64 {
    let eps = f64::EPSILON;
    let p = score.clamp(eps, 1.0 - eps);
    let q = 1.0 - p;
    -(xlogy(actual, p) + xlogy(1.0 - actual, q))
}

/// `x · ln(y)`, 0 where `x` is 0 (scipy's `xlogy`).
fn xlogy(x: f64, y: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x * y.ln()
    }
}

/// ROC AUC of pairs sorted by score: the chance a random positive scores above a random
/// negative, ties counted half (the trapezoidal ROC curve's area). `None` with one class.
fn roc_auc(sorted: &[Pair]) -> Option<f64> {
    let (mut pos_total, mut neg_total) = (0_u64, 0_u64);
    let mut area = 0.0_f64;
    let mut i = 0;
    while i < sorted.len() {
        let score = sorted[i].score;
        let (mut pos, mut neg) = (0_u64, 0_u64);
        while i < sorted.len() && sorted[i].score == score {
            if sorted[i].actual >= 0.5 {
                pos += 1;
            } else {
                neg += 1;
            }
            i += 1;
        }
        // Positives here beat every negative below, and tie with the ones here.
        #[allow(clippy::cast_precision_loss)]
        {
            area += pos as f64 * neg_total as f64 + 0.5 * pos as f64 * neg as f64;
        }
        pos_total += pos;
        neg_total += neg;
    }
    #[allow(clippy::cast_precision_loss)]
    (pos_total > 0 && neg_total > 0).then(|| area / (pos_total as f64 * neg_total as f64))
}

/// The `q` quantile of sorted values, linearly interpolated between ranks.
fn percentile(sorted: &[i64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    #[allow(clippy::cast_precision_loss)]
    let rank = q * last as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    #[allow(clippy::cast_precision_loss)]
    let (a, b) = (sorted[lo] as f64, sorted[hi.min(last)] as f64);
    Some(a + (b - a) * (rank - rank.floor()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn pair(score: f64, actual: f64) -> Pair {
        Pair { score, predicted: Some(score >= 0.5), actual, delay_us: 0 }
    }

    #[test]
    fn auc_counts_ties_half_and_needs_both_classes() {
        // sklearn: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        let mut pairs = vec![pair(0.1, 0.0), pair(0.4, 0.0), pair(0.35, 1.0), pair(0.8, 1.0)];
        assert_eq!(figures(&mut pairs).auc, Some(0.75));
        // All tied: 0.5.
        let mut tied = vec![pair(0.3, 0.0), pair(0.3, 1.0), pair(0.3, 1.0)];
        assert_eq!(figures(&mut tied).auc, Some(0.5));
        let mut one_class = vec![pair(0.3, 1.0), pair(0.9, 1.0)];
        assert_eq!(figures(&mut one_class).auc, None);
    }

    #[test]
    fn the_other_figures_match_their_definitions() {
        let mut pairs = vec![pair(0.9, 1.0), pair(0.6, 0.0), pair(0.2, 1.0), pair(0.05, 0.0)];
        let f = figures(&mut pairs);
        // tp 1 (0.9), fp 1 (0.6), fn 1 (0.2).
        assert_eq!((f.precision, f.recall, f.f1), (Some(0.5), Some(0.5), Some(0.5)));
        let brier = (0.01 + 0.36 + 0.64 + 0.0025) / 4.0;
        assert!((f.brier.unwrap() - brier).abs() < 1e-15);
        let log_loss = -(0.9_f64.ln() + 0.4_f64.ln() + 0.2_f64.ln() + 0.95_f64.ln()) / 4.0;
        assert!((f.log_loss.unwrap() - log_loss).abs() < 1e-15);
        // Bins 9, 6, 2, 0, one pair each: |1-0.9| + |0-0.6| + |1-0.2| + |0-0.05|, over 4.
        let ece = (0.1 + 0.6 + 0.8 + 0.05) / 4.0;
        assert!((f.ece.unwrap() - ece).abs() < 1e-15);
        assert_eq!((f.labeled, f.positives), (4, 2));
    }

    #[test]
    fn scores_of_zero_and_one_are_clipped_as_sklearn_clips_them() {
        let loss = pair_log_loss(1.0, 0.0);
        assert!(loss.is_finite() && (loss - -(f64::EPSILON.ln())).abs() < 1e-9, "{loss}");
        assert_eq!(pair_log_loss(1.0, 1.0), -((1.0 - f64::EPSILON).ln()));
    }

    #[test]
    fn delay_percentiles_interpolate_between_ranks() {
        let mut pairs: Vec<Pair> =
            (1..=5).map(|s| Pair { score: 0.5, predicted: None, actual: 1.0, delay_us: s * 1_000_000 }).collect();
        let f = figures(&mut pairs);
        assert_eq!(f.delay_p50_seconds, Some(3.0));
        assert!((f.delay_p99_seconds.unwrap() - 4.96).abs() < 1e-12);
        assert_eq!((f.precision, f.recall, f.f1), (None, None, None), "no threshold, no precision");
        assert_eq!(figures(&mut []), Figures::default());
    }
}
