//! Shared test support: a real broker and a real registry server.
//!
//! The broker is the one named by `STREAMSCORE_BOOTSTRAP` (the README's test command starts
//! the local stack and sets it); without it, one tansu broker is started for this test binary
//! on a free port with sqlite storage in a temporary directory, and dies with the binary.
//! Registries are started per test on port 0 over a topic of their own.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod broken;
pub mod deploy;
pub mod faulty_registry;
pub mod outcomes;
pub mod samples;

use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use streamscore_kafka::KafkaConfig;
use streamscore_registry::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bootstrap address of the test broker.
pub fn bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| match std::env::var("STREAMSCORE_BOOTSTRAP") {
            Ok(bootstrap) => bootstrap,
            Err(_) => spawn_private_broker(),
        })
        .clone()
}

pub fn kafka() -> KafkaConfig {
    KafkaConfig::new(bootstrap())
}

/// Starts tansu from a thread that lives as long as the test binary, with a parent-death
/// signal so the broker stops by itself when the binary exits.
fn spawn_private_broker() -> String {
    let tansu = streamscore::stack::find_tansu()
        .expect("no broker: set STREAMSCORE_BOOTSTRAP or install tansu (scripts/test.sh does both; see README)");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = streamscore::stack::free_port().expect("free port");
        let inner = streamscore::stack::tansu_command(&tansu, dir.path(), port);
        let mut command = std::process::Command::new("setpriv");
        command.arg("--pdeathsig").arg("KILL").arg(inner.get_program()).args(inner.get_args());
        command.current_dir(dir.path());
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let _child = command.spawn().expect("starting tansu");
        tx.send((format!("127.0.0.1:{port}"), dir.path().to_owned())).expect("send address");
        loop {
            std::thread::park();
        }
    });
    let (bootstrap, dir) = rx.recv().expect("broker address");
    KafkaConfig::new(&bootstrap)
        .wait_until_reachable(Duration::from_secs(30))
        .expect("private tansu broker did not start");
    streamscore::stack::index_tansu_storage(&dir).expect("indexing the private broker's storage");
    bootstrap
}

