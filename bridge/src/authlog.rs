//! Authentication events in the audit log, on the bridge's own chain (stage `bridge`, its
//! instance id), which `audit verify` checks like every other chain.
//!
//! - `AUTH_LOADED` at start and `AUTH_RELOADED` / `AUTH_RELOAD_REFUSED` on a change: which file
//!   (`what`: tenant policy, JWKS, TLS certificate) and the sha256 of its bytes (the
//!   fingerprint), with the error when refused.
//! - `AUTH_REFUSED`: refusals (401, 403) aggregated per tenant (or `unauthenticated` when no
//!   credential named one) and code over each window ([`DEFAULT_WINDOW`], a minute): one entry
//!   with the count, so a flood of bad calls is a handful of entries, not a flood of them. At
//!   most [`MAX_SOURCES`] distinct (tenant, code) pairs a window; beyond, counted as `other`.
//!
//! - `AUTH_CLIENT_CERTIFICATE`: the client certificates calls came with (mutual TLS), per
//!   tenant the subject names (or `unmapped`), subject and certificate fingerprint over each
//!   window: one entry with the count of calls, under the same bound.
//!
//! Events reach the writer through a bounded queue: the request path never waits on the
//! broker, and events past a full queue are counted (`streamscore_bridge_auth_events_dropped_total`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::rotate::Reload;
use streamscore_tls::PeerCertificate;

/// Refusals are counted over this long before they are written.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Distinct (tenant, code) pairs one window counts separately.
pub const MAX_SOURCES: usize = 1000;
const QUEUE: usize = 4096;

#[derive(Debug)]
enum Event {
    Refused { who: String, code: &'static str },
    File { kind: &'static str, what: &'static str, sha256: String, error: Option<String> },
    Certificate { identity: Identity },
}

/// A client certificate and the tenant its subject names (`unmapped` when none).
type Identity = (String, String, String);

/// Where authentication events go; [`AuthLog::off`] drops them.
#[derive(Debug, Clone, Default)]
pub struct AuthLog {
    queue: Option<mpsc::Sender<Event>>,
}

impl AuthLog {
    pub fn off() -> Self {
        Self::default()
    }

    fn send(&self, event: Event) {
        if let Some(queue) = &self.queue {
            if queue.try_send(event).is_err() {
                metrics::counter!("streamscore_bridge_auth_events_dropped_total").increment(1);
            }
        }
    }

    /// A call refused with `code` (401 or 403); `tenant` when the credential named one.
    pub fn refused(&self, tenant: Option<&str>, code: &'static str) {
        self.send(Event::Refused { who: tenant.unwrap_or("unauthenticated").to_owned(), code });
    }

    /// A call that came with the client certificate `peer`, whose subject names `tenant`.
    pub fn certificate(&self, tenant: Option<&str>, peer: &PeerCertificate) {
        let tenant = tenant.unwrap_or("unmapped").to_owned();
        self.send(Event::Certificate { identity: (tenant, peer.subject.clone(), peer.sha256.clone()) });
    }

    /// A file in force at start.
    pub fn loaded(&self, what: &'static str, sha256: &str) {
        self.send(Event::File { kind: "AUTH_LOADED", what, sha256: sha256.to_owned(), error: None });
    }

