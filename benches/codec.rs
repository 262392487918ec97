//! Encode and decode cost of a request (16 features) and a prediction, per event.
//!
//! Run: `cargo bench --bench codec`. Target: decode of a 16-feature request under 2 µs.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use streamscore_contracts::{topics, Codec, InferenceRequest, PredictionOutcome};

#[path = "../tests/support/samples.rs"]
mod samples;

fn codec(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let requests = Codec::<InferenceRequest>::with_url("http://127.0.0.1:9", topics::REQUESTS).with_known_id(1);
    let predictions = Codec::<PredictionOutcome>::with_url("http://127.0.0.1:9", topics::PREDICTIONS).with_known_id(2);
    let request = samples::request();
    let prediction = samples::prediction();
    let request_bytes = requests.encode(&request).expect("encode");
    let prediction_bytes = predictions.encode(&prediction).expect("encode");

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode request (16 features)", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            requests.encode_into(black_box(&request), &mut out).expect("encode");
        })
    });
    group.bench_function("decode request (16 features)", |b| {
        b.iter(|| requests.decode_cached(black_box(&request_bytes)).expect("decode"))
    });
    group.bench_function("decode request via async decode", |b| {
        b.iter(|| runtime.block_on(requests.decode(black_box(&request_bytes))).expect("decode"))
    });
    group.bench_function("encode prediction", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            predictions.encode_into(black_box(&prediction), &mut out).expect("encode");
        })
    });
    group.bench_function("encode prediction (direct encoder, features from a row)", |b| {
        let names: Vec<String> = prediction.features.keys().cloned().collect();
        let row: Vec<f32> = names.iter().map(|n| prediction.features[n] as f32).collect();
        b.iter(|| {
            let features = names.iter().map(String::as_str).zip(row.iter().map(|v| f64::from(*v)));
            predictions.encode_outcome(black_box(&prediction), features).expect("encode")
        })
    });
    group.bench_function("decode prediction", |b| {
        b.iter(|| predictions.decode_cached(black_box(&prediction_bytes)).expect("decode"))
    });
    group.finish();
    println!("encoded sizes: request {} bytes, prediction {} bytes", request_bytes.len(), prediction_bytes.len());
}

criterion_group!(benches, codec);
criterion_main!(benches);
