//! Topic creation against the real broker is idempotent and reports what it did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use streamscore_kafka::topics::partition_count;
use streamscore_kafka::{ensure_topics, event_topics, TopicOutcome, TopicSpec};

mod support;

#[tokio::test(flavor = "multi_thread")]
async fn ensure_topics_creates_once_then_reports_existing() {
    let kafka = support::kafka();
    let specs = vec![TopicSpec::event(&support::unique("events"), 4), TopicSpec::state(&support::unique("state"))];
    let first = ensure_topics(&kafka, &specs).await.expect("create");
    assert_eq!(
        first,
        vec![
            TopicOutcome::Created { name: specs[0].name.clone(), partitions: 4 },
            TopicOutcome::Created { name: specs[1].name.clone(), partitions: 1 },
        ]
    );
    let second = ensure_topics(&kafka, &specs).await.expect("again");
    assert_eq!(
        second,
        vec![
            TopicOutcome::Existed { name: specs[0].name.clone(), partitions: 4 },
            TopicOutcome::Existed { name: specs[1].name.clone(), partitions: 1 },
        ]
    );
    assert_eq!(partition_count(&kafka, &specs[0].name).unwrap(), 4);
}

#[test]
fn event_topics_keep_events_forever() {
    for spec in event_topics() {
        if spec.name == "bridge.idempotency" {
            // Not events: the bridge's answers to idempotent calls, kept as long as a retry
            // gets one back, the latest per key.
            assert!(spec.configs.contains(&("retention.ms".to_owned(), "86400000".to_owned())), "{spec:?}");
            assert!(spec.configs.contains(&("cleanup.policy".to_owned(), "compact,delete".to_owned())), "{spec:?}");
            continue;
        }
        assert!(spec.configs.contains(&("retention.ms".to_owned(), "-1".to_owned())), "{}", spec.name);
        assert!(spec.partitions >= 1);
    }
    let audit = event_topics().into_iter().find(|t| t.name == "audit.log").unwrap();
    assert_eq!(audit.partitions, 1, "one hash chain needs one partition");
}

/// `--kafka-config` and `--kafka-config-file` reach the clients: a property librdkafka refuses
/// stops the command naming it, a file with a bad line is refused naming the line, and valid
/// ones let it run against the real broker.
#[test]
fn kafka_settings_from_flags_and_a_file_reach_every_client() {
    let binary = env!("CARGO_BIN_EXE_streamscore");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(binary)
            .args(args)
            .env_remove("STREAMSCORE_KAFKA_PROPERTIES")
            .env_remove("STREAMSCORE_KAFKA_CONFIG_FILE")
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    let bootstrap = support::bootstrap();
    let (ok, stderr) = run(&["topics", "--bootstrap", &bootstrap, "--kafka-config", "security.protocol=bogus"]);
    assert!(!ok, "a refused property stops the command");
    assert!(stderr.contains("security.protocol"), "names the property: {stderr}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.properties");
    std::fs::write(&bad, "# cluster\nsecurity.protocol=PLAINTEXT\nnot a property\n").unwrap();
    let (ok, stderr) = run(&["topics", "--bootstrap", &bootstrap, "--kafka-config-file", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("line 3"), "names the line: {stderr}");

    let good = dir.path().join("good.properties");
    std::fs::write(&good, "security.protocol=PLAINTEXT\nclient.id=streamscore-test\n").unwrap();
    let (ok, stderr) = run(&[
        "topics",
        "--bootstrap",
        &bootstrap,
        "--partitions",
        "1",
        "--kafka-config-file",
        good.to_str().unwrap(),
        "--kafka-config",
        "socket.timeout.ms=30000",
    ]);
    assert!(ok, "valid settings run: {stderr}");
}
