//! Rotation without a restart: the tenant policy (API keys, certificate subjects, tenants,
//! pins), the JWKS and the TLS files are re-read when they change, as ingest and infer re-read
//! the policy ([`streamscore_tls::files`] does the reading: a file is hashed every [`POLL`];
//! when its sha256 moves, the new content is checked as at start and swapped in whole, so a
//! call sees either the old set or the new one, never a mix). Content that does not check is
//! refused (logged, audited) and the loaded set stays: a half-written file never opens the
//! bridge or locks everyone out. A key removed from the policy is refused from the next poll on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use streamscore_infer::quota::Policy;
use streamscore_ingest::Tenants;
pub use streamscore_tls::files::{fingerprint, Current, Reload, POLL};

use crate::auth::Keys;

/// What the policy file decides for the bridge, checked together.
#[derive(Debug)]
pub struct Authority {
    pub policy: Policy,
    pub keys: Keys,
    pub tenants: Tenants,
    /// The policy's pins, which a call is checked against as routing will score it.
    pub pins: streamscore_modelstore::Pins,
    /// Client certificate subjects (mutual TLS) and the tenant each names.
    pub subjects: HashMap<String, String>,
}

impl Authority {
    /// The policy's keys, tenants and pins, or why the policy cannot be used.
    pub fn from_policy(policy: Policy) -> Result<Self, String> {
        let keys = Keys::from_policy(&policy)?;
        let tenants = Tenants::Only(policy.file.tenants.keys().cloned().collect());
        let pins = policy.pins();
        let subjects = policy
            .file
            .tenants
            .iter()
            .flat_map(|(tenant, p)| p.client_certificate_subjects.iter().map(move |s| (s.clone(), tenant.clone())))
            .collect();
        Ok(Self { policy, keys, tenants, pins, subjects })
    }

    /// The policy at `path` with its bytes (as [`Policy::parse`] reads them).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, String> {
        Self::from_policy(Policy::parse(path, bytes).map_err(|e| e.to_string())?)
    }
}

/// Watches `paths` every `every` (until aborted); when their fingerprint moves from `loaded`,
/// `load` checks the contents and, if it takes them, they replace `current`. Each reload (or
/// refusal) is counted (`streamscore_bridge_reloads_total`) and goes to `log`.
pub fn watch<T, F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    loaded: String,
    current: Arc<Current<T>>,
    load: F,
    every: Duration,
    log: crate::authlog::AuthLog,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(&[Vec<u8>]) -> Result<T, String> + Send + 'static,
{
    streamscore_tls::files::watch(what, paths, loaded, current, load, every, reported(log))
}

/// What a reload does besides the swap: counted, and written to the audit log.
pub fn reported(log: crate::authlog::AuthLog) -> impl Fn(&Reload) + Clone + Send + 'static {
    move |outcome: &Reload| {
        let what = outcome.what();
        metrics::counter!(
            "streamscore_bridge_reloads_total",
            "what" => what,
            "outcome" => if outcome.loaded() { "loaded" } else { "refused" },
        )
        .increment(1);
        log.reloaded(outcome);
    }
}
