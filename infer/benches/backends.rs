//! CUDA backend against tract on the CPU, end to end through the `Scorer` trait (copies
//! included), for each shipped model at batch sizes 1 to 8192. Prints a table with the GPU's
//! name: latency per batch (median), throughput, the speedup over tract, and for CUDA the
//! kernel time alone (CUDA events) against the memory-bandwidth bound for reading the batch.
//!
//! `cargo bench -p streamscore-infer --bench backends` (add `-- --bench --quick` for a short
//! run). Without a GPU it prints tract's rows and says why CUDA is absent. Under `cargo test`
//! it only smoke-runs tract on one small batch.
//!
//! Targets (issue 6): at batch 4096, CUDA ≥ 20× tract's throughput on the small model
//! (fraud/1); kernel time within 2× of the bandwidth bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamscore_infer::cuda::{CudaBackend, CudaScorer};
use streamscore_infer::mlp::Mlp;
use streamscore_infer::{Backend, Scorer, TractBackend};
use streamscore_modelstore::{ModelStore, ModelVersion};

const BATCHES: [usize; 7] = [1, 8, 64, 256, 1024, 4096, 8192];

/// Median and mean of a batch's wall time, over at least `min_runs` runs and `budget`.
fn measure(scorer: &dyn Scorer, input: &[f32], rows: usize, budget: Duration, min_runs: usize) -> (Duration, Duration) {
    for _ in 0..3 {
        scorer.score(input, rows).expect("warm-up batch scores");
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < min_runs || started.elapsed() < budget {
        let t = Instant::now();
        let scores = scorer.score(input, rows).expect("batch scores");
        times.push(t.elapsed());
        assert_eq!(scores.len(), rows);
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(u32::MAX);
    (times[times.len() / 2], mean)
}

/// Deterministic inputs spread over each feature's range.
fn inputs(version: &ModelVersion, rows: usize) -> Vec<f32> {
    let features = &version.meta.features;
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut out = Vec::with_capacity(rows * features.len());
    for _ in 0..rows {
        for f in features {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            out.push((f.min + u * (f.max - f.min)) as f32);
        }
    }
    out
}

fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// The shipped models: `STREAMSCORE_MODELS_DIR` where set (a prebuilt binary on another
/// machine, see `scripts/gpu.sh --prebuilt`), else the checkout's.
fn models_dir() -> String {
    std::env::var("STREAMSCORE_MODELS_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let store = ModelStore::open(models_dir()).expect("shipped models");
    let mut versions: Vec<Arc<ModelVersion>> = store.versions().collect();
    versions.sort_by_key(|v| v.key());
    if !bench {
        let version = &versions[0];
        let scorer = TractBackend.load(version).expect("tract loads");
        let (median, _) = measure(scorer.as_ref(), &inputs(version, 8), 8, Duration::ZERO, 1);
        println!(
            "backends: smoke run, tract {} batch 8 in {} µs; `cargo bench --bench backends` for the table",
            version.key(),
            micros(median)
        );
        return;
    }
    let budget = if quick { Duration::from_millis(100) } else { Duration::from_millis(500) };
    let cuda = match CudaBackend::open(0) {
        Ok(cuda) => {
            let device = cuda.device();
            println!(
                "GPU: {} (compute {}.{}), kernels {}, peak memory bandwidth {:.0} GB/s",
                device.name(),
                device.capability().0,
                device.capability().1,
                device.image(),
                device.bandwidth() / 1e9
            );
            Some(cuda)
        }
        Err(e) => {
            println!("GPU: none usable — {e}\nOnly tract's rows follow; run this on a GPU machine for the CUDA rows.");
            None
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("CPU: tract 0.23, one call at a time on a machine with {cores} cores\n");
    println!(
        "| model | batch | tract µs/batch | tract events/s | cuda µs/batch | cuda events/s | speedup | kernel µs | bound µs | kernel/bound |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for version in &versions {
        let tract = TractBackend.load(version).expect("tract loads");
        let on_gpu: Option<CudaScorer> = cuda.as_ref().map(|c| {
            let mlp = Mlp::from_onnx(&version.onnx_path).expect("a dense chain");
            c.scorer(&mlp, &version.key(), true).expect("the CUDA backend loads the shipped model")
        });
        let features = version.meta.features.len();
        for rows in BATCHES {
            let input = inputs(version, rows);
            let (tract_median, tract_mean) = measure(tract.as_ref(), &input, rows, budget, 5);
            let tract_rate = rows as f64 / tract_mean.as_secs_f64();
            let mut line = format!("| {} | {rows} | {} | {:.0} |", version.key(), micros(tract_median), tract_rate);
            match (&on_gpu, &cuda) {
                (Some(scorer), Some(backend)) => {
                    let (median, mean) = measure(scorer, &input, rows, budget, 20);
                    let rate = rows as f64 / mean.as_secs_f64();
                    let kernel = scorer.kernel_time(rows, 200).expect("kernel timing");
                    // Reading the batch once from device memory at peak bandwidth.
                    let bytes = (rows * features * std::mem::size_of::<f32>()) as f64;
                    let bound = Duration::from_secs_f64(bytes / backend.device().bandwidth());
                    line.push_str(&format!(
                        " {} | {rate:.0} | {:.1}× | {} | {:.3} | {:.1}× |",
                        micros(median),
                        rate / tract_rate,
                        micros(kernel),
                        bound.as_secs_f64() * 1e6,
                        kernel.as_secs_f64() / bound.as_secs_f64()
                    ));
                }
                _ => line.push_str(" – | – | – | – | – | – |"),
            }
            println!("{line}");
        }
    }
    println!(
        "\nµs/batch: median wall time of one `Scorer::score` call (for CUDA: pinned copy in, kernel, copy out, wait)."
    );
    println!(
        "events/s: batch ÷ mean wall time. kernel: device time of the forward pass alone, averaged over 200 launches."
    );
    println!("bound: the batch's input bytes ÷ peak memory bandwidth.");
}
