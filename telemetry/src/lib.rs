//! Telemetry shared by every stage: the catalog of the metrics streamscore exports
//! ([`catalog`]: name, type, help, labels — the one list the README's table, the Grafana
//! dashboard and the tests are checked against), the process-wide Prometheus recorder
//! ([`install_recorder`]), the `/metrics` server ([`serve_metrics`]) and the live figures the
//! main job's view reads ([`LiveStats`]).
//!
//! Stages record with the `metrics` macros under the names in [`catalog::METRICS`]; nothing
//! here depends on Kafka or on any stage.

pub mod catalog;
pub mod live;

use std::net::SocketAddr;
use std::sync::OnceLock;

pub use live::{quantile, LiveStats};
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Buckets of every `_seconds` histogram (latencies, waits): 0.5 ms to 10 s.
pub const SECONDS_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of the micro-batch size histogram (records per batch).
pub const BATCH_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs (once per process) the Prometheus recorder, describes every metric of the
/// catalog (its `# HELP` line), and returns the recorder's handle.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(catalog::BATCH_SIZE.to_owned()), &BATCH_BUCKETS))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); ours still renders what it saw.
            let _ = metrics::set_global_recorder(recorder);
            catalog::describe_all();
            handle
        })
        .clone()
}

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` (`ok`, for container health
/// checks) on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    handle: PrometheusHandle,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use warp::Filter;
    let route = warp::path::full().map(move |path: warp::path::FullPath| {
        let (status, body) = match path.as_str() {
            "/metrics" => (warp::http::StatusCode::OK, handle.render()),
            "/healthz" => (warp::http::StatusCode::OK, "ok\n".to_owned()),
            _ => (warp::http::StatusCode::NOT_FOUND, "not found: metrics are on /metrics\n".to_owned()),
        };
        let mut response = warp::reply::Response::new(body.into());
        *response.status_mut() = status;
        response.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    });
    warp::serve(route).incoming(listener).graceful(shutdown).run().await;
}

/// Installs the recorder and serves it on `listen` in a task of its own for the rest of the
/// process; returns the address bound (port 0 picks a free one). A taken port is an error
/// that says so: two stages on one host need two ports.
pub async fn serve_metrics_on(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "binding the metrics address {listen}: {e} (another stage on this host? give each its own \
                 --metrics-listen, port 0 for any free port, or --metrics-listen off)"
            ),
        )
    })?;
    spawn_metrics(listener)
}

/// Installs the recorder and serves it on `listener` in a task of its own for the rest of the
/// process; returns the address served.
pub fn spawn_metrics(listener: tokio::net::TcpListener) -> std::io::Result<SocketAddr> {
    let handle = install_recorder();
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "metrics on http://{bound}/metrics");
    tokio::spawn(serve_metrics(handle, listener, std::future::pending()));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_metrics_render_with_help_and_buckets() {
        let handle = install_recorder();
        metrics::counter!(catalog::SOURCE_RECORDS, "stage" => "test").increment(3);
        metrics::histogram!("streamscore_infer_queue_wait_seconds").record(0.003);
        metrics::histogram!(catalog::BATCH_SIZE).record(48.0);
        let text = handle.render();
        assert!(text.contains("streamscore_source_records_total{stage=\"test\"} 3"), "{text}");
        assert!(text.contains("# HELP streamscore_source_records_total "), "described from the catalog: {text}");
        assert!(
            text.contains("streamscore_infer_queue_wait_seconds_bucket{le=\"0.005\"} 1"),
            "histograms have ms buckets: {text}"
        );
        assert!(text.contains("streamscore_infer_queue_wait_seconds_bucket{le=\"0.002\"} 0"), "{text}");
        assert!(text.contains("streamscore_infer_batch_size_bucket{le=\"64\"} 1"), "batch sizes in buckets: {text}");
    }
}
