#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const HOUR: i64 = 3_600_000_000;

fn prediction(id: &str, version: &str, tenant: &str, created_at: i64, score: f64) -> Prediction {
    Prediction {
        request_id: id.to_owned(),
        model: "fraud".to_owned(),
        version: version.to_owned(),
        tenant: tenant.to_owned(),
        shadow: version == "2",
        created_at,
        score,
        predicted: Some(score >= 0.5),
    }
}

fn label(id: &str, tenant: &str, actual: f64, observed_at: i64, offset: i64) -> Label {
    Label {
        request_id: id.to_owned(),
        tenant: tenant.to_owned(),
        actual,
        observed_at,
        record: Record {
            topic: "inference.feedback".to_owned(),
            partition: 0,
            offset,
            key: Some(tenant.as_bytes().to_vec()),
            value: vec![0, 1, 2],
            timestamp_ms: Some(1),
        },
    }
}

fn labeled_count(store: &QualityStore) -> u64 {
    store.stats().unwrap().labeled
}

#[test]
fn outcomes_and_labels_count_once_however_often_they_come() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = QualityStore::open(dir.path(), 30 * 24 * HOUR).unwrap();
    assert!(store.is_fresh());
    let p = prediction("r1", "1", "t1", 10 * HOUR, 0.9);
    assert!(store.add_prediction(&p).unwrap().new);
    assert!(!store.add_prediction(&p).unwrap().new, "redelivered");
    let shadow = prediction("r1", "2", "t1", 10 * HOUR, 0.7);
    store.add_prediction(&shadow).unwrap();
    let l = label("r1", "t1", 1.0, 11 * HOUR, 5);
    assert_eq!(store.add_label(&l, 11 * HOUR).unwrap(), LabelOutcome::Joined(2), "primary and shadow");
    assert_eq!(store.add_label(&l, 11 * HOUR).unwrap(), LabelOutcome::Duplicate);
    assert_eq!(labeled_count(&store), 2);
    // An earlier label is stale; a later one corrects.
    assert_eq!(store.add_label(&label("r1", "t1", 0.0, 10 * HOUR + 1, 6), 0).unwrap(), LabelOutcome::Stale);
    assert_eq!(store.add_label(&label("r1", "t1", 0.0, 12 * HOUR, 7), 0).unwrap(), LabelOutcome::Corrected);
    store.commit().unwrap();
    let rows = labeled(&store.conn, 0).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.actual == 0.0 && r.observed_at == 12 * HOUR), "{rows:?}");
    drop(store);
    // Reopened (a restart): the same state, nothing counted again.
    let mut store = QualityStore::open(dir.path(), 30 * 24 * HOUR).unwrap();
    assert!(!store.is_fresh());
    assert!(!store.add_prediction(&p).unwrap().new);
    assert_eq!(store.add_label(&label("r1", "t1", 0.0, 12 * HOUR, 7), 0).unwrap(), LabelOutcome::Duplicate);
    assert_eq!(labeled_count(&store), 2);
    let (minutes, totals) = volumes(&store.conn, 0).unwrap();
    assert_eq!(totals[&("fraud".to_owned(), "1".to_owned(), "t1".to_owned())], 1);
    assert_eq!(minutes[&("fraud".to_owned(), "2".to_owned(), "t1".to_owned())], vec![(minute_of(10 * HOUR), 1)]);
}

#[test]
fn a_label_before_its_outcome_waits_and_joins_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = QualityStore::open(dir.path(), 24 * HOUR).unwrap();
    assert_eq!(store.add_label(&label("r2", "t1", 1.0, 5 * HOUR, 1), 5 * HOUR).unwrap(), LabelOutcome::Pending);
    assert_eq!(store.stats().unwrap().pending, 1);
    let outcome = store.add_prediction(&prediction("r2", "1", "t1", 4 * HOUR, 0.2)).unwrap();
    assert_eq!((outcome.joined, outcome.refused), (1, 0));
    // The shadow coming later joins the same label.
    assert_eq!(store.add_prediction(&prediction("r2", "2", "t1", 4 * HOUR, 0.3)).unwrap().joined, 1);
    let stats = store.stats().unwrap();
    assert_eq!((stats.pending, stats.labels, stats.labeled, stats.outbox), (0, 1, 2, 0));
}

