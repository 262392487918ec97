//! The ingest stage against the real broker and registry: the bad-input corpus ends in the
//! dead-letter topic with its reason and bytes intact; a mixed stream gives exactly the
//! generator's counts; a stage killed mid-stream loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{Codec, DeadLetter, InferenceRequest, ValidatedRequest};
use streamscore_ingest::{Handoff, IngestConfig, IngestSummary, RequestDecider, Tenants};
use streamscore_modelstore::{ModelStore, SharedStore};
use tokio::sync::oneshot;

mod support;
use support::{StageTopics, TestRegistry};

const TENANTS: &str = "tenant-01,tenant-02,tenant-03,tenant-04";

/// Runs the ingest stage in this process until the returned sender fires.
fn start_ingest(
    registry: &TestRegistry,
    topics: &StageTopics,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<IngestSummary>) {
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let decider = RequestDecider::new(codec, "test-ingest")
        .with_tenants(Tenants::parse(TENANTS))
        .with_models(SharedStore::new(ModelStore::open(support::models_dir()).unwrap()));
    let mut config = IngestConfig::new(support::kafka(), &registry.url);
    config.group_id = support::unique("ingest");
    config.input_topic = topics.requests.clone();
    config.dead_letter_topic = topics.dead_letter.clone();
    config.predictions_topic = topics.predictions.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let handoff = Handoff::Topic { topic: topics.validated.clone() };
    let task = tokio::spawn(async move {
        streamscore_ingest::run(config, decider, handoff, async {
            let _ = rx.await;
        })
        .await
        .expect("ingest runs")
    });
    (tx, task)
}

#[derive(serde::Deserialize)]
struct BytesEntry {
    file: String,
    reason: String,
}

#[derive(serde::Deserialize)]
struct RequestEntry {
    what: String,
    reason: String,
    #[serde(default)]
    set: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    set_features: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    remove_features: Vec<String>,
    #[serde(default)]
    attribute_bytes: usize,
    /// The record key, when it is not the request's tenant.
    #[serde(default)]
    key: Option<String>,
    /// `created_at` = the time the test runs (inside ingest's event-time window).
    #[serde(default)]
    created_now: bool,
}

