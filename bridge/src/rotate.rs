//! Rotation without a restart: the tenant policy (API keys, tenants, pins), the JWKS and the
//! TLS certificate are re-read when their files change, as ingest and infer re-read the policy.
//!
//! Each file is read and hashed every [`POLL`] (the files are small); when the sha256 of its
//! bytes changes, the new content is checked as at start and swapped in whole, so a call sees
//! either the old set or the new one, never a mix. Content that does not check is refused
//! (logged) and the loaded set stays: a half-written file never opens the bridge or locks
//! everyone out. A key removed from the policy is refused from the next poll on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use streamscore_infer::quota::Policy;
use streamscore_ingest::Tenants;

use crate::auth::Keys;

/// How often the watched files are read.
pub const POLL: Duration = Duration::from_secs(1);

/// A value swapped whole when its source changes.
#[derive(Debug)]
pub struct Current<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Current<T> {
    pub fn new(value: T) -> Self {
        Self { value: RwLock::new(Arc::new(value)) }
    }

    /// The value in force now.
    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.value.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn set(&self, value: T) {
        *self.value.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(value);
    }
}

/// What the policy file decides for the bridge, checked together.
#[derive(Debug)]
pub struct Authority {
    pub policy: Policy,
    pub keys: Keys,
    pub tenants: Tenants,
    /// The policy's pins, which a call is checked against as routing will score it.
    pub pins: streamscore_modelstore::Pins,
}

impl Authority {
    /// The policy's keys, tenants and pins, or why the policy cannot be used.
    pub fn from_policy(policy: Policy) -> Result<Self, String> {
        let keys = Keys::from_policy(&policy)?;
        let tenants = Tenants::Only(policy.file.tenants.keys().cloned().collect());
        let pins = policy.pins();
        Ok(Self { policy, keys, tenants, pins })
    }

    /// The policy at `path` with its bytes (as [`Policy::parse`] reads them).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, String> {
        Self::from_policy(Policy::parse(path, bytes).map_err(|e| e.to_string())?)
    }
}

/// The sha256 (hex) of a file's bytes (what `sha256sum` prints), or of several files'
/// contents together, each length-prefixed; `None` when one cannot be read now (being
/// replaced, say): the next poll looks again.
pub fn fingerprint(paths: &[PathBuf]) -> Option<(String, Vec<Vec<u8>>)> {
    let mut contents = Vec::with_capacity(paths.len());
    let mut all = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).ok()?;
        all.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        all.extend_from_slice(&bytes);
        contents.push(bytes);
    }
    let sha256 = match contents.as_slice() {
        [one] => streamscore_contracts::sha256_hex(one),
        _ => streamscore_contracts::sha256_hex(&all),
    };
    Some((sha256, contents))
}

/// What a reload did, for the log (and whoever else listens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The new content is in force; its fingerprint.
    Loaded { what: &'static str, sha256: String },
    /// The new content was refused; the loaded one stays.
    Refused { what: &'static str, sha256: String, error: String },
}

/// Watches `paths` every `every` until `shutdown`; when their fingerprint moves from
/// `loaded`, `load` checks the contents and, if it takes them, they replace `current`. Each
/// reload (or refusal) goes to `log`.
#[allow(clippy::too_many_arguments)]
pub fn watch<T, F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    loaded: String,
    current: Arc<Current<T>>,
    load: F,
    every: Duration,
    log: crate::authlog::AuthLog,
    shutdown: streamscore_kafka::Shutdown,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(&[Vec<u8>]) -> Result<T, String> + Send + 'static,
{
    tokio::spawn(async move {
        let mut seen = loaded;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.requested() => return,
            }
            let Some((sha256, contents)) = fingerprint(&paths) else { continue };
            if sha256 == seen {
                continue;
            }
            let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let outcome = match load(&contents) {
                Ok(next) => {
                    current.set(next);
                    tracing::info!(files = ?files, sha256, "{what} reloaded; in force from now on");
                    Reload::Loaded { what, sha256: sha256.clone() }
                }
                Err(error) => {
                    tracing::error!(files = ?files, sha256, error, "{what} refused; keeping the loaded one");
                    Reload::Refused { what, sha256: sha256.clone(), error }
                }
            };
            metrics::counter!(
                "streamscore_bridge_reloads_total",
                "what" => what,
                "outcome" => if matches!(outcome, Reload::Loaded { .. }) { "loaded" } else { "refused" },
            )
            .increment(1);
            log.reloaded(&outcome);
            seen = sha256;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_moves_with_either_file_and_not_otherwise() {
        let dir = tempfile::tempdir().expect("dir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "ab").expect("a");
        std::fs::write(&b, "c").expect("b");
        let paths = vec![a.clone(), b.clone()];
        let first = fingerprint(&paths).expect("both read").0;
        assert_eq!(fingerprint(&paths).expect("again").0, first);
        // The same bytes split otherwise are other files.
        std::fs::write(&a, "a").expect("a");
        std::fs::write(&b, "bc").expect("b");
        assert_ne!(fingerprint(&paths).expect("moved").0, first);
        std::fs::remove_file(&b).expect("rm");
        assert!(fingerprint(&paths).is_none(), "a missing file is no fingerprint");
    }
}
