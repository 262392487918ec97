//! The quality policy (`policies/quality.toml`): the thresholds under which a model version
//! is `QUALITY_DEGRADED`, checked over one window of prediction time once the version has
//! enough labels there. `[default]` applies to every version; `[models.NAME]` and
//! `[versions."NAME/VERSION"]` override it field by field.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::figures::Figures;

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Thresholds; every field optional (unset: not checked, or inherited).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// The window checked: `1h`, `24h`, `7d` or `all` (default `24h`).
    pub window: Option<String>,
    /// Labels needed in the window before the version is judged (default 100).
    pub min_labeled: Option<u64>,
    pub min_auc: Option<f64>,
    pub max_log_loss: Option<f64>,
    pub max_brier: Option<f64>,
    pub min_precision: Option<f64>,
    pub min_recall: Option<f64>,
    pub min_f1: Option<f64>,
    pub max_ece: Option<f64>,
}

impl Thresholds {
    fn or(&self, base: &Self) -> Self {
        Self {
            window: self.window.clone().or_else(|| base.window.clone()),
            min_labeled: self.min_labeled.or(base.min_labeled),
            min_auc: self.min_auc.or(base.min_auc),
            max_log_loss: self.max_log_loss.or(base.max_log_loss),
            max_brier: self.max_brier.or(base.max_brier),
            min_precision: self.min_precision.or(base.min_precision),
            min_recall: self.min_recall.or(base.min_recall),
            min_f1: self.min_f1.or(base.min_f1),
            max_ece: self.max_ece.or(base.max_ece),
        }
    }

    /// The window checked.
    pub fn window(&self) -> &str {
        self.window.as_deref().unwrap_or("24h")
    }

    /// What in `figures` is past a threshold, one phrase each (empty: healthy, or too few
    /// labels to judge).
    pub fn breaches(&self, figures: &Figures) -> Vec<String> {
        if figures.labeled < self.min_labeled.unwrap_or(100) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut below = |name: &str, value: Option<f64>, min: Option<f64>| {
            if let (Some(v), Some(min)) = (value, min) {
                if v < min {
                    out.push(format!("{name} {v:.4} < {min}"));
                }
            }
        };
        below("auc", figures.auc, self.min_auc);
        below("precision", figures.precision, self.min_precision);
        below("recall", figures.recall, self.min_recall);
        below("f1", figures.f1, self.min_f1);
        let mut above = |name: &str, value: Option<f64>, max: Option<f64>| {
            if let (Some(v), Some(max)) = (value, max) {
                if v > max {
                    out.push(format!("{name} {v:.4} > {max}"));
                }
            }
        };
        above("log_loss", figures.log_loss, self.max_log_loss);
        above("brier", figures.brier, self.max_brier);
        above("ece", figures.ece, self.max_ece);
        out
    }
}

/// The whole policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityPolicy {
    #[serde(default)]
    pub default: Thresholds,
    /// Per model name.
    #[serde(default)]
    pub models: HashMap<String, Thresholds>,
    /// Per `name/version`.
    #[serde(default)]
    pub versions: HashMap<String, Thresholds>,
}

impl QualityPolicy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let invalid = |reason: String| PolicyError::Invalid { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        Self::parse(&text).map_err(invalid)
    }

    /// Parses and checks policy text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        let all = std::iter::once(("default".to_owned(), &policy.default))
            .chain(policy.models.iter().map(|(k, v)| (format!("models.{k}"), v)))
            .chain(policy.versions.iter().map(|(k, v)| (format!("versions.{k}"), v)));
        for (name, t) in all {
            if let Some(window) = &t.window {
                if !super::report::WINDOWS.iter().any(|(w, _)| w == window) {
                    return Err(format!("[{name}] window {window:?}: one of 1h, 24h, 7d, all"));
                }
            }
            for (field, value) in [
                ("min_auc", t.min_auc),
                ("max_log_loss", t.max_log_loss),
                ("max_brier", t.max_brier),
                ("min_precision", t.min_precision),
                ("min_recall", t.min_recall),
                ("min_f1", t.min_f1),
                ("max_ece", t.max_ece),
            ] {
                if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(format!("[{name}] {field}: a finite number of 0 or more"));
                }
            }
        }
        for key in policy.versions.keys() {
            if !key.contains('/') {
                return Err(format!("[versions.{key}]: name the version as \"model/version\""));
            }
        }
        Ok(policy)
    }

    /// The thresholds of `model`/`version`.
    pub fn for_version(&self, model: &str, version: &str) -> Thresholds {
        let mut t = self.default.clone();
        if let Some(m) = self.models.get(model) {
            t = m.or(&t);
        }
        if let Some(v) = self.versions.get(&format!("{model}/{version}")) {
            t = v.or(&t);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn versions_override_models_override_the_default() {
        let policy = QualityPolicy::parse(
            "[default]\nmin_auc = 0.8\nmax_ece = 0.1\n[models.fraud]\nmin_auc = 0.85\n\
             [versions.\"fraud/2\"]\nmin_auc = 0.7\nwindow = \"1h\"\n",
        )
        .unwrap();
        let v1 = policy.for_version("fraud", "1");
        assert_eq!((v1.min_auc, v1.max_ece, v1.window()), (Some(0.85), Some(0.1), "24h"));
        let v2 = policy.for_version("fraud", "2");
        assert_eq!((v2.min_auc, v2.window()), (Some(0.7), "1h"));
        assert_eq!(policy.for_version("other", "1").min_auc, Some(0.8));
        let mut f = Figures { labeled: 100, auc: Some(0.75), ece: Some(0.2), ..Figures::default() };
        assert_eq!(v1.breaches(&f), ["auc 0.7500 < 0.85", "ece 0.2000 > 0.1"]);
        f.labeled = 99;
        assert!(v1.breaches(&f).is_empty(), "too few labels to judge");
    }

    #[test]
    fn a_bad_policy_is_refused_naming_the_field() {
        for (text, says) in [
            ("[default]\nwindow = \"2h\"", "window"),
            ("[default]\nmin_auc = -1", "min_auc"),
            ("[default]\nmin_acu = 0.5", "min_acu"),
            ("[versions.fraud]\nmin_auc = 0.5", "model/version"),
        ] {
            let e = QualityPolicy::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/quality.toml");
        QualityPolicy::load(&shipped).unwrap();
    }
}
