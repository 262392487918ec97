//! The broker restarted (SIGTERM, then started again on the same storage) mid-stream under the
//! fused pipeline and a producer: nothing is lost — every request the broker holds has its
//! prediction. tansu 0.6 answers requests with errors while it shuts down, so a producer's
//! records can fail then (they were never acknowledged; the producer sees the error) and the
//! pipeline may stop on a write the broker refused; run under a supervisor, as in production,
//! it resumes where it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{Codec, InferenceRequest, PredictionOutcome};
use streamscore_kafka::{KafkaConfig, TopicSpec};

mod support;
use support::{PrivateBroker, TestRegistry};

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let mut broker = PrivateBroker::start();
    let kafka = KafkaConfig::new(&broker.bootstrap);
    // The registry keeps its state on the shared test broker; the data path is on this one.
    let registry = TestRegistry::start().await;
    let (requests, predictions, dead) = ("restart.requests", "restart.predictions", "restart.dead-letter");
    streamscore_kafka::ensure_topics(
        &kafka,
        &[TopicSpec::event(requests, 3), TopicSpec::event(predictions, 3), TopicSpec::event(dead, 2)],
    )
    .await
    .unwrap();

    let config = support::pipeline_config(
        &kafka,
        &registry.url,
        (requests, dead, predictions),
        "restart-pipeline",
        "test-restart",
    );
    // A supervisor: the pipeline runs until told to stop; if it stops on an error (a write the
    // broker refused for good while going down), it is started again, as a process supervisor
    // would. At-least-once holds across both.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let supervisor = tokio::spawn(async move {
        let mut restarts = 0_u32;
        loop {
            let mut stopped = stopped.clone();
            let result = streamscore::pipeline::run(
                config.clone(),
                Arc::new(streamscore_infer::TractBackend),
                Arc::default(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )
            .await;
            match result {
                Ok(_) => return restarts,
                Err(e) => {
                    eprintln!("pipeline stopped: {e:#}; restarting");
                    restarts += 1;
                    assert!(restarts < 10, "the pipeline keeps failing: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, requests));
    let mut load = LoadConfig::new(requests);
    load.rate = Some(500.0);
    load.duration = Some(Duration::from_secs(10));
    load.seed = 21;
    let producing = tokio::spawn({
        let kafka = kafka.clone();
        async move { loadgen::run(&kafka, codec, &load).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart();
        broker
    })
    .await
    .unwrap();
    let generated = producing.await.unwrap().unwrap();
    eprintln!("producer: {} sent, {} not acknowledged across the restart", generated.sent, generated.errors);

    // Every request the broker holds — everything it acknowledged — must be answered.
    let held: HashSet<(i32, i64)> = {
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", support::unique("requests"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[requests]).unwrap();
        let mut held = HashSet::new();
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_secs(3) {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.unwrap();
                held.insert((message.partition(), message.offset()));
                last = Instant::now();
            }
        }
        held
    };
    assert!(held.len() as u64 >= generated.sent - generated.errors, "the broker kept what it acknowledged");
    assert!(held.len() > 2_000, "records on both sides of the restart ({})", held.len());

    let outcomes = Codec::<PredictionOutcome>::with_url(&registry.url, predictions);
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", support::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[predictions]).unwrap();
    let mut answered = HashSet::new();
    let started = Instant::now();
    while !held.is_subset(&answered) && started.elapsed() < Duration::from_secs(120) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let o = outcomes.decode(message.unwrap().payload().unwrap()).await.unwrap().value;
        answered.insert((o.lineage.source.partition, o.lineage.source.offset));
    }
    stop.send(true).unwrap();
    let restarts = supervisor.await.unwrap();
    let missing = held.difference(&answered).count();
    eprintln!(
        "broker restart: {} requests held, {} answered, {restarts} pipeline restarts",
        held.len(),
        answered.len()
    );
    assert_eq!(missing, 0, "every request the broker held is answered across its restart");
    registry.stop().await;
    drop(broker);
}
