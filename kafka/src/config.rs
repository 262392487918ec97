//! Client configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use thiserror::Error;

// Client settings that shape requests to the broker. tansu 0.6 (the local broker) serves every
// storage operation of every client through one task, so its CPU is the pipeline's first
// limit and the queue in front of that task is where latency tails come from: every setting
// here was chosen by measurement on this 2-core machine, with the broker's CPU beside the
// pipeline's (`cargo bench --bench pipeline_load -- --bench ...` and the main job,
// `streamscore run`), and is overridable through `STREAMSCORE_KAFKA_PROPERTIES`.

/// How long a stage's consumer lets the broker hold a fetch that has nothing new.
///
/// tansu answers every fetch only after this wait, records or not (it queries first, then
/// sleeps the whole wait, or half of it above 250 ms), so a record waits between one and two
/// waits per hop, and an always-fetching consumer costs the broker one fetch per wait (about
/// 2 ms of its CPU per fetch, plus 1 ms per partition named). Measured, paced at 2,000 req/s
/// with quotas and a shadow (1 partition): 10 ms gave p99 (prediction written − request
/// created) 42–44 ms at 237–284 broker CPU-µs per event and a worse p99 in the main job (133
/// against 103 ms, the broker's queue longer); 20 ms gave 60 ms at 190–206 µs. At idle the
/// wait costs nothing: see [`IDLE_AFTER_MS`].
pub const FETCH_WAIT_MAX_MS: &str = "20";

/// A stage's consumer pauses its partitions after this long without a record ...
///
/// At idle a consumer would otherwise fetch every [`FETCH_WAIT_MAX_MS`]: measured with the
/// pipeline (quotas, shadow) and the monitor idle on 6 partitions, the broker spent 37% of a
/// core at a 50 ms wait, 17% at 100 ms, 6.7% at 500 ms. Paused, and looking at the high
/// watermarks every [`IDLE_PROBE_EVERY_MS`] (one ListOffsets request), it spends 2.1% (1
/// partition) to 3.2% (6 partitions), registry included; the first record after a rest waits
/// up to one probe interval more (p99 291 ms at 0.5 req/s).
pub const IDLE_AFTER_MS: u64 = 1000;
/// ... and then looks at the high watermarks this often, resuming at the first new record.
pub const IDLE_PROBE_EVERY_MS: u64 = 250;

/// How long the producer lets a batch fill before sending it.
///
/// One produce request per partition per linger; tansu pays a fixed cost per request and
/// holds its one storage task for it. Main job, 2,000 req/s with quotas, a shadow and the
/// monitor, 300 s: 5 ms gave p99 102 ms after the first 10 s (broker 55–86% of a core); 10 ms
/// gave 83 ms (broker 55%), p50 +6 ms. 20 ms (60 s runs): p99 100 ms, the linger itself now
/// the tail.
pub const LINGER_MS: &str = "10";
/// Most records in one produce request per partition.
pub const BATCH_NUM_MESSAGES: &str = "10000";
/// Largest record the stage producers send (librdkafka's default; Apache Kafka's broker
/// default is about the same).
pub const MESSAGE_MAX_BYTES: usize = 1_000_000;
/// How long a record may wait for its acknowledgement (retries included) before the stage
/// gives up and stops; the input is redelivered after a restart. Apache Kafka's Java default.
pub const MESSAGE_TIMEOUT_MS: &str = "120000";

/// Where keyed records go: Kafka's default partitioner (murmur2 of the key, as the Java client
/// and Kafka Streams place them; librdkafka's own default is CRC32). Ingest refuses a request
/// that is not on its tenant's murmur2 partition (`WRONG_PARTITION`), so every producer of
/// requests must agree on it.
pub const PARTITIONER: &str = "murmur2_random";
/// How often librdkafka reports its statistics: consumer lag and requests sent, without a
/// request of its own.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// Environment variable with librdkafka properties for every client: `key=value;key=value`.
pub const PROPERTIES_ENV: &str = "STREAMSCORE_KAFKA_PROPERTIES";

/// Parses `key=value;key=value` (blank entries ignored).
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    text.split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// Environment variable naming a properties file (`key=value` per line, `#` or `!` comments)
/// of librdkafka properties for every client, e.g. a cluster's SASL and TLS settings; the
/// values may hold any character. [`PROPERTIES_ENV`] is applied after it.
pub const CONFIG_FILE_ENV: &str = "STREAMSCORE_KAFKA_CONFIG_FILE";

/// Parses a properties file: `key=value` (or `key: value`) per line, blank lines and `#`/`!`
/// comments ignored; says which line is wrong.
pub fn parse_properties_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut properties = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let split = line.find(['=', ':']).map(|at| (&line[..at], &line[at + 1..]));
        match split {
            Some((key, value)) if !key.trim().is_empty() => {
                properties.insert(key.trim().to_owned(), value.trim().to_owned());
            }
            _ => return Err(format!("line {}: expected key=value, got {line:?}", n + 1)),
        }
    }
    Ok(properties)
}

