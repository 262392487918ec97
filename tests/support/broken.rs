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
