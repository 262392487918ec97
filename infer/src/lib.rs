//! Infer: scores validated requests and writes prediction outcomes.
//!
//! What exists today is the outcome side every path of the stage shares: [`outcome`] builds
//! the explicit rejection a caller reads when a request cannot be scored, with lineage back to
//! the request's offset and a deterministic event id. The model store, micro-batching and the
//! tract and CUDA backends land with their issues.

pub mod outcome;

pub use outcome::rejected;
