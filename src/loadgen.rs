//! The load generator behind `streamscore produce`: real Confluent-framed Avro requests at a
//! target rate, from the same seeded generator the models were trained on, with a mix of
//! tenants and model versions, an injectable share of bad records of each kind, and drift.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::FutureRecord;
use streamscore_contracts::{now_micros, Codec, DeadLetterReason, InferenceRequest};
use streamscore_kafka::produce::enqueue;
use streamscore_kafka::KafkaConfig;
use streamscore_synth::{feature_index, Drift, Generator, Rng, FEATURES};

/// A kind of bad record the generator can inject, each with the dead-letter reason ingest
/// must give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BadKind {
    Undecodable,
    UnknownSchema,
    MissingRequestId,
    MalformedRequestId,
    UnknownTenant,
    UnknownModel,
    UnknownVersion,
    FeatureMissing,
    FeatureUnexpected,
    FeatureType,
    FeatureOutOfRange,
    NonFinite,
    TooLarge,
}

impl BadKind {
    pub const ALL: [BadKind; 13] = [
        BadKind::Undecodable,
        BadKind::UnknownSchema,
        BadKind::MissingRequestId,
        BadKind::MalformedRequestId,
        BadKind::UnknownTenant,
        BadKind::UnknownModel,
        BadKind::UnknownVersion,
        BadKind::FeatureMissing,
        BadKind::FeatureUnexpected,
        BadKind::FeatureType,
        BadKind::FeatureOutOfRange,
        BadKind::NonFinite,
        BadKind::TooLarge,
    ];

    /// The reason ingest must dead-letter it with.
    pub fn reason(self) -> DeadLetterReason {
        match self {
            BadKind::Undecodable => DeadLetterReason::Undecodable,
            BadKind::UnknownSchema => DeadLetterReason::UnknownSchema,
            BadKind::MissingRequestId => DeadLetterReason::MissingRequestId,
            BadKind::MalformedRequestId => DeadLetterReason::MalformedRequestId,
            BadKind::UnknownTenant => DeadLetterReason::UnknownTenant,
            BadKind::UnknownModel => DeadLetterReason::UnknownModel,
            BadKind::UnknownVersion => DeadLetterReason::UnknownModelVersion,
            BadKind::FeatureMissing => DeadLetterReason::FeatureMissing,
            BadKind::FeatureUnexpected => DeadLetterReason::FeatureUnexpected,
            BadKind::FeatureType => DeadLetterReason::FeatureType,
            BadKind::FeatureOutOfRange => DeadLetterReason::FeatureOutOfRange,
            BadKind::NonFinite => DeadLetterReason::NonFinite,
            BadKind::TooLarge => DeadLetterReason::TooLarge,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.reason().code().eq_ignore_ascii_case(name) || format!("{k:?}").eq_ignore_ascii_case(name))
    }
}

/// Parses `feature:shift:scale:after_seconds`, e.g. `amount:500:1:30`.
pub fn parse_drift(spec: &str, start_micros: i64) -> Result<Drift> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [feature, shift, scale, after] = parts[..] else {
        bail!("drift {spec:?}: expected feature:shift:scale:after_seconds");
    };
    let feature = feature_index(feature).with_context(|| {
        let names: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
        format!("drift: unknown feature {feature:?}; features are {names:?}")
    })?;
    let after: f64 = after.parse().context("drift: after_seconds is not a number")?;
    Ok(Drift {
        feature,
        shift: shift.parse().context("drift: shift is not a number")?,
        scale: scale.parse().context("drift: scale is not a number")?,
        #[allow(clippy::cast_possible_truncation)]
        from_micros: start_micros + (after * 1e6) as i64,
    })
}

/// What to produce.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub topic: String,
    /// Events per second; `None` = as fast as the broker takes them.
    pub rate: Option<f64>,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Tenants are `tenant-01` ... `tenant-NN`.
    pub tenants: u32,
    /// Zipf exponent of the tenant mix (0 = uniform; 1 = the first tenant dominates).
    pub tenant_skew: f64,
    pub model: String,
    /// Versions to ask for, `None` meaning the default; picked uniformly.
    pub versions: Vec<Option<String>>,
    /// Share of records that are bad, spread evenly over `bad_kinds`.
    pub bad_share: f64,
    pub bad_kinds: Vec<BadKind>,
    pub drift: Option<Drift>,
    pub seed: u64,
    /// Print live progress to stderr.
    pub progress: bool,
    /// Set to stop early.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl LoadConfig {
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            rate: None,
            count: None,
            duration: None,
            tenants: 4,
            tenant_skew: 0.0,
            model: "fraud".to_owned(),
            versions: vec![None],
            bad_share: 0.0,
            bad_kinds: BadKind::ALL.to_vec(),
            drift: None,
            seed: 1,
            progress: false,
            stop: None,
        }
    }
}

