//! Two `streamscore pipeline` processes in one consumer group on the local broker, under
//! load, with quotas and a shadow: the request partitions split between them; a `kill -9` of
//! one moves its partitions to the other; nothing is lost (every request has exactly one
//! primary outcome, redeliveries identical); and the quota state moves with its partitions
//! through the checkpoint topic — every decision is the one the policy gives the partition's
//! whole request stream in order, where a survivor starting from a full bucket would have
//! decided some of the moved requests differently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{Codec, InferenceRequest, OutcomeStatus, PredictionOutcome};
use streamscore_infer::quota::QuotaDecision;

mod support;
use support::outcomes::{committed, expected_decisions, Content};
use support::TestRegistry;

const PARTITIONS: i32 = 4;

/// Every tenant is rate-limited, so whichever partitions move carry quota state that matters.
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
rate_per_sec = 500
burst = 100
max_in_flight = 1000000

[tenants.tenant-04]
rate_per_sec = 400
burst = 80
max_in_flight = 1000000
"#;

struct Pipeline {
    child: Child,
}

impl Pipeline {
    fn spawn(args: &[String]) -> Self {
        let child = support::streamscore("pipeline").args(args).spawn().expect("starting streamscore pipeline");
        Self { child }
    }

    /// The `host:pid` its outcomes' lineage names.
    fn instance(&self) -> String {
        format!(
            "{}:{}",
            streamscore_contracts::lineage::default_instance().rsplit_once(':').unwrap().0,
            self.child.id()
        )
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every outcome on `topic`, decoded.
async fn outcomes(codec: &Codec<PredictionOutcome>, topic: &str) -> Vec<PredictionOutcome> {
    let mut out = Vec::new();
    for record in support::read_all(&[topic], Duration::from_millis(1500)) {
        out.push(codec.decode(record.payload().unwrap()).await.unwrap().value);
    }
    out
}

/// The end offsets (next offset to be written) of `partitions` of `topic`.
fn end_offsets(topic: &str, partitions: &[i32]) -> HashMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = support::kafka().client_config().create().unwrap();
    partitions.iter().map(|p| (*p, consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)).unwrap().1)).collect()
}

/// Per partition, the instance that wrote the primary outcome of its highest offset.
fn latest_writers(outcomes: &[PredictionOutcome]) -> BTreeMap<i32, String> {
    let mut latest: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| !o.shadow) {
        let entry = latest.entry(o.lineage.source.partition).or_insert((-1, String::new()));
        if o.lineage.source.offset >= entry.0 {
            *entry = (o.lineage.source.offset, o.lineage.instance.clone());
        }
    }
    latest.into_iter().map(|(p, (_, i))| (p, i)).collect()
}

