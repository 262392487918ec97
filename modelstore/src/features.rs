//! Checking a request's features against a model version, and the input vector.

use std::collections::HashMap;
use std::hash::BuildHasher;

use thiserror::Error;

use crate::metadata::ModelMetadata;

/// Why a request's features do not fit a model version.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FeatureError {
    #[error("missing features {0:?}")]
    Missing(Vec<String>),
    #[error("unexpected features {0:?} (the model takes {1})")]
    Unexpected(Vec<String>, usize),
    #[error("feature {name} = {value} is not finite")]
    NonFinite { name: String, value: f64 },
    #[error("feature {name} = {value} must be an integer ({kind})")]
    Type { name: String, value: f64, kind: &'static str },
    #[error("feature {name} = {value} is outside its range [{min}, {max}]")]
    OutOfRange { name: String, value: f64, min: f64, max: f64 },
}

/// The exact input a model sees: features in its order, as f32.
pub type FeatureVector = Vec<f32>;

/// Checks `features` against `meta` (names, count, finiteness, kinds, ranges) and returns the
/// input vector in the model's order.
pub fn check<S: BuildHasher>(
    meta: &ModelMetadata,
    features: &HashMap<String, f64, S>,
) -> Result<FeatureVector, FeatureError> {
    let mut missing = Vec::new();
    let mut vector = Vec::with_capacity(meta.features.len());
    for spec in &meta.features {
        match features.get(&spec.name) {
            None => missing.push(spec.name.clone()),
            Some(&value) => {
                if !value.is_finite() {
                    return Err(FeatureError::NonFinite { name: spec.name.clone(), value });
                }
                if spec.kind.integral() && value.fract() != 0.0 {
                    return Err(FeatureError::Type { name: spec.name.clone(), value, kind: spec.kind.as_str() });
                }
                if value < spec.min || value > spec.max {
                    return Err(FeatureError::OutOfRange {
                        name: spec.name.clone(),
                        value,
                        min: spec.min,
                        max: spec.max,
                    });
                }
                #[allow(clippy::cast_possible_truncation)]
                vector.push(value as f32);
            }
        }
    }
    if !missing.is_empty() {
        return Err(FeatureError::Missing(missing));
    }
    if features.len() != meta.features.len() {
        let mut unexpected: Vec<String> =
            features.keys().filter(|name| !meta.features.iter().any(|f| &f.name == *name)).cloned().collect();
        unexpected.sort();
        return Err(FeatureError::Unexpected(unexpected, meta.features.len()));
    }
    Ok(vector)
}
