//! `streamscore monitor`: consumes predictions and dead letters as a consumer group, keeps a
//! drift detector per model version and latency histograms, writes alerts to the alert topic
//! and the audit log, and reports.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use streamscore_contracts::{
    topics, Codec, DeadLetter, DeadLetterReason, DriftAlert, InferenceRequest, OutcomeStatus, PredictionOutcome,
};
use streamscore_kafka::audit::AuditWriter;
use streamscore_kafka::KafkaConfig;
use streamscore_modelstore::ModelStore;

use crate::drift::{Detector, DetectorConfig, Reference};
use crate::latency::LatencyBook;

/// Errors that stop the monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("schema registry: {0}")]
    Registry(#[from] streamscore_contracts::RegistryError),
    #[error("encoding an alert: {0}")]
    Encode(#[from] streamscore_contracts::EncodeError),
    #[error("audit log: {0}")]
    Audit(#[from] streamscore_kafka::audit::AuditError),
    #[error(transparent)]
    Setup(#[from] streamscore_kafka::KafkaError),
}

/// What the monitor needs.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub group: String,
    pub predictions_topic: String,
    pub dead_letter_topic: String,
    pub alerts_topic: String,
    pub audit_topic: String,
    pub detector: DetectorConfig,
    pub instance: String,
    /// How often to print a report (and measure consumer lag).
    pub report_every: Duration,
    /// Groups whose lag is measured and exported, with the topic each consumes.
    pub lag_targets: Vec<crate::lag::LagTarget>,
}

impl MonitorConfig {
    pub fn new(kafka: KafkaConfig, registry_url: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            kafka,
            registry_url: registry_url.into(),
            group: "streamscore-monitor".to_owned(),
            predictions_topic: topics::PREDICTIONS.to_owned(),
            dead_letter_topic: topics::DEAD_LETTER.to_owned(),
            alerts_topic: topics::ALERTS.to_owned(),
            audit_topic: topics::AUDIT.to_owned(),
            detector: DetectorConfig::default(),
            instance: instance.into(),
            report_every: Duration::from_secs(10),
            lag_targets: [
                ("streamscore-pipeline", topics::REQUESTS),
                ("streamscore-ingest", topics::REQUESTS),
                ("streamscore-infer", topics::VALIDATED),
                ("streamscore-monitor", topics::PREDICTIONS),
            ]
            .into_iter()
            .map(|(group, topic)| crate::lag::LagTarget { group: group.to_owned(), topic: topic.to_owned() })
            .collect(),
        }
    }
}

/// What the monitor saw.
#[derive(Debug, Clone, Default)]
pub struct MonitorSummary {
    pub predictions: u64,
    pub dead_letters: u64,
    /// Dead letters refused for missing or non-finite features, counted by the drift windows.
    pub rejected_inputs: u64,
    pub alerts: Vec<DriftAlert>,
    pub latencies: LatencyBook,
}

/// Runs until `shutdown` resolves.
pub async fn run(
    config: MonitorConfig,
    models: ModelStore,
    shutdown: impl Future<Output = ()>,
) -> Result<MonitorSummary, MonitorError> {
    run_with_stats(config, models, None, shutdown).await
}

/// [`run`], also publishing drift status and alerts to `live` (the run view) instead of
/// printing reports.
pub async fn run_with_stats(
    config: MonitorConfig,
    models: ModelStore,
    live: Option<std::sync::Arc<crate::LiveStats>>,
    shutdown: impl Future<Output = ()>,
) -> Result<MonitorSummary, MonitorError> {
    let consumer: StreamConsumer = config
        .kafka
        .client_config()
        .set("group.id", &config.group)
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    consumer.subscribe(&[&config.predictions_topic, &config.dead_letter_topic])?;
    let predictions = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    let dead_letters = Codec::<DeadLetter>::with_url(&config.registry_url, &config.dead_letter_topic);
    // Reads the original bytes of requests dead-lettered for their features.
    let requests = Codec::<InferenceRequest>::with_url(&config.registry_url, topics::REQUESTS);
    let alerts_codec = Codec::<DriftAlert>::with_url(&config.registry_url, &config.alerts_topic);
    alerts_codec.register().await?;
    let audit =
        AuditWriter::new(&config.kafka, &config.registry_url, &config.audit_topic, "monitor", &config.instance).await?;
    let producer = config.kafka.producer()?;
    let mut detectors: HashMap<(String, String), Detector> = HashMap::new();
    let mut summary = MonitorSummary::default();
    let mut report = tokio::time::interval(config.report_every);
    report.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = report.tick() => {
                let (kafka, targets) = (config.kafka.clone(), config.lag_targets.clone());
                let lag = tokio::task::spawn_blocking(move || crate::lag::measure(&kafka, &targets));
                if live.is_none() {
                    if let Ok(lags) = lag.await {
                        for l in lags.iter().filter(|l| l.records > 0) {
                            println!("  lag {} on {}/{}: {} records, {:.1} s", l.group, l.topic, l.partition, l.records, l.seconds);
                        }
                    }
                }
                match &live {
                None => print_report(&detectors, &summary),
                Some(live) => {
                    let mut drift = live.drift.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    for ((model, version), d) in &detectors {
                        let status = if d.status().drifting.is_empty() { "no drift".to_owned() } else { format!("drifting: {}", d.status().drifting.join(", ")) };
                        drift.insert(format!("{model}/{version}"), status);
                    }
                }
            }
            },
            message = consumer.recv() => {
                let message = message?;
                let bytes = message.payload().unwrap_or_default();
                let seen = if message.topic() == config.dead_letter_topic {
                    let Ok(dl) = dead_letters.decode(bytes).await else { continue };
                    summary.dead_letters += 1;
                    metrics::counter!("streamscore_monitor_dead_letters_total", "reason" => dl.value.reason.code()).increment(1);
                    let Some(seen) = rejected_inputs(&requests, &models, &dl.value).await else { continue };
                    summary.rejected_inputs += 1;
                    seen
                } else {
                    let outcome = match predictions.decode(bytes).await {
                        Ok(decoded) => decoded.value,
                        Err(e) => {
                            tracing::error!(error = %e, "undecodable prediction; skipped");
                            continue;
                        }
                    };
                    if outcome.status != OutcomeStatus::Scored {
                        continue;
                    }
                    summary.predictions += 1;
                    summary.latencies.record(&outcome);
                    let Some(version) = outcome.model_version else { continue };
                    Seen {
                        model: outcome.model,
                        version,
                        event_us: outcome.request_created_at,
                        features: outcome.features,
                        score: outcome.score,
                    }
                };
                let key = (seen.model, seen.version);
                if !detectors.contains_key(&key) {
                    let Some(model) = models.get(&key.0, &key.1) else { continue };
                    detectors.insert(key.clone(), Detector::new(Reference::from_metadata(&model.meta), config.detector, &config.instance));
                }
                let Some(detector) = detectors.get_mut(&key) else { continue };
                let now = streamscore_contracts::now_micros();
                for alert in detector.observe(seen.event_us, &seen.features, seen.score, now) {
                    publish(&producer, &alerts_codec, &config.alerts_topic, &audit, &alert).await?;
                    if let Some(live) = &live {
                        let line = format!("{:?} {}/{} {} {:?} {:.3}", alert.severity, alert.model, alert.model_version, alert.feature, alert.method, alert.statistic);
                        let mut alerts = live.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        alerts.push(line);
                        let excess = alerts.len().saturating_sub(5);
                        alerts.drain(..excess);
                    }
                    summary.alerts.push(alert);
                }
            }
        }
    }
    Ok(summary)
}

