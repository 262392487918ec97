//! Backends: what turns a batch of feature rows into scores.
//!
//! A [`Backend`] loads a model version into a [`Scorer`]; the stage calls the scorer off the
//! async reactor with a row-major batch. The CPU backend is tract ([`TractBackend`]); the
//! CUDA backend slots in behind the same traits.

use std::sync::Arc;

use streamscore_modelstore::ModelVersion;
use thiserror::Error;
use tract_onnx::prelude::*;

/// A backend failure.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("loading {model}: {reason}")]
    Load { model: String, reason: String },
    #[error("scoring a batch of {rows} rows: {reason}")]
    Run { rows: usize, reason: String },
    #[error("input has {got} values, expected {rows} rows × {features} features")]
    Shape { got: usize, rows: usize, features: usize },
}

/// A loaded model version.
pub trait Scorer: Send + Sync + std::fmt::Debug {
    /// Features per row.
    fn features(&self) -> usize;
    /// The backend that runs it (`cpu`, `cuda`): what goes in every prediction's `backend`
    /// field. Under `auto` it can differ between versions.
    fn backend(&self) -> &'static str;
    /// Scores `rows` rows of [`Scorer::features`] values each (row-major); one score per row.
    fn score(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, BackendError>;
}

/// Loads model versions.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The backend as asked for (`cpu`, `cuda`, `auto`).
    fn name(&self) -> &'static str;
    fn load(&self, version: &ModelVersion) -> Result<Arc<dyn Scorer>, BackendError>;
}

/// Which output column is the score: the only one, or the positive class of two (softmax
/// classes). Anything else is not a score.
pub fn score_column(outputs: usize) -> Result<usize, String> {
    match outputs {
        1 => Ok(0),
        2 => Ok(1),
        n => Err(format!("the model has {n} outputs; a score needs 1 (or 2 softmax classes, the second scored)")),
    }
}

/// Checks that `input` holds `rows` rows of `features` values: every scorer's precondition.
pub fn check_shape(input: &[f32], rows: usize, features: usize) -> Result<(), BackendError> {
    if input.len() == rows * features {
        Ok(())
    } else {
        Err(BackendError::Shape { got: input.len(), rows, features })
    }
}

/// tract on the CPU: the ONNX graph with a symbolic batch dimension, optimized once.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

type Plan = Arc<TypedSimplePlan>;

/// A version loaded in tract.
#[derive(Debug)]
pub struct TractScorer {
    plan: Plan,
    features: usize,
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load(&self, version: &ModelVersion) -> Result<Arc<dyn Scorer>, BackendError> {
        let load_error = |e: TractError| BackendError::Load { model: version.key(), reason: format!("{e:#}") };
        let features = version.meta.features.len();
        let bytes =
            version.read_verified().map_err(|e| BackendError::Load { model: version.key(), reason: e.to_string() })?;
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(load_error)?
            .into_optimized()
            .map_err(load_error)?
            .into_runnable()
            .map_err(load_error)?;
        Ok(Arc::new(TractScorer { plan, features }))
    }
}

impl Scorer for TractScorer {
    fn features(&self) -> usize {
        self.features
    }

    fn backend(&self) -> &'static str {
        "cpu"
    }

    fn score(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, BackendError> {
        check_shape(input, rows, self.features)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let run_error = |e: TractError| BackendError::Run { rows, reason: format!("{e:#}") };
        let tensor = Tensor::from_shape(&[rows, self.features], input).map_err(run_error)?;
        let outputs = self.plan.run(tvec!(tensor.into())).map_err(run_error)?;
        let scores = outputs
            .first()
            .ok_or_else(|| BackendError::Run { rows, reason: "the model has no output".to_owned() })?
            .try_as_plain_ram()
            .and_then(|view| view.as_slice::<f32>().map(<[f32]>::to_vec))
            .map_err(run_error)?;
        if scores.len() % rows != 0 {
            return Err(BackendError::Run { rows, reason: format!("{} scores for {rows} rows", scores.len()) });
        }
        let outputs = scores.len() / rows;
        let column = score_column(outputs).map_err(|reason| BackendError::Run { rows, reason })?;
        if outputs == 1 {
            return Ok(scores);
        }
        Ok(scores.chunks_exact(outputs).map(|row| row[column]).collect())
    }
}
