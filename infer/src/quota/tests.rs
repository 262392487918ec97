use std::path::Path;

use super::*;

fn policy(text: &str) -> Policy {
    Policy::parse(Path::new("tenants.toml"), text.as_bytes()).expect("valid policy")
}

const TWO_TENANTS: &str = r#"
version = 1
[tenants.flood]
rate_per_sec = 10
burst = 5
[tenants.quiet]
rate_per_sec = 10
burst = 5
"#;

/// Requests of `tenant` every `interval_us` from `start` for `count` requests.
fn stream(tenant: &'static str, start: i64, interval_us: i64, count: i64) -> impl Iterator<Item = (&'static str, i64)> {
    (0..count).map(move |i| (tenant, start + i * interval_us))
}

#[test]
fn admitted_count_is_exactly_what_the_bucket_arithmetic_predicts() {
    for (rate, burst, interval_us, count) in
        [(10_u32, 5_u32, 20_000_i64, 500_i64), (100, 1, 1_000, 3_000), (7, 20, 33_333, 1_000)]
    {
        let text = format!("version = 1\n[tenants.t]\nrate_per_sec = {rate}\nburst = {burst}\n");
        let mut quotas = Quotas::new(policy(&text));
        let mut admitted = 0_i64;
        for (tenant, at) in stream("t", 1_000_000, interval_us, count) {
            if quotas.decide(tenant, "fraud", at) == QuotaDecision::Admit {
                admitted += 1;
                quotas.release(tenant);
            }
        }
        // Events arrive faster than tokens: every token is taken as soon as it exists, so the
        // admitted count is the burst plus the whole tokens earned over the stream's span.
        let span_us = (count - 1) * interval_us;
        let predicted = (i64::from(burst) + span_us * i64::from(rate) / 1_000_000).min(count);
        assert!(
            interval_us * i64::from(rate) < 1_000_000,
            "the arrival rate must exceed the quota for this prediction"
        );
        assert_eq!(admitted, predicted, "rate {rate}, burst {burst}, every {interval_us} µs");
    }
}

