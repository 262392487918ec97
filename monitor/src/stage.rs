//! `streamscore monitor`: consumes predictions and dead letters as a consumer group, keeps a
//! drift detector per model version and latency histograms, writes alerts to the alert topic
//! and the audit log, and reports.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::Message;
use streamscore_contracts::{
    topics, Codec, DeadLetter, DeadLetterReason, DecodeError, DriftAlert, Event, InferenceRequest, OutcomeStatus,
    PredictionOutcome,
};
use streamscore_kafka::audit::AuditWriter;
use streamscore_kafka::retry::{self, Attempt};
use streamscore_kafka::{Ack, KafkaConfig, Shutdown, Sink, SinkError, Source, SourceConfig, SourceError, Stopped};
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
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A stop request came during start-up (the registry or the broker not answering yet).
    #[error("start-up stopped")]
    Stopped(#[from] Stopped),
    #[error(transparent)]
    Store(#[from] crate::quality::store::StoreError),
    #[error("model quality: {0}")]
    Quality(String),
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
    /// How often to print a report.
    pub report_every: Duration,
    /// How often to measure the lag of every stage's group (each probe costs the broker a
    /// few requests per group; see [`crate::lag`]).
    pub lag_every: Duration,
    /// Groups whose lag is measured and exported, with the topic each consumes.
    pub lag_targets: Vec<crate::lag::LagTarget>,
    /// Labels joined to the predictions for quality per version (`None`: no quality).
    pub quality: Option<crate::quality::QualityConfig>,
    /// The sample of predictions explained for `streamscore_attribution_mean_abs`.
    pub attribution: crate::attribution::AttributionConfig,
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
            lag_every: Duration::from_secs(10),
            lag_targets: [
                ("streamscore-pipeline", topics::REQUESTS),
                ("streamscore-ingest", topics::REQUESTS),
                ("streamscore-infer", topics::VALIDATED),
                ("streamscore-monitor", topics::PREDICTIONS),
            ]
            .into_iter()
            .map(|(group, topic)| crate::lag::LagTarget { group: group.to_owned(), topic: topic.to_owned() })
            .collect(),
            quality: None,
            attribution: crate::attribution::AttributionConfig::default(),
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
    shutdown: impl Into<Shutdown>,
) -> Result<MonitorSummary, MonitorError> {
    run_with_stats(config, models, None, shutdown).await
}

/// [`run`], also publishing drift status and alerts to `live` (the run view) instead of
/// printing reports.
///
/// At-least-once like every stage: a record's offset is stored once the alerts it raised are
/// acknowledged. Detectors live in memory, so a restart re-reads what was not committed.
pub async fn run_with_stats(
    config: MonitorConfig,
    models: ModelStore,
    live: Option<std::sync::Arc<streamscore_telemetry::LiveStats>>,
    shutdown: impl Into<Shutdown>,
) -> Result<MonitorSummary, MonitorError> {
    let shutdown = shutdown.into();
    let predictions = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    let dead_letters = Codec::<DeadLetter>::with_url(&config.registry_url, &config.dead_letter_topic);
    // Reads the original bytes of requests dead-lettered for their features.
    let requests = Codec::<InferenceRequest>::with_url(&config.registry_url, topics::REQUESTS);
    let alerts_codec = Codec::<DriftAlert>::with_url(&config.registry_url, &config.alerts_topic);
    retry::register(&alerts_codec, &shutdown).await??;
    let audit = std::sync::Arc::new(
        shutdown
            .race(
                || format!("the broker at {} (the audit chain's first entries)", config.kafka.bootstrap),
                AuditWriter::new(
                    &config.kafka,
                    &config.registry_url,
                    &config.audit_topic,
                    "monitor",
                    &config.instance,
                    &shutdown,
                ),
            )
            .await??,
    );
    let sink = Sink::new(&config.kafka, "monitor")?;
    let mut quality = match &config.quality {
        None => None,
        Some(q) => {
            ensure_feedback_topic(&config.kafka, &config.predictions_topic, &q.feedback_topic).await?;
            let mut quality = crate::quality::Quality::open(
                q.clone(),
                &config.registry_url,
                &config.dead_letter_topic,
                std::sync::Arc::clone(&audit),
                &config.instance,
                &shutdown,
            )
            .await?;
            if quality.needs_rebuild()? {
                let rebuild = crate::quality::rebuild::rebuild(
                    &mut quality,
                    &config.kafka,
                    &predictions,
                    &config.predictions_topic,
                    &models,
                    &shutdown,
                );
                match rebuild.await {
                    Err(MonitorError::Stopped(_)) => return Ok(MonitorSummary::default()),
                    other => other?,
                }
            }
            Some(quality)
        }
    };
    // The stages' fetch wait, not a long one: with 500 ms the monitor read ~1,000 records per
    // fetch, holding tansu's one storage task ~35 ms each time, and the pipeline's produce p99
    // went from 19 to 30 ms (main job per-second p99 80–110 ms against 66–71 ms).
    let mut topics = vec![config.predictions_topic.as_str(), config.dead_letter_topic.as_str()];
    if let Some(q) = &config.quality {
        topics.push(q.feedback_topic.as_str());
    }
    let source_config = SourceConfig::new(&config.group, &topics, "monitor");
    let mut source = Source::open(&config.kafka, source_config)?;
    let mut detectors: HashMap<(String, String), Detector> = HashMap::new();
    let attributions = crate::attribution::Sampler::new(config.attribution, models.clone());
    let mut summary = MonitorSummary::default();
    let mut report = tokio::time::interval(config.report_every);
    report.tick().await;
    let mut lag = tokio::time::interval(config.lag_every);
    let mut probe = crate::lag::LagProbe::new(config.kafka.clone(), config.lag_targets.clone());
    // The join's batches are committed at least this often, records or not.
    let mut quality_tick = tokio::time::interval(Duration::from_millis(100));
    let mut refresh = tokio::time::interval(config.quality.as_ref().map_or(Duration::from_secs(3600), |q| q.every));
    let feedback_topic = config.quality.as_ref().map(|q| q.feedback_topic.clone());
    let mut failure = None;
    loop {
        let (message, ack) = tokio::select! {
            biased;
            _ = shutdown.requested() => break,
            e = sink.failed() => { failure = Some(e.into()); break }
            _ = report.tick() => {
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
                continue;
            }
            _ = quality_tick.tick(), if quality.is_some() => {
                if let Some(q) = quality.as_mut() {
                    if let Err(e) = q.tick(&sink).await { failure = Some(e); break }
                }
                continue;
            }
            _ = refresh.tick(), if quality.is_some() => {
                if let Some(q) = quality.as_mut() {
                    if let Err(e) = q.refresh(&sink).await { failure = Some(e); break }
                }
                continue;
            }
            _ = lag.tick() => {
                let quiet = live.is_some();
                probe = tokio::task::spawn_blocking(move || {
                    let lags = probe.measure();
                    if !quiet {
                        for l in lags.iter().filter(|l| l.records > 0) {
                            println!("  lag {} on {}/{}: {} records, {:.1} s", l.group, l.topic, l.partition, l.records, l.seconds);
                        }
                    }
                    probe
                })
                .await
                .map_err(|e| MonitorError::Setup(streamscore_kafka::KafkaError::Unreachable {
                    bootstrap: config.kafka.bootstrap.clone(),
                    waited: Duration::ZERO,
                    last: format!("lag probe panicked: {e}"),
                }))?;
                continue;
            }
            next = source.next() => match next {
                Ok(next) => next,
                Err(e) => { failure = Some(e.into()); break }
            },
        };
        let bytes = message.payload().unwrap_or_default();
        if feedback_topic.as_deref() == Some(message.topic()) {
            if let Some(q) = quality.as_mut() {
                match q.on_feedback(&message, Some(ack), &shutdown).await {
                    Ok(()) => {}
                    Err(MonitorError::Stopped(_)) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                if let Err(e) = q.tick(&sink).await {
                    failure = Some(e);
                    break;
                }
            }
            continue;
        }
        let is_dead_letter = message.topic() == config.dead_letter_topic;
        // A scored outcome for the join, kept apart from what drift takes.
        let mut labelable = None;
        let joining = quality.is_some();
        let seen = async {
            if is_dead_letter {
                let Some(dl) = decode_when_up(&dead_letters, bytes, &config.dead_letter_topic, &shutdown).await? else {
                    return Ok(None);
                };
                summary.dead_letters += 1;
                metrics::counter!("streamscore_monitor_dead_letters_total", "reason" => dl.reason.code()).increment(1);
                let Some(seen) = rejected_inputs(&requests, &models, &dl, &shutdown).await? else { return Ok(None) };
                summary.rejected_inputs += 1;
                Ok(Some(seen))
            } else {
                let Some(outcome) = decode_when_up(&predictions, bytes, &config.predictions_topic, &shutdown).await?
                else {
                    return Ok(None);
                };
                if outcome.status != OutcomeStatus::Scored {
                    return Ok(None);
                }
                if joining {
                    labelable = crate::quality::join::prediction_of(&outcome, &models);
                }
                attributions.offer(&outcome);
                summary.predictions += 1;
                summary.latencies.record(&outcome);
                let Some(version) = outcome.model_version else { return Ok(None) };
                Ok(Some(Seen {
                    model: outcome.model,
                    version,
                    event_us: outcome.request_created_at,
                    features: outcome.features,
                    score: outcome.score,
                }))
            }
        };
        // A registry outage makes the record wait here; a stop request still stops.
        let seen: Result<Option<Seen>, Stopped> = seen.await;
        let Ok(seen) = seen else { break };
        let owed_to_quality = joining && !is_dead_letter;
        if let Some(seen) = seen {
            if let Err(e) = observe(
                &config,
                &models,
                &mut detectors,
                &mut summary,
                live.as_deref(),
                &sink,
                &alerts_codec,
                &audit,
                seen,
                &ack,
            )
            .await
            {
                failure = Some(e);
                break;
            }
        }
        match quality.as_mut() {
            // The outcome's record is finished once the join's batch holding it is committed.
            Some(q) if owed_to_quality => {
                let applied = match &labelable {
                    Some(p) => q.add_prediction(p, ack),
                    None => q.owe(ack),
                };
                if let Err(e) = applied {
                    failure = Some(e);
                    break;
                }
                if let Err(e) = q.tick(&sink).await {
                    failure = Some(e);
                    break;
                }
            }
            _ => ack.done(),
        }
    }
    if let Some(q) = quality.as_mut() {
        if let Err(e) = q.close(&sink).await {
            failure.get_or_insert(e);
        }
    }
    let closed = source.close(Duration::from_secs(5)).await;
    sink.flush(Duration::from_secs(2));
    if let Some(failure) = failure {
        return Err(failure);
    }
    closed?;
    Ok(summary)
}

/// Decodes a record, waiting out registry outages until a stop is requested; a record that
/// can never be decoded is counted and logged (the monitor only reads: the record stays where
/// it is) and yields `None`.
pub(crate) async fn decode_when_up<T: Event>(
    codec: &Codec<T>,
    bytes: &[u8],
    topic: &str,
    shutdown: &Shutdown,
) -> Result<Option<T>, Stopped> {
    let decoded: Result<T, DecodeError> = retry::until_done(
        shutdown,
        || "the schema registry (a record waits for its writer schema)".to_owned(),
        || async {
            match codec.decode(bytes).await {
                Ok(decoded) => Attempt::Done(Ok(decoded.value)),
                Err(e) if e.is_retryable() => Attempt::Retry(e),
                Err(e) => Attempt::Done(Err(e)),
            }
        },
        |e, wait| tracing::warn!(error = %e, ?wait, "schema registry unavailable; the record waits"),
    )
    .await?;
    Ok(match decoded {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::error!(topic, error = %e, "undecodable record; counted and skipped");
            metrics::counter!("streamscore_monitor_undecodable_total", "topic" => topic.to_owned()).increment(1);
            None
        }
    })
}

/// Creates the feedback topic where it is missing, with the prediction topic's partitions
/// (both keyed by tenant), so the monitor can subscribe to it on a stack made before it
/// existed.
async fn ensure_feedback_topic(kafka: &KafkaConfig, predictions: &str, feedback: &str) -> Result<(), MonitorError> {
    let (kafka_, predictions_) = (kafka.clone(), predictions.to_owned());
    let partitions =
        tokio::task::spawn_blocking(move || streamscore_kafka::topics::partition_count(&kafka_, &predictions_))
            .await
            .map_err(|e| MonitorError::Quality(format!("reading the partitions of {predictions}: {e}")))??;
    streamscore_kafka::ensure_topics(kafka, &[streamscore_kafka::TopicSpec::event(feedback, partitions.max(1))])
        .await?;
    Ok(())
}

/// Feeds one observation to its version's detector; alerts go out with the record's ack.
#[allow(clippy::too_many_arguments)]
async fn observe(
    config: &MonitorConfig,
    models: &ModelStore,
    detectors: &mut HashMap<(String, String), Detector>,
    summary: &mut MonitorSummary,
    live: Option<&streamscore_telemetry::LiveStats>,
    sink: &Sink,
    alerts_codec: &Codec<DriftAlert>,
    audit: &AuditWriter,
    seen: Seen,
    ack: &Ack,
) -> Result<(), MonitorError> {
    let key = (seen.model, seen.version);
    if !detectors.contains_key(&key) {
        let Some(model) = models.get(&key.0, &key.1) else { return Ok(()) };
        // Alert counters start at 0, so the first alert is an increase Prometheus can see.
        for severity in ["warn", "alert", "resolved"] {
            metrics::counter!(
                "streamscore_drift_alerts_total",
                "model" => key.0.clone(),
                "version" => key.1.clone(),
                "severity" => severity,
            )
            .increment(0);
        }
        detectors.insert(
            key.clone(),
            Detector::new(Reference::from_metadata(&model.meta), config.detector, &config.instance),
        );
    }
    let Some(detector) = detectors.get_mut(&key) else { return Ok(()) };
    let now = streamscore_contracts::now_micros();
    let closed = detector.status().windows_closed;
    let alerts = detector.observe(seen.event_us, &seen.features, seen.score, now);
    if detector.status().windows_closed != closed {
        export_statistics(&key.0, &key.1, detector.status());
    }
    for alert in alerts {
        publish(sink, alerts_codec, &config.alerts_topic, audit, &alert, ack).await?;
        if let Some(live) = live {
            let line = format!(
                "{:?} {}/{} {} {:?} {:.3}",
                alert.severity, alert.model, alert.model_version, alert.feature, alert.method, alert.statistic
            );
            let mut alerts = live.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            alerts.push(line);
            let excess = alerts.len().saturating_sub(5);
            alerts.drain(..excess);
        }
        summary.alerts.push(alert);
    }
    Ok(())
}

/// The latest statistic of every feature (and the score) and method, as gauges.
fn export_statistics(model: &str, version: &str, status: &crate::drift::detector::Status) {
    for (feature, method, statistic) in &status.latest {
        metrics::gauge!(
            streamscore_telemetry::catalog::DRIFT_STATISTIC,
            "model" => model.to_owned(),
            "version" => version.to_owned(),
            "feature" => feature.clone(),
            "method" => method_label(*method),
        )
        .set(*statistic);
    }
}

/// A method's metric label: the names `--thresholds` takes.
fn method_label(method: streamscore_contracts::DriftMethod) -> &'static str {
    use streamscore_contracts::DriftMethod;
    match method {
        DriftMethod::Psi => "psi",
        DriftMethod::JensenShannon => "js",
        DriftMethod::KolmogorovSmirnov => "ks",
        DriftMethod::Wasserstein => "wasserstein",
        DriftMethod::MissingRatio => "missing",
        DriftMethod::Other => "other",
    }
}

