//! The local stack as users run it: `streamscore stack up` in a data directory of each test's
//! own (its own tansu broker and registry, stopped at the end), so a test may delete topics
//! without touching the broker the other tests share.
//!
//! - `--partitions N` creates the event topics with N partitions (metadata read from the
//!   broker); existing topics keep theirs, and `stack up` says so;
//! - a topic deleted and made again under the running stack (issue 30) leaves the registry
//!   running and answering, and saying so if its own topic went with it (tansu 0.6 deletes
//!   every topic on one delete);
//! - a stopped registry: `stack status` gives its exit reason from its log, `produce` an error
//!   naming the registry (without its password) and that it did not answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use streamscore_kafka::topics::partition_count;
use streamscore_kafka::KafkaConfig;

mod support;

/// A stack under a temporary directory, brought down when dropped.
struct Stack {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn streamscore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_streamscore")).args(args).output().expect("running streamscore")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

impl Stack {
    fn up(extra: &[&str]) -> (Self, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut stack = Self { dir, env: Vec::new() };
        let out = stack.run(&[&["up", "--broker-port", "0", "--registry-port", "0"], extra].concat());
        assert!(out.status.success(), "stack up: {}", text(&out));
        let env = std::fs::read_to_string(stack.path().join("stack.env")).expect("stack.env");
        stack.env = env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        (stack, text(&out))
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        let dir = self.path().display().to_string();
        streamscore(&[&["stack"], args, &["--data-dir", &dir]].concat())
    }

    fn var(&self, key: &str) -> &str {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("{key} in stack.env"))
    }

    fn kafka(&self) -> KafkaConfig {
        KafkaConfig::new(self.var("STREAMSCORE_BOOTSTRAP"))
    }

    /// The registry's URL without credentials (reads need none).
    fn registry(&self) -> String {
        streamscore::stack::redact(self.var("STREAMSCORE_REGISTRY_URL")).replace("***@", "")
    }

    /// `streamscore <args>` against this stack.
    fn command(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .args(args)
            .env("STREAMSCORE_BOOTSTRAP", self.var("STREAMSCORE_BOOTSTRAP"))
            .env("STREAMSCORE_REGISTRY_URL", self.var("STREAMSCORE_REGISTRY_URL"))
            .output()
            .expect("running streamscore")
    }

