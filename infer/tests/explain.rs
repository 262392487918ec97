//! Explanations of the shipped versions against an independent reference (onnxruntime and
//! numpy on the same 2^16 coalition rows, `tests/interop/shapley_reference.py`), efficiency,
//! a zero-weight input, and the baselines the model store checks.
//!
//! The reference needs `STREAMSCORE_PYTHON`: a Python with onnxruntime and numpy, which
//! `scripts/test.sh` sets up. Without it that comparison says it was skipped (everything else
//! runs) — except under CI, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use streamscore_contracts::Explanation;
use streamscore_infer::explain::{explain_row, EXACT_MAX_FEATURES, TOP};
use streamscore_infer::{Backend, TractBackend};
use streamscore_modelstore::{ModelStore, ModelVersion};

const ROWS: usize = 100;
const TOLERANCE: f64 = 1e-5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> Option<String> {
    match std::env::var("STREAMSCORE_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("STREAMSCORE_PYTHON is not set under CI; scripts/test.sh sets it up")
        }
        Err(_) => {
            eprintln!("SKIPPED: the onnxruntime reference (STREAMSCORE_PYTHON not set; scripts/test.sh sets it up)");
            None
        }
    }
}

/// `count` rows for `version`: half drawn by the synthetic generator (seeded), half uniform
/// within every feature's range (integers for integral features), as the model sees them.
fn rows(version: &ModelVersion, count: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut generator = streamscore_synth::Generator::new(seed);
    let mut rng = streamscore_synth::Rng::new(seed ^ 0x00ff_00ff);
    (0..count)
        .map(|i| {
            let features = generator.next(0).by_name::<std::collections::hash_map::RandomState>();
            version
                .meta
                .features
                .iter()
                .map(|f| {
                    let value = if i % 2 == 0 {
                        features[&f.name]
                    } else {
                        let v = f.min + rng.uniform() * (f.max - f.min);
                        if f.kind.integral() {
                            v.round()
                        } else {
                            v
                        }
                    };
                    value as f32
                })
                .collect()
        })
        .collect()
}

fn sum(e: &Explanation) -> f64 {
    e.attributions.iter().map(|a| a.attribution).sum()
}

#[derive(serde::Deserialize)]
struct Reference {
    framework: String,
    rows: Vec<ReferenceRow>,
}

#[derive(serde::Deserialize)]
struct ReferenceRow {
    baseline_score: f64,
    score: f64,
    attributions: Vec<f64>,
}

fn reference(python: &str, version: &ModelVersion, rows: &[Vec<f32>]) -> Reference {
    let script = repo().join("tests/interop/shapley_reference.py");
    let request = serde_json::json!({
        "model": version.onnx_path,
        "input": version.meta.input_name,
        "output": version.meta.output_name,
        "baseline": version.meta.baseline_row().expect("a baseline"),
        "rows": rows,
    });
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the reference");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the reference's JSON")
}

