//! Prediction outcomes.

use streamscore_contracts::{Lineage, OutcomeReason, OutcomeStatus, PredictionOutcome, Stage, ValidatedRequest};

/// The rejected outcome for `request`: `reason` is typed (written as its code, e.g.
/// `QUOTA_EXCEEDED`), `detail` says what to do about it.
///
/// Its event id is the request's primary outcome id, like a prediction's, because every
/// decision behind it reproduces on a redelivery. The exception is `IN_FLIGHT_EXCEEDED`, load
/// shedding on the wall clock that a redelivery decides anew: its id is its own, so a
/// redelivery that is then scored never shares an id with different content.
pub fn rejected(
    request: &ValidatedRequest,
    instance: &str,
    reason: OutcomeReason,
    detail: impl Into<String>,
    retry_after_ms: Option<i64>,
) -> PredictionOutcome {
    let kind = if reason.reproducible() { "prediction" } else { "prediction/in-flight" };
    let lineage = Lineage::derive(
        request.lineage.source.clone(),
        Stage::Infer,
        kind,
        instance,
        Some(request.request.request_id.clone()),
        Some(request.request.tenant.clone()),
    );
    let mut outcome = PredictionOutcome::new(lineage, &request.request, OutcomeStatus::Rejected);
    outcome.reason = Some(reason.code().to_owned());
    outcome.detail = Some(detail.into());
    outcome.retry_after_ms = retry_after_ms;
    outcome.features = request.request.features.clone();
    outcome
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use streamscore_contracts::{InferenceRequest, SourceOffset};

    use super::*;

    #[test]
    fn rejection_points_back_to_the_request_offset_with_a_stable_id() {
        let source = SourceOffset::new("inference.requests", 3, 99);
        let validated = ValidatedRequest::new(
            Lineage::derive(source.clone(), Stage::Ingest, "validated", "i-1", None, None),
            InferenceRequest {
                request_id: "r-1".to_owned(),
                tenant: "acme".to_owned(),
                model: "fraud".to_owned(),
                model_version: Some("9".to_owned()),
                features: streamscore_contracts::Features::from_iter([("amount".to_owned(), 12.5)]),
                created_at: 1_000,
                reply_to: Some("bridge-1".to_owned()),
                attributes: HashMap::new(),
            },
            1,
        );
        let a = rejected(&validated, "i-2", OutcomeReason::UnknownModelVersion, "no version 9", None);
        let b = rejected(&validated, "i-3", OutcomeReason::UnknownModelVersion, "no version 9", None);
        assert_eq!(a.status, OutcomeStatus::Rejected);
        assert_eq!(a.lineage.source, source);
        assert_eq!(a.lineage.event_id, b.lineage.event_id, "redelivery gives the same id");
        assert_ne!(a.lineage.event_id, validated.lineage.event_id);
        assert_eq!(a.reply_to.as_deref(), Some("bridge-1"));
        assert_eq!(a.features, validated.request.features);
    }
}
