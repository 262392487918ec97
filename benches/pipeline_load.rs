//! The fused pipeline (`streamscore pipeline`, a separate process) against the local broker,
//! with the broker's CPU beside the pipeline's — on one machine the broker shares the cores,
//! so its cost is ours:
//!
//! - **idle**: the pipeline (quotas and a shadow, as the main job runs it) and the monitor
//!   running with no traffic: CPU of the broker, the registry, the pipeline and the monitor,
//!   in % of a core.
//! - **drain**: a backlog of N requests produced first, then the pipeline (no shadow, no
//!   policy) started and timed until it has finished all of them: events/s, pipeline and
//!   broker CPU-µs per event, p50/p99 of (prediction written − request created).
//! - **paced**: the load generator at a rate for a duration with the pipeline (quotas and a
//!   shadow) running: the same figures; the latency is the pipeline's own histogram of
//!   request created → every output acknowledged.
//!
//! Run (with the local stack up, e.g. `streamscore stack up`):
//!     export $(cat .streamscore/stack.env)
//!     cargo bench --bench pipeline_load -- --bench [idle SECS] [drain COUNT] [paced RATE SECS]
//! With no mode after `--bench` all three run: idle 20, drain 100000, paced 2000 30.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{Codec, InferenceRequest, PredictionOutcome};
use streamscore_kafka::{ensure_topics, KafkaConfig, TopicSpec};

#[path = "support/mod.rs"]
mod support;
use support::{cpu_seconds, stack_env};

fn quantile(sorted: &[i64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Idle {
        seconds: f64,
    },
    Drain {
        count: u64,
    },
    Paced {
        rate: f64,
        seconds: f64,
    },
    /// Partitions of the topics the following modes create.
    Partitions(i32),
}

fn modes(args: &[String]) -> Vec<Mode> {
    let mut out = Vec::new();
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<f64>().ok());
    for (i, arg) in args.iter().enumerate() {
        match arg.as_str() {
            "idle" => out.push(Mode::Idle { seconds: number(i + 1).unwrap_or(20.0) }),
            "drain" => out.push(Mode::Drain { count: number(i + 1).unwrap_or(100_000.0) as u64 }),
            "partitions" => out.push(Mode::Partitions(number(i + 1).unwrap_or(6.0) as i32)),
            "paced" => {
                out.push(Mode::Paced { rate: number(i + 1).unwrap_or(2000.0), seconds: number(i + 2).unwrap_or(30.0) })
            }
            _ => {}
        }
    }
    if out.iter().all(|m| matches!(m, Mode::Partitions(_))) {
        out.extend([
            Mode::Idle { seconds: 20.0 },
            Mode::Drain { count: 100_000 },
            Mode::Paced { rate: 2000.0, seconds: 30.0 },
        ]);
    }
    out
}

/// The stack's processes whose CPU is reported.
struct Stack {
    bootstrap: String,
    registry: String,
    broker_pid: String,
    registry_pid: Option<String>,
}

/// Fresh topics and group names for one measurement.
struct Run {
    name: String,
    requests: String,
    dead: String,
    predictions: String,
    audit: String,
}

impl Run {
    async fn new(kafka: &KafkaConfig, partitions: i32) -> anyhow::Result<Self> {
        let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let run = Self {
            requests: format!("{name}.requests"),
            dead: format!("{name}.dead-letter"),
            predictions: format!("{name}.predictions"),
            audit: format!("{name}.audit"),
            name,
        };
        ensure_topics(
            kafka,
            &[
                TopicSpec::event(&run.requests, partitions),
                TopicSpec::event(&run.dead, partitions.min(3)),
                TopicSpec::event(&run.predictions, partitions),
                TopicSpec::event(&run.audit, 1),
            ],
        )
        .await?;
        Ok(run)
    }

