//! Every metric streamscore exports: name, type, the labels it carries and its help text.
//!
//! Names follow Prometheus' conventions: a `streamscore_` prefix, base units (`_seconds`,
//! never ms or µs), `_total` on counters and only there, `_info` on gauges that carry labels
//! and the value 1. Label values are bounded: tenants are the policy's (else `_default`),
//! models and versions the model store's, reasons and statuses enums, partitions the topics'.
//! No request id, record key or free text ever becomes a label.
//!
//! `tests/metrics.rs` checks that this list, the README's table, the sources' `metrics::`
//! calls and the Grafana dashboard agree; `tests/prometheus.rs` scrapes the running stages
//! into a real Prometheus and runs `promtool check metrics` on what they serve.

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The name Prometheus' `# TYPE` line uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

pub const SOURCE_RECORDS: &str = "streamscore_source_records_total";
pub const SINK_RECORDS: &str = "streamscore_sink_records_total";
pub const BATCH_SIZE: &str = "streamscore_infer_batch_size";
pub const DRIFT_STATISTIC: &str = "streamscore_drift_statistic";
pub const ATTRIBUTION_MEAN_ABS: &str = "streamscore_attribution_mean_abs";

/// The labels of the quality figures.
const QUALITY: [&str; 4] = ["model", "version", "tenant", "window"];

const fn counter(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Counter, labels, help }
}
const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Gauge, labels, help }
}
const fn histogram(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Histogram, labels, help }
}

