//! The infer stage against the real broker and registry: routing (named version, tenant pin,
//! default, unknown version rejected), shadow outcomes flagged, and the fused pipeline turning
//! every produced request into one prediction with lineage back to the request's offset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{
    Codec, InferenceRequest, OutcomeStatus, PredictionOutcome, SourceOffset, ValidatedRequest,
};
use streamscore_infer::{BatchConfig, InferConfig, TractBackend};
use streamscore_kafka::{Ack, Shutdown};
use streamscore_modelstore::{ModelStore, SharedStore};
use streamscore_telemetry::LiveStats;

mod support;
use support::{StageTopics, TestRegistry};

fn validated(offset: i64, tenant: &str, version: Option<&str>) -> ValidatedRequest {
    let request = support::synth_request(
        u64::try_from(offset).unwrap(),
        uuid::Uuid::new_v4().to_string(),
        tenant,
        version,
        streamscore_contracts::now_micros(),
    );
    support::validated_from(request, SourceOffset::new("inference.requests", 0, offset))
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_pins_shadows_and_rejections() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("routing").await;
    let mut config = InferConfig::new(support::kafka(), &registry.url, "test-infer");
    config.predictions_topic = topics.predictions.clone();
    config.audit_topic = support::unique("audit");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&config.audit_topic, 1)])
        .await
        .unwrap();
    config.batch = BatchConfig { max_batch: 8, max_wait: Duration::from_millis(5) };
    config.shadow.insert("fraud".to_owned(), "2".to_owned());
    config.pins.insert("tenant-03".to_owned(), "2".to_owned());
    let store = SharedStore::new(ModelStore::open(support::models_dir()).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    let stats = Arc::new(LiveStats::default());
    let stage = tokio::spawn(streamscore_infer::run(
        config,
        store,
        Arc::new(TractBackend),
        rx,
        Arc::clone(&stats),
        Shutdown::never(),
    ));

    // (offset, tenant, requested version, expected status, expected version, expected shadows)
    let cases = [
        (0, "tenant-01", Some("2"), OutcomeStatus::Scored, "2", 0),
        (1, "tenant-01", None, OutcomeStatus::Scored, "1", 1),
        (2, "tenant-03", None, OutcomeStatus::Scored, "2", 0),
        (3, "tenant-03", Some("1"), OutcomeStatus::Scored, "1", 1),
        (4, "tenant-01", Some("999"), OutcomeStatus::Rejected, "999", 0),
    ];
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let mut requests = HashMap::new();
    for (offset, tenant, version, ..) in cases {
        let v = validated(offset, tenant, version);
        requests.insert(offset, v.request.clone());
        tx.send((v, Ack::new(0, offset, ack_tx.clone()))).await.unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < cases.len() {
        let finished =
            tokio::time::timeout(Duration::from_secs(30), acks.recv()).await.expect("acked in time").unwrap();
        acked.push(finished.offset);
    }
    drop(tx);
    stage.await.unwrap().unwrap();

    let codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let expected_total = cases.len() + cases.iter().map(|c| c.5).sum::<usize>();
    let records = support::read_records(&[&topics.predictions], expected_total, Duration::from_secs(30));
    assert_eq!(records.len(), expected_total, "one outcome per request plus one per shadow");
    let mut outcomes: HashMap<(i64, bool), PredictionOutcome> = HashMap::new();
    for record in &records {
        let outcome = codec.decode(record.payload().unwrap()).await.unwrap().value;
        assert!(outcomes.insert((outcome.lineage.source.offset, outcome.shadow), outcome).is_none(), "no duplicates");
    }
    for (offset, tenant, _, status, version, shadows) in cases {
        let primary = &outcomes[&(offset, false)];
        assert_eq!(primary.status, status, "request {offset}");
        assert_eq!(primary.model_version.as_deref(), Some(version), "request {offset}");
        assert_eq!(primary.lineage.tenant.as_deref(), Some(tenant));
        assert_eq!(primary.lineage.request_id.as_deref(), Some(requests[&offset].request_id.as_str()));
        match status {
            OutcomeStatus::Scored => {
                let score = primary.score.unwrap();
                assert!((0.0..=1.0).contains(&score));
                assert_eq!(primary.backend.as_deref(), Some("cpu"));
                assert_eq!(primary.model_sha256.as_ref().map(String::len), Some(64));
                assert_eq!(primary.features.len(), 16, "the exact feature vector the model saw");
                assert!(primary.batch_size >= 1);
            }
            _ => assert_eq!(primary.reason.as_deref(), Some("UNKNOWN_MODEL_VERSION")),
        }
        match outcomes.get(&(offset, true)) {
            Some(shadow) => {
                assert_eq!(shadows, 1, "request {offset} has a shadow outcome it should not");
                assert_eq!(shadow.model_version.as_deref(), Some("2"));
                assert_ne!(shadow.lineage.event_id, primary.lineage.event_id);
                assert_eq!(shadow.features, primary.features, "the shadow scored the same input");
            }
            None => assert_eq!(shadows, 0, "request {offset} lacks its shadow outcome"),
        }
    }
    assert_eq!(stats.shadow.load(std::sync::atomic::Ordering::Relaxed), 2);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn produced_requests_come_out_as_predictions_with_lineage() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("e2e").await;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(2_000);
    load.tenants = 3;
    load.versions = vec![None, Some("1".to_owned()), Some("2".to_owned())];
    let generated = loadgen::run(&support::kafka(), codec, &load).await.unwrap();
    assert_eq!(generated.good, 2_000);

    let mut ingest = streamscore_ingest::IngestConfig::new(support::kafka(), &registry.url);
    ingest.group_id = support::unique("pipeline");
    ingest.input_topic = topics.requests.clone();
    ingest.dead_letter_topic = topics.dead_letter.clone();
    ingest.predictions_topic = topics.predictions.clone();
    let mut infer = InferConfig::new(support::kafka(), &registry.url, "test-pipeline");
    infer.predictions_topic = topics.predictions.clone();
    infer.audit_topic = support::unique("audit");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&infer.audit_topic, 1)])
        .await
        .unwrap();
    let config = streamscore::pipeline::PipelineConfig {
        ingest,
        infer,
        models: support::models_dir(),
        tenants: streamscore_ingest::Tenants::Any,
        max_record_bytes: 65_536,
        channel_capacity: 1_000,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pipeline = tokio::spawn(streamscore::pipeline::run(config, Arc::new(TractBackend), Arc::default(), async {
        let _ = stopped.await;
    }));
    let predictions = support::read_records(&[&topics.predictions], 2_000, Duration::from_secs(120));
    let _ = stop.send(());
    let summary = pipeline.await.unwrap().unwrap();
    assert_eq!(summary.validated, 2_000);

    // The requests as produced: (partition, offset) -> request id.
    let request_codec = Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests);
    let mut by_source = HashMap::new();
    for record in support::read_records(&[&topics.requests], 2_000, Duration::from_secs(60)) {
        let request = request_codec.decode(record.payload().unwrap()).await.unwrap().value;
        by_source.insert((record.partition(), record.offset()), request);
    }
    assert_eq!(by_source.len(), 2_000);

    let outcome_codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let mut seen = HashMap::new();
    for record in &predictions {
        let outcome = outcome_codec.decode(record.payload().unwrap()).await.unwrap().value;
        assert_eq!(outcome.status, OutcomeStatus::Scored);
        let source = &outcome.lineage.source;
        assert_eq!(source.topic, topics.requests, "lineage points at the request topic");
        let request = by_source.get(&(source.partition, source.offset)).expect("lineage points at a produced request");
        assert_eq!(outcome.lineage.request_id.as_ref(), Some(&request.request_id));
        assert_eq!(outcome.lineage.tenant.as_ref(), Some(&request.tenant));
        assert_eq!(outcome.request_created_at, request.created_at);
        assert_eq!(record.key(), Some(request.tenant.as_bytes()), "keyed by tenant");
        if let Some(version) = &request.model_version {
            assert_eq!(outcome.model_version.as_ref(), Some(version));
        }
        assert!(
            seen.insert(request.request_id.clone(), outcome.lineage.event_id.clone()).is_none(),
            "one prediction per request"
        );
    }
    assert_eq!(seen.len(), 2_000);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_dropped_into_the_store_is_loaded_and_audited() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("reload").await;
    let models = tempfile::tempdir().unwrap();
    let family = models.path().join("fraud");
    std::fs::create_dir_all(family.join("1")).unwrap();
    let shipped = support::models_dir().join("fraud");
    std::fs::copy(shipped.join("model.json"), family.join("model.json")).unwrap();
    for file in ["metadata.json", "model.onnx"] {
        std::fs::copy(shipped.join("1").join(file), family.join("1").join(file)).unwrap();
    }
    let mut config = InferConfig::new(support::kafka(), &registry.url, "test-reload");
    config.predictions_topic = topics.predictions.clone();
    config.audit_topic = support::unique("audit");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&config.audit_topic, 1)])
        .await
        .unwrap();
    config.rescan_every = Some(Duration::from_millis(200));
    let audit_topic = config.audit_topic.clone();
    let store = SharedStore::new(ModelStore::open(models.path()).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    // `auto`: the audit entry and the prediction say which backend runs the version (the CPU
    // here unless this machine has a usable GPU) and that auto was asked for.
    let backend = streamscore_infer::selection::select(streamscore_infer::selection::BackendChoice::Auto).unwrap();
    let runs_on = if streamscore_infer::cuda::CudaBackend::open(0).is_ok() { "cuda" } else { "cpu" };
    let stage = tokio::spawn(streamscore_infer::run(config, store, backend, rx, Arc::default(), Shutdown::never()));

    // Drop version 3 (version 2's network) into the running store.
    let staging = models.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(shipped.join("2/model.onnx"), staging.join("model.onnx")).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shipped.join("2/metadata.json")).unwrap()).unwrap();
    meta["version"] = "3".into();
    std::fs::write(staging.join("metadata.json"), meta.to_string()).unwrap();
    std::fs::rename(&staging, family.join("3")).unwrap();

    let codec = Codec::<streamscore_contracts::AuditRecord>::with_url(&registry.url, &audit_topic);
    let mut loaded = None;
    // The chain's start, its schemas, fraud/1 loaded at start, then fraud/3 once the rescan
    // finds it.
    let waiting = std::time::Instant::now();
    while loaded.is_none() && waiting.elapsed() < Duration::from_secs(30) {
        for record in support::read_all(&[&audit_topic], Duration::from_millis(500)) {
            let entry = codec.decode(record.payload().unwrap()).await.unwrap().value;
            if entry.subject == "fraud/3" {
                loaded = Some(entry);
            }
        }
    }
    let loaded = loaded.expect("the new version's load is in the audit log");
    assert_eq!(loaded.kind, "MODEL_LOADED");
    assert_eq!(loaded.details.get("sha256"), meta["sha256"].as_str().map(str::to_owned).as_ref());
    assert_eq!(loaded.details.get("backend").map(String::as_str), Some(runs_on));
    assert_eq!(loaded.details.get("requested_backend").map(String::as_str), Some("auto"));

    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tx.send((validated(0, "tenant-01", Some("3")), Ack::new(0, 0, ack_tx))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), acks.recv()).await.expect("scored in time");
    drop(tx);
    stage.await.unwrap().unwrap();
    let records = support::read_records(&[&topics.predictions], 1, Duration::from_secs(30));
    let outcome = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions)
        .decode(records[0].payload().unwrap())
        .await
        .unwrap()
        .value;
    assert_eq!(outcome.status, OutcomeStatus::Scored);
    assert_eq!(outcome.model_version.as_deref(), Some("3"));
    assert_eq!(outcome.backend.as_deref(), Some(runs_on));
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_quota_is_rejected_explicitly_and_a_reload_is_audited() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("quota").await;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("tenants.toml");
    std::fs::write(&policy_path, "version = 1\n[tenants.tenant-01]\nrate_per_sec = 1\nburst = 2\n").unwrap();
    let mut config = InferConfig::new(support::kafka(), &registry.url, "test-quota");
    config.predictions_topic = topics.predictions.clone();
    config.audit_topic = support::unique("audit");
    config.quota_state_topic = support::unique("quota-state");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&config.audit_topic, 1)])
        .await
        .unwrap();
    config.rescan_every = Some(Duration::from_millis(200));
    config.policy = Some(policy_path.clone());
    let audit_topic = config.audit_topic.clone();
    let store = SharedStore::new(ModelStore::open(support::models_dir()).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    let stage = tokio::spawn(streamscore_infer::run(
        config,
        store,
        Arc::new(TractBackend),
        rx,
        Arc::default(),
        Shutdown::never(),
    ));
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();

    // Five requests at the same event time against burst 2: two scored, three rejected.
    let t0 = streamscore_contracts::now_micros();
    let send = |offset: i64, at: i64| {
        let mut v = validated(offset, "tenant-01", None);
        v.request.created_at = at;
        (v, Ack::new(0, offset, ack_tx.clone()))
    };
    for offset in 0..5 {
        tx.send(send(offset, t0)).await.unwrap();
    }
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(30), acks.recv()).await.expect("answered").unwrap();
    }

    // Loosen the policy; the stage reloads it and says so in the audit log.
    std::fs::write(&policy_path, "version = 2\n[tenants.tenant-01]\nrate_per_sec = 1000\nburst = 1000\n").unwrap();
    let codec = Codec::<streamscore_contracts::AuditRecord>::with_url(&registry.url, &audit_topic);
    let mut reloaded = None;
    for record in support::read_all(&[&audit_topic], Duration::from_secs(3)) {
        let entry = codec.decode(record.payload().unwrap()).await.unwrap().value;
        if entry.kind == "POLICY_RELOADED" {
            reloaded = Some(entry);
        }
    }
    let reloaded = reloaded.expect("the reload is audited");
    assert_eq!(reloaded.details.get("version").map(String::as_str), Some("2"));
    assert_eq!(reloaded.details.get("sha256").map(String::len), Some(64));

    // One second of event time later: the old policy would admit one, the new one admits all.
    for offset in 5..8 {
        tx.send(send(offset, t0 + 1_000_000)).await.unwrap();
    }
    for _ in 5..8 {
        tokio::time::timeout(Duration::from_secs(30), acks.recv()).await.expect("answered").unwrap();
    }
    drop(tx);
    stage.await.unwrap().unwrap();

    let outcomes = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let mut by_offset = HashMap::new();
    for record in support::read_records(&[&topics.predictions], 8, Duration::from_secs(30)) {
        let o = outcomes.decode(record.payload().unwrap()).await.unwrap().value;
        by_offset.insert(o.lineage.source.offset, o);
    }
    let statuses: Vec<OutcomeStatus> = (0..8).map(|o| by_offset[&o].status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == OutcomeStatus::Scored).count(), 2 + 3, "{statuses:?}");
    for offset in 0..5 {
        let o = &by_offset[&offset];
        if o.status == OutcomeStatus::Rejected {
            assert_eq!(o.reason.as_deref(), Some("QUOTA_EXCEEDED"));
            assert!(o.retry_after_ms.is_some_and(|ms| ms > 0), "a retry hint");
        }
    }
    for offset in 5..8 {
        assert_eq!(by_offset[&offset].status, OutcomeStatus::Scored, "the loosened policy applies at once");
    }
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_error_becomes_an_explicit_failed_outcome() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("broken").await;
    let mut config = InferConfig::new(support::kafka(), &registry.url, "test-broken");
    config.predictions_topic = topics.predictions.clone();
    config.audit_topic = support::unique("audit");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&config.audit_topic, 1)])
        .await
        .unwrap();
    let store = SharedStore::new(ModelStore::open(support::models_dir()).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    let stage = tokio::spawn(streamscore_infer::run(
        config,
        store,
        Arc::new(support::broken::Broken),
        rx,
        Arc::default(),
        Shutdown::never(),
    ));
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    for offset in 0..3 {
        tx.send((validated(offset, "tenant-01", None), Ack::new(0, offset, ack_tx.clone()))).await.unwrap();
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(30), acks.recv()).await.expect("answered, not dropped").unwrap();
    }
    drop(tx);
    stage.await.unwrap().expect("the stage keeps running through model errors");
    let codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let records = support::read_records(&[&topics.predictions], 3, Duration::from_secs(30));
    assert_eq!(records.len(), 3);
    for record in &records {
        let outcome = codec.decode(record.payload().unwrap()).await.unwrap().value;
        assert_eq!(outcome.status, OutcomeStatus::Failed);
        assert_eq!(outcome.reason.as_deref(), Some("MODEL_ERROR"));
        assert!(outcome.detail.as_deref().is_some_and(|d| d.contains("device lost")));
        assert_eq!(outcome.backend.as_deref(), Some("broken"));
    }
    registry.stop().await;
}

