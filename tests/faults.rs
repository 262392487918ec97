//! Faults lose nothing and stall nothing, against the real broker and a real registry:
//!
//! - the registry unreachable, slow, or answering 5xx, 429, 401 or a non-JSON 404 on schema
//!   lookups: records wait with backoff, are never dead-lettered and never committed, and
//!   SIGTERM still stops the stage within 10 s — for `streamscore ingest` and for
//!   `streamscore infer` on its own; restarted against a healthy registry, every record comes
//!   out;
//! - a record whose dead letter would exceed the producer's limit is still dead-lettered, its
//!   value cut, its length and sha256 kept, and ingest goes on;
//! - a panicking scorer stops the fused pipeline with an error that says so; a restart
//!   resumes without loss.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{
    Codec, DeadLetter, DeadLetterReason, InferenceRequest, PredictionOutcome, ValidatedRequest,
};

mod support;
use support::faulty_registry::{Fault, FaultyRegistry};
use support::{StageTopics, TestRegistry};

/// The lookup faults every stage must wait out, each with what it stands for.
fn lookup_faults() -> Vec<(&'static str, Fault)> {
    vec![
        ("503 with Confluent's JSON", Fault::confluent(503, 50003)),
        ("500 with Confluent's JSON (50001)", Fault::confluent(500, 50001)),
        ("504 from a gateway, HTML", Fault::html(504)),
        ("429 rate limited", Fault::confluent(429, 429)),
        ("401 unauthorized", Fault::confluent(401, 40101)),
        ("404 that is not Confluent's JSON (a proxy)", Fault::html(404)),
        ("connection dropped", Fault::Drop),
        ("slow: 3 s per answer", Fault::Slow(Duration::from_secs(3))),
    ]
}

/// Committed offsets of `group` on `topic`, per partition (only those with a commit).
/// A stage process, killed if the test ends without stopping it.
struct Stage(Child);

impl Stage {
    fn spawn(args: &[&str]) -> Self {
        let (subcommand, rest) = args.split_first().expect("a subcommand");
        Self(support::streamscore(subcommand).args(rest).spawn().expect("starting streamscore"))
    }

    /// SIGTERM, then the time until the process exited cleanly (panics after 20 s).
    fn terminate(&mut self) -> Duration {
        let (took, status) = self.terminate_with_status();
        assert!(status.success(), "a stop request is a clean exit: {status}");
        took
    }

