//! Baseline Shapley values of one row.
//!
//! The value of a coalition `S` of features is the model's score of the row with the
//! request's values on `S` and the baseline's elsewhere, `f(x_S)`. Feature `i`'s attribution
//! is
//!
//! ```text
//! φ_i = Σ_{S ⊆ N \ {i}} |S|! (n - |S| - 1)! / n! · (f(x_{S ∪ {i}}) - f(x_S))
//! ```
//!
//! - **Exact** (n ≤ [`EXACT_MAX_FEATURES`]): all 2^n coalitions are scored, row `mask` holding
//!   the request's value of feature `j` when bit `j` of `mask` is set, in batches of
//!   [`CHUNK_ROWS`] rows (2^16 rows and 4 MB of input at 16 features).
//! - **Sampled** (n above): [`PERMUTATIONS`] permutations drawn with the fixed seed [`SEED`];
//!   each is a chain of n + 1 rows from the baseline to the request's row, adding one feature
//!   at a time, and a feature's attribution is the mean of its marginal contributions. Every
//!   chain telescopes, so efficiency holds exactly as for the exact method; the stated error
//!   bound is the largest 95% half-width, [`Z_95`] standard errors of a feature's mean.
//!
//! The same row, baseline and scorer always give the same bits: the rows, their batches and
//! every sum are in a fixed order.

use thiserror::Error;

use crate::backend::{BackendError, Scorer};

/// The most features explained exactly (2^16 = 65,536 coalition rows).
pub const EXACT_MAX_FEATURES: usize = 16;

/// Rows per call to the scorer. Fixed, so that a recomputation scores every row in the same
/// batch at the same position as the live explanation did.
pub const CHUNK_ROWS: usize = 8192;

/// Permutations sampled above [`EXACT_MAX_FEATURES`].
pub const PERMUTATIONS: usize = 1024;

/// The seed of the sampled permutations (the same for every explanation).
pub const SEED: u64 = 0x5EED_0028_5A4B_1E55;

/// The normal quantile of a two-sided 95% interval, for the sampled error bound.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// How the values were computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Every coalition scored.
    Exact,
    /// Sampled permutations; `error_bound`: the largest 95% half-width of an attribution.
    Sampled { permutations: usize, error_bound: f64 },
}

/// One row's attributions.
#[derive(Debug, Clone, PartialEq)]
pub struct Shapley {
    pub method: Method,
    /// The score of the baseline row.
    pub baseline_score: f64,
    /// The score of the request's row, in the explanation's own batches.
    pub score: f64,
    /// φ per feature, in the model's input order; they sum to `score - baseline_score`.
    pub attributions: Vec<f64>,
}

/// Why a row could not be explained.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ExplainError {
    #[error("the row has {row} values and the baseline {baseline}, but the model takes {features} features")]
    Shape { row: usize, baseline: usize, features: usize },
    #[error("{model} has no baseline in its metadata.json: explanations are relative to one (models/train.py writes the training means; retrain or add a `baseline` object)")]
    NoBaseline { model: String },
    #[error("a model with {0} features is too wide to explain")]
    TooWide(usize),
    #[error("explaining: {0}")]
    Backend(#[from] BackendError),
}

/// The attributions of `row` relative to `baseline`, scored by `scorer`.
pub fn shapley(scorer: &dyn Scorer, row: &[f32], baseline: &[f32]) -> Result<Shapley, ExplainError> {
    let n = scorer.features();
    if row.len() != n || baseline.len() != n || n == 0 {
        return Err(ExplainError::Shape { row: row.len(), baseline: baseline.len(), features: n });
    }
    if n <= EXACT_MAX_FEATURES {
        exact(scorer, row, baseline)
    } else {
        sampled(scorer, row, baseline, PERMUTATIONS, SEED)
    }
}

