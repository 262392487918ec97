//! The monitor stage on the real broker and registry: consumer lag per partition of a real
//! group, in records and seconds; requests dead-lettered for missing features counted in the
//! drift windows' missing ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use streamscore_monitor::lag::{measure, LagTarget};

mod support;

use std::time::Duration;

use rdkafka::message::Message;
use streamscore_contracts::lineage::{Lineage, SourceOffset, Stage};
use streamscore_contracts::{
    Codec, DeadLetter, DeadLetterReason, DriftAlert, DriftMethod, InferenceRequest, OutcomeStatus, PredictionOutcome,
};
use streamscore_monitor::drift::DetectorConfig;
use streamscore_monitor::stage::MonitorConfig;

#[tokio::test(flavor = "multi_thread")]
async fn lag_is_measured_in_records_and_seconds() {
    let kafka = support::kafka();
    let topic = support::unique("lag");
    streamscore_kafka::ensure_topics(&kafka, &[streamscore_kafka::TopicSpec::event(&topic, 1)]).await.unwrap();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..10).map(|i| (b"k".to_vec(), format!("v{i}").into_bytes())).collect();
    support::produce(&topic, &records).await;
    let group = support::unique("lagging-group");
    let commit = |offset: i64| {
        let consumer: BaseConsumer = kafka.client_config().set("group.id", &group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(offset)).unwrap();
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    };
    let target = [LagTarget { group: group.clone(), topic: topic.clone() }];
    let (kafka2, target2) = (kafka.clone(), target.clone());
    assert!(
        tokio::task::spawn_blocking(move || measure(&kafka2, &target2)).await.unwrap().is_empty(),
        "no commits, no lag reported"
    );

    commit(4);
    let (kafka2, target2) = (kafka.clone(), target.clone());
    let lags = tokio::task::spawn_blocking(move || measure(&kafka2, &target2)).await.unwrap();
    assert_eq!(lags.len(), 1);
    assert_eq!(lags[0].records, 6, "10 written, 4 committed");
    assert!(lags[0].seconds >= 0.0 && lags[0].seconds < 600.0, "{}", lags[0].seconds);

    commit(10);
    let lags = tokio::task::spawn_blocking(move || measure(&kafka, &target)).await.unwrap();
    assert_eq!((lags[0].records, lags[0].seconds), (0, 0.0));
}

fn request(i: i64, base_us: i64) -> InferenceRequest {
    support::synth_request(u64::try_from(i).unwrap(), format!("req-{i}"), "tenant-01", None, base_us + i * 1_000)
}

/// Half the requests scored, half dead-lettered for a missing `amount`: the monitor decodes
/// the dead letters' original bytes and counts them in the windows, so `amount`'s missing
/// ratio (0.5 a window) raises a MissingRatio alert, and no other feature's does.
#[tokio::test(flavor = "multi_thread")]
async fn features_missing_from_dead_letters_count_in_the_missing_ratio() {
    let registry = support::TestRegistry::start().await;
    let kafka = support::kafka();
    let (predictions, dead, alerts, audit, requests) = (
        support::unique("mon-predictions"),
        support::unique("mon-dead"),
        support::unique("mon-alerts"),
        support::unique("mon-audit"),
        support::unique("mon-requests"),
    );
    let specs: Vec<_> =
        [&predictions, &dead, &alerts, &audit].iter().map(|t| streamscore_kafka::TopicSpec::event(t, 1)).collect();
    streamscore_kafka::ensure_topics(&kafka, &specs).await.unwrap();
    let request_codec = Codec::<InferenceRequest>::with_url(&registry.url, &requests);
    let outcome_codec = Codec::<PredictionOutcome>::with_url(&registry.url, &predictions);
    let dead_codec = Codec::<DeadLetter>::with_url(&registry.url, &dead);
    for registered in [request_codec.register().await, outcome_codec.register().await, dead_codec.register().await] {
        registered.unwrap();
    }

    let base_us = streamscore_contracts::now_micros();
    let (mut scored, mut dead_letters) = (Vec::new(), Vec::new());
    for i in 0..600_i64 {
        let mut request = request(i, base_us);
        let source = SourceOffset::new(&requests, 0, i);
        if i % 2 == 0 {
            let validated = support::validated_from(request.clone(), source);
            let mut outcome = streamscore_infer::rejected(
                &validated,
                "test",
                streamscore_contracts::OutcomeReason::ModelError,
                "",
                None,
            );
            outcome.status = OutcomeStatus::Scored;
            outcome.reason = None;
            outcome.model_version = Some("1".to_owned());
            outcome.score = Some(0.02);
            outcome.features = request.features;
            outcome.request_created_at = request.created_at;
            scored.push((b"tenant-01".to_vec(), outcome_codec.encode(&outcome).unwrap()));
        } else {
            request.features.remove("amount");
            let dead_letter = DeadLetter {
                lineage: Lineage::derive(
                    source,
                    Stage::Ingest,
                    "dead-letter",
                    "test",
                    Some(request.request_id.clone()),
                    None,
                ),
                reason: DeadLetterReason::FeatureMissing,
                detail: "feature amount is missing".to_owned(),
                original_key: None,
                original_value: Some(request_codec.encode(&request).unwrap()),
                writer_schema_id: None,
                original_timestamp_ms: None,
                original_value_length: None,
                original_value_sha256: None,
            };
            dead_letters.push((Vec::new(), dead_codec.encode(&dead_letter).unwrap()));
        }
    }
    support::produce(&predictions, &scored).await;
    support::produce(&dead, &dead_letters).await;

    let mut config = MonitorConfig::new(kafka, &registry.url, "test-monitor");
    config.group = support::unique("monitor");
    config.predictions_topic = predictions;
    config.dead_letter_topic = dead;
    config.alerts_topic = alerts.clone();
    config.audit_topic = audit;
    config.report_every = Duration::from_secs(3600);
    config.lag_targets = Vec::new();
    config.detector = DetectorConfig {
        window_us: 3_600_000_000,
        window_events: 100,
        sliding_windows: 1,
        consecutive: 2,
        min_events: 50,
        ..DetectorConfig::default()
    };
    let models = streamscore_modelstore::ModelStore::open(support::models_dir()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(streamscore_monitor::stage::run(config, models, async {
        let _ = stopped.await;
    }));

    let alert_codec = Codec::<DriftAlert>::with_url(&registry.url, &alerts);
    let mut missing_alerts: Vec<DriftAlert> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while missing_alerts.iter().all(|a| a.feature != "amount") && tokio::time::Instant::now() < deadline {
        let topic = alerts.clone();
        let records =
            tokio::task::spawn_blocking(move || support::read_all(&[&topic], Duration::from_secs(2))).await.unwrap();
        missing_alerts.clear();
        for record in records {
            let alert = alert_codec.decode(record.payload().unwrap()).await.unwrap().value;
            if alert.method == DriftMethod::MissingRatio {
                missing_alerts.push(alert);
            }
        }
    }
    stop.send(()).unwrap();
    let summary = monitor.await.unwrap().unwrap();
    assert_eq!(summary.dead_letters, 300);
    assert_eq!(summary.rejected_inputs, 300, "every missing-feature dead letter counted in the windows");
    assert_eq!(summary.predictions, 300);
    let features: std::collections::BTreeSet<&str> = missing_alerts.iter().map(|a| a.feature.as_str()).collect();
    assert_eq!(features, std::collections::BTreeSet::from(["amount"]), "only amount is missing: {missing_alerts:?}");
    assert!(missing_alerts.iter().all(|a| a.model == "fraud" && a.model_version == "1" && a.statistic > 0.3));
    registry.stop().await;
}
