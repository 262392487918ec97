//! The retryable-error rule, decided here for every stage: an input that failed for a reason
//! outside itself (the schema registry unreachable, slow, answering 5xx, 429 or 401) is not
//! the input's fault. It waits and is tried again with exponential backoff; it is never
//! dead-lettered and its offset is never stored. Only an answer about the input itself (the
//! registry says its schema id does not exist, its bytes do not decode) makes it poison, and
//! poison is dead-lettered with its reason and original bytes (see
//! [`streamscore_contracts::DeadLetter`]).
//!
//! Every wait races the process's [`Shutdown`], so a stop request is honoured while the
//! registry is down, at start-up as in steady state.

use std::future::Future;
use std::time::Duration;

use streamscore_contracts::{Codec, Event, RegistryError};

use crate::shutdown::{Shutdown, Stopped};

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

/// Runs `attempt` until it is done, or until a stop is requested: the one place that decides
/// "retry until shutdown", for the waits of start-up (registering contracts) and of steady
/// state (a record waiting out a registry outage) alike. After each retryable failure it calls
/// `on_retry` with the failure and the wait, then waits with backoff; the attempt and the wait
/// both give way to `shutdown`.
///
/// # Errors
/// [`Stopped`] when a stop was requested first, naming `waiting_for` (made only then) and the
/// last failure met.
pub async fn until_done<T, E, Fut>(
    shutdown: &Shutdown,
    waiting_for: impl FnOnce() -> String,
    mut attempt: impl FnMut() -> Fut,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, Stopped>
where
    Fut: Future<Output = Attempt<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Backoff::default();
    let mut last_failure = None;
    let stopped = loop {
        let error = tokio::select! {
            biased;
            reason = shutdown.requested() => break reason,
            outcome = attempt() => match outcome {
                Attempt::Done(value) => return Ok(value),
                Attempt::Retry(error) => error,
            },
        };
        let wait = backoff.next_wait();
        on_retry(&error, wait);
        last_failure = Some(error.to_string());
        tokio::select! {
            biased;
            reason = shutdown.requested() => break reason,
            () = tokio::time::sleep(wait) => {}
        }
    };
    Err(Stopped { reason: stopped, waiting_for: waiting_for(), last_failure })
}

/// Registers a contract's schema, waiting out registry outages: a stage that starts while
/// the registry is down waits for it instead of failing (or, worse, going on without it),
/// and a stop request ends the wait.
///
/// # Errors
/// The outer error: stopped while waiting. The inner one: the registry's final answer (it
/// refused the schema: incompatible, invalid).
pub async fn register<T: Event>(codec: &Codec<T>, shutdown: &Shutdown) -> Result<Result<u32, RegistryError>, Stopped> {
    until_done(
        shutdown,
        || format!("the schema registry at {} to register {}", codec.registry(), codec.subject()),
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
            &Shutdown::never(),
            || "nothing".to_owned(),
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
        assert_eq!(value, Ok("ok"));
        assert_eq!(retries, [(1, FIRST_WAIT), (2, FIRST_WAIT * 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_retries_naming_the_wait_and_the_last_failure() {
        let (stopper, shutdown) = Shutdown::new();
        let retrying = until_done(
            &shutdown,
            || "the registry".to_owned(),
            || async { Attempt::<(), _>::Retry("connection refused") },
            |_, _| {},
        );
        let stop = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stopper.stop(crate::shutdown::StopReason::Terminate);
        };
        let (stopped, ()) = tokio::join!(retrying, stop);
        assert_eq!(
            stopped.expect_err("stopped").to_string(),
            "stopped by SIGTERM while waiting for the registry (last failure: connection refused)"
        );
    }
}
