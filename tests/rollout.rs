//! Model rollouts against the real broker and registry (issue 26): a split routes its share
//! and replay reproduces every split decision bit for bit; the rollout controller rolls a
//! diverging candidate back by itself and promotes a good one through every step; a rollback
//! takes effect within 5 s; every change is in the audit log and `audit verify` stays ok.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::audit::{AuditKey, Window};
use streamscore_contracts::{
    AuditRecord, Codec, InferenceRequest, OutcomeStatus, PredictionOutcome, Rollout, RolloutStatus,
};
use streamscore_control::lifecycle::{self, Change};
use streamscore_control::publish::Publisher;
use streamscore_kafka::audit::AuditWriter;
use streamscore_kafka::Shutdown;

mod support;
use support::{StageTopics, TestRegistry};

/// The private topics of one test: requests and outputs, audit log, rollouts.
struct Topics {
    stage: StageTopics,
    audit: String,
    rollouts: String,
}

async fn topics(prefix: &str) -> Topics {
    let stage = StageTopics::create(prefix).await;
    let (audit, rollouts) =
        (support::unique(&format!("{prefix}-audit")), support::unique(&format!("{prefix}-rollouts")));
    streamscore_kafka::ensure_topics(
        &support::kafka(),
        &[streamscore_kafka::TopicSpec::event(&audit, 1), streamscore_control::table::topic_spec(&rollouts)],
    )
    .await
    .unwrap();
    Topics { stage, audit, rollouts }
}

/// Writes `next` (after `current`) as the command does, audited in a chain of its own.
async fn publish(registry: &TestRegistry, topics: &Topics, current: Option<&Rollout>, next: &Rollout) {
    let shutdown = Shutdown::never();
    let audit = Arc::new(
        AuditWriter::new(&support::kafka(), &registry.url, &topics.audit, "control", "test@host", &shutdown)
            .await
            .unwrap(),
    );
    let publisher = Publisher::new(&support::kafka(), &registry.url, &topics.rollouts, Arc::clone(&audit), &shutdown)
        .await
        .unwrap();
    publisher.publish(current, next).await.unwrap();
    audit.close(HashMap::new()).await.unwrap();
}

fn change(reason: &str) -> Change {
    Change {
        by: "test@host".to_owned(),
        reason: reason.to_owned(),
        at: streamscore_contracts::now_micros(),
        figures: HashMap::new(),
    }
}

fn pipeline(
    registry: &TestRegistry,
    topics: &Topics,
    models: &std::path::Path,
) -> streamscore::pipeline::PipelineConfig {
    let mut config = support::pipeline_config(
        &support::kafka(),
        &registry.url,
        topics.stage.pipeline(),
        &support::unique("rollout"),
        &support::unique("rollout"),
    );
    config.infer.audit_topic.clone_from(&topics.audit);
    config.infer.rollouts_topic = Some(topics.rollouts.clone());
    config.infer.rescan_every = Some(Duration::from_secs(1));
    config.models = models.to_owned();
    config
}

