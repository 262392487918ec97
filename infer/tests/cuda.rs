//! On every machine: the CUDA kernels compile with NVRTC, to PTX and to device code (a syntax
//! or type error in a kernel fails the suite), and asking for the CUDA backend where it cannot
//! run is a clear error, never a CPU run. The tests that run the kernels are in `gpu.rs`.
//!
//! NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc-cu12, which `scripts/test.sh` installs
//! and puts on LD_LIBRARY_PATH. Without it the compile tests say they were skipped — except
//! under CI, where they fail.

use streamscore_infer::cuda::{self, CudaError};
use streamscore_infer::selection::{self, BackendChoice};
use streamscore_modelstore::ModelStore;

fn nvrtc_or_skip() -> bool {
    if cuda::nvrtc_present() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "NVRTC missing under CI: scripts/test.sh installs nvidia-cuda-nvrtc-cu12"
    );
    eprintln!("SKIPPED: libnvrtc not found (scripts/test.sh installs it)");
    false
}

#[test]
fn every_kernel_compiles_to_ptx_with_nvrtc() {
    if !nvrtc_or_skip() {
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

/// The device path loads CUBINs built for the device's own architecture; A100 (sm_80) and
/// H100 (sm_90) must build, and NVRTC must list them.
#[test]
fn every_kernel_compiles_to_device_code_for_a100_and_h100() {
    if !nvrtc_or_skip() {
        return;
    }
    let archs = cuda::nvrtc_architectures().expect("NVRTC lists its architectures");
    for sm in [80, 90] {
        assert!(archs.contains(&sm), "NVRTC {:?} lacks sm_{sm}: {archs:?}", cuda::nvrtc_version());
        for kernel in &cuda::KERNELS {
            let cubin = cuda::compile_cubin(kernel, sm).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "{} for sm_{sm} is an ELF CUBIN", kernel.file);
            for entry in kernel.entries {
                let symbol = entry.as_bytes();
                assert!(
                    cubin.windows(symbol.len()).any(|w| w == symbol),
                    "{} for sm_{sm} lacks the symbol {entry}",
                    kernel.file
                );
            }
        }
    }
}

#[test]
fn a_kernel_with_an_error_does_not_compile_and_the_log_says_where() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = cuda::Kernel {
        file: "broken.cu",
        source: "extern \"C\" __global__ void k(float* y) { y[0] = undefined_name; }",
        entries: &["k"],
    };
    match cuda::compile(&broken, "compute_80") {
        Err(CudaError::Compile { log, .. }) => assert!(log.contains("undefined_name"), "{log}"),
        other => panic!("expected a compile error, got {other:?}"),
    }
    match cuda::compile_cubin(&broken, 90) {
        Err(e @ CudaError::Compile { .. }) => {
            let message = e.to_string();
            assert!(message.contains("undefined_name") && message.contains("broken.cu"), "{message}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn the_cuda_backend_where_it_cannot_run_is_a_clear_error_never_a_cpu_fallback() {
    assert_eq!(selection::select(BackendChoice::Cpu).expect("cpu").name(), "cpu");
    assert!("gpu".parse::<BackendChoice>().is_err());
    if !cuda::driver_present() {
        let error = selection::select(BackendChoice::Cuda).expect_err("no driver: cuda must refuse");
        assert_eq!(error, CudaError::NoDriver);
        assert!(error.to_string().contains("--backend cpu"), "says what to do: {error}");
        let auto = selection::select(BackendChoice::Auto).expect("auto takes the CPU, saying so");
        assert_eq!(auto.name(), "auto", "the audit log and metrics say what was asked for");
        let store = ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).expect("models");
        for version in store.versions() {
            let scorer = auto.load(&version).expect("tract loads it");
            assert_eq!(scorer.backend(), "cpu", "{} says it runs on the CPU", version.key());
        }
        return;
    }
    // A driver is present: `cuda` runs where a device can be opened, and otherwise names why.
    match selection::select(BackendChoice::Cuda) {
        Ok(backend) => {
            assert_eq!(backend.name(), "cuda");
            assert_eq!(selection::select(BackendChoice::Auto).expect("auto").name(), "auto");
        }
        Err(error) => {
            assert!(matches!(error, CudaError::NoDevice { .. } | CudaError::NoNvrtc), "{error}");
            assert_eq!(selection::select(BackendChoice::Auto).expect("auto").name(), "auto");
        }
    }
}
