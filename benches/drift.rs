//! Cost of the drift state per event (16 features and the score; target under 1 µs) and of
//! closing a window (merging the sliding view, 4 statistics and the missing ratio for 17
//! variables).
//!
//! Run: `cargo bench --bench drift`.

use std::collections::HashMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use streamscore_modelstore::ModelStore;
use streamscore_monitor::drift::{Detector, DetectorConfig, Reference};
use streamscore_synth::Generator;

fn drift(c: &mut Criterion) {
    let store = ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models")).expect("models");
    let reference = Reference::from_metadata(&store.get("fraud", "1").expect("fraud/1").meta);
    let mut generator = Generator::new(5);
    let rows: Vec<HashMap<String, f64>> = (0..4096).map(|i| generator.next(i).by_name()).collect();
    let mut group = c.benchmark_group("drift");
    group.throughput(Throughput::Elements(1));
    // Windows of one hour of event time: observing never closes one here.
    let config = DetectorConfig { window_us: 3_600_000_000, ..DetectorConfig::default() };
    let mut detector = Detector::new(reference.clone(), config, "bench");
    let mut i = 0_usize;
    group.bench_function("observe one prediction (16 features + score)", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            detector.observe(1_000, black_box(&rows[i]), Some(0.1), 0)
        })
    });
    // Closing: fill a window with 2000 events, then time the close of the next one.
    let config = DetectorConfig { window_events: 2_000, ..DetectorConfig::default() };
    let mut closing = Detector::new(reference, config, "bench");
    for (k, row) in rows.iter().cycle().take(6_000).enumerate() {
        closing.observe(i64::try_from(k).unwrap_or(0), row, Some(0.1), 0);
    }
    group.bench_function("close a window (sliding view of 3, 17 variables)", |b| {
        b.iter_batched(|| closing.clone(), |mut d| d.flush(0), criterion::BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, drift);
criterion_main!(benches);
