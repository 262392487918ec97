//! Typed telemetry of the ingest stage: each event logs and counts in one place, so logs and
//! metrics never drift apart. Metric names follow Prometheus conventions.

use std::time::Duration;

use streamscore_contracts::{DeadLetter, ValidatedRequest};

/// A request was validated and handed to infer.
#[derive(Debug)]
pub struct Validated<'a>(pub &'a ValidatedRequest, pub Duration);

impl Validated<'_> {
    pub fn emit(self) {
        // The handles are looked up once per process (the recorder is installed before any
        // stage runs), so a validated request costs two atomic updates, no registry lookup.
        static HANDLES: std::sync::OnceLock<(metrics::Counter, metrics::Histogram)> = std::sync::OnceLock::new();
        let (validated, seconds) = HANDLES.get_or_init(|| {
            (
                metrics::counter!("streamscore_ingest_records_total", "outcome" => "validated", "reason" => ""),
                metrics::histogram!("streamscore_ingest_validation_seconds"),
            )
        });
        validated.increment(1);
        seconds.record(self.1.as_secs_f64());
    }
}

/// A record was dead-lettered.
#[derive(Debug)]
pub struct DeadLettered<'a>(pub &'a DeadLetter, pub Duration);

impl DeadLettered<'_> {
    pub fn emit(self) {
        let dl = self.0;
        tracing::info!(
            request_id = dl.lineage.request_id.as_deref().unwrap_or("-"),
            tenant = dl.lineage.tenant.as_deref().unwrap_or("-"),
            source = %dl.lineage.source,
            reason = dl.reason.code(),
            detail = %dl.detail,
            "dead-lettered"
        );
        metrics::counter!("streamscore_ingest_records_total", "outcome" => "dead_letter", "reason" => dl.reason.code())
            .increment(1);
        metrics::histogram!("streamscore_ingest_validation_seconds").record(self.1.as_secs_f64());
    }
}

/// The registry could not be reached; the record is retried, not skipped.
#[derive(Debug)]
pub struct RegistryUnavailable<'a>(pub &'a streamscore_contracts::DecodeError);

impl RegistryUnavailable<'_> {
    pub fn emit(self) {
        tracing::warn!(error = %self.0, "schema registry unavailable; retrying the record");
        metrics::counter!("streamscore_ingest_registry_retries_total").increment(1);
    }
}

/// A dead letter's original value was cut to fit the producer's record limit.
#[derive(Debug)]
pub struct DeadLetterCut<'a>(pub &'a DeadLetter);

impl DeadLetterCut<'_> {
    pub fn emit(self) {
        let dl = self.0;
        tracing::warn!(
            source = %dl.lineage.source,
            original_bytes = dl.original_value_length.unwrap_or_default(),
            sha256 = dl.original_value_sha256.as_deref().unwrap_or("-"),
            "dead letter's value cut to fit the record limit (length and sha256 kept)"
        );
        metrics::counter!("streamscore_ingest_dead_letters_cut_total").increment(1);
    }
}
