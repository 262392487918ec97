//! The routing decision for one validated request, as a value: the tenant's quota (delay or
//! reject), then the version (the request's, else the tenant's pin, else its model's rollout
//! split, else the model's default), then whether this instance has that version loaded (else
//! the model's fallback). Pure — no Kafka, no clock, no I/O — so every path has a unit test;
//! the stage acts on the [`Route`] it returns.

use std::collections::HashMap;
use std::sync::Arc;

use streamscore_contracts::{InferenceRequest, OutcomeReason, RoutedBy};
use streamscore_control::Rollouts;
use streamscore_modelstore::{ModelStore, ModelVersion, RouteError};

use crate::quota::{QuotaDecision, Quotas};

/// Whether this instance can score a version (by `model/version` key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Loaded,
    /// Refused when loaded, with the reason.
    Refused(String),
    NotLoaded,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// To `version`'s batcher, after `delay_us` of quota delay (0: now); `tier` orders a
    /// backlog (1 first); `admitted`: the request holds a quota in-flight slot; `routed_by`:
    /// the rollout whose split chose the version, if one did; `fallback`: set when the model's
    /// fallback version scores it instead of the version it routed to (which failed to load
    /// or is not loaded), saying which and why; `explain`: to the version's explanation lane,
    /// where its outcome gets an explanation.
    Score {
        version: Arc<ModelVersion>,
        delay_us: i64,
        tier: u8,
        admitted: bool,
        routed_by: Option<RoutedBy>,
        fallback: Option<(String, String)>,
        explain: bool,
    },
    /// A rejection outcome with its typed reason and what to do about it.
    Reject { reason: OutcomeReason, detail: String, retry_after_ms: Option<i64>, admitted: bool },
}

impl Route {
    fn reject(reason: OutcomeReason, detail: String, admitted: bool) -> Self {
        Self::Reject { reason, detail, retry_after_ms: None, admitted }
    }
}

/// What a quota decision was, for the metrics (`streamscore_quota_decisions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOutcome {
    Admitted,
    Delayed,
    Rejected,
}

