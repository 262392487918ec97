//! The stop request of a process, made before start-up begins and handed to every wait on an
//! outside service (the schema registry, the broker): a [`Shutdown`] is a cheap, cloneable
//! handle that any number of waits race, at start-up and in steady state alike.
//!
//! A stop during start-up is an error, [`Stopped`], naming what the process was waiting for
//! (the command exits 128 + the signal's number, as a shell reports a process killed by it);
//! a stop in steady state is the normal end of a stage (it drains, commits and exits 0).

use std::fmt;
use std::future::Future;

use tokio::sync::watch;

/// Why a process was asked to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, a supervisor, `timeout`).
    Terminate,
    /// A stop asked for in the process (a test's stop, another part of it that stopped).
    Requested(String),
}

impl StopReason {
    /// The exit status of a command stopped by this before it was up: 128 + the signal's
    /// number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process killed by it;
    /// 1 for a stop from inside the process.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::Interrupt => 130,
            StopReason::Terminate => 143,
            StopReason::Requested(_) => 1,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Interrupt => f.write_str("SIGINT"),
            StopReason::Terminate => f.write_str("SIGTERM"),
            StopReason::Requested(why) => f.write_str(why),
        }
    }
}

/// A wait given up because a stop was requested: what the process was waiting for, and the
/// last failure it met while waiting, if any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stopped by {reason} while waiting for {waiting_for}{}", last_failure.as_ref().map(|f| format!(" (last failure: {f})")).unwrap_or_default())]
pub struct Stopped {
    pub reason: StopReason,
    pub waiting_for: String,
    pub last_failure: Option<String>,
}

/// Asks the [`Shutdown`] handles made with it to stop (the first reason given wins).
#[derive(Debug)]
pub struct Stopper {
    tx: watch::Sender<Option<StopReason>>,
}

impl Stopper {
    pub fn stop(&self, reason: StopReason) {
        self.tx.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }
}

/// A process's stop request, observed by every wait that should give way to it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<StopReason>>,
}

impl Shutdown {
    /// A handle and the [`Stopper`] that triggers it.
    pub fn new() -> (Stopper, Self) {
        let (tx, rx) = watch::channel(None);
        (Stopper { tx }, Self { rx })
    }

    /// A handle that is never triggered.
    pub fn never() -> Self {
        Self::new().1
    }

    /// Triggered by SIGINT or SIGTERM. Both handlers are installed now, so a signal that
    /// arrives at any point after this call (start-up included) is a stop request, never lost.
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// When a signal handler cannot be installed.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (stopper, shutdown) = Self::new();
        tokio::spawn(async move {
            let reason = tokio::select! {
                _ = terminate.recv() => StopReason::Terminate,
                _ = interrupt.recv() => StopReason::Interrupt,
            };
            tracing::info!(signal = %reason, "stop requested");
            stopper.stop(reason);
        });
        Ok(shutdown)
    }

    /// Triggered when `future` resolves (it is driven by a task of its own).
    pub fn after(future: impl Future<Output = ()> + Send + 'static) -> Self {
        let (stopper, shutdown) = Self::new();
        tokio::spawn(async move {
            future.await;
            stopper.stop(StopReason::Requested("a stop request".to_owned()));
        });
        shutdown
    }

    /// A handle triggered by this one, or by `other` resolving (with `reason`).
    pub fn or_after(&self, other: impl Future<Output = ()> + Send + 'static, reason: impl Into<String>) -> Self {
        let (stopper, shutdown) = Self::new();
        let this = self.clone();
        let reason = reason.into();
        tokio::spawn(async move {
            let why = tokio::select! {
                why = this.requested() => why,
                () = other => StopReason::Requested(reason),
            };
            stopper.stop(why);
        });
        shutdown
    }

    /// Why a stop was requested, if it was.
    pub fn reason(&self) -> Option<StopReason> {
        self.rx.borrow().clone()
    }

    /// Resolves once a stop is requested (at once if it already was).
    pub async fn requested(&self) -> StopReason {
        let mut rx = self.rx.clone();
        let reason = rx.wait_for(Option::is_some).await.ok().and_then(|reason| reason.clone());
        match reason {
            Some(reason) => reason,
            // Every stopper is gone without a stop: none will come.
            None => std::future::pending().await,
        }
    }

    /// [`Shutdown::requested`] as an owned future, for APIs that take one (a server's
    /// graceful shutdown).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            this.requested().await;
        }
    }

    /// Runs `future` unless a stop is requested first; then gives it up, saying what it was
    /// for (`waiting_for`, made only then).
    ///
    /// # Errors
    /// [`Stopped`] when the stop came first (also when it was requested before the call and
    /// the future is not ready at once).
    pub async fn race<T>(
        &self,
        waiting_for: impl FnOnce() -> String,
        future: impl Future<Output = T>,
    ) -> Result<T, Stopped> {
        // The future first: a wait inside it that gives way to the same stop says more
        // precisely what it was for.
        tokio::select! {
            biased;
            value = future => Ok(value),
            reason = self.requested() => Err(Stopped { reason, waiting_for: waiting_for(), last_failure: None }),
        }
    }
}

/// Any future that resolves on a stop request, as the stages took before [`Shutdown`]: it is
/// driven by a task of its own ([`Shutdown::after`]).
impl<F: Future<Output = ()> + Send + 'static> From<F> for Shutdown {
    fn from(future: F) -> Self {
        Shutdown::after(future)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_race_gives_way_to_a_stop_requested_before_or_during_it() {
        let (stopper, shutdown) = Shutdown::new();
        assert_eq!(shutdown.race(|| "nothing".to_owned(), async { 7 }).await, Ok(7));
        let waiting = shutdown.race(|| "the registry".to_owned(), std::future::pending::<()>());
        let stop = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            stopper.stop(StopReason::Terminate);
        };
        let (stopped, ()) = tokio::join!(waiting, stop);
        let stopped = stopped.expect_err("the stop wins");
        assert_eq!(stopped.to_string(), "stopped by SIGTERM while waiting for the registry");
        assert_eq!(stopped.reason.exit_code(), 143);
        // Already requested: a wait that is not done at once is given up, and the first
        // reason stays.
        stopper.stop(StopReason::Interrupt);
        let again = shutdown.race(|| "more".to_owned(), std::future::pending::<()>()).await;
        assert_eq!(again.map_err(|e| e.reason), Err(StopReason::Terminate));
    }

    #[tokio::test]
    async fn never_and_dropped_stoppers_never_stop() {
        let never = Shutdown::never();
        let raced = tokio::time::timeout(Duration::from_millis(20), never.requested()).await;
        assert!(raced.is_err(), "a handle without a stopper waits for ever");
        assert_eq!(never.reason(), None);
    }

    #[tokio::test]
    async fn futures_and_other_handles_trigger_it() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown: Shutdown = async {
            let _ = rx.await;
        }
        .into();
        let (stop_other, other) = tokio::sync::oneshot::channel::<()>();
        let either = shutdown.or_after(
            async {
                let _ = other.await;
            },
            "the infer stage stopped",
        );
        stop_other.send(()).expect("listening");
        assert_eq!(either.requested().await, StopReason::Requested("the infer stage stopped".to_owned()));
        assert_eq!(shutdown.reason(), None, "the parent is not stopped by the child's other cause");
        tx.send(()).expect("listening");
        assert_eq!(shutdown.requested().await, StopReason::Requested("a stop request".to_owned()));
    }
}
