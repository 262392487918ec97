//! The main job at this stage: register the contracts, produce a few Avro requests on the
//! Confluent wire format, read them back through ingest's decision, and print them with their
//! schema ids. One malformed record shows a typed dead-letter decision.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use streamscore_contracts::lineage::default_instance;
use streamscore_contracts::{now_micros, schemas, topics, Codec, Features, InferenceRequest};
use streamscore_ingest::{Decision, RawRecord, RequestDecider};
use streamscore_kafka::KafkaConfig;

/// Registers every event topic's schema under `<topic>-value`; returns subject and id.
pub async fn register_contracts(registry_url: &str) -> Result<Vec<(String, u32)>> {
    async fn one<T: Event>(url: &str, topic: &str) -> Result<(String, u32)> {
        let codec = Codec::<T>::with_url(url, topic);
        let id = codec.register().await.with_context(|| format!("registering {} for {topic}", T::SCHEMA.file))?;
        Ok((codec.subject().to_owned(), id))
    }
    use streamscore_contracts::*;
    debug_assert_eq!(topics::EVENT_TOPICS.len(), schemas::ALL.len());
    Ok(vec![
        one::<InferenceRequest>(registry_url, topics::REQUESTS).await?,
        one::<ValidatedRequest>(registry_url, topics::VALIDATED).await?,
        one::<PredictionOutcome>(registry_url, topics::PREDICTIONS).await?,
        one::<DeadLetter>(registry_url, topics::DEAD_LETTER).await?,
        one::<AuditRecord>(registry_url, topics::AUDIT).await?,
        one::<DriftAlert>(registry_url, topics::ALERTS).await?,
        one::<Feedback>(registry_url, topics::FEEDBACK).await?,
        one::<Rollout>(registry_url, topics::ROLLOUTS).await?,
        one::<IdempotentAnswer>(registry_url, topics::IDEMPOTENCY).await?,
    ])
}

/// A request with plausible transaction features.
pub fn sample_request(i: u64, tenant: &str) -> InferenceRequest {
    let x = i as f64;
    InferenceRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        tenant: tenant.to_owned(),
        model: "fraud".to_owned(),
        model_version: (i % 3 == 0).then(|| "2".to_owned()),
        features: Features::from_iter([
            ("amount".to_owned(), 12.5 + 37.0 * (x % 7.0)),
            ("merchant_category".to_owned(), (i % 12) as f64),
            ("hour_of_day".to_owned(), (i % 24) as f64),
            ("distance_km".to_owned(), 0.4 * x),
        ]),
        created_at: now_micros(),
        reply_to: None,
        attributes: HashMap::from([("source".to_owned(), "demo".to_owned())]),
    }
}

/// Produces `count` requests (and one malformed record), reads them back and prints them.
pub async fn run(bootstrap: &str, registry_url: &str, count: u64) -> Result<()> {
    let kafka = KafkaConfig::new(bootstrap);
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(registry_url, topics::REQUESTS));
    let schema_id = codec.register().await.context("registering the request schema")?;
    println!("{} registered under {} with id {schema_id}", schemas::INFERENCE_REQUEST.full_name, codec.subject());

    let producer = kafka.producer()?;
    let mut sent = Vec::new();
    let tenants = ["acme", "globex", "initech"];
    for i in 0..count {
        let tenant = tenants[(i as usize) % tenants.len()];
        let request = sample_request(i, tenant);
        let bytes = codec.encode(&request)?;
        let delivery = producer
            .send(FutureRecord::to(topics::REQUESTS).key(tenant).payload(&bytes), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        println!(
            "produced  {}  tenant {tenant:<8} {} bytes, schema id {schema_id} -> partition {} offset {}",
            request.request_id,
            bytes.len(),
            delivery.partition,
            delivery.offset
        );
        sent.push((delivery.partition, delivery.offset));
    }
    let garbage: &[u8] = b"\x00\x00\x00\x7f\xffnot avro";
    let delivery = producer
        .send(FutureRecord::to(topics::REQUESTS).key("acme").payload(garbage), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)?;
    println!(
        "produced  a malformed record (unknown schema id)      -> partition {} offset {}",
        delivery.partition, delivery.offset
    );
    sent.push((delivery.partition, delivery.offset));

    // Read exactly those records back, through ingest's decision.
    let consumer: BaseConsumer =
        kafka.client_config().set("group.id", "streamscore-demo").set("enable.auto.commit", "false").create()?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in &sent {
        if assignment.find_partition(topics::REQUESTS, *partition).is_none() {
            let first = sent.iter().filter(|(p, _)| p == partition).map(|(_, o)| *o).min().unwrap_or(*offset);
            assignment.add_partition_offset(topics::REQUESTS, *partition, Offset::Offset(first))?;
        }
    }
    consumer.assign(&assignment)?;
    let decider = RequestDecider::new(Arc::clone(&codec), default_instance());
    let mut pending: std::collections::HashSet<(i32, i64)> = sent.iter().copied().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() {
        if std::time::Instant::now() > deadline {
            bail!("{} produced records were not read back within 30 s", pending.len());
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        if !pending.remove(&(message.partition(), message.offset())) {
            continue;
        }
        // The demo's topic: ingest's partition check is the pipeline's (0: not checked here).
        let record = RawRecord::from_message(&message, 0);
        match decider.decide(record).await {
            Decision::Valid(v) => println!(
                "read back {}  tenant {:<8} schema id {}  model {} version {:<7}  {} features  event {}",
                v.request.request_id,
                v.request.tenant,
                v.writer_schema_id,
                v.request.model,
                v.request.model_version.as_deref().unwrap_or("default"),
                v.request.features.len(),
                v.lineage.event_id
            ),
            Decision::DeadLetter(d, _) => println!(
                "read back partition {} offset {}: dead letter {} ({})",
                record.partition,
                record.offset,
                d.reason.code(),
                d.detail
            ),
            Decision::Retry(e) => bail!("registry unavailable while decoding: {e}"),
        }
    }
    println!("{count} requests and 1 malformed record produced and read back");
    Ok(())
}
