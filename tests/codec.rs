//! The codec against a running registry and broker: every schema round-trips, schemas evolve
//! within the rules, bytes interoperate with schema_registry_converter, bad bytes give typed
//! errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use apache_avro::AvroSchema;
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde::{Deserialize, Serialize};
use streamscore_contracts::codec::DecodeError;
use streamscore_contracts::schemas::SchemaFile;
use streamscore_contracts::*;

mod support;
use support::{samples, TestRegistry};

async fn round_trip<T: Event + std::fmt::Debug + PartialEq>(registry: &TestRegistry, topic: &str, sample: &T) {
    let codec = Codec::<T>::with_url(&registry.url, topic);
    let id = codec.register().await.expect("registers");
    assert_eq!(codec.register().await.expect("registers again"), id, "same schema twice, same id");
    let bytes = codec.encode(sample).expect("encodes");
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()), id);
    // A fresh codec has no cached schemas: it must fetch the writer schema by id.
    let reader = Codec::<T>::with_url(&registry.url, topic);
    let decoded = reader.decode(&bytes).await.expect("decodes");
    assert_eq!(decoded.schema_id, id);
    assert_eq!(&decoded.value, sample);
    // What the registry hands back for the id is the contract's schema.
    let body: serde_json::Value =
        streamscore_contracts::http::get_json(&format!("{}/schemas/ids/{id}", registry.url)).await.unwrap();
    let served = apache_avro::Schema::parse_str(body["schema"].as_str().unwrap()).unwrap();
    assert_eq!(served.canonical_form(), T::SCHEMA.parse().canonical_form());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_schema_round_trips_through_the_registry_and_the_codec() {
    let registry = TestRegistry::start().await;
    round_trip(&registry, topics::REQUESTS, &samples::request()).await;
    round_trip(&registry, topics::VALIDATED, &samples::validated()).await;
    round_trip(&registry, topics::PREDICTIONS, &samples::prediction()).await;
    round_trip(&registry, topics::DEAD_LETTER, &samples::dead_letter()).await;
    round_trip(&registry, topics::AUDIT, &samples::audit()).await;
    round_trip(&registry, topics::ALERTS, &samples::alert()).await;
    round_trip(&registry, topics::FEEDBACK, &samples::feedback()).await;
    round_trip(&registry, topics::ROLLOUTS, &samples::rollout()).await;
    round_trip(&registry, topics::IDEMPOTENCY, &samples::idempotent_answer()).await;
    let subjects: Vec<String> =
        streamscore_contracts::http::get_json(&format!("{}/subjects", registry.url)).await.unwrap();
    assert_eq!(subjects.len(), topics::EVENT_TOPICS.len(), "{subjects:?}");
    registry.stop().await;
}

/// The request at v2: one more optional field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
struct InferenceRequestV2 {
    request_id: String,
    tenant: String,
    model: String,
    model_version: Option<String>,
    #[avro(with = streamscore_contracts::events::features_schema)]
    features: streamscore_contracts::Features,
    #[avro(with = streamscore_contracts::lineage::timestamp_micros)]
    created_at: i64,
    reply_to: Option<String>,
    attributes: HashMap<String, String>,
    channel: Option<String>,
}

impl Event for InferenceRequestV2 {
    const SCHEMA: SchemaFile = SchemaFile {
        file: "tests/fixtures/inference_request_v2.avsc",
        full_name: "io.streamscore.v1.InferenceRequest",
        text: include_str!("fixtures/inference_request_v2.avsc"),
    };
}

#[tokio::test(flavor = "multi_thread")]
async fn compatible_evolution_reads_both_ways_and_incompatible_is_refused() {
    let registry = TestRegistry::start().await;
    let topic = support::unique("evolution");
    let v1 = Codec::<InferenceRequest>::with_url(&registry.url, &topic);
    let v2 = Codec::<InferenceRequestV2>::with_url(&registry.url, &topic);
    let id1 = v1.register().await.unwrap();
    let id2 = v2.register().await.expect("a new optional field with a default is backward compatible");
    assert_ne!(id1, id2);
    let versions: Vec<u32> =
        streamscore_contracts::http::get_json(&format!("{}/subjects/{}-value/versions", registry.url, topic))
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2]);

    // Old producer, new consumer: the new field takes its default.
    let old = samples::request();
    let from_old = v2.decode(&v1.encode(&old).unwrap()).await.expect("v2 reads v1");
    assert_eq!(from_old.schema_id, id1);
    assert_eq!(from_old.value.channel, None);
    assert_eq!(from_old.value.features, old.features);

    // New producer, old consumer: the new field is skipped.
    let new = InferenceRequestV2 {
        request_id: old.request_id.clone(),
        tenant: old.tenant.clone(),
        model: old.model.clone(),
        model_version: old.model_version.clone(),
        features: old.features.clone(),
        created_at: old.created_at,
        reply_to: old.reply_to.clone(),
        attributes: old.attributes.clone(),
        channel: Some("mobile".to_owned()),
    };
    let from_new = v1.decode(&v2.encode(&new).unwrap()).await.expect("v1 reads v2");
    assert_eq!(from_new.schema_id, id2);
    assert_eq!(from_new.value, old);

    // A new required field without a default is refused with Confluent's 409.
    let incompatible = include_str!("fixtures/inference_request_incompatible.avsc");
    let response = streamscore_contracts::http::client()
        .post(format!("{}/subjects/{topic}-value/versions", registry.url))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({ "schema": incompatible }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], 409, "{body}");
    registry.stop().await;
}

