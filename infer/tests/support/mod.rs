//! Shared by the kernel tests (`gpu.rs`, `kernels_emulated.rs`): reproducible random layers,
//! the tolerance check and the golden files.
#![allow(dead_code)] // each test binary uses its own part

use streamscore_infer::mlp::{Activation, Dense};

/// xorshift64*: reproducible values without a dependency; the seed is in every failure.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + usize::try_from(self.next() % (hi - lo + 1) as u64).unwrap_or(0)
    }

    /// Uniform in [-scale, scale).
    pub fn value(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    pub fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.value(scale)).collect()
    }
}

/// A layer with weights scaled like a trained one's, so activations stay in a realistic range.
pub fn random_layer(rng: &mut Rng, inputs: usize, outputs: usize, activation: Activation) -> Dense {
    let scale = 1.0 / (inputs as f32).sqrt();
    Dense { inputs, outputs, weights: rng.values(inputs * outputs, scale), bias: rng.values(outputs, 0.5), activation }
}

/// An identity layer with a softmax on top: the reference of `softmax_rows`.
pub fn softmax_reference(cols: usize) -> Dense {
    Dense {
        inputs: cols,
        outputs: cols,
        weights: (0..cols * cols).map(|i| if i / cols == i % cols { 1.0 } else { 0.0 }).collect(),
        bias: vec![0.0; cols],
        activation: Activation::Softmax,
    }
}

/// Every value within `tolerance(reference)` of the reference; a NaN fails.
pub fn check_close(ours: &[f32], reference: &[f32], tolerance: impl Fn(f32) -> f32, what: &str) -> Result<(), String> {
    if ours.len() != reference.len() {
        return Err(format!("{what}: {} values, reference has {}", ours.len(), reference.len()));
    }
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let within = (a - b).abs() <= tolerance(*b);
        if !within {
            return Err(format!("{what}: value {i}: kernel {a} vs reference {b} (tolerance {})", tolerance(*b)));
        }
    }
    Ok(())
}

/// The shipped models: `STREAMSCORE_MODELS_DIR` where set (prebuilt test binaries run on a
/// machine without this checkout, see `scripts/gpu.sh --prebuilt`), else the checkout's.
pub fn models_root() -> &'static str {
    static ROOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        std::env::var("STREAMSCORE_MODELS_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").to_owned())
    })
}

/// A model version's golden file: rows and onnxruntime's scores.
#[derive(serde::Deserialize)]
pub struct Golden {
    pub rows: Vec<Vec<f32>>,
    pub scores: Vec<f32>,
}

impl Golden {
    pub fn of(version: &streamscore_modelstore::ModelVersion) -> Result<Self, String> {
        let path = version.onnx_path.with_file_name("golden.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The rows, row-major.
    pub fn input(&self) -> Vec<f32> {
        self.rows.iter().flatten().copied().collect()
    }
}