/// The properties every client gets: the file of [`CONFIG_FILE_ENV`], then [`PROPERTIES_ENV`].
/// A file that cannot be read or parsed is an error (the CLI checks it at start).
pub fn client_properties_from_env() -> Result<BTreeMap<String, String>, String> {
    let mut overrides = BTreeMap::new();
    if let Ok(path) = std::env::var(CONFIG_FILE_ENV) {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{CONFIG_FILE_ENV}={path}: {e}"))?;
        overrides.extend(parse_properties_file(&text).map_err(|e| format!("{path}: {e}"))?);
    }
    if let Ok(text) = std::env::var(PROPERTIES_ENV) {
        overrides.extend(parse_properties(&text));
    }
    Ok(overrides)
}

/// Errors of the Kafka plumbing.
#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("cannot create Kafka client for {bootstrap}: {source}")]
    Client { bootstrap: String, source: rdkafka::error::KafkaError },
    #[error("broker at {bootstrap} did not answer within {waited:?}: {last}; is it running? (`streamscore stack up` starts the local one)")]
    Unreachable { bootstrap: String, waited: Duration, last: String },
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("reading metadata of {topic}: {source}")]
    Metadata { topic: String, source: rdkafka::error::KafkaError },
}

/// Where the brokers are and any librdkafka property overrides.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Extra librdkafka properties applied to every client (e.g. security settings).
    pub overrides: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Clients of `bootstrap`, with the librdkafka properties of the file named by
    /// [`CONFIG_FILE_ENV`] and of [`PROPERTIES_ENV`] (`key=value;key=value`, e.g. security
    /// settings or a fetch wait to measure) applied to every client.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        let overrides = client_properties_from_env().unwrap_or_else(|e| {
            // The CLI refuses a bad file before any client exists; a library user hears it here.
            tracing::error!(error = %e, "Kafka client properties not applied");
            BTreeMap::new()
        });
        Self { bootstrap: bootstrap.into(), overrides }
    }

    /// The base client configuration: bootstrap servers, then the overrides.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }

    /// A producer for control-plane writes (audit entries, checkpoints) that waits for each:
    /// `acks=all` so an acknowledged record is durable on the broker.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut config = self.client_config();
        config
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
            .set("partitioner", PARTITIONER);
        config.create().map_err(|source| self.client_error(source))
    }

    /// The configuration of a stage's output producer (see [`Sink`](crate::Sink)).
    pub fn stage_producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("acks", "all")
            .set("linger.ms", LINGER_MS)
            .set("batch.num.messages", BATCH_NUM_MESSAGES)
            .set("message.max.bytes", MESSAGE_MAX_BYTES.to_string())
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
            .set("partitioner", PARTITIONER)
            // `audit verify` checks the order of a commitment's events on their partition:
            // a retried request must never land after a later one. librdkafka keeps that
            // order under retries only with idempotence (`max.in.flight...=1` without it still
            // reordered in kafka/tests/ordering.rs).
            .set("enable.idempotence", "true")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        // Overrides win over the defaults above.
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }

    /// The configuration of a stage's group consumer, for at-least-once: the stage stores each
    /// offset once its outputs are acknowledged (`enable.auto.offset.store=false`) and stored
    /// offsets are committed every second.
    pub fn stage_consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // A stage that dies is noticed in seconds, so its partitions move on quickly.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            // Also the rebalance timeout: a group waits at most this long for a member that died
            // mid-rebalance (the default, 5 minutes, stalls a restart that long). The source polls
            // the consumer all the time (pausing partitions when the stage is behind), so a slow
            // stage never exceeds it.
            .set("max.poll.interval.ms", "20000")
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
            .set("fetch.min.bytes", "1")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        self.client_config().create().map_err(|source| self.client_error(source))
    }

    /// Waits until a broker answers a metadata request.
    pub fn wait_until_reachable(&self, timeout: Duration) -> Result<(), KafkaError> {
        let consumer: BaseConsumer = self.client_config().create().map_err(|source| self.client_error(source))?;
        let started = std::time::Instant::now();
        loop {
            let attempt = Duration::from_millis(500).min(timeout.saturating_sub(started.elapsed()));
            match consumer.fetch_metadata(None, attempt.max(Duration::from_millis(100))) {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() >= timeout => {
                    return Err(KafkaError::Unreachable {
                        bootstrap: self.bootstrap.clone(),
                        waited: started.elapsed(),
                        last: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn client_error(&self, source: rdkafka::error::KafkaError) -> KafkaError {
        KafkaError::Client { bootstrap: self.bootstrap.clone(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_properties_file_reads_as_java_properties_do() {
        let file = "# a cluster\nsecurity.protocol=SASL_SSL\n! also a comment\n\nsasl.password = p;w=d\nsasl.mechanism: PLAIN\n";
        let properties = parse_properties_file(file).expect("parses");
        assert_eq!(properties["security.protocol"], "SASL_SSL");
        assert_eq!(properties["sasl.password"], "p;w=d", "values keep ; and =");
        assert_eq!(properties["sasl.mechanism"], "PLAIN");
        assert!(parse_properties_file("ok=1\nno separator\n").expect_err("line 2").contains("line 2"));
        assert!(parse_properties_file("=value").is_err(), "an empty key");
    }
}
