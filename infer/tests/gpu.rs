//! The CUDA backend on a device: each kernel against its CPU reference on random shapes and
//! values, the whole backend against tract and the golden outputs, the double-buffered chunk
//! path, concurrent batches, and the refusal of a graph the kernels cannot run.
//!
//! A custom harness (libtest-mimic) decides at run time: where a GPU is present every test
//! runs (and a device that cannot be opened fails them); elsewhere each reports itself as
//! *ignored*, never as passed.
//!
//! Tolerances (f32 throughout; the kernels use fused multiply-adds, the reference does not):
//! - dense layers and whole networks: |gpu − ref| ≤ 1e-4 · (1 + |ref|);
//! - softmax: |gpu − ref| ≤ 1e-6 + 1e-5 · |ref|;
//! - the backend against the goldens (onnxruntime) and tract: 1e-5 absolute.

use std::path::Path;
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};
use streamscore_infer::cuda::device::CHUNK_ROWS;
use streamscore_infer::cuda::{self, CudaBackend};
use streamscore_infer::mlp::{Activation, Mlp};
use streamscore_infer::selection::{self, BackendChoice};
use streamscore_infer::{Backend, Scorer, TractBackend};
use streamscore_modelstore::ModelStore;

mod support;

use support::{models_root, random_layer, softmax_reference, Golden, Rng};

fn close(ours: &[f32], reference: &[f32], tolerance: impl Fn(f32) -> f32, what: &str) -> Result<(), Failed> {
    support::check_close(ours, reference, tolerance, what).map_err(Failed::from)
}

fn backend() -> Result<CudaBackend, Failed> {
    CudaBackend::open(0).map_err(|e| Failed::from(format!("a GPU is present but the backend cannot open it: {e}")))
}

fn dense_forward_matches_its_reference_on_random_shapes() -> Result<(), Failed> {
    let device = Arc::clone(backend()?.device());
    let activations =
        [Activation::Identity, Activation::Relu, Activation::Tanh, Activation::Sigmoid, Activation::Softmax];
    for seed in 1..=200_u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (rows, inputs, outputs) = (rng.range(1, 300), rng.range(1, 200), rng.range(1, 150));
        let activation = activations[rng.range(0, activations.len() - 1)];
        let layer = random_layer(&mut rng, inputs, outputs, activation);
        let x = rng.values(rows * inputs, 2.0);
        let ours = device.dense(&layer, &x, rows)?;
        let reference = Mlp { layers: vec![layer] }.forward(&x, rows);
        let what = format!("seed {seed}: {rows}×{inputs} → {outputs} {activation:?}");
        close(&ours, &reference, |r| 1e-4 * (1.0 + r.abs()), &what)?;
    }
    Ok(())
}

fn softmax_rows_matches_its_reference() -> Result<(), Failed> {
    let device = Arc::clone(backend()?.device());
    for seed in 1..=100_u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let (rows, cols) = (rng.range(1, 500), rng.range(1, 64));
        let y = rng.values(rows * cols, 20.0);
        let ours = device.softmax(&y, rows, cols)?;
        let reference = Mlp { layers: vec![softmax_reference(cols)] }.forward(&y, rows);
        close(&ours, &reference, |r| 1e-6 + 1e-5 * r.abs(), &format!("seed {seed}: {rows}×{cols}"))?;
    }
    Ok(())
}

/// A random chain that fits the whole-network kernel: widths up to 48 (and one layer up to
/// the kernel's 128 now and then), one to four layers, any activation, sigmoid, softmax or
/// identity on top.
fn random_network(rng: &mut Rng) -> Mlp {
    let hidden = [Activation::Identity, Activation::Relu, Activation::Tanh, Activation::Sigmoid];
    let depth = rng.range(1, 4);
    let mut width = rng.range(1, 48);
    let mut layers = Vec::with_capacity(depth);
    for k in 0..depth {
        let last = k + 1 == depth;
        let outputs = match (last, rng.range(0, 9)) {
            (true, _) => rng.range(1, 4),
            (false, 0) if depth <= 2 => rng.range(49, 128),
            _ => rng.range(1, 48),
        };
        let activation = if last {
            [Activation::Sigmoid, Activation::Softmax, Activation::Identity][rng.range(0, 2)]
        } else {
            hidden[rng.range(0, hidden.len() - 1)]
        };
        layers.push(random_layer(rng, width, outputs, activation));
        width = outputs;
    }
    Mlp { layers }
}