async fn outcomes(registry: &TestRegistry, topic: &str) -> Vec<PredictionOutcome> {
    let codec = Codec::<PredictionOutcome>::with_url(&registry.url, topic);
    let mut out = Vec::new();
    for record in tokio::task::block_in_place(|| support::read_all(&[topic], Duration::from_secs(1))) {
        out.push(codec.decode(record.payload().unwrap()).await.unwrap().value);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_routes_its_share_and_replay_reproduces_every_decision() {
    let registry = TestRegistry::start().await;
    let topics = topics("split").await;
    let experiment =
        lifecycle::experiment(None, "fraud", streamscore_control::split::parse("1=80,2=20").unwrap(), change("A/B"))
            .unwrap();
    publish(&registry, &topics, None, &experiment).await;

    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.stage.requests));
    let mut load = LoadConfig::new(&topics.stage.requests);
    load.count = Some(10_000);
    load.tenants = 4;
    load.seed = 26;
    let generated = loadgen::run(&support::kafka(), codec, &load).await.unwrap();
    assert_eq!(generated.sent, 10_000);
    let config = pipeline(&registry, &topics, &support::models_dir());
    support::answer_all(config, &topics.stage, 10_000, Duration::from_secs(240)).await;

    let primaries: Vec<PredictionOutcome> =
        outcomes(&registry, &topics.stage.predictions).await.into_iter().filter(|o| !o.shadow).collect();
    let mut by_id: HashMap<String, String> = HashMap::new();
    for o in &primaries {
        let (id, version) = (o.lineage.request_id.clone().unwrap(), o.model_version.clone().unwrap());
        assert_eq!(o.routed_by.as_ref().map(|r| r.generation), Some(experiment.generation), "routed by the split");
        assert_eq!(
            streamscore_control::split::choose(&experiment.split, "fraud", &id),
            Some(version.as_str()),
            "the version is the split's for this request id"
        );
        if let Some(before) = by_id.insert(id, version.clone()) {
            assert_eq!(before, version, "the same request id, the same version");
        }
    }
    let to_2 = by_id.values().filter(|v| *v == "2").count();
    let share = to_2 as f64 / by_id.len() as f64;
    eprintln!("split 80/20: {} of {} requests to version 2 ({:.2}%)", to_2, by_id.len(), share * 100.0);
    assert_eq!(by_id.len(), 10_000);
    assert!((share - 0.20).abs() <= 0.02, "20% ± 2: {:.2}%", share * 100.0);

    // Replay: every split decision again, from the states the audit log keeps.
    let dir = tempfile::tempdir().unwrap();
    let replay = streamscore::replay::ReplayConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        requests_topic: topics.stage.requests.clone(),
        predictions_topic: topics.stage.predictions.clone(),
        dead_letter_topic: topics.stage.dead_letter.clone(),
        models: support::models_dir(),
        policy: None,
        tenants: streamscore_ingest::Tenants::Any,
        from: None,
        to: None,
        tenant: None,
        model: None,
        out: dir.path().join("replay.jsonl"),
        progress: false,
        audit_topic: Some(topics.audit.clone()),
    };
    let report = streamscore::replay::replay(&replay).await.unwrap();
    assert!(report.ok(), "{:#?}", report.first_mismatches);
    assert_eq!((report.requests, report.compared), (10_000, 10_000));

    // Lineage names the split that routed a request.
    let (id, _) = by_id.iter().find(|(_, v)| *v == "2").unwrap();
    let lineage = streamscore::lineage::LineageConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        predictions_topic: topics.stage.predictions.clone(),
        dead_letter_topic: topics.stage.dead_letter.clone(),
        audit_topic: topics.audit.clone(),
        alerts_topic: support::unique("no-alerts"),
        key: streamscore_contracts::audit::AuditKey::from_env().unwrap(),
    };
    let trace = streamscore::lineage::trace(&lineage, id).await.unwrap();
    let text = streamscore::lineage::describe(&trace);
    let expected =
        format!("routed by the split of rollout {} generation {}", experiment.rollout_id, experiment.generation);
    assert!(text.contains(&expected), "{text}");
    registry.stop().await;
}

/// fraud/3, for this test only: fraud/1's model with its features wired in reverse order in
/// its metadata (a real, shipped-looking version whose scores diverge).
fn models_with_a_diverging_version() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = support::models_dir();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    };
    let fraud = dir.path().join("fraud");
    copy(&shipped.join("fraud"), &fraud);
    copy(&shipped.join("fraud/1"), &fraud.join("1"));
    copy(&shipped.join("fraud/2"), &fraud.join("2"));
    copy(&shipped.join("fraud/1"), &fraud.join("3"));
    let path = fraud.join("3/metadata.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    meta["version"] = "3".into();
    meta["features"].as_array_mut().unwrap().reverse();
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    let family = fraud.join("model.json");
    let mut model: serde_json::Value = serde_json::from_slice(&std::fs::read(&family).unwrap()).unwrap();
    model["versions"] = serde_json::json!(["1", "2", "3"]);
    std::fs::write(&family, serde_json::to_vec_pretty(&model).unwrap()).unwrap();
    dir
}

