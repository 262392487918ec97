//! Explanations through the infer stage, against the real broker and registry: explained and
//! unexplained requests in one run, each explained outcome carrying its explanation, the
//! unexplained ones answered without waiting for it (its own lane), a bad `explain` value
//! refused with its reason, and `streamscore explain` recomputing each explanation from the
//! topics bit for bit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use streamscore_contracts::{Codec, OutcomeStatus, PredictionOutcome, SourceOffset};
use streamscore_infer::{Backend, BackendError, BatchConfig, InferConfig, Scorer, TractBackend};
use streamscore_kafka::{Ack, Shutdown};
use streamscore_modelstore::{ModelStore, ModelVersion, SharedStore};
use streamscore_telemetry::LiveStats;

mod support;
use support::{StageTopics, TestRegistry};

/// Tract, slowed down on large batches (an explanation's coalition rows, never the stage's
/// own micro-batches here): an explanation takes seconds, a plain batch milliseconds.
#[derive(Debug)]
struct SlowOnLargeBatches;

#[derive(Debug)]
struct SlowScorer(Arc<dyn Scorer>);

const SLOW_ROWS: usize = 1_000;
const SLOW_BY: Duration = Duration::from_millis(400);

impl Backend for SlowOnLargeBatches {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn load(&self, version: &ModelVersion) -> Result<Arc<dyn Scorer>, BackendError> {
        Ok(Arc::new(SlowScorer(TractBackend.load(version)?)))
    }
}

