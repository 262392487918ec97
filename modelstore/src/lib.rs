//! The model store: `models/<name>/model.json` (the family: default version) and
//! `models/<name>/<version>/{model.onnx, metadata.json}`.
//!
//! - [`metadata`]: what a version declares — features (names, kinds, valid ranges), labels,
//!   threshold, reference distributions for the monitor, training provenance, sha256.
//! - [`store`]: scanning the directory, verifying every ONNX file against its sha256,
//!   routing a request to a version, and rescanning for versions dropped in later.
//! - [`features`]: checking a request's features against a version and building the exact
//!   input vector the model sees.

pub mod features;
pub mod metadata;
pub mod pins;
pub mod store;

pub use features::{FeatureError, FeatureVector};
pub use metadata::{Distribution, FeatureKind, FeatureMeta, ModelMetadata};
pub use pins::Pins;
pub use store::{ModelStore, ModelVersion, Refused, RouteError, SharedStore, StoreError};
