//! µs per explanation of one row, for each shipped version: tract on the CPU, and the CUDA
//! backend where a GPU is present (the same 2^16 coalition rows through `Scorer::score`, in
//! batches of `CHUNK_ROWS`), next to one plain scoring of the row for scale. Where both
//! backends run, it also prints the largest difference between their attributions.
//!
//! `cargo bench -p streamscore-infer --bench explain` (add `-- --bench --quick` for a short
//! run). Under `cargo test` it only smoke-runs one tract explanation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamscore_infer::cuda::CudaBackend;
use streamscore_infer::explain::{explain_row, CHUNK_ROWS};
use streamscore_infer::mlp::Mlp;
use streamscore_infer::{Backend, Scorer, TractBackend};
use streamscore_modelstore::{ModelStore, ModelVersion};

/// Median and mean wall time of `f`, over at least `min_runs` runs and `budget`.
fn measure(mut f: impl FnMut(), budget: Duration, min_runs: usize) -> (Duration, Duration) {
    f();
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < min_runs || started.elapsed() < budget {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(u32::MAX);
    (times[times.len() / 2], mean)
}

/// A row inside every feature's range (the middle of it).
fn row(version: &ModelVersion) -> Vec<f32> {
    version.meta.features.iter().map(|f| ((f.min + f.max) / 4.0) as f32).collect()
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

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
        let started = Instant::now();
        explain_row(scorer.as_ref(), version, &row(version)).expect("explains");
        println!(
            "explain: smoke run, one tract explanation of {} in {} µs; `cargo bench --bench explain` for the table",
            version.key(),
            micros(started.elapsed())
        );
        return;
    }
    let budget = if quick { Duration::from_millis(500) } else { Duration::from_secs(3) };
    let cuda = match CudaBackend::open(0) {
        Ok(cuda) => {
            println!("GPU: {}", cuda.device().name());
            Some(cuda)
        }
        Err(e) => {
            println!("GPU: none usable — {e}\nOnly tract's rows follow; run this on a GPU machine for CUDA's.");
            None
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("CPU: tract, one explanation at a time on a machine with {cores} cores; batches of {CHUNK_ROWS} rows\n");
    println!("| model | features | rows scored | backend | µs per explanation (median) | mean | one plain scoring µs | max |φ| difference to tract |");
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    for version in &versions {
        let x = row(version);
        let features = version.meta.features.len();
        let tract = TractBackend.load(version).expect("tract loads");
        let reference = explain_row(tract.as_ref(), version, &x).expect("explains");
        let mut scorers: Vec<(&str, Arc<dyn Scorer>)> = vec![("cpu (tract)", tract)];
        if let Some(cuda) = &cuda {
            let mlp = Mlp::from_onnx(&version.onnx_path).expect("a dense chain");
            let scorer = cuda.scorer(&mlp, &version.key(), true).expect("the CUDA backend loads the shipped model");
            scorers.push(("cuda", Arc::new(scorer)));
        }
        for (name, scorer) in scorers {
            let (median, mean) = measure(
                || {
                    explain_row(scorer.as_ref(), version, &x).expect("explains");
                },
                budget,
                5,
            );
            let (plain, _) = measure(
                || {
                    scorer.score(&x, 1).expect("scores");
                },
                Duration::from_millis(200),
                50,
            );
            let ours = explain_row(scorer.as_ref(), version, &x).expect("explains");
            let difference = ours
                .attributions
                .iter()
                .zip(&reference.attributions)
                .map(|(a, b)| (a.attribution - b.attribution).abs())
                .fold(0.0_f64, f64::max);
            println!(
                "| {} | {features} | {} | {name} | {} | {} | {:.1} | {difference:.2e} |",
                version.key(),
                1_usize << features.min(16),
                micros(median),
                micros(mean),
                plain.as_secs_f64() * 1e6
            );
        }
    }
}
