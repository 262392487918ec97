//! Monitor: metrics today; drift and latency land with the monitor issue.
//!
//! [`install_recorder`] installs the process-wide Prometheus recorder once; every stage then
//! records with the `metrics` macros and serves [`PrometheusHandle::render`] on `/metrics`.

use std::sync::OnceLock;

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
        assert!(
            text.contains("streamscore_test_events_total{outcome=\"ok\"} 3"),
            "{text}"
        );
    }
}