    /// SIGTERM, then the time until the process exited and how (panics after 20 s).
    fn terminate_with_status(&mut self) -> (Duration, std::process::ExitStatus) {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().unwrap();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return (started.elapsed(), status);
            }
            assert!(started.elapsed() < Duration::from_secs(20), "still running 20 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Holds the registry in each lookup fault until the stage has retried under it; nothing may
/// come out of the stage meanwhile.
async fn ride_out_faults(proxy: &FaultyRegistry, outputs: &[&str]) {
    for (what, fault) in lookup_faults() {
        proxy.set(fault);
        // The stage's backoff tops out at 5 s; a slow answer takes 3 more.
        proxy.wait_faulted(1, Duration::from_secs(20)).await;
        let out = tokio::task::block_in_place(|| support::read_records(outputs, 1, Duration::from_millis(300)));
        assert!(out.is_empty(), "{what}: records must wait, but {} came out", out.len());
    }
}

/// Runs `streamscore <args>` with the registry hanging on lookups, then stops it with SIGTERM:
/// it must stop within 10 s, having written nothing.
async fn sigterm_while_the_registry_hangs(proxy: &FaultyRegistry, args: &[&str], outputs: &[&str]) {
    proxy.set(Fault::Slow(Duration::from_secs(600)));
    let mut stage = Stage::spawn(args);
    proxy.wait_faulted(1, Duration::from_secs(60)).await;
    let (took, status) = stage.terminate_with_status();
    // A clean stop (0), or 143 when the stop came while a part of the stage was still starting
    // (standalone infer reads records while its scoring half registers its contracts): README
    // "Stopping".
    assert!(matches!(status.code(), Some(0 | 143)), "a stop request is a clean exit: {status}");
    assert!(took < Duration::from_secs(10), "SIGTERM while the registry hangs stopped the stage in {took:?}");
    assert!(tokio::task::block_in_place(|| support::read_records(outputs, 1, Duration::from_millis(300))).is_empty());
    proxy.set(Fault::Pass);
}

fn ingest_config(registry: &str, topics: &StageTopics, group: &str) -> streamscore_ingest::IngestConfig {
    let mut config = streamscore_ingest::IngestConfig::new(support::kafka(), registry);
    config.group_id = group.to_owned();
    config.input_topic = topics.requests.clone();
    config.dead_letter_topic = topics.dead_letter.clone();
    config.predictions_topic = topics.predictions.clone();
    config
}

fn ingest_decider(registry: &str, topics: &StageTopics) -> streamscore_ingest::RequestDecider {
    streamscore_ingest::RequestDecider::new(Arc::new(Codec::with_url(registry, &topics.requests)), "test-faults")
        .with_models(streamscore_modelstore::SharedStore::new(
            streamscore_modelstore::ModelStore::open(support::models_dir()).unwrap(),
        ))
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_waits_out_every_registry_fault_and_stops_on_sigterm() {
    let registry = TestRegistry::start().await;
    let proxy = FaultyRegistry::start(&registry.url).await;
    let topics = StageTopics::create("ingest-faults").await;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(200);
    load.seed = 11;
    let generated = loadgen::run(&support::kafka(), codec, &load).await.unwrap();
    let group = support::unique("ingest-faults");
    let outputs = [topics.validated.as_str(), topics.dead_letter.as_str()];

    // Every fault in turn, the stage in this process: records wait, nothing is committed.
    proxy.set(Fault::confluent(503, 50003));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stage = tokio::spawn(streamscore_ingest::run(
        ingest_config(&proxy.url, &topics, &group),
        ingest_decider(&proxy.url, &topics),
        streamscore_ingest::Handoff::Topic { topic: topics.validated.clone() },
        async {
            let _ = stopped.await;
        },
    ));
    ride_out_faults(&proxy, &outputs).await;
    stop.send(()).unwrap();
    let summary = stage.await.unwrap().expect("a stop while records wait is a clean stop");
    assert_eq!((summary.validated, summary.dead_lettered), (0, 0));
    assert_eq!(
        support::outcomes::committed(&group, &topics.requests, 3),
        vec![],
        "nothing is committed while records wait"
    );

    // The real process, SIGTERM while the registry hangs.
    let bootstrap = support::bootstrap();
    let models = support::models_dir().display().to_string();
    let args = [
        "ingest",
        "--bootstrap",
        &bootstrap,
        "--registry-url",
        &proxy.url,
        "--input-topic",
        &topics.requests,
        "--validated-topic",
        &topics.validated,
        "--dead-letter-topic",
        &topics.dead_letter,
        "--group",
        &group,
        "--tenants",
        "*",
        "--models",
        &models,
    ];
    sigterm_while_the_registry_hangs(&proxy, &args, &outputs).await;
    assert_eq!(support::outcomes::committed(&group, &topics.requests, 3), vec![]);

    // Restarted with the registry healthy: every record validated, none dead-lettered.
    let mut again = Stage::spawn(&args);
    let validated =
        tokio::task::block_in_place(|| support::read_records(&[&topics.validated], 200, Duration::from_secs(60)));
    again.terminate();
    let validated_codec = Codec::<ValidatedRequest>::with_url(&registry.url, &topics.validated);
    let mut sources = HashSet::new();
    for record in &validated {
        let v = validated_codec.decode(record.payload().unwrap()).await.unwrap().value;
        sources.insert((v.lineage.source.partition, v.lineage.source.offset));
    }
    assert_eq!(sources.len() as u64, generated.sent, "every record validated after the outage");
    assert!(support::read_records(&[&topics.dead_letter], 1, Duration::from_secs(1)).is_empty(), "no dead letters");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standalone_infer_waits_out_every_registry_fault_and_stops_on_sigterm() {
    let registry = TestRegistry::start().await;
    let proxy = FaultyRegistry::start(&registry.url).await;
    let topics = StageTopics::create("infer-faults").await;
    let codec = Codec::<ValidatedRequest>::with_url(&registry.url, &topics.validated);
    codec.register().await.unwrap();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..100_u64)
        .map(|i| {
            let request = support::synth_request(
                i,
                uuid::Uuid::new_v4().to_string(),
                "tenant-01",
                None,
                streamscore_contracts::now_micros(),
            );
            let source = streamscore_contracts::SourceOffset::new("inference.requests", 0, i64::try_from(i).unwrap());
            (b"tenant-01".to_vec(), codec.encode(&support::validated_from(request, source)).unwrap())
        })
        .collect();
    support::produce(&topics.validated, &records).await;
    let group = support::unique("infer-faults");
    let outputs = [topics.predictions.as_str(), topics.dead_letter.as_str()];

    // Every fault in turn, the stage in this process.
    let mut config = streamscore_infer::InferConfig::new(support::kafka(), &proxy.url, "test-infer-faults");
    config.predictions_topic = topics.predictions.clone();
    config.audit_topic = support::unique("audit");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&config.audit_topic, 1)])
        .await
        .unwrap();
    let input = streamscore_infer::source::ValidatedInput {
        topic: topics.validated.clone(),
        group: group.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        checkpoints: None,
        audit_topic: config.audit_topic.clone(),
        instance: "test-infer-faults".to_owned(),
        drain_timeout: Duration::from_secs(5),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    let store = streamscore_modelstore::SharedStore::new(
        streamscore_modelstore::ModelStore::open(support::models_dir()).unwrap(),
    );
    let infer = tokio::spawn(streamscore_infer::run(
        config,
        store,
        Arc::new(streamscore_infer::TractBackend),
        rx,
        Arc::default(),
        streamscore_kafka::Shutdown::never(),
    ));
    proxy.set(Fault::confluent(503, 50003));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let source = tokio::spawn({
        let (proxy_url, input) = (proxy.url.clone(), input.clone());
        async move {
            streamscore_infer::source::consume_validated(&support::kafka(), &proxy_url, &input, tx, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    ride_out_faults(&proxy, &outputs).await;
    stop.send(()).unwrap();
    source.await.unwrap().expect("a stop while records wait is a clean stop");
    infer.await.unwrap().expect("infer drains and stops");
    assert_eq!(
        support::outcomes::committed(&group, &topics.validated, 3),
        vec![],
        "nothing is committed while records wait"
    );

    // The real process, SIGTERM while the registry hangs.
    let bootstrap = support::bootstrap();
    let models = support::models_dir().display().to_string();
    let args = [
        "infer",
        "--bootstrap",
        &bootstrap,
        "--registry-url",
        &proxy.url,
        "--validated-topic",
        &topics.validated,
        "--predictions-topic",
        &topics.predictions,
        "--dead-letter-topic",
        &topics.dead_letter,
        "--group",
        &group,
        "--models",
        &models,
    ];
    sigterm_while_the_registry_hangs(&proxy, &args, &outputs).await;
    assert_eq!(support::outcomes::committed(&group, &topics.validated, 3), vec![]);

    let mut again = Stage::spawn(&args);
    let predictions =
        tokio::task::block_in_place(|| support::read_records(&[&topics.predictions], 100, Duration::from_secs(60)));
    again.terminate();
    let outcomes = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let mut requests = HashSet::new();
    for record in &predictions {
        let o = outcomes.decode(record.payload().unwrap()).await.unwrap().value;
        assert_eq!(o.status, streamscore_contracts::OutcomeStatus::Scored);
        requests.insert(o.lineage.request_id.unwrap());
    }
    assert_eq!(requests.len(), 100, "every validated request scored after the outage");
    assert!(support::read_records(&[&topics.dead_letter], 1, Duration::from_secs(1)).is_empty(), "no dead letters");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_too_large_for_its_dead_letter_is_cut_and_ingest_goes_on() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("oversized").await;
    let codec = Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests);
    codec.register().await.unwrap();
    // 1.2 MB: over ingest's 64 KiB limit (TOO_LARGE) and over the producer's 1 MB record limit
    // once wrapped in a dead letter.
    let mut huge =
        codec.encode(&support::synth_request(1, uuid::Uuid::new_v4().to_string(), "tenant-01", None, 0)).unwrap();
    huge.extend(std::iter::repeat_n(0xAB_u8, 1_200_000));
    let good = codec
        .encode(&support::synth_request(
            2,
            uuid::Uuid::new_v4().to_string(),
            "tenant-01",
            None,
            streamscore_contracts::now_micros(),
        ))
        .unwrap();
    let producer: rdkafka::producer::FutureProducer =
        support::kafka().client_config().set("message.max.bytes", "2000000").create().unwrap();
    // Both on tenant-01's partition (where its requests are decided), one after the other.
    let partition = streamscore_contracts::partition::partition_for(b"tenant-01", 3);
    for value in [&huge, &good] {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topics.requests)
                    .key("tenant-01")
                    .payload(value)
                    .partition(partition),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let decider = streamscore_ingest::RequestDecider::new(Arc::new(codec), "test-oversized").with_models(
        streamscore_modelstore::SharedStore::new(
            streamscore_modelstore::ModelStore::open(support::models_dir()).unwrap(),
        ),
    );
    let mut config = streamscore_ingest::IngestConfig::new(support::kafka(), &registry.url);
    config.group_id = support::unique("oversized");
    config.input_topic = topics.requests.clone();
    config.dead_letter_topic = topics.dead_letter.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stage = tokio::spawn(streamscore_ingest::run(
        config,
        decider,
        streamscore_ingest::Handoff::Topic { topic: topics.validated.clone() },
        async {
            let _ = stopped.await;
        },
    ));
    let validated = support::read_records(&[&topics.validated], 1, Duration::from_secs(60));
    assert_eq!(validated.len(), 1, "the record after the huge one is validated: ingest went on");
    let dead = support::read_records(&[&topics.dead_letter], 1, Duration::from_secs(30));
    stop.send(()).unwrap();
    let summary = stage.await.unwrap().expect("ingest stopped cleanly");
    assert_eq!((summary.validated, summary.dead_lettered), (1, 1));

    let dl = Codec::<DeadLetter>::with_url(&registry.url, &topics.dead_letter)
        .decode(dead[0].payload().unwrap())
        .await
        .unwrap()
        .value;
    assert!(dead[0].payload().unwrap().len() <= streamscore_kafka::config::MESSAGE_MAX_BYTES);
    assert_eq!(dl.reason, DeadLetterReason::TooLarge);
    assert_eq!(dl.original_value_length, Some(i64::try_from(huge.len()).unwrap()));
    assert_eq!(dl.original_value_sha256, Some(streamscore_contracts::sha256_hex(&huge)));
    let kept = dl.original_value.unwrap();
    assert!(kept.len() < huge.len() && !kept.is_empty());
    assert_eq!(kept[..], huge[..kept.len()], "the value's first bytes are kept");
    registry.stop().await;
}

/// A backend whose scorer panics.
#[derive(Debug)]
struct Panicking;

#[derive(Debug)]
struct PanickingScorer;

impl streamscore_infer::Scorer for PanickingScorer {
    fn features(&self) -> usize {
        16
    }
    fn backend(&self) -> &'static str {
        "cpu"
    }
    fn score(&self, _: &[f32], _: usize) -> Result<Vec<f32>, streamscore_infer::BackendError> {
        panic!("injected scorer panic")
    }
}

impl streamscore_infer::Backend for Panicking {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn load(
        &self,
        _: &streamscore_modelstore::ModelVersion,
    ) -> Result<Arc<dyn streamscore_infer::Scorer>, streamscore_infer::BackendError> {
        Ok(Arc::new(PanickingScorer))
    }
}

fn pipeline_config(
    registry: &TestRegistry,
    topics: &StageTopics,
    group: &str,
) -> streamscore::pipeline::PipelineConfig {
    let mut config = support::pipeline_config(&support::kafka(), &registry.url, topics.pipeline(), group, "test-panic");
    config.infer.audit_topic = support::unique("audit");
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_scorer_stops_the_pipeline_and_a_restart_loses_nothing() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("panic").await;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(500);
    load.seed = 3;
    let generated = loadgen::run(&support::kafka(), codec, &load).await.unwrap();
    let group = support::unique("panic");

    let stopped = tokio::time::timeout(
        Duration::from_secs(60),
        streamscore::pipeline::run(
            pipeline_config(&registry, &topics, &group),
            Arc::new(Panicking),
            Arc::default(),
            std::future::pending(),
        ),
    )
    .await
    .expect("the pipeline stops by itself");
    let error = format!("{:#}", stopped.expect_err("a panic is an error"));
    assert!(error.contains("panicked") && error.contains("injected scorer panic"), "says what happened: {error}");
    let before = support::read_records(&[&topics.predictions], 1, Duration::from_secs(1)).len();
    assert_eq!(before, 0, "nothing was scored by the panicking scorer");

    // Restarted with a working backend: every request gets its prediction.
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let again = tokio::spawn(streamscore::pipeline::run(
        pipeline_config(&registry, &topics, &group),
        Arc::new(streamscore_infer::TractBackend),
        Arc::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let records = support::read_records(&[&topics.predictions], 500, Duration::from_secs(60));
    stop.send(()).unwrap();
    again.await.unwrap().expect("the restarted pipeline runs");
    let outcomes = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let mut sources = HashSet::new();
    for record in &records {
        let o = outcomes.decode(record.payload().unwrap()).await.unwrap().value;
        assert_eq!(o.status, streamscore_contracts::OutcomeStatus::Scored);
        sources.insert(o.lineage.source.offset + 1_000_000 * i64::from(o.lineage.source.partition));
    }
    assert_eq!(sources.len() as u64, generated.sent, "no request lost to the panic");
    registry.stop().await;
}

/// Records whose schema ids the registry does not know (random ids on the wire) are looked up
/// together, not one round trip per record, each id once; each becomes an `UNKNOWN_SCHEMA`
/// dead letter and nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_schema_ids_are_looked_up_concurrently_and_once_each() {
    let registry = TestRegistry::start().await;
    let proxy = FaultyRegistry::start(&registry.url).await;
    let topics = StageTopics::create("unknown-ids").await;
    // 60 records with 30 distinct ids no one registered (each twice), one Avro-ish byte after.
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..60_u32)
        .map(|i| {
            let mut value = vec![0];
            value.extend_from_slice(&(1_000_000 + i % 30).to_be_bytes());
            value.push(0);
            (b"tenant-01".to_vec(), value)
        })
        .collect();
    support::produce(&topics.requests, &records).await;
    // Slow lookups: one at a time, the stage would hold each record for a full round trip.
    proxy.set(Fault::Slow(Duration::from_millis(200)));
    let group = support::unique("unknown-ids");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stage = tokio::spawn(streamscore_ingest::run(
        ingest_config(&proxy.url, &topics, &group),
        ingest_decider(&proxy.url, &topics),
        streamscore_ingest::Handoff::Topic { topic: topics.validated.clone() },
        async {
            let _ = stopped.await;
        },
    ));
    let dead = tokio::task::block_in_place(|| {
        support::read_records(&[&topics.dead_letter], records.len(), Duration::from_secs(60))
    });
    stop.send(()).unwrap();
    let summary = stage.await.unwrap().unwrap();
    assert_eq!(summary.dead_lettered, 60);
    assert_eq!(dead.len(), 60);
    let codec = Codec::<streamscore_contracts::DeadLetter>::with_url(&registry.url, &topics.dead_letter);
    for record in &dead {
        let dl = codec.decode(record.payload().unwrap()).await.unwrap().value;
        assert_eq!(dl.reason.code(), "UNKNOWN_SCHEMA", "{}", dl.detail);
    }
    assert_eq!(proxy.lookups(), 30, "each unknown id is looked up once (then remembered for its TTL)");
    assert!(proxy.most_in_flight() > 1, "lookups ran one at a time ({} at most)", proxy.most_in_flight());
    registry.stop().await;
}