    /// `streamscore pipeline` on this run's topics, serving metrics on `metrics_port`.
    fn pipeline(&self, stack: &Stack, metrics_port: u16, main_job: bool) -> anyhow::Result<Child> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamscore"));
        command
            .args(["pipeline", "--bootstrap", &stack.bootstrap, "--registry-url", &stack.registry])
            .args(["--input-topic", &self.requests, "--dead-letter-topic", &self.dead])
            .args(["--predictions-topic", &self.predictions, "--group", &format!("{}-pipeline", self.name)])
            .args(["--audit-topic", &self.audit])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--models")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
            .env("STREAMSCORE_LOG", "warn")
            .stdout(Stdio::null());
        if main_job {
            command.args([
                "--shadow",
                "fraud:2",
                "--policy",
                concat!(env!("CARGO_MANIFEST_DIR"), "/policies/tenants.toml"),
            ]);
        } else {
            command.args(["--tenants", "*"]);
        }
        Ok(command.spawn()?)
    }

    fn load(&self, count: Option<u64>, rate: Option<f64>, seconds: Option<f64>) -> LoadConfig {
        let mut load = LoadConfig::new(&self.requests);
        load.count = count;
        load.rate = rate;
        load.duration = seconds.map(Duration::from_secs_f64);
        load.tenants = 4;
        load.versions = vec![None, Some("1".to_owned()), Some("2".to_owned())];
        load.seed = 7;
        load
    }
}

/// CPU seconds of a set of processes, sampled together.
fn sample(pids: &[&str]) -> Vec<f64> {
    pids.iter().map(|p| cpu_seconds(p)).collect()
}

async fn metric(port: u16, name: &str) -> Option<f64> {
    let text = streamscore_contracts::http::get_text(&format!("http://127.0.0.1:{port}/metrics")).await.ok()?;
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// Waits until the pipeline reports `count` requests finished (or `timeout`).
async fn wait_finished(port: u16, count: u64, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if metric(port, "streamscore_source_finish_seconds_count{stage=\"ingest\"}")
            .await
            .is_some_and(|n| n >= count as f64)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The requests a stage's clients sent, by type, and how often its source paused, from its
/// `/metrics`.
async fn requests_sent(port: u16) -> String {
    let Ok(response) =
        streamscore_contracts::http::client().get(format!("http://127.0.0.1:{port}/metrics")).send().await
    else {
        return String::new();
    };
    let text = response.text().await.unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| {
        l.starts_with("streamscore_kafka_requests_total") || l.starts_with("streamscore_source_pauses_total")
    }) {
        let value = line.rsplit(' ').next().unwrap_or("?");
        let labels = line.split('{').nth(1).and_then(|l| l.split('}').next()).unwrap_or("");
        out.push(format!("{labels}={value}"));
    }
    out.join(" ")
}

/// p50 and p99 (ms) from a Prometheus histogram's buckets.
async fn histogram_quantiles(port: u16, name: &str) -> Option<(f64, f64)> {
    let text = streamscore_contracts::http::get_text(&format!("http://127.0.0.1:{port}/metrics")).await.ok()?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&format!("{name}_bucket"))) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        buckets.push((bound, count));
    }
    let total = buckets.last()?.1;
    let at = |q: f64| buckets.iter().find(|(_, c)| *c >= q * total).map(|(b, _)| b * 1000.0);
    Some((at(0.5)?, at(0.99)?))
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

async fn idle(kafka: &KafkaConfig, stack: &Stack, seconds: f64, partitions: i32) -> anyhow::Result<()> {
    let run = Run::new(kafka, partitions).await?;
    let port = streamscore::stack::free_port()?;
    let pipeline = run.pipeline(stack, port, true)?;
    let monitor = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["monitor", "--bootstrap", &stack.bootstrap, "--registry-url", &stack.registry])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--predictions-topic", &run.predictions, "--group", &format!("{}-monitor", run.name)])
        .arg("--models")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
        .env("STREAMSCORE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    // Warm up: groups joined, schemas registered, models loaded.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (pp, mp) = (pipeline.id().to_string(), monitor.id().to_string());
    let registry_pid = stack.registry_pid.clone().unwrap_or_else(|| "0".to_owned());
    let pids = [stack.broker_pid.as_str(), registry_pid.as_str(), pp.as_str(), mp.as_str()];
    let before = sample(&pids);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let after = sample(&pids);
    stop(pipeline);
    stop(monitor);
    let pct = |i: usize| (after[i] - before[i]) * 100.0 / seconds;
    println!("idle over {seconds:.0} s, {partitions} partitions (pipeline with quotas and a shadow, and the monitor; no traffic):");
    println!(
        "  broker {:.1}% of a core   registry {:.1}%   pipeline {:.1}%   monitor {:.1}%",
        pct(0),
        pct(1),
        pct(2),
        pct(3)
    );
    Ok(())
}

