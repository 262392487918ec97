//! Drift detection on the load generator's own stream against the shipped reference
//! distributions: a shifted feature raises an alert for that feature and no other within the
//! documented number of windows; an undrifted stream raises none.

use std::collections::HashMap;

use streamscore_contracts::{DriftMethod, Severity};
use streamscore_modelstore::ModelStore;
use streamscore_monitor::drift::{Detector, DetectorConfig, Reference};
use streamscore_synth::{feature_index, Drift, Generator};

fn reference() -> Reference {
    let store = ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).expect("models");
    let version = store.get("fraud", "1").expect("fraud/1");
    Reference::from_metadata(&version.meta)
}

/// Feeds `seconds` of traffic at `rate` per second (event time) into a detector.
fn run(seconds: i64, rate: i64, drift: Option<Drift>, seed: u64) -> Vec<(i64, streamscore_contracts::DriftAlert)> {
    let config = DetectorConfig::default();
    let mut detector = Detector::new(reference(), config, "test");
    let mut generator = Generator::new(seed).with_drift(drift);
    let mut alerts = Vec::new();
    for i in 0..seconds * rate {
        let at = i * 1_000_000 / rate;
        let t = generator.next(at);
        let features: HashMap<String, f64> = t.by_name();
        for alert in detector.observe(at, &features, None, at) {
            alerts.push((at, alert));
        }
    }
    alerts
}

#[test]
fn a_shifted_feature_alerts_for_that_feature_only_within_the_documented_windows() {
    let window_us = DetectorConfig::default().window_us;
    let from_us = 120_000_000; // drift from T = 120 s
    let drift =
        Drift { feature: feature_index("amount").expect("amount"), shift: 400.0, scale: 1.0, from_micros: from_us };
    let alerts = run(300, 200, Some(drift), 99);
    assert!(!alerts.is_empty(), "the drift was detected");
    for (_, alert) in &alerts {
        assert_eq!(alert.feature, "amount", "only the drifted feature alerts: {alert:?}");
        assert_eq!(alert.model_version, "1");
    }
    let (first_at, first) = alerts.iter().find(|(_, a)| a.method == DriftMethod::Psi).expect("a PSI alert");
    // Documented bound: the first window fully after T is over the threshold, so the alert comes
    // when the K-th such window closes (K = consecutive), plus the partial window holding T.
    let windows_after = (first_at - from_us) / window_us;
    let bound = i64::from(DetectorConfig::default().consecutive) + 1;
    assert!(windows_after <= bound, "alerted {windows_after} windows after T (bound {bound})");
    assert!(*first_at >= from_us, "no alert before the drift started");
    assert_eq!(first.severity, Severity::Alert, "a 400 shift of amount is far past the alert threshold: {first:?}");
    assert!(first.statistic >= first.alert_threshold);
    assert_eq!(first.current_counts.len(), first.reference_shares.len());
    assert!(first.window_end > first.window_start);
}

#[test]
fn a_long_undrifted_stream_raises_no_alarm() {
    // 20 minutes of event time at 200/s: 120 windows, 24 000 evaluations of 5 methods.
    let alerts = run(1_200, 200, None, 7);
    assert!(
        alerts.is_empty(),
        "false alarms: {:?}",
        alerts.iter().map(|(at, a)| (at, &a.feature, a.method, a.statistic)).collect::<Vec<_>>()
    );
}

#[test]
fn thresholds_are_configurable_and_bad_overrides_are_explained() {
    use streamscore_monitor::drift::Thresholds;
    let t = Thresholds::default().with_overrides("psi=0.2:0.4, ks=0.05:0.1").expect("valid");
    assert_eq!((t.psi.warn, t.psi.alert), (0.2, 0.4));
    assert_eq!((t.kolmogorov_smirnov.warn, t.kolmogorov_smirnov.alert), (0.05, 0.1));
    assert_eq!(t.jensen_shannon, Thresholds::default().jensen_shannon, "others keep their defaults");
    for (bad, says) in [
        ("psi=0.3", "warn:alert"),
        ("psi=a:1", "not a number"),
        ("psi=0.5:0.1", "warn <= alert"),
        ("chi2=0.1:0.2", "unknown method"),
    ] {
        let error = Thresholds::default().with_overrides(bad).expect_err(bad);
        assert!(error.contains(says), "{error}");
    }
}
