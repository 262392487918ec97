//! Ground truth and model quality end to end, on the real broker and registry:
//!
//! - 5,000 requests scored by the pipeline (fraud/1, shadow fraud/2) and labeled with
//!   Confluent's own Python `AvroSerializer` give `streamscore quality --json` figures equal to
//!   scikit-learn's (`roc_auc_score`, `log_loss`, `brier_score_loss`, `precision_score`,
//!   `recall_score`, `f1_score`) on the same pairs within 1e-9, and two monitors' metrics
//!   agree with them;
//! - one of those monitors is killed with `kill -9` while it reads the predictions and
//!   restarted: it reports the same counts and figures as the one that never stopped;
//! - bad labels are dead-lettered with their reason (another tenant's, past the horizon, an
//!   unknown request, NaN, not a label); a duplicate counts once, a correction replaces;
//! - the quality policy marks the version below its thresholds QUALITY_DEGRADED (metric and
//!   audit entry), and the other not;
//! - `--out` writes one Parquet row per labeled prediction with its features (pyarrow reads it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{AuditRecord, Codec, DeadLetter, InferenceRequest, OutcomeStatus, PredictionOutcome};

mod support;
use support::{StageTopics, TestRegistry};

const REQUESTS: usize = 5_000;
const HOUR_US: i64 = 3_600_000_000;