/// `ValidatedRequest` as version 1 of its schema had it, before ingest handed on what it
/// checked (`tests/fixtures/validated_request_v1.avsc` is that file as it was).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
struct ValidatedRequestV1 {
    lineage: Lineage,
    request: InferenceRequest,
    writer_schema_id: i32,
}

impl Event for ValidatedRequestV1 {
    const SCHEMA: SchemaFile = SchemaFile {
        file: "tests/fixtures/validated_request_v1.avsc",
        full_name: "io.streamscore.v1.ValidatedRequest",
        text: include_str!("fixtures/validated_request_v1.avsc"),
    };
}

/// Version 2 of `ValidatedRequest` (the checked vector and its version) passes the registry's
/// BACKWARD check against version 1, reads version-1 events already on `inference.validated`
/// with both new fields null (infer then checks the features itself), and an infer still on
/// version 1 reads version-2 events.
#[tokio::test(flavor = "multi_thread")]
async fn validated_request_v2_is_backward_compatible_with_v1_data() {
    let registry = TestRegistry::start().await;
    let topic = support::unique("validated-evolution");
    let v1 = Codec::<ValidatedRequestV1>::with_url(&registry.url, &topic);
    let v2 = Codec::<ValidatedRequest>::with_url(&registry.url, &topic);
    let id1 = v1.register().await.unwrap();
    let on_the_topic = v1.encode(&ValidatedRequestV1 {
        lineage: samples::validated().lineage,
        request: samples::request(),
        writer_schema_id: 7,
    });
    let id2 = v2.register().await.expect("two optional fields with null defaults pass the BACKWARD check");
    assert_ne!(id1, id2);

    let old = v2.decode(&on_the_topic.unwrap()).await.expect("version 2 reads version-1 data");
    assert_eq!(old.schema_id, id1);
    assert_eq!((old.value.model_version, old.value.feature_vector), (None, None));
    assert_eq!(old.value.request, samples::request());
    assert_eq!(old.value.writer_schema_id, 7);

    let new = samples::validated();
    assert!(new.feature_vector.is_some());
    let read_by_v1 = v1.decode(&v2.encode(&new).unwrap()).await.expect("version 1 reads version-2 data");
    assert_eq!(read_by_v1.value.request, new.request);
    assert_eq!(read_by_v1.value.lineage, new.lineage);
    registry.stop().await;
}

/// `PredictionOutcome` before explanations (`tests/fixtures/prediction_outcome_v1.avsc` is the
/// file as it was): the same fields, without `explanation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.streamscore.v1")]
struct PredictionOutcomeV1 {
    lineage: Lineage,
    status: OutcomeStatus,
    shadow: bool,
    model: String,
    model_version: Option<String>,
    model_sha256: Option<String>,
    backend: Option<String>,
    score: Option<f64>,
    label: Option<String>,
    reason: Option<String>,
    detail: Option<String>,
    retry_after_ms: Option<i64>,
    #[avro(with = streamscore_contracts::events::features_schema)]
    features: Features,
    batch_size: i32,
    queue_wait_us: i64,
    inference_us: i64,
    #[avro(with = streamscore_contracts::lineage::timestamp_micros)]
    request_created_at: i64,
    reply_to: Option<String>,
}

impl Event for PredictionOutcomeV1 {
    const SCHEMA: SchemaFile = SchemaFile {
        file: "tests/fixtures/prediction_outcome_v1.avsc",
        full_name: "io.streamscore.v1.PredictionOutcome",
        text: include_str!("fixtures/prediction_outcome_v1.avsc"),
    };
}

