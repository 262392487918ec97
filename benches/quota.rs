//! Cost of one quota decision (target under 100 ns) and of a batch's fair selection.
//!
//! Run: `cargo bench --bench quota`.

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use streamscore_infer::quota::fair::fair_order;
use streamscore_infer::quota::{Policy, Quotas};

fn quota(c: &mut Criterion) {
    let mut text = String::from("version = 1\n");
    for t in 0..64 {
        text.push_str(&format!("[tenants.tenant-{t:02}]\nrate_per_sec = 1000\nburst = 2000\ntier = {}\n", 1 + t % 3));
    }
    let policy = Policy::parse(Path::new("bench.toml"), text.as_bytes()).expect("policy");
    let tenants: Vec<String> = (0..64).map(|t| format!("tenant-{t:02}")).collect();
    let mut quotas = Quotas::new(policy.clone());
    let mut group = c.benchmark_group("quota");
    group.throughput(Throughput::Elements(1));
    let mut at = 0_i64;
    let mut i = 0_usize;
    group.bench_function("decide (64 tenants, event time advancing)", |b| {
        b.iter(|| {
            at += 37;
            i = (i + 1) % tenants.len();
            let decision = quotas.decide(black_box(&tenants[i]), "fraud", at);
            quotas.release(&tenants[i]);
            decision
        })
    });
    let batch: Vec<(&str, u8)> =
        (0..1024).map(|k| (tenants[(k * 7) % 64].as_str(), 1 + ((k * 7) % 64 % 3) as u8)).collect();
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("fair order of 1024 requests over 64 tenants", |b| {
        b.iter(|| fair_order(black_box(batch.iter().copied())))
    });
    group.finish();
}

criterion_group!(benches, quota);
criterion_main!(benches);
