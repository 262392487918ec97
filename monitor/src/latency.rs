//! Latency from lineage timestamps: end to end (request created → prediction written), queue
//! wait and inference, per model version and backend, in HDR histograms (3 significant
//! digits) for the monitor's reports, and as Prometheus histograms.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use streamscore_contracts::PredictionOutcome;

/// Microsecond histograms of one model version on one backend.
#[derive(Debug, Clone)]
pub struct Latencies {
    pub end_to_end: Histogram<u64>,
    pub queue_wait: Histogram<u64>,
    pub inference: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        let new = || {
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
        };
        Self { end_to_end: new(), queue_wait: new(), inference: new() }
    }
}

/// Latencies by (model, version, backend).
#[derive(Debug, Clone, Default)]
pub struct LatencyBook {
    pub by_version: BTreeMap<(String, String, String), Latencies>,
    /// `streamscore_prediction_latency_seconds` handles (end to end, queue wait, inference)
    /// by (model, version, backend), so a prediction builds no label.
    exported: BTreeMap<(String, String, String), [metrics::Histogram; 3]>,
}

impl LatencyBook {
    /// Records one prediction.
    pub fn record(&mut self, outcome: &PredictionOutcome) {
        let key = (
            outcome.model.clone(),
            outcome.model_version.clone().unwrap_or_default(),
            outcome.backend.clone().unwrap_or_default(),
        );
        let end_to_end =
            u64::try_from(outcome.lineage.written_at.saturating_sub(outcome.request_created_at)).unwrap_or(0).max(1);
        let queue = u64::try_from(outcome.queue_wait_us).unwrap_or(0).max(1);
        let inference = u64::try_from(outcome.inference_us).unwrap_or(0).max(1);
        if !self.exported.contains_key(&key) {
            let handle = |stage: &'static str| {
                metrics::histogram!(
                    "streamscore_prediction_latency_seconds",
                    "model" => key.0.clone(),
                    "version" => key.1.clone(),
                    "backend" => key.2.clone(),
                    "stage" => stage,
                )
            };
            let handles = [handle("end_to_end"), handle("queue_wait"), handle("inference")];
            self.exported.insert(key.clone(), handles);
        }
        if let Some(handles) = self.exported.get(&key) {
            #[allow(clippy::cast_precision_loss)]
            for (handle, micros) in handles.iter().zip([end_to_end, queue, inference]) {
                handle.record(micros as f64 / 1e6);
            }
        }
        let entry = self.by_version.entry(key).or_default();
        entry.end_to_end.saturating_record(end_to_end);
        entry.queue_wait.saturating_record(queue);
        entry.inference.saturating_record(inference);
    }
}

#[cfg(test)]
mod tests {
    use streamscore_contracts::{Lineage, OutcomeStatus, SourceOffset, Stage};

    use super::*;
    use streamscore_telemetry::quantile;

    fn outcome(created: i64, written: i64) -> PredictionOutcome {
        let mut lineage = Lineage::derive(SourceOffset::new("t", 0, 0), Stage::Infer, "prediction", "i", None, None);
        lineage.written_at = written;
        PredictionOutcome {
            lineage,
            status: OutcomeStatus::Scored,
            shadow: false,
            model: "fraud".to_owned(),
            model_version: Some("1".to_owned()),
            model_sha256: None,
            backend: Some("cpu".to_owned()),
            score: Some(0.1),
            label: None,
            reason: None,
            detail: None,
            retry_after_ms: None,
            features: streamscore_contracts::Features::default(),
            batch_size: 1,
            queue_wait_us: 10,
            inference_us: 5,
            request_created_at: created,
            reply_to: None,
            routed_by: None,
            explanation: None,
        }
    }

    #[test]
    fn hostile_event_times_are_counted_without_overflow() {
        let mut book = LatencyBook::default();
        book.record(&outcome(i64::MAX, i64::MIN));
        book.record(&outcome(i64::MIN, i64::MAX));
        let h = &book.by_version[&("fraud".to_owned(), "1".to_owned(), "cpu".to_owned())].end_to_end;
        assert_eq!(h.len(), 2, "both counted (a negative age as the smallest bucket, a huge one saturated)");
    }

    #[test]
    fn reported_percentiles_agree_with_a_direct_computation() {
        // A skewed, deterministic set of latencies from 0.2 ms to about 2 s.
        let mut direct: Vec<u64> = (1..=5_000_u64).map(|i| 200 + (i * i * 7919) % 2_000_000 / (1 + i % 13)).collect();
        let mut book = LatencyBook::default();
        for (i, micros) in direct.iter().enumerate() {
            let created = 1_000_000 * i as i64;
            book.record(&outcome(created, created + *micros as i64));
        }
        let h = &book.by_version[&("fraud".to_owned(), "1".to_owned(), "cpu".to_owned())].end_to_end;
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = quantile(&mut direct, q).unwrap() as f64;
            let reported = h.value_at_quantile(q) as f64;
            // HDR histograms keep 3 significant digits: within 0.1 % of the exact value.
            assert!((reported - exact).abs() <= exact * 1e-3 + 1.0, "q{q}: reported {reported} vs direct {exact}");
        }
        assert_eq!(h.len(), 5_000);
    }
}