/// Each bad request of the corpus: what it is, its expected reason, its record key, the request.
fn corpus_requests() -> Vec<(String, String, Vec<u8>, InferenceRequest)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-requests");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("base.json")).unwrap()).unwrap();
    let entries: Vec<RequestEntry> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    entries
        .into_iter()
        .map(|entry| {
            let mut json = base.clone();
            for (field, value) in entry.set {
                json[field] = value;
            }
            let mut request: InferenceRequest = serde_json::from_value(json).unwrap();
            for name in &entry.remove_features {
                request.features.remove(name);
            }
            for (name, value) in entry.set_features {
                let value = match &value {
                    serde_json::Value::String(s) => s.parse::<f64>().unwrap(),
                    other => other.as_f64().unwrap(),
                };
                request.features.insert(name, value);
            }
            if entry.attribute_bytes > 0 {
                request.attributes.insert("padding".to_owned(), "x".repeat(entry.attribute_bytes));
            }
            if entry.created_now {
                request.created_at = streamscore_contracts::now_micros();
            }
            let key = entry.key.map_or_else(|| request.tenant.clone().into_bytes(), String::into_bytes);
            (entry.what, entry.reason, key, request)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bad_input_corpus_is_dead_lettered_with_its_reason_and_bytes() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("corpus").await;
    let codec = registry.register_corpus_schemas(&topics.requests).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");

    // (what, expected reason, key, value)
    let mut expected: Vec<(String, String, Vec<u8>, Vec<u8>)> = Vec::new();
    let bytes_manifest: Vec<BytesEntry> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bad-bytes/manifest.json")).unwrap()).unwrap();
    for entry in bytes_manifest {
        let value = std::fs::read(dir.join("bad-bytes").join(&entry.file)).unwrap();
        expected.push((entry.file, entry.reason, b"tenant-01".to_vec(), value));
    }
    for (what, reason, key, request) in corpus_requests() {
        expected.push((what, reason, key, codec.encode(&request).unwrap()));
    }
    let records: Vec<(Vec<u8>, Vec<u8>)> = expected.iter().map(|(_, _, k, v)| (k.clone(), v.clone())).collect();
    let coordinates = support::produce(&topics.requests, &records).await;

    let (stop, task) = start_ingest(&registry, &topics);
    let outputs =
        support::read_records(&[&topics.dead_letter, &topics.validated], expected.len(), Duration::from_secs(60));
    let _ = stop.send(());
    let summary = task.await.unwrap();
    assert_eq!(summary.dead_lettered as usize, expected.len());
    assert_eq!(summary.validated, 0);

    let dead_letters = Codec::<DeadLetter>::with_url(&registry.url, &topics.dead_letter);
    let mut by_source = HashMap::new();
    for message in &outputs {
        assert_eq!(message.topic(), topics.dead_letter, "nothing in the corpus may validate");
        let dl = dead_letters.decode(message.payload().unwrap()).await.unwrap().value;
        by_source.insert((dl.lineage.source.partition, dl.lineage.source.offset), dl);
    }
    for ((what, reason, key, value), (partition, offset)) in expected.iter().zip(coordinates) {
        let dl = by_source.get(&(partition, offset)).unwrap_or_else(|| panic!("{what}: no dead letter"));
        assert_eq!(dl.reason.code(), reason, "{what}: {}", dl.detail);
        assert_eq!(dl.original_value.as_deref(), Some(&value[..]), "{what}: original bytes kept");
        assert_eq!(dl.original_key.as_deref(), Some(&key[..]), "{what}: original key kept");
        assert_eq!(dl.lineage.source.topic, topics.requests);
        assert!(!dl.detail.is_empty());
    }

    // A refused request that named a reply-to also gets a rejected outcome its caller can read.
    let waiting: Vec<usize> =
        corpus_requests().iter().enumerate().filter(|(_, (_, _, _, r))| r.reply_to.is_some()).map(|(i, _)| i).collect();
    assert!(!waiting.is_empty(), "the corpus has a request with a reply-to");
    let rejections = support::read_records(&[&topics.predictions], waiting.len(), Duration::from_secs(30));
    assert_eq!(rejections.len(), waiting.len());
    let outcomes = Codec::<streamscore_contracts::PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    for record in &rejections {
        let outcome = outcomes.decode(record.payload().unwrap()).await.unwrap().value;
        assert_eq!(outcome.status, streamscore_contracts::OutcomeStatus::Rejected);
        assert_eq!(outcome.reply_to.as_deref(), Some("bridge-1/req-42"));
        let dl = &by_source[&(outcome.lineage.source.partition, outcome.lineage.source.offset)];
        assert_eq!(outcome.reason.as_deref(), Some(dl.reason.code()), "the caller learns the dead-letter reason");
    }
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_stream_gives_exactly_the_generators_counts() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("mixed").await;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(3_000);
    load.tenants = 4;
    load.tenant_skew = 1.0;
    load.versions = vec![None, Some("1".to_owned()), Some("2".to_owned())];
    load.bad_share = 0.2;
    load.seed = 11;
    let generated = loadgen::run(&support::kafka(), Arc::clone(&codec), &load).await.unwrap();
    assert_eq!(generated.errors, 0);

    // A second producer on the v2 schema (one more optional field) — also valid.
    let v2: serde_json::Value = serde_json::from_str(include_str!("fixtures/inference_request_v2.avsc")).unwrap();
    let response = registry.register(&format!("{}-value", topics.requests), &v2.to_string()).await;
    let v2_id = u32::try_from(response["id"].as_u64().expect("v2 registers")).unwrap();
    let v2_schema = apache_avro::Schema::parse(&v2).unwrap();
    let mut v2_records = Vec::new();
    for i in 0..200_u64 {
        let mut value = apache_avro::to_value(&support::samples::request()).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut value {
            for (name, field) in fields.iter_mut() {
                match name.as_str() {
                    "request_id" => *field = apache_avro::types::Value::String(uuid::Uuid::new_v4().to_string()),
                    "tenant" => *field = apache_avro::types::Value::String("tenant-02".to_owned()),
                    // Inside ingest's event-time window.
                    "created_at" => {
                        let now = streamscore_contracts::now_micros();
                        *field = match field {
                            apache_avro::types::Value::TimestampMicros(_) => {
                                apache_avro::types::Value::TimestampMicros(now)
                            }
                            _ => apache_avro::types::Value::Long(now),
                        }
                    }
                    "model_version" => {
                        *field = apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))
                    }
                    "features" => {
                        let mut generator = streamscore_synth::Generator::new(i);
                        let t = generator.next(0);
                        *field = apache_avro::types::Value::Map(
                            streamscore_synth::FEATURES
                                .iter()
                                .zip(t.features)
                                .map(|(f, v)| (f.name.to_owned(), apache_avro::types::Value::Double(v)))
                                .collect(),
                        );
                    }
                    _ => {}
                }
            }
            fields.push((
                "channel".to_owned(),
                apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::String("mobile".to_owned()))),
            ));
        }
        let mut bytes = vec![0];
        bytes.extend_from_slice(&v2_id.to_be_bytes());
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&v2_schema).build().unwrap();
        bytes.extend(writer.write_value_to_vec(value).unwrap());
        v2_records.push((b"tenant-02".to_vec(), bytes));
    }
    support::produce(&topics.requests, &v2_records).await;

    let total = usize::try_from(generated.sent).unwrap() + v2_records.len();
    let (stop, task) = start_ingest(&registry, &topics);
    let outputs = support::read_records(&[&topics.dead_letter, &topics.validated], total, Duration::from_secs(90));
    let _ = stop.send(());
    task.await.unwrap();
    assert_eq!(outputs.len(), total, "one output per input");

    let validated_codec = Codec::<ValidatedRequest>::with_url(&registry.url, &topics.validated);
    let dead_letter_codec = Codec::<DeadLetter>::with_url(&registry.url, &topics.dead_letter);
    let mut validated = 0_u64;
    let mut validated_v2 = 0_u64;
    let mut tenants = HashSet::new();
    let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
    for message in &outputs {
        if message.topic() == topics.validated {
            let v = validated_codec.decode(message.payload().unwrap()).await.unwrap().value;
            validated += 1;
            validated_v2 += u64::from(v.writer_schema_id == i32::try_from(v2_id).unwrap());
            tenants.insert(v.request.tenant);
        } else {
            let dl = dead_letter_codec.decode(message.payload().unwrap()).await.unwrap().value;
            *reasons.entry(dl.reason.code()).or_default() += 1;
        }
    }
    assert_eq!(validated, generated.good + 200);
    assert_eq!(validated_v2, 200, "the v2 producer's records validate with their schema id");
    assert_eq!(reasons, generated.bad, "dead letters by reason equal the generator's counts");
    assert!(tenants.len() >= 3, "several tenants: {tenants:?}");
    registry.stop().await;
}