/// A version that passes its sha256 but does not load (bytes that are not ONNX) is refused:
/// `MODEL_REFUSED` in the audit log with the reason, requests routed to it rejected with that
/// reason, and the other version served, at start-up and not only on a rescan.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_does_not_load_is_refused_and_audited_and_the_rest_is_served() {
    use sha2::Digest;
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("refused").await;
    let models = tempfile::tempdir().unwrap();
    let family = models.path().join("fraud");
    let shipped = support::models_dir().join("fraud");
    for version in ["1", "2"] {
        std::fs::create_dir_all(family.join(version)).unwrap();
        std::fs::copy(shipped.join(version).join("metadata.json"), family.join(version).join("metadata.json")).unwrap();
        std::fs::copy(shipped.join(version).join("model.onnx"), family.join(version).join("model.onnx")).unwrap();
    }
    std::fs::copy(shipped.join("model.json"), family.join("model.json")).unwrap();
    let garbage = b"these bytes are hashed correctly but are not an ONNX graph";
    std::fs::write(family.join("2/model.onnx"), garbage).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(family.join("2/metadata.json")).unwrap()).unwrap();
    let sha256 = format!("{:x}", sha2::Sha256::digest(garbage));
    meta["sha256"] = sha256.clone().into();
    std::fs::write(family.join("2/metadata.json"), meta.to_string()).unwrap();

    let mut config = InferConfig::new(support::kafka(), &registry.url, "test-refused");
    config.predictions_topic = topics.predictions.clone();
    config.audit_topic = support::unique("audit");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&config.audit_topic, 1)])
        .await
        .unwrap();
    let audit_topic = config.audit_topic.clone();
    let store = SharedStore::new(ModelStore::open(models.path()).unwrap());
    assert!(store.current().refused().is_empty(), "the store itself accepts version 2: its hash matches");
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    let stage = tokio::spawn(streamscore_infer::run(
        config,
        store,
        Arc::new(TractBackend),
        rx,
        Arc::default(),
        Shutdown::never(),
    ));

    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tx.send((validated(0, "tenant-01", Some("2")), Ack::new(0, 0, ack_tx.clone()))).await.unwrap();
    tx.send((validated(1, "tenant-01", Some("1")), Ack::new(0, 1, ack_tx))).await.unwrap();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), acks.recv()).await.expect("answered in time").unwrap();
    }
    drop(tx);
    stage.await.unwrap().expect("the stage ran with one version refused");

    let codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let mut outcomes = HashMap::new();
    for record in support::read_records(&[&topics.predictions], 2, Duration::from_secs(30)) {
        let outcome = codec.decode(record.payload().unwrap()).await.unwrap().value;
        outcomes.insert(outcome.lineage.source.offset, outcome);
    }
    assert_eq!(outcomes[&0].status, OutcomeStatus::Rejected);
    assert_eq!(outcomes[&0].reason.as_deref(), Some("MODEL_REFUSED"));
    assert!(outcomes[&0].detail.as_deref().unwrap_or_default().contains("fraud/2"), "{:?}", outcomes[&0].detail);
    assert_eq!(outcomes[&1].status, OutcomeStatus::Scored);

    let codec = Codec::<streamscore_contracts::AuditRecord>::with_url(&registry.url, &audit_topic);
    let mut entries = Vec::new();
    for record in support::read_all(&[&audit_topic], Duration::from_secs(2)) {
        entries.push(codec.decode(record.payload().unwrap()).await.unwrap().value);
    }
    let refused = entries.iter().find(|e| e.kind == "MODEL_REFUSED").expect("the refusal is audited");
    assert_eq!(refused.subject, "fraud/2");
    assert_eq!(refused.details.get("sha256"), Some(&sha256));
    assert!(refused.details.get("reason").is_some_and(|r| !r.is_empty()));
    assert!(entries.iter().any(|e| e.kind == "MODEL_LOADED" && e.subject == "fraud/1"));
    registry.stop().await;
}

