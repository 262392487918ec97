//! The tenant policy file (TOML): who may call, what they may use, and how much.
//!
//! ```toml
//! version = 3                    # the file's own version, for the audit log
//! unknown_tenants = "refuse"     # or "default": unlisted tenants get [default]
//!
//! [default]
//! rate_per_sec = 50
//! burst = 100
//!
//! [tenants.tenant-01]
//! display_name = "Acme"
//! api_key_sha256 = ["5e88…"]     # hex sha256 of API keys (for the HTTP bridge)
//! client_certificate_subjects = ["CN=scorer,O=Acme"]  # mutual TLS at the bridge (RFC 4514)
//! allowed_models = ["fraud"]     # empty: every model
//! pinned_versions = { fraud = "2" }
//! rate_per_sec = 500             # events per second (event time)
//! burst = 1000
//! max_in_flight = 2000           # requests admitted but not yet answered
//! tier = 1                       # 1 is served first when capacity is short
//! on_exceed = "delay"            # or "reject" (default)
//! max_delay_ms = 200             # with "delay": the longest a request may wait
//! explain_cost = 100             # tokens an explained request takes (default: 100, at most burst)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What to do with tenants the file does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownTenants {
    #[default]
    Refuse,
    Default,
}

/// What happens over quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExceed {
    #[default]
    Reject,
    Delay,
}

fn default_in_flight() -> u32 {
    10_000
}

fn default_tier() -> u8 {
    2
}

/// One tenant's policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub pinned_versions: BTreeMap<String, String>,
    pub rate_per_sec: u32,
    pub burst: u32,
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    #[serde(default = "default_tier")]
    pub tier: u8,
    #[serde(default)]
    pub on_exceed: OnExceed,
    #[serde(default)]
    pub max_delay_ms: u64,
    /// Kafka principals (`User:name`, as the broker's SASL or mTLS authentication names them)
    /// that produce this tenant's requests. When set, the tenant is bound: ingest accepts its
    /// requests only from its own topic `<requests topic>.<tenant>`, whose write ACL names
    /// these principals (`streamscore acls` prints the commands), and refuses any other topic's
    /// record claiming it (`TENANT_MISMATCH`).
    #[serde(default)]
    pub kafka_principals: Vec<String>,
    /// Tokens an explained request takes from the bucket instead of one (an explanation scores
    /// 2^16 coalition rows: see [`DEFAULT_EXPLAIN_COST`]). 1 to `burst`. Unset:
    /// [`DEFAULT_EXPLAIN_COST`], or the burst when that is smaller, so that a full bucket
    /// always admits an explanation ([`TenantPolicy::explain_cost`]).
    #[serde(default)]
    pub explain_cost: Option<u32>,
    /// Subjects of client certificates (mutual TLS at the bridge, `--tls-client-ca`) that call
    /// as this tenant: the distinguished name as RFC 4514 writes it, the last RDN first
    /// (`CN=scorer,O=Acme`, what `openssl x509 -noout -subject -nameopt RFC2253` prints),
    /// compared exactly. A subject may name one tenant.
    #[serde(default)]
    pub client_certificate_subjects: Vec<String>,
}

/// What an explained request costs when the policy does not say: 100 tokens. An explanation
/// of a shipped version scores 65,536 rows: 11 ms of tract CPU for fraud/1, 27 ms for fraud/2
/// (release build, this 2-core machine), 150 to 400 times the 70 CPU-µs a request costs the
/// pipeline and the broker together (README, "Explanations").
pub const DEFAULT_EXPLAIN_COST: u32 = 100;

