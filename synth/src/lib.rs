//! A seeded synthetic card-transaction generator: the training data of the shipped fraud
//! models (`models/train.py` reads it through `streamscore synth`) and the features the load
//! generator sends, so scores are meaningful end to end.
//!
//! Deterministic: the same seed gives the same rows on every platform (SplitMix64, no
//! external RNG crates). Drift can be injected: shift and/or scale one feature from a given
//! event time.
//!
//! ## The fraud rule
//!
//! ```text
//! logit = -4.2
//!       + 1.4 * [amount_to_avg_ratio > 4]
//!       + 0.9 * foreign_country
//!       + 1.1 * [hour_of_day < 5]
//!       + 0.55 * ln(1 + velocity_1h)
//!       + 2.0 * ip_risk_score
//!       + 0.8 * [distance_km > 500]
//!       + 0.15 * failed_logins_24h
//!       - 0.9 * card_present
//!       + 0.45 * chargebacks_1y
//!       - 0.6 * [account_age_days > 365]
//!       + noise,  noise ~ Normal(0, 0.6)
//! is_fraud ~ Bernoulli(sigmoid(logit))
//! ```

use std::f64::consts::PI;

/// Version of the generator; bump when rows for a seed change.
pub const GENERATOR_VERSION: u32 = 1;

/// How a feature's values are shaped: the one definition the generator, the model metadata
/// (`metadata.json`, lowercase names) and validation share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    /// A real number.
    Continuous,
    /// An integer count.
    Count,
    /// An integer code in `0..=max`.
    Categorical,
    /// 0 or 1.
    Binary,
}

impl FeatureKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Continuous => "continuous",
            FeatureKind::Count => "count",
            FeatureKind::Categorical => "categorical",
            FeatureKind::Binary => "binary",
        }
    }

    /// Whether values must be integers.
    pub const fn integral(self) -> bool {
        !matches!(self, FeatureKind::Continuous)
    }
}

/// A feature: name, kind and its valid range (inclusive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureSpec {
    pub name: &'static str,
    pub kind: FeatureKind,
    pub min: f64,
    pub max: f64,
}

const fn spec(name: &'static str, kind: FeatureKind, min: f64, max: f64) -> FeatureSpec {
    FeatureSpec { name, kind, min, max }
}

/// The 16 features, in model input order.
pub const FEATURES: [FeatureSpec; 16] = [
    spec("amount", FeatureKind::Continuous, 0.0, 50_000.0),
    spec("merchant_category", FeatureKind::Categorical, 0.0, 11.0),
    spec("hour_of_day", FeatureKind::Categorical, 0.0, 23.0),
    spec("day_of_week", FeatureKind::Categorical, 0.0, 6.0),
    spec("distance_km", FeatureKind::Continuous, 0.0, 20_000.0),
    spec("velocity_1h", FeatureKind::Count, 0.0, 50.0),
    spec("velocity_24h", FeatureKind::Count, 0.0, 200.0),
    spec("account_age_days", FeatureKind::Count, 0.0, 10_000.0),
    spec("card_present", FeatureKind::Binary, 0.0, 1.0),
    spec("foreign_country", FeatureKind::Binary, 0.0, 1.0),
    spec("avg_amount_30d", FeatureKind::Continuous, 0.0, 20_000.0),
    spec("amount_to_avg_ratio", FeatureKind::Continuous, 0.0, 1_000.0),
    spec("failed_logins_24h", FeatureKind::Count, 0.0, 20.0),
    spec("device_age_days", FeatureKind::Count, 0.0, 3_650.0),
    spec("ip_risk_score", FeatureKind::Continuous, 0.0, 1.0),
    spec("chargebacks_1y", FeatureKind::Count, 0.0, 10.0),
];

/// Index of a feature by name.
pub fn feature_index(name: &str) -> Option<usize> {
    FEATURES.iter().position(|f| f.name == name)
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }

    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.uniform()).ln()
    }

    /// Poisson (Knuth; fine for the small means used here).
    pub fn poisson(&mut self, mean: f64) -> f64 {
        let limit = (-mean).exp();
        let mut k = 0.0;
        let mut p = self.uniform();
        while p > limit && k < 1_000.0 {
            k += 1.0;
            p *= self.uniform();
        }
        k
    }
}

/// Drift injected into one feature from an event time on: `value * scale + shift`, clamped
/// to the feature's range.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub feature: usize,
    pub shift: f64,
    pub scale: f64,
    /// Event time (µs since the epoch) from which the drift applies.
    pub from_micros: i64,
}

/// One generated transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// Values in [`FEATURES`] order.
    pub features: [f64; 16],
    pub is_fraud: bool,
    /// The fraud probability the rule gave (before the Bernoulli draw).
    pub fraud_probability: f64,
}

impl Transaction {
    /// The features by name, as a request carries them (in a map of any hasher).
    pub fn by_name<S: std::hash::BuildHasher + Default>(&self) -> std::collections::HashMap<String, f64, S> {
        FEATURES.iter().zip(self.features).map(|(f, v)| (f.name.to_owned(), v)).collect()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The seeded generator.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    drift: Option<Drift>,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self { rng: Rng::new(seed), drift: None }
    }

