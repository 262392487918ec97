//! `streamscore audit verify`: reads the audit log and the output topics from the broker and
//! checks every chain and every event against its commitment
//! ([`streamscore_contracts::audit::verify`] says what is and is not detected).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use streamscore_contracts::audit::{
    dead_letter_content, outcome_content, AuditKey, ChainHead, Position, Report, SeenEntry, SeenEvent, Window,
};
use streamscore_contracts::{AuditRecord, Codec, DeadLetter, PredictionOutcome};
use streamscore_kafka::KafkaConfig;

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub audit_topic: String,
    pub predictions_topic: String,
    pub dead_letter_topic: String,
    pub key: AuditKey,
    pub heads: Vec<ChainHead>,
    pub window: Window,
}

/// What was read, and how fast.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub records: usize,
    pub seconds: f64,
    /// Of which reading the topics from the broker (the rest: decoding, hashing, checking).
    pub read_seconds: f64,
}

/// A record's position, key and value.
pub type Keyed = (Position, Option<Vec<u8>>, Vec<u8>);

/// A record as read, with its Kafka timestamp.
#[derive(Debug, Clone)]
pub struct Read {
    pub position: Position,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The broker's append time where the topic has `LogAppendTime`, else the producer's.
    pub timestamp_ms: Option<i64>,
}

/// Every record of `topic` up to its high watermarks as they are now.
pub fn read_topic(kafka: &KafkaConfig, topic: &str) -> Result<Vec<Keyed>> {
    Ok(read_topic_timed(kafka, topic)?.into_iter().map(|r| (r.position, r.key, r.value)).collect())
}

/// How many partitions `topic` has.
pub fn partitions(kafka: &KafkaConfig, topic: &str) -> Result<i32> {
    let consumer: BaseConsumer = kafka.client_config().create().context("creating a consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let count = metadata.topics().iter().filter(|t| t.name() == topic).map(|t| t.partitions().len()).sum::<usize>();
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

/// [`read_topic`], with each record's timestamp.
pub fn read_topic_timed(kafka: &KafkaConfig, topic: &str) -> Result<Vec<Read>> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("streamscore-audit-verify-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .context("creating a consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let partitions: Vec<i32> =
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect::<Vec<_>>();
    if partitions.is_empty() {
        anyhow::bail!("topic {topic} does not exist (or has no partitions)");
    }
    let mut ends = std::collections::HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the watermarks of {topic}/{partition}"))?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    let mut idle_since = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                idle_since = Instant::now();
                let partition = message.partition();
                let offset = message.offset();
                records.push(Read {
                    position: Position { topic: topic.to_owned(), partition, offset },
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().unwrap_or_default().to_vec(),
                    timestamp_ms: message.timestamp().to_millis().filter(|t| *t >= 0),
                });
                if ends.get(&partition).is_some_and(|&high| offset + 1 >= high) {
                    ends.remove(&partition);
                }
            }
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {topic}")),
            None if idle_since.elapsed() > Duration::from_secs(30) => {
                anyhow::bail!("{topic}: no record for 30 s before the end of partitions {:?}", ends.keys())
            }
            None => {}
        }
    }
    Ok(records)
}

/// Reads `N` topics at once (a reader each; the broker serves them in parallel), each to its
/// high watermarks as they are when it starts. A topic that does not exist reads as empty when
/// `missing_is_empty`, else is an error.
pub async fn read_topics<const N: usize>(
    kafka: &KafkaConfig,
    topics: [&str; N],
    missing_is_empty: bool,
) -> Result<[Vec<Keyed>; N]> {
    let readers: Vec<_> = topics
        .iter()
        .map(|topic| {
            let (kafka, topic) = (kafka.clone(), (*topic).to_owned());
            tokio::task::spawn_blocking(move || read_topic(&kafka, &topic))
        })
        .collect();
    let mut read = Vec::with_capacity(N);
    for reader in readers {
        match reader.await.context("a reader panicked")? {
            Err(_) if missing_is_empty => read.push(Vec::new()),
            result => read.push(result?),
        }
    }
    <[_; N]>::try_from(read).map_err(|_| anyhow::anyhow!("{N} topics"))
}