/// A monitor process, killed when the test ends however it ends.
struct Monitor {
    child: Child,
    port: u16,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `streamscore monitor` on the test's topics, its quality store in `store`.
fn monitor(args: &[String], store: &std::path::Path, group: &str) -> Monitor {
    let port = streamscore::stack::free_port().unwrap();
    let child = Command::new("setpriv")
        .args(["--pdeathsig", "KILL"])
        .arg(env!("CARGO_BIN_EXE_streamscore"))
        .arg("monitor")
        .args(args)
        .arg("--quality-store")
        .arg(store)
        .args(["--group", group, "--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("STREAMSCORE_LOG", "warn,streamscore_monitor::quality=error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Monitor { child, port }
}

/// The monitor's metrics, `name{labels}` → value, or nothing while it does not answer.
async fn scrape(port: u16) -> BTreeMap<String, String> {
    let Ok(response) =
        streamscore_contracts::http::client().get(format!("http://127.0.0.1:{port}/metrics")).send().await
    else {
        return BTreeMap::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// The value of `name` with exactly these labels (in the exporter's order-independent sense).
fn metric(metrics: &BTreeMap<String, String>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.iter().find_map(|(key, value)| {
        let rest = key.strip_prefix(name)?;
        if rest.is_empty() {
            return labels.is_empty().then(|| value.parse().unwrap());
        }
        let rest = rest.strip_prefix('{')?.strip_suffix('}')?;
        let mut have: Vec<(&str, &str)> =
            rest.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k, v.trim_matches('"'))).collect();
        let mut want = labels.to_vec();
        have.sort_unstable();
        want.sort_unstable();
        (have == want).then(|| value.parse().unwrap())
    })
}

/// A pseudo-random number in [0, 1) from `i` (reproducible, no dependency).
fn draw(i: u64, salt: u64) -> f64 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1_u64 << 53) as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_give_sklearns_figures_and_a_killed_monitor_counts_the_same() {
    let python = match std::env::var("STREAMSCORE_PYTHON") {
        Ok(python) => python,
        Err(_) if std::env::var_os("CI").is_some() => panic!("STREAMSCORE_PYTHON is not set under CI"),
        Err(_) => {
            eprintln!("SKIPPED: STREAMSCORE_PYTHON not set (scripts/test.sh sets it up)");
            return;
        }
    };
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("quality").await;
    let [feedback, alerts, audit] = ["quality-feedback", "quality-alerts", "quality-audit"].map(support::unique);
    streamscore_kafka::ensure_topics(
        &support::kafka(),
        &[
            streamscore_kafka::TopicSpec::event(&feedback, 3),
            streamscore_kafka::TopicSpec::event(&alerts, 1),
            streamscore_kafka::TopicSpec::event(&audit, 1),
        ],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // fraud/2 must reach an AUC no model reaches: QUALITY_DEGRADED; fraud/1 is held to less.
    let policy = dir.path().join("quality.toml");
    std::fs::write(&policy, "[default]\nmin_labeled = 100\nmin_auc = 0.5\n[versions.\"fraud/2\"]\nmin_auc = 0.9999\n")
        .unwrap();
    let models = support::models_dir().display().to_string();
    let args: Vec<String> = [
        "--bootstrap",
        &support::bootstrap(),
        "--registry-url",
        &registry.url,
        "--predictions-topic",
        &topics.predictions,
        "--dead-letter-topic",
        &topics.dead_letter,
        "--alerts-topic",
        &alerts,
        "--audit-topic",
        &audit,
        "--feedback-topic",
        &feedback,
        "--models",
        &models,
        "--quality-every-secs",
        "1",
        "--label-horizon",
        "1h",
        "--quality-policy",
        &policy.display().to_string(),
        "--lag-every-secs",
        "60",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let (store_a, store_b) = (dir.path().join("a"), dir.path().join("b"));
    let (group_a, group_b) = (support::unique("quality-monitor-a"), support::unique("quality-monitor-b"));
    let steady = monitor(&args, &store_a, &group_a);
    let mut killed = monitor(&args, &store_b, &group_b);

    // 5,000 requests, scored by fraud/1 with fraud/2 as a shadow.
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(REQUESTS as u64);
    load.tenants = 4;
    load.seed = 27;
    let generated = loadgen::run(&support::kafka(), codec, &load).await.unwrap();
    assert_eq!(generated.errors, 0);
    let mut config = support::pipeline_config(
        &support::kafka(),
        &registry.url,
        topics.pipeline(),
        &support::unique("quality-pipeline"),
        &support::unique("quality"),
    );
    config.infer.shadow = HashMap::from([("fraud".to_owned(), "2".to_owned())]);
    config.infer.audit_topic = audit.clone();
    // kill -9 the second monitor while it reads the outcomes.
    let killer = {
        let port = killed.port;
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let consumed = metric(&scrape(port).await, "streamscore_source_records_total", &[("stage", "monitor")]);
                if consumed.is_some_and(|n| n >= 3_000.0) || started.elapsed() > Duration::from_secs(120) {
                    return consumed;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let answers = support::answer_all(config, &topics, 2 * REQUESTS, Duration::from_secs(180)).await;
    assert_eq!(answers.len(), 2 * REQUESTS, "an outcome and a shadow per request");
    let consumed = killer.await.unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let consumed = consumed.expect("the monitor counted what it read");
    assert!(consumed < (2 * REQUESTS) as f64, "killed mid-stream, after {consumed} of {} records", 2 * REQUESTS);
    eprintln!("quality: monitor b killed with SIGKILL after {consumed} records");

    // The outcomes, by request: (tenant, created_at, version → (score, label)).
    let outcome_codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let mut by_request: BTreeMap<String, (String, i64, BTreeMap<String, f64>)> = BTreeMap::new();
    for record in &answers {
        let o = outcome_codec.decode(record.payload().unwrap()).await.unwrap().value;
        assert_eq!(o.status, OutcomeStatus::Scored);
        let entry = by_request
            .entry(o.lineage.request_id.clone().unwrap())
            .or_insert_with(|| (o.lineage.tenant.clone().unwrap(), o.request_created_at, BTreeMap::new()));
        entry.2.insert(o.model_version.clone().unwrap(), o.score.unwrap());
    }
    assert_eq!(by_request.len(), REQUESTS);

    // The labels: a Bernoulli draw of each score (both classes), observed 1 s to 50 min after
    // the request; one request in ten unlabeled; and the cases the join must get right.
    let ids: Vec<&String> = by_request.keys().collect();
    let mut lines: Vec<String> = Vec::new();
    let mut truth: HashMap<String, f64> = HashMap::new();
    let label = |id: &str, tenant: &str, actual: &str, observed_at: i64| {
        format!(r#"{{"request_id": "{id}", "tenant": "{tenant}", "actual": {actual}, "observed_at": {observed_at}}}"#)
    };
    for (i, id) in ids.iter().enumerate() {
        let (tenant, created_at, scores) = &by_request[*id];
        let delay = 1_000_000 + (draw(i as u64, 1) * 3_000e6) as i64;
        let actual = if draw(i as u64, 2) < scores["1"] { 1.0 } else { 0.0 };
        let other = if tenant == "tenant-01" { "tenant-02" } else { "tenant-01" };
        match i {
            0 => lines.push(label(id, tenant, "1", created_at + 2 * HOUR_US)), // past the horizon
            1 => lines.push(label(id, other, "1", created_at + delay)),        // another tenant's
            2 => {
                // A correction: the later label wins.
                lines.push(label(id, tenant, "1", created_at + delay));
                lines.push(label(id, tenant, "0", created_at + delay + 1));
                truth.insert((*id).clone(), 0.0);
            }
            3 => {
                // The same label twice counts once.
                lines.push(label(id, tenant, "1", created_at + delay));
                lines.push(label(id, tenant, "1", created_at + delay));
                truth.insert((*id).clone(), 1.0);
            }
            4 => lines.push(label(id, tenant, "NaN", created_at + delay)),
            5 => lines.push(label(id, tenant, "0.5", created_at + delay)),
            _ if i % 10 == 9 => {}
            _ => {
                lines.push(label(id, tenant, &format!("{actual:.1}"), created_at + delay));
                truth.insert((*id).clone(), actual);
            }
        }
    }
    // A request nobody scored, labeled two hours ago: unknown once its horizon has passed.
    lines.push(label(
        "00000000-0000-4000-8000-00000000dead",
        "tenant-01",
        "1",
        streamscore_contracts::now_micros() - 2 * HOUR_US,
    ));
    let mut producer = Command::new(&python)
        .arg(support::deploy::root().join("tests/interop/feedback_producer.py"))
        .arg(support::bootstrap())
        .arg(&registry.url)
        .arg(&feedback)
        .arg(support::deploy::root().join("schemas/feedback.avsc"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    producer.stdin.take().unwrap().write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    let produced = producer.wait_with_output().unwrap();
    assert!(produced.status.success(), "Confluent's producer failed");
    assert_eq!(String::from_utf8_lossy(&produced.stdout).trim(), lines.len().to_string());

    // tansu frees a killed member's partitions only once its session (6 s) is over.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let restarted = monitor(&args, &store_b, &group_b);

    // scikit-learn on the pairs the labels make, per version.
    let store = streamscore_modelstore::ModelStore::open(support::models_dir()).unwrap();
    let mut pairs: BTreeMap<String, (Vec<f64>, Vec<u8>, Vec<u8>)> = BTreeMap::new();
    for (id, actual) in &truth {
        for (version, score) in &by_request[id].2 {
            let threshold = store.get("fraud", version).unwrap().meta.threshold;
            let p = pairs.entry(version.clone()).or_default();
            p.0.push(*score);
            p.1.push(u8::from(*score >= threshold));
            p.2.push(*actual as u8);
        }
    }
    let input = serde_json::json!(pairs
        .iter()
        .map(|(v, (s, p, a))| (v.clone(), serde_json::json!({"score": s, "predicted": p, "actual": a})))
        .collect::<serde_json::Map<_, _>>());
    let mut sklearn = Command::new(&python)
        .arg(support::deploy::root().join("tests/interop/quality_sklearn.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sklearn.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let output = sklearn.wait_with_output().unwrap();
    assert!(output.status.success(), "scikit-learn failed");
    let expected: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("quality: scikit-learn {} on {} labeled requests", expected["_sklearn"], truth.len());
    let close = |what: &str, ours: Option<f64>, theirs: &serde_json::Value| {
        let (ours, theirs) = (ours.unwrap_or_else(|| panic!("{what}: no figure")), theirs.as_f64().unwrap());
        assert!((ours - theirs).abs() <= 1e-9, "{what}: ours {ours}, scikit-learn {theirs}");
    };

    // `streamscore quality` from the topics alone.
    let out = dir.path().join("labeled.parquet");
    let quality_config = streamscore::quality::QualityConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        predictions_topic: topics.predictions.clone(),
        feedback_topic: feedback.clone(),
        models: support::models_dir(),
        model: None,
        from: None,
        to: None,
        horizon_us: HOUR_US,
        out: Some(out.clone()),
    };
    let report = streamscore::quality::quality(&quality_config).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["versions"].as_array().unwrap().len(), 2, "{json}");
    for v in json["versions"].as_array().unwrap() {
        let version = v["version"].as_str().unwrap();
        let want = &expected[version];
        assert_eq!(v["model"], "fraud");
        assert_eq!(v["labeled"], want["labeled"], "fraud/{version}");
        for figure in ["auc", "log_loss", "brier", "precision", "recall", "f1", "ece"] {
            close(&format!("quality --json fraud/{version} {figure}"), v[figure].as_f64(), &want[figure]);
        }
    }
    let refused = &report.labels.refused;
    assert_eq!(refused.get("FEEDBACK_TENANT_MISMATCH"), Some(&1), "{refused:?}");
    assert_eq!(refused.get("FEEDBACK_UNKNOWN_REQUEST"), Some(&1), "past the horizon: {refused:?}");
    assert_eq!(refused.get("NON_FINITE"), Some(&1), "{refused:?}");
    assert_eq!(refused.get("FEEDBACK_INVALID"), Some(&1), "{refused:?}");
    assert_eq!(report.labels.unmatched, 1, "the unknown request");
    assert_eq!(report.rows, 2 * truth.len() as u64, "a row per labeled outcome, shadows too");
    let script = r#"
import sys, json, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(json.dumps({"rows": t.num_rows, "columns": t.column_names, "created_at": str(t.schema.field("created_at").type),
                  "amount": sum(1 for x in t.column("feature_amount").to_pylist() if x is not None)}))
"#;
    let read = Command::new(&python).args(["-c", script]).arg(&out).output().unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let read: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(read["rows"], report.rows);
    assert_eq!(read["amount"], report.rows, "every row carries its features");
    for column in ["request_id", "tenant", "version", "score", "label", "actual", "delay_seconds"] {
        assert!(read["columns"].as_array().unwrap().iter().any(|c| c == column), "{column}: {read}");
    }
    assert_eq!(read["created_at"], "timestamp[us, tz=UTC]");

    // Both monitors: the same counts and figures as each other and as scikit-learn.
    fn labeled_all(v: &str) -> [(&'static str, &str); 4] {
        [("model", "fraud"), ("version", v), ("tenant", "_all"), ("window", "all")]
    }
    let want_labeled = truth.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    while Instant::now() < deadline {
        (a, b) = (scrape(steady.port).await, scrape(restarted.port).await);
        let done = |m: &BTreeMap<String, String>| {
            ["1", "2"].iter().all(|v| metric(m, "streamscore_quality_labeled", &labeled_all(v)) == Some(want_labeled))
                && metric(m, "streamscore_quality_pending_labels", &[]) == Some(0.0)
        };
        if done(&a) && done(&b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let figures = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("streamscore_quality_") && !k.starts_with("streamscore_quality_feedback_total")
            })
            .filter(|(k, _)| !k.starts_with("streamscore_quality_store_bytes"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (fa, fb) = (figures(&a), figures(&b));
    assert!(fa.len() > 50, "the quality gauges are served: {fa:#?}");
    let differ: Vec<(&String, &String, Option<&String>)> =
        fa.iter().filter(|(k, v)| fb.get(*k) != Some(*v)).map(|(k, v)| (k, v, fb.get(k))).take(10).collect();
    assert!(
        differ.is_empty() && fa.len() == fb.len(),
        "the restarted monitor reports what the steady one does: {differ:#?}"
    );
    for v in ["1", "2"] {
        let want = &expected[v];
        let labels = labeled_all(v);
        assert_eq!(metric(&a, "streamscore_quality_labeled", &labels), Some(want_labeled), "fraud/{v}");
        assert_eq!(metric(&a, "streamscore_quality_predictions", &labels), Some(REQUESTS as f64), "fraud/{v}");
        for (name, figure) in [
            ("streamscore_quality_auc", "auc"),
            ("streamscore_quality_log_loss", "log_loss"),
            ("streamscore_quality_brier_score", "brier"),
            ("streamscore_quality_precision", "precision"),
            ("streamscore_quality_recall", "recall"),
            ("streamscore_quality_f1", "f1"),
            ("streamscore_quality_calibration_error", "ece"),
        ] {
            close(&format!("monitor fraud/{v} {figure}"), metric(&a, name, &labels), &want[figure]);
        }
    }
    let degraded = |m: &BTreeMap<String, String>, v: &str| {
        metric(m, "streamscore_quality_degraded", &[("model", "fraud"), ("version", v)])
    };
    assert_eq!((degraded(&a, "1"), degraded(&a, "2")), (Some(0.0), Some(1.0)), "fraud/2 is below its policy");
    assert_eq!((degraded(&b, "1"), degraded(&b, "2")), (Some(0.0), Some(1.0)));

    // The refused labels, dead-lettered by each monitor with their reason and bytes; the copies
    // of one label carry one event id.
    let letters = Codec::<DeadLetter>::with_url(&registry.url, &topics.dead_letter);
    let mut reasons: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        reasons.clear();
        for record in tokio::task::block_in_place(|| support::read_all(&[&topics.dead_letter], Duration::from_secs(2)))
        {
            let d = letters.decode(record.payload().unwrap()).await.unwrap().value;
            assert!(d.original_value.as_ref().is_some_and(|v| v.first() == Some(&0)), "the label's own bytes");
            reasons.entry(d.reason.code().to_owned()).or_default().insert(d.lineage.event_id);
        }
        if reasons.get("FEEDBACK_UNKNOWN_REQUEST").is_some_and(|ids| ids.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let counts: BTreeMap<&str, usize> = reasons.iter().map(|(r, ids)| (r.as_str(), ids.len())).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("FEEDBACK_INVALID", 1),
            ("FEEDBACK_TENANT_MISMATCH", 1),
            ("FEEDBACK_UNKNOWN_REQUEST", 2),
            ("NON_FINITE", 1)
        ]),
        "one dead letter per bad label (past the horizon, and the unknown request)"
    );

    // The degradation is in the audit log, for fraud/2 only.
    let audit_codec = Codec::<AuditRecord>::with_url(&registry.url, &audit);
    let mut degraded_entries = Vec::new();
    for record in tokio::task::block_in_place(|| support::read_all(&[&audit], Duration::from_secs(2))) {
        let entry = audit_codec.decode(record.payload().unwrap()).await.unwrap().value;
        if entry.kind == "QUALITY_DEGRADED" {
            degraded_entries.push((entry.subject, entry.details.get("breaches").cloned().unwrap_or_default()));
        }
    }
    assert!(!degraded_entries.is_empty(), "QUALITY_DEGRADED is audited");
    assert!(degraded_entries.iter().all(|(s, b)| s == "fraud/2" && b.starts_with("auc ")), "{degraded_entries:?}");

    // Rebuildable from the topics: the steady monitor stops (SIGTERM, its group's offsets
    // committed at the end), and a new store in its group is filled from the topics alone.
    let mut steady = steady;
    let status = Command::new("kill").args(["-TERM", &steady.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let stopped = steady.child.wait().unwrap();
    assert!(stopped.success(), "the steady monitor stops cleanly: {stopped}");
    let rebuilt = monitor(&args, &dir.path().join("c"), &group_a);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut c = BTreeMap::new();
    while Instant::now() < deadline {
        c = scrape(rebuilt.port).await;
        if ["1", "2"].iter().all(|v| metric(&c, "streamscore_quality_labeled", &labeled_all(v)) == Some(want_labeled)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fc = figures(&c);
    let differ: Vec<(&String, &String, Option<&String>)> =
        fa.iter().filter(|(k, v)| fc.get(*k) != Some(*v)).map(|(k, v)| (k, v, fc.get(k))).take(10).collect();
    assert!(differ.is_empty() && fa.len() == fc.len(), "a store rebuilt from the topics reports the same: {differ:#?}");
    drop((rebuilt, restarted));
    registry.stop().await;
}
