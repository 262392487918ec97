//! Infer: scores validated requests and writes prediction outcomes.
//!
//! - [`backend`]: the [`Backend`]/[`Scorer`] traits and the tract CPU backend.
//! - [`batcher`]: micro-batching on a maximum size or a maximum wait.
//! - [`stage`]: routing (named version, tenant pin, default), per-version batches scored off
//!   the reactor, shadow versions, hot-loaded new versions (audited), outcomes acknowledged
//!   before their requests are.
//! - [`outcome`]: explicit rejections.

pub mod backend;
pub mod batcher;
pub mod cuda;
pub mod mlp;
pub mod outcome;
pub mod quota;
pub mod router;
pub mod source;
pub mod stage;

pub use backend::{Backend, BackendError, Scorer, TractBackend};
pub use batcher::BatchConfig;
pub use outcome::rejected;
pub use stage::{run, InferConfig, InferError};