#[test]
fn another_tenants_label_and_a_late_one_go_to_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = QualityStore::open(dir.path(), 24 * HOUR).unwrap();
    store.add_prediction(&prediction("r3", "1", "t1", 0, 0.2)).unwrap();
    let other = store.add_label(&label("r3", "t2", 1.0, HOUR, 1), HOUR).unwrap();
    assert_eq!(other, LabelOutcome::Refused(DeadLetterReason::FeedbackTenantMismatch));
    let late = store.add_label(&label("r3", "t1", 1.0, 25 * HOUR, 2), 25 * HOUR).unwrap();
    assert_eq!(late, LabelOutcome::Refused(DeadLetterReason::FeedbackUnknownRequest));
    // Pending, then refused when the outcome shows it is another tenant's.
    assert_eq!(store.add_label(&label("r4", "t2", 0.0, HOUR, 3), HOUR).unwrap(), LabelOutcome::Pending);
    assert_eq!(store.add_prediction(&prediction("r4", "1", "t1", 0, 0.1)).unwrap().refused, 1);
    // The genuine tenant's label still joins.
    assert_eq!(store.add_label(&label("r3", "t1", 1.0, 2 * HOUR, 4), 2 * HOUR).unwrap(), LabelOutcome::Joined(1));
    let outbox = store.outbox(10, &Default::default()).unwrap();
    let reasons: Vec<(DeadLetterReason, i64)> = outbox.iter().map(|r| (r.reason, r.record.offset)).collect();
    assert_eq!(
        reasons,
        [
            (DeadLetterReason::FeedbackTenantMismatch, 1),
            (DeadLetterReason::FeedbackUnknownRequest, 2),
            (DeadLetterReason::FeedbackTenantMismatch, 3)
        ]
    );
    assert_eq!(outbox[0].record.value, vec![0, 1, 2], "the original bytes go with the dead letter");
    assert!(outbox[0].detail.contains("t1's, not t2's"), "{}", outbox[0].detail);
    store.sent(outbox[0].id).unwrap();
    let sending = std::collections::HashSet::from([outbox[1].id]);
    assert_eq!(store.outbox(10, &sending).unwrap().len(), 1, "sent and sending ones are left out");
}

#[test]
fn pending_labels_expire_after_the_horizon_and_old_state_is_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = QualityStore::open(dir.path(), 2 * HOUR).unwrap();
    store.add_label(&label("nobody", "t1", 1.0, 10 * HOUR, 1), 10 * HOUR).unwrap();
    assert_eq!(store.expire_pending(11 * HOUR).unwrap(), 0, "within the horizon");
    assert_eq!(store.expire_pending(12 * HOUR + 1).unwrap(), 1);
    let outbox = store.outbox(10, &Default::default()).unwrap();
    assert_eq!(outbox[0].reason, DeadLetterReason::FeedbackUnknownRequest);
    assert_eq!(store.stats().unwrap().pending, 0);
    store.add_prediction(&prediction("old", "1", "t1", HOUR, 0.5)).unwrap();
    store.add_label(&label("old", "t1", 1.0, 2 * HOUR, 2), 2 * HOUR).unwrap();
    store.add_prediction(&prediction("new", "1", "t1", 10 * HOUR, 0.5)).unwrap();
    store.evict(10 * HOUR, 0).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.predictions, stats.labels, stats.labeled), (1, 0, 1), "labeled pairs stay for the retention");
    store.evict(10 * HOUR, 5 * HOUR).unwrap();
    assert_eq!(store.stats().unwrap().labeled, 0);
    store.commit().unwrap();
    assert!(store.stats().unwrap().bytes > 0);
}