/// The outcome with `explanation` (optional, null default, appended) passes the registry's
/// BACKWARD check against the version before it, reads the outcomes already on the topic with
/// no explanation, and a consumer still on the old schema reads explained outcomes (the
/// explanation skipped). Both encoders agree: the direct one and apache-avro's through the codec.
#[tokio::test(flavor = "multi_thread")]
async fn the_explanation_field_is_a_backward_compatible_evolution() {
    let registry = TestRegistry::start().await;
    let topic = support::unique("outcome-evolution");
    let v1 = Codec::<PredictionOutcomeV1>::with_url(&registry.url, &topic);
    let v2 = Codec::<PredictionOutcome>::with_url(&registry.url, &topic);
    let id1 = v1.register().await.unwrap();
    let explained = samples::prediction();
    assert!(explained.explanation.is_some());
    let old = PredictionOutcomeV1 {
        lineage: explained.lineage.clone(),
        status: explained.status,
        shadow: explained.shadow,
        model: explained.model.clone(),
        model_version: explained.model_version.clone(),
        model_sha256: explained.model_sha256.clone(),
        backend: explained.backend.clone(),
        score: explained.score,
        label: explained.label.clone(),
        reason: None,
        detail: None,
        retry_after_ms: None,
        features: explained.features.clone(),
        batch_size: explained.batch_size,
        queue_wait_us: explained.queue_wait_us,
        inference_us: explained.inference_us,
        request_created_at: explained.request_created_at,
        reply_to: None,
    };
    let on_the_topic = v1.encode(&old).unwrap();
    let id2 = v2.register().await.expect("an optional field with a null default passes the BACKWARD check");
    assert_ne!(id1, id2);

    let read = v2.decode(&on_the_topic).await.expect("the new schema reads old outcomes").value;
    assert_eq!(read.explanation, None);
    assert_eq!(read.score, old.score);

    let direct = v2
        .encode_outcome(&explained, explained.features.iter().map(|(k, v)| (k.as_str(), *v)))
        .expect("encodes directly");
    assert_eq!(direct, v2.encode(&explained).unwrap(), "the direct encoder writes apache-avro's bytes");
    let by_old_reader = v1.decode(&direct).await.expect("an old consumer reads explained outcomes").value;
    assert_eq!(by_old_reader.score, explained.score);
    assert_eq!(by_old_reader.features, explained.features);
    assert_eq!(v2.decode(&direct).await.unwrap().value, explained, "the new reader gets the explanation");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_interoperate_with_schema_registry_converter() {
    let registry = TestRegistry::start().await;
    let topic = support::unique("interop");
    let ours = Codec::<InferenceRequest>::with_url(&registry.url, &topic);
    ours.register().await.unwrap();
    let sample = samples::request();

    // Their encoder → our decoder.
    let encoder = EasyAvroEncoder::new({
        streamscore_contracts::http::install_provider();
        SrSettings::new(registry.url.clone())
    });
    let strategy = SubjectNameStrategy::TopicNameStrategy(topic.clone(), false);
    let theirs = encoder.encode_struct(&sample, &strategy).await.expect("schema_registry_converter encodes");
    let decoded = ours.decode(&theirs).await.expect("our codec decodes their bytes");
    assert_eq!(decoded.value, sample);
    assert_eq!(Some(decoded.schema_id), ours.schema_id());

    // Our encoder → their decoder.
    let bytes = ours.encode(&sample).unwrap();
    let decoder = EasyAvroDecoder::new({
        streamscore_contracts::http::install_provider();
        SrSettings::new(registry.url.clone())
    });
    let result = decoder.decode(Some(&bytes)).await.expect("schema_registry_converter decodes our bytes");
    let value: InferenceRequest = apache_avro::from_value(&result.value).expect("their value is our request");
    assert_eq!(value, sample);
    registry.stop().await;
}

#[derive(Debug, Deserialize)]
struct CorpusEntry {
    file: String,
    error: String,
    reason: String,
    what: String,
}

/// Walks `tests/corpus/bad-bytes/`: every entry is refused with its typed error and reason.
/// The entries are written by `cargo run --example bad_bytes_corpus`, against a registry whose
/// first registered schema (id 1) is the request schema — as in this test's fresh registry.
#[tokio::test(flavor = "multi_thread")]
async fn the_bad_bytes_corpus_gives_typed_errors() {
    let registry = TestRegistry::start().await;
    let codec = registry.register_corpus_schemas(topics::REQUESTS).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-bytes");
    let manifest: Vec<CorpusEntry> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest.len() >= 8, "corpus has {} entries", manifest.len());
    for entry in &manifest {
        let bytes = std::fs::read(dir.join(&entry.file)).unwrap();
        let err = codec.decode(&bytes).await.expect_err(&format!("{} ({}) must not decode", entry.file, entry.what));
        let kind = match &err {
            DecodeError::Empty => "Empty",
            DecodeError::ShortHeader { .. } => "ShortHeader",
            DecodeError::BadMagic { .. } => "BadMagic",
            DecodeError::UnknownSchema { .. } => "UnknownSchema",
            DecodeError::Incompatible { .. } => "Incompatible",
            DecodeError::Body { .. } => "Body",
            DecodeError::TrailingBytes { .. } => "TrailingBytes",
            DecodeError::Registry { .. } => "Registry",
        };
        assert_eq!(kind, entry.error, "{}: {err}", entry.file);
        assert_eq!(err.reason().code(), entry.reason, "{}: {err}", entry.file);
        assert!(!err.is_retryable(), "{}: bad bytes are never retryable", entry.file);
    }
    registry.stop().await;
}
