//! Trust, against the real broker and registry (issue 25): a forged answer written before the
//! genuine one is named by `audit verify` and `lineage` shows the genuine one; a tenant spread
//! over partitions (3-partition topics) gets no more than its quota; a backlog older than a day
//! is scored, not dead-lettered; a backdated `created_at` buys no quota; `replay` covers the
//! tenants bound to topics of their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use streamscore::audit::VerifyConfig;
use streamscore_contracts::audit::{AuditKey, ProblemKind, Window};
use streamscore_contracts::{
    Codec, DeadLetter, InferenceRequest, Lineage, OutcomeStatus, PredictionOutcome, SourceOffset, Stage,
};

mod support;
use support::{StageTopics, TestRegistry};

const HOUR_US: i64 = 3_600_000_000;

/// A tight quota: 10 a second, a burst of 10, refused beyond.
const TIGHT: &str = "version = 1\nunknown_tenants = \"refuse\"\n\
    [tenants.tenant-01]\nrate_per_sec = 10\nburst = 10\nmax_in_flight = 1000000\n";

struct Answers {
    outcomes: Vec<(rdkafka::message::OwnedMessage, PredictionOutcome)>,
    dead_letters: Vec<DeadLetter>,
}

/// Runs the fused pipeline (with `policy`, if any) over `topics` until `count` answers are
/// out, then decodes them.
async fn run_pipeline(
    registry: &TestRegistry,
    topics: &StageTopics,
    audit_topic: &str,
    policy: Option<&str>,
    count: usize,
) -> Answers {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::pipeline_config(
        &support::kafka(),
        &registry.url,
        topics.pipeline(),
        &support::unique("trust"),
        &support::unique("trust"),
    );
    config.infer.audit_topic = audit_topic.to_owned();
    if let Some(policy) = policy {
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, policy).unwrap();
        config.infer.policy = Some(path);
        config.infer.quota_state_topic = support::unique("quota");
        config.tenants = streamscore_ingest::Tenants::Any;
    }
    let answers = support::answer_all(config, topics, count, Duration::from_secs(90)).await;
    let outcomes_codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let letters_codec = Codec::<DeadLetter>::with_url(&registry.url, &topics.dead_letter);
    let mut out = Answers { outcomes: Vec::new(), dead_letters: Vec::new() };
    for message in answers {
        let bytes = message.payload().unwrap();
        if message.topic() == topics.predictions {
            let outcome = outcomes_codec.decode(bytes).await.unwrap().value;
            out.outcomes.push((message, outcome));
        } else {
            out.dead_letters.push(letters_codec.decode(bytes).await.unwrap().value);
        }
    }
    out
}

/// Produces requests of `tenant` (key = tenant) with `created_at`, each to `partition` (else
/// where the producer's partitioner puts it) with the record timestamp `timestamp_ms` (else
/// the producer's clock).
async fn produce(
    codec: &Codec<InferenceRequest>,
    topic: &str,
    requests: &[(InferenceRequest, Option<i32>, Option<i64>)],
) -> Vec<(i32, i64)> {
    let producer: FutureProducer = support::kafka().producer().unwrap();
    let mut deliveries = Vec::new();
    for (request, partition, timestamp_ms) in requests {
        let value = codec.encode(request).unwrap();
        let mut record = FutureRecord::to(topic).key(request.tenant.as_bytes()).payload(&value);
        if let Some(p) = partition {
            record = record.partition(*p);
        }
        if let Some(t) = timestamp_ms {
            record = record.timestamp(*t);
        }
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    let mut positions = Vec::new();
    for delivery in deliveries {
        let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        positions.push((delivered.partition, delivered.offset));
    }
    positions
}

fn request(seed: u64, tenant: &str, created_at: i64) -> InferenceRequest {
    support::synth_request(seed, uuid::Uuid::new_v4().to_string(), tenant, None, created_at)
}

fn verify_config(registry: &TestRegistry, topics: &StageTopics, audit_topic: &str) -> VerifyConfig {
    VerifyConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        audit_topic: audit_topic.to_owned(),
        predictions_topic: topics.predictions.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        key: AuditKey::from_env().unwrap(),
        heads: Vec::new(),
        window: Window::ALL,
    }
}

