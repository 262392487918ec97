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
        assert!(spec.configs.contains(&("retention.ms".to_owned(), "-1".to_owned())), "{}", spec.name);
        assert!(spec.partitions >= 1);
    }
    let audit = event_topics().into_iter().find(|t| t.name == "audit.log").unwrap();
    assert_eq!(audit.partitions, 1, "one hash chain needs one partition");
}
