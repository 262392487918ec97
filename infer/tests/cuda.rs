//! The CUDA kernels compile to PTX with NVRTC on every machine (a syntax or type error in a
//! kernel fails the suite); asking for the CUDA backend where it cannot run is a clear error.
//!
//! NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc-cu12, which `scripts/test.sh` installs
//! and puts on LD_LIBRARY_PATH. Without it the compile test says it was skipped — except
//! under CI, where it fails.

use streamscore_infer::cuda::{self, BackendChoice, CudaError};

#[test]
fn every_kernel_compiles_to_ptx_with_nvrtc() {
    if !cuda::nvrtc_present() {
        assert!(
            std::env::var_os("CI").is_none(),
            "NVRTC missing under CI: scripts/test.sh installs nvidia-cuda-nvrtc-cu12"
        );
        eprintln!("SKIPPED: libnvrtc not found (scripts/test.sh installs it)");
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        for kernel in &cuda::KERNELS {
            let ptx = cuda::compile(kernel, arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            for entry in kernel.entries {
                assert!(text.contains(&format!(".entry {entry}")), "{} for {arch} lacks entry {entry}", kernel.file);
            }
            assert!(
                text.contains(&format!(".target sm_{}", &arch["compute_".len()..])),
                "{} PTX targets {arch}",
                kernel.file
            );
        }
    }
}

#[test]
fn a_kernel_with_an_error_does_not_compile() {
    if !cuda::nvrtc_present() {
        eprintln!("SKIPPED: libnvrtc not found");
        return;
    }
    let broken = cuda::Kernel {
        file: "broken.cu",
        source: "extern \"C\" __global__ void k(float* y) { y[0] = undefined_name; }",
        entries: &["k"],
    };
    match cuda::compile(&broken, "compute_80") {
        Err(CudaError::Compile { log, .. }) => assert!(log.contains("undefined_name") || !log.is_empty(), "{log}"),
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn the_cuda_backend_where_it_cannot_run_is_a_clear_error_never_a_cpu_fallback() {
    let error = cuda::select(BackendChoice::Cuda).expect_err("this build never runs kernels on a device");
    if cuda::driver_present() {
        assert_eq!(error, CudaError::DeviceNotBuilt);
    } else {
        assert_eq!(error, CudaError::NoDriver);
        assert!(error.to_string().contains("--backend cpu"), "says what to do: {error}");
    }
    assert_eq!(cuda::select(BackendChoice::Auto).expect("auto falls to the CPU, saying so").name(), "cpu");
    assert_eq!(cuda::select(BackendChoice::Cpu).expect("cpu").name(), "cpu");
    assert!("gpu".parse::<BackendChoice>().is_err());
}

/// Reported as ignored (skipped), not passed: the device path is not built yet, and this
/// machine has no GPU. Run with `--ignored` on a GPU machine; it fails until the path exists.
#[test]
#[ignore = "needs a GPU and the CUDA device path, which this build does not have yet"]
fn gpu_kernels_match_their_cpu_reference() {
    let backend = cuda::select(BackendChoice::Cuda).expect("the CUDA backend runs");
    assert_eq!(backend.name(), "cuda");
}