async fn audit_topic() -> String {
    let topic = support::unique("audit-log");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&topic, 1)])
        .await
        .unwrap();
    topic
}

/// Event ids are public (the UUIDv5 of the request's coordinates): a forger who can write the
/// predictions topic answers first, with the genuine id and another score. `audit verify`
/// names the forgery (it says something else than the committed copy), and `lineage` shows
/// the committed, genuine outcome first and the forgery as not committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_prediction_forged_before_the_genuine_one_is_named_and_lineage_shows_the_genuine_one() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("forged").await;
    let audit_topic = audit_topic().await;
    let codec = Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests);
    codec.register().await.unwrap();
    let genuine_request = request(7, "tenant-01", streamscore_contracts::now_micros());
    let id = genuine_request.request_id.clone();
    let (partition, offset) = produce(&codec, &topics.requests, &[(genuine_request.clone(), None, None)]).await[0];

    let source = SourceOffset::new(&topics.requests, partition, offset);
    let lineage =
        Lineage::derive(source, Stage::Infer, "prediction", "forger", Some(id.clone()), Some("tenant-01".to_owned()));
    let mut forged = PredictionOutcome::new(lineage, &genuine_request, OutcomeStatus::Scored);
    forged.model_version = Some("1".to_owned());
    forged.score = Some(0.987_654_321);
    forged.label = Some("fraud".to_owned());
    let outcomes = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    outcomes.register().await.unwrap();
    let forged_at =
        support::produce(&topics.predictions, &[(b"tenant-01".to_vec(), outcomes.encode(&forged).unwrap())]).await[0];

    let answers = run_pipeline(&registry, &topics, &audit_topic, None, 2).await;
    let genuine = answers.outcomes.iter().find(|(m, _)| (m.partition(), m.offset()) != forged_at).expect("answered");
    assert_eq!(genuine.1.lineage.event_id, forged.lineage.event_id, "the forger computed the genuine id");
    assert_ne!(genuine.1.score, forged.score);

    let report = streamscore::audit::verify(&verify_config(&registry, &topics, &audit_topic)).await.unwrap().0;
    let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [ProblemKind::InjectedEvent], "{:#?}", report.problems);
    let position = report.problems[0].position.clone().unwrap();
    assert_eq!((position.partition, position.offset), forged_at, "the forgery is named where it is");
    assert_eq!(report.crash_leftovers, 0, "a forgery is not a crash leftover");

    let lineage = streamscore::lineage::LineageConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        predictions_topic: topics.predictions.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        audit_topic: audit_topic.clone(),
        alerts_topic: support::unique("no-alerts"),
        key: AuditKey::from_env().unwrap(),
    };
    let trace = streamscore::lineage::trace(&lineage, &id).await.unwrap();
    assert_eq!(trace.outcomes.len(), 2, "{trace:#?}");
    let first = &trace.outcomes[0];
    assert!(first.committed.is_some(), "the committed outcome first: {first:#?}");
    assert_eq!(first.score, genuine.1.score, "lineage shows the genuine score");
    assert!(trace.outcomes[1].committed.is_none(), "the forgery is not committed");
    assert_eq!((trace.outcomes[1].position.partition, trace.outcomes[1].position.offset), forged_at);
    let text = streamscore::lineage::describe(&trace);
    assert!(text.contains("NOT COMMITTED"), "{text}");
    registry.stop().await;
}