/// tansu 0.6 expires a dead member only when a later JoinGroup finds its session over (README:
/// "A tansu limitation to know"; Apache Kafka expires it by itself, and the survivor is assigned
/// its partitions with no help). After the session timeout (6 s), a consumer joins the group
/// and leaves at once — what a supervisor restarting the replica, or a probe, does — so the
/// group rebalances onto the survivor. It commits nothing and processes nothing.
fn nudge_the_group(group: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    std::thread::sleep(Duration::from_secs(7));
    let consumer: BaseConsumer = support::kafka()
        .stage_consumer_config(group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("the probe consumer");
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 && Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    consumer.unsubscribe();
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pipelines_split_the_partitions_and_a_killed_ones_move_with_their_quota_state() {
    let registry = TestRegistry::start().await;
    let base = support::unique("scale-out");
    let (requests, predictions, dead_letter, checkpoints) = (
        format!("{base}.requests"),
        format!("{base}.predictions"),
        format!("{base}.dead-letter"),
        format!("{base}.quota-checkpoints"),
    );
    streamscore_kafka::ensure_topics(
        &support::kafka(),
        &[
            streamscore_kafka::TopicSpec::requests(&requests, PARTITIONS),
            streamscore_kafka::TopicSpec::event(&predictions, PARTITIONS),
            streamscore_kafka::TopicSpec::event(&dead_letter, 1),
        ],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("tenants.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let group = support::unique("scale-out");
    let args: Vec<String> = [
        "--bootstrap",
        &support::bootstrap(),
        "--registry-url",
        &registry.url,
        "--input-topic",
        &requests,
        "--dead-letter-topic",
        &dead_letter,
        "--predictions-topic",
        &predictions,
        "--group",
        &group,
        "--shadow",
        "fraud:2",
        "--quota-checkpoints-topic",
        &checkpoints,
        "--policy",
        &policy.display().to_string(),
        "--models",
        &support::models_dir().display().to_string(),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();

    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &requests));
    let outcomes_codec = Codec::<PredictionOutcome>::with_url(&registry.url, &predictions);
    let produce = |count: u64, seed: u64| {
        let codec = Arc::clone(&codec);
        let mut load = LoadConfig::new(&requests);
        load.count = Some(count);
        load.tenants = 4;
        load.seed = seed;
        async move { loadgen::run(&support::kafka(), codec, &load).await.unwrap().sent }
    };

    // Both instances join; requests arrive until each holds partitions of its own.
    let first = Pipeline::spawn(&args);
    let second = Pipeline::spawn(&args);
    let (a, b) = (first.instance(), second.instance());
    let mut sent = produce(4_000, 1).await;
    let started = Instant::now();
    let split = loop {
        let seen = outcomes(&outcomes_codec, &predictions).await;
        let writers = latest_writers(&seen);
        let holders: BTreeSet<&String> = writers.values().collect();
        // Requests are keyed by tenant: the partitions their keys hash to, each held by one.
        if holders == BTreeSet::from([&a, &b]) {
            break writers;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the partitions never split between {a} and {b}: {writers:?}"
        );
        sent += produce(400, 2 + sent).await;
    };
    let of = |instance: &str| split.iter().filter(|(_, i)| *i == instance).map(|(p, _)| *p).collect::<Vec<_>>();
    let (held_by_first, held_by_second) = (of(&a), of(&b));
    eprintln!("split: {a} holds partitions {held_by_first:?}, {b} holds {held_by_second:?}");

    // A burst; kill -9 the first instance once it has committed part of its share (the
    // survivor resumes mid-burst, where the buckets are not full).
    let burst_starts = end_offsets(&requests, &held_by_first);
    let burst = tokio::spawn(produce(30_000, 99));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let progressed = committed(&group, &requests, PARTITIONS)
            .into_iter()
            .any(|(p, offset)| burst_starts.get(&p).is_some_and(|start| offset >= start + 200));
        if progressed {
            break;
        }
        assert!(Instant::now() < deadline, "the first instance committed none of the burst");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first = first;
    Command::new("kill").args(["-KILL", &first.child.id().to_string()]).status().unwrap();
    first.child.wait().unwrap();
    // Where the survivor will resume each moved partition: the group's commits at the kill.
    let resume: HashMap<i32, i64> =
        committed(&group, &requests, PARTITIONS).into_iter().filter(|(p, _)| held_by_first.contains(p)).collect();
    sent += burst.await.unwrap();
    nudge_the_group(&group, &requests);

    // Until every request has its primary outcome.
    let deadline = Instant::now() + Duration::from_secs(240);
    let total = usize::try_from(sent).unwrap();
    let seen = loop {
        let seen = outcomes(&outcomes_codec, &predictions).await;
        let primaries: BTreeSet<(i32, i64)> =
            seen.iter().filter(|o| !o.shadow).map(|o| (o.lineage.source.partition, o.lineage.source.offset)).collect();
        eprintln!("after the kill: {} of {total} requests have a primary outcome", primaries.len());
        if primaries.len() >= total {
            break seen;
        }
        assert!(Instant::now() < deadline, "requests without an outcome: {} of {total}", total - primaries.len());
    };
    let after = latest_writers(&seen);
    assert!(after.values().all(|i| *i == b), "the survivor holds every partition: {after:?}");
    let moved_outcomes =
        seen.iter().filter(|o| o.lineage.instance == b && held_by_first.contains(&o.lineage.source.partition)).count();
    assert!(moved_outcomes > 0, "the survivor wrote outcomes for the moved partitions {held_by_first:?}");

    // Nothing lost, nothing decided twice differently.
    let mut by_id: HashMap<String, Content> = HashMap::new();
    let mut primary_ids: HashMap<(i32, i64), String> = HashMap::new();
    for o in &seen {
        let content = Content::of(o);
        if let Some(previous) = by_id.insert(o.lineage.event_id.clone(), content.clone()) {
            assert_eq!(previous, content, "a redelivery writes the same outcome under the same id");
        }
        if !o.shadow {
            let source = (o.lineage.source.partition, o.lineage.source.offset);
            if let Some(other) = primary_ids.insert(source, o.lineage.event_id.clone()) {
                assert_eq!(other, o.lineage.event_id, "one primary outcome per request");
            }
        }
    }
    assert_eq!(primary_ids.len(), total, "every request has its primary outcome");

    // Quota decisions: the partition's whole stream in order, across both hand-overs.
    let mut by_partition: BTreeMap<i32, Vec<(i64, i64, InferenceRequest)>> = BTreeMap::new();
    for record in support::read_all(&[&requests], Duration::from_secs(2)) {
        let request = codec.decode(record.payload().unwrap()).await.unwrap().value;
        // Quotas run on when each record reached the broker (its Kafka timestamp).
        let received_at = record.timestamp().to_millis().unwrap() * 1000;
        by_partition.entry(record.partition()).or_default().push((record.offset(), received_at, request));
    }
    assert_eq!(by_partition.values().map(Vec::len).sum::<usize>(), total);
    let expected = expected_decisions(&policy, &by_partition, &HashMap::new());
    let fresh = expected_decisions(&policy, &by_partition, &resume);
    let (mut checked, mut rejected, mut would_differ) = (0, 0, 0);
    for (source, id) in &primary_ids {
        let outcome = &by_id[id];
        let decision = &expected[source];
        match decision {
            QuotaDecision::Admit | QuotaDecision::Delay { .. } => {
                assert_eq!(outcome.status, OutcomeStatus::Scored, "request {source:?}: admitted by the policy");
            }
            QuotaDecision::Reject { reason, retry_after_ms } => {
                rejected += 1;
                assert_eq!(outcome.status, OutcomeStatus::Rejected, "request {source:?}: rejected by the policy");
                assert_eq!(outcome.reason.as_deref(), Some(reason.code()));
                assert_eq!(outcome.retry_after_ms, Some(*retry_after_ms));
            }
            other => panic!("unexpected decision {other:?}"),
        }
        checked += 1;
        if fresh.get(source).is_some_and(|f| std::mem::discriminant(f) != std::mem::discriminant(decision)) {
            would_differ += 1;
        }
    }
    eprintln!(
        "scale-out: {total} requests, {} outcomes ({} redelivered), partitions {held_by_first:?} moved from {a} to {b} \
         (resumed at {resume:?}); {checked} quota decisions as the policy gives them ({rejected} rejections); a survivor \
         starting with full buckets would have decided {would_differ} of them differently",
        seen.len(),
        seen.len() - by_id.len(),
    );
    assert!(rejected > 0, "the load exceeds the quotas");
    assert!(
        would_differ > 0,
        "the moved requests depend on the quota state at the hand-over (else this test shows nothing about it)"
    );
    registry.stop().await;
}
