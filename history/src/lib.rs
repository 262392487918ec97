//! The analysts' room: commands that read history from the topics and never write a live
//! one (apart from the audit log's record of a replay).
//!
//! - [`audit`]: `audit verify`, every chain and every output event against its commitment;
//!   also the topic readers the other commands share.
//! - [`lineage`]: everything the topics say about one request.
//! - [`replay`]: re-scoring history offline (same version: a proof; another: an agreement
//!   report), rows (with their features) to JSONL or Parquet ([`replay_parquet`]).
//! - [`quality`]: model quality per version from the prediction and feedback topics alone,
//!   labeled rows (with their features) to Parquet.
//! - [`explain`]: a past request's explanation recomputed from the topics by the version that
//!   scored it, bit for bit the live one.
//!
//! These are commands, run by a person or a script and read as a whole report or an error,
//! so this crate returns `anyhow` errors with context (as the binary does) rather than typed
//! ones: nothing here is a library other code branches on. The command line itself stays in
//! the `streamscore` binary (`src/cli/analysts.rs`).

pub mod audit;
pub mod explain;
pub mod lineage;
pub mod quality;
pub mod replay;
pub mod replay_parquet;
