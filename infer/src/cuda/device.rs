//! The device path: one CUDA context per device, the kernels compiled for its architecture,
//! and per model version a [`CudaScorer`] holding the weights on the device and lanes of
//! pinned host buffers, device buffers and a stream each.
//!
//! A batch is cut into chunks of at most [`CHUNK_ROWS`] rows that alternate between a pair of
//! lanes; a scorer has two pairs, so two batches scored at once run side by side. Each chunk is one stream-ordered, asynchronous sequence — copy in, kernel(s), copy
//! out, event — so one lane's copies overlap the other lane's compute. The host waits on a
//! lane's event only before it reuses that lane's pinned buffers, and at the end of the batch.
//!
//! Plans: a model whose widths fit [`MAX_WIDTH`] and whose weights fit the block's shared
//! memory runs the whole-network kernel `mlp_forward` (one launch per chunk); any other
//! supported chain runs `dense_forward` per layer (plus `softmax_rows`), through two scratch
//! buffers on the device.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use cudarc::driver::sys::{self, CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, PinnedHostSlice, PushKernelArg};
use cudarc::nvrtc::Ptx;
use streamscore_modelstore::ModelVersion;

use super::{CudaError, Kernel, DENSE, MLP};
use crate::backend::{check_shape, score_column, Backend, BackendError, Scorer};
use crate::mlp::{Activation, Dense, Mlp};

/// Launch shapes and argument packing: pure functions, shared by the device path and the
/// test that runs the kernels' own source on a CPU emulation of CUDA (`tests/kernels_emulated.rs`),
/// so what that test checks is what the device is given.
pub mod launch {
    use cudarc::driver::LaunchConfig;

    use crate::mlp::{Activation, Mlp};

    /// `TILE` in dense.cu.
    pub const TILE: u32 = 16;
    /// Threads per block of `softmax_rows`.
    pub const SOFTMAX_BLOCK: u32 = 128;
    /// The widest layer the whole-network kernel takes (`MAX_WIDTH` in mlp.cu).
    pub const MAX_WIDTH: usize = 128;
    /// Threads per block of the whole-network kernel.
    pub const MLP_THREADS: u32 = 256;
    /// Rows per block (tile) of the whole-network kernel, the largest whose shared memory fits
    /// first; a launch takes a smaller one where the batch is small (see [`Packed::tile`]).
    pub const MLP_TILES: [u32; 6] = [32, 16, 8, 4, 2, 1];
    /// Blocks a launch aims for before its tiles grow: about one per multiprocessor of the
    /// largest devices (132 on an H100 or H200), so a small batch is spread wide and a large
    /// one runs in full tiles.
    pub const MLP_TARGET_BLOCKS: usize = 128;
    /// Shared memory per block a kernel may use without opting in (every architecture since 2.0).
    pub const DEFAULT_MAX_SHARED_BYTES: usize = 48 * 1024;

    fn blocks(n: usize, per_block: u32) -> Result<u32, String> {
        u32::try_from(n.div_ceil(per_block as usize).max(1)).map_err(|_| format!("{n} rows need too many blocks"))
    }

    /// `dense_forward` over `rows × outputs`: rows on x (up to 2^31 − 1 blocks), outputs on y.
    pub fn dense(rows: usize, outputs: usize) -> Result<LaunchConfig, String> {
        let out_blocks = blocks(outputs, TILE)?;
        if out_blocks > 65_535 {
            return Err(format!("{outputs} outputs need {out_blocks} blocks on y, over 65,535"));
        }
        Ok(LaunchConfig {
            grid_dim: (blocks(rows, TILE)?, out_blocks, 1),
            block_dim: (TILE, TILE, 1),
            shared_mem_bytes: 0,
        })
    }