/// Reads and checks; returns the report and what was read.
pub async fn verify(config: &VerifyConfig) -> Result<(Report, Reading)> {
    let started = Instant::now();
    let topics = [config.audit_topic.as_str(), config.predictions_topic.as_str(), config.dead_letter_topic.as_str()];
    let [audit, predictions, dead_letters] = read_topics(&config.kafka, topics, false).await?;
    let read_seconds = started.elapsed().as_secs_f64();

    let audit_codec = Codec::<AuditRecord>::with_url(&config.registry_url, &config.audit_topic);
    let mut entries = Vec::with_capacity(audit.len());
    for (position, _, bytes) in &audit {
        let record = audit_codec.decode(bytes).await.ok().map(|d| d.value);
        entries.push(SeenEntry { position: position.clone(), record });
    }
    let outcomes = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    let letters = Codec::<DeadLetter>::with_url(&config.registry_url, &config.dead_letter_topic);
    let mut events = Vec::with_capacity(predictions.len() + dead_letters.len());
    for (position, _, bytes) in &predictions {
        let event_id = outcomes.decode(bytes).await.ok().map(|d| d.value.lineage.event_id);
        events.push(SeenEvent {
            position: position.clone(),
            hash: config.key.event_hash(bytes),
            event_id,
            content: None,
        });
    }
    for (position, _, bytes) in &dead_letters {
        let event_id = letters.decode(bytes).await.ok().map(|d| d.value.lineage.event_id);
        events.push(SeenEvent {
            position: position.clone(),
            hash: config.key.event_hash(bytes),
            event_id,
            content: None,
        });
    }
    // What the copies of an event written more than once say, less when and how they were
    // written: a crash leftover says what its committed copy says, a forgery does not.
    let mut copies: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for event in &events {
        if let Some(id) = &event.event_id {
            *copies.entry(id.as_str()).or_default() += 1;
        }
    }
    let repeated: Vec<usize> =
        (0..events.len()).filter(|&i| events[i].event_id.as_deref().is_some_and(|id| copies[id] > 1)).collect();
    for i in repeated {
        let content = match predictions.get(i) {
            Some((_, _, bytes)) => outcomes.decode(bytes).await.ok().map(|d| outcome_content(&config.key, &d.value)),
            None => {
                let (_, _, bytes) = &dead_letters[i - predictions.len()];
                letters.decode(bytes).await.ok().map(|d| dead_letter_content(&config.key, &d.value))
            }
        };
        events[i].content = content;
    }
    let report = streamscore_contracts::audit::verify(&config.key, &entries, &events, &config.heads, config.window);
    let reading =
        Reading { records: audit.len() + events.len(), seconds: started.elapsed().as_secs_f64(), read_seconds };
    Ok((report, reading))
}

/// A human summary of `report`.
pub fn describe(report: &Report, reading: Reading) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let rate = reading.records as f64 / reading.seconds.max(1e-9);
    let checking = reading.records as f64 / (reading.seconds - reading.read_seconds).max(1e-9);
    let _ = writeln!(
        out,
        "read {} records in {:.2} s ({rate:.0}/s; the broker's reads {:.2} s, checking {checking:.0}/s): {} chains, {} entries, {} commitments; {} events, {} committed, \
         {} redelivered copies, {} crash leftovers{}",
        reading.records,
        reading.seconds,
        reading.read_seconds,
        report.chains,
        report.entries,
        report.commitments,
        report.events,
        report.committed_events,
        report.duplicates,
        report.crash_leftovers,
        if report.legacy_entries > 0 {
            format!(", {} legacy entries (not checked)", report.legacy_entries)
        } else {
            String::new()
        }
    );
    if !report.keyed {
        let _ = writeln!(
            out,
            "warning: verified without a key: a consistent forgery by someone who can write Kafka would pass"
        );
    }
    if !report.open_chains.is_empty() {
        let _ = writeln!(
            out,
            "note: {} chain(s) still open (no STAGE_STOPPED, successor or head checkpoint): their last entries are not checked for truncation: {}",
            report.open_chains.len(),
            report.open_chains.join(", ")
        );
    }
    if report.ok() {
        let _ = writeln!(out, "ok: every chain is whole and every event matches its commitment");
    } else {
        let _ = writeln!(out, "FAILED: {} problem(s); the first:", report.problems.len());
        for (i, problem) in report.problems.iter().take(20).enumerate() {
            let _ = writeln!(out, "{}{problem}", if i == 0 { "  " } else { "  then: " });
        }
        if report.problems.len() > 20 {
            let _ = writeln!(out, "  ... and {} more (--json lists them all)", report.problems.len() - 20);
        }
    }
    out
}

/// Parses an RFC 3339 time (or µs since the epoch) into µs since the epoch.
pub fn parse_time(text: &str) -> Result<i64> {
    if let Ok(micros) = text.parse::<i64>() {
        return Ok(micros);
    }
    let at = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("{text:?} is neither RFC 3339 (2026-11-26T08:00:00Z) nor µs since the epoch"))?;
    let since = at.duration_since(std::time::UNIX_EPOCH).context("a time before 1970")?;
    Ok(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
}
