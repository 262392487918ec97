//! Per-event cost of ingest's decision: decode (Confluent framing, Avro, schema cached) and
//! validate (request id, tenant, model routing, 16 features against the model's metadata).
//!
//! Run: `cargo bench --bench ingest`. Target: at least 50,000 events/s of validation work on
//! one core (under 20 µs per event).

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use streamscore_contracts::{topics, Codec, InferenceRequest};
use streamscore_ingest::{Decision, RawRecord, RequestDecider, Tenants};
use streamscore_modelstore::{ModelStore, SharedStore};

fn decide(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let codec = Arc::new(Codec::<InferenceRequest>::with_url("http://127.0.0.1:9", topics::REQUESTS).with_known_id(1));
    let models = ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models")).expect("models");
    let decider = RequestDecider::new(Arc::clone(&codec), "bench")
        .with_tenants(Tenants::parse("tenant-01,tenant-02"))
        .with_models(SharedStore::new(models));
    let mut generator = streamscore_synth::Generator::new(1);
    let request = InferenceRequest {
        request_id: "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f".to_owned(),
        tenant: "tenant-01".to_owned(),
        model: "fraud".to_owned(),
        model_version: None,
        features: generator.next(0).by_name(),
        // Inside ingest's event-time window (the bench's records must validate).
        created_at: streamscore_contracts::now_micros(),
        reply_to: None,
        attributes: Default::default(),
    };
    let good = codec.encode(&request).expect("encode");
    let mut bad_request = request.clone();
    bad_request.features.insert("ip_risk_score".to_owned(), 9.0);
    let bad = codec.encode(&bad_request).expect("encode");
    let record = |value: &'static [u8]| RawRecord {
        topic: topics::REQUESTS,
        partition: 0,
        partitions: 1,
        offset: 1,
        key: Some(b"tenant-01"),
        value: Some(value),
        timestamp_ms: Some(streamscore_contracts::now_micros() / 1000),
    };
    let good: &'static [u8] = Box::leak(good.into_boxed_slice());
    let bad: &'static [u8] = Box::leak(bad.into_boxed_slice());
    assert!(matches!(runtime.block_on(decider.decide(record(good))), Decision::Valid(_)));
    assert!(matches!(runtime.block_on(decider.decide(record(bad))), Decision::DeadLetter(..)));

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decide valid request (decode + validate 16 features)", |b| {
        b.iter(|| runtime.block_on(decider.decide(black_box(record(good)))))
    });
    group.bench_function("decide out-of-range request (dead letter)", |b| {
        b.iter(|| runtime.block_on(decider.decide(black_box(record(bad)))))
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