    fn registry_pid(&self) -> u32 {
        self.var("STREAMSCORE_REGISTRY_PID").parse().expect("a pid")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

const EVENT_TOPICS: [&str; 5] = [
    "inference.requests",
    "inference.validated",
    "inference.predictions",
    "inference.dead-letter",
    "inference.feedback",
];
const SINGLE_TOPICS: [&str; 3] = ["audit.log", "monitor.alerts", "_schemas"];

#[test]
fn stack_up_with_partitions_creates_the_event_topics_with_them() {
    let (stack, said) = Stack::up(&["--partitions", "3"]);
    let kafka = stack.kafka();
    for topic in EVENT_TOPICS {
        assert_eq!(partition_count(&kafka, topic).unwrap(), 3, "{topic}; stack up said:\n{said}");
    }
    for topic in SINGLE_TOPICS {
        assert_eq!(partition_count(&kafka, topic).unwrap(), 1, "{topic} keeps one partition");
    }
    // Again with another count: the topics keep theirs, and stack up says so.
    let again = stack.run(&["up", "--broker-port", "0", "--registry-port", "0", "--partitions", "2"]);
    let said = text(&again);
    assert!(again.status.success(), "{said}");
    for topic in EVENT_TOPICS {
        assert_eq!(partition_count(&kafka, topic).unwrap(), 3, "{topic} kept its partitions");
        let line = said
            .lines()
            .find(|l| l.starts_with("topic") && l.contains(&format!(" {topic} (")))
            .unwrap_or_else(|| panic!("a line for {topic}:\n{said}"));
        assert!(line.contains("(3 partitions); asked for 2"), "says the count differs: {line}");
    }
}

/// Deletes `topic` and makes it again with `partitions`, as an operator would with Kafka's
/// admin API.
async fn recreate(kafka: &KafkaConfig, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let admin = kafka.admin().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(&[topic], &options).await.unwrap() {
        result.unwrap_or_else(|(t, e)| panic!("deleting {t}: {e}"));
    }
    let started = Instant::now();
    loop {
        let created = admin
            .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &options)
            .await
            .unwrap();
        match created.into_iter().next().unwrap() {
            Ok(_) => break,
            // The deletion may still be under way.
            Err(e) if started.elapsed() < Duration::from_secs(10) => eprintln!("creating {topic} again: {e:?}"),
            Err(e) => panic!("creating {topic} again: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_survives_a_topic_recreated_under_it() {
    let (stack, _) = Stack::up(&[]);
    let kafka = stack.kafka();
    let subjects_before: serde_json::Value =
        streamscore_contracts::http::get_json(&format!("{}/subjects", stack.registry())).await.unwrap();
    assert_eq!(
        subjects_before.as_array().map(Vec::len),
        Some(streamscore_contracts::topics::EVENT_TOPICS.len()),
        "stack up registered the contracts"
    );

    recreate(&kafka, "inference.requests", 3).await;

    // For 15 s (three of the registry's topic checks): the registry runs and answers every time.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let status = stack.run(&["status"]);
        assert!(status.status.success(), "stack status after the topic was made again:\n{}", text(&status));
        let answer = streamscore_contracts::http::client()
            .get(format!("{}/subjects", stack.registry()))
            .send()
            .await
            .expect("the registry answers");
        assert!(answer.status().is_success());
        assert_eq!(answer.json::<serde_json::Value>().await.unwrap(), subjects_before, "same subjects");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(partition_count(&kafka, "inference.requests").unwrap(), 3);

    // The load generator registers the request schema (known: no write) and produces.
    let produced = stack.command(&["produce", "--count", "5"]);
    assert!(produced.status.success(), "produce after the topic was made again:\n{}", text(&produced));

    // tansu 0.6 deletes every topic when asked to delete one: the registry's own went too. It
    // says so, serves what it holds, and refuses writes saying why.
    if partition_count(&kafka, "_schemas").unwrap() == 0 {
        let log = stack.log("registry.log");
        assert!(log.contains("the registry's topic _schemas is gone from the broker"), "registry.log:\n{log}");
        let url = stack.var("STREAMSCORE_REGISTRY_URL");
        let refused = streamscore_contracts::http::client()
            .post(format!("{url}/subjects/new-subject-value/versions"))
            .json(&serde_json::json!({"schema": "{\"type\": \"string\"}"}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 500);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error_code"], 50001, "{body}");
        assert!(body["message"].as_str().unwrap().contains("_schemas is gone"), "says why: {body}");
    }
}

#[test]
fn a_stopped_registry_is_named_by_status_and_by_produce() {
    let (stack, _) = Stack::up(&[]);
    let pid = stack.registry_pid().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let started = Instant::now();
    let said = loop {
        let status = stack.run(&["status"]);
        if !status.status.success() {
            assert_eq!(status.status.code(), Some(3), "not everything runs: exit 3");
            break text(&status);
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the registry is still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        said.contains("registry  not running: streamscore registry exiting: stopped by SIGTERM"),
        "status gives the exit reason from registry.log:\n{said}"
    );

    let produced = stack.command(&["produce", "--count", "1"]);
    let error = text(&produced);
    assert!(!produced.status.success());
    let url = stack.var("STREAMSCORE_REGISTRY_URL");
    let secret = url.split('@').next().and_then(|userinfo| userinfo.rsplit(':').next()).unwrap();
    let named = streamscore::stack::redact(url);
    assert!(error.contains(&format!("the schema registry at {named} did not answer")), "names the registry:\n{error}");
    assert!(error.contains("Connection refused"), "and why:\n{error}");
    assert!(!error.contains(secret), "the password shows:\n{error}");

    // Killed without a chance to say why: status says that it said nothing.
    let broker_pid = stack.var("STREAMSCORE_BROKER_PID").to_owned();
    Command::new("kill").args(["-KILL", &broker_pid]).status().unwrap();
    let started = Instant::now();
    loop {
        let said = text(&stack.run(&["status"]));
        if said.contains("tansu     not running") {
            assert!(said.contains("no exit reason in"), "{said}");
            assert!(said.contains("killed by a signal, or crashed"), "{said}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "tansu still running after SIGKILL:\n{said}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
