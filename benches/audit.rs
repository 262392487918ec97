//! What the audit log costs the pipeline per event: the HMAC of an output's bytes, and its
//! share of the batch's commitment entry (the `event_id:hash` list and the entry's own HMAC),
//! for batches of 64 and 256 events; an event's lineage (its UUIDv5 id). And `verify` itself over 100,000 events in memory.
//!
//! Run: `cargo bench --bench audit`. Target: the commitment ≤ 1 µs per event; verify ≥ 100k
//! events/s (the whole command, reading the broker, is in `pipeline_load`'s drain).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use streamscore_contracts::audit::{
    commitment_details, kinds, verify, AuditChain, AuditKey, Position, SeenEntry, SeenEvent, Window,
};
use streamscore_contracts::lineage::Stage;
use streamscore_contracts::{topics, Codec, PredictionOutcome};

#[path = "../tests/support/samples.rs"]
mod samples;

fn audit(c: &mut Criterion) {
    let key = AuditKey::new(b"0123456789abcdef0123456789abcdef");
    let predictions = Codec::<PredictionOutcome>::with_url("http://127.0.0.1:9", topics::PREDICTIONS).with_known_id(2);
    let bytes = predictions.encode(&samples::prediction()).expect("encode");
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("event hash (a {}-byte prediction)", bytes.len()), |b| {
        b.iter(|| key.event_hash(black_box(&bytes)))
    });
    let source = streamscore_contracts::SourceOffset::new("inference.requests", 7, 1_234_567);
    group.bench_function("lineage derive (event id, SHA-NI where the CPU has it)", |b| {
        b.iter(|| {
            streamscore_contracts::Lineage::derive(
                black_box(source.clone()),
                Stage::Infer,
                "prediction",
                "host:1",
                None,
                None,
            )
        })
    });
    group.bench_function("event id through uuid's portable SHA-1 and format!, for comparison", |b| {
        b.iter(|| {
            let s = black_box(&source);
            let name = format!("{}/{}/{}/{}/{}", s.topic, s.partition, s.offset, Stage::Infer, "prediction");
            uuid::Uuid::new_v5(&streamscore_contracts::lineage::EVENT_ID_NAMESPACE, name.as_bytes()).to_string()
        })
    });
    for batch in [64_usize, 256] {
        let events: Vec<(String, String)> =
            (0..batch).map(|i| (uuid::Uuid::new_v4().to_string(), key.event_hash(&i.to_be_bytes()))).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("commitment entry (details + HMAC)", batch), &events, |b, events| {
            let mut chain = AuditChain::new("infer", "bench", key.clone(), 1);
            b.iter(|| {
                let details = commitment_details(black_box(events), "inference.requests/0:1-64".to_owned());
                chain.append(kinds::BATCH_COMMITTED, "events", None, details)
            })
        });
    }
    group.finish();

    // verify over 100,000 events in 391 commitments of 256.
    let mut chain = AuditChain::new("infer", "bench", key.clone(), 1);
    let mut entries = Vec::new();
    let mut events = Vec::new();
    for batch in 0..391 {
        let mut committed = Vec::new();
        for i in 0..256 {
            let id = format!("{batch}-{i}");
            let hash = key.event_hash(id.as_bytes());
            let offset = i64::from(batch) * 256 + i64::from(i);
            events.push(SeenEvent {
                position: Position { topic: "p".to_owned(), partition: 0, offset },
                event_id: Some(id.clone()),
                hash: hash.clone(),
                content: None,
            });
            committed.push((id, hash));
        }
        let record = chain.append(kinds::BATCH_COMMITTED, "", None, commitment_details(&committed, String::new()));
        entries.push(SeenEntry {
            position: Position { topic: "a".to_owned(), partition: 0, offset: i64::from(batch) },
            record: Some(record),
        });
    }
    let mut group = c.benchmark_group("audit verify");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("100k events in memory", |b| {
        b.iter(|| {
            let report = verify(&key, black_box(&entries), black_box(&events), &[], Window::ALL);
            assert!(report.ok());
        })
    });
    group.finish();
}

criterion_group!(benches, audit);
criterion_main!(benches);