/// Tenant binding: a tenant with Kafka principals is accepted only on its own topic, and its
/// topic carries only its requests; other tenants stay on the shared topic (`TENANT_MISMATCH`
/// otherwise, with the reason and the original bytes).
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_bound_to_principals_is_accepted_only_on_its_own_topic() {
    use streamscore_ingest::TenantTopics;
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("bound").await;
    let bound = TenantTopics::new(&topics.requests, ["tenant-01"]);
    let own_topic = bound.topic_of("tenant-01").unwrap().to_owned();
    streamscore_kafka::ensure_topics(&support::kafka(), &[streamscore_kafka::TopicSpec::event(&own_topic, 1)])
        .await
        .unwrap();
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    codec.register().await.unwrap();
    let request = |i: u64, tenant: &str| {
        let request = support::synth_request(
            i,
            uuid::Uuid::new_v4().to_string(),
            tenant,
            None,
            streamscore_contracts::now_micros(),
        );
        (tenant.as_bytes().to_vec(), codec.encode(&request).unwrap())
    };
    // (topic, tenant, accepted)
    let cases = [
        (topics.requests.clone(), "tenant-01", false),
        (own_topic.clone(), "tenant-02", false),
        (own_topic.clone(), "tenant-01", true),
        (topics.requests.clone(), "tenant-02", true),
    ];
    for (i, (topic, tenant, _)) in cases.iter().enumerate() {
        support::produce(topic, &[request(i as u64, tenant)]).await;
    }

    let decider = RequestDecider::new(Arc::clone(&codec), "test-ingest")
        .with_tenants(Tenants::parse(TENANTS))
        .with_tenant_topics(bound.clone())
        .with_models(SharedStore::new(ModelStore::open(support::models_dir()).unwrap()));
    let mut config = IngestConfig::new(support::kafka(), &registry.url);
    config.group_id = support::unique("ingest");
    config.input_topic = topics.requests.clone();
    config.tenant_topics = bound.topics();
    config.dead_letter_topic = topics.dead_letter.clone();
    config.predictions_topic = topics.predictions.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let handoff = Handoff::Topic { topic: topics.validated.clone() };
    let task = tokio::spawn(streamscore_ingest::run(config, decider, handoff, async {
        let _ = stopped.await;
    }));
    let outputs =
        support::read_records(&[&topics.dead_letter, &topics.validated], cases.len(), Duration::from_secs(60));
    let _ = stop.send(());
    let summary = task.await.unwrap().unwrap();
    assert_eq!((summary.validated, summary.dead_lettered), (2, 2), "{summary:?}");

    let dead_letters = Codec::<DeadLetter>::with_url(&registry.url, &topics.dead_letter);
    let validated = Codec::<ValidatedRequest>::with_url(&registry.url, &topics.validated);
    let mut seen = HashSet::new();
    for message in &outputs {
        if message.topic() == topics.dead_letter {
            let dl = dead_letters.decode(message.payload().unwrap()).await.unwrap().value;
            assert_eq!(dl.reason.code(), "TENANT_MISMATCH", "{}", dl.detail);
            let tenant = String::from_utf8(dl.original_key.clone().unwrap()).unwrap();
            assert!(cases.iter().any(|(t, n, ok)| !ok && *t == dl.lineage.source.topic && *n == tenant));
            assert!(dl.detail.contains(&own_topic), "the detail names the bound topic: {}", dl.detail);
            seen.insert((dl.lineage.source.topic.clone(), tenant, false));
        } else {
            let v = validated.decode(message.payload().unwrap()).await.unwrap().value;
            seen.insert((v.lineage.source.topic.clone(), v.request.tenant.clone(), true));
        }
    }
    let expected: HashSet<(String, String, bool)> =
        cases.iter().map(|(t, n, ok)| (t.clone(), (*n).to_owned(), *ok)).collect();
    assert_eq!(seen, expected);
    registry.stop().await;
}
