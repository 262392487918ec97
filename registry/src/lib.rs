//! A Confluent-compatible Schema Registry for Avro, its state kept in a Kafka topic.
//!
//! - [`api`]: the REST API (register, lookup, ids, subjects, versions, compatibility, config,
//!   soft and hard deletes) with Confluent's content type, error bodies and codes.
//! - [`state`]: the in-memory model and the log records that change it.
//! - [`store`]: the Kafka topic behind the state (read to the end at start, tailed after).
//! - [`compat`]: compatibility levels and the Avro checks behind them.
//!
//! [`serve`] runs it on a bound listener until a shutdown future resolves; [`serve_with`]
//! also over HTTPS ([`streamscore_tls`]) with users re-read when their file changes
//! ([`auth::watch`]).

pub mod api;
pub mod auth;
pub mod compat;
pub mod error;
pub mod state;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use warp::Filter;

pub use auth::Auth;
pub use error::ApiError;
pub use store::{Store, StoreError};
pub use streamscore_tls::Current;

/// The default registry topic, as Confluent's.
pub const DEFAULT_TOPIC: &str = "_schemas";

/// Serves the API (and `/metrics`, when a renderer is given) on `listener` until `shutdown`
/// resolves, over plain HTTP, with `auth` deciding who may do what.
pub async fn serve(
    store: Arc<Store>,
    auth: Arc<Auth>,
    metrics: Option<api::MetricsRender>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let auth = Arc::new(Current::new(Arc::unwrap_or_clone(auth)));
    serve_with(store, auth, metrics, listener, None, shutdown).await;
}

/// As [`serve`], with the users in force whatever `auth` holds now (see [`auth::watch`]), and
/// over HTTPS when `tls` is given (failed handshakes counted in
/// `streamscore_registry_tls_handshake_failures_total`).
pub async fn serve_with(
    store: Arc<Store>,
    auth: Arc<Current<Auth>>,
    metrics: Option<api::MetricsRender>,
    listener: tokio::net::TcpListener,
    tls: Option<&streamscore_tls::Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let routes = api::routes(store, auth, metrics);
    match tls {
        None => warp::serve(routes).incoming(listener).graceful(shutdown).run().await,
        Some(tls) => {
            let failures = metrics::counter!("streamscore_registry_tls_handshake_failures_total");
            let routes = routes.map(warp::Reply::into_response);
            tls.serve(routes, listener, failures, shutdown).await;
        }
    }
}
