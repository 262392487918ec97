//! Monitor: drift per model version ([`drift`]), latency ([`latency`]), consumer lag
//! ([`lag`]), the live view ([`live`]) and the stage that runs them ([`stage`]).
//!
//! [`install_recorder`] installs the process-wide Prometheus recorder once; every stage then
//! records with the `metrics` macros and serves [`PrometheusHandle::render`] on `/metrics`.

pub mod drift;
pub mod lag;
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
            // Millisecond-friendly buckets for every `_seconds` histogram (latencies, waits).
            let buckets = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()), &buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
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
        metrics::histogram!("streamscore_test_wait_seconds").record(0.003);
        let text = handle.render();
        assert!(text.contains("streamscore_test_events_total{outcome=\"ok\"} 3"), "{text}");
        assert!(
            text.contains("streamscore_test_wait_seconds_bucket{le=\"0.005\"} 1"),
            "histograms have ms buckets: {text}"
        );
        assert!(text.contains("streamscore_test_wait_seconds_bucket{le=\"0.002\"} 0"), "{text}");
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
