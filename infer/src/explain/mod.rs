//! Explanations: why a version gave a row its score, as baseline Shapley values of its
//! features, computed through the version's own [`Scorer`] (tract or CUDA: whatever scores
//! the version explains it).
//!
//! - [`shapley`]: the method — exact over every coalition of features up to
//!   [`EXACT_MAX_FEATURES`], sampled permutations with a fixed seed above, each row scored in
//!   fixed batches of [`CHUNK_ROWS`] so that the same row, version and backend always give the
//!   same bits (a live explanation and `streamscore explain`'s recomputation agree exactly).
//! - [`explain_row`] turns the values into the contract's [`Explanation`]: every feature's
//!   value, baseline and attribution, and the reason codes ([`TOP`] largest |φ|).
//!
//! Efficiency holds: the attributions sum to `score - baseline_score`, to float precision.

pub mod shapley;

use streamscore_contracts::{Attribution, Explanation};
use streamscore_modelstore::ModelVersion;

use crate::backend::Scorer;

pub use shapley::{shapley, ExplainError, Method, Shapley, CHUNK_ROWS, EXACT_MAX_FEATURES, PERMUTATIONS, SEED, Z_95};

/// How many reason codes an explanation lists.
pub const TOP: usize = 5;

/// Explains `row` (the exact input the model saw) by `version`, scored by `scorer`, relative
/// to the version's baseline. [`ExplainError::NoBaseline`] for a version without one.
pub fn explain_row(scorer: &dyn Scorer, version: &ModelVersion, row: &[f32]) -> Result<Explanation, ExplainError> {
    let baseline = version.meta.baseline_row().ok_or_else(|| ExplainError::NoBaseline { model: version.key() })?;
    let values = shapley(scorer, row, &baseline)?;
    let names = version.meta.features.iter().map(|f| f.name.as_str());
    Ok(to_contract(&values, names, row, &baseline))
}

/// The contract's form of `values`: every feature in input order, and the [`TOP`] largest
/// |attribution|, largest first (ties keep input order).
pub fn to_contract<'a>(
    values: &Shapley,
    names: impl Iterator<Item = &'a str>,
    row: &[f32],
    baseline: &[f32],
) -> Explanation {
    let attributions: Vec<Attribution> = names
        .zip(row.iter().zip(baseline))
        .zip(&values.attributions)
        .map(|((feature, (value, base)), phi)| Attribution {
            feature: feature.to_owned(),
            value: f64::from(*value),
            baseline: f64::from(*base),
            attribution: *phi,
        })
        .collect();
    let mut order: Vec<usize> = (0..attributions.len()).collect();
    // Stable: equal magnitudes keep the model's input order.
    order.sort_by(|&a, &b| attributions[b].attribution.abs().total_cmp(&attributions[a].attribution.abs()));
    let top = order.into_iter().take(TOP).map(|i| attributions[i].clone()).collect();
    let (method, permutations, error_bound) = match values.method {
        Method::Exact => ("exact_shapley", None, None),
        Method::Sampled { permutations, error_bound } => {
            ("sampled_shapley", Some(i32::try_from(permutations).unwrap_or(i32::MAX)), Some(error_bound))
        }
    };
    Explanation {
        method: method.to_owned(),
        baseline_score: values.baseline_score,
        score: values.score,
        attributions,
        top,
        permutations,
        error_bound,
    }
}