/// Scores `rows` rows, produced into a buffer by `fill(first, last, buffer)`, in batches of
/// [`CHUNK_ROWS`]; the scores in row order.
fn score_in_chunks(
    scorer: &dyn Scorer,
    rows: usize,
    mut fill: impl FnMut(usize, usize, &mut Vec<f32>),
) -> Result<Vec<f32>, ExplainError> {
    let n = scorer.features();
    let mut scores = Vec::with_capacity(rows);
    let mut input = Vec::with_capacity(CHUNK_ROWS.min(rows) * n);
    for start in (0..rows).step_by(CHUNK_ROWS) {
        let end = (start + CHUNK_ROWS).min(rows);
        input.clear();
        fill(start, end, &mut input);
        let batch = scorer.score(&input, end - start)?;
        if batch.len() != end - start {
            return Err(BackendError::Run { rows: end - start, reason: format!("{} scores", batch.len()) }.into());
        }
        scores.extend_from_slice(&batch);
    }
    Ok(scores)
}

/// `|S|! (n - |S| - 1)! / n!` for `|S|` = 0 .. n-1: `1 / (n · C(n-1, |S|))`.
fn weights(n: usize) -> Vec<f64> {
    let mut binomial = 1.0_f64; // C(n-1, s)
    let mut out = Vec::with_capacity(n);
    #[allow(clippy::cast_precision_loss)]
    for s in 0..n {
        out.push(1.0 / (n as f64 * binomial));
        binomial = binomial * (n - 1 - s) as f64 / (s + 1) as f64;
    }
    out
}

fn exact(scorer: &dyn Scorer, row: &[f32], baseline: &[f32]) -> Result<Shapley, ExplainError> {
    let n = row.len();
    let total = 1_usize << n;
    let scores = score_in_chunks(scorer, total, |start, end, input| {
        for mask in start..end {
            input.extend((0..n).map(|j| if (mask >> j) & 1 == 1 { row[j] } else { baseline[j] }));
        }
    })?;
    let weights = weights(n);
    let mut attributions = vec![0.0_f64; n];
    for (mask, &without) in scores.iter().enumerate() {
        let size = mask.count_ones() as usize;
        if size == n {
            continue; // the full coalition: no feature left to add
        }
        let weight = weights[size];
        for (i, phi) in attributions.iter_mut().enumerate() {
            let bit = 1 << i;
            if mask & bit == 0 {
                *phi += weight * (f64::from(scores[mask | bit]) - f64::from(without));
            }
        }
    }
    Ok(Shapley {
        method: Method::Exact,
        baseline_score: f64::from(scores[0]),
        score: f64::from(scores[total - 1]),
        attributions,
    })
}

/// splitmix64: a small, fixed generator (the permutations must be the same everywhere).
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (Lemire's multiply; the bias is below 2^-40 for these bounds).
    fn below(&mut self, bound: usize) -> usize {
        #[allow(clippy::cast_possible_truncation)]
        let pick = ((u128::from(self.next()) * bound as u128) >> 64) as usize;
        pick
    }
}

/// The permutations of `0..n` the sampled method walks, `count` of them (Fisher-Yates).
pub fn permutations(n: usize, count: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = SplitMix64(seed);
    (0..count)
        .map(|_| {
            let mut order: Vec<usize> = (0..n).collect();
            for k in (1..n).rev() {
                order.swap(k, rng.below(k + 1));
            }
            order
        })
        .collect()
}