    /// A file reloaded, or refused.
    pub fn reloaded(&self, reload: &Reload) {
        self.send(match reload {
            Reload::Loaded { what, sha256 } => {
                Event::File { kind: "AUTH_RELOADED", what, sha256: sha256.clone(), error: None }
            }
            Reload::Refused { what, sha256, error } => {
                Event::File { kind: "AUTH_RELOAD_REFUSED", what, sha256: sha256.clone(), error: Some(error.clone()) }
            }
        });
    }
}

/// Refusals counted in the current window, by (tenant or `unauthenticated`, code).
type Refusals = BTreeMap<(String, &'static str), u64>;

/// Calls per client certificate in the current window.
type Identities = BTreeMap<Identity, u64>;

/// What the current window has counted.
#[derive(Debug, Default)]
struct Window {
    refusals: Refusals,
    identities: Identities,
}

/// Counts a refusal or a certificate, or writes a file event now.
async fn take(writer: &streamscore_kafka::audit::AuditWriter, window: &mut Window, event: Event) {
    let refusals = &mut window.refusals;
    match event {
        Event::Certificate { identity } => {
            let identity = if window.identities.len() >= MAX_SOURCES && !window.identities.contains_key(&identity) {
                ("other".to_owned(), String::new(), String::new())
            } else {
                identity
            };
            *window.identities.entry(identity).or_default() += 1;
        }
        Event::Refused { who, code } => {
            let who = if refusals.len() >= MAX_SOURCES && !refusals.contains_key(&(who.clone(), code)) {
                "other".to_owned()
            } else {
                who
            };
            *refusals.entry((who, code)).or_default() += 1;
        }
        Event::File { kind, what, sha256, error } => {
            let mut details = HashMap::from([("file".to_owned(), what.to_owned()), ("sha256".to_owned(), sha256)]);
            if let Some(error) = error {
                details.insert("error".to_owned(), error);
            }
            if let Err(e) = writer.record(kind, what, None, details).await {
                tracing::error!(error = %e, "an authentication event was not written to the audit log");
            }
        }
    }
}

/// Starts the writer of the bridge's audit chain on `topic`: the log to send events to, and
/// the task, which ends (the chain closed) after `shutdown`.
pub fn spawn(
    kafka: streamscore_kafka::KafkaConfig,
    registry_url: String,
    topic: String,
    instance: String,
    window: Duration,
    shutdown: streamscore_kafka::Shutdown,
) -> (AuthLog, tokio::task::JoinHandle<()>) {
    let (queue, mut events) = mpsc::channel(QUEUE);
    let task = tokio::spawn(async move {
        // Events wait in the queue while the writer starts; a broker or registry down at start
        // is waited out (retried every second) until 10 s after the stop.
        let starting = {
            let shutdown = shutdown.clone();
            streamscore_kafka::Shutdown::after(async move {
                shutdown.requested().await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            })
        };
        let writer = loop {
            let started = streamscore_kafka::audit::AuditWriter::new(
                &kafka,
                &registry_url,
                &topic,
                "bridge",
                &instance,
                &starting,
            )
            .await;
            match started {
                Ok(writer) => break writer,
                Err(streamscore_kafka::audit::AuditError::Stopped(_)) => return,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "cannot start the audit log yet; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = starting.requested() => return,
                    }
                }
            }
        };
        let mut counted = Window::default();
        let mut tick = tokio::time::interval(window);
        tick.tick().await;
        loop {
            let stop = tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => {
                        take(&writer, &mut counted, event).await;
                        continue;
                    }
                    None => true,
                },
                _ = tick.tick() => false,
                _ = shutdown.requested() => true,
            };
            if stop {
                // What the bridge refused up to now is written before the chain closes.
                events.close();
                while let Some(event) = events.recv().await {
                    take(&writer, &mut counted, event).await;
                }
            }
            let Window { refusals, identities } = std::mem::take(&mut counted);
            for ((tenant, subject, sha256), count) in identities {
                let details = HashMap::from([
                    ("certificate_subject".to_owned(), subject),
                    ("certificate_sha256".to_owned(), sha256),
                    ("count".to_owned(), count.to_string()),
                    ("window_secs".to_owned(), window.as_secs().to_string()),
                ]);
                if let Err(e) = writer.record("AUTH_CLIENT_CERTIFICATE", &tenant, None, details).await {
                    tracing::error!(error = %e, "client certificates were not written to the audit log");
                }
            }
            for ((who, code), count) in refusals {
                let details = HashMap::from([
                    ("code".to_owned(), code.to_owned()),
                    ("count".to_owned(), count.to_string()),
                    ("window_secs".to_owned(), window.as_secs().to_string()),
                ]);
                if let Err(e) = writer.record("AUTH_REFUSED", &who, None, details).await {
                    tracing::error!(error = %e, "refusals were not written to the audit log");
                }
            }
            if stop {
                break;
            }
        }
        if let Err(e) = writer.close(HashMap::new()).await {
            tracing::warn!(error = %e, "closing the bridge's audit chain");
        }
    });
    (AuthLog { queue: Some(queue) }, task)
}