    /// `softmax_rows` over `rows` rows: a thread per row.
    pub fn softmax(rows: usize) -> Result<LaunchConfig, String> {
        Ok(LaunchConfig {
            grid_dim: (blocks(rows, SOFTMAX_BLOCK)?, 1, 1),
            block_dim: (SOFTMAX_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    /// dense.cu's activation code (softmax: identity, then `softmax_rows`).
    pub fn dense_code(activation: Activation) -> i32 {
        match activation {
            Activation::Identity | Activation::Softmax => 0,
            Activation::Relu => 1,
            Activation::Tanh => 2,
            Activation::Sigmoid => 3,
        }
    }

    /// mlp.cu's activation code.
    pub fn mlp_code(activation: Activation) -> i32 {
        match activation {
            Activation::Softmax => 4,
            other => dense_code(other),
        }
    }

    /// The whole-network kernel's arguments for a network, on the host.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Packed {
        /// Per layer, W (inputs × outputs, row-major) then b.
        pub params: Vec<f32>,
        /// Layers + 1 widths.
        pub dims: Vec<i32>,
        pub acts: Vec<i32>,
        /// The largest tile (rows per block) whose shared memory fits the device.
        pub max_tile: u32,
    }

    impl Packed {
        pub fn layers(&self) -> i32 {
            i32::try_from(self.acts.len()).unwrap_or(i32::MAX)
        }

        pub fn param_count(&self) -> i32 {
            i32::try_from(self.params.len()).unwrap_or(i32::MAX)
        }

        /// The widest layer (inputs included).
        pub fn width(&self) -> usize {
            self.dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).max().unwrap_or(0)
        }

        /// Shared memory of a block with `tile` rows: the weights and two activation buffers.
        pub fn shared_bytes(&self, tile: u32) -> usize {
            mlp_shared_bytes(self.params.len(), self.width(), tile)
        }

        /// Rows per block for a batch of `rows`: the power of two that gives about
        /// [`MLP_TARGET_BLOCKS`] blocks, at most [`Self::max_tile`].
        pub fn tile(&self, rows: usize) -> u32 {
            let wanted = rows.div_ceil(MLP_TARGET_BLOCKS).max(1).next_power_of_two();
            u32::try_from(wanted).unwrap_or(u32::MAX).min(self.max_tile)
        }

        /// The launch for `rows` rows; the kernel's `tile` argument is [`Self::tile`]`(rows)`.
        pub fn config(&self, rows: usize) -> Result<LaunchConfig, String> {
            let tile = self.tile(rows);
            Ok(LaunchConfig {
                grid_dim: (blocks(rows, tile)?, 1, 1),
                block_dim: (MLP_THREADS, 1, 1),
                shared_mem_bytes: u32::try_from(self.shared_bytes(tile))
                    .map_err(|_| "shared memory size".to_owned())?,
            })
        }
    }

    fn mlp_shared_bytes(param_count: usize, width: usize, tile: u32) -> usize {
        (param_count + 2 * tile as usize * (width + 1)) * std::mem::size_of::<f32>()
    }

    /// Packs a network for the whole-network kernel, or says why the kernel cannot take it
    /// (a layer wider than [`MAX_WIDTH`], or weights plus a tile of inputs over the shared
    /// memory a block has).
    pub fn pack(mlp: &Mlp, max_shared_bytes: usize) -> Result<Packed, String> {
        let widest = mlp.layers.iter().map(|l| l.inputs.max(l.outputs)).max().unwrap_or(0);
        if widest > MAX_WIDTH {
            return Err(format!("a layer is {widest} wide, the kernel takes up to {MAX_WIDTH}"));
        }
        let param_count: usize = mlp.layers.iter().map(|l| l.weights.len() + l.bias.len()).sum();
        let shared = |tile: u32| mlp_shared_bytes(param_count, widest, tile);
        let max_tile = MLP_TILES.iter().copied().find(|&t| shared(t) <= max_shared_bytes).ok_or_else(|| {
            format!(
                "{param_count} weights and one row's activations need {} bytes of shared memory, the device has {max_shared_bytes} per block",
                shared(1),
            )
        })?;
        let width = |n: usize| i32::try_from(n).map_err(|_| format!("width {n}"));
        let mut packed = Packed {
            params: Vec::with_capacity(param_count),
            dims: vec![width(mlp.inputs())?],
            acts: Vec::with_capacity(mlp.layers.len()),
            max_tile,
        };
        for layer in &mlp.layers {
            packed.params.extend_from_slice(&layer.weights);
            packed.params.extend_from_slice(&layer.bias);
            packed.dims.push(width(layer.outputs)?);
            packed.acts.push(mlp_code(layer.activation));
        }
        Ok(packed)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::mlp::Dense;

        fn network(widths: &[usize]) -> Mlp {
            let layers = widths
                .windows(2)
                .map(|w| Dense {
                    inputs: w[0],
                    outputs: w[1],
                    weights: vec![0.5; w[0] * w[1]],
                    bias: vec![0.0; w[1]],
                    activation: Activation::Relu,
                })
                .collect();
            Mlp { layers }
        }

        #[test]
        fn small_batches_spread_over_blocks_and_large_ones_run_in_full_tiles() {
            let packed = pack(&network(&[16, 64, 32, 1]), DEFAULT_MAX_SHARED_BYTES).expect("fits");
            assert_eq!(packed.max_tile, 32);
            assert_eq!(packed.tile(1), 1);
            assert_eq!(packed.tile(MLP_TARGET_BLOCKS), 1);
            assert_eq!(packed.tile(MLP_TARGET_BLOCKS + 1), 2);
            assert_eq!(packed.tile(4096), 32);
            assert_eq!(packed.tile(1_000_000), 32, "never over the largest tile that fits");
            for rows in [1, 7, 128, 129, 1000, 4096, 8191] {
                let cfg = packed.config(rows).expect("a launch");
                let tile = packed.tile(rows) as usize;
                assert!(cfg.grid_dim.0 as usize * tile >= rows, "{rows} rows covered");
                assert!((cfg.grid_dim.0 as usize - 1) * tile < rows, "{rows} rows: no empty block");
                assert!(cfg.shared_mem_bytes as usize <= DEFAULT_MAX_SHARED_BYTES);
                assert_eq!(cfg.shared_mem_bytes as usize, packed.shared_bytes(packed.tile(rows)));
            }
        }

        #[test]
        fn the_tile_shrinks_to_fit_shared_memory_and_a_network_too_big_is_refused() {
            // 8,320 weights and biases (of 12,288 floats) leave room for 16 rows, not 32.
            let wide = pack(&network(&[64, 64, 64]), DEFAULT_MAX_SHARED_BYTES).expect("fits with smaller tiles");
            assert_eq!(wide.max_tile, 16);
            assert!(wide.shared_bytes(wide.max_tile) <= DEFAULT_MAX_SHARED_BYTES);
            assert!(wide.shared_bytes(wide.max_tile * 2) > DEFAULT_MAX_SHARED_BYTES);
            let error = pack(&network(&[64, 64, 64, 64, 64]), DEFAULT_MAX_SHARED_BYTES).expect_err("too many weights");
            assert!(error.contains("shared memory"), "{error}");
            let error = pack(&network(&[16, 129, 1]), DEFAULT_MAX_SHARED_BYTES).expect_err("too wide");
            assert!(error.contains("129 wide"), "{error}");
        }
    }
}

pub use launch::MAX_WIDTH;

/// Rows per chunk (and per lane buffer).
pub const CHUNK_ROWS: usize = 2048;

/// An open device: its context and the kernels built for it.
pub struct Device {
    ctx: Arc<CudaContext>,
    name: String,
    capability: (i32, i32),
    /// How the kernels were built, e.g. `sm_90 CUBIN (NVRTC 12.9)`.
    image: String,
    max_shared_bytes: usize,
    /// Peak memory bandwidth in bytes per second, from the memory clock and bus width.
    bandwidth: f64,
    dense: CudaFunction,
    softmax: CudaFunction,
    mlp: CudaFunction,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("name", &self.name).field("image", &self.image).finish_non_exhaustive()
    }
}

/// The driver's CUDA version as (major, minor).
#[allow(unsafe_code)]
fn driver_version() -> Option<(i32, i32)> {
    let mut version = 0;
    // SAFETY: only called after the driver library was found; the pointer is valid.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result().ok()?;
    Some((version / 1000, (version % 1000) / 10))
}

impl Device {
    /// Opens device `ordinal` and builds the kernels for it, or says why it cannot.
    #[allow(unsafe_code)]
    pub fn open(ordinal: usize) -> Result<Arc<Self>, CudaError> {
        if !super::driver_present() {
            return Err(CudaError::NoDriver);
        }
        let count =
            CudaContext::device_count().map_err(|e| CudaError::NoDevice { reason: format!("the driver says {e}") })?;
        if usize::try_from(count).unwrap_or(0) <= ordinal {
            return Err(CudaError::NoDevice { reason: format!("device {ordinal} asked for, {count} present") });
        }
        let (nvrtc_major, nvrtc_minor) = super::nvrtc_version()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice { reason: e.to_string() })?;
        // cudarc's event tracking records an event and makes the stream wait on one for every
        // buffer a copy or launch touches (a dozen driver calls per chunk) so that buffers
        // may be shared between streams. Ours are not: a lane's buffers are used only on the
        // lane's stream, under the lane's lock; the weights are written once on the loading
        // stream, which is synchronized before any lane reads them, and only read after;
        // the single-stream helpers below use their own buffers on their own stream; and a
        // scorer drains its lanes' streams before its buffers are freed (its Drop).
        // SAFETY: no CudaSlice exists yet on this context, and the rules above are the
        // conditions `disable_event_tracking` asks for.
        unsafe { ctx.disable_event_tracking() };
        let name = ctx.name().map_err(CudaError::driver("reading the device name"))?;
        let capability = ctx.compute_capability().map_err(CudaError::driver("reading the compute capability"))?;
        let attribute = |a: CUdevice_attribute| ctx.attribute(a).map_err(CudaError::driver(format!("reading {a:?}")));
        let max_shared_bytes =
            usize::try_from(attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?)
                .unwrap_or(48 * 1024);
        // Only the bench's bandwidth bound uses these; a driver that does not report them
        // leaves the bound unknown (0) rather than the device unusable.
        let optional = |a: CUdevice_attribute| ctx.attribute(a).map_or(0.0, f64::from);
        let clock_khz = optional(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
        let bus_bits = optional(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
        let bandwidth = clock_khz * 1e3 * 2.0 * bus_bits / 8.0;

        // A CUBIN for the device's own architecture where NVRTC knows it (no JIT, and it
        // loads on any driver of the same major version); else PTX for the newest
        // architecture NVRTC has at or below the device's, which the driver compiles.
        let sm = capability.0 * 10 + capability.1;
        let archs = super::nvrtc_architectures()?;
        let nvrtc = format!("NVRTC {nvrtc_major}.{nvrtc_minor}");
        let driver = driver_version().map_or_else(|| "unknown".to_owned(), |(a, b)| format!("{a}.{b}"));
        let build = |kernel: &Kernel| -> Result<(Ptx, String), CudaError> {
            if archs.contains(&sm) {
                let cubin = super::compile_cubin(kernel, sm)?;
                Ok((Ptx::from_binary(cubin), format!("sm_{sm} CUBIN ({nvrtc})")))
            } else {
                let virtual_arch =
                    archs.iter().copied().filter(|&a| a <= sm).max().ok_or_else(|| CudaError::Compile {
                        file: kernel.file,
                        arch: format!("sm_{sm}"),
                        log: format!("{nvrtc} supports none of this device's architectures ({archs:?})"),
                    })?;
                let arch = format!("compute_{virtual_arch}");
                Ok((super::compile(kernel, &arch)?, format!("{arch} PTX ({nvrtc}, JIT by driver CUDA {driver})")))
            }
        };
        let load = |kernel: &Kernel| -> Result<(Vec<CudaFunction>, String), CudaError> {
            let (image, described) = build(kernel)?;
            let module = ctx.load_module(image).map_err(|e| CudaError::Module {
                file: kernel.file,
                image: described.clone(),
                device: name.clone(),
                reason: format!(
                    "{e} (driver CUDA {driver}; PTX from a newer NVRTC than the driver is refused: use an NVRTC no newer than the driver)"
                ),
            })?;
            let functions = kernel
                .entries
                .iter()
                .map(|entry| {
                    module.load_function(entry).map_err(|e| CudaError::Module {
                        file: kernel.file,
                        image: described.clone(),
                        device: name.clone(),
                        reason: format!("entry {entry}: {e}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((functions, described))
        };
        let (dense_functions, image) = load(&DENSE)?;
        let (mlp_functions, _) = load(&MLP)?;
        let [dense, softmax] = <[CudaFunction; 2]>::try_from(dense_functions)
            .map_err(|_| CudaError::Driver { doing: "loading dense.cu".to_owned(), reason: "entries".to_owned() })?;
        let [mlp] = <[CudaFunction; 1]>::try_from(mlp_functions)
            .map_err(|_| CudaError::Driver { doing: "loading mlp.cu".to_owned(), reason: "entries".to_owned() })?;
        Ok(Arc::new(Self { ctx, name, capability, image, max_shared_bytes, bandwidth, dense, softmax, mlp }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// How the kernels were built, e.g. `sm_90 CUBIN (NVRTC 12.9)`.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Peak memory bandwidth in bytes per second.
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth
    }

    fn new_stream(&self) -> Result<Arc<CudaStream>, CudaError> {
        self.ctx.new_stream().map_err(CudaError::driver("creating a stream"))
    }

    /// Runs one dense layer (`dense_forward`, then `softmax_rows` for a softmax layer) on
    /// `rows` rows, synchronously: the kernels on their own, for tests and benches.
    pub fn dense(&self, layer: &Dense, x: &[f32], rows: usize) -> Result<Vec<f32>, CudaError> {
        let stream = self.new_stream()?;
        let on_device = DeviceLayer::upload(&stream, layer)?;
        let x = stream.clone_htod(x).map_err(CudaError::driver("copying the input"))?;
        let mut y = alloc(&stream, rows * layer.outputs)?;
        self.launch_dense(&stream, &x, &on_device, &mut y, rows)?;
        stream.clone_dtoh(&y).map_err(CudaError::driver("copying the output"))
    }

    /// Runs `softmax_rows` over `rows × cols` values, synchronously.
    pub fn softmax(&self, y: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>, CudaError> {
        let stream = self.new_stream()?;
        let mut y = stream.clone_htod(y).map_err(CudaError::driver("copying the input"))?;
        self.launch_softmax(&stream, &mut y, rows, cols)?;
        stream.clone_dtoh(&y).map_err(CudaError::driver("copying the output"))
    }

    /// Runs the whole-network kernel on `rows` rows, synchronously; every output column.
    pub fn mlp(&self, mlp: &Mlp, x: &[f32], rows: usize) -> Result<Vec<f32>, CudaError> {
        let stream = self.new_stream()?;
        let Plan::Fused(fused) = Plan::new(self, &stream, mlp, true)? else {
            return Err(CudaError::DoesNotFit {
                reason: launch::pack(mlp, self.max_shared_bytes).err().unwrap_or_default(),
            });
        };
        let x = stream.clone_htod(x).map_err(CudaError::driver("copying the input"))?;
        let mut y = alloc(&stream, rows * mlp.outputs())?;
        self.launch_mlp(&stream, &fused, &x, &mut y, rows)?;
        stream.clone_dtoh(&y).map_err(CudaError::driver("copying the output"))
    }

    #[allow(unsafe_code)]
    fn launch_dense(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        layer: &DeviceLayer,
        y: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), CudaError> {
        let (rows_i, inputs, outputs) = (int(rows)?, int(layer.inputs)?, int(layer.outputs)?);
        let cfg = launch::dense(rows, layer.outputs).map_err(sizing)?;
        let mut launch = stream.launch_builder(&self.dense);
        launch.arg(x).arg(&layer.weights).arg(&layer.bias).arg(&mut *y);
        launch.arg(&rows_i).arg(&inputs).arg(&outputs).arg(&layer.activation);
        // SAFETY: the arguments match dense_forward's signature; x holds rows × inputs values,
        // the weights inputs × outputs, the bias outputs, y rows × outputs; the grid covers
        // every output once and the kernel bounds-checks the edges.
        unsafe { launch.launch(cfg) }.map_err(CudaError::driver("launching dense_forward"))?;
        if layer.softmax {
            self.launch_softmax(stream, y, rows, layer.outputs)?;
        }
        Ok(())
    }

    #[allow(unsafe_code)]
    fn launch_softmax(
        &self,
        stream: &Arc<CudaStream>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        let (rows_i, cols_i) = (int(rows)?, int(cols)?);
        let cfg = launch::softmax(rows).map_err(sizing)?;
        let mut launch = stream.launch_builder(&self.softmax);
        launch.arg(&mut *y).arg(&rows_i).arg(&cols_i);
        // SAFETY: y holds rows × cols values; one thread per row, bounds-checked.
        unsafe { launch.launch(cfg) }.map_err(CudaError::driver("launching softmax_rows"))?;
        Ok(())
    }

    #[allow(unsafe_code)]
    fn launch_mlp(
        &self,
        stream: &Arc<CudaStream>,
        fused: &Fused,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), CudaError> {
        let rows_i = int(rows)?;
        let cfg = fused.packed.config(rows).map_err(sizing)?;
        let tile = int(fused.packed.tile(rows) as usize)?;
        let (param_count, layers) = (fused.packed.param_count(), fused.packed.layers());
        let mut launch = stream.launch_builder(&self.mlp);
        launch.arg(&fused.params).arg(&param_count).arg(&fused.dims).arg(&fused.acts).arg(&layers);
        launch.arg(x).arg(&mut *y).arg(&rows_i).arg(&tile);
        // SAFETY: the arguments match mlp_forward's signature; the packed parameters, widths
        // and activation codes were built from one Mlp (Plan::new); x holds rows × inputs
        // values and y rows × outputs; the shared memory is what the kernel's comment asks
        // for with this tile and was checked against the device's limit (pack).
        unsafe { launch.launch(cfg) }.map_err(CudaError::driver("launching mlp_forward"))?;
        Ok(())
    }
}

fn int(n: usize) -> Result<i32, CudaError> {
    i32::try_from(n).map_err(|_| CudaError::Driver { doing: "sizing a launch".to_owned(), reason: format!("{n}") })
}

fn sizing(reason: String) -> CudaError {
    CudaError::Driver { doing: "sizing a launch".to_owned(), reason }
}

fn alloc(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<f32>, CudaError> {
    stream.alloc_zeros::<f32>(len.max(1)).map_err(CudaError::driver(format!("allocating {len} floats on the device")))
}

/// A dense layer on the device.
#[derive(Debug)]
struct DeviceLayer {
    weights: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    inputs: usize,
    outputs: usize,
    /// dense.cu's code: 0 identity, 1 relu, 2 tanh, 3 sigmoid (softmax: identity, then rows).
    activation: i32,
    softmax: bool,
}

impl DeviceLayer {
    fn upload(stream: &Arc<CudaStream>, layer: &Dense) -> Result<Self, CudaError> {
        Ok(Self {
            weights: stream.clone_htod(&layer.weights).map_err(CudaError::driver("copying weights"))?,
            bias: stream.clone_htod(&layer.bias).map_err(CudaError::driver("copying a bias"))?,
            inputs: layer.inputs,
            outputs: layer.outputs,
            activation: launch::dense_code(layer.activation),
            softmax: layer.activation == Activation::Softmax,
        })
    }
}

/// The whole-network kernel's arguments.
#[derive(Debug)]
struct Fused {
    packed: launch::Packed,
    params: CudaSlice<f32>,
    dims: CudaSlice<i32>,
    acts: CudaSlice<i32>,
}

/// How a model runs on the device.
#[derive(Debug)]
enum Plan {
    Fused(Box<Fused>),
    Layered(Vec<DeviceLayer>),
}

impl Plan {
    /// The whole-network kernel where the model fits it, else a kernel per layer.
    fn new(device: &Device, stream: &Arc<CudaStream>, mlp: &Mlp, allow_fused: bool) -> Result<Self, CudaError> {
        if let (true, Ok(packed)) = (allow_fused, launch::pack(mlp, device.max_shared_bytes)) {
            let upload = |what: &str| CudaError::driver(format!("copying {what}"));
            return Ok(Self::Fused(Box::new(Fused {
                params: stream.clone_htod(&packed.params).map_err(upload("weights"))?,
                dims: stream.clone_htod(&packed.dims).map_err(upload("widths"))?,
                acts: stream.clone_htod(&packed.acts).map_err(upload("activations"))?,
                packed,
            })));
        }
        mlp.layers.iter().map(|layer| DeviceLayer::upload(stream, layer)).collect::<Result<_, _>>().map(Self::Layered)
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Fused(_) => "whole-network kernel",
            Self::Layered(_) => "a dense kernel per layer",
        }
    }

    /// Enqueues the forward pass of `rows` rows from `x` to `y` on `stream`.
    fn enqueue(
        &self,
        device: &Device,
        stream: &Arc<CudaStream>,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        scratch: &mut [CudaSlice<f32>; 2],
        rows: usize,
    ) -> Result<(), CudaError> {
        match self {
            Self::Fused(fused) => device.launch_mlp(stream, fused, x, y, rows),
            Self::Layered(layers) => {
                let [even, odd] = scratch;
                for (k, layer) in layers.iter().enumerate() {
                    let last = k + 1 == layers.len();
                    // Layer k reads layer k-1's output: x, then the scratch buffers in turn.
                    let (src, dst): (&CudaSlice<f32>, &mut CudaSlice<f32>) = match (k, last) {
                        (0, true) => (x, &mut *y),
                        (0, false) => (x, &mut *even),
                        (k, true) if k % 2 == 1 => (&*even, &mut *y),
                        (_, true) => (&*odd, &mut *y),
                        (k, false) if k % 2 == 1 => (&*even, &mut *odd),
                        (_, false) => (&*odd, &mut *even),
                    };
                    device.launch_dense(stream, src, layer, dst, rows)?;
                }
                Ok(())
            }
        }
    }
}

/// One lane: a stream with its pinned host buffers and device buffers for one chunk.
struct Lane {
    stream: Arc<CudaStream>,
    host_in: PinnedHostSlice<f32>,
    host_out: PinnedHostSlice<f32>,
    dev_in: CudaSlice<f32>,
    dev_out: CudaSlice<f32>,
    scratch: [CudaSlice<f32>; 2],
    /// Recorded after the chunk's copy out.
    done: CudaEvent,
    /// The chunk in flight: its first row in the batch and its rows.
    pending: Option<(usize, usize)>,
}

impl Lane {
    #[allow(unsafe_code)]
    fn new(device: &Device, inputs: usize, outputs: usize, widest: usize, layered: bool) -> Result<Self, CudaError> {
        let stream = device.new_stream()?;
        let pinned = |len: usize, flags: u32| {
            // SAFETY: the memory is written (copy_from_slice, or a device copy) before it is read.
            unsafe { device.ctx.alloc_pinned_with_flags::<f32>(len, flags) }
                .map_err(CudaError::driver(format!("allocating {len} pinned floats")))
        };
        let scratch_len = if layered { CHUNK_ROWS * widest } else { 1 };
        Ok(Self {
            // The host only writes the input (write-combined is fastest for that) and only
            // reads the output (cached).
            host_in: pinned(CHUNK_ROWS * inputs, sys::CU_MEMHOSTALLOC_WRITECOMBINED)?,
            host_out: pinned(CHUNK_ROWS * outputs, 0)?,
            dev_in: alloc(&stream, CHUNK_ROWS * inputs)?,
            dev_out: alloc(&stream, CHUNK_ROWS * outputs)?,
            scratch: [alloc(&stream, scratch_len)?, alloc(&stream, scratch_len)?],
            // Blocking: the host thread sleeps while it waits instead of spinning a core.
            done: device
                .ctx
                .new_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
                .map_err(CudaError::driver("creating an event"))?,
            stream,
            pending: None,
        })
    }

    /// Enqueues one chunk: copy in, forward pass, copy out, event. Asynchronous.
    fn submit(&mut self, scorer: &CudaScorer, chunk: &[f32], first: usize, rows: usize) -> Result<(), CudaError> {
        let (n_in, n_out) = (rows * scorer.inputs, rows * scorer.outputs);
        let host_in = self.host_in.as_mut_slice().map_err(CudaError::driver("waiting on the input buffer"))?;
        host_in[..n_in].copy_from_slice(chunk);
        self.stream
            .memcpy_htod(&host_in[..n_in], &mut self.dev_in.slice_mut(..n_in))
            .map_err(CudaError::driver("copying a chunk to the device"))?;
        scorer.plan.enqueue(&scorer.device, &self.stream, &self.dev_in, &mut self.dev_out, &mut self.scratch, rows)?;
        let host_out = self.host_out.as_mut_slice().map_err(CudaError::driver("waiting on the output buffer"))?;
        self.stream
            .memcpy_dtoh(&self.dev_out.slice(..n_out), &mut host_out[..n_out])
            .map_err(CudaError::driver("copying scores from the device"))?;
        self.done.record(&self.stream).map_err(CudaError::driver("recording a chunk's event"))?;
        self.pending = Some((first, rows));
        Ok(())
    }

    /// Waits for the chunk in flight, if any, and copies its scores into `scores`.
    fn finish(&mut self, scores: &mut [f32], outputs: usize, column: usize) -> Result<(), CudaError> {
        let Some((first, rows)) = self.pending.take() else { return Ok(()) };
        wait(&self.done).map_err(CudaError::driver("waiting for a chunk"))?;
        let host_out = self.host_out.as_slice().map_err(CudaError::driver("reading the output buffer"))?;
        for (r, score) in scores[first..first + rows].iter_mut().enumerate() {
            *score = host_out[r * outputs + column];
        }
        Ok(())
    }
}

/// How long a host thread polls a chunk's event before it sleeps on it. A sleeping wait
/// costs a wake-up (tens of microseconds on a virtual machine) on top of the chunk; the
/// chunks of the batches a pipeline scores finish well within this, so they cost a short
/// spin instead, and longer ones sleep rather than hold a core.
pub const SPIN_WAIT: Duration = Duration::from_micros(200);

/// Waits for `event`: polls it for up to [`SPIN_WAIT`], then blocks on it.
fn wait(event: &CudaEvent) -> Result<(), cudarc::driver::DriverError> {
    let started = Instant::now();
    while started.elapsed() < SPIN_WAIT {
        if event.try_is_complete()? {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    event.synchronize()
}

/// A pair of lanes if it is free (a poisoned one too: the caller drains it).
fn try_take(pair: &Mutex<[Lane; 2]>) -> Option<MutexGuard<'_, [Lane; 2]>> {
    match pair.try_lock() {
        Ok(lanes) => Some(lanes),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// The CUDA backend on one device.
#[derive(Debug, Clone)]
pub struct CudaBackend {
    device: Arc<Device>,
}

impl CudaBackend {
    /// Opens device `ordinal`, or says why the backend cannot run here.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        Ok(Self { device: Device::open(ordinal)? })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// A scorer for a network, named `name` in errors. `allow_fused: false` forces the
    /// per-layer plan (tests cover both).
    pub fn scorer(&self, mlp: &Mlp, name: &str, allow_fused: bool) -> Result<CudaScorer, BackendError> {
        let load_error = |e: CudaError| BackendError::Load { model: name.to_owned(), reason: e.to_string() };
        let column =
            score_column(mlp.outputs()).map_err(|reason| BackendError::Load { model: name.to_owned(), reason })?;
        let stream = self.device.new_stream().map_err(load_error)?;
        let plan = Plan::new(&self.device, &stream, mlp, allow_fused).map_err(load_error)?;
        // The weights are on the device before any lane's stream reads them.
        stream.synchronize().map_err(CudaError::driver("copying weights")).map_err(load_error)?;
        let widest = mlp.layers.iter().map(|l| l.outputs).max().unwrap_or(1);
        let layered = matches!(plan, Plan::Layered(_));
        let lane = || Lane::new(&self.device, mlp.inputs(), mlp.outputs(), widest, layered).map_err(load_error);
        let lanes = [Mutex::new([lane()?, lane()?]), Mutex::new([lane()?, lane()?])];
        Ok(CudaScorer {
            device: Arc::clone(&self.device),
            name: name.to_owned(),
            inputs: mlp.inputs(),
            outputs: mlp.outputs(),
            column,
            widest,
            plan,
            lanes,
            turn: AtomicUsize::new(0),
        })
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn load(&self, version: &ModelVersion) -> Result<Arc<dyn Scorer>, BackendError> {
        let bytes =
            version.read_verified().map_err(|e| BackendError::Load { model: version.key(), reason: e.to_string() })?;
        let mlp = Mlp::from_onnx_bytes(&bytes).map_err(|e| BackendError::Load {
            model: version.key(),
            reason: format!("the CUDA backend cannot run it: {e}"),
        })?;
        if mlp.inputs() != version.meta.features.len() {
            return Err(BackendError::Load {
                model: version.key(),
                reason: format!(
                    "the graph takes {} inputs, the metadata lists {} features",
                    mlp.inputs(),
                    version.meta.features.len()
                ),
            });
        }
        let scorer = self.scorer(&mlp, &version.key(), true)?;
        tracing::info!(
            model = version.key(),
            device = self.device.name(),
            plan = scorer.plan.describe(),
            image = self.device.image(),
            "model on the GPU"
        );
        Ok(Arc::new(scorer))
    }
}

/// A model version on the device.
pub struct CudaScorer {
    device: Arc<Device>,
    name: String,
    inputs: usize,
    outputs: usize,
    /// The output column that is the score.
    column: usize,
    widest: usize,
    plan: Plan,
    /// Two pairs of lanes: a batch double-buffers its chunks over one pair, and two batches
    /// scored at once (versions, shadows) each get a pair, so their copies and kernels overlap.
    lanes: [Mutex<[Lane; 2]>; 2],
    /// Which pair a batch waits for when both are busy.
    turn: AtomicUsize,
}

impl std::fmt::Debug for CudaScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaScorer")
            .field("model", &self.name)
            .field("device", &self.device.name)
            .field("plan", &self.plan.describe())
            .finish_non_exhaustive()
    }
}

impl CudaScorer {
    /// Whether this scorer runs the whole-network kernel (else a kernel per layer).
    pub fn fused(&self) -> bool {
        matches!(self.plan, Plan::Fused(_))
    }

    /// Device time of the forward pass alone on `rows` rows already on the device (no
    /// copies), averaged over `iterations` launches timed with CUDA events.
    pub fn kernel_time(&self, rows: usize, iterations: u32) -> Result<Duration, CudaError> {
        let stream = self.device.new_stream()?;
        let x =
            stream.clone_htod(&vec![0.5_f32; rows * self.inputs]).map_err(CudaError::driver("copying the input"))?;
        let mut y = alloc(&stream, rows * self.outputs)?;
        let scratch_len = if self.fused() { 1 } else { rows * self.widest };
        let mut scratch = [alloc(&stream, scratch_len)?, alloc(&stream, scratch_len)?];
        self.plan.enqueue(&self.device, &stream, &x, &mut y, &mut scratch, rows)?;
        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = stream.record_event(timing).map_err(CudaError::driver("recording an event"))?;
        for _ in 0..iterations.max(1) {
            self.plan.enqueue(&self.device, &stream, &x, &mut y, &mut scratch, rows)?;
        }
        let end = stream.record_event(timing).map_err(CudaError::driver("recording an event"))?;
        let ms = start.elapsed_ms(&end).map_err(CudaError::driver("timing the kernels"))?;
        Ok(Duration::from_secs_f64(f64::from(ms) / 1e3 / f64::from(iterations.max(1))))
    }

    fn run(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, CudaError> {
        let mut scores = vec![0.0_f32; rows];
        // A pair left poisoned by a panicking batch is taken back: its chunks in flight are
        // dropped and its streams drained first.
        let mut lanes = match self.lanes.iter().find_map(try_take) {
            Some(free) => free,
            None => self.lanes[self.turn.fetch_add(1, Ordering::Relaxed) % self.lanes.len()]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        };
        for lane in lanes.iter_mut().filter(|lane| lane.pending.is_some()) {
            lane.pending = None;
            lane.stream.synchronize().map_err(CudaError::driver("draining a lane a panicked batch left"))?;
        }
        let result = (|| {
            let mut first = 0;
            let mut next = 0;
            while first < rows {
                let n = CHUNK_ROWS.min(rows - first);
                let lane = &mut lanes[next];
                next = 1 - next;
                // Reusing the lane's pinned buffers waits for its previous chunk only; the
                // other lane's chunk keeps running meanwhile.
                lane.finish(&mut scores, self.outputs, self.column)?;
                lane.submit(self, &input[first * self.inputs..(first + n) * self.inputs], first, n)?;
                first += n;
            }
            for lane in lanes.iter_mut() {
                lane.finish(&mut scores, self.outputs, self.column)?;
            }
            Ok(())
        })();
        if result.is_err() {
            for lane in lanes.iter_mut() {
                lane.pending = None;
                let _ = lane.stream.synchronize();
            }
        }
        result.map(|()| scores)
    }
}

impl Drop for CudaScorer {
    /// Drains every lane's stream before the buffers and weights are freed: with event
    /// tracking off, nothing else stops a chunk a panicking batch left in flight from
    /// reading freed memory.
    fn drop(&mut self) {
        for pair in &self.lanes {
            let lanes = pair.lock().unwrap_or_else(PoisonError::into_inner);
            for lane in lanes.iter() {
                if let Err(e) = lane.stream.synchronize() {
                    tracing::warn!(model = %self.name, error = %e, "draining a lane before freeing it");
                }
            }
        }
    }
}

impl Scorer for CudaScorer {
    fn features(&self) -> usize {
        self.inputs
    }

    fn backend(&self) -> &'static str {
        "cuda"
    }

    fn score(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, BackendError> {
        check_shape(input, rows, self.inputs)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        self.run(input, rows).map_err(|e| BackendError::Run { rows, reason: e.to_string() })
    }
}