fn mlp_forward_matches_its_reference_on_random_networks() -> Result<(), Failed> {
    let device = Arc::clone(backend()?.device());
    for seed in 1..=150_u64 {
        let mut rng = Rng(seed.wrapping_mul(0xA076_1D64_78BD_642F));
        let mlp = random_network(&mut rng);
        let rows = rng.range(1, 700);
        let x = rng.values(rows * mlp.inputs(), 2.0);
        let shapes: Vec<usize> = std::iter::once(mlp.inputs()).chain(mlp.layers.iter().map(|l| l.outputs)).collect();
        let what = format!("seed {seed}: {rows} rows through {shapes:?}");
        let ours = device.mlp(&mlp, &x, rows).map_err(|e| format!("{what}: {e}"))?;
        close(&ours, &mlp.forward(&x, rows), |r| 1e-4 * (1.0 + r.abs()), &what)?;
    }
    // Too wide for the kernel: refused with the reason (the per-layer plan takes it instead).
    let mut rng = Rng(3);
    let wide = Mlp {
        layers: vec![
            random_layer(&mut rng, 16, 200, Activation::Relu),
            random_layer(&mut rng, 200, 1, Activation::Sigmoid),
        ],
    };
    match device.mlp(&wide, &rng.values(16, 1.0), 1) {
        Err(e @ cuda::CudaError::DoesNotFit { .. }) if e.to_string().contains("200 wide") => {}
        other => return Err(format!("a 200-wide layer in the whole-network kernel: {other:?}").into()),
    }
    let scorer = backend()?.scorer(&wide, "wide", true)?;
    if scorer.fused() {
        return Err("a 200-wide network was planned on the whole-network kernel".into());
    }
    let x = rng.values(300 * 16, 2.0);
    close(&scorer.score(&x, 300)?, &reference_scores(&wide, &x, 300), |r| 1e-4 * (1.0 + r.abs()), "wide, per layer")
}

/// The score the backend should give: the reference's score column.
fn reference_scores(mlp: &Mlp, x: &[f32], rows: usize) -> Vec<f32> {
    let outputs = mlp.outputs();
    let column = streamscore_infer::backend::score_column(outputs).unwrap_or(0);
    mlp.forward(x, rows).chunks_exact(outputs).map(|row| row[column]).collect()
}

fn the_backend_matches_tract_and_the_goldens() -> Result<(), Failed> {
    let cuda = backend()?;
    let store = ModelStore::open(models_root()).map_err(|e| e.to_string())?;
    for version in store.versions() {
        let golden = Golden::of(&version)?;
        let input = golden.input();
        let rows = golden.rows.len();
        let scorer = cuda.load(&version)?;
        if scorer.backend() != "cuda" {
            return Err(format!("{} scored by {}", version.key(), scorer.backend()).into());
        }
        let ours = scorer.score(&input, rows)?;
        let tract = TractBackend.load(&version)?.score(&input, rows)?;
        close(&ours, &golden.scores, |_| 1e-5, &format!("{} against the goldens", version.key()))?;
        close(&ours, &tract, |_| 1e-5, &format!("{} against tract", version.key()))?;
    }
    Ok(())
}