/// What a detector counts: a scored prediction's inputs and score, or the inputs of a request
/// refused for its features.
struct Seen {
    model: String,
    version: String,
    event_us: i64,
    features: streamscore_contracts::Features,
    score: Option<f64>,
}

/// The inputs of a request dead-lettered for missing or non-finite features, decoded from its
/// original bytes, so the drift windows count them in the missing/non-finite ratio (without a
/// score: it was never scored). A request that named no version is counted against the
/// model's default version (tenant pins are the infer stage's, not known here). Anything else
/// dead-lettered is counted by reason only.
async fn rejected_inputs(
    requests: &Codec<InferenceRequest>,
    models: &ModelStore,
    dl: &DeadLetter,
    shutdown: &Shutdown,
) -> Result<Option<Seen>, Stopped> {
    if !matches!(dl.reason, DeadLetterReason::FeatureMissing | DeadLetterReason::NonFinite) {
        return Ok(None);
    }
    if dl.lineage.stage == streamscore_contracts::Stage::Monitor.as_str() {
        return Ok(None); // a label the quality join refused, not a request
    }
    if dl.original_value_length.is_some() {
        return Ok(None); // cut to fit: not the whole request
    }
    let Some(original) = dl.original_value.as_deref() else { return Ok(None) };
    let Some(request) = decode_when_up(requests, original, topics::REQUESTS, shutdown).await? else { return Ok(None) };
    let version = request.model_version.or_else(|| models.default_version(&request.model).map(str::to_owned));
    Ok(version.map(|version| Seen {
        model: request.model,
        version,
        event_us: request.created_at,
        features: request.features,
        score: None,
    }))
}

async fn publish(
    sink: &Sink,
    codec: &Codec<DriftAlert>,
    topic: &str,
    audit: &AuditWriter,
    alert: &DriftAlert,
    ack: &Ack,
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
    sink.send(topic, key.as_bytes(), &bytes, ack).await?;
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