pub(crate) fn sampled(
    scorer: &dyn Scorer,
    row: &[f32],
    baseline: &[f32],
    count: usize,
    seed: u64,
) -> Result<Shapley, ExplainError> {
    let n = row.len();
    let chain = n + 1;
    let rows = count.checked_mul(chain).filter(|r| *r <= i32::MAX as usize).ok_or(ExplainError::TooWide(n))?;
    let orders = permutations(n, count, seed);
    let scores = score_in_chunks(scorer, rows, |start, end, input| {
        for r in start..end {
            let (p, step) = (r / chain, r % chain);
            // Step k of a chain: the first k features of the permutation take the row's values.
            let mut current = baseline.to_vec();
            for &j in &orders[p][..step] {
                current[j] = row[j];
            }
            input.extend_from_slice(&current);
        }
    })?;
    let mut sum = vec![0.0_f64; n];
    let mut sum_sq = vec![0.0_f64; n];
    let (mut first, mut last) = (0.0_f64, 0.0_f64);
    for (p, order) in orders.iter().enumerate() {
        let chain_scores = &scores[p * chain..(p + 1) * chain];
        first += f64::from(chain_scores[0]);
        last += f64::from(chain_scores[n]);
        for (k, &j) in order.iter().enumerate() {
            let marginal = f64::from(chain_scores[k + 1]) - f64::from(chain_scores[k]);
            sum[j] += marginal;
            sum_sq[j] += marginal * marginal;
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let m = count as f64;
    let attributions: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let error_bound = attributions
        .iter()
        .zip(&sum_sq)
        .map(|(mean, sq)| {
            let variance = ((sq - m * mean * mean) / (m - 1.0).max(1.0)).max(0.0);
            Z_95 * (variance / m).sqrt()
        })
        .fold(0.0_f64, f64::max);
    Ok(Shapley {
        method: Method::Sampled { permutations: count, error_bound },
        baseline_score: first / m,
        score: last / m,
        attributions,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    type Rows = Box<dyn Fn(&[f32]) -> f32 + Send + Sync>;

    /// A scorer from a function of one row, recording the batch sizes it was called with.
    struct Function {
        features: usize,
        f: Rows,
        calls: std::sync::Mutex<Vec<usize>>,
    }

    impl std::fmt::Debug for Function {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Function({} features)", self.features)
        }
    }

    impl Function {
        fn new(features: usize, f: impl Fn(&[f32]) -> f32 + Send + Sync + 'static) -> Self {
            Self { features, f: Box::new(f), calls: std::sync::Mutex::default() }
        }
    }

    impl Scorer for Function {
        fn features(&self) -> usize {
            self.features
        }
        fn backend(&self) -> &'static str {
            "cpu"
        }
        fn score(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, BackendError> {
            crate::backend::check_shape(input, rows, self.features)?;
            self.calls.lock().unwrap().push(rows);
            Ok(input.chunks_exact(self.features).map(|r| (self.f)(r)).collect())
        }
    }

    fn row(n: usize) -> Vec<f32> {
        (0..n).map(|j| 0.25 * j as f32 - 1.0).collect()
    }

    fn baseline(n: usize) -> Vec<f32> {
        (0..n).map(|j| 0.1 * (j % 3) as f32).collect()
    }

    /// A smooth nonlinear model with interactions (a logistic of a quadratic form).
    fn logistic(r: &[f32]) -> f32 {
        let z: f32 = r.iter().enumerate().map(|(j, v)| (j as f32 - 3.5) * 0.3 * v).sum::<f32>() + r[0] * r[1]
            - 0.5 * r[2] * r[r.len() - 1];
        1.0 / (1.0 + (-z).exp())
    }

    fn sum(values: &[f64]) -> f64 {
        values.iter().sum()
    }

    #[test]
    fn a_linear_model_gets_its_weights_times_the_difference() {
        for n in [1, 5, 16] {
            let w: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 2.0).collect();
            let weights = w.clone();
            let scorer = Function::new(n, move |r| r.iter().zip(&weights).map(|(x, w)| x * w).sum::<f32>() + 0.75);
            let (x, b) = (row(n), baseline(n));
            let values = shapley(&scorer, &x, &b).unwrap();
            assert_eq!(values.method, Method::Exact);
            for j in 0..n {
                let expected = f64::from(w[j]) * (f64::from(x[j]) - f64::from(b[j]));
                assert!((values.attributions[j] - expected).abs() < 1e-5, "n {n} feature {j}: {values:?}");
            }
        }
    }

    #[test]
    fn an_interaction_is_shared_equally_and_an_unused_feature_gets_exactly_zero() {
        // f = x0 · x1 from a zero baseline: each gets half; x2 is never read.
        let scorer = Function::new(3, |r| r[0] * r[1]);
        let values = shapley(&scorer, &[2.0, 3.0, 7.0], &[0.0, 0.0, 0.0]).unwrap();
        assert_eq!(values.attributions, vec![3.0, 3.0, 0.0]);
        assert_eq!((values.baseline_score, values.score), (0.0, 6.0));
    }

    #[test]
    fn efficiency_holds_and_the_same_row_gives_the_same_bits() {
        let n = 16;
        let scorer = Function::new(n, logistic);
        let (x, b) = (row(n), baseline(n));
        let values = shapley(&scorer, &x, &b).unwrap();
        let gap = values.score - values.baseline_score;
        assert!((sum(&values.attributions) - gap).abs() < 1e-12, "{} vs {gap}", sum(&values.attributions));
        assert_eq!(values.score, f64::from(logistic(&x)));
        assert_eq!(values.baseline_score, f64::from(logistic(&b)));
        let again = shapley(&scorer, &x, &b).unwrap();
        let bits = |s: &Shapley| s.attributions.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&values), bits(&again));
    }

    #[test]
    fn coalitions_are_scored_in_fixed_batches() {
        let scorer = Function::new(14, logistic);
        shapley(&scorer, &row(14), &baseline(14)).unwrap();
        assert_eq!(*scorer.calls.lock().unwrap(), vec![CHUNK_ROWS, CHUNK_ROWS], "2^14 rows in two batches");
        let small = Function::new(3, logistic);
        shapley(&small, &row(3), &baseline(3)).unwrap();
        assert_eq!(*small.calls.lock().unwrap(), vec![8]);
    }

    #[test]
    fn sampled_permutations_approach_the_exact_values_within_their_bound() {
        let n = 18;
        let scorer = Function::new(n, logistic);
        let (x, b) = (row(n), baseline(n));
        let exact = exact(&scorer, &x, &b).unwrap();
        let values = shapley(&scorer, &x, &b).unwrap();
        let Method::Sampled { permutations, error_bound } = values.method else { panic!("{:?}", values.method) };
        assert_eq!(permutations, PERMUTATIONS);
        assert!(error_bound > 0.0 && error_bound < 0.05, "{error_bound}");
        let worst = values.attributions.iter().zip(&exact.attributions).map(|(s, e)| (s - e).abs()).fold(0.0, f64::max);
        assert!(worst <= error_bound, "largest error {worst} above the stated bound {error_bound}");
        // Every chain telescopes: efficiency holds exactly as for the exact method.
        let gap = values.score - values.baseline_score;
        assert!((sum(&values.attributions) - gap).abs() < 1e-12);
        assert_eq!(values.score, exact.score);
        assert_eq!(values.baseline_score, exact.baseline_score);
        assert_eq!(shapley(&scorer, &x, &b).unwrap(), values, "the seed is fixed");
    }

    #[test]
    fn permutations_are_permutations_from_a_fixed_seed() {
        let orders = permutations(20, 50, SEED);
        for order in &orders {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        }
        assert_eq!(orders, permutations(20, 50, SEED));
        assert_ne!(orders, permutations(20, 50, SEED + 1));
        assert!(orders.iter().any(|o| o[0] != orders[0][0]), "not all alike");
    }

    #[test]
    fn the_weights_are_the_shapley_weights() {
        // n = 4: 1/4, 1/12, 1/12, 1/4.
        let w = weights(4);
        for (got, want) in w.iter().zip([0.25, 1.0 / 12.0, 1.0 / 12.0, 0.25]) {
            assert!((got - want).abs() < 1e-15, "{w:?}");
        }
        // Over all coalitions without one feature, they sum to 1.
        for n in 1..=16_usize {
            let total: f64 = weights(n).iter().enumerate().map(|(s, w)| w * binomial(n - 1, s)).sum();
            assert!((total - 1.0).abs() < 1e-12, "n {n}: {total}");
        }
    }

    fn binomial(n: usize, k: usize) -> f64 {
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused() {
        let scorer = Function::new(3, logistic);
        let error = shapley(&scorer, &[1.0, 2.0], &[0.0; 3]).unwrap_err();
        assert_eq!(error, ExplainError::Shape { row: 2, baseline: 3, features: 3 });
        assert!(shapley(&scorer, &[1.0; 3], &[0.0; 4]).is_err());
    }
}
