//! Live figures of the pipeline for the main job's view: counts and request-to-prediction latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters shared by the stages and the live view.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Records ingest consumed.
    pub consumed: AtomicU64,
    /// Records ingest dead-lettered.
    pub dead_lettered: AtomicU64,
    pub scored: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub shadow: AtomicU64,
    /// Request created → prediction acknowledged, µs, since the last [`LiveStats::take_latencies`].
    latencies: Mutex<Vec<u64>>,
    /// Drift status per model version (`fraud/1` → `no drift` / `drifting: amount`).
    pub drift: Mutex<std::collections::BTreeMap<String, String>>,
    /// The latest drift alerts, newest last, as one line each.
    pub alerts: Mutex<Vec<String>>,
}

impl LiveStats {
    pub fn record_latency(&self, micros: u64) {
        self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(micros);
    }

    /// The latencies recorded since the last call.
    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn outcomes(&self) -> u64 {
        self.scored.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }
}

/// The `q` quantile (0..=1) of `values` by the nearest-rank method; sorts in place.
pub fn quantile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50));
        assert_eq!(quantile(&mut v, 0.99), Some(99));
        assert_eq!(quantile(&mut v, 1.0), Some(100));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