/// Decides one request. `quota_time_us`: the clock its quota is decided on (when the request
/// reached the broker, [`streamscore_contracts::ValidatedRequest::quota_time`]); `quotas`: the
/// tenant policy in force (the caller has adopted the bucket its partition committed); `pins`:
/// the stage's own `--pins`, before the policy's; `rollouts`: the models' rollouts in force.
/// Returns the route and, with a policy, what the quota decided.
pub fn route(
    request: &InferenceRequest,
    quota_time_us: i64,
    quotas: Option<&mut Quotas>,
    pins: &HashMap<String, String>,
    rollouts: &Rollouts,
    store: &ModelStore,
    availability: impl Fn(&str) -> Availability,
) -> (Route, Option<QuotaOutcome>) {
    let tenant = &request.tenant;
    // An explanation asked for with a value that means nothing is refused before it costs
    // anything.
    let explain = match streamscore_contracts::wants_explanation(request) {
        Ok(explain) => explain,
        Err(detail) => return (Route::reject(OutcomeReason::ExplainInvalid, detail, false), None),
    };
    let mut delay_us = 0;
    let mut quota = None;
    let mut tier = 2;
    let admitted = quotas.is_some();
    let policy_pin = quotas.as_ref().and_then(|q| q.policy().pin(tenant, &request.model)).map(str::to_owned);
    let pin = pins.get(tenant).map(String::as_str).or(policy_pin.as_deref());
    // Precedence: the version the request names, its tenant's pin, its model's rollout split,
    // the model's default.
    let split = match (&request.model_version, pin) {
        (None, None) => rollouts.route(&request.model, &request.request_id),
        _ => None,
    };
    let chosen = pin.or(split.as_ref().map(|s| s.version.as_str()));
    let routed_by = split.as_ref().map(|s| s.routed_by.clone());
    // The version is looked up first (pure) so the quota charges an explanation's cost only
    // when one will run; the decisions keep their order: quota, then routing.
    let routed = store.route(&request.model, request.model_version.as_deref(), chosen);
    let explainable = explain && routed.as_ref().is_ok_and(|v| v.meta.baseline_row().is_some());
    if let Some(q) = quotas {
        let decision = q.decide_request(tenant, &request.model, quota_time_us, explainable);
        tier = q.tier(tenant);
        let rejected = |route| (route, Some(QuotaOutcome::Rejected));
        match decision {
            QuotaDecision::Admit => quota = Some(QuotaOutcome::Admitted),
            QuotaDecision::Delay { wait_us } => {
                delay_us = wait_us.max(0);
                quota = Some(QuotaOutcome::Delayed);
            }
            QuotaDecision::Reject { reason, retry_after_ms } => {
                let detail = format!("tenant {tenant} is over its quota; retry after {retry_after_ms} ms");
                return rejected(Route::Reject {
                    reason,
                    detail,
                    retry_after_ms: Some(retry_after_ms),
                    admitted: false,
                });
            }
            QuotaDecision::UnknownTenant => {
                let detail = format!("tenant {tenant} is not in the tenant policy");
                return rejected(Route::reject(OutcomeReason::UnknownTenant, detail, false));
            }
            QuotaDecision::ModelNotAllowed => {
                let detail = format!("tenant {tenant} may not use model {}", request.model);
                return rejected(Route::reject(OutcomeReason::ModelNotAllowed, detail, false));
            }
        }
    }
    // A version that cannot run is replaced by the model's fallback, when it has one loaded
    // (flagged FALLBACK in the outcome; explained only if the fallback has a baseline); else
    // the request is rejected with the reason.
    let fallback_or = |reason: OutcomeReason, detail: String, routed_by: Option<RoutedBy>| match store
        .fallback(&request.model)
        .filter(|f| availability(&f.key()) == Availability::Loaded)
    {
        Some(fallback) => {
            let detail = format!("{detail}; scored by the fallback {}", fallback.key());
            let from =
                format!("{}/{}", request.model, chosen.or(request.model_version.as_deref()).unwrap_or("default"));
            let explain = explain && fallback.meta.baseline_row().is_some();
            Route::Score {
                version: fallback,
                delay_us,
                tier,
                admitted,
                routed_by,
                fallback: Some((from, detail)),
                explain,
            }
        }
        None => Route::reject(reason, detail, admitted),
    };
    let route = match routed {
        Ok(version) => {
            let key = version.key();
            match availability(&key) {
                Availability::Loaded if explain && !explainable => Route::reject(
                    OutcomeReason::ExplanationUnavailable,
                    format!(
                        "{key} has no baseline in its metadata.json, so it cannot be explained; \
                         ask without explain, or name a version that has one"
                    ),
                    admitted,
                ),
                Availability::Loaded => {
                    Route::Score { version, delay_us, tier, admitted, routed_by, fallback: None, explain }
                }
                Availability::Refused(reason) => fallback_or(
                    OutcomeReason::ModelRefused,
                    format!("{key} was refused when loaded: {reason}"),
                    routed_by,
                ),
                Availability::NotLoaded => fallback_or(
                    OutcomeReason::ModelNotLoaded,
                    format!("{key} is in the store but not loaded"),
                    routed_by,
                ),
            }
        }
        Err(RouteError::Refused { model, version, reason }) => fallback_or(
            OutcomeReason::ModelRefused,
            format!("{model}/{version} was refused when loaded: {reason}"),
            routed_by,
        ),
        Err(e) => {
            let reason = match e {
                RouteError::UnknownModel { .. } => OutcomeReason::UnknownModel,
                RouteError::UnknownVersion { .. } => OutcomeReason::UnknownModelVersion,
                RouteError::Refused { .. } => OutcomeReason::ModelRefused,
            };
            Route::reject(reason, e.to_string(), admitted)
        }
    };
    (route, quota)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Policy;

    const POLICY: &str = r#"
version = 1
unknown_tenants = "refuse"

[tenants.acme]
rate_per_sec = 10
burst = 2
max_in_flight = 1000
tier = 1

[tenants.globex]
rate_per_sec = 10
burst = 1
max_in_flight = 1000
on_exceed = "delay"
max_delay_ms = 1000

[tenants.initech]
rate_per_sec = 1000
burst = 1000
pinned_versions = { fraud = "2" }

[tenants.umbrella]
rate_per_sec = 1000
burst = 1000
allowed_models = ["other"]
"#;

    fn store() -> ModelStore {
        ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).expect("the shipped models load")
    }

    fn quotas() -> Quotas {
        Quotas::new(Policy::parse(std::path::Path::new("test.toml"), POLICY.as_bytes()).expect("the test policy"))
    }

    fn request(tenant: &str, model: &str, version: Option<&str>, created_at: i64) -> InferenceRequest {
        InferenceRequest {
            request_id: format!("r-{created_at}"),
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            model_version: version.map(str::to_owned),
            features: streamscore_contracts::Features::default(),
            created_at,
            reply_to: None,
            attributes: HashMap::new(),
        }
    }

    fn loaded(_: &str) -> Availability {
        Availability::Loaded
    }

    /// The version a request is scored with, or the rejection's code.
    fn outcome(route: &Route) -> String {
        match route {
            Route::Score { version, .. } => version.key(),
            Route::Reject { reason, .. } => reason.code().to_owned(),
        }
    }

    #[test]
    fn a_named_version_the_pin_and_the_default() {
        let store = store();
        let default = store.route("fraud", None, None).unwrap().key();
        let none = HashMap::new();
        let (named, _) =
            route(&request("acme", "fraud", Some("2"), 0), 0, None, &none, &Rollouts::default(), &store, loaded);
        assert_eq!(outcome(&named), "fraud/2");
        let (by_default, quota) =
            route(&request("acme", "fraud", None, 0), 0, None, &none, &Rollouts::default(), &store, loaded);
        assert_eq!(outcome(&by_default), default);
        assert_eq!(quota, None, "no policy, no quota decision");

        // The policy's pin, then the stage's --pins over it; a named version over both.
        let mut q = quotas();
        let (pinned, quota) =
            route(&request("initech", "fraud", None, 0), 0, Some(&mut q), &none, &Rollouts::default(), &store, loaded);
        assert_eq!((outcome(&pinned), quota), ("fraud/2".to_owned(), Some(QuotaOutcome::Admitted)));
        let pins = HashMap::from([("initech".to_owned(), "1".to_owned())]);
        let (overridden, _) =
            route(&request("initech", "fraud", None, 1), 1, Some(&mut q), &pins, &Rollouts::default(), &store, loaded);
        assert_eq!(outcome(&overridden), "fraud/1");
        let (named, _) = route(
            &request("initech", "fraud", Some("1"), 2),
            2,
            Some(&mut q),
            &none,
            &Rollouts::default(),
            &store,
            loaded,
        );
        assert_eq!(outcome(&named), "fraud/1");
        if let Route::Score { tier, admitted, delay_us, .. } = pinned {
            assert_eq!((tier, admitted, delay_us), (2, true, 0));
        }
    }

    #[test]
    fn unknown_models_and_versions_are_rejected_with_their_reason() {
        let store = store();
        let none = HashMap::new();
        let (unknown_version, _) =
            route(&request("acme", "fraud", Some("9"), 0), 0, None, &none, &Rollouts::default(), &store, loaded);
        assert_eq!(outcome(&unknown_version), "UNKNOWN_MODEL_VERSION");
        let (unknown_model, _) =
            route(&request("acme", "nope", None, 0), 0, None, &none, &Rollouts::default(), &store, loaded);
        assert_eq!(outcome(&unknown_model), "UNKNOWN_MODEL");
        let refused = |_: &str| Availability::Refused("sha256 mismatch".to_owned());
        let (route_refused, _) =
            route(&request("acme", "fraud", Some("1"), 0), 0, None, &none, &Rollouts::default(), &store, refused);
        assert_eq!(outcome(&route_refused), "MODEL_REFUSED");
        let (not_loaded, _) =
            route(&request("acme", "fraud", Some("1"), 0), 0, None, &none, &Rollouts::default(), &store, |_| {
                Availability::NotLoaded
            });
        assert_eq!(outcome(&not_loaded), "MODEL_NOT_LOADED");
        if let Route::Reject { detail, admitted, .. } = route_refused {
            assert!(detail.contains("sha256 mismatch"), "{detail}");
            assert!(!admitted);
        }
    }

    #[test]
    fn quota_rejections_and_delays() {
        let store = store();
        let none = HashMap::new();
        let mut q = quotas();
        // acme: a burst of 2, then rejections with a retry hint, in event time.
        let mut codes = Vec::new();
        for i in 0..4 {
            q.adopt("acme", 1, None);
            let (r, quota) = route(
                &request("acme", "fraud", Some("1"), i),
                i,
                Some(&mut q),
                &none,
                &Rollouts::default(),
                &store,
                loaded,
            );
            codes.push((outcome(&r), quota));
            if let Route::Reject { retry_after_ms, admitted, .. } = &r {
                assert!(retry_after_ms.is_some_and(|ms| ms > 0), "a retry hint");
                assert!(!admitted, "a rejected request holds no slot");
            }
        }
        assert_eq!(
            codes,
            [
                ("fraud/1".to_owned(), Some(QuotaOutcome::Admitted)),
                ("fraud/1".to_owned(), Some(QuotaOutcome::Admitted)),
                ("QUOTA_EXCEEDED".to_owned(), Some(QuotaOutcome::Rejected)),
                ("QUOTA_EXCEEDED".to_owned(), Some(QuotaOutcome::Rejected)),
            ]
        );
        // globex delays instead: the second request waits for its token (100 ms at 10/s).
        q.adopt("globex", 1, None);
        let (first, _) =
            route(&request("globex", "fraud", None, 0), 0, Some(&mut q), &none, &Rollouts::default(), &store, loaded);
        let (second, quota) =
            route(&request("globex", "fraud", None, 0), 0, Some(&mut q), &none, &Rollouts::default(), &store, loaded);
        assert!(matches!(first, Route::Score { delay_us: 0, .. }));
        assert_eq!(quota, Some(QuotaOutcome::Delayed));
        match second {
            Route::Score { delay_us, .. } => assert!((1..=100_000).contains(&delay_us), "{delay_us} µs"),
            other => panic!("a delay, not {other:?}"),
        }
        // Tenants outside the policy, and models a tenant may not use.
        let (stranger, quota) =
            route(&request("stranger", "fraud", None, 0), 0, Some(&mut q), &none, &Rollouts::default(), &store, loaded);
        assert_eq!((outcome(&stranger), quota), ("UNKNOWN_TENANT".to_owned(), Some(QuotaOutcome::Rejected)));
        let (not_allowed, _) =
            route(&request("umbrella", "fraud", None, 0), 0, Some(&mut q), &none, &Rollouts::default(), &store, loaded);
        assert_eq!(outcome(&not_allowed), "MODEL_NOT_ALLOWED");
        // Tier from the policy orders a backlog.
        let (tiered, _) = route(
            &request("acme", "fraud", None, 1_000_000),
            1_000_000,
            Some(&mut q),
            &none,
            &Rollouts::default(),
            &store,
            loaded,
        );
        assert!(matches!(tiered, Route::Score { tier: 1, .. }), "{tiered:?}");
    }

    #[test]
    fn a_rollout_split_routes_what_names_no_version_and_has_no_pin() {
        let store = store();
        let loaded = |_: &str| Availability::Loaded;
        let none = HashMap::new();
        let rollout = streamscore_contracts::Rollout {
            model: "fraud".to_owned(),
            generation: 4,
            rollout_id: "r-1".to_owned(),
            status: streamscore_contracts::RolloutStatus::Experiment,
            incumbent: "1".to_owned(),
            candidate: None,
            split: streamscore_control::split::parse("1=50,2=50").expect("split"),
            shadow: None,
            steps: Vec::new(),
            step: -1,
            step_secs: 0,
            min_samples: 0,
            step_started_at: 0,
            resume_status: None,
            changed_at: 0,
            changed_by: "t".to_owned(),
            reason: String::new(),
            figures: HashMap::new(),
        };
        let rollouts = Rollouts::of([rollout]);
        let mut versions = std::collections::BTreeMap::new();
        for i in 0..200 {
            let mut r = request("acme", "fraud", None, 0);
            r.request_id = format!("id-{i}");
            let (routed, _) = route(&r, 0, None, &none, &rollouts, &store, loaded);
            let Route::Score { version, routed_by, .. } = routed else { panic!("scored") };
            assert_eq!(routed_by.map(|b| b.generation), Some(4), "the split chose it and says so");
            assert_eq!(
                Some(version.meta.version.as_str()),
                streamscore_control::split::choose(&rollouts.get("fraud").expect("r").split, "fraud", &r.request_id)
            );
            *versions.entry(version.meta.version.clone()).or_insert(0) += 1;
        }
        assert_eq!(versions.len(), 2, "both versions answer: {versions:?}");
        // An explicit version and a pin come before the split.
        let (named, _) = route(&request("acme", "fraud", Some("1"), 0), 0, None, &none, &rollouts, &store, loaded);
        assert!(matches!(named, Route::Score { routed_by: None, ref version, .. } if version.meta.version == "1"));
        let pins = HashMap::from([("acme".to_owned(), "2".to_owned())]);
        let (pinned, _) = route(&request("acme", "fraud", None, 0), 0, None, &pins, &rollouts, &store, loaded);
        assert!(matches!(pinned, Route::Score { routed_by: None, ref version, .. } if version.meta.version == "2"));
    }

    fn explained(tenant: &str, version: Option<&str>, at: i64, value: &str) -> InferenceRequest {
        let mut r = request(tenant, "fraud", version, at);
        r.attributes.insert("explain".to_owned(), value.to_owned());
        r
    }

    /// A copy of the shipped models whose fraud/1 has no baseline (a version made before
    /// explanations).
    fn store_without_baseline() -> (tempfile::TempDir, ModelStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fraud"));
        let family = dir.path().join("fraud");
        for version in ["1", "2"] {
            std::fs::create_dir_all(family.join(version)).expect("mkdir");
            for file in ["metadata.json", "model.onnx"] {
                std::fs::copy(source.join(version).join(file), family.join(version).join(file)).expect("copy");
            }
        }
        std::fs::copy(source.join("model.json"), family.join("model.json")).expect("copy");
        let path = family.join("1/metadata.json");
        let mut meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        meta.as_object_mut().expect("an object").remove("baseline");
        std::fs::write(&path, meta.to_string()).expect("write");
        let store = ModelStore::open(dir.path()).expect("a version without a baseline is served");
        (dir, store)
    }

    /// `explain = "true"` goes to the explanation lane and costs the policy's explain cost;
    /// another value is refused before it costs anything; a version without a baseline refuses
    /// the explanation, charging only what a plain request costs.
    #[test]
    fn explanations_are_routed_charged_and_refused_explicitly() {
        let store = store();
        let none = HashMap::new();
        let (plain, _) =
            route(&request("acme", "fraud", Some("1"), 0), 0, None, &none, &Rollouts::default(), &store, loaded);
        assert!(matches!(plain, Route::Score { explain: false, .. }), "{plain:?}");
        let (lane, _) =
            route(&explained("acme", Some("2"), 0, "true"), 0, None, &none, &Rollouts::default(), &store, loaded);
        assert!(matches!(lane, Route::Score { explain: true, .. }), "{lane:?}");
        let (no, _) =
            route(&explained("acme", Some("2"), 0, "false"), 0, None, &none, &Rollouts::default(), &store, loaded);
        assert!(matches!(no, Route::Score { explain: false, .. }), "{no:?}");

        // acme's burst is 2, so an explanation costs 2 (the default, capped at the burst).
        let mut q = quotas();
        q.adopt("acme", 1, None);
        let (bad, quota) = route(
            &explained("acme", Some("1"), 0, "yes"),
            0,
            Some(&mut q),
            &none,
            &Rollouts::default(),
            &store,
            loaded,
        );
        assert_eq!((outcome(&bad), quota), ("EXPLAIN_INVALID".to_owned(), None), "refused before the quota");
        if let Route::Reject { detail, admitted, .. } = &bad {
            assert!(detail.contains("\"yes\"") && !admitted, "{detail}");
        }
        let (first, _) = route(
            &explained("acme", Some("1"), 0, "true"),
            0,
            Some(&mut q),
            &none,
            &Rollouts::default(),
            &store,
            loaded,
        );
        assert!(matches!(first, Route::Score { explain: true, admitted: true, .. }), "{first:?}");
        let (after, _) = route(
            &request("acme", "fraud", Some("1"), 0),
            0,
            Some(&mut q),
            &none,
            &Rollouts::default(),
            &store,
            loaded,
        );
        assert_eq!(outcome(&after), "QUOTA_EXCEEDED", "the explanation took both tokens");

        let (_dir, bare) = store_without_baseline();
        let mut q = quotas();
        q.adopt("acme", 1, None);
        let (unavailable, quota) = route(
            &explained("acme", Some("1"), 0, "true"),
            0,
            Some(&mut q),
            &none,
            &Rollouts::default(),
            &bare,
            loaded,
        );
        assert_eq!(
            (outcome(&unavailable), quota),
            ("EXPLANATION_UNAVAILABLE".to_owned(), Some(QuotaOutcome::Admitted))
        );
        if let Route::Reject { detail, admitted, .. } = &unavailable {
            assert!(detail.contains("fraud/1") && detail.contains("baseline") && *admitted, "{detail}");
        }
        let (next, _) =
            route(&request("acme", "fraud", Some("1"), 0), 0, Some(&mut q), &none, &Rollouts::default(), &bare, loaded);
        assert_eq!(outcome(&next), "fraud/1", "the refused explanation cost one token, not two");
        let (other, _) = route(
            &explained("acme", Some("2"), 1_000_000, "true"),
            1_000_000,
            None,
            &none,
            &Rollouts::default(),
            &bare,
            loaded,
        );
        assert!(matches!(other, Route::Score { explain: true, .. }), "fraud/2 still has its baseline");
    }
}
