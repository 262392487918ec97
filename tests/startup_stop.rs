//! A stop request during start-up is honoured (issue 31): every long-running command started
//! while the schema registry is down, whether it refuses connections (a stopped registry) or
//! accepts them and never answers, stops on SIGTERM within 10 s, exits 143 (128 + SIGTERM) and
//! says what it was waiting for, naming the registry without its password. The bridge serves
//! while the registry is down (calls get 503), so SIGTERM is its ordinary stop: exit 0, the
//! reason logged. `produce` makes one registration attempt: a registry that refuses is an
//! error naming it (exit 1), one that hangs is a wait that SIGTERM ends (143).
//!
//! The commands run as real processes against the real broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::faulty_registry::{Fault, FaultyRegistry};

/// The password in the registry URLs the commands get: it must never show in their output.
const PASSWORD: &str = "s3cret-pw";

/// A `streamscore` process with its stderr collected line by line.
struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn spawn(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .args(args)
            .env("STREAMSCORE_LOG", "info,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting streamscore");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Self { child, stderr }
    }

    fn output(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a line of stderr contains `text` (panics after `timeout`, showing stderr).
    fn wait_for(&self, text: &str, timeout: Duration) {
        let started = Instant::now();
        while !self.stderr.lock().unwrap().iter().any(|l| l.contains(text)) {
            assert!(started.elapsed() < timeout, "no {text:?} within {timeout:?}; stderr:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; returns how long the process took to exit and its exit code (panics after 20 s).
    fn terminate(&mut self) -> (Duration, i32) {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let code = status.code().unwrap_or_else(|| panic!("killed by a signal ({status}):\n{}", self.output()));
                // The collector has read everything once the pipe closes.
                std::thread::sleep(Duration::from_millis(100));
                return (started.elapsed(), code);
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "still running 20 s after SIGTERM; stderr:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry that is down: nothing listens on its port. Returns its URL with credentials and
/// how the commands must name it.
fn stopped_registry() -> (String, String) {
    let port = streamscore::stack::free_port().unwrap();
    (format!("http://streamscore:{PASSWORD}@127.0.0.1:{port}"), format!("http://***@127.0.0.1:{port}"))
}

/// A registry that accepts connections and never answers, reads and writes alike.
async fn hanging_registry() -> FaultyRegistry {
    let proxy = FaultyRegistry::start("http://127.0.0.1:9").await;
    proxy.set(Fault::Slow(Duration::from_secs(600)));
    proxy.set_writes(Fault::Slow(Duration::from_secs(600)));
    proxy
}

/// The URL a command gets for `proxy`, with credentials, and how it must name it.
fn with_password(proxy: &FaultyRegistry) -> (String, String) {
    let host = proxy.url.trim_start_matches("http://");
    (format!("http://streamscore:{PASSWORD}@{host}"), format!("http://***@{host}"))
}

/// The arguments of `command` on topics and a group of its own, against `registry`.
fn args(command: &str, registry: &str) -> Vec<String> {
    let base = support::unique(&format!("startup-{command}"));
    let models = support::models_dir().display().to_string();
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tenants.toml").display().to_string();
    let topic = |name: &str| format!("{base}.{name}");
    let mut args: Vec<String> =
        vec![command.into(), "--bootstrap".into(), support::bootstrap(), "--registry-url".into(), registry.into()];
    let more: Vec<String> = match command {
        "pipeline" => vec![
            "--models".into(),
            models,
            "--policy".into(),
            policy,
            "--metrics-listen".into(),
            "off".into(),
            "--input-topic".into(),
            topic("requests"),
            "--dead-letter-topic".into(),
            topic("dead-letter"),
            "--predictions-topic".into(),
            topic("predictions"),
            "--audit-topic".into(),
            topic("audit"),
            "--quota-checkpoints-topic".into(),
            topic("quota"),
            "--group".into(),
            base.clone(),
        ],
        "ingest" => vec![
            "--models".into(),
            models,
            "--tenants".into(),
            "*".into(),
            "--metrics-listen".into(),
            "off".into(),
            "--input-topic".into(),
            topic("requests"),
            "--validated-topic".into(),
            topic("validated"),
            "--dead-letter-topic".into(),
            topic("dead-letter"),
            "--group".into(),
            base.clone(),
        ],
        "infer" => vec![
            "--models".into(),
            models,
            "--metrics-listen".into(),
            "off".into(),
            "--validated-topic".into(),
            topic("validated"),
            "--predictions-topic".into(),
            topic("predictions"),
            "--dead-letter-topic".into(),
            topic("dead-letter"),
            "--audit-topic".into(),
            topic("audit"),
            "--group".into(),
            base.clone(),
        ],
        "monitor" => vec![
            "--models".into(),
            models,
            "--metrics-listen".into(),
            "off".into(),
            "--predictions-topic".into(),
            topic("predictions"),
            "--dead-letter-topic".into(),
            topic("dead-letter"),
            "--alerts-topic".into(),
            topic("alerts"),
            "--audit-topic".into(),
            topic("audit"),
            "--group".into(),
            base.clone(),
        ],
        "bridge" => vec![
            "--models".into(),
            models,
            "--policy".into(),
            policy,
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--requests-topic".into(),
            topic("requests"),
            "--predictions-topic".into(),
            topic("predictions"),
        ],
        "produce" => vec!["--topic".into(), topic("requests"), "--count".into(), "1".into()],
        other => panic!("no arguments for {other}"),
    };
    args.extend(more);
    args
}

/// Starts `command` against a stopped registry, then against a hanging one; each time, once it
/// waits on the registry, SIGTERM must stop it within 10 s with exit 143 and a line saying
/// what it waited for.
async fn stops_during_startup(command: &str) {
    // Refused connections: the stage retries with backoff, saying so.
    let (url, named) = stopped_registry();
    let mut running = Running::spawn(&args(command, &url));
    running.wait_for("schema registry unavailable; retrying", Duration::from_secs(60));
    let (took, code) = running.terminate();
    check_stopped(command, &running.output(), took, code, &named, true);

    // A registry that never answers: the stop ends the attempt in flight.
    let proxy = hanging_registry().await;
    let (url, named) = with_password(&proxy);
    let mut running = Running::spawn(&args(command, &url));
    proxy.wait_faulted(1, Duration::from_secs(60)).await;
    let (took, code) = running.terminate();
    check_stopped(command, &running.output(), took, code, &named, false);
}

fn check_stopped(command: &str, output: &str, took: Duration, code: i32, named: &str, retried: bool) {
    assert!(took < Duration::from_secs(10), "{command}: SIGTERM during start-up took {took:?}; stderr:\n{output}");
    assert_eq!(code, 143, "{command}: a stop during start-up exits 128 + SIGTERM; stderr:\n{output}");
    let line = output
        .lines()
        .find(|l| l.contains(&format!("streamscore {command} exiting: stopped by SIGTERM while waiting for")))
        .unwrap_or_else(|| panic!("{command}: no line saying what it waited for; stderr:\n{output}"));
    assert!(line.contains(&format!("the schema registry at {named}")), "{command}: names the registry: {line}");
    assert!(line.contains("had not started its work"), "{command}: {line}");
    if retried {
        assert!(line.contains("Connection refused"), "{command}: names the last failure: {line}");
    }
    assert!(!output.contains(PASSWORD), "{command}: the registry's password shows in its output:\n{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_stops_on_sigterm_while_the_registry_is_down() {
    stops_during_startup("pipeline").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_stops_on_sigterm_while_the_registry_is_down() {
    stops_during_startup("ingest").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn infer_stops_on_sigterm_while_the_registry_is_down() {
    stops_during_startup("infer").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_stops_on_sigterm_while_the_registry_is_down() {
    stops_during_startup("monitor").await;
}

/// The bridge is up while the registry is down (its calls get 503 until the registry
/// answers): SIGTERM is its ordinary stop, exit 0, the reason in its last line.
#[tokio::test(flavor = "multi_thread")]
async fn bridge_serves_while_the_registry_is_down_and_stops_on_sigterm() {
    let (url, _) = stopped_registry();
    let mut running = Running::spawn(&args("bridge", &url));
    running.wait_for("schema registry unavailable; retrying", Duration::from_secs(60));
    let (took, code) = running.terminate();
    let output = running.output();
    assert!(took < Duration::from_secs(10), "bridge: SIGTERM took {took:?}; stderr:\n{output}");
    assert_eq!(code, 0, "bridge: a stop is a clean exit; stderr:\n{output}");
    assert!(output.contains("streamscore bridge exiting: stopped by SIGTERM"), "the reason is logged:\n{output}");
    assert!(!output.contains(PASSWORD), "the registry's password shows:\n{output}");
}

/// `produce` needs the request schema's id before it sends: a registry that refuses is an
/// error naming it (without its password) and that it did not answer; one that hangs is a
/// wait SIGTERM ends.
#[tokio::test(flavor = "multi_thread")]
async fn produce_names_a_stopped_registry_and_stops_on_sigterm_while_one_hangs() {
    let (url, named) = stopped_registry();
    let output = Command::new(env!("CARGO_BIN_EXE_streamscore")).args(args("produce", &url)).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the schema registry at {named} did not answer"))
            && stderr.contains("Connection refused"),
        "names the registry and why: {stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "the password shows: {stderr}");
    let causes: Vec<&str> =
        stderr.lines().skip_while(|l| !l.starts_with("Caused by:")).skip(1).take_while(|l| !l.is_empty()).collect();
    assert!(!causes.is_empty() && causes.iter().all(|c| !c.trim().is_empty()), "every cause says something: {stderr}");

    let proxy = hanging_registry().await;
    let (url, named) = with_password(&proxy);
    let mut running = Running::spawn(&args("produce", &url));
    proxy.wait_faulted(1, Duration::from_secs(60)).await;
    let (took, code) = running.terminate();
    check_stopped("produce", &running.output(), took, code, &named, false);
}
