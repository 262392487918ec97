//! A real Prometheus (Debian's package) scraping the running stages with the project's scrape
//! config (`deploy/prometheus/prometheus.yml`, its targets pointed at this test's processes):
//! every target is up, every query of the Grafana dashboard returns data after a short run
//! under load (with bad records, quotas, a drift and an explained bridge call), and what each stage serves
//! passes `promtool check metrics` and matches the catalog (names, types, label names).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{Codec, InferenceRequest};
use streamscore_telemetry::catalog::{self, Kind};

mod support;
use support::{deploy, StageTopics};

/// A child process killed when the test ends, however it ends.
struct Process(&'static str, Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(Some(status)) = self.1.try_wait() {
            eprintln!("{} had stopped by itself: {status}", self.0);
        }
        let _ = self.1.kill();
        let _ = self.1.wait();
    }
}

fn spawn(name: &'static str, program: &std::path::Path, args: &[String]) -> Process {
    // The parent-death signal stops the child if the test binary dies without unwinding.
    let child = Command::new("setpriv")
        .arg("--pdeathsig")
        .arg("KILL")
        .arg(program)
        .args(args)
        // Warnings, but not the monitor's line per drift alert (this run drifts on purpose).
        .env("STREAMSCORE_LOG", "warn,streamscore_monitor::stage=error,streamscore_monitor::quality=error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Process(name, child)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

async fn get(url: &str) -> Option<String> {
    let response = streamscore_contracts::http::client().get(url).send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.text().await.ok()
}

/// A Prometheus API query's result vector (empty when nothing matches).
async fn query(prometheus: &str, expr: &str) -> Result<Vec<serde_json::Value>, String> {
    let encoded: String = expr
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let response = streamscore_contracts::http::client()
        .get(format!("{prometheus}/api/v1/query?query={encoded}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Families of a Prometheus text exposition: name → (TYPE, label names seen).
fn families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.entry(name.to_owned()).or_default().0 = kind.to_owned();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let mut name = &line[..name_end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if out.get(base).is_some_and(|(k, _)| k == "histogram" || k == "summary") {
                        name = base;
                    }
                }
            }
            let labels = out.entry(name.to_owned()).or_default();
            if line.as_bytes()[name_end] == b'{' {
                let inside = &line[name_end + 1..line.rfind('}').unwrap()];
                for pair in inside.split("\",") {
                    if let Some((label, _)) = pair.split_once('=') {
                        labels.1.insert(label.trim_start_matches(',').to_owned());
                    }
                }
            }
        }
    }
    out
}

/// `promtool check metrics` on `text` and a check against the catalog; the problems found.
fn check_exposition(stage: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut promtool = Command::new(deploy::prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() || !said.trim().is_empty() {
        problems.push(format!("{stage}: promtool check metrics: {}", said.trim()));
    }
    for (name, (kind, labels)) in families(text) {
        let Some(m) = catalog::find(&name) else {
            problems.push(format!("{stage}: serves {name}, which is not in the catalog"));
            continue;
        };
        let expected = m.kind.name();
        if kind != expected {
            problems.push(format!("{stage}: {name} is served as a {kind}, the catalog says {expected}"));
        }
        let allowed: BTreeSet<&str> =
            m.labels.iter().copied().chain((m.kind == Kind::Histogram).then_some("le")).collect();
        for label in &labels {
            if !allowed.contains(label.as_str()) {
                problems.push(format!("{stage}: {name} carries label {label}, not one of {allowed:?}"));
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_stage_and_every_dashboard_query_has_data() {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_streamscore"));
    let python = std::env::var("STREAMSCORE_PYTHON").expect("STREAMSCORE_PYTHON (scripts/test.sh sets it)");
    let dir = tempfile::tempdir().unwrap();

    // A registry serving its metrics too, like `streamscore registry`.
    let prometheus_handle = streamscore_telemetry::install_recorder();
    let registry_topic = support::unique("_schemas-prometheus");
    let store = streamscore_registry::Store::open(&support::kafka(), &registry_topic).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", listener.local_addr().unwrap());
    let render = prometheus_handle.clone();
    let metrics: streamscore_registry::api::MetricsRender = Arc::new(move || render.render());
    tokio::spawn(streamscore_registry::serve(
        Arc::new(store),
        Arc::new(streamscore_registry::Auth::open()),
        Some(metrics),
        listener,
        std::future::pending(),
    ));

    let topics = StageTopics::create("prometheus").await;
    let [alerts, audit, checkpoints, rollouts, feedback] =
        ["alerts", "audit", "quota-checkpoints", "rollouts", "feedback"].map(support::unique);
    streamscore_kafka::ensure_topics(
        &support::kafka(),
        &[
            streamscore_kafka::TopicSpec::event(&alerts, 1),
            streamscore_kafka::TopicSpec::event(&audit, 1),
            streamscore_kafka::TopicSpec::event(&feedback, 3),
        ],
    )
    .await
    .unwrap();
    let group = support::unique("prometheus-pipeline");
    let policy = deploy::root().join("policies/tenants.toml").display().to_string();
    let models = support::models_dir().display().to_string();
    let bootstrap = support::bootstrap();
    let port = || streamscore::stack::free_port().unwrap();
    let (pipeline_port, monitor_port, bridge_port, prometheus_port) = (port(), port(), port(), port());

    let common = |command: &str| strings(&[command, "--bootstrap", &bootstrap, "--registry-url", &registry]);
    let mut pipeline_args = common("pipeline");
    pipeline_args.extend(strings(&[
        "--input-topic",
        &topics.requests,
        "--dead-letter-topic",
        &topics.dead_letter,
        "--predictions-topic",
        &topics.predictions,
        "--audit-topic",
        &audit,
        "--group",
        &group,
        "--policy",
        &policy,
        "--shadow",
        "fraud:2",
        "--quota-checkpoints-topic",
        &checkpoints,
        "--rollouts-topic",
        &rollouts,
        "--models",
        &models,
        "--metrics-listen",
        &format!("127.0.0.1:{pipeline_port}"),
    ]));
    let mut monitor_args = common("monitor");
    monitor_args.extend(strings(&[
        "--predictions-topic",
        &topics.predictions,
        "--dead-letter-topic",
        &topics.dead_letter,
        "--alerts-topic",
        &alerts,
        "--audit-topic",
        &audit,
        "--group",
        &support::unique("prometheus-monitor"),
        "--models",
        &models,
        "--window-secs",
        "1",
        "--consecutive",
        "2",
        "--lag-target",
        &format!("{group}={}", topics.requests),
        "--lag-every-secs",
        "1",
        "--rollouts-topic",
        &rollouts,
        // Explain a predictions sample often enough to close windows of mean |φ| in the run.
        "--attribution-sample",
        "0.02",
        "--attribution-window",
        "3",
        "--metrics-listen",
        &format!("127.0.0.1:{monitor_port}"),
        "--feedback-topic",
        &feedback,
        "--quality-store",
        &dir.path().join("quality").display().to_string(),
        "--quality-every-secs",
        "1",
    ]));
    let mut bridge_args = common("bridge");
    bridge_args.extend(strings(&[
        "--feedback-topic",
        &feedback,
        "--listen",
        &format!("127.0.0.1:{bridge_port}"),
        "--policy",
        &policy,
        "--models",
        &models,
        "--requests-topic",
        &topics.requests,
        "--predictions-topic",
        &topics.predictions,
    ]));
    let _pipeline = spawn("pipeline", binary, &pipeline_args);
    let _monitor = spawn("monitor", binary, &monitor_args);
    let _bridge = spawn("bridge", binary, &bridge_args);

    // The project's scrape config, pointed at these processes, scraped every second.
    let config = dir.path().join("prometheus.yml");
    let status = Command::new(&python)
        .arg(deploy::root().join("tests/interop/prometheus_config.py"))
        .arg(deploy::root().join("deploy/prometheus/prometheus.yml"))
        .arg(&config)
        .arg("1s")
        .arg(format!("pipeline=127.0.0.1:{pipeline_port}"))
        .arg(format!("monitor=127.0.0.1:{monitor_port}"))
        .arg(format!("bridge=127.0.0.1:{bridge_port}"))
        .arg(format!("prometheus=127.0.0.1:{prometheus_port}"))
        .status()
        .unwrap();
    assert!(status.success(), "rewriting the scrape config");
    let prometheus_args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.path().join("data").display()),
        format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        "--log.level=warn".to_owned(),
    ];
    let _prometheus = spawn("prometheus", &deploy::prometheus_tool("prometheus"), &prometheus_args);
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");

    // Load: 400 requests/s for 40 s, 5% bad records, every tenant, `amount` drifting after 8 s.
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.rate = Some(400.0);
    load.duration = Some(Duration::from_secs(40));
    load.tenants = 4;
    load.bad_share = 0.05;
    load.seed = 16;
    load.drift = Some(loadgen::parse_drift("amount:400:1.5:8", streamscore_contracts::now_micros()).unwrap());
    let generator = tokio::spawn(async move { loadgen::run(&support::kafka(), codec, &load).await });

    // Every target up.
    let started = Instant::now();
    let mut down = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        let targets: serde_json::Value = match get(&format!("{prometheus}/api/v1/targets")).await {
            Some(text) => serde_json::from_str(&text).unwrap(),
            None => serde_json::Value::Null,
        };
        let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        down = active
            .iter()
            .filter(|t| t["health"] != "up")
            .map(|t| format!("{} {} ({})", t["labels"]["job"], t["scrapeUrl"], t["lastError"]))
            .collect();
        if active.len() == 4 && down.is_empty() {
            break;
        }
        if active.len() != 4 {
            down = vec![format!("{} active targets, expected 4", active.len())];
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(down.is_empty(), "targets not up after 60 s: {down:?}");
    eprintln!("prometheus: 4 targets up after {:.1} s", started.elapsed().as_secs_f64());

    // A split of fraud's traffic (the rollout panels and their annotation): the pipeline routes
    // by it, the monitor's controller reports on it.
    {
        use streamscore_control::{lifecycle, publish::Publisher};
        let shutdown = streamscore_kafka::Shutdown::never();
        let writer = Arc::new(
            streamscore_kafka::audit::AuditWriter::new(
                &support::kafka(),
                &registry,
                &audit,
                "control",
                &support::unique("test"),
                &shutdown,
            )
            .await
            .unwrap(),
        );
        let publisher =
            Publisher::new(&support::kafka(), &registry, &rollouts, Arc::clone(&writer), &shutdown).await.unwrap();
        let change = lifecycle::Change {
            by: "test@host".to_owned(),
            reason: "an experiment".to_owned(),
            at: streamscore_contracts::now_micros(),
            figures: std::collections::HashMap::new(),
        };
        let split = streamscore_control::split::parse("1=90,2=10").unwrap();
        publisher.publish(None, &lifecycle::experiment(None, "fraud", split, change).unwrap()).await.unwrap();
        writer.close(std::collections::HashMap::new()).await.unwrap();
    }

    // A synchronous caller through the bridge, asking for an explanation.
    let features: streamscore_contracts::Features = streamscore_synth::Generator::new(7).next(0).by_name();
    let answer = streamscore_contracts::http::client()
        .post(format!("http://127.0.0.1:{bridge_port}/v1/models/fraud/predict?explain=true"))
        .bearer_auth("acme-demo-key")
        .json(&serde_json::json!({ "features": features }))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "the bridge answers: {}", answer.status());
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert!(answer["predictions"][0]["explanation"]["top"].is_array(), "explained: {answer}");
    let id = answer["predictions"][0]["request_id"].as_str().unwrap().to_owned();
    // Its label, through the bridge; and labels for the load's outcomes on the feedback topic,
    // so the quality panels have figures (both classes, the label following the score).
    let labeled = streamscore_contracts::http::client()
        .post(format!("http://127.0.0.1:{bridge_port}/v1/feedback"))
        .bearer_auth("acme-demo-key")
        .json(&serde_json::json!({"request_id": id, "actual": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(labeled.status(), reqwest::StatusCode::ACCEPTED, "{:?}", labeled.text().await);
    let outcomes =
        tokio::task::block_in_place(|| support::read_records(&[&topics.predictions], 3000, Duration::from_secs(30)));
    let outcome_codec = Codec::<streamscore_contracts::PredictionOutcome>::with_url(&registry, &topics.predictions);
    let feedback_codec = Codec::<streamscore_contracts::Feedback>::with_url(&registry, &feedback);
    feedback_codec.register().await.unwrap();
    let mut labels = Vec::new();
    for (i, record) in outcomes.iter().enumerate() {
        use rdkafka::message::Message;
        let Ok(o) = outcome_codec.decode(record.payload().unwrap_or_default()).await.map(|d| d.value) else { continue };
        let (Some(score), Some(request_id), Some(tenant)) = (o.score, o.lineage.request_id, o.lineage.tenant) else {
            continue;
        };
        if o.shadow {
            continue;
        }
        // Positive when the score beats a fixed pseudo-random draw: correlated, both classes.
        let draw = ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
        let actual = if score > draw * 0.2 { 1.0 } else { 0.0 };
        let label = streamscore_contracts::Feedback {
            request_id,
            tenant: tenant.clone(),
            actual,
            observed_at: streamscore_contracts::now_micros(),
            source: Some("test".to_owned()),
            attributes: None,
        };
        labels.push((tenant.into_bytes(), feedback_codec.encode(&label).unwrap()));
    }
    assert!(labels.len() > 500, "labels for the load's outcomes ({})", labels.len());
    support::produce(&feedback, &labels).await;

    // Every dashboard query returns data (a 5-minute range covers the whole run).
    let queries = deploy::dashboard_queries();
    let mut missing: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        missing.clear();
        for q in &queries {
            let expr = deploy::substitute(&q.expr, "5m");
            match query(&prometheus, &expr).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => {
                    missing.insert(q.place.clone(), format!("no data: {expr}"));
                }
                Err(e) => {
                    missing.insert(q.place.clone(), format!("{e}: {expr}"));
                }
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(missing.is_empty(), "dashboard queries without data: {missing:#?}");
    eprintln!("prometheus: all {} dashboard queries return data", queries.len());

    // What each stage serves: promtool's lint and the catalog.
    let mut problems = Vec::new();
    for (stage, url) in [
        ("pipeline", format!("http://127.0.0.1:{pipeline_port}/metrics")),
        ("monitor", format!("http://127.0.0.1:{monitor_port}/metrics")),
        ("bridge", format!("http://127.0.0.1:{bridge_port}/metrics")),
        ("registry", format!("{registry}/metrics")),
    ] {
        let text = get(&url).await.unwrap_or_else(|| panic!("{stage} serves {url}"));
        assert!(text.contains("# HELP "), "{stage}: help lines");
        problems.extend(check_exposition(stage, &text));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The lint can fail: a counter without _total and an unknown name are caught.
    let bad = "# HELP streamscore_things things\n# TYPE streamscore_things counter\nstreamscore_things 1\n";
    assert_eq!(check_exposition("bad", bad).len(), 2, "{:?}", check_exposition("bad", bad));

    let summary = generator.await.unwrap().unwrap();
    eprintln!("prometheus: load sent {} requests ({} good)", summary.sent, summary.good);
}