impl TenantPolicy {
    /// The tokens an explained request of this tenant takes.
    pub fn explain_cost(&self) -> u32 {
        self.explain_cost.unwrap_or_else(|| DEFAULT_EXPLAIN_COST.min(self.burst)).max(1)
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub version: u64,
    #[serde(default)]
    pub unknown_tenants: UnknownTenants,
    #[serde(default)]
    pub default: Option<TenantPolicy>,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantPolicy>,
    /// The rollout gates' thresholds (the controller's; defaults for what is not set).
    #[serde(default)]
    pub rollout_gates: Option<streamscore_control::gates::GateThresholds>,
}

/// A refused policy file, saying where: file, tenant and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    Parse { file: PathBuf, reason: String },
    #[error("{file}: {scope}: field {field}: {reason}")]
    Invalid { file: PathBuf, scope: String, field: &'static str, reason: String },
}

/// A loaded, validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub file: PolicyFile,
    pub path: PathBuf,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
}

impl Policy {
    /// Loads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let bytes =
            std::fs::read(path).map_err(|e| PolicyError::Read { file: path.to_owned(), reason: e.to_string() })?;
        Self::parse(path, &bytes)
    }

    /// Parses and validates policy text read from `path`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, PolicyError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| PolicyError::Parse { file: path.to_owned(), reason: e.to_string() })?;
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Parse { file: path.to_owned(), reason: e.to_string() })?;
        if file.unknown_tenants == UnknownTenants::Default && file.default.is_none() {
            return Err(PolicyError::Invalid {
                file: path.to_owned(),
                scope: "file".to_owned(),
                field: "default",
                reason: "unknown_tenants = \"default\" needs a [default] table".to_owned(),
            });
        }
        let tables = file
            .default
            .iter()
            .map(|p| ("[default]".to_owned(), p))
            .chain(file.tenants.iter().map(|(name, p)| (format!("tenant {name}"), p)));
        for (scope, policy) in tables {
            validate(policy).map_err(|(field, reason)| PolicyError::Invalid {
                file: path.to_owned(),
                scope,
                field,
                reason,
            })?;
        }
        if file.default.as_ref().is_some_and(|d| !d.kafka_principals.is_empty()) {
            return Err(PolicyError::Invalid {
                file: path.to_owned(),
                scope: "[default]".to_owned(),
                field: "kafka_principals",
                reason: "principals bind a named tenant to its own topic; the default table has no name".to_owned(),
            });
        }
        for (name, policy) in &file.tenants {
            let topic_safe = !name.is_empty()
                && name.len() <= 200
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !policy.kafka_principals.is_empty() && !topic_safe {
                return Err(PolicyError::Invalid {
                    file: path.to_owned(),
                    scope: format!("tenant {name}"),
                    field: "kafka_principals",
                    reason: "a bound tenant's name becomes a topic name: 1 to 200 of [A-Za-z0-9._-]".to_owned(),
                });
            }
        }
        if file.default.as_ref().is_some_and(|d| !d.client_certificate_subjects.is_empty()) {
            return Err(PolicyError::Invalid {
                file: path.to_owned(),
                scope: "[default]".to_owned(),
                field: "client_certificate_subjects",
                reason: "a certificate subject names a tenant; the default table has no name".to_owned(),
            });
        }
        let mut subjects: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, policy) in &file.tenants {
            for subject in &policy.client_certificate_subjects {
                if let Some(other) = subjects.insert(subject, name).filter(|other| *other != name) {
                    return Err(PolicyError::Invalid {
                        file: path.to_owned(),
                        scope: format!("tenant {name}"),
                        field: "client_certificate_subjects",
                        reason: format!(
                            "{subject:?} is also tenant {other}'s: a certificate subject must name one tenant"
                        ),
                    });
                }
            }
        }
        if let Some(reason) = file.rollout_gates.as_ref().and_then(streamscore_control::gates::GateThresholds::problem)
        {
            return Err(PolicyError::Invalid {
                file: path.to_owned(),
                scope: "[rollout_gates]".to_owned(),
                field: "rollout_gates",
                reason,
            });
        }
        let sha256 = streamscore_contracts::sha256_hex(bytes);
        Ok(Self { file, path: path.to_owned(), sha256 })
    }

    /// The rollout gates' thresholds: the file's `[rollout_gates]`, defaults for the rest.
    pub fn rollout_gates(&self) -> streamscore_control::gates::GateThresholds {
        self.file.rollout_gates.clone().unwrap_or_default()
    }

    /// Tenants bound to Kafka principals, with their principals.
    pub fn bound_tenants(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.file
            .tenants
            .iter()
            .filter(|(_, p)| !p.kafka_principals.is_empty())
            .map(|(name, p)| (name.as_str(), p.kafka_principals.as_slice()))
    }

    /// The policy that applies to `tenant`, if it may call at all.
    /// The version `tenant` is pinned to for `model`, if any.
    pub fn pin(&self, tenant: &str, model: &str) -> Option<&str> {
        self.tenant(tenant).and_then(|p| p.pinned_versions.get(model)).map(String::as_str)
    }

    /// Every tenant's pins, for ingest to validate against the version routing will score.
    pub fn pins(&self) -> streamscore_modelstore::Pins {
        let pins = |p: &TenantPolicy| p.pinned_versions.iter().map(|(m, v)| (m.clone(), v.clone())).collect();
        let named = self.file.tenants.iter().map(|(t, p)| (t.clone(), pins(p))).collect();
        let others = match (&self.file.unknown_tenants, &self.file.default) {
            (UnknownTenants::Default, Some(default)) => pins(default),
            _ => std::collections::HashMap::new(),
        };
        streamscore_modelstore::Pins::new(named).with_other_tenants(others)
    }

    pub fn tenant(&self, tenant: &str) -> Option<&TenantPolicy> {
        self.file.tenants.get(tenant).or(match self.file.unknown_tenants {
            UnknownTenants::Refuse => None,
            UnknownTenants::Default => self.file.default.as_ref(),
        })
    }
}

