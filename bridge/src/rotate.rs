//! Rotation without a restart: the tenant policy (API keys, certificate subjects, tenants,
//! pins), the JWKS and the TLS files are re-read when they change, as ingest and infer re-read
//! the policy ([`streamscore_tls::files`] does the reading: a file is hashed every [`POLL`];
//! when its sha256 moves, the new content is checked as at start and swapped in whole, so a
//! call sees either the old set or the new one, never a mix). Content that does not check is
//! refused (logged, audited) and the loaded set stays: a half-written file never opens the
//! bridge or locks everyone out. A key removed from the policy is refused from the next poll on.

use std::collections::HashMap;
use std::path::Path;

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

/// What a reload does besides the swap ([`streamscore_tls::files::watch`] calls it): counted in
/// `streamscore_bridge_reloads_total`, and written to the audit log.
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