/// For 100 rows of every shipped version: efficiency (the attributions sum to the score less
/// the baseline's score, both as the explanation scored them and as the model scores the row
/// and the baseline alone), the reason codes, and every attribution, score and baseline score
/// equal to onnxruntime's within 1e-5.
#[test]
fn attributions_equal_an_onnxruntime_reference_and_efficiency_holds() {
    let store = ModelStore::open(repo().join("models")).expect("the shipped models load");
    let python = python();
    let mut checked = 0;
    for version in store.versions() {
        let scorer = TractBackend.load(&version).expect("tract loads it");
        assert!(scorer.features() <= EXACT_MAX_FEATURES, "the shipped versions are explained exactly");
        let baseline = version.meta.baseline_row().expect("every shipped version has a baseline");
        let baseline_alone = f64::from(scorer.score(&baseline, 1).expect("scores")[0]);
        let rows = rows(&version, ROWS, 2028);
        let ours: Vec<Explanation> =
            rows.iter().map(|row| explain_row(scorer.as_ref(), &version, row).expect("explained")).collect();
        for (i, (row, e)) in rows.iter().zip(&ours).enumerate() {
            let key = version.key();
            assert_eq!(e.method, "exact_shapley");
            assert!((sum(e) - (e.score - e.baseline_score)).abs() <= 1e-12, "{key} row {i}: {e:?}");
            let alone = f64::from(scorer.score(row, 1).expect("scores")[0]);
            assert!((sum(e) - (alone - baseline_alone)).abs() <= TOLERANCE, "{key} row {i}: efficiency, {e:?}");
            assert_eq!(e.attributions.len(), row.len());
            assert_eq!(e.top.len(), TOP);
            let largest = e.attributions.iter().map(|a| a.attribution.abs()).fold(0.0, f64::max);
            assert_eq!(e.top[0].attribution.abs(), largest, "{key} row {i}: the first reason is the largest");
            assert!(e.top.windows(2).all(|w| w[0].attribution.abs() >= w[1].attribution.abs()));
        }
        if let Some(python) = &python {
            let reference = reference(python, &version, &rows);
            assert_eq!(reference.rows.len(), ROWS);
            let mut largest = 0.0_f64;
            for (i, (e, r)) in ours.iter().zip(&reference.rows).enumerate() {
                let key = version.key();
                let context = format!("{key} row {i} against {}", reference.framework);
                assert!((e.baseline_score - r.baseline_score).abs() <= TOLERANCE, "{context}: baseline score");
                assert!((e.score - r.score).abs() <= TOLERANCE, "{context}: score");
                for (a, phi) in e.attributions.iter().zip(&r.attributions) {
                    largest = largest.max((a.attribution - phi).abs());
                    assert!(
                        (a.attribution - phi).abs() <= TOLERANCE,
                        "{context}: {} is {} here, {phi} there",
                        a.feature,
                        a.attribution
                    );
                }
                let theirs: f64 = r.attributions.iter().sum();
                assert!((theirs - (r.score - r.baseline_score)).abs() <= TOLERANCE, "{context}: their efficiency");
            }
            eprintln!(
                "{}: {ROWS} rows equal {} within {TOLERANCE} (largest attribution difference {largest:.1e})",
                version.key(),
                reference.framework
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "at least two shipped versions");
}

/// `tests/models/masked/1` is fraud/1 with the input weights of one feature zeroed
/// (`tests/models/make_test_models.py`): that feature cannot change the score, and its
/// attribution is exactly 0 on every row, while fraud/1 gives it weight on the same rows.
#[test]
fn a_feature_that_cannot_change_the_output_gets_zero() {
    let tests = ModelStore::open(repo().join("tests/models")).expect("the test models load");
    let masked = tests.get("masked", "1").expect("masked/1");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(masked.onnx_path.with_file_name("metadata.json")).unwrap())
            .unwrap();
    let feature = meta["masked_feature"].as_str().expect("masked_feature names it");
    let index = masked.meta.features.iter().position(|f| f.name == feature).expect("a feature of the model");
    let shipped = ModelStore::open(repo().join("models")).expect("the shipped models load");
    let fraud = shipped.get("fraud", "1").expect("fraud/1");
    let (masked_scorer, fraud_scorer) = (TractBackend.load(&masked).unwrap(), TractBackend.load(&fraud).unwrap());
    let mut moved = 0;
    for (i, row) in rows(&masked, 20, 7).iter().enumerate() {
        let zero = explain_row(masked_scorer.as_ref(), &masked, row).unwrap();
        assert_eq!(zero.attributions[index].attribution, 0.0, "row {i}: {feature} in {zero:?}");
        assert!(zero.top.iter().all(|t| t.feature != feature || t.attribution == 0.0));
        let full = explain_row(fraud_scorer.as_ref(), &fraud, row).unwrap();
        if full.attributions[index].attribution.abs() > 1e-4 {
            moved += 1;
        }
    }
    assert!(moved >= 5, "fraud/1 gives {feature} weight on only {moved} of 20 rows: the test would prove nothing");
}

/// Every shipped baseline is the training data's feature means (`models/train.py` on
/// `streamscore synth` seed 42, 200,000 rows), and a baseline that lacks a feature, names
/// another, or lies outside a feature's range is refused with the reason.
#[test]
fn baselines_are_the_training_means_and_bad_ones_are_refused() {
    let store = ModelStore::open(repo().join("models")).expect("the shipped models load");
    let mut generator = streamscore_synth::Generator::new(42);
    let mut sums = [0.0_f64; 16];
    let rows = 200_000;
    for _ in 0..rows {
        for (s, v) in sums.iter_mut().zip(generator.next(0).features) {
            *s += v;
        }
    }
    for version in store.versions() {
        let baseline = version.meta.baseline.as_ref().expect("a baseline");
        for (f, s) in streamscore_synth::FEATURES.iter().zip(sums) {
            let mean = s / f64::from(rows);
            let written = baseline[f.name];
            assert!(
                (written - mean).abs() <= 1e-9 * mean.abs().max(1.0),
                "{}: {} {written} vs {mean}",
                version.key(),
                f.name
            );
        }
    }

    let source = repo().join("models/fraud");
    for (edit, says) in [
        (serde_json::json!({"remove": "amount"}), "no value for feature amount"),
        (serde_json::json!({"set": ["amount", -1.0]}), "outside its range"),
        (serde_json::json!({"set": ["not_a_feature", 1.0]}), "not_a_feature"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let family = dir.path().join("fraud");
        std::fs::create_dir_all(family.join("1")).unwrap();
        for file in ["model.json", "1/model.onnx"] {
            std::fs::copy(source.join(file), family.join(file)).unwrap();
        }
        let mut meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(source.join("1/metadata.json")).unwrap()).unwrap();
        let baseline = meta["baseline"].as_object_mut().unwrap();
        if let Some(name) = edit["remove"].as_str() {
            baseline.remove(name);
        }
        if let Some([name, value]) = edit["set"].as_array().map(Vec::as_slice) {
            baseline.insert(name.as_str().unwrap().to_owned(), value.clone());
        }
        std::fs::write(family.join("1/metadata.json"), meta.to_string()).unwrap();
        let error = ModelStore::open(dir.path()).expect_err(says).to_string();
        assert!(error.contains(says) && error.contains("baseline"), "{says}: {error}");
    }
}
