//! The local stack as users run it: `streamscore stack up` in a data directory of each test's
//! own (its own tansu broker and registry, stopped at the end), so a test may delete topics
//! without touching the broker the other tests share.
//!
//! - `--partitions N` creates the event topics with N partitions (metadata read from the
//!   broker); existing topics keep theirs, and `stack up` says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

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
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

const EVENT_TOPICS: [&str; 4] =
    ["inference.requests", "inference.validated", "inference.predictions", "inference.dead-letter"];
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
