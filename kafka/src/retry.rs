//! The retryable-error rule, decided here for every stage: an input that failed for a reason
//! outside itself (the schema registry unreachable, slow, answering 5xx, 429 or 401) is not
//! the input's fault. It waits and is tried again with exponential backoff; it is never
//! dead-lettered and its offset is never stored. Only an answer about the input itself (the
//! registry says its schema id does not exist, its bytes do not decode) makes it poison, and
//! poison is dead-lettered with its reason and original bytes (see
//! [`streamscore_contracts::DeadLetter`]).
//!
//! The waits are plain futures: a stage races them against its shutdown signal, so a stop
//! request is honoured while the registry is down.

use std::future::Future;
use std::time::Duration;

use streamscore_contracts::{Codec, Event, RegistryError};

/// First wait after a retryable failure.
pub const FIRST_WAIT: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// One attempt's result.
#[derive(Debug)]
pub enum Attempt<T, E> {
    Done(T),
    /// A failure outside the input: wait and try again.
    Retry(E),
}

/// Exponential backoff from [`FIRST_WAIT`] to [`MAX_WAIT`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_WAIT }
    }
}

impl Backoff {
    /// The wait before the next attempt (doubling each time, up to [`MAX_WAIT`]).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_WAIT);
        wait
    }
}

/// Runs `attempt` until it is done, waiting with backoff after each retryable failure and
/// calling `on_retry` with the failure and the wait.
pub async fn until_done<T, E, Fut>(mut attempt: impl FnMut() -> Fut, mut on_retry: impl FnMut(&E, Duration)) -> T
where
    Fut: Future<Output = Attempt<T, E>>,
{
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Attempt::Done(value) => return value,
            Attempt::Retry(error) => {
                let wait = backoff.next_wait();
                on_retry(&error, wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Registers a contract's schema, waiting out registry outages: a stage that starts while
/// the registry is down waits for it instead of failing (or, worse, going on without it).
pub async fn register<T: Event>(codec: &Codec<T>) -> Result<u32, RegistryError> {
    until_done(
        || async {
            match codec.register().await {
                Err(e) if e.retryable => Attempt::Retry(e),
                other => Attempt::Done(other),
            }
        },
        |e, wait| tracing::warn!(subject = codec.subject(), error = %e, ?wait, "schema registry unavailable; retrying"),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..8).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_done() {
        let mut calls = 0;
        let mut retries = Vec::new();
        let value = until_done(
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Attempt::Retry(n)
                    } else {
                        Attempt::Done("ok")
                    }
                }
            },
            |e: &i32, wait| retries.push((*e, wait)),
        )
        .await;
        assert_eq!(value, "ok");
        assert_eq!(retries, [(1, FIRST_WAIT), (2, FIRST_WAIT * 2)]);
    }
}
