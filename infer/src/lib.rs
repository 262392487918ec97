//! Infer: scores validated requests and writes prediction outcomes.
//!
//! - [`router`]: the routing decision of one request as a value — quota, pins, the store's
//!   routing, the loaded versions — pure and unit-tested.
//! - [`quota`]: the tenant policy and the per-partition token buckets it drives.
//! - [`backend`]: the [`Backend`]/[`Scorer`] traits and the tract CPU backend; [`mlp`] reads
//!   the shipped ONNX graphs into dense layers; [`cuda`] runs them with custom kernels;
//!   [`selection`] picks one (`--backend cpu|cuda|auto`, never a silent CPU run).
//! - [`explain`]: explanations — baseline Shapley values of a row, scored through the version's
//!   own [`Scorer`] (exact up to 16 features, sampled permutations above).
//! - [`batcher`]: micro-batching on a maximum size or a maximum wait.
//! - [`stage`]: the stage itself — policy and model loading (audited), per-version batches
//!   scored off the reactor, shadow versions, hot-loaded new versions, outcomes acknowledged
//!   before their requests are; explained requests in a lane of their own per version.
//! - [`outcome`]: explicit rejections; [`source`]: reading the validated topic (the split
//!   deployment).

pub mod backend;
pub mod batcher;
pub mod cuda;
pub mod explain;
pub mod mlp;
pub mod outcome;
pub mod quota;
pub mod router;
pub mod selection;
pub mod source;
pub mod stage;

pub use backend::{Backend, BackendError, Scorer, TractBackend};
pub use batcher::BatchConfig;
pub use outcome::rejected;
pub use stage::{run, InferConfig, InferError};
