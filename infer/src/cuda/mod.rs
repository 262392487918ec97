//! The CUDA backend: custom kernels in `kernels/*.cu`, compiled at run time with NVRTC
//! through cudarc (dynamic loading, so the project builds and runs its CPU tests without a
//! GPU or a CUDA toolkit).
//!
//! - [`device`]: the device path — context, kernels compiled for the device, weights uploaded
//!   once per model version, pinned host buffers and two streams so consecutive chunks of a
//!   batch overlap their copies with compute.
//!
//! Choosing between this and tract (`--backend cpu|cuda|auto`) is [`crate::selection`]'s job.

pub mod device;

use std::ffi::{c_char, CStr, CString};

use cudarc::nvrtc::{CompileOptions, Ptx};

pub use device::{CudaBackend, CudaScorer, Device};

/// A kernel source file.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    pub file: &'static str,
    pub source: &'static str,
    /// The `extern "C"` entry points it defines.
    pub entries: &'static [&'static str],
}

/// The fused dense layer and the row softmax.
pub const DENSE: Kernel =
    Kernel { file: "dense.cu", source: include_str!("kernels/dense.cu"), entries: &["dense_forward", "softmax_rows"] };
/// The whole-network kernel.
pub const MLP: Kernel = Kernel { file: "mlp.cu", source: include_str!("kernels/mlp.cu"), entries: &["mlp_forward"] };
/// Every kernel of the backend.
pub const KERNELS: [Kernel; 2] = [DENSE, MLP];

/// Why the CUDA backend cannot run, or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    #[error("the CUDA backend was asked for, but no CUDA driver (libcuda) is present on this machine; use --backend cpu (or auto)")]
    NoDriver,
    #[error("the CUDA backend was asked for, but no CUDA device can be used: {reason}; use --backend cpu (or auto)")]
    NoDevice { reason: String },
    #[error("NVRTC (libnvrtc) is not present; install the CUDA toolkit or the PyPI wheel nvidia-cuda-nvrtc-cu12 and put its lib/ folder on LD_LIBRARY_PATH")]
    NoNvrtc,
    #[error("compiling {file} for {arch}: {log}")]
    Compile { file: &'static str, arch: String, log: String },
    #[error("loading {file} ({image}) on {device}: {reason}")]
    Module { file: &'static str, image: String, device: String, reason: String },
    #[error("the whole-network kernel cannot take this network: {reason}")]
    DoesNotFit { reason: String },
    #[error("CUDA driver call failed while {doing}: {reason}")]
    Driver { doing: String, reason: String },
}

impl CudaError {
    pub(crate) fn driver(doing: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> Self {
        let doing = doing.into();
        move |e| Self::Driver { doing, reason: e.to_string() }
    }
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

/// NVRTC's version as (major, minor).
#[allow(unsafe_code)]
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid for the call.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| CudaError::Compile {
        file: "-",
        arch: "-".to_owned(),
        log: e.to_string(),
    })?;
    Ok((major, minor))
}

/// The real architectures (e.g. 90 for `sm_90`) this NVRTC can generate code for.
#[allow(unsafe_code)]
pub fn nvrtc_architectures() -> Result<Vec<i32>, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let error = |e: cudarc::nvrtc::result::NvrtcError| CudaError::Compile {
        file: "-",
        arch: "-".to_owned(),
        log: format!("listing NVRTC's architectures: {e}"),
    };
    let mut count = 0;
    // SAFETY: the library is present; the pointer is valid for the call.
    unsafe { cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut count) }.result().map_err(error)?;
    let mut archs = vec![0; usize::try_from(count).unwrap_or(0)];
    // SAFETY: `archs` holds exactly the `count` values NVRTC writes.
    unsafe { cudarc::nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }.result().map_err(error)?;
    Ok(archs)
}

/// Compiles one kernel to PTX for a virtual architecture (e.g. `compute_90`).
pub fn compile(kernel: &Kernel, arch: &str) -> Result<Ptx, CudaError> {
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        use_fast_math: Some(false),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(kernel.source, options).map_err(|e| CudaError::Compile {
        file: kernel.file,
        arch: arch.to_owned(),
        log: e.to_string(),
    })
}

/// Compiles one kernel to a CUBIN (device code, no JIT at load) for a real architecture,
/// e.g. 90 for `sm_90`. A CUBIN loads on any driver of the same CUDA major version, where PTX
/// from a newer NVRTC than the driver would be refused.
#[allow(unsafe_code)]
pub fn compile_cubin(kernel: &Kernel, sm: i32) -> Result<Vec<u8>, CudaError> {
    use cudarc::nvrtc::{result, sys};
    if !nvrtc_present() {
        return Err(CudaError::NoNvrtc);
    }
    let arch = format!("sm_{sm}");
    let failed = |log: String| CudaError::Compile { file: kernel.file, arch: arch.clone(), log };
    let source = CString::new(kernel.source).map_err(|e| failed(e.to_string()))?;
    let name = CString::new(kernel.file).map_err(|e| failed(e.to_string()))?;
    let program = result::create_program(&source, Some(&name)).map_err(|e| failed(e.to_string()))?;
    let options = [format!("--gpu-architecture={arch}"), "--std=c++14".to_owned()];
    // SAFETY: `program` was created above and is destroyed once, at the end; `source` and
    // `name` outlive it; every buffer handed to NVRTC is sized by NVRTC's own size call.
    let compiled = unsafe {
        match result::compile_program(program, &options) {
            Err(e) => {
                let log = result::get_program_log(program)
                    .map(|log| CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(failed(format!("{e}: {log}")))
            }
            Ok(()) => {
                let mut size = 0usize;
                match sys::nvrtcGetCUBINSize(program, &mut size).result() {
                    Err(e) => Err(failed(format!("no CUBIN: {e}"))),
                    Ok(()) => {
                        let mut cubin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast::<c_char>())
                            .result()
                            .map(|()| cubin)
                            .map_err(|e| failed(format!("no CUBIN: {e}")))
                    }
                }
            }
        }
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(program) };
    match compiled {
        Ok(cubin) if cubin.is_empty() => Err(failed("NVRTC returned an empty CUBIN".to_owned())),
        other => other,
    }
}
