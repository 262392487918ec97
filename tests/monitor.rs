//! Consumer lag per partition of a real group on the real broker, in records and seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use streamscore_monitor::lag::{measure, LagTarget};

mod support;

#[tokio::test(flavor = "multi_thread")]
async fn lag_is_measured_in_records_and_seconds() {
    let kafka = support::kafka();
    let topic = support::unique("lag");
    streamscore_kafka::ensure_topics(&kafka, &[streamscore_kafka::TopicSpec::event(&topic, 1)]).await.unwrap();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..10).map(|i| (b"k".to_vec(), format!("v{i}").into_bytes())).collect();
    support::produce(&topic, &records).await;
    let group = support::unique("lagging-group");
    let commit = |offset: i64| {
        let consumer: BaseConsumer = kafka.client_config().set("group.id", &group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(offset)).unwrap();
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    };
    let target = [LagTarget { group: group.clone(), topic: topic.clone() }];
    let (kafka2, target2) = (kafka.clone(), target.clone());
    assert!(
        tokio::task::spawn_blocking(move || measure(&kafka2, &target2)).await.unwrap().is_empty(),
        "no commits, no lag reported"
    );

    commit(4);
    let (kafka2, target2) = (kafka.clone(), target.clone());
    let lags = tokio::task::spawn_blocking(move || measure(&kafka2, &target2)).await.unwrap();
    assert_eq!(lags.len(), 1);
    assert_eq!(lags[0].records, 6, "10 written, 4 committed");
    assert!(lags[0].seconds >= 0.0 && lags[0].seconds < 600.0, "{}", lags[0].seconds);

    commit(10);
    let lags = tokio::task::spawn_blocking(move || measure(&kafka, &target)).await.unwrap();
    assert_eq!((lags[0].records, lags[0].seconds), (0, 0.0));
}