/// The catalog, grouped by the part of the system that records them.
pub const METRICS: &[Metric] = &[
    // Kafka sources and sinks (every stage).
    counter(SOURCE_RECORDS, &["stage"], "Records a stage consumed from Kafka."),
    histogram(
        "streamscore_source_finish_seconds",
        &["stage"],
        "From a consumed record's Kafka timestamp to every one of its outputs acknowledged.",
    ),
    counter(
        "streamscore_source_pauses_total",
        &["stage"],
        "Times a stage paused its partitions for a stalled consumer.",
    ),
    counter("streamscore_source_consume_errors_total", &["stage"], "Errors consuming from Kafka (retried)."),
    counter(SINK_RECORDS, &["stage"], "Records a stage wrote that the broker acknowledged."),
    counter("streamscore_sink_delivery_failures_total", &["stage"], "Records the broker did not acknowledge."),
    counter(
        "streamscore_kafka_requests_total",
        &["client", "request"],
        "Requests sent to the brokers, by request type (librdkafka statistics).",
    ),
    gauge(
        "streamscore_kafka_rtt_seconds",
        &["client", "percentile"],
        "Round-trip time of broker requests over the last statistics window, 50th and 99th percentile.",
    ),
    gauge(
        "streamscore_consumer_lag_records",
        &["group", "topic", "partition"],
        "Records between a group's committed offset and the end of the partition.",
    ),
    gauge(
        "streamscore_consumer_lag_seconds",
        &["group", "topic", "partition"],
        "Age of the oldest record a group has not committed yet.",
    ),
    // Ingest.
    counter(
        "streamscore_ingest_records_total",
        &["outcome", "reason"],
        "Requests ingest decided: validated, or dead_letter with its reason code.",
    ),
    histogram("streamscore_ingest_validation_seconds", &[], "Time to decode and validate one request."),
    counter("streamscore_ingest_registry_retries_total", &[], "Schema registry lookups ingest retried."),
    counter(
        "streamscore_ingest_dead_letters_cut_total",
        &[],
        "Dead letters whose original bytes were cut to fit the broker's record size.",
    ),
    // Rollouts (the control plane).
    gauge(
        "streamscore_rollout_share",
        &["model", "version"],
        "Share of a model's routed traffic each version answers under its rollout (1 for the default without one).",
    ),
    gauge("streamscore_rollout_step", &["model"], "The canary step of a model's rollout (-1: none, shadow or settled)."),
    gauge(
        "streamscore_rollout_gate",
        &["model", "gate"],
        "A rollout gate's figure over the current step (error_rate, score_psi, label_agreement, p99 seconds, outcomes).",
    ),
    counter(
        "streamscore_rollout_outcomes_total",
        &["model", "version", "step"],
        "Outcomes routed by a rollout's split, per version and canary step (-1: not a canary step).",
    ),
    counter(
        "streamscore_infer_fallbacks_total",
        &["model", "from", "to"],
        "Requests scored by their model's fallback version because the version they routed to failed or was refused.",
    ),
    // Infer.
    counter(
        "streamscore_infer_predictions_total",
        &["model", "version", "backend", "status"],
        "Outcomes infer wrote: scored, rejected or failed.",
    ),
    histogram(BATCH_SIZE, &[], "Requests per scored micro-batch."),
    histogram("streamscore_infer_inference_seconds", &["model"], "Time to score one micro-batch."),
    histogram("streamscore_infer_queue_wait_seconds", &[], "Time a request waited for its micro-batch."),
    histogram(
        "streamscore_infer_explanation_seconds",
        &["model"],
        "Time to explain one request (its coalition rows scored in the version's explanation lane).",
    ),
    counter("streamscore_infer_registry_retries_total", &[], "Schema registry lookups infer retried."),
    counter(
        "streamscore_infer_undecodable_validated_total",
        &[],
        "Records of the validated topic that could not be decoded (dead-lettered).",
    ),
    counter(
        "streamscore_infer_models_refused_total",
        &[],
        "Model versions refused at load (audited as MODEL_REFUSED).",
    ),
    gauge(
        "streamscore_backend_info",
        &["model", "backend", "requested"],
        "1 for each loaded model version, with the backend that runs it and the one asked for.",
    ),
    counter(
        "streamscore_quota_decisions_total",
        &["tenant", "decision"],
        "Quota decisions: admitted, delayed, rejected.",
    ),
    gauge("streamscore_quota_tokens", &["tenant"], "Tokens left in a tenant's bucket."),
    histogram("streamscore_quota_delay_seconds", &[], "Delay imposed on requests over their rate (on_exceed = delay)."),
    // Monitor.
    histogram(
        "streamscore_prediction_latency_seconds",
        &["model", "version", "backend", "stage"],
        "Prediction latency: end_to_end (request created to outcome written), queue_wait, inference.",
    ),
    gauge(
        DRIFT_STATISTIC,
        &["model", "version", "feature", "method"],
        "Latest drift statistic of a feature (or the score) against the reference, per method.",
    ),
    counter(
        "streamscore_drift_alerts_total",
        &["model", "version", "severity"],
        "Drift alerts published: warn, alert, resolved.",
    ),
    counter("streamscore_monitor_dead_letters_total", &["reason"], "Dead letters the monitor read, by reason code."),
    counter("streamscore_monitor_undecodable_total", &["topic"], "Records the monitor could not decode."),
    // Model quality (the monitor's join of labels to predictions), per model version and
    // tenant (`_all`: every tenant) over windows of prediction time (1h, 24h, 7d, all).
    gauge("streamscore_quality_predictions", &QUALITY, "Scored predictions whose request was created in the window."),
    gauge("streamscore_quality_labeled", &QUALITY, "Predictions in the window joined to a label."),
    gauge("streamscore_quality_labeled_ratio", &QUALITY, "Labeled predictions over predictions in the window."),
    gauge(
        "streamscore_quality_auc",
        &QUALITY,
        "ROC AUC of the labeled predictions in the window (NaN with one class).",
    ),
    gauge("streamscore_quality_log_loss", &QUALITY, "Log loss of the labeled predictions in the window."),
    gauge("streamscore_quality_brier_score", &QUALITY, "Brier score (mean squared error of the score) in the window."),
    gauge("streamscore_quality_precision", &QUALITY, "Precision at the version's threshold in the window."),
    gauge("streamscore_quality_recall", &QUALITY, "Recall at the version's threshold in the window."),
    gauge("streamscore_quality_f1", &QUALITY, "F1 at the version's threshold in the window."),
    gauge(
        "streamscore_quality_calibration_error",
        &QUALITY,
        "Expected calibration error (10 equal-width score bins) in the window.",
    ),
    gauge(
        "streamscore_quality_label_delay_seconds",
        &["model", "version", "tenant", "window", "percentile"],
        "From a request's creation to its label's observation, 50th and 99th percentile.",
    ),
    gauge(
        "streamscore_quality_degraded",
        &["model", "version"],
        "1 while a version is below the quality policy's thresholds (QUALITY_DEGRADED), else 0.",
    ),
    counter(
        "streamscore_quality_feedback_total",
        &["outcome", "reason"],
        "Labels the monitor read: joined, pending, duplicate, corrected, stale, or dead_letter with its reason.",
    ),
    gauge(
        "streamscore_quality_pending_labels",
        &[],
        "Labels waiting for their request's prediction (up to the horizon).",
    ),
    gauge("streamscore_quality_store_bytes", &[], "Size of the quality join's store on disk (database and log)."),
    gauge(
        ATTRIBUTION_MEAN_ABS,
        &["model", "version", "feature"],
        "Mean absolute attribution (Shapley value) of a feature over the last window of sampled predictions.",
    ),
    counter(
        "streamscore_monitor_attribution_samples_total",
        &["outcome"],
        "Predictions sampled for attributions: explained here, carried (the outcome had one), skipped (busy or not explainable).",
    ),
    // Schema registry.
    counter("streamscore_registry_requests_total", &["method", "outcome"], "Registry HTTP requests: ok or error."),
    // HTTP bridge.
    counter("streamscore_bridge_requests_total", &["route", "code"], "Bridge HTTP requests by route and status code."),
    histogram(
        "streamscore_bridge_request_duration_seconds",
        &["route"],
        "Time from a bridge request's arrival to its answer.",
    ),
    gauge("streamscore_bridge_waiters", &[], "Bridge callers waiting for their outcome."),
    gauge("streamscore_bridge_listening", &[], "1 while the bridge reads the predictions topic."),
    counter(
        "streamscore_bridge_reloads_total",
        &["what", "outcome"],
        "Bridge files re-read on a change (tenant policy, JWKS, TLS certificate, TLS client CA): loaded or refused.",
    ),
    counter(
        "streamscore_bridge_unclaimed_outcomes_total",
        &[],
        "Outcomes of bridge requests whose caller had already gone.",
    ),
    counter(
        "streamscore_bridge_tls_handshake_failures_total",
        &[],
        "TLS handshakes the bridge did not complete (plain HTTP, an untrusted or slow client).",
    ),
    counter(
        "streamscore_registry_reloads_total",
        &["what", "outcome"],
        "Registry files re-read on a change (registry users, TLS certificate): loaded or refused.",
    ),
    counter(
        "streamscore_registry_tls_handshake_failures_total",
        &[],
        "TLS handshakes the registry did not complete (plain HTTP, an untrusted or slow client).",
    ),
    counter(
        "streamscore_bridge_unauthenticated_outcomes_total",
        &["reason"],
        "Outcomes addressed to the bridge it did not hand over: seal missing, wrong_key, bad_mac, or wrong_tenant.",
    ),
    counter(
        "streamscore_bridge_auth_events_dropped_total",
        &[],
        "Authentication events not recorded in the audit log: its queue was full.",
    ),
    gauge(
        "streamscore_bridge_idempotency_loaded",
        &[],
        "1 once the bridge has read back the answers kept for idempotent retries (calls with a key are served).",
    ),
    counter(
        "streamscore_bridge_idempotency_write_failures_total",
        &["reason"],
        "Kept answers not written to the idempotency topic (encode, enqueue, delivery): a retry after a restart publishes again.",
    ),
    counter(
        "streamscore_bridge_idempotency_refused_total",
        &["reason"],
        "Records of the idempotency topic never replayed: seal missing, wrong_key, bad_mac, or undecodable.",
    ),
];