/// A tenant's records spread over the three partitions of the requests topic (its key, but a
/// producer choosing the partitions): the ones off its partition are refused
/// (`WRONG_PARTITION`, typed, with their bytes), so its quota is decided on one stream and
/// nothing buys more than the bucket gives.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_spread_over_partitions_gets_no_more_than_its_quota() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("spread").await; // 3 partitions
    let audit_topic = audit_topic().await;
    let codec = Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests);
    codec.register().await.unwrap();
    let now = streamscore_contracts::now_micros();
    let requests: Vec<_> = (0..120).map(|i| (request(i, "tenant-01", now), Some((i % 3) as i32), None)).collect();
    let positions = produce(&codec, &topics.requests, &requests).await;
    let home = streamscore_contracts::partition::partition_for(b"tenant-01", 3);
    let on_home = positions.iter().filter(|(p, _)| *p == home).count();

    let answers = run_pipeline(&registry, &topics, &audit_topic, Some(TIGHT), 120).await;
    let wrong = answers.dead_letters.iter().filter(|d| d.reason.code() == "WRONG_PARTITION").count();
    let scored = answers.outcomes.iter().filter(|(_, o)| o.status == OutcomeStatus::Scored).count();
    let rejected = answers.outcomes.iter().filter(|(_, o)| o.reason.as_deref() == Some("QUOTA_EXCEEDED")).count();
    // What the bucket gives over the time the records took to reach the broker.
    let span_s = produce_span_s(&topics, &positions, home);
    let allowed = 10 + (10.0 * span_s).ceil() as usize;
    eprintln!(
        "spread: {scored} scored, {rejected} over quota, {wrong} wrong partition; allowed {allowed} ({span_s:.3} s)"
    );
    assert!(scored <= allowed, "{scored} scored against a quota of {allowed}");
    assert_eq!(wrong, 120 - on_home, "every record off the tenant's partition is refused");
    assert!(answers.dead_letters.iter().all(|d| d.original_value.is_some()), "with its bytes");
    assert_eq!(scored + rejected, on_home);
    registry.stop().await;
}

/// Seconds between the first and the last record of `positions` on `partition`, by their
/// Kafka timestamps.
fn produce_span_s(topics: &StageTopics, positions: &[(i32, i64)], partition: i32) -> f64 {
    let records = support::read_all(&[&topics.requests], Duration::from_secs(1));
    let stamps: Vec<i64> = records
        .iter()
        .filter(|r| r.partition() == partition && positions.contains(&(r.partition(), r.offset())))
        .filter_map(|r| r.timestamp().to_millis())
        .collect();
    let (min, max) = (stamps.iter().min().copied().unwrap_or(0), stamps.iter().max().copied().unwrap_or(0));
    (max - min) as f64 / 1000.0
}

/// Requests that reached the broker 30 hours ago and are read only now (a weekend outage) are
/// as young as they were when they arrived: scored, none dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_older_than_a_day_is_scored() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("backlog").await;
    let audit_topic = audit_topic().await;
    let codec = Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests);
    codec.register().await.unwrap();
    let arrived_us = streamscore_contracts::now_micros() - 30 * HOUR_US;
    let requests: Vec<_> =
        (0..20).map(|i| (request(i, "tenant-01", arrived_us - 1_000_000), None, Some(arrived_us / 1000))).collect();
    produce(&codec, &topics.requests, &requests).await;

    let answers = run_pipeline(&registry, &topics, &audit_topic, None, 20).await;
    let reasons: Vec<&str> = answers.dead_letters.iter().map(|d| d.reason.code()).collect();
    assert!(reasons.is_empty(), "dead-lettered: {reasons:?}");
    assert_eq!(answers.outcomes.iter().filter(|(_, o)| o.status == OutcomeStatus::Scored).count(), 20);
    registry.stop().await;
}

