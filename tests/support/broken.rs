//! A backend whose model fails on every batch (a lost device): the pipeline answers `FAILED`.

use std::sync::Arc;

use streamscore_infer::{Backend, BackendError, Scorer};

#[derive(Debug)]
pub struct Broken;

#[derive(Debug)]
struct BrokenScorer;

impl Scorer for BrokenScorer {
    fn features(&self) -> usize {
        16
    }
    fn backend(&self) -> &'static str {
        "broken"
    }
    fn score(&self, _: &[f32], rows: usize) -> Result<Vec<f32>, BackendError> {
        Err(BackendError::Run { rows, reason: "device lost".to_owned() })
    }
}

impl Backend for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn load(&self, _: &streamscore_modelstore::ModelVersion) -> Result<Arc<dyn Scorer>, BackendError> {
        Ok(Arc::new(BrokenScorer))
    }
}

/// Tract, except that one version's model fails on every batch (a version whose graph breaks
/// at run time).
#[derive(Debug)]
pub struct BrokenVersion(pub &'static str);

impl Backend for BrokenVersion {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn load(&self, version: &streamscore_modelstore::ModelVersion) -> Result<Arc<dyn Scorer>, BackendError> {
        if version.meta.version == self.0 {
            Ok(Arc::new(BrokenScorer))
        } else {
            streamscore_infer::TractBackend.load(version)
        }
    }
}