/// The generator's own counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    pub sent: u64,
    pub good: u64,
    /// Bad records by the dead-letter reason they must get.
    pub bad: BTreeMap<&'static str, u64>,
    /// Records the broker did not acknowledge.
    pub errors: u64,
    pub by_tenant: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl LoadSummary {
    pub fn bad_total(&self) -> u64 {
        self.bad.values().sum()
    }
}

pub fn tenant_name(i: u32) -> String {
    format!("tenant-{:02}", i + 1)
}

struct Picker {
    cumulative: Vec<f64>,
}

impl Picker {
    fn zipf(n: u32, s: f64) -> Self {
        let weights: Vec<f64> = (1..=n).map(|k| 1.0 / f64::from(k).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        Self {
            cumulative: weights
                .iter()
                .map(|w| {
                    acc += w / total;
                    acc
                })
                .collect(),
        }
    }

    fn pick(&self, rng: &mut Rng) -> u32 {
        let u = rng.uniform();
        u32::try_from(self.cumulative.iter().position(|&c| u < c).unwrap_or(self.cumulative.len() - 1)).unwrap_or(0)
    }
}

/// A record to send: key, value and what it is.
struct Planned {
    tenant: String,
    value: Vec<u8>,
    bad: Option<BadKind>,
}

fn plan(
    codec: &Codec<InferenceRequest>,
    config: &LoadConfig,
    generator: &mut Generator,
    rng: &mut Rng,
    tenants: &Picker,
) -> Result<Planned> {
    let now = now_micros();
    let tenant = tenant_name(tenants.pick(rng));
    let transaction = generator.next(now);
    let bad = (config.bad_share > 0.0 && !config.bad_kinds.is_empty() && rng.uniform() < config.bad_share)
        .then(|| config.bad_kinds[usize::try_from(rng.below(config.bad_kinds.len() as u64)).unwrap_or(0)]);
    let version = config.versions[usize::try_from(rng.below(config.versions.len() as u64)).unwrap_or(0)].clone();
    let mut request = InferenceRequest {
        request_id: uuid::Builder::from_random_bytes(
            rng.next_u64().to_le_bytes().repeat(2).try_into().unwrap_or([0; 16]),
        )
        .into_uuid()
        .to_string(),
        tenant: tenant.clone(),
        model: config.model.clone(),
        model_version: version,
        features: transaction.by_name(),
        created_at: now,
        reply_to: None,
        attributes: Default::default(),
    };
    let mut value = None;
    match bad {
        None => {}
        Some(BadKind::Undecodable) => {
            value = Some(b"\x00\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec())
        }
        Some(BadKind::UnknownSchema) => {
            let mut bytes = codec.encode(&request)?;
            bytes[1..5].copy_from_slice(&0x7fff_fff0_u32.to_be_bytes());
            value = Some(bytes);
        }
        Some(BadKind::MissingRequestId) => request.request_id.clear(),
        Some(BadKind::MalformedRequestId) => request.request_id = "req-not-a-uuid".to_owned(),
        Some(BadKind::UnknownTenant) => request.tenant = "tenant-unknown".to_owned(),
        Some(BadKind::UnknownModel) => request.model = "no-such-model".to_owned(),
        Some(BadKind::UnknownVersion) => request.model_version = Some("999".to_owned()),
        Some(BadKind::FeatureMissing) => {
            request.features.remove("amount");
        }
        Some(BadKind::FeatureUnexpected) => {
            request.features.insert("favourite_colour".to_owned(), 3.0);
        }
        Some(BadKind::FeatureType) => {
            request.features.insert("merchant_category".to_owned(), 2.5);
        }
        Some(BadKind::FeatureOutOfRange) => {
            request.features.insert("ip_risk_score".to_owned(), 7.0);
        }
        Some(BadKind::NonFinite) => {
            request.features.insert("amount".to_owned(), f64::NAN);
        }
        Some(BadKind::TooLarge) => {
            request.attributes.insert("padding".to_owned(), "x".repeat(70 * 1024));
        }
    }
    let value = match value {
        Some(value) => value,
        None => codec.encode(&request)?,
    };
    Ok(Planned { tenant, value, bad })
}

/// Produces until the count or duration is reached; returns the generator's own counts.
pub async fn run(kafka: &KafkaConfig, codec: Arc<Codec<InferenceRequest>>, config: &LoadConfig) -> Result<LoadSummary> {
    if config.count.is_none() && config.duration.is_none() && config.stop.is_none() {
        bail!("give a --count or a --duration");
    }
    if config.versions.is_empty() {
        bail!("give at least one model version (or `default`)");
    }
    if codec.schema_id().is_none() {
        codec.register().await.context("registering the request schema")?;
    }
    // The stages' producer settings (linger, batch sizes; see streamscore_kafka::config), with
    // room for a large backlog; the properties of STREAMSCORE_KAFKA_PROPERTIES apply last.
    let mut producer_config = kafka.stage_producer_config();
    producer_config
        .set("queue.buffering.max.messages", "200000")
        .set("statistics.interval.ms", "0")
        // A client of the pipeline: nothing it writes is committed in the audit log, so its
        // order under retries does not matter (the stages' own producers are idempotent).
        .set("enable.idempotence", "false");
    for (key, value) in &kafka.overrides {
        producer_config.set(key, value);
    }
    let producer: rdkafka::producer::FutureProducer = producer_config.create()?;
    let mut rng = Rng::new(config.seed ^ 0x5EED);
    let mut generator = Generator::new(config.seed).with_drift(config.drift.clone());
    let tenants = Picker::zipf(config.tenants.max(1), config.tenant_skew);
    let mut summary = LoadSummary::default();
    let mut deliveries = FuturesUnordered::new();
    let started = Instant::now();
    let mut last_report = started;
    loop {
        if config.count.is_some_and(|c| summary.sent >= c)
            || config.duration.is_some_and(|d| started.elapsed() >= d)
            || config.stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            break;
        }
        if let Some(rate) = config.rate {
            #[allow(clippy::cast_precision_loss)]
            let due = started + Duration::from_secs_f64(summary.sent as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let planned = plan(&codec, config, &mut generator, &mut rng, &tenants)?;
        let future = enqueue(
            &producer,
            FutureRecord::to(&config.topic).key(planned.tenant.as_bytes()).payload(&planned.value[..]),
        )
        .await?;
        deliveries.push(future);
        summary.sent += 1;
        *summary.by_tenant.entry(planned.tenant).or_default() += 1;
        match planned.bad {
            None => summary.good += 1,
            Some(kind) => *summary.bad.entry(kind.reason().code()).or_default() += 1,
        }
        while deliveries.len() > 50_000 {
            if let Some(result) = deliveries.next().await {
                count_delivery(&mut summary, &result);
            }
        }
        if config.progress && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            #[allow(clippy::cast_precision_loss)]
            let rate = summary.sent as f64 / started.elapsed().as_secs_f64();
            eprint!(
                "\rproduce: sent {:>9}  rate {:>8.0}/s  bad {:>7}  errors {}   ",
                summary.sent,
                rate,
                summary.bad_total(),
                summary.errors
            );
            let _ = std::io::stderr().flush();
        }
    }
    while let Some(result) = deliveries.next().await {
        count_delivery(&mut summary, &result);
    }
    summary.elapsed = started.elapsed();
    if config.progress {
        eprintln!();
    }
    Ok(summary)
}

/// Counts a delivery that failed, and says why the first time.
fn count_delivery(
    summary: &mut LoadSummary,
    result: &Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
) {
    let error = match result {
        Ok(Ok(_)) => return,
        Ok(Err((e, _))) => e.to_string(),
        Err(_) => "the producer dropped the record".to_owned(),
    };
    if summary.errors == 0 {
        tracing::warn!(error, "a record was not acknowledged by the broker (counted; further ones are not logged)");
    }
    summary.errors += 1;
}

/// A human summary of a run.
pub fn describe(summary: &LoadSummary) -> String {
    #[allow(clippy::cast_precision_loss)]
    let rate = summary.sent as f64 / summary.elapsed.as_secs_f64().max(1e-9);
    let mut out = format!(
        "produced {} requests in {:.1} s ({rate:.0}/s): {} good, {} bad, {} not acknowledged\n",
        summary.sent,
        summary.elapsed.as_secs_f64(),
        summary.good,
        summary.bad_total(),
        summary.errors
    );
    for (reason, n) in &summary.bad {
        out.push_str(&format!("  bad {reason:<22} {n}\n"));
    }
    for (tenant, n) in &summary.by_tenant {
        out.push_str(&format!("  {tenant:<26} {n}\n"));
    }
    out
}
