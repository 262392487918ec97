//! Monitor: metrics today; drift and latency land with the monitor issue.
//!
//! [`install_recorder`] installs the process-wide Prometheus recorder once; every stage then
//! records with the `metrics` macros and serves [`PrometheusHandle::render`] on `/metrics`.

pub mod drift;
pub mod latency;
pub mod live;
pub mod stage;

use std::sync::OnceLock;

pub use live::{quantile, LiveStats};

use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;

/// Installs (once per process) the Prometheus recorder and returns its handle.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); ours still renders what it saw.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_counters_render_as_prometheus_text() {
        let handle = install_recorder();
        metrics::counter!("streamscore_test_events_total", "outcome" => "ok").increment(3);
        let text = handle.render();
        assert!(text.contains("streamscore_test_events_total{outcome=\"ok\"} 3"), "{text}");
    }
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    handle: PrometheusHandle,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use warp::Filter;
    let route = warp::path::full().map(move |path: warp::path::FullPath| {
        let mut response = warp::reply::Response::new(if path.as_str() == "/metrics" {
            handle.render().into()
        } else {
            "not found: metrics are on /metrics\n".into()
        });
        if path.as_str() != "/metrics" {
            *response.status_mut() = warp::http::StatusCode::NOT_FOUND;
        }
        response.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    });
    warp::serve(route).incoming(listener).graceful(shutdown).run().await;
}
