//! A Confluent-compatible Schema Registry for Avro, its state kept in a Kafka topic.
//!
//! - [`api`]: the REST API (register, lookup, ids, subjects, versions, compatibility, config,
//!   soft and hard deletes) with Confluent's content type, error bodies and codes.
//! - [`state`]: the in-memory model and the log records that change it.
//! - [`store`]: the Kafka topic behind the state (read to the end at start, tailed after).
//! - [`compat`]: compatibility levels and the Avro checks behind them.
//!
//! [`serve`] runs it on a bound listener until a shutdown future resolves.

pub mod api;
pub mod auth;
pub mod compat;
pub mod error;
pub mod state;
pub mod store;

use std::future::Future;
use std::sync::Arc;

pub use auth::Auth;
pub use error::ApiError;
pub use store::{Store, StoreError};

/// The default registry topic, as Confluent's.
pub const DEFAULT_TOPIC: &str = "_schemas";

/// Serves the API (and `/metrics`, when a renderer is given) on `listener` until `shutdown`
/// resolves, with `auth` deciding who may do what.
pub async fn serve(
    store: Arc<Store>,
    auth: Arc<Auth>,
    metrics: Option<api::MetricsRender>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(api::routes(store, auth, metrics)).incoming(listener).graceful(shutdown).run().await;
}