fn validate(policy: &TenantPolicy) -> Result<(), (&'static str, String)> {
    if policy.rate_per_sec == 0 {
        return Err(("rate_per_sec", "must be at least 1 event per second".to_owned()));
    }
    if policy.burst == 0 {
        return Err(("burst", "must be at least 1".to_owned()));
    }
    if policy.max_in_flight == 0 {
        return Err(("max_in_flight", "must be at least 1".to_owned()));
    }
    if !(1..=9).contains(&policy.tier) {
        return Err(("tier", format!("{} is not in 1..=9", policy.tier)));
    }
    if let Some(cost) = policy.explain_cost {
        if cost == 0 {
            return Err(("explain_cost", "must be at least 1 token (an explanation is never free)".to_owned()));
        }
        if cost > policy.burst {
            return Err((
                "explain_cost",
                format!(
                    "{cost} tokens is above the burst of {}: an explained request could never be admitted; \
                     lower it or raise burst",
                    policy.burst
                ),
            ));
        }
    }
    if policy.on_exceed == OnExceed::Delay && policy.max_delay_ms == 0 {
        return Err(("max_delay_ms", "on_exceed = \"delay\" needs a max_delay_ms above 0".to_owned()));
    }
    if let Some(bad) = policy.api_key_sha256.iter().find(|k| k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(("api_key_sha256", format!("{bad:?} is not a hex sha256")));
    }
    let principal_ok = |p: &str| {
        p.split_once(':').is_some_and(|(kind, name)| {
            !kind.is_empty()
                && kind.bytes().all(|b| b.is_ascii_alphabetic())
                && !name.is_empty()
                && !name.contains(char::is_control)
        })
    };
    // `TYPE=value` pairs joined by commas: at least one `=` after a type, no control bytes.
    let subject_ok = |s: &str| {
        s.split_once('=').is_some_and(|(kind, value)| {
            !kind.is_empty()
                && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
                && !value.is_empty()
                && !s.contains(char::is_control)
        })
    };
    if let Some(bad) = policy.client_certificate_subjects.iter().find(|s| !subject_ok(s)) {
        return Err((
            "client_certificate_subjects",
            format!("{bad:?} is not a distinguished name like \"CN=scorer,O=Acme\" (RFC 4514)"),
        ));
    }
    if let Some(bad) = policy.kafka_principals.iter().find(|p| !principal_ok(p)) {
        return Err(("kafka_principals", format!("{bad:?} is not a principal like \"User:name\"")));
    }
    Ok(())
}
