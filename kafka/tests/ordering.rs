//! A stage's outputs keep their order on each partition when the broker fails produce
//! requests and the producer retries them: `audit verify` reads the order of a commitment's
//! events (`REORDERED_EVENT`), so a retry must never put a later batch before an earlier one.
//! The local broker cannot fail requests on demand; librdkafka's mock cluster can.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use streamscore_kafka::{Ack, KafkaConfig, Sink};

const RECORDS: u32 = 3_000;

#[tokio::test(flavor = "multi_thread")]
async fn outputs_keep_their_partition_order_when_produce_requests_are_retried() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("outputs", 1, 1).unwrap();
    // Requests take 30 ms each way, so several are in flight at once, and every third of the
    // first 60 fails with an error the producer retries.
    cluster.broker_round_trip_time(1, Duration::from_millis(30)).unwrap();
    let errors: Vec<RDKafkaRespErr> = (0..60)
        .map(|i| {
            if i % 3 == 0 {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS
            } else {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
            }
        })
        .collect();
    cluster.request_errors(RDKafkaApiKey::Produce, &errors);

    let kafka = KafkaConfig::new(cluster.bootstrap_servers());
    let sink = Sink::new(&kafka, "ordering-test").unwrap();
    let (tx, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..RECORDS {
        let ack = Ack::new(0, i64::from(i), tx.clone());
        sink.send("outputs", b"tenant", &i.to_be_bytes(), &ack).await.unwrap();
        ack.done();
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await; // a batch every linger
        }
    }
    for _ in 0..RECORDS {
        tokio::time::timeout(Duration::from_secs(60), finished.recv()).await.expect("every output acknowledged");
    }
    assert!(sink.failure().is_none(), "{:?}", sink.failure());

    let consumer: BaseConsumer =
        kafka.client_config().set("group.id", "ordering-test").set("enable.auto.commit", "false").create().unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset("outputs", 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => read.push(u32::from_be_bytes(m.payload().unwrap().try_into().unwrap())),
            Some(Err(e)) => panic!("{e}"),
            None if read.len() >= RECORDS as usize => break,
            None => {}
        }
    }
    let mut first_copies = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for value in &read {
        if seen.insert(*value) {
            first_copies.push(*value);
        }
    }
    assert_eq!(first_copies.len(), RECORDS as usize, "every record arrived");
    let first_break = first_copies.windows(2).position(|w| w[1] < w[0]);
    let around = |i: usize| first_copies[i.saturating_sub(5)..(i + 5).min(first_copies.len())].to_vec();
    assert_eq!(first_break, None, "records in another order than sent: {:?}", first_break.map(around));
}
