//! A real process kill of `streamscore ingest` mid-stream, with thousands of records in
//! flight, then a restart: every input has exactly one distinct output (validated or
//! dead-lettered), none missing. Redeliveries carry the same event id and content.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{Codec, DeadLetter, InferenceRequest, ValidatedRequest};

mod support;
use support::{StageTopics, TestRegistry};

fn spawn_ingest(registry: &TestRegistry, topics: &StageTopics, group: &str) -> Child {
    support::streamscore("ingest")
        .args(["--bootstrap", &support::bootstrap(), "--registry-url", &registry.url])
        .args(["--input-topic", &topics.requests, "--validated-topic", &topics.validated])
        .args(["--dead-letter-topic", &topics.dead_letter, "--group", group])
        .args(["--tenants", "tenant-01,tenant-02,tenant-03,tenant-04"])
        .arg("--models")
        .arg(support::models_dir())
        .spawn()
        .expect("starting streamscore ingest")
}

/// What an output says, apart from who wrote it and when.
#[derive(Debug, Clone, PartialEq)]
enum Content {
    Validated(InferenceRequest, i32),
    DeadLetter(streamscore_contracts::DeadLetterReason, String, Option<Vec<u8>>),
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_stream_and_restarted_loses_nothing() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("kill").await;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(30_000);
    load.bad_share = 0.1;
    load.seed = 5;
    let generated = loadgen::run(&support::kafka(), codec, &load).await.unwrap();
    let total = usize::try_from(generated.sent).unwrap();

    let group = support::unique("ingest-kill");
    let mut first = spawn_ingest(&registry, &topics, &group);
    // Wait until it is well into the stream, then kill it without warning.
    let seen =
        support::read_records(&[&topics.validated, &topics.dead_letter], total / 5, Duration::from_secs(120)).len();
    Command::new("kill").args(["-KILL", &first.id().to_string()]).status().unwrap();
    first.wait().unwrap();
    assert!(seen >= total / 5, "the stage made progress before the kill ({seen})");
    let before_restart =
        support::read_records(&[&topics.validated, &topics.dead_letter], total, Duration::from_secs(2)).len();
    assert!(
        before_restart < total,
        "killed before finishing ({before_restart} of {total}); the test proves nothing otherwise"
    );

    // tansu 0.6 evicts a dead member only when a later JoinGroup finds its session expired; a
    // member that joins before then waits forever for the dead leader's assignment. So the
    // restart comes after the killed member's session (6 s) has run out, as a supervisor's
    // restart back-off would. (Apache Kafka expires sessions on its own and needs no wait.)
    std::thread::sleep(Duration::from_secs(7));
    let mut second = spawn_ingest(&registry, &topics, &group);
    let validated_codec = Codec::<ValidatedRequest>::with_url(&registry.url, &topics.validated);
    let dead_codec = Codec::<DeadLetter>::with_url(&registry.url, &topics.dead_letter);
    let mut outputs = Vec::new();
    // Bounded: the group may wait out the killed member's session and rebalance timeouts.
    for _ in 0..150 {
        outputs = support::read_all(&[&topics.validated, &topics.dead_letter], Duration::from_millis(700));
        let mut covered = std::collections::HashSet::new();
        for message in &outputs {
            let bytes = message.payload().unwrap();
            let source = if message.topic() == topics.validated {
                validated_codec.decode(bytes).await.unwrap().value.lineage.source
            } else {
                dead_codec.decode(bytes).await.unwrap().value.lineage.source
            };
            covered.insert((source.partition, source.offset));
        }
        eprintln!("after restart: {} of {total} inputs have an output", covered.len());
        if covered.len() >= total {
            break;
        }
    }
    second.kill().unwrap();
    second.wait().unwrap();

    // event id -> (source, content)
    let mut events: HashMap<String, ((i32, i64), Content)> = HashMap::new();
    let mut sources: HashMap<(i32, i64), String> = HashMap::new();
    for message in &outputs {
        let bytes = message.payload().unwrap();
        let (lineage, text) = if message.topic() == topics.validated {
            let v = validated_codec.decode(bytes).await.unwrap().value;
            (v.lineage, Content::Validated(v.request, v.writer_schema_id))
        } else {
            let d = dead_codec.decode(bytes).await.unwrap().value;
            (d.lineage, Content::DeadLetter(d.reason, d.detail, d.original_value))
        };
        let source = (lineage.source.partition, lineage.source.offset);
        if let Some((previous_source, previous_text)) = events.insert(lineage.event_id.clone(), (source, text.clone()))
        {
            assert_eq!(previous_source, source, "one event id, one source");
            assert_eq!(previous_text, text, "a redelivery writes the same event");
        }
        if let Some(other) = sources.insert(source, lineage.event_id.clone()) {
            assert_eq!(other, lineage.event_id, "one source, one event id");
        }
    }
    assert_eq!(sources.len(), total, "every input has an output");
    assert_eq!(events.len(), total, "exactly one distinct output per input");
    let duplicates = outputs.len() - total;
    eprintln!("kill test: {total} inputs, {} outputs ({duplicates} redelivered duplicates)", outputs.len());
    registry.stop().await;
}
