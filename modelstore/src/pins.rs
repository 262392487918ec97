//! Which version a tenant's requests go to when they name none.

use std::collections::HashMap;

/// Tenant pins: tenant → model → version (a tenant policy's `pinned_versions`), and tenant →
/// version for every model (a stage's `--pins`), which wins. Ingest validates a request
/// against the version routing will score, so both read the same pins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    every_model: HashMap<String, String>,
    /// Every named tenant, pinned or not.
    by_model: HashMap<String, HashMap<String, String>>,
    /// model → version for tenants not named (a policy's `[default]` table).
    other_tenants: HashMap<String, String>,
}

impl Pins {
    /// Pins per tenant and model.
    pub fn new(by_model: HashMap<String, HashMap<String, String>>) -> Self {
        Self { every_model: HashMap::new(), by_model, other_tenants: HashMap::new() }
    }

    /// Pins (model → version) of every tenant `new` does not name.
    #[must_use]
    pub fn with_other_tenants(mut self, pins: HashMap<String, String>) -> Self {
        self.other_tenants = pins;
        self
    }

    /// Adds pins of a tenant for every model; they win over the per-model ones.
    #[must_use]
    pub fn with_every_model(mut self, pins: HashMap<String, String>) -> Self {
        self.every_model.extend(pins);
        self
    }

    /// The version `tenant` is pinned to for `model`, if any.
    pub fn get(&self, tenant: &str, model: &str) -> Option<&str> {
        if let Some(version) = self.every_model.get(tenant) {
            return Some(version);
        }
        match self.by_model.get(tenant) {
            Some(pins) => pins.get(model),
            None => self.other_tenants.get(model),
        }
        .map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.every_model.is_empty() && self.by_model.values().all(HashMap::is_empty) && self.other_tenants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_pin_wins_over_the_policy_pin() {
        let policy = HashMap::from([("acme".to_owned(), HashMap::from([("fraud".to_owned(), "2".to_owned())]))]);
        let pins = Pins::new(policy.clone());
        assert_eq!(pins.get("acme", "fraud"), Some("2"));
        assert_eq!(pins.get("acme", "other"), None);
        assert_eq!(pins.get("globex", "fraud"), None);
        let pins = Pins::new(policy).with_every_model(HashMap::from([("acme".to_owned(), "1".to_owned())]));
        assert_eq!(pins.get("acme", "fraud"), Some("1"));
        assert_eq!(pins.get("acme", "other"), Some("1"));
        assert!(Pins::default().is_empty() && !pins.is_empty());
        // Tenants the policy does not name take its default pins; named ones never do.
        let named = HashMap::from([("initech".to_owned(), HashMap::new())]);
        let pins = Pins::new(named).with_other_tenants(HashMap::from([("fraud".to_owned(), "2".to_owned())]));
        assert_eq!(pins.get("stranger", "fraud"), Some("2"));
        assert_eq!(pins.get("initech", "fraud"), None);
    }
}
