//! Replay against the real broker: 10,000 generated requests through the pipeline, then
//! re-scored offline. The same version gives bit-identical scores and the same decisions (the
//! Parquet file read back with pyarrow); fraud/2 against the original fraud/1 predictions
//! gives an agreement report whose figures match the rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use streamscore::loadgen::{self, LoadConfig};
use streamscore::replay::{ReplayConfig, Row};
use streamscore_contracts::{Codec, InferenceRequest};

mod support;
use support::{StageTopics, TestRegistry};

const TENANTS: &str = "tenant-01,tenant-02,tenant-03,tenant-04";

#[tokio::test(flavor = "multi_thread")]
async fn replays_are_bit_identical_on_the_same_version_and_report_agreement_on_another() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("replay").await;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(10_000);
    load.tenants = 4;
    load.bad_share = 0.02;
    load.seed = 17;
    let generated = loadgen::run(&support::kafka(), codec, &load).await.unwrap();
    assert_eq!(generated.errors, 0);

    let mut config = support::pipeline_config(
        &support::kafka(),
        &registry.url,
        topics.pipeline(),
        &support::unique("replay-pipeline"),
        &support::unique("replay"),
    );
    config.infer.audit_topic = support::unique("replay-audit");
    config.tenants = streamscore_ingest::Tenants::parse(TENANTS);
    let outputs = support::answer_all(config, &topics, 10_000, Duration::from_secs(120)).await;
    assert_eq!(outputs.len(), 10_000, "one answer per request");

    let dir = tempfile::tempdir().unwrap();
    let replay = |model: Option<(&str, &str)>, out: &str| ReplayConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        requests_topic: topics.requests.clone(),
        predictions_topic: topics.predictions.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        models: support::models_dir(),
        policy: None,
        tenants: streamscore_ingest::Tenants::parse(TENANTS),
        from: None,
        to: None,
        tenant: None,
        model: model.map(|(m, v)| (m.to_owned(), v.to_owned())),
        out: dir.path().join(out),
        progress: false,
        audit_topic: None,
    };

    // The same version: every score bit-identical, every decision the same.
    let same = replay(None, "same.parquet");
    let report = streamscore::replay::replay(&same).await.unwrap();
    assert!(report.ok(), "{:#?}", report.first_mismatches);
    assert_eq!(report.requests, 10_000);
    assert_eq!(report.compared, 10_000, "every request had an original answer");
    assert_eq!(report.scored + report.dead_lettered + report.rejected, 10_000);
    assert!(report.dead_lettered > 0 && report.scored > 9_000, "{report:?}");
    // The Parquet file, read by pyarrow: one row per request, flat columns, scores equal.
    match std::env::var("STREAMSCORE_PYTHON") {
        Ok(python) => {
            let script = r#"
import sys, json, pyarrow.parquet as pq, pyarrow.compute as pc
t = pq.read_table(sys.argv[1])
scored = t.filter(pc.equal(t["decision"], "scored"))
print(json.dumps({
    "rows": t.num_rows,
    "columns": t.column_names,
    "scored": scored.num_rows,
    "equal": pc.sum(pc.cast(pc.equal(scored["score"], scored["original_score"]), "int64")).as_py(),
    "created_at": str(t.schema.field("created_at").type),
}))
"#;
            let output = std::process::Command::new(python).args(["-c", script]).arg(&same.out).output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let read: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(read["rows"], 10_000);
            assert_eq!(read["scored"], report.scored);
            assert_eq!(read["equal"], report.scored, "pyarrow sees the same scores");
            assert_eq!(read["created_at"], "timestamp[us, tz=UTC]");
            assert!(read["columns"].as_array().unwrap().iter().any(|c| c == "original_label"));
            assert!(read["columns"].as_array().unwrap().iter().any(|c| c == "feature_amount"), "the features: {read}");
        }
        Err(_) if std::env::var_os("CI").is_some() => panic!("STREAMSCORE_PYTHON is not set under CI"),
        Err(_) => eprintln!("SKIPPED the pyarrow check: STREAMSCORE_PYTHON not set (scripts/test.sh sets it up)"),
    }

    // Another version: the agreement report matches its rows.
    let other = replay(Some(("fraud", "2")), "other.jsonl");
    let report = streamscore::replay::replay(&other).await.unwrap();
    assert_eq!(report.mode, "other-version fraud@2");
    let rows: Vec<Row> = std::fs::read_to_string(&other.out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| Row {
            request_id: v["request_id"].as_str().unwrap().to_owned(),
            tenant: v["tenant"].as_str().unwrap().to_owned(),
            partition: 0,
            offset: 0,
            created_at: 0,
            decision: v["decision"].as_str().unwrap().to_owned(),
            reason: None,
            model: String::new(),
            version: v["version"].as_str().map(str::to_owned),
            score: v["score"].as_f64(),
            label: v["label"].as_str().map(str::to_owned),
            original_decision: None,
            original_reason: None,
            original_version: v["original_version"].as_str().map(str::to_owned),
            original_score: v["original_score"].as_f64(),
            original_label: v["original_label"].as_str().map(str::to_owned),
            score_diff: v["score_diff"].as_f64(),
            label_changed: v["label_changed"].as_bool().unwrap(),
            decision_changed: v["decision_changed"].as_bool().unwrap(),
            features: v["features"]
                .as_object()
                .unwrap()
                .iter()
                // A NaN feature (a NON_FINITE dead letter's) is null in JSON.
                .map(|(k, x)| (k.clone(), x.as_f64().unwrap_or(f64::NAN)))
                .collect(),
        })
        .collect();
    assert_eq!(rows.len(), 10_000);
    let scored: Vec<&Row> = rows.iter().filter(|r| r.decision == "scored").collect();
    assert!(scored.iter().all(|r| r.version.as_deref() == Some("2")), "every request scored by fraud/2");
    assert!(scored.iter().all(|r| r.features.len() == 16), "rows carry the request's 16 features");
    assert!(scored.iter().all(|r| r.original_version.as_deref() == Some("1")), "against the original fraud/1");
    let flips = rows.iter().filter(|r| r.label_changed).count();
    assert_eq!(report.flips_total, flips);
    let compared: usize = report.label_changes_per_tenant.values().map(|c| c[0]).sum();
    assert_eq!(compared, scored.len());
    let agreement = 1.0 - flips as f64 / compared as f64;
    assert!((report.label_agreement.unwrap() - agreement).abs() < 1e-12);
    assert!(agreement > 0.9 && agreement < 1.0, "two versions of one model mostly agree: {agreement}");
    let mut diffs: Vec<f64> = scored.iter().map(|r| r.score_diff.unwrap().abs()).collect();
    diffs.sort_by(f64::total_cmp);
    assert_eq!(report.score_diff_quantiles["max"], *diffs.last().unwrap());
    assert!(report.score_diff_quantiles["p50"] > 0.0, "fraud/2 is another network");
    assert!(report.score_diff_quantiles["p50"] <= report.score_diff_quantiles["p99"]);
    assert_eq!(report.flips.len(), flips.min(1000));
    assert!(streamscore::replay::report_path(&other.out).is_file(), "the report is written beside the rows");
    registry.stop().await;
}