/// What a detector counts: a scored prediction's inputs and score, or the inputs of a request
/// refused for its features.
struct Seen {
    model: String,
    version: String,
    event_us: i64,
    features: HashMap<String, f64>,
    score: Option<f64>,
}

/// The inputs of a request dead-lettered for missing or non-finite features, decoded from its
/// original bytes, so the drift windows count them in the missing/non-finite ratio (without a
/// score: it was never scored). A request that named no version is counted against the
/// model's default version (tenant pins are the infer stage's, not known here). Anything else
/// dead-lettered is counted by reason only.
async fn rejected_inputs(requests: &Codec<InferenceRequest>, models: &ModelStore, dl: &DeadLetter) -> Option<Seen> {
    if !matches!(dl.reason, DeadLetterReason::FeatureMissing | DeadLetterReason::NonFinite) {
        return None;
    }
    let request = requests.decode(dl.original_value.as_deref()?).await.ok()?.value;
    let version = request.model_version.or_else(|| models.default_version(&request.model).map(str::to_owned))?;
    Some(Seen { model: request.model, version, event_us: request.created_at, features: request.features, score: None })
}

async fn publish(
    producer: &rdkafka::producer::FutureProducer,
    codec: &Codec<DriftAlert>,
    topic: &str,
    audit: &AuditWriter,
    alert: &DriftAlert,
) -> Result<(), MonitorError> {
    tracing::warn!(
        model = alert.model,
        version = alert.model_version,
        feature = alert.feature,
        method = ?alert.method,
        statistic = alert.statistic,
        severity = ?alert.severity,
        "drift"
    );
    metrics::counter!(
        "streamscore_drift_alerts_total",
        "model" => alert.model.clone(),
        "version" => alert.model_version.clone(),
        "severity" => format!("{:?}", alert.severity).to_ascii_lowercase(),
    )
    .increment(1);
    let bytes = codec.encode(alert)?;
    let key = format!("{}/{}", alert.model, alert.model_version);
    producer
        .send(FutureRecord::to(topic).key(key.as_bytes()).payload(&bytes[..]), Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    let details = HashMap::from([
        ("method".to_owned(), format!("{:?}", alert.method)),
        ("statistic".to_owned(), format!("{:.6}", alert.statistic)),
        ("severity".to_owned(), format!("{:?}", alert.severity)),
        ("alert_id".to_owned(), alert.alert_id.clone()),
    ]);
    audit.record("DRIFT_ALERT", &format!("{key}/{}", alert.feature), None, details).await?;
    Ok(())
}

fn print_report(detectors: &HashMap<(String, String), Detector>, summary: &MonitorSummary) {
    println!(
        "monitor: {} predictions, {} dead letters, {} alerts",
        summary.predictions,
        summary.dead_letters,
        summary.alerts.len()
    );
    for ((model, version, backend), l) in &summary.latencies.by_version {
        println!(
            "  {model}/{version} on {backend}: end-to-end p50 {:.1} ms p99 {:.1} ms (n={}), inference p99 {} µs",
            l.end_to_end.value_at_quantile(0.5) as f64 / 1000.0,
            l.end_to_end.value_at_quantile(0.99) as f64 / 1000.0,
            l.end_to_end.len(),
            l.inference.value_at_quantile(0.99)
        );
    }
    for ((model, version), d) in detectors {
        let status = if d.status().drifting.is_empty() {
            "no drift".to_owned()
        } else {
            format!("drifting: {}", d.status().drifting.join(", "))
        };
        println!("  {model}/{version}: {} windows closed, {status}", d.status().windows_closed);
    }
}
