//! `--backend cpu|cuda|auto`: which backend scores. `cuda` where it cannot run is an error
//! that says why and what to do, never a CPU run; `auto` picks CUDA per model where it can run
//! it and says which it took in the log, in `streamscore_backend_info` and in every
//! prediction's `backend` field.

use std::sync::Arc;

use streamscore_modelstore::ModelVersion;

use crate::backend::{Backend, BackendError, Scorer, TractBackend};
use crate::cuda::{CudaBackend, CudaError};

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

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Auto => "auto",
        })
    }
}

/// Picks the backend. `cuda` fails loudly where it cannot run (no driver, no device, no
/// NVRTC, kernels that do not build or load); `auto` takes CUDA where it can and says so.
pub fn select(choice: BackendChoice) -> Result<Arc<dyn Backend>, CudaError> {
    match choice {
        BackendChoice::Cpu => Ok(Arc::new(TractBackend)),
        BackendChoice::Cuda => {
            let backend = CudaBackend::open(0)?;
            tracing::info!(backend = "cuda", device = backend.device().name(), "backend cuda");
            Ok(Arc::new(backend))
        }
        BackendChoice::Auto => Ok(Arc::new(AutoBackend::open())),
    }
}

/// `auto`: each model version on CUDA if a device is usable and the graph runs there, else on
/// tract, logged with the reason. The scorer's own name says which one runs it; the backend's
/// name stays `auto`, so the audit log and metrics say what was asked for.
#[derive(Debug)]
pub struct AutoBackend {
    cuda: Option<CudaBackend>,
}

impl AutoBackend {
    /// Opens device 0 if it can, saying in the log which way it went.
    pub fn open() -> Self {
        match CudaBackend::open(0) {
            Ok(cuda) => {
                tracing::info!(
                    device = cuda.device().name(),
                    "backend auto: CUDA where it can run a model, the CPU for any model it cannot"
                );
                Self { cuda: Some(cuda) }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::info!(backend = "cpu", reason, "backend auto: no usable GPU, every model runs on the CPU");
                Self { cuda: None }
            }
        }
    }
}

impl Backend for AutoBackend {
    fn name(&self) -> &'static str {
        "auto"
    }

    fn load(&self, version: &ModelVersion) -> Result<Arc<dyn Scorer>, BackendError> {
        let Some(cuda) = &self.cuda else { return TractBackend.load(version) };
        match cuda.load(version) {
            Ok(scorer) => Ok(scorer),
            Err(e) => {
                tracing::warn!(model = version.key(), reason = %e, "backend auto: this model runs on the CPU");
                TractBackend.load(version)
            }
        }
    }
}
