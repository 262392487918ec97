//! `kill -9` of the fused pipeline (`streamscore pipeline`, quotas and a shadow on) mid-stream,
//! then a restart: every request has exactly one primary outcome, every scored one exactly one
//! shadow outcome, identical event ids carry identical content, and every quota decision is
//! the one the policy gives the request stream in partition order — before the kill and after
//! it, redeliveries included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{Codec, InferenceRequest, OutcomeStatus, PredictionOutcome};
use streamscore_infer::quota::QuotaDecision;

mod support;
use support::outcomes::{expected_decisions, Content};
use support::{StageTopics, TestRegistry};

const POLICY: &str = r#"
version = 1
unknown_tenants = "refuse"

[tenants.tenant-01]
rate_per_sec = 300
burst = 50
max_in_flight = 1000000

[tenants.tenant-02]
rate_per_sec = 200
burst = 20
max_in_flight = 1000000
on_exceed = "delay"
max_delay_ms = 100

[tenants.tenant-03]
pinned_versions = { fraud = "2" }
rate_per_sec = 2000
burst = 100
max_in_flight = 1000000

[tenants.tenant-04]
rate_per_sec = 100000
burst = 100000
max_in_flight = 1000000
"#;

fn spawn(
    registry: &TestRegistry,
    topics: &StageTopics,
    group: &str,
    policy: &std::path::Path,
    checkpoints: &str,
    audit_topic: &str,
) -> Child {
    support::streamscore("pipeline")
        .args(["--bootstrap", &support::bootstrap(), "--registry-url", &registry.url])
        .args(["--input-topic", &topics.requests, "--dead-letter-topic", &topics.dead_letter])
        .args(["--predictions-topic", &topics.predictions, "--group", group])
        .args(["--audit-topic", audit_topic])
        .args(["--shadow", "fraud:2", "--quota-checkpoints-topic", checkpoints])
        .arg("--policy")
        .arg(policy)
        .arg("--models")
        .arg(support::models_dir())
        .spawn()
        .expect("starting streamscore pipeline")
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_with_quotas_and_a_shadow_and_restarted_decides_everything_once_and_the_same() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("pipeline-kill").await;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("tenants.toml");
    std::fs::write(&policy_path, POLICY).unwrap();
    let checkpoints = support::unique("quota-checkpoints");
    let audit_topic = support::unique("audit-log");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&audit_topic, 1)])
        .await
        .unwrap();

    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(20_000);
    load.tenants = 4;
    load.seed = 9;
    let generated = loadgen::run(&support::kafka(), Arc::clone(&codec), &load).await.unwrap();
    let total = usize::try_from(generated.sent).unwrap();

    let group = support::unique("pipeline-kill");
    let mut first = spawn(&registry, &topics, &group, &policy_path, &checkpoints, &audit_topic);
    let seen = support::read_records(&[&topics.predictions], total / 4, Duration::from_secs(120)).len();
    Command::new("kill").args(["-KILL", &first.id().to_string()]).status().unwrap();
    first.wait().unwrap();
    assert!(seen >= total / 4, "the pipeline made progress before the kill ({seen})");

    // tansu 0.6 evicts a dead member only once its session has expired (see ingest_kill.rs).
    std::thread::sleep(Duration::from_secs(7));
    let mut second = spawn(&registry, &topics, &group, &policy_path, &checkpoints, &audit_topic);

    // The requests, in partition order, and what the policy decides for each.
    let requests = support::read_all(&[&topics.requests], Duration::from_secs(2));
    assert_eq!(requests.len(), total);
    let mut by_partition: BTreeMap<i32, Vec<(i64, i64, InferenceRequest)>> = BTreeMap::new();
    for record in &requests {
        let request = codec.decode(record.payload().unwrap()).await.unwrap().value;
        // Quotas run on when each record reached the broker (its Kafka timestamp).
        let received_at = record.timestamp().to_millis().unwrap() * 1000;
        by_partition.entry(record.partition()).or_default().push((record.offset(), received_at, request));
    }
    let expected = expected_decisions(&policy_path, &by_partition, &HashMap::new());

    let outcomes_codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let mut outcomes = Vec::new();
    for _ in 0..100 {
        let records = support::read_all(&[&topics.predictions], Duration::from_millis(1500));
        outcomes.clear();
        for record in &records {
            outcomes.push(outcomes_codec.decode(record.payload().unwrap()).await.unwrap().value);
        }
        let primaries: std::collections::HashSet<(i32, i64)> = outcomes
            .iter()
            .filter(|o| !o.shadow)
            .map(|o| (o.lineage.source.partition, o.lineage.source.offset))
            .collect();
        eprintln!("after restart: {} of {total} requests have a primary outcome", primaries.len());
        if primaries.len() >= total {
            break;
        }
    }
    // A clean stop: the second chain closes.
    Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap();
    second.wait().unwrap();

    // The audit log after a kill -9 and a restart: outputs acknowledged before the kill but
    // never committed are answered again and committed; their first copies say what the
    // committed ones say, so they are crash leftovers, never edits or forgeries.
    let verify = streamscore::audit::VerifyConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        audit_topic: audit_topic.clone(),
        predictions_topic: topics.predictions.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        key: streamscore_contracts::audit::AuditKey::from_env().unwrap(),
        heads: Vec::new(),
        window: streamscore_contracts::audit::Window::ALL,
    };
    let (report, _) = streamscore::audit::verify(&verify).await.unwrap();
    eprintln!(
        "audit verify after the kill: {} events, {} committed, {} redelivered, {} crash leftovers, {} problems",
        report.events,
        report.committed_events,
        report.duplicates,
        report.crash_leftovers,
        report.problems.len()
    );
    assert!(
        report.ok(),
        "audit verify after kill -9 and a restart: {:#?}",
        &report.problems[..report.problems.len().min(10)]
    );

    // Identical ids, identical content; one primary id per request, one shadow id per scored
    // request routed to a version other than the shadow's.
    let mut by_id: HashMap<String, Content> = HashMap::new();
    let mut primary_ids: HashMap<(i32, i64), String> = HashMap::new();
    let mut shadow_ids: HashMap<(i32, i64), String> = HashMap::new();
    for o in &outcomes {
        let content = Content::of(o);
        if let Some(previous) = by_id.insert(o.lineage.event_id.clone(), content.clone()) {
            assert_eq!(previous, content, "a redelivery writes the same outcome under the same id");
        }
        let source = (o.lineage.source.partition, o.lineage.source.offset);
        let ids = if o.shadow { &mut shadow_ids } else { &mut primary_ids };
        if let Some(other) = ids.insert(source, o.lineage.event_id.clone()) {
            assert_eq!(
                other,
                o.lineage.event_id,
                "one {} outcome per request",
                if o.shadow { "shadow" } else { "primary" }
            );
        }
    }
    assert_eq!(primary_ids.len(), total, "every request has its primary outcome");
    let duplicates = outcomes.len() - by_id.len();
    eprintln!(
        "pipeline kill test: {total} requests, {} outcomes ({duplicates} redelivered duplicates)",
        outcomes.len()
    );

    let (mut admitted, mut delayed, mut rejected) = (0, 0, 0);
    for (source, id) in &primary_ids {
        let outcome = &by_id[id];
        match &expected[source] {
            QuotaDecision::Admit | QuotaDecision::Delay { .. } => {
                if matches!(expected[source], QuotaDecision::Delay { .. }) {
                    delayed += 1;
                } else {
                    admitted += 1;
                }
                assert_eq!(outcome.status, OutcomeStatus::Scored, "request {source:?}: admitted by the policy");
                let shadowed = outcome.version.as_deref() != Some("2");
                assert_eq!(shadow_ids.contains_key(source), shadowed, "request {source:?}: shadow outcome");
            }
            QuotaDecision::Reject { reason, retry_after_ms } => {
                rejected += 1;
                assert_eq!(outcome.status, OutcomeStatus::Rejected, "request {source:?}: rejected by the policy");
                assert_eq!(outcome.reason.as_deref(), Some(reason.code()));
                assert_eq!(outcome.retry_after_ms, Some(*retry_after_ms), "request {source:?}: the same retry hint");
                assert!(!shadow_ids.contains_key(source));
            }
            other => panic!("unexpected decision {other:?}"),
        }
    }
    eprintln!("decisions: {admitted} admitted, {delayed} delayed, {rejected} rejected");
    assert!(admitted > 0 && delayed > 0 && rejected > 0, "the stream exercises every decision");
    registry.stop().await;
}