impl Scorer for SlowScorer {
    fn features(&self) -> usize {
        self.0.features()
    }
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    fn score(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, BackendError> {
        if rows >= SLOW_ROWS {
            std::thread::sleep(SLOW_BY);
        }
        self.0.score(input, rows)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn explained_and_plain_requests_in_one_run_and_streamscore_explain_recomputes_them() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("explain").await;
    let mut config = InferConfig::new(support::kafka(), &registry.url, "test-explain");
    config.predictions_topic = topics.predictions.clone();
    config.audit_topic = support::unique("audit");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&config.audit_topic, 1)])
        .await
        .unwrap();
    config.batch = BatchConfig { max_batch: 64, max_wait: Duration::from_millis(5) };
    config.shadow.insert("fraud".to_owned(), "2".to_owned());
    let store = SharedStore::new(ModelStore::open(support::models_dir()).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(1_000);
    let stage = tokio::spawn(streamscore_infer::run(
        config,
        store,
        Arc::new(SlowOnLargeBatches),
        rx,
        Arc::new(LiveStats::default()),
        Shutdown::never(),
    ));

    // Offsets 0 and 20 explained (fraud/1 with its fraud/2 shadow, and fraud/2), offset 10
    // with a meaningless explain value, the rest plain; all sent at once, so the explained
    // ones share their micro-batches with plain ones.
    let explained = [0_i64, 20];
    let mut requests = HashMap::new();
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let sent = Instant::now();
    for offset in 0..40_i64 {
        let version = if offset == 20 { Some("2") } else { None };
        let mut request = support::synth_request(
            u64::try_from(offset).unwrap() + 100,
            uuid::Uuid::new_v4().to_string(),
            "tenant-01",
            version,
            streamscore_contracts::now_micros(),
        );
        if explained.contains(&offset) {
            request.attributes.insert("explain".to_owned(), "true".to_owned());
        } else if offset == 10 {
            request.attributes.insert("explain".to_owned(), "please".to_owned());
        } else if offset % 2 == 1 {
            request.attributes.insert("explain".to_owned(), "false".to_owned());
        }
        requests.insert(offset, request.clone());
        let validated = support::validated_from(request, SourceOffset::new(&topics.requests, 0, offset));
        tx.send((validated, Ack::new(0, offset, ack_tx.clone()))).await.unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < 40 {
        let finished =
            tokio::time::timeout(Duration::from_secs(60), acks.recv()).await.expect("acked in time").unwrap();
        acked.push((finished.offset, sent.elapsed()));
    }
    drop(tx);
    stage.await.unwrap().unwrap();

    // The plain requests were answered while the explanations were still being computed
    // (each of those takes 8 slowed batches, over 3 s).
    let last_plain = acked.iter().filter(|(o, _)| !explained.contains(o)).map(|(_, t)| *t).max().unwrap();
    let first_explained = acked.iter().filter(|(o, _)| explained.contains(o)).map(|(_, t)| *t).min().unwrap();
    eprintln!("plain requests all answered after {last_plain:?}; the first explained one after {first_explained:?}");
    assert!(
        last_plain < first_explained,
        "the plain requests waited for the explanations: last plain {last_plain:?}, first explained {first_explained:?}"
    );

    let codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    // 40 primaries, and a fraud/2 shadow for every request scored by fraud/1: all but offset
    // 20 (fraud/2 itself) and offset 10 (refused before scoring).
    let expected = 40 + 38;
    let records = support::read_records(&[&topics.predictions], expected, Duration::from_secs(30));
    assert_eq!(records.len(), expected);
    let mut outcomes: HashMap<(i64, bool), PredictionOutcome> = HashMap::new();
    for record in &records {
        let outcome = codec.decode(record.payload().unwrap()).await.unwrap().value;
        outcomes.insert((outcome.lineage.source.offset, outcome.shadow), outcome);
    }
    let shipped = ModelStore::open(support::models_dir()).unwrap();
    for offset in 0..40_i64 {
        let primary = &outcomes[&(offset, false)];
        if offset == 10 {
            assert_eq!(primary.status, OutcomeStatus::Rejected);
            assert_eq!(primary.reason.as_deref(), Some("EXPLAIN_INVALID"));
            assert!(primary.detail.as_deref().unwrap_or_default().contains("\"please\""), "{primary:?}");
            continue;
        }
        assert_eq!(primary.status, OutcomeStatus::Scored, "request {offset}: {primary:?}");
        if let Some(shadow) = outcomes.get(&(offset, true)) {
            assert!(shadow.explanation.is_none(), "a shadow outcome is never explained");
        }
        if !explained.contains(&offset) {
            assert!(primary.explanation.is_none(), "request {offset} did not ask");
            continue;
        }
        let explanation = primary.explanation.as_ref().expect("an explained request's outcome carries it");
        // What infer explained: the features the outcome says the model saw, by its version.
        let version = shipped.get("fraud", primary.model_version.as_deref().unwrap()).unwrap();
        let row: Vec<f32> = version.meta.features.iter().map(|f| primary.features[&f.name] as f32).collect();
        let direct =
            streamscore_infer::explain::explain_row(TractBackend.load(&version).unwrap().as_ref(), &version, &row)
                .unwrap();
        assert!(streamscore_history::explain::bit_equal(explanation, &direct), "request {offset}");
        let score = primary.score.unwrap();
        assert!((explanation.score - score).abs() <= 1e-5, "the explanation's score is the outcome's");
        let sum: f64 = explanation.attributions.iter().map(|a| a.attribution).sum();
        assert!((sum - (explanation.score - explanation.baseline_score)).abs() <= 1e-12);

        // `streamscore explain`: from the topics, the same bits.
        let config = streamscore_history::explain::ExplainConfig {
            kafka: support::kafka(),
            registry_url: registry.url.clone(),
            predictions_topic: topics.predictions.clone(),
            models: support::models_dir(),
            backend: None,
        };
        let request_id = &requests[&offset].request_id;
        let recomputed = streamscore_history::explain::recompute(&config, request_id).await.unwrap();
        assert_eq!(recomputed.comparison, streamscore_history::explain::Comparison::Equal, "request {offset}");
        assert!(streamscore_history::explain::bit_equal(&recomputed.explanation, explanation));
        assert_eq!(recomputed.version, version.meta.version);
        let text = streamscore_history::explain::describe(&recomputed);
        assert!(text.contains("equal, bit for bit") && text.contains(&explanation.top[0].feature), "{text}");
    }

    // A plain request is explained from the topics too (it did not ask live).
    let config = streamscore_history::explain::ExplainConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        predictions_topic: topics.predictions.clone(),
        models: support::models_dir(),
        backend: None,
    };
    let plain = streamscore_history::explain::recompute(&config, &requests[&3].request_id).await.unwrap();
    assert_eq!(plain.comparison, streamscore_history::explain::Comparison::NoLiveExplanation);
    // The refused request has nothing to explain; an unknown id says so.
    let refused =
        streamscore_history::explain::recompute(&config, &requests[&10].request_id).await.unwrap_err().to_string();
    assert!(refused.contains("not scored") && refused.contains("EXPLAIN_INVALID"), "{refused}");
    let unknown = streamscore_history::explain::recompute(&config, "no-such-request").await.unwrap_err().to_string();
    assert!(unknown.contains("no outcome of request no-such-request"), "{unknown}");
    registry.stop().await;
}