async fn drain(kafka: &KafkaConfig, stack: &Stack, count: u64, partitions: i32) -> anyhow::Result<()> {
    let run = Run::new(kafka, partitions).await?;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&stack.registry, &run.requests));
    let producing = cpu_seconds(&stack.broker_pid);
    let generated = loadgen::run(kafka, Arc::clone(&codec), &run.load(Some(count), None, None)).await?;
    let produced = cpu_seconds(&stack.broker_pid) - producing;
    let port = streamscore::stack::free_port()?;
    let broker_before = cpu_seconds(&stack.broker_pid);
    let started = Instant::now();
    let pipeline = run.pipeline(stack, port, false)?;
    let pid = pipeline.id().to_string();
    let done = wait_finished(port, generated.sent, Duration::from_secs(600)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let broker = cpu_seconds(&stack.broker_pid) - broker_before;
    let cpu = cpu_seconds(&pid);
    // librdkafka reports requests every 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let requests = requests_sent(port).await;
    stop(pipeline);
    let reading = cpu_seconds(&stack.broker_pid);
    let latencies = read_latencies(kafka, &stack.registry, &run, generated.good).await?;
    let read = cpu_seconds(&stack.broker_pid) - reading;
    let n = generated.sent as f64;
    println!(
        "  (reading the predictions back: broker CPU {:.1} µs/record)",
        read * 1e6 / latencies.len().max(1) as f64
    );
    println!("drain of {} requests ({} good) on {partitions} partitions:", generated.sent, generated.good);
    println!(
        "  (producing the backlog: {:.0}/s, broker CPU {:.1} µs/record)",
        generated.sent as f64 / generated.elapsed.as_secs_f64(),
        produced * 1e6 / generated.sent as f64
    );
    if !done {
        println!("  NOT FINISHED within 600 s");
    }
    println!("  {:.0} events/s over {elapsed:.1} s (start-up included)", n / elapsed);
    println!("  pipeline CPU {:.1} µs/event   broker CPU {:.1} µs/event", cpu * 1e6 / n, broker * 1e6 / n);
    println!("  requests the pipeline sent: {requests}");
    print_latencies("prediction written − request created", &latencies);
    // The audit log of the run: every output committed, checked.
    let config = streamscore::audit::VerifyConfig {
        kafka: kafka.clone(),
        registry_url: stack.registry.clone(),
        audit_topic: run.audit.clone(),
        predictions_topic: run.predictions.clone(),
        dead_letter_topic: run.dead.clone(),
        key: streamscore_contracts::audit::AuditKey::from_env().map_err(anyhow::Error::msg)?,
        heads: Vec::new(),
        window: streamscore_contracts::audit::Window::ALL,
    };
    let (report, reading) = streamscore::audit::verify(&config).await?;
    println!(
        "  audit verify: {} records (entries and events) in {:.2} s = {:.0}/s (reading from the broker {:.2} s; \
         decoding, hashing and checking {:.0}/s); {} commitments; {}",
        reading.records,
        reading.seconds,
        reading.records as f64 / reading.seconds.max(1e-9),
        reading.read_seconds,
        reading.records as f64 / (reading.seconds - reading.read_seconds).max(1e-9),
        report.commitments,
        if report.ok() {
            "ok".to_owned()
        } else {
            format!("{} problems, first: {}", report.problems.len(), report.problems[0])
        }
    );
    Ok(())
}