/// The CUDA backend explains as tract does: for rows of every shipped version, attributions
/// within 1e-5 of tract's, efficiency within 1e-12 of the explanation's own scores, and the
/// same bits when the same row is explained again (what `streamscore explain` relies on).
fn cuda_explanations_match_tracts() -> Result<(), Failed> {
    use streamscore_infer::explain::explain_row;
    let cuda = backend()?;
    let store = ModelStore::open(models_root()).map_err(|e| e.to_string())?;
    for version in store.versions() {
        let golden = Golden::of(&version)?;
        let (gpu, cpu) = (cuda.load(&version)?, TractBackend.load(&version)?);
        for (i, row) in golden.rows.iter().take(8).enumerate() {
            let ours = explain_row(gpu.as_ref(), &version, row).map_err(|e| e.to_string())?;
            let tract = explain_row(cpu.as_ref(), &version, row).map_err(|e| e.to_string())?;
            let what = format!("{} row {i}", version.key());
            for (a, b) in ours.attributions.iter().zip(&tract.attributions) {
                if (a.attribution - b.attribution).abs() > 1e-5 {
                    return Err(format!(
                        "{what}: {} is {} on CUDA, {} on tract",
                        a.feature, a.attribution, b.attribution
                    )
                    .into());
                }
            }
            let total: f64 = ours.attributions.iter().map(|a| a.attribution).sum();
            if (total - (ours.score - ours.baseline_score)).abs() > 1e-12 {
                return Err(format!("{what}: efficiency {total} vs {}", ours.score - ours.baseline_score).into());
            }
            if explain_row(gpu.as_ref(), &version, row).map_err(|e| e.to_string())? != ours {
                return Err(format!("{what}: explained twice on CUDA, two different answers").into());
            }
        }
    }
    Ok(())
}

fn batches_across_chunks_keep_row_order_on_both_plans() -> Result<(), Failed> {
    let cuda = backend()?;
    let path = Path::new(models_root()).join("fraud/2/model.onnx");
    let mlp = Mlp::from_onnx(&path).map_err(|e| e.to_string())?;
    let mut rng = Rng(7);
    for fused in [true, false] {
        let scorer = cuda.scorer(&mlp, "fraud/2", fused)?;
        if scorer.fused() != fused {
            return Err(format!("asked for fused={fused}, planned fused={}", scorer.fused()).into());
        }
        if !scorer.score(&[], 0)?.is_empty() {
            return Err("an empty batch gave scores".into());
        }
        for rows in [1, 2, CHUNK_ROWS - 1, CHUNK_ROWS, CHUNK_ROWS + 1, 3 * CHUNK_ROWS + 17, 10_000] {
            // Rows far apart in value, so a chunk landing in the wrong place cannot pass.
            let x = rng.values(rows * mlp.inputs(), 3.0);
            let ours = scorer.score(&x, rows)?;
            let what = format!("fused={fused}, {rows} rows");
            close(&ours, &reference_scores(&mlp, &x, rows), |r| 1e-4 * (1.0 + r.abs()), &what)?;
        }
    }
    Ok(())
}