/// A tenant idle for hours sends 100 requests in well under a second, their `created_at`
/// stepped 10 s apart from 20 hours ago: on the request's own clock every one would refill the
/// bucket. Quotas run on when the records reached the broker, so it gets one burst and the
/// rate, not twenty hours of quota.
#[tokio::test(flavor = "multi_thread")]
async fn a_backdated_created_at_buys_no_quota() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("backdated").await;
    let audit_topic = audit_topic().await;
    let codec = Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests);
    codec.register().await.unwrap();
    let start = streamscore_contracts::now_micros() - 20 * HOUR_US;
    let requests: Vec<_> =
        (0..100).map(|i| (request(i, "tenant-01", start + i as i64 * 10_000_000), None, None)).collect();
    let positions = produce(&codec, &topics.requests, &requests).await;
    let home = streamscore_contracts::partition::partition_for(b"tenant-01", 3);
    assert!(positions.iter().all(|(p, _)| *p == home), "keyed by tenant: one partition");

    let answers = run_pipeline(&registry, &topics, &audit_topic, Some(TIGHT), 100).await;
    assert!(
        answers.dead_letters.is_empty(),
        "{:?}",
        answers.dead_letters.iter().map(|d| &d.detail).collect::<Vec<_>>()
    );
    let scored = answers.outcomes.iter().filter(|(_, o)| o.status == OutcomeStatus::Scored).count();
    let span_s = produce_span_s(&topics, &positions, home);
    let allowed = 10 + (10.0 * span_s).ceil() as usize;
    eprintln!("backdated: {scored} of 100 scored; allowed {allowed} ({span_s:.3} s)");
    assert!(scored <= allowed, "{scored} scored against one burst and {span_s:.3} s of rate ({allowed})");
    registry.stop().await;
}

/// A tenant bound to Kafka principals sends on its own topic; `replay` reads that topic too,
/// so its requests are replayed and compared, not silently left out of an "ok".
#[tokio::test(flavor = "multi_thread")]
async fn replay_covers_the_tenants_bound_to_topics_of_their_own() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("replay-bound").await;
    let audit_topic = audit_topic().await;
    let policy = "version = 1\nunknown_tenants = \"refuse\"\n\
        [tenants.tenant-01]\nrate_per_sec = 100000\nburst = 100000\nkafka_principals = [\"User:acme\"]\n\
        [tenants.tenant-02]\nrate_per_sec = 100000\nburst = 100000\n";
    let own_topic = streamscore_ingest::TenantTopics::topic_for(&topics.requests, "tenant-01");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&own_topic, 3)])
        .await
        .unwrap();
    let codec = Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests);
    codec.register().await.unwrap();
    let now = streamscore_contracts::now_micros();
    let bound: Vec<_> = (0..30).map(|i| (request(i, "tenant-01", now), None, None)).collect();
    let shared: Vec<_> = (30..60).map(|i| (request(i, "tenant-02", now), None, None)).collect();
    produce(&codec, &own_topic, &bound).await;
    produce(&codec, &topics.requests, &shared).await;

    let answers = run_pipeline(&registry, &topics, &audit_topic, Some(policy), 60).await;
    assert_eq!(answers.outcomes.iter().filter(|(_, o)| o.status == OutcomeStatus::Scored).count(), 60);

    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("tenants.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let config = streamscore::replay::ReplayConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        requests_topic: topics.requests.clone(),
        predictions_topic: topics.predictions.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        models: support::models_dir(),
        policy: Some(policy_path),
        tenants: streamscore_ingest::Tenants::Any,
        from: None,
        to: None,
        tenant: None,
        model: None,
        out: dir.path().join("replay.jsonl"),
        progress: false,
        audit_topic: None,
    };
    let report = streamscore::replay::replay(&config).await.unwrap();
    assert!(report.ok(), "{:#?}", report.first_mismatches);
    assert_eq!(report.requests, 60, "the bound tenant's 30 requests are replayed too");
    assert_eq!((report.scored, report.compared), (60, 60));
    let rows = std::fs::read_to_string(&config.out).unwrap();
    let tenants: HashMap<String, usize> = rows.lines().fold(HashMap::new(), |mut m, line| {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        *m.entry(row["tenant"].as_str().unwrap().to_owned()).or_default() += 1;
        m
    });
    assert_eq!(tenants.get("tenant-01"), Some(&30));
    registry.stop().await;
}
