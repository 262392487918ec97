//! Readiness: whether the broker answers, asked at most once per [`BROKER_CHECK_TTL`].
//!
//! `GET /ready`, `/v2/health/ready` and the model readiness routes need no key, so anyone can
//! call them as often as they like. Each call used to fetch the broker's metadata on a blocking
//! thread of its own: a flood of them filled the blocking pool and sent the broker a metadata
//! request per call. Now one check runs at a time and its answer serves every caller for
//! [`BROKER_CHECK_TTL`]; callers that arrive while it runs wait for it (at most the check's
//! own timeout) instead of starting another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;

/// How long one broker check's answer serves.
pub const BROKER_CHECK_TTL: Duration = Duration::from_secs(1);
/// How long one broker check waits for the metadata.
pub const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The broker's reachability, probed on a blocking thread, one probe at a time, its answer
/// cached for [`BROKER_CHECK_TTL`].
pub struct BrokerCheck {
    probe: Probe,
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl std::fmt::Debug for BrokerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerCheck").finish_non_exhaustive()
    }
}

impl BrokerCheck {
    /// `probe` answers whether the broker is reachable; it may block (up to a second or so).
    pub fn new(probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self { probe: Arc::new(probe), last: tokio::sync::Mutex::new(None) }
    }

    /// The producer's view: the metadata of `topic` within [`BROKER_CHECK_TIMEOUT`].
    pub fn of_producer(producer: FutureProducer, topic: String) -> Self {
        Self::new(move || {
            use rdkafka::producer::Producer;
            producer.client().fetch_metadata(Some(&topic), BROKER_CHECK_TIMEOUT).is_ok()
        })
    }

    /// Whether the broker answered its last check, checking again when that is older than
    /// [`BROKER_CHECK_TTL`].
    pub async fn reachable(&self) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, reachable)) = *last {
            if at.elapsed() < BROKER_CHECK_TTL {
                return reachable;
            }
        }
        let probe = Arc::clone(&self.probe);
        let reachable = tokio::task::spawn_blocking(move || probe()).await.unwrap_or(false);
        *last = Some((Instant::now(), reachable));
        reachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_readiness_checks_asks_the_broker_once() {
        let probes = Arc::new(AtomicUsize::new(0));
        let check = {
            let probes = Arc::clone(&probes);
            Arc::new(BrokerCheck::new(move || {
                probes.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                true
            }))
        };
        let flood = (0..500).map(|_| {
            let check = Arc::clone(&check);
            tokio::spawn(async move { check.reachable().await })
        });
        let answers = futures::future::join_all(flood).await;
        assert!(answers.into_iter().all(|a| a.expect("task")), "every caller got the answer");
        assert_eq!(probes.load(Ordering::SeqCst), 1, "one probe served the whole flood");
    }

    #[tokio::test]
    async fn an_answer_older_than_its_ttl_is_checked_again() {
        let probes = Arc::new(AtomicUsize::new(0));
        let check = {
            let probes = Arc::clone(&probes);
            BrokerCheck::new(move || probes.fetch_add(1, Ordering::SeqCst) > 0)
        };
        assert!(!check.reachable().await, "the first probe says no");
        assert!(!check.reachable().await, "cached");
        *check.last.lock().await = Some((Instant::now().checked_sub(BROKER_CHECK_TTL).expect("uptime"), false));
        assert!(check.reachable().await, "stale: probed again");
        assert_eq!(probes.load(Ordering::SeqCst), 2);
    }
}
