//! Inference cost per event through the backend trait (tract on CPU), at batch sizes 1 to
//! 1024, for every shipped model version.
//!
//! Run: `cargo bench --bench infer`. Target: at batch 256, under 2 µs per event for the small
//! model on one core.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use streamscore_infer::{Backend, TractBackend};
use streamscore_modelstore::ModelStore;

fn infer(c: &mut Criterion) {
    let store = ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models")).expect("models");
    for version in store.versions() {
        let scorer = TractBackend.load(&version).expect("loads");
        let mut generator = streamscore_synth::Generator::new(3);
        let rows: Vec<f32> = (0..1024).flat_map(|i| generator.next(i).features.map(|v| v as f32)).collect();
        let mut group = c.benchmark_group(format!("infer/{} {}", version.key(), version.meta.architecture));
        for batch in [1_usize, 8, 64, 256, 1024] {
            group.throughput(Throughput::Elements(batch as u64));
            let input = &rows[..batch * scorer.features()];
            group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
                b.iter(|| scorer.score(input, batch).expect("scores"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, infer);
criterion_main!(benches);