/// The catalog entry of `name` (a family name, without `_bucket`, `_sum` or `_count`).
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// Gives every metric its help text in the installed recorder.
pub fn describe_all() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// What breaks Prometheus' naming conventions in `m`, one line per problem.
pub fn convention_problems(m: &Metric) -> Vec<String> {
    let mut problems = Vec::new();
    let name = m.name;
    if !name.starts_with("streamscore_") {
        problems.push(format!("{name}: no streamscore_ prefix"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        problems.push(format!("{name}: not snake_case ASCII"));
    }
    match m.kind {
        Kind::Counter if !name.ends_with("_total") => problems.push(format!("{name}: a counter without _total")),
        Kind::Gauge | Kind::Histogram if name.ends_with("_total") => {
            problems.push(format!("{name}: _total on a {}", m.kind.name()));
        }
        _ => {}
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if name.ends_with(suffix) {
            problems.push(format!("{name}: ends with the reserved {suffix}"));
        }
    }
    for unit in ["_ms", "_us", "_micros", "milliseconds", "microseconds", "_millis", "_secs", "_minutes", "_bytes_kb"] {
        if name.contains(unit) {
            problems.push(format!("{name}: {unit} is not a base unit (seconds, bytes)"));
        }
    }
    for label in m.labels {
        if matches!(*label, "le" | "quantile" | "job" | "instance") || label.starts_with("__") {
            problems.push(format!("{name}: label {label} is reserved"));
        }
    }
    if m.help.trim().is_empty() {
        problems.push(format!("{name}: no help text"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_follows_the_conventions_once() {
        let problems: Vec<String> = METRICS.iter().flat_map(convention_problems).collect();
        assert!(problems.is_empty(), "{problems:#?}");
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a metric is listed twice");
    }

    #[test]
    fn the_checks_catch_what_they_look_for() {
        let bad = [
            counter("streamscore_events", &[], "x"),
            gauge("streamscore_waiting_total", &[], "x"),
            histogram("streamscore_wait_ms", &[], "x"),
            gauge("streamscore_rtt_seconds", &["quantile"], "x"),
            counter("requests_total", &[], "x"),
            gauge("streamscore_x", &[], " "),
        ];
        for m in &bad {
            assert!(!convention_problems(m).is_empty(), "{} passes", m.name);
        }
    }
}