/// Waits up to `within` for the rollout of fraud on `topic` to satisfy `done`.
async fn wait_for(
    registry: &TestRegistry,
    topic: &str,
    within: Duration,
    done: impl Fn(&Rollout) -> bool,
) -> Option<Rollout> {
    let (stopper, shutdown) = Shutdown::new();
    let mut table = streamscore_control::follow(&support::kafka(), &registry.url, topic, &shutdown).await.unwrap();
    let deadline = tokio::time::Instant::now() + within;
    let found = loop {
        if let Some(r) = table.current().get("fraud").filter(|r| done(r)) {
            break Some(r.as_ref().clone());
        }
        if tokio::time::timeout_at(deadline, table.changed()).await.is_err() {
            break None;
        }
    };
    stopper.stop(streamscore_kafka::StopReason::Requested("done".to_owned()));
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_rolls_back_a_diverging_candidate_and_promotes_a_good_one_through_every_step() {
    let _ = tracing_subscriber::fmt().with_env_filter("info,streamscore_control=debug").with_test_writer().try_init();
    let registry = TestRegistry::start().await;
    let topics = topics("canary").await;
    let models = models_with_a_diverging_version();
    let (stopper, shutdown) = Shutdown::new();

    // The pipeline and the controller, and a steady load.
    let config = pipeline(&registry, &topics, models.path());
    let pipeline = tokio::spawn(streamscore::pipeline::run(
        config,
        Arc::new(streamscore_infer::TractBackend),
        Arc::default(),
        shutdown.clone(),
    ));
    let mut controller = streamscore_control::controller::ControllerConfig::new(
        support::kafka(),
        &registry.url,
        &support::unique("controller"),
    );
    controller.rollouts_topic.clone_from(&topics.rollouts);
    controller.predictions_topic.clone_from(&topics.stage.predictions);
    controller.alerts_topic = support::unique("no-alerts");
    controller.audit_topic.clone_from(&topics.audit);
    let controlling = tokio::spawn(streamscore_control::controller::run(controller, shutdown.clone()));
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.stage.requests));
    let mut load = LoadConfig::new(&topics.stage.requests);
    load.rate = Some(300.0);
    load.duration = Some(Duration::from_secs(150));
    load.tenants = 4;
    load.seed = 27;
    let stop_load = Arc::new(std::sync::atomic::AtomicBool::new(false));
    load.stop = Some(Arc::clone(&stop_load));
    let producing = tokio::spawn({
        let codec = Arc::clone(&codec);
        async move { loadgen::run(&support::kafka(), codec, &load).await }
    });

    // A diverging candidate: shadowed, its scores and labels disagree, rolled back by the
    // controller within seconds of having enough outcomes to judge (a tenth of 200).
    let start = |candidate: &str, steps: Vec<i32>, current: Option<&Rollout>| {
        lifecycle::start(current, "fraud", "1", candidate, steps, 2, 200, change("canary")).unwrap()
    };
    let diverging = start("3", vec![50, 100], None);
    publish(&registry, &topics, None, &diverging).await;
    let started = Instant::now();
    let rolled_back =
        wait_for(&registry, &topics.rollouts, Duration::from_secs(60), |r| r.status == RolloutStatus::RolledBack)
            .await
            .expect("the diverging candidate is rolled back by the controller");
    eprintln!(
        "rolled back after {:.1} s: {} ({:?})",
        started.elapsed().as_secs_f64(),
        rolled_back.reason,
        rolled_back.figures
    );
    assert!(rolled_back.changed_by.starts_with("controller/"), "by the controller: {}", rolled_back.changed_by);
    assert!(rolled_back.reason.contains("gate failed"), "{}", rolled_back.reason);
    assert!(rolled_back.figures.contains_key("score_psi"), "with the figures: {:?}", rolled_back.figures);
    assert!(started.elapsed() < Duration::from_secs(30), "rolled back within seconds of judging");

    // A good candidate (fraud/2 agrees with fraud/1 on ~99.8% of labels): promoted through
    // every step; from then on version 2 answers what names no version, whatever model.json says.
    let good = start("2", vec![10, 50, 100], Some(&rolled_back));
    publish(&registry, &topics, Some(&rolled_back), &good).await;
    let promoted = wait_for(&registry, &topics.rollouts, Duration::from_secs(120), |r| {
        r.rollout_id == good.rollout_id && r.status == RolloutStatus::Promoted
    })
    .await
    .expect("the good candidate is promoted");
    assert_eq!(promoted.split.len(), 1);
    assert_eq!(promoted.split[0].version, "2");
    // Version 2 answers under the promotion (polled: the pipeline follows it within a second).
    let since = std::time::Instant::now();
    let answered_promoted = |all: &[PredictionOutcome]| {
        all.iter().any(|o| {
            !o.shadow
                && o.model_version.as_deref() == Some("2")
                && o.routed_by.as_ref().is_some_and(|r| r.generation == promoted.generation)
        })
    };
    while !answered_promoted(&outcomes(&registry, &topics.stage.predictions).await) {
        assert!(since.elapsed() < Duration::from_secs(30), "version 2 answers under the promotion");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A rollback by hand takes effect within 5 s in ingest and infer.
    let back = lifecycle::rollback(&promoted, change("by hand")).unwrap();
    publish(&registry, &topics, Some(&promoted), &back).await;
    let rolled_at = streamscore_contracts::now_micros();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    producing.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stopper.stop(streamscore_kafka::StopReason::Requested("done".to_owned()));
    pipeline.await.unwrap().unwrap();
    controlling.await.unwrap().unwrap();

    let all = outcomes(&registry, &topics.stage.predictions).await;
    let late: Vec<&PredictionOutcome> = all
        .iter()
        .filter(|o| !o.shadow && o.status == OutcomeStatus::Scored && o.lineage.written_at > rolled_at + 5_000_000)
        .collect();
    assert!(!late.is_empty(), "outcomes after the rollback");
    assert!(late.iter().all(|o| o.model_version.as_deref() == Some("1")), "5 s after the rollback only 1 answers");
    let promoted_answers =
        all.iter().filter(|o| o.routed_by.as_ref().is_some_and(|r| r.generation == promoted.generation)).count();
    assert!(promoted_answers > 0, "the promoted version answered while promoted");

    // Every step in the audit log, and the log verifies.
    let audit_codec = Codec::<AuditRecord>::with_url(&registry.url, &topics.audit);
    let mut kinds = Vec::new();
    for record in tokio::task::block_in_place(|| support::read_all(&[&topics.audit], Duration::from_secs(1))) {
        let entry = audit_codec.decode(record.payload().unwrap()).await.unwrap().value;
        if entry.kind.starts_with("ROLLOUT_") {
            kinds.push(entry.kind);
        }
    }
    eprintln!("rollout entries: {kinds:?}");
    for kind in ["ROLLOUT_STARTED", "ROLLOUT_ROLLED_BACK", "ROLLOUT_STEP", "ROLLOUT_PROMOTED"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| *k == "ROLLOUT_STEP").count(), 2, "steps 10% and 50% (100% is the promotion)");
    let verify = streamscore::audit::VerifyConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        audit_topic: topics.audit.clone(),
        predictions_topic: topics.stage.predictions.clone(),
        dead_letter_topic: topics.stage.dead_letter.clone(),
        key: AuditKey::from_env().unwrap(),
        heads: Vec::new(),
        window: Window::ALL,
    };
    let (report, _) = streamscore::audit::verify(&verify).await.unwrap();
    assert!(report.ok(), "{:#?}", &report.problems[..report.problems.len().min(5)]);
    registry.stop().await;
}
