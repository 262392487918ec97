//! The CUDA backend: custom kernels in `kernels/*.cu`, compiled at run time with NVRTC
//! through cudarc (dynamic loading, so the project builds and runs its CPU tests without a
//! GPU or a CUDA toolkit).
//!
//! Status: the kernels (a fused tiled dense layer, softmax, and a whole-network kernel with
//! the weights in shared memory) compile to PTX and are checked by a test on every machine;
//! the weights they take come from [`crate::mlp`], whose CPU reference matches tract. Running
//! them on a device is not wired yet: asking for the CUDA backend is a clear error — without a
//! driver it says so, with one it says the device path is not built — never a silent CPU run.

use cudarc::nvrtc::{CompileOptions, Ptx};

/// A kernel source file.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    pub file: &'static str,
    pub source: &'static str,
    /// The `extern "C"` entry points it defines.
    pub entries: &'static [&'static str],
}

/// Every kernel of the backend.
pub const KERNELS: [Kernel; 2] = [
    Kernel { file: "dense.cu", source: include_str!("kernels/dense.cu"), entries: &["dense_forward", "softmax_rows"] },
    Kernel { file: "mlp.cu", source: include_str!("kernels/mlp.cu"), entries: &["mlp_forward"] },
];

/// Why the CUDA backend cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    #[error("the CUDA backend was asked for, but no CUDA driver (libcuda) is present on this machine; use --backend cpu (or auto)")]
    NoDriver,
    #[error("NVRTC (libnvrtc) is not present; install the CUDA toolkit or the PyPI wheel nvidia-cuda-nvrtc-cu12 and put its lib/ folder on LD_LIBRARY_PATH")]
    NoNvrtc,
    #[error("compiling {file} for {arch}: {log}")]
    Compile { file: &'static str, arch: &'static str, log: String },
    #[error("a CUDA driver is present, but this build does not run the kernels on a device yet; use --backend cpu (or auto)")]
    DeviceNotBuilt,
}

/// Whether libnvrtc can be loaded.
#[allow(unsafe_code)]
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library; calls nothing in it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether the CUDA driver (libcuda) can be loaded.
#[allow(unsafe_code)]
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library; calls nothing in it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Compiles one kernel to PTX for a virtual architecture (e.g. `compute_90`).
pub fn compile(kernel: &Kernel, arch: &'static str) -> Result<Ptx, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let options = CompileOptions { arch: Some(arch), use_fast_math: Some(false), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(kernel.source, options).map_err(|e| CudaError::Compile {
        file: kernel.file,
        arch,
        log: e.to_string(),
    })
}

/// Why the CUDA backend cannot run here (in this build it never can: see the module doc).
pub fn unavailable() -> CudaError {
    if driver_present() {
        CudaError::DeviceNotBuilt
    } else {
        CudaError::NoDriver
    }
}

/// `--backend cpu|cuda|auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Cpu,
    Cuda,
    Auto,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown backend {other:?}: expected cpu, cuda or auto")),
        }
    }
}

/// Picks the backend: `cuda` fails loudly if it cannot run; `auto` says which it took and why.
pub fn select(choice: BackendChoice) -> Result<std::sync::Arc<dyn crate::Backend>, CudaError> {
    match choice {
        BackendChoice::Cpu => Ok(std::sync::Arc::new(crate::TractBackend)),
        BackendChoice::Cuda => Err(unavailable()),
        BackendChoice::Auto => {
            let reason = unavailable().to_string();
            tracing::info!(backend = "cpu", reason, "backend auto: using the CPU");
            Ok(std::sync::Arc::new(crate::TractBackend))
        }
    }
}