/// `streamscore <subcommand>` as the tests start it: metrics on a free port, warnings only,
/// stdout dropped, stderr shown; callers add their arguments.
pub fn streamscore(subcommand: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"));
    command
        .arg(subcommand)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("STREAMSCORE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    command
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A registry server on 127.0.0.1:0 over its own topic.
pub struct TestRegistry {
    pub url: String,
    pub topic: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestRegistry {
    /// A registry over a fresh topic.
    pub async fn start() -> Self {
        Self::start_on(&unique("_schemas-test")).await
    }

    /// A registry over `topic` (existing state is loaded).
    pub async fn start_on(topic: &str) -> Self {
        Self::start_with(topic, streamscore_registry::Auth::open()).await
    }

    /// A registry over `topic` with users deciding who may write.
    pub async fn start_with(topic: &str, auth: streamscore_registry::Auth) -> Self {
        let store = Store::open(&kafka(), topic).await.expect("registry store opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(streamscore_registry::serve(Arc::new(store), Arc::new(auth), None, listener, async {
            let _ = rx.await;
        }));
        Self { url, topic: topic.to_owned(), shutdown: Some(tx), task: Some(task) }
    }

    /// Registers `schema` under `subject` over the REST API; returns the response body.
    pub async fn register(&self, subject: &str, schema: &str) -> serde_json::Value {
        streamscore_contracts::http::client()
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .json(&serde_json::json!({ "schema": schema }))
            .send()
            .await
            .expect("registry answers")
            .json()
            .await
            .expect("JSON body")
    }

    /// Registers what the bad-bytes corpus assumes on a fresh registry: id 1 = the request
    /// schema (under `topic`), id 2 = a schema that is not a request. Returns the request codec.
    pub async fn register_corpus_schemas(
        &self,
        topic: &str,
    ) -> streamscore_contracts::Codec<streamscore_contracts::InferenceRequest> {
        let codec = streamscore_contracts::Codec::with_url(&self.url, topic);
        assert_eq!(codec.register().await.expect("registers"), 1, "the corpus assumes the request schema has id 1");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-bytes");
        let other = std::fs::read_to_string(dir.join("not-a-request.avsc")).expect("corpus schema");
        let id = self.register("other-value", &other).await;
        assert_eq!(id["id"], 2, "the corpus assumes the non-request schema has id 2");
        codec
    }

    /// Stops the server and waits for it (and its store) to be gone.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("registry task");
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The shipped model store.
pub fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Fresh request, validated and dead-letter topics for one test.
#[derive(Debug, Clone)]
pub struct StageTopics {
    pub requests: String,
    pub validated: String,
    pub predictions: String,
    pub dead_letter: String,
}

impl StageTopics {
    pub async fn create(prefix: &str) -> Self {
        let base = unique(prefix);
        let topics = Self {
            requests: format!("{base}.requests"),
            validated: format!("{base}.validated"),
            predictions: format!("{base}.predictions"),
            dead_letter: format!("{base}.dead-letter"),
        };
        let specs = vec![
            streamscore_kafka::TopicSpec::requests(&topics.requests, 3),
            streamscore_kafka::TopicSpec::event(&topics.validated, 3),
            streamscore_kafka::TopicSpec::event(&topics.predictions, 3),
            streamscore_kafka::TopicSpec::event(&topics.dead_letter, 2),
        ];
        streamscore_kafka::ensure_topics(&kafka(), &specs).await.expect("topics");
        topics
    }
}

/// Reads every record of `topics` from the beginning until `want` arrived or `timeout`
/// passed; returns what arrived.
pub fn read_records(topics: &[&str], want: usize, timeout: Duration) -> Vec<rdkafka::message::OwnedMessage> {
    read_records_until(topics, want, timeout, None)
}

/// Reads every record of `topics` from the beginning until nothing new arrived for `idle`.
pub fn read_all(topics: &[&str], idle: Duration) -> Vec<rdkafka::message::OwnedMessage> {
    read_records_until(topics, usize::MAX, Duration::from_secs(120), Some(idle))
}

fn read_records_until(
    topics: &[&str],
    want: usize,
    timeout: Duration,
    idle: Option<Duration>,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = kafka();
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let partitions = streamscore_kafka::topics::partition_count(&kafka, topic).expect("metadata");
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("assign");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let started = std::time::Instant::now();
    let mut last = started;
    let mut out = Vec::new();
    while out.len() < want
        && started.elapsed() < timeout
        && idle.is_none_or(|idle| out.is_empty() || last.elapsed() < idle)
    {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            out.push(message.expect("record").detach());
            last = std::time::Instant::now();
        }
    }
    out
}

/// Produces `values` (key, value) to `topic`, returning each one's (partition, offset).
pub async fn produce(topic: &str, records: &[(Vec<u8>, Vec<u8>)]) -> Vec<(i32, i64)> {
    let producer = kafka().producer().expect("producer");
    let mut out = Vec::new();
    for (key, value) in records {
        let delivery = producer
            .send(rdkafka::producer::FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        out.push((delivery.partition, delivery.offset));
    }
    out
}

/// Produces `value` to `topic` keyed `key`, with the seal headers (`streamscore-mac`,
/// `streamscore-key-id`) when `seal` gives them as (MAC, key id): a forger's record, or a
/// genuine one made by hand.
pub async fn produce_sealed(topic: &str, key: &str, value: &[u8], seal: Option<(&str, &str)>) {
    use rdkafka::message::{Header, OwnedHeaders};
    let producer = kafka().producer().unwrap();
    let mut record = rdkafka::producer::FutureRecord::to(topic).key(key).payload(value);
    if let Some((mac, key_id)) = seal {
        record = record.headers(
            OwnedHeaders::new()
                .insert(Header { key: streamscore_kafka::sink::MAC_HEADER, value: Some(mac) })
                .insert(Header { key: streamscore_kafka::sink::KEY_ID_HEADER, value: Some(key_id) }),
        );
    }
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// A request for `fraud` carrying the synthetic generator's features for `seed`.
pub fn synth_request(
    seed: u64,
    request_id: String,
    tenant: &str,
    version: Option<&str>,
    created_at: i64,
) -> streamscore_contracts::InferenceRequest {
    streamscore_contracts::InferenceRequest {
        request_id,
        tenant: tenant.to_owned(),
        model: "fraud".to_owned(),
        model_version: version.map(str::to_owned),
        features: streamscore_synth::Generator::new(seed).next(0).by_name(),
        created_at,
        reply_to: None,
        attributes: std::collections::HashMap::new(),
    }
}

/// `request` as ingest hands it on, read from `source`.
pub fn validated_from(
    request: streamscore_contracts::InferenceRequest,
    source: streamscore_contracts::lineage::SourceOffset,
) -> streamscore_contracts::ValidatedRequest {
    use streamscore_contracts::lineage::{Lineage, Stage};
    // Without a checked vector, as an ingest older than version 2 of the schema wrote it:
    // infer checks the features itself.
    streamscore_contracts::ValidatedRequest::new(
        Lineage::derive(
            source,
            Stage::Ingest,
            "validated",
            "test",
            Some(request.request_id.clone()),
            Some(request.tenant.clone()),
        ),
        request,
        1,
    )
}

/// A tansu broker of one test's own, on a fixed port and data directory, that the test can
/// restart; it dies with the test binary.
pub struct PrivateBroker {
    pub bootstrap: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateBroker {
    /// Where the broker keeps its storage.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn start() -> Self {
        let port = streamscore::stack::free_port().expect("free port");
        let mut broker = Self {
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let tansu = streamscore::stack::find_tansu().expect("tansu is installed (scripts/test.sh installs it)");
        let inner = streamscore::stack::tansu_command(&tansu, self.dir.path(), self.port);
        let mut command = std::process::Command::new("setpriv");
        command.arg("--pdeathsig").arg("KILL").arg(inner.get_program()).args(inner.get_args());
        command.current_dir(self.dir.path());
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        self.child = Some(command.spawn().expect("starting tansu"));
        KafkaConfig::new(&self.bootstrap).wait_until_reachable(Duration::from_secs(30)).expect("private tansu started");
        streamscore::stack::index_tansu_storage(self.dir.path()).expect("indexing the private broker's storage");
    }

    /// SIGTERM, wait for it to exit, start it again on the same port and storage.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
            child.wait().expect("tansu exits");
        }
        self.spawn();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The fused pipeline on `requests` → `predictions` (bad records to `dead_letter`), any tenant,
/// the shipped models, as consumer group `group`; callers adjust the rest.
pub fn pipeline_config(
    kafka: &KafkaConfig,
    registry_url: &str,
    (requests, dead_letter, predictions): (&str, &str, &str),
    group: &str,
    instance: &str,
) -> streamscore::pipeline::PipelineConfig {
    let mut ingest = streamscore_ingest::IngestConfig::new(kafka.clone(), registry_url);
    ingest.group_id = group.to_owned();
    ingest.input_topic = requests.to_owned();
    ingest.dead_letter_topic = dead_letter.to_owned();
    ingest.predictions_topic = predictions.to_owned();
    let mut infer = streamscore_infer::InferConfig::new(kafka.clone(), registry_url, instance);
    infer.predictions_topic = predictions.to_owned();
    streamscore::pipeline::PipelineConfig {
        ingest,
        infer,
        models: models_dir(),
        tenants: streamscore_ingest::Tenants::Any,
        max_record_bytes: streamscore_ingest::decide::DEFAULT_MAX_RECORD_BYTES,
        channel_capacity: 1000,
    }
}

impl StageTopics {
    /// The pipeline's three topics, for [`pipeline_config`].
    pub fn pipeline(&self) -> (&str, &str, &str) {
        (&self.requests, &self.dead_letter, &self.predictions)
    }
}

/// Runs the fused pipeline of `config` (tract backend) until `count` answers (predictions
/// and dead letters of `topics`) are on the topics, stops it cleanly and returns the answers.
pub async fn answer_all(
    config: streamscore::pipeline::PipelineConfig,
    topics: &StageTopics,
    count: usize,
    timeout: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    let (stop, stopped) = oneshot::channel::<()>();
    let pipeline = tokio::spawn(streamscore::pipeline::run(
        config,
        Arc::new(streamscore_infer::TractBackend),
        Arc::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let answers =
        tokio::task::block_in_place(|| read_records(&[&topics.predictions, &topics.dead_letter], count, timeout));
    stop.send(()).expect("the pipeline is running");
    pipeline.await.expect("the pipeline task").expect("the pipeline ran");
    answers
}
