//! Client configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use thiserror::Error;

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
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self { bootstrap: bootstrap.into(), overrides: BTreeMap::new() }
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

    /// A producer that keeps many requests in flight; `acks=all` so an acknowledged record is
    /// durable on the broker.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut config = self.client_config();
        config.set("acks", "all").set("linger.ms", "5").set("message.timeout.ms", "30000");
        config.create().map_err(|source| self.client_error(source))
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
            // mid-rebalance (the default, 5 minutes, stalls a restart that long).
            .set("max.poll.interval.ms", "20000")
            // Return fetched records at once instead of waiting up to 500 ms for more.
            .set("fetch.wait.max.ms", "10");
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
