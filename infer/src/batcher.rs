//! Micro-batching: collect items until the batch is full or the first item has waited the
//! maximum time, whichever comes first.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// When a batch is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Flush as soon as this many items are waiting.
    pub max_batch: usize,
    /// Flush when the oldest item has waited this long. Tokio's timers tick in milliseconds,
    /// so a wait that is not a whole number of milliseconds is rounded up to the next one.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_batch: 256, max_wait: Duration::from_micros(2_000) }
    }
}

/// Reads `rx` until it closes, calling `flush` with each batch (never empty) in order.
pub async fn run<T>(mut rx: mpsc::Receiver<T>, config: BatchConfig, mut flush: impl FnMut(Vec<T>)) {
    let max_batch = config.max_batch.max(1);
    while let Some(first) = rx.recv().await {
        let deadline = Instant::now() + config.max_wait;
        let mut batch = Vec::with_capacity(max_batch);
        batch.push(first);
        let mut closed = false;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => batch.push(item),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        flush(batch);
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Flushes = Arc<Mutex<Vec<(Duration, Vec<u32>)>>>;

    fn start(config: BatchConfig) -> (mpsc::Sender<u32>, Flushes, tokio::task::JoinHandle<()>, Instant) {
        let (tx, rx) = mpsc::channel(10_000);
        let flushes: Flushes = Arc::default();
        let seen = Arc::clone(&flushes);
        let t0 = Instant::now();
        let task = tokio::spawn(run(rx, config, move |batch| seen.lock().unwrap().push((t0.elapsed(), batch))));
        (tx, flushes, task, t0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_trickle_flushes_every_batch_at_max_wait() {
        let wait = Duration::from_micros(3_000);
        let (tx, flushes, task, t0) = start(BatchConfig { max_batch: 64, max_wait: wait });
        // One item every 10 ms: each waits alone for the full max wait.
        for i in 0..5_u32 {
            tokio::time::sleep_until(t0 + Duration::from_millis(10) * i).await;
            tx.send(i).await.unwrap();
        }
        // Keep the channel open past the last max wait (closing it flushes at once).
        tokio::time::sleep_until(t0 + Duration::from_millis(100)).await;
        drop(tx);
        task.await.unwrap();
        let flushes = flushes.lock().unwrap();
        assert_eq!(flushes.len(), 5);
        for (i, (at, batch)) in (0_u32..).zip(flushes.iter()) {
            assert_eq!(batch, &vec![i]);
            assert_eq!(*at, Duration::from_millis(10) * i + wait, "batch {i} flushed at its max wait");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_fills_batches_to_the_maximum() {
        let (tx, flushes, task, _) = start(BatchConfig { max_batch: 64, max_wait: Duration::from_millis(5) });
        for i in 0..(64 * 10 + 7) {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let flushes = flushes.lock().unwrap();
        let sizes: Vec<usize> = flushes.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes[..10], [64; 10], "full batches while the burst lasts");
        assert_eq!(sizes[10], 7, "the remainder");
        for (at, _) in &flushes[..10] {
            assert_eq!(*at, Duration::ZERO, "full batches do not wait");
        }
        let all: Vec<u32> = flushes.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert_eq!(all, (0..64 * 10 + 7).collect::<Vec<_>>(), "in order, none lost");
    }
}
