//! `metadata.json` of a model version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use streamscore_synth::FeatureKind;

/// One input feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureMeta {
    pub name: String,
    pub kind: FeatureKind,
    /// Smallest valid value (inclusive).
    pub min: f64,
    /// Largest valid value (inclusive).
    pub max: f64,
}

/// A reference distribution: inner bin edges (k edges, k+1 bins from -inf to +inf) and the
/// share of the reference data in each bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub edges: Vec<f64>,
    pub shares: Vec<f64>,
}

/// Reference distributions of every feature and of the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub features: BTreeMap<String, Distribution>,
    pub score: Distribution,
}

/// `models/<name>/<version>/metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub architecture: String,
    pub onnx_file: String,
    /// Hex sha256 of the ONNX file; loading refuses a file that does not match.
    pub sha256: String,
    pub input_name: String,
    pub output_name: String,
    /// Input features, in the order the model takes them.
    pub features: Vec<FeatureMeta>,
    /// `[negative, positive]` label names.
    pub labels: Vec<String>,
    /// Scores at or above the threshold get the positive label.
    pub threshold: f64,
    pub reference: Reference,
    /// The row explanations are relative to: a value for every feature (the training means),
    /// written by `models/train.py` and checked when the store loads the version (every
    /// feature, nothing else, finite, within the feature's range). `None`: a version made
    /// before explanations existed; it is served, and an explanation of it is refused
    /// (`EXPLANATION_UNAVAILABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    pub training: serde_json::Value,
    #[serde(default)]
    pub metrics: serde_json::Value,
}

impl ModelMetadata {
    /// The baseline as an input row (the features' order, as f32, as the model sees it);
    /// `None` without a baseline or when it lacks a feature (the store refuses such a version).
    pub fn baseline_row(&self) -> Option<Vec<f32>> {
        let baseline = self.baseline.as_ref()?;
        #[allow(clippy::cast_possible_truncation)]
        self.features.iter().map(|f| baseline.get(&f.name).map(|v| *v as f32)).collect()
    }

    /// Checks the baseline against the features: every feature present, no other, each value
    /// finite and within the feature's range. `Ok` without a baseline.
    pub fn check_baseline(&self) -> Result<(), String> {
        let Some(baseline) = &self.baseline else { return Ok(()) };
        for f in &self.features {
            let Some(&value) = baseline.get(&f.name) else {
                return Err(format!("baseline has no value for feature {}", f.name));
            };
            if !value.is_finite() {
                return Err(format!("baseline value of {} is {value}, not a finite number", f.name));
            }
            if value < f.min || value > f.max {
                return Err(format!(
                    "baseline value of {} is {value}, outside its range [{}, {}]",
                    f.name, f.min, f.max
                ));
            }
        }
        if let Some(extra) = baseline.keys().find(|name| !self.features.iter().any(|f| &f.name == *name)) {
            return Err(format!("baseline names {extra}, which is not one of the model's features"));
        }
        Ok(())
    }

    /// The label for a score.
    pub fn label(&self, score: f64) -> &str {
        let index = usize::from(score >= self.threshold);
        self.labels.get(index).map_or("", String::as_str)
    }
}

/// `models/<name>/model.json`: the family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyMetadata {
    pub name: String,
    pub default_version: String,
    #[serde(default)]
    pub description: String,
    /// The version that scores a request whose own version failed (a model error) or was
    /// refused or not loaded, instead of rejecting it; such outcomes are flagged `FALLBACK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}
