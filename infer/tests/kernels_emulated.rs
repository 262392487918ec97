//! The CUDA kernels' own source, run on a CPU emulation of CUDA's execution model
//! (`tests/emulator/`: a block's threads as OS threads, `__syncthreads` as a barrier, shared
//! memory per block poisoned with NaN, built with AddressSanitizer and UBSan), with the launch
//! shapes and packed arguments the device path computes (`cuda::device::launch`), against
//! the CPU reference. On a machine without a GPU this is what checks the kernels' indexing,
//! shared-memory layout and bounds; `gpu.rs` checks them on a device.
//!
//! Needs a C++20 compiler (`c++`); without one the tests say they were skipped, except under
//! CI, where they fail. Tolerances as in `gpu.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cudarc::driver::LaunchConfig;
use streamscore_infer::cuda::device::launch;
use streamscore_infer::cuda::{DENSE, MLP};
use streamscore_infer::mlp::{Activation, Dense, Mlp};
use streamscore_modelstore::ModelStore;

mod support;

use support::{models_root, random_layer, softmax_reference, Golden, Rng};

/// The harness, built once per test binary.
fn harness() -> Option<PathBuf> {
    static BUILT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> Option<PathBuf> {
    if Command::new("c++").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "no C++ compiler under CI: install g++");
        eprintln!("SKIPPED: no C++ compiler (c++) to build the kernel emulator");
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-emulator");
    std::fs::create_dir_all(&dir).expect("emulator dir");
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emulator");
    for file in ["cuda_emu.hpp", "main.cpp"] {
        std::fs::copy(here.join(file), dir.join(file)).expect("copy the emulator");
    }
    // The dynamic shared array becomes the emulator's per-block buffer; the declaration must
    // be there, or the emulated kernel would not be the real one.
    let dynamic = "extern __shared__ float shared[];";
    assert!(MLP.source.contains(dynamic), "mlp.cu no longer declares {dynamic}");
    std::fs::write(dir.join("mlp.cpp"), MLP.source.replace(dynamic, "float* shared = emu_dynamic_shared;"))
        .expect("write mlp.cpp");
    std::fs::write(dir.join("dense.cpp"), DENSE.source).expect("write dense.cpp");
    let binary = dir.join("emulator");
    let output = Command::new("c++")
        .args(["-std=c++20", "-O1", "-g", "-pthread", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
        .arg(dir.join("main.cpp"))
        .arg("-o")
        .arg(&binary)
        .output()
        .expect("run c++");
    assert!(output.status.success(), "building the emulator:\n{}", String::from_utf8_lossy(&output.stderr));
    Some(binary)
}

/// Launch requests for one emulator run, and how many floats each answers with.
#[derive(Default)]
struct Requests {
    bytes: Vec<u8>,
    answers: Vec<usize>,
}

impl Requests {
    fn i32s(&mut self, values: &[i32]) {
        values.iter().for_each(|v| self.bytes.extend_from_slice(&v.to_le_bytes()));
    }

    fn f32s(&mut self, values: &[f32]) {
        values.iter().for_each(|v| self.bytes.extend_from_slice(&v.to_le_bytes()));
    }

    fn grid(cfg: &LaunchConfig) -> [i32; 4] {
        let n = |v: u32| i32::try_from(v).expect("fits");
        [n(cfg.grid_dim.0), n(cfg.grid_dim.1), n(cfg.block_dim.0), n(cfg.block_dim.1)]
    }

    fn dense(&mut self, layer: &Dense, x: &[f32], rows: usize) {
        let cfg = launch::dense(rows, layer.outputs).expect("a launch");
        let n = |v: usize| i32::try_from(v).expect("fits");
        self.i32s(&[1, n(rows), n(layer.inputs), n(layer.outputs), launch::dense_code(layer.activation)]);
        self.i32s(&Self::grid(&cfg));
        self.f32s(x);
        self.f32s(&layer.weights);
        self.f32s(&layer.bias);
        self.answers.push(rows * layer.outputs);
    }

    fn softmax(&mut self, y: &[f32], rows: usize, cols: usize) {
        let cfg = launch::softmax(rows).expect("a launch");
        let n = |v: usize| i32::try_from(v).expect("fits");
        self.i32s(&[2, n(rows), n(cols)]);
        self.i32s(&[n(cfg.grid_dim.0 as usize), n(cfg.block_dim.0 as usize)]);
        self.f32s(y);
        self.answers.push(rows * cols);
    }

    fn mlp(&mut self, packed: &launch::Packed, x: &[f32], rows: usize) {
        let cfg = packed.config(rows).expect("a launch");
        let n = |v: u32| i32::try_from(v).expect("fits");
        self.i32s(&[3, packed.param_count(), packed.layers(), i32::try_from(rows).expect("fits")]);
        self.i32s(&[n(cfg.grid_dim.0), n(cfg.block_dim.0), n(cfg.shared_mem_bytes), n(packed.tile(rows))]);
        self.f32s(&packed.params);
        self.i32s(&packed.dims);
        self.i32s(&packed.acts);
        self.f32s(x);
        let outputs = usize::try_from(*packed.dims.last().expect("dims")).expect("width");
        self.answers.push(rows * outputs);
    }

    /// Runs them all; each request's answer.
    fn run(self, binary: &Path) -> Vec<Vec<f32>> {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the emulator");
        let mut stdin = child.stdin.take().expect("stdin");
        let bytes = self.bytes;
        let writer = std::thread::spawn(move || stdin.write_all(&bytes));
        let output = child.wait_with_output().expect("the emulator runs");
        writer.join().expect("writer").expect("requests written");
        assert!(
            output.status.success(),
            "the emulator failed (a sanitizer report means an out-of-bounds access):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let floats: Vec<f32> =
            output.stdout.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(floats.len(), self.answers.iter().sum::<usize>(), "answers of the expected sizes");
        let mut rest = &floats[..];
        self.answers
            .iter()
            .map(|&n| {
                let (answer, tail) = rest.split_at(n);
                rest = tail;
                answer.to_vec()
            })
            .collect()
    }
}

fn assert_close(ours: &[f32], reference: &[f32], tolerance: impl Fn(f32) -> f32, what: &str) {
    if let Err(e) = support::check_close(ours, reference, tolerance, what) {
        panic!("{e}");
    }
}

#[test]
fn dense_forward_matches_its_reference_on_random_shapes() {
    let Some(binary) = harness() else { return };
    let activations = [Activation::Identity, Activation::Relu, Activation::Tanh, Activation::Sigmoid];
    let mut requests = Requests::default();
    let mut cases = Vec::new();
    for seed in 1..=40_u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Edges included: widths below, at and above one tile.
        let (rows, inputs, outputs) = (rng.range(1, 70), rng.range(1, 70), rng.range(1, 40));
        let activation = activations[rng.range(0, 3)];
        let layer = random_layer(&mut rng, inputs, outputs, activation);
        let x = rng.values(rows * inputs, 2.0);
        requests.dense(&layer, &x, rows);
        cases.push((seed, layer, x, rows));
    }
    for ((seed, layer, x, rows), ours) in cases.into_iter().zip(requests.run(&binary)) {
        let what = format!("seed {seed}: {rows}×{} → {} {:?}", layer.inputs, layer.outputs, layer.activation);
        let reference = Mlp { layers: vec![layer] }.forward(&x, rows);
        assert_close(&ours, &reference, |r| 1e-4 * (1.0 + r.abs()), &what);
    }
}

#[test]
fn softmax_rows_matches_its_reference() {
    let Some(binary) = harness() else { return };
    let mut requests = Requests::default();
    let mut cases = Vec::new();
    for seed in 1..=20_u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let (rows, cols) = (rng.range(1, 300), rng.range(1, 12));
        let y = rng.values(rows * cols, 20.0);
        requests.softmax(&y, rows, cols);
        cases.push((seed, y, rows, cols));
    }
    for ((seed, y, rows, cols), ours) in cases.into_iter().zip(requests.run(&binary)) {
        let reference = Mlp { layers: vec![softmax_reference(cols)] }.forward(&y, rows);
        assert_close(&ours, &reference, |r| 1e-6 + 1e-5 * r.abs(), &format!("seed {seed}: {rows}×{cols}"));
    }
}

#[test]
fn mlp_forward_matches_its_reference_on_random_networks_with_the_packed_arguments() {
    let Some(binary) = harness() else { return };
    let hidden = [Activation::Identity, Activation::Relu, Activation::Tanh, Activation::Sigmoid];
    let mut requests = Requests::default();
    let mut cases = Vec::new();
    let mut tiles = std::collections::BTreeSet::new();
    for seed in 1..=40_u64 {
        let mut rng = Rng(seed.wrapping_mul(0xA076_1D64_78BD_642F));
        let depth = rng.range(1, 4);
        let mut width = rng.range(1, 100);
        let mut layers = Vec::new();
        for k in 0..depth {
            let last = k + 1 == depth;
            let outputs = if last { rng.range(1, 4) } else { rng.range(1, 128) };
            let activation = if last {
                [Activation::Sigmoid, Activation::Softmax, Activation::Identity][rng.range(0, 2)]
            } else {
                hidden[rng.range(0, 3)]
            };
            layers.push(random_layer(&mut rng, width, outputs, activation));
            width = outputs;
        }
        let mlp = Mlp { layers };
        let Ok(packed) = launch::pack(&mlp, launch::DEFAULT_MAX_SHARED_BYTES) else { continue };
        let rows = rng.range(1, 300);
        tiles.insert(packed.tile(rows));
        let x = rng.values(rows * mlp.inputs(), 2.0);
        requests.mlp(&packed, &x, rows);
        cases.push((seed, mlp, x, rows));
    }
    assert!(cases.len() >= 20, "only {} random networks fit the kernel", cases.len());
    assert!(tiles.len() >= 3, "the cases cover several tiles (rows per block): {tiles:?}");
    for ((seed, mlp, x, rows), ours) in cases.into_iter().zip(requests.run(&binary)) {
        let shapes: Vec<usize> = std::iter::once(mlp.inputs()).chain(mlp.layers.iter().map(|l| l.outputs)).collect();
        assert_close(&ours, &mlp.forward(&x, rows), |r| 1e-4 * (1.0 + r.abs()), &format!("seed {seed}: {shapes:?}"));
    }
}

#[test]
fn shipped_models_through_both_plans_match_the_goldens() {
    let Some(binary) = harness() else { return };
    let store = ModelStore::open(models_root()).expect("models");
    for version in store.versions() {
        let golden = Golden::of(&version).expect("golden");
        let x = golden.input();
        let rows = golden.rows.len();
        let mlp = Mlp::from_onnx(&version.onnx_path).expect("a dense chain");

        // The whole-network kernel, as the device path packs it.
        let packed = launch::pack(&mlp, launch::DEFAULT_MAX_SHARED_BYTES).expect("the shipped models fit");
        let mut requests = Requests::default();
        requests.mlp(&packed, &x, rows);
        let fused = requests.run(&binary).remove(0);
        assert_close(&fused, &golden.scores, |_| 1e-5, &format!("{} fused", version.key()));

        // A dense kernel per layer, each layer's output the next one's input.
        let mut activations = x.clone();
        for layer in &mlp.layers {
            let mut requests = Requests::default();
            requests.dense(layer, &activations, rows);
            activations = requests.run(&binary).remove(0);
            if layer.activation == Activation::Softmax {
                let mut requests = Requests::default();
                requests.softmax(&activations, rows, layer.outputs);
                activations = requests.run(&binary).remove(0);
            }
        }
        assert_close(&activations, &golden.scores, |_| 1e-5, &format!("{} per layer", version.key()));
    }
}