/// `model.json` names a fallback version: a request whose version fails on its batch, or was
/// refused when loaded, is scored by the fallback instead of rejected, its outcome flagged
/// `FALLBACK` with the version that could not and why.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_fails_or_was_refused_falls_back_to_the_models_fallback() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("fallback").await;
    // A store of fraud 1 (the fallback), 2 (fails at run time) and 3 (its file tampered with).
    let dir = tempfile::tempdir().unwrap();
    let fraud = dir.path().join("fraud");
    for (from, to) in [("1", "1"), ("2", "2"), ("1", "3")] {
        std::fs::create_dir_all(fraud.join(to)).unwrap();
        for file in ["model.onnx", "metadata.json", "golden.json"] {
            std::fs::copy(support::models_dir().join("fraud").join(from).join(file), fraud.join(to).join(file))
                .unwrap();
        }
    }
    let meta = fraud.join("3/metadata.json");
    let mut three: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    three["version"] = "3".into();
    std::fs::write(&meta, serde_json::to_vec(&three).unwrap()).unwrap();
    std::fs::write(fraud.join("3/model.onnx"), b"not the model its sha256 names").unwrap();
    let family =
        serde_json::json!({ "name": "fraud", "default_version": "1", "fallback": "1", "versions": ["1", "2", "3"] });
    std::fs::write(fraud.join("model.json"), serde_json::to_vec(&family).unwrap()).unwrap();

    let mut config = InferConfig::new(support::kafka(), &registry.url, "test-fallback");
    config.predictions_topic = topics.predictions.clone();
    config.audit_topic = support::unique("audit");
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&config.audit_topic, 1)])
        .await
        .unwrap();
    let store = SharedStore::new(ModelStore::open(dir.path()).unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    let stage = tokio::spawn(streamscore_infer::run(
        config,
        store,
        Arc::new(support::broken::BrokenVersion("2")),
        rx,
        Arc::default(),
        Shutdown::never(),
    ));
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    for (offset, version) in [(0, "2"), (1, "3"), (2, "1")] {
        tx.send((validated(offset, "tenant-01", Some(version)), Ack::new(0, offset, ack_tx.clone()))).await.unwrap();
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(30), acks.recv()).await.expect("answered").unwrap();
    }
    drop(tx);
    stage.await.unwrap().unwrap();
    let codec = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    let mut by_offset = HashMap::new();
    for record in support::read_records(&[&topics.predictions], 3, Duration::from_secs(30)) {
        let o = codec.decode(record.payload().unwrap()).await.unwrap().value;
        by_offset.insert(o.lineage.source.offset, o);
    }
    for (offset, failed) in [(0, "fraud/2 failed"), (1, "fraud/3 was refused")] {
        let o = &by_offset[&offset];
        assert_eq!(o.status, OutcomeStatus::Scored, "scored, not rejected: {o:?}");
        assert_eq!(o.model_version.as_deref(), Some("1"), "by the fallback");
        assert_eq!(o.reason.as_deref(), Some("FALLBACK"), "flagged");
        let detail = o.detail.clone().unwrap_or_default();
        assert!(detail.contains(failed) && detail.contains("fallback fraud/1"), "{detail}");
        assert!(o.score.is_some());
    }
    assert_eq!(by_offset[&2].reason, None, "a request of the fallback itself is not flagged");
    registry.stop().await;
}
