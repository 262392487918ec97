#![allow(dead_code)]

//! One filled-in value of every event type.

use std::collections::HashMap;

use streamscore_contracts::*;

pub fn lineage(stage: Stage, kind: &str) -> Lineage {
    Lineage::derive(
        SourceOffset::new(topics::REQUESTS, 2, 1234),
        stage,
        kind,
        "test-host:42",
        Some("6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f".to_owned()),
        Some("acme".to_owned()),
    )
}

pub fn request() -> InferenceRequest {
    InferenceRequest {
        request_id: "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f".to_owned(),
        tenant: "acme".to_owned(),
        model: "fraud".to_owned(),
        model_version: Some("2".to_owned()),
        features: (0..16).map(|i| (format!("f{i:02}"), f64::from(i) * 1.5 - 3.0)).collect(),
        created_at: 1_764_000_000_000_000,
        reply_to: Some("bridge-7".to_owned()),
        attributes: HashMap::from([("channel".to_owned(), "web".to_owned())]),
    }
}

pub fn validated() -> ValidatedRequest {
    let mut validated = ValidatedRequest::new(lineage(Stage::Ingest, "validated"), request(), 1);
    validated.model_version = Some("2".to_owned());
    validated.feature_vector = Some((0..16).map(|i| i as f32 * 1.5 - 3.0).collect());
    validated
}

pub fn prediction() -> PredictionOutcome {
    PredictionOutcome {
        lineage: lineage(Stage::Infer, "prediction"),
        status: OutcomeStatus::Scored,
        shadow: false,
        model: "fraud".to_owned(),
        model_version: Some("2".to_owned()),
        model_sha256: Some("ab".repeat(32)),
        backend: Some("cpu".to_owned()),
        score: Some(0.125),
        label: Some("legit".to_owned()),
        reason: None,
        detail: None,
        retry_after_ms: None,
        features: request().features,
        batch_size: 64,
        queue_wait_us: 350,
        inference_us: 90,
        request_created_at: 1_764_000_000_000_000,
        reply_to: None,
        routed_by: Some(RoutedBy { rollout_id: "r-7".to_owned(), generation: 3, step: 1 }),
        explanation: Some(Explanation {
            method: "exact_shapley".to_owned(),
            baseline_score: 0.0625,
            score: 0.125,
            attributions: (0..16)
                .map(|i| Attribution {
                    feature: format!("f{i:02}"),
                    value: f64::from(i) * 1.5 - 3.0,
                    baseline: 1.0,
                    attribution: if i == 3 { 0.0625 } else { 0.0 },
                })
                .collect(),
            top: vec![Attribution { feature: "f03".to_owned(), value: 1.5, baseline: 1.0, attribution: 0.0625 }],
            permutations: None,
            error_bound: None,
        }),
    }
}

pub fn rollout() -> Rollout {
    Rollout {
        model: "fraud".to_owned(),
        generation: 3,
        rollout_id: "r-7".to_owned(),
        status: RolloutStatus::Paused,
        incumbent: "1".to_owned(),
        candidate: Some("2".to_owned()),
        split: vec![
            Share { version: "1".to_owned(), basis_points: 7_500 },
            Share { version: "2".to_owned(), basis_points: 2_500 },
        ],
        shadow: None,
        steps: vec![1, 5, 25, 50, 100],
        step: 2,
        step_secs: 60,
        min_samples: 500,
        step_started_at: 1_764_000_000_000_000,
        resume_status: Some(RolloutStatus::Canary),
        changed_at: 1_764_000_100_000_000,
        changed_by: "ops@host".to_owned(),
        reason: "holding over the weekend".to_owned(),
        figures: HashMap::from([("error_rate".to_owned(), "0.001".to_owned())]),
    }
}

pub fn dead_letter() -> DeadLetter {
    DeadLetter {
        lineage: lineage(Stage::Ingest, "dead-letter"),
        reason: DeadLetterReason::FeatureOutOfRange,
        detail: "amount 1e12 is above 1e6".to_owned(),
        original_key: Some(b"acme".to_vec()),
        original_value: Some(vec![0, 0, 0, 0, 1, 0xff, 0x00, 0x7f]),
        writer_schema_id: Some(1),
        original_timestamp_ms: Some(1_764_000_000_000),
        original_value_length: Some(8_000_000),
        original_value_sha256: Some("ab".repeat(32)),
    }
}

pub fn audit() -> AuditRecord {
    AuditRecord {
        audit_id: "a-1".to_owned(),
        seq: 7,
        stage: "infer".to_owned(),
        instance: "test-host:42".to_owned(),
        kind: "MODEL_LOADED".to_owned(),
        subject: "fraud/2".to_owned(),
        lineage: Some(lineage(Stage::Infer, "audit")),
        details: HashMap::from([("sha256".to_owned(), "ab".repeat(32))]),
        occurred_at: 1_764_000_000_000_000,
        prev_hash: "0".repeat(64),
        hash: "f".repeat(64),
    }
}

pub fn alert() -> DriftAlert {
    DriftAlert {
        alert_id: "d-1".to_owned(),
        model: "fraud".to_owned(),
        model_version: "2".to_owned(),
        feature: "amount".to_owned(),
        method: DriftMethod::Psi,
        statistic: 0.31,
        warn_threshold: 0.1,
        alert_threshold: 0.25,
        severity: Severity::Alert,
        window_start: 1_764_000_000_000_000,
        window_end: 1_764_000_060_000_000,
        bin_edges: vec![0.0, 10.0, 100.0],
        current_counts: vec![5, 90, 5],
        reference_shares: vec![0.3, 0.6, 0.1],
        consecutive_windows: 3,
        detected_at: 1_764_000_061_000_000,
        stage: "monitor".to_owned(),
        instance: "test-host:42".to_owned(),
    }
}

pub fn feedback() -> Feedback {
    Feedback {
        request_id: "r-1".to_owned(),
        tenant: "tenant-01".to_owned(),
        actual: 1.0,
        observed_at: 1_764_600_000_000_000,
        source: Some("chargebacks".to_owned()),
        attributes: Some(HashMap::from([("case".to_owned(), "cb-17".to_owned())])),
    }
}

pub fn idempotent_answer() -> IdempotentAnswer {
    IdempotentAnswer {
        key_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        request_sha256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".to_owned(),
        status: 200,
        content_type: Some("application/json".to_owned()),
        body: br#"{"predictions":[{"request_id":"r-1","score":0.25}]}"#.to_vec(),
        kept_at: 1_764_600_000_000_000,
        instance: "bridge:test-host:42:0a1b2c3d".to_owned(),
    }
}
