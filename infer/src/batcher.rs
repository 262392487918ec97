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
pub async fn run<T>(rx: mpsc::Receiver<T>, config: BatchConfig, flush: impl FnMut(Vec<T>)) {
    run_fair(rx, config, |items: &[T]| (0..items.len()).collect(), flush).await;
}

/// Like [`run`], but when more items are waiting than a batch holds (capacity is short), up to
/// four batches' worth are put in the order `order` gives (see `quota::fair`) and the batch
/// takes the first; the rest wait, in front, for the next batch.
pub async fn run_fair<T>(
    mut rx: mpsc::Receiver<T>,
    config: BatchConfig,
    order: impl Fn(&[T]) -> Vec<usize>,
    mut flush: impl FnMut(Vec<T>),
) {
    let max_batch = config.max_batch.max(1);
    let mut waiting: std::collections::VecDeque<T> = std::collections::VecDeque::new();
    let mut closed = false;
    loop {
        if waiting.is_empty() {
            if closed {
                return;
            }
            match rx.recv().await {
                Some(first) => waiting.push_back(first),
                None => return,
            }
        }
        let deadline = Instant::now() + config.max_wait;
        while waiting.len() < max_batch && !closed {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => waiting.push_back(item),
                Ok(None) => closed = true,
                Err(_) => break,
            }
        }
        // Capacity is short when more is ready than one batch holds.
        while waiting.len() < max_batch * 4 {
            match rx.try_recv() {
                Ok(item) => waiting.push_back(item),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if waiting.len() <= max_batch {
            flush(waiting.drain(..).collect());
            continue;
        }
        let items: Vec<T> = waiting.drain(..).collect();
        let ranked = order(&items);
        let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
        let mut batch = Vec::with_capacity(max_batch);
        let mut rest = Vec::with_capacity(slots.len() - max_batch);
        for (position, index) in ranked.into_iter().enumerate() {
            if let Some(item) = slots.get_mut(index).and_then(Option::take) {
                if position < max_batch {
                    batch.push(item)
                } else {
                    rest.push(item)
                }
            }
        }
        // Anything `order` left out keeps its place at the back.
        rest.extend(slots.into_iter().flatten());
        waiting.extend(rest);
        flush(batch);
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
    async fn a_backlog_is_served_in_fair_order() {
        let (tx, rx) = mpsc::channel(10_000);
        // 24 items of tenant 0 (a flood), then 4 of tenant 1, all waiting before the batcher runs
        // (within the four batches the batcher looks ahead).
        for i in 0..24_u32 {
            tx.send((0_u8, i)).await.unwrap();
        }
        for i in 0..4_u32 {
            tx.send((1_u8, 100 + i)).await.unwrap();
        }
        drop(tx);
        let mut batches = Vec::new();
        let order = |items: &[(u8, u32)]| {
            crate::quota::fair::fair_order(items.iter().map(|(t, _)| (if *t == 0 { "flood" } else { "quiet" }, 2)))
        };
        run_fair(rx, BatchConfig { max_batch: 8, max_wait: Duration::from_millis(1) }, order, |b| batches.push(b))
            .await;
        let quiet_in_first: usize = batches[0].iter().filter(|(t, _)| *t == 1).count();
        assert_eq!(quiet_in_first, 4, "the quiet tenant is served in the first batch: {:?}", batches[0]);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 28, "none lost");
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