#[test]
fn the_same_stream_twice_gives_identical_decisions() {
    let events: Vec<(&str, i64)> = stream("flood", 0, 3_000, 2_000).chain(stream("quiet", 500, 250_000, 20)).collect();
    let run = || {
        let mut quotas = Quotas::new(policy(TWO_TENANTS));
        events.iter().map(|(t, at)| quotas.decide(t, "fraud", *at)).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn a_flooding_tenant_never_gets_the_quiet_one_rejected() {
    let mut quotas = Quotas::new(policy(TWO_TENANTS));
    // flood: 500/s = 50× its 10/s quota; quiet: 4/s, within its quota.
    let mut events: Vec<(&str, i64)> =
        stream("flood", 0, 2_000, 10_000).chain(stream("quiet", 1_000, 250_000, 80)).collect();
    events.sort_by_key(|(_, at)| *at);
    let mut flood_rejected = 0;
    for (tenant, at) in events {
        match quotas.decide(tenant, "fraud", at) {
            QuotaDecision::Admit => quotas.release(tenant),
            QuotaDecision::Reject { .. } if tenant == "flood" => flood_rejected += 1,
            other => panic!("quiet tenant got {other:?} at {at}"),
        }
    }
    assert!(flood_rejected > 9_000, "the flood is held to its quota ({flood_rejected} rejected)");
}

#[test]
fn a_tightened_policy_takes_effect_at_once() {
    let mut quotas = Quotas::new(policy(TWO_TENANTS));
    let admitted = |q: &mut Quotas, from: i64| {
        stream("quiet", from, 10_000, 100)
            .filter(|(t, at)| matches!(q.decide(t, "fraud", *at), QuotaDecision::Admit))
            .count()
    };
    let before = admitted(&mut quotas, 0);
    let tightened = TWO_TENANTS
        .replace("[tenants.quiet]\nrate_per_sec = 10\nburst = 5", "[tenants.quiet]\nrate_per_sec = 1\nburst = 1");
    quotas.reload(policy(&tightened));
    let after = admitted(&mut quotas, 10_000_000);
    assert_eq!(before, 5 + 9, "burst 5 plus 10/s over 0.99 s");
    assert_eq!(after, 1 + 0, "burst 1 plus 1/s over 0.99 s");
}

#[test]
fn delay_waits_a_bounded_time_and_restores_do_not_refill() {
    let text = "version = 1\n[tenants.t]\nrate_per_sec = 10\nburst = 1\non_exceed = \"delay\"\nmax_delay_ms = 250\n";
    let mut quotas = Quotas::new(policy(text));
    assert_eq!(quotas.decide("t", "fraud", 0), QuotaDecision::Admit);
    assert_eq!(quotas.decide("t", "fraud", 0), QuotaDecision::Delay { wait_us: 100_000 });
    assert_eq!(quotas.decide("t", "fraud", 0), QuotaDecision::Delay { wait_us: 200_000 });
    assert!(matches!(
        quotas.decide("t", "fraud", 0),
        QuotaDecision::Reject { reason: streamscore_contracts::OutcomeReason::QuotaExceeded, retry_after_ms: 300 }
    ));
    // A new owner restored from the checkpoint continues from the same state, not a full bucket.
    let mut successor = Quotas::new(policy(text));
    successor.restore(quotas.checkpoint());
    assert!(matches!(successor.decide("t", "fraud", 0), QuotaDecision::Reject { .. }));
}

#[test]
fn unknown_tenants_and_models_follow_the_policy() {
    let mut quotas =
        Quotas::new(policy("version = 1\n[tenants.a]\nrate_per_sec = 1\nburst = 1\nallowed_models = [\"fraud\"]\n"));
    assert_eq!(quotas.decide("b", "fraud", 0), QuotaDecision::UnknownTenant);
    assert_eq!(quotas.decide("a", "credit", 0), QuotaDecision::ModelNotAllowed);
    let mut open =
        Quotas::new(policy("version = 1\nunknown_tenants = \"default\"\n[default]\nrate_per_sec = 1\nburst = 1\n"));
    assert_eq!(open.decide("anyone", "fraud", 0), QuotaDecision::Admit);
}

#[test]
fn a_malformed_policy_is_refused_naming_the_field() {
    let cases = [
        ("version = 1\n[tenants.a]\nrate_per_sec = 0\nburst = 1\n", "tenant a: field rate_per_sec"),
        ("version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 0\n", "tenant a: field burst"),
        ("version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 5\ntier = 12\n", "tenant a: field tier"),
        (
            "version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 5\non_exceed = \"delay\"\n",
            "tenant a: field max_delay_ms",
        ),
        ("version = 1\n[tenants.a]\nrate_per_sec = 5\nburts = 5\n", "burts"),
        ("version = 1\n[tenants.a]\nrate_per_sec = \"fast\"\nburst = 5\n", "rate_per_sec"),
        ("version = 1\nunknown_tenants = \"default\"\n", "field default"),
        (
            "version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 5\nkafka_principals = [\"alice\"]\n",
            "tenant a: field kafka_principals",
        ),
        (
            "version = 1\n[tenants.\"a b\"]\nrate_per_sec = 5\nburst = 5\nkafka_principals = [\"User:alice\"]\n",
            "tenant a b: field kafka_principals",
        ),
        (
            "version = 1\nunknown_tenants = \"default\"\n[default]\nrate_per_sec = 5\nburst = 5\nkafka_principals = [\"User:x\"]\n",
            "[default]: field kafka_principals",
        ),
        ("version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 5\nexplain_cost = 0\n", "tenant a: field explain_cost"),
        ("version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 5\nexplain_cost = 6\n", "tenant a: field explain_cost"),
        (
            "version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 5\nclient_certificate_subjects = [\"scorer\"]\n",
            "tenant a: field client_certificate_subjects",
        ),
        (
            "version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 5\nclient_certificate_subjects = [\"CN=s\"]\n\
             [tenants.b]\nrate_per_sec = 5\nburst = 5\nclient_certificate_subjects = [\"CN=s\"]\n",
            "also tenant a's",
        ),
        (
            "version = 1\nunknown_tenants = \"default\"\n[default]\nrate_per_sec = 5\nburst = 5\n\
             client_certificate_subjects = [\"CN=s\"]\n",
            "[default]: field client_certificate_subjects",
        ),
    ];
    for (text, expected) in cases {
        let error = Policy::parse(Path::new("policies/tenants.toml"), text.as_bytes()).expect_err(text).to_string();
        assert!(error.starts_with("policies/tenants.toml"), "{error}");
        assert!(error.contains(expected), "{error:?} should mention {expected:?}");
    }
}

#[test]
fn a_redelivered_stream_meets_the_committed_bucket_and_decides_the_same() {
    let text = "version = 1\n[tenants.t]\nrate_per_sec = 10\nburst = 3\non_exceed = \"delay\"\nmax_delay_ms = 150\n";
    let events: Vec<i64> = (0..40).map(|i| i * 37_000).collect();
    // First run: decide everything, committing the bucket after event 14.
    let mut first = Quotas::new(policy(text));
    first.adopt("t", 1, None);
    let mut decisions = Vec::new();
    let mut committed = None;
    for (i, at) in events.iter().enumerate() {
        decisions.push(first.decide("t", "fraud", *at));
        first.release("t");
        if i == 14 {
            committed = first.snapshot("t");
        }
    }
    // After a crash the partition is assigned again (generation 2) from that commit: events
    // 15.. are redelivered and must be decided exactly as before.
    let mut again = Quotas::new(policy(text));
    again.adopt("t", 2, committed.as_deref());
    let redecided: Vec<QuotaDecision> = events[15..]
        .iter()
        .map(|at| {
            let d = again.decide("t", "fraud", *at);
            again.release("t");
            d
        })
        .collect();
    assert_eq!(redecided, decisions[15..]);
    assert!(decisions.iter().any(|d| matches!(d, QuotaDecision::Delay { .. })), "the stream exercises delays");
    assert!(decisions.iter().any(|d| matches!(d, QuotaDecision::Reject { .. })), "and rejections");
    // A live instance ignores a second adopt for the same generation.
    let before = again.snapshot("t");
    again.adopt("t", 2, Some("0:0"));
    assert_eq!(again.snapshot("t"), before);
    // Without a committed bucket the tenant starts full.
    let mut fresh = Quotas::new(policy(text));
    fresh.adopt("t", 7, None);
    assert_eq!(fresh.decide("t", "fraud", 0), QuotaDecision::Admit);
}

#[test]
fn extreme_event_times_never_overflow_the_bucket() {
    let mut bucket = Bucket::full(1_000_000, 10, i64::MIN);
    assert_eq!(
        bucket.decide(i64::MAX, 0),
        BucketDecision::Admit,
        "a refill across the whole range saturates at the burst"
    );
    let mut restored = Bucket::restore(u32::MAX, u32::MAX, 0, i64::MIN);
    assert_eq!(restored.decide(i64::MAX, 0), BucketDecision::Admit);
    // A hostile checkpoint's debt is clamped to an hour of refill: the bucket opens again.
    let mut indebted = Bucket::restore(10, 10, i128::MIN, 0);
    assert!(matches!(indebted.decide(0, 0), BucketDecision::Reject { retry_after_ms } if retry_after_ms <= 3_600_100));
    assert_eq!(indebted.decide(3_600_000_000 + 100_000, 0), BucketDecision::Admit);
}

#[test]
fn tenants_with_kafka_principals_are_bound() {
    let text = "version = 1\n[tenants.a]\nrate_per_sec = 5\nburst = 5\nkafka_principals = [\"User:alice\", \"User:CN=a,O=x\"]\n\
                [tenants.b]\nrate_per_sec = 5\nburst = 5\n";
    let policy = policy(text);
    let bound: Vec<(&str, Vec<String>)> = policy.bound_tenants().map(|(t, p)| (t, p.to_vec())).collect();
    assert_eq!(bound, [("a", vec!["User:alice".to_owned(), "User:CN=a,O=x".to_owned()])]);
}

/// An explained request takes the policy's `explain_cost` in tokens; unset, the default or the
/// burst when that is smaller (a full bucket always admits one); a plain request still one.
#[test]
fn an_explained_request_is_charged_its_policy_cost() {
    let text = "version = 1\n[tenants.set]\nrate_per_sec = 10\nburst = 50\nexplain_cost = 20\n\
                [tenants.small]\nrate_per_sec = 10\nburst = 30\n[tenants.large]\nrate_per_sec = 10\nburst = 5000\n";
    let mut quotas = Quotas::new(policy(text));
    assert_eq!(quotas.policy().tenant("set").map(TenantPolicy::explain_cost), Some(20));
    assert_eq!(quotas.policy().tenant("small").map(TenantPolicy::explain_cost), Some(30));
    assert_eq!(quotas.policy().tenant("large").map(TenantPolicy::explain_cost), Some(policy::DEFAULT_EXPLAIN_COST));
    // 50 tokens: two explanations (40), then ten plain requests, then nothing.
    for _ in 0..2 {
        assert_eq!(quotas.decide_request("set", "fraud", 0, true), QuotaDecision::Admit);
    }
    assert_eq!(
        quotas.decide_request("set", "fraud", 0, true),
        QuotaDecision::Reject { reason: OutcomeReason::QuotaExceeded, retry_after_ms: 1000 },
        "10 tokens left, 20 needed: 10 more at 10/s"
    );
    for _ in 0..10 {
        assert_eq!(quotas.decide("set", "fraud", 0), QuotaDecision::Admit);
    }
    assert!(matches!(quotas.decide("set", "fraud", 0), QuotaDecision::Reject { .. }));
    // A full bucket of the small burst admits one explanation, which empties it.
    assert_eq!(quotas.decide_request("small", "fraud", 0, true), QuotaDecision::Admit);
    assert!(matches!(quotas.decide("small", "fraud", 0), QuotaDecision::Reject { .. }));
}