fn concurrent_batches_are_each_scored_right() -> Result<(), Failed> {
    let cuda = backend()?;
    let path = Path::new(models_root()).join("fraud/1/model.onnx");
    let mlp = Mlp::from_onnx(&path).map_err(|e| e.to_string())?;
    let scorer = Arc::new(cuda.scorer(&mlp, "fraud/1", true)?);
    let threads: Vec<_> = (0..4_u64)
        .map(|t| {
            let scorer = Arc::clone(&scorer);
            let mlp = mlp.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = Rng(100 + t);
                for _ in 0..25 {
                    let rows = rng.range(1, 5000);
                    let x = rng.values(rows * mlp.inputs(), 3.0);
                    let ours = scorer.score(&x, rows).map_err(|e| e.to_string())?;
                    close(&ours, &reference_scores(&mlp, &x, rows), |r| 1e-4 * (1.0 + r.abs()), "concurrent")
                        .map_err(|e| format!("thread {t}: {e:?}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "a scoring thread panicked")??;
    }
    Ok(())
}

/// A copy of fraud/1 whose Relu became Selu (same length, so the protobuf stays valid), with
/// its metadata's sha256 updated: a graph tract runs and the CUDA kernels do not.
fn unsupported_model() -> Result<(tempfile::TempDir, ModelStore), Failed> {
    use sha2::Digest;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let source = Path::new(models_root()).join("fraud/1");
    let target = dir.path().join("fraud/1");
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    let family = Path::new(models_root()).join("fraud/model.json");
    std::fs::copy(&family, dir.path().join("fraud/model.json")).map_err(|e| e.to_string())?;
    let mut onnx = std::fs::read(source.join("model.onnx")).map_err(|e| e.to_string())?;
    let at = onnx.windows(4).position(|w| w == b"Relu").ok_or("fraud/1 has no Relu")?;
    onnx[at..at + 4].copy_from_slice(b"Selu");
    std::fs::write(target.join("model.onnx"), &onnx).map_err(|e| e.to_string())?;
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("metadata.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    meta["sha256"] = serde_json::Value::String(format!("{:x}", sha2::Sha256::digest(&onnx)));
    std::fs::write(target.join("metadata.json"), meta.to_string()).map_err(|e| e.to_string())?;
    let store = ModelStore::open(dir.path()).map_err(|e| e.to_string())?;
    Ok((dir, store))
}

fn an_unsupported_graph_stops_cuda_and_runs_on_the_cpu_under_auto() -> Result<(), Failed> {
    let cuda = backend()?;
    let (_dir, store) = unsupported_model()?;
    let version = store.versions().next().ok_or("the copied model")?;
    match cuda.load(&version) {
        Ok(_) => return Err("the CUDA backend accepted a graph with Selu".into()),
        Err(e) if e.to_string().contains("Selu") => {}
        Err(e) => return Err(format!("the refusal does not name Selu: {e}").into()),
    }
    let auto = selection::select(BackendChoice::Auto)?;
    if auto.name() != "auto" {
        return Err(format!("auto with a GPU is {}", auto.name()).into());
    }
    let on_cpu = auto.load(&version)?;
    if on_cpu.backend() != "cpu" {
        return Err(format!("auto ran the Selu graph on {}", on_cpu.backend()).into());
    }
    let shipped = ModelStore::open(models_root()).map_err(|e| e.to_string())?;
    for version in shipped.versions() {
        let scorer = auto.load(&version)?;
        if scorer.backend() != "cuda" {
            return Err(format!("auto ran {} on {}", version.key(), scorer.backend()).into());
        }
    }
    Ok(())
}

/// Whether this machine has a GPU the driver reports (not whether our backend can open it:
/// that is what the tests check).
fn gpu_present() -> Result<bool, String> {
    if !cuda::driver_present() {
        return Ok(false);
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) => Ok(n > 0),
        Err(e) => Err(format!("the CUDA driver is present but cannot count devices: {e}")),
    }
}

fn main() {
    let args = Arguments::from_args();
    let present = gpu_present().unwrap_or_else(|reason| {
        eprintln!("{reason}: GPU tests skipped");
        false
    });
    if !present {
        eprintln!("no GPU on this machine: every GPU test reports itself as ignored");
    }
    type Test = fn() -> Result<(), Failed>;
    let tests: [(&str, Test); 8] = [
        ("dense_forward_matches_its_reference_on_random_shapes", dense_forward_matches_its_reference_on_random_shapes),
        ("softmax_rows_matches_its_reference", softmax_rows_matches_its_reference),
        ("mlp_forward_matches_its_reference_on_random_networks", mlp_forward_matches_its_reference_on_random_networks),
        ("the_backend_matches_tract_and_the_goldens", the_backend_matches_tract_and_the_goldens),
        ("cuda_explanations_match_tracts", cuda_explanations_match_tracts),
        ("batches_across_chunks_keep_row_order_on_both_plans", batches_across_chunks_keep_row_order_on_both_plans),
        ("concurrent_batches_are_each_scored_right", concurrent_batches_are_each_scored_right),
        (
            "an_unsupported_graph_stops_cuda_and_runs_on_the_cpu_under_auto",
            an_unsupported_graph_stops_cuda_and_runs_on_the_cpu_under_auto,
        ),
    ];
    let trials = tests.into_iter().map(|(name, test)| Trial::test(name, test).with_ignored_flag(!present)).collect();
    libtest_mimic::run(&args, trials).exit();
}