    #[must_use]
    pub fn with_drift(mut self, drift: Option<Drift>) -> Self {
        self.drift = drift;
        self
    }

    /// The next transaction at event time `at_micros` (only drift looks at the time).
    pub fn next(&mut self, at_micros: i64) -> Transaction {
        let r = &mut self.rng;
        let account_age = (r.exponential(900.0)).min(10_000.0).floor();
        let avg_amount = (3.6 + 0.9 * r.normal()).exp().clamp(1.0, 20_000.0);
        let suspicious = r.bernoulli(0.08);
        let ratio_draw = if suspicious { (1.2 + 0.9 * r.normal()).exp() } else { (0.9 * r.normal() - 0.1).exp() };
        let ratio = ratio_draw.clamp(0.01, 1_000.0);
        let amount = (avg_amount * ratio).clamp(0.0, 50_000.0);
        let hour = if suspicious && r.bernoulli(0.4) { r.below(5) } else { (8 + r.below(16)) % 24 } as f64;
        let foreign = f64::from(u8::from(r.bernoulli(if suspicious { 0.35 } else { 0.06 })));
        let distance = if foreign > 0.0 { 300.0 + r.exponential(2_500.0) } else { r.exponential(25.0) }.min(20_000.0);
        let velocity_1h = r.poisson(if suspicious { 3.0 } else { 0.7 }).min(50.0);
        let velocity_24h = (velocity_1h + r.poisson(4.0)).min(200.0);
        let card_present = f64::from(u8::from(r.bernoulli(if suspicious { 0.25 } else { 0.65 })));
        let failed_logins = r.poisson(if suspicious { 2.5 } else { 0.2 }).min(20.0);
        let device_age = (r.exponential(if suspicious { 20.0 } else { 400.0 })).min(3_650.0).floor();
        let ip_risk = sigmoid(r.normal() * 1.2 + if suspicious { 0.8 } else { -1.6 });
        let chargebacks = r.poisson(if suspicious { 0.6 } else { 0.05 }).min(10.0);
        let merchant = r.below(12) as f64;
        let day = r.below(7) as f64;

        let mut features = [
            amount,
            merchant,
            hour,
            day,
            distance,
            velocity_1h,
            velocity_24h,
            account_age,
            card_present,
            foreign,
            avg_amount,
            (amount / avg_amount).clamp(0.0, 1_000.0),
            failed_logins,
            device_age,
            ip_risk,
            chargebacks,
        ];
        let logit = -4.2
            + 1.4 * f64::from(u8::from(features[11] > 4.0))
            + 0.9 * foreign
            + 1.1 * f64::from(u8::from(hour < 5.0))
            + 0.55 * velocity_1h.ln_1p()
            + 2.0 * ip_risk
            + 0.8 * f64::from(u8::from(distance > 500.0))
            + 0.15 * failed_logins
            - 0.9 * card_present
            + 0.45 * chargebacks
            - 0.6 * f64::from(u8::from(account_age > 365.0))
            + 0.6 * r.normal();
        let fraud_probability = sigmoid(logit);
        let is_fraud = r.bernoulli(fraud_probability);

        if let Some(drift) = &self.drift {
            if at_micros >= drift.from_micros {
                let spec = FEATURES[drift.feature];
                let value = features[drift.feature] * drift.scale + drift.shift;
                features[drift.feature] = value.clamp(spec.min, spec.max);
            }
        }
        Transaction { features, is_fraud, fraud_probability }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_rows_and_values_in_range() {
        let mut a = Generator::new(7);
        let mut b = Generator::new(7);
        let mut frauds = 0;
        for i in 0..20_000 {
            let (x, y) = (a.next(i), b.next(i));
            assert_eq!(x, y);
            for (value, spec) in x.features.iter().zip(FEATURES) {
                assert!(value.is_finite() && *value >= spec.min && *value <= spec.max, "{} = {value}", spec.name);
                if matches!(spec.kind, FeatureKind::Categorical | FeatureKind::Binary | FeatureKind::Count) {
                    assert_eq!(value.fract(), 0.0, "{} = {value} is not an integer", spec.name);
                }
            }
            frauds += usize::from(x.is_fraud);
        }
        // A plausible fraud rate: rare, not absent.
        assert!((200..3_000).contains(&frauds), "{frauds} frauds in 20000");
        assert_ne!(Generator::new(8).next(0), Generator::new(7).next(0));
    }

    #[test]
    fn drift_applies_from_its_time_only() {
        let drift = Drift { feature: 0, shift: 100.0, scale: 2.0, from_micros: 10 };
        let mut plain = Generator::new(3);
        let mut drifted = Generator::new(3).with_drift(Some(drift));
        assert_eq!(plain.next(9), drifted.next(9));
        let (p, d) = (plain.next(10), drifted.next(10));
        assert_eq!(d.features[0], (p.features[0] * 2.0 + 100.0).clamp(0.0, 50_000.0));
        assert_eq!(d.features[1..], p.features[1..]);
    }
}
