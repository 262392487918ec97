//! API keys: the tenant policy's `api_key_sha256` entries decide who a caller is.
//!
//! A presented key (`Authorization: Bearer KEY` or `X-API-Key: KEY`) is hashed and compared
//! with every entry in constant time (no early exit, no data-dependent branch per byte), so
//! the time taken says nothing about how close a guess was. The tenant comes from the key
//! only; nothing in a body can name another. A policy that gives one key to two tenants is
//! refused: the key would silently name only one of them.

use streamscore_infer::quota::policy::Policy;
use warp::http::HeaderMap;

/// The keys of every tenant in a policy.
#[derive(Clone, Default)]
pub struct Keys {
    entries: Vec<([u8; 32], String)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("entries", &self.entries.len()).finish()
    }
}

impl Keys {
    /// The keys of `policy`, or which entry is not a sha256 in hex, or which two tenants
    /// share a key.
    pub fn from_policy(policy: &Policy) -> Result<Self, String> {
        let mut entries: Vec<([u8; 32], String)> = Vec::new();
        for (tenant, tenant_policy) in &policy.file.tenants {
            for hex in &tenant_policy.api_key_sha256 {
                let digest = streamscore_contracts::sha256_from_hex(hex)
                    .ok_or_else(|| format!("tenant {tenant}: api_key_sha256 {hex:?} is not 64 hex digits"))?;
                match entries.iter().find(|(known, _)| *known == digest) {
                    Some((_, other)) if other != tenant => {
                        return Err(format!(
                            "tenants {other} and {tenant} have the same API key (api_key_sha256 {hex}): a key must \
                             name one tenant; give each its own key"
                        ))
                    }
                    // The same key twice under one tenant: one entry is enough.
                    Some(_) => {}
                    None => entries.push((digest, tenant.clone())),
                }
            }
        }
        Ok(Self { entries })
    }

    /// How many tenants have a key.
    pub fn tenants(&self) -> usize {
        let mut tenants: Vec<&str> = self.entries.iter().map(|(_, t)| t.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        tenants.len()
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tenant whose key this is.
    pub fn tenant(&self, key: &str) -> Option<&str> {
        let digest = streamscore_contracts::sha256(key.as_bytes());
        let mut found = None;
        for (entry, tenant) in &self.entries {
            if streamscore_contracts::digests_equal(&digest, entry) {
                found = Some(tenant.as_str());
            }
        }
        found
    }
}

/// The key a request presents: `Authorization: Bearer KEY` (scheme case-insensitive), else
/// `X-API-Key: KEY`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(warp::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, key) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim()).filter(|k| !k.is_empty());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::parse(std::path::Path::new("test.toml"), text.as_bytes()).expect("policy")
    }

    const ACME: &str = "8676d15d94dabdd1283e6c407e2bb08a7b5c13b4e3667d4795c17172e080a3d4"; // "acme-demo-key"

    #[test]
    fn a_key_names_its_tenant_and_nothing_else_does() {
        let keys = Keys::from_policy(&policy(&format!(
            "version = 1\n[tenants.acme]\napi_key_sha256 = [\"{ACME}\"]\nrate_per_sec = 1\nburst = 1\n\
             [tenants.other]\nrate_per_sec = 1\nburst = 1\n"
        )))
        .expect("keys");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.tenant("acme-demo-key"), Some("acme"));
        assert_eq!(keys.tenant("acme-demo-key "), None);
        assert_eq!(keys.tenant(""), None);
        assert_eq!(keys.tenant(ACME), None, "the hash itself is not a key");
        assert_eq!(keys.tenants(), 1, "tenants with a key");
    }

    #[test]
    fn a_malformed_hash_is_refused_naming_the_tenant() {
        // The policy loader refuses such a file; a policy built otherwise is checked again.
        let mut policy = policy("version = 1\n[tenants.acme]\nrate_per_sec = 1\nburst = 1\n");
        policy.file.tenants.get_mut("acme").expect("acme").api_key_sha256 = vec!["abc".to_owned()];
        let error = Keys::from_policy(&policy).expect_err("bad hash");
        assert!(error.contains("tenant acme"), "{error}");
    }

    #[test]
    fn one_key_under_two_tenants_is_refused_naming_both() {
        // Upper case is the same digest: still the same key.
        let policy = policy(&format!(
            "version = 1\n[tenants.acme]\napi_key_sha256 = [\"{ACME}\"]\nrate_per_sec = 1\nburst = 1\n\
             [tenants.other]\napi_key_sha256 = [\"{}\"]\nrate_per_sec = 1\nburst = 1\n",
            ACME.to_uppercase()
        ));
        let error = Keys::from_policy(&policy).expect_err("one key, two tenants");
        assert!(error.contains("tenants acme and other"), "{error}");
    }

    #[test]
    fn tenants_with_keys_are_counted_once() {
        let keys = Keys::from_policy(&policy(&format!(
            "version = 1\n[tenants.acme]\napi_key_sha256 = [\"{ACME}\", \"{ACME}\", \"{}\"]\nrate_per_sec = 1\n\
             burst = 1\n[tenants.other]\nrate_per_sec = 1\nburst = 1\n",
            "0".repeat(64)
        )))
        .expect("keys");
        assert_eq!((keys.len(), keys.tenants()), (2, 1));
    }

    #[test]
    fn keys_are_read_from_bearer_or_x_api_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert("x-api-key", "k1".parse().expect("header"));
        assert_eq!(presented_key(&headers), Some("k1"));
        headers.insert("authorization", "bearer k2".parse().expect("header"));
        assert_eq!(presented_key(&headers), Some("k2"), "Authorization wins");
        headers.insert("authorization", "Basic dXNlcjpwYXNz".parse().expect("header"));
        assert_eq!(presented_key(&headers), None, "another scheme is no key");
    }
}