async fn paced(kafka: &KafkaConfig, stack: &Stack, rate: f64, seconds: f64, partitions: i32) -> anyhow::Result<()> {
    let run = Run::new(kafka, partitions).await?;
    let port = streamscore::stack::free_port()?;
    let pipeline = run.pipeline(stack, port, true)?;
    let pid = pipeline.id().to_string();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&stack.registry, &run.requests));
    let pids = [stack.broker_pid.as_str(), pid.as_str(), "self"];
    let before = sample(&pids);
    let started = Instant::now();
    let generated = loadgen::run(kafka, codec, &run.load(None, Some(rate), Some(seconds))).await?;
    let done = wait_finished(port, generated.sent, Duration::from_secs(120)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = sample(&pids);
    let quantiles = histogram_quantiles(port, "streamscore_source_finish_seconds").await;
    stop(pipeline);
    let n = generated.sent as f64;
    println!("paced at {rate:.0} req/s for {seconds:.0} s on {partitions} partitions (quotas and a shadow on):");
    if !done {
        println!("  NOT FINISHED within 120 s of the load's end");
    }
    println!(
        "  generator {:.0}/s; pipeline finished {} in {elapsed:.1} s",
        n / generated.elapsed.as_secs_f64(),
        generated.sent
    );
    println!(
        "  pipeline CPU {:.1} µs/event   broker CPU {:.1} µs/event   load generator CPU {:.1} µs/event",
        (after[1] - before[1]) * 1e6 / n,
        (after[0] - before[0]) * 1e6 / n,
        (after[2] - before[2]) * 1e6 / n
    );
    if let Some((p50, p99)) = quantiles {
        println!("  request created → every output acknowledged: p50 ≤ {p50:.0} ms  p99 ≤ {p99:.0} ms (histogram bucket bounds)");
    }
    let latencies = read_latencies(kafka, &stack.registry, &run, generated.sent).await?;
    print_latencies("prediction written − request created", &latencies);
    Ok(())
}

/// (prediction written − request created) per primary prediction, µs.
async fn read_latencies(kafka: &KafkaConfig, registry: &str, run: &Run, want: u64) -> anyhow::Result<Vec<i64>> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{}-reader", run.name))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&run.predictions])?;
    let outcomes = Codec::<PredictionOutcome>::with_url(registry, &run.predictions);
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while (latencies.len() as u64) < want && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let outcome = outcomes.decode(message?.payload().unwrap_or_default()).await?.value;
        if !outcome.shadow {
            latencies.push(outcome.lineage.written_at - outcome.request_created_at);
        }
    }
    latencies.sort_unstable();
    Ok(latencies)
}

fn print_latencies(what: &str, sorted: &[i64]) {
    if sorted.is_empty() {
        return;
    }
    println!(
        "  {what}: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        quantile(sorted, 0.50),
        quantile(sorted, 0.99),
        quantile(sorted, 1.0)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("pipeline_load: a load harness; run it with `cargo bench --bench pipeline_load -- --bench` against a running stack");
        return Ok(());
    }
    let (bootstrap, registry) = stack_env()?;
    let stack = Stack {
        bootstrap: bootstrap.clone(),
        registry,
        broker_pid: std::env::var("STREAMSCORE_BROKER_PID")
            .map_err(|_| anyhow::anyhow!("set STREAMSCORE_BROKER_PID (streamscore stack up writes it to stack.env)"))?,
        registry_pid: std::env::var("STREAMSCORE_REGISTRY_PID").ok(),
    };
    let kafka = KafkaConfig::new(&bootstrap);
    println!("against {bootstrap} (tansu pid {}); client properties: {:?}", stack.broker_pid, kafka.overrides);
    let mut partitions = 6;
    for mode in modes(&args) {
        match mode {
            Mode::Partitions(n) => partitions = n,
            Mode::Idle { seconds } => idle(&kafka, &stack, seconds, partitions).await?,
            Mode::Drain { count } => drain(&kafka, &stack, count, partitions).await?,
            Mode::Paced { rate, seconds } => paced(&kafka, &stack, rate, seconds, partitions).await?,
        }
    }
    println!(
        "rerun: export $(cat .streamscore/stack.env); cargo bench --bench pipeline_load -- --bench {}",
        args.iter().skip_while(|a| *a != "--bench").skip(1).cloned().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
