//! The fused pipeline (`streamscore pipeline`, a separate process) against the local broker:
//! sustained throughput, its CPU time per event (user + system of the pipeline process) and
//! p50/p99 of (prediction written − request created), at a fixed rate below saturation.
//!
//! Run (with the local stack up, e.g. `streamscore stack up`):
//!     export $(cat .streamscore/stack.env); cargo bench --bench pipeline_load -- --bench [RATE] [COUNT]

use std::process::{Command, Stdio};
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "pipeline_load: a load harness; run it with `cargo bench --bench pipeline_load` against a running stack"
        );
        return Ok(());
    }
    let numbers: Vec<f64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let rate = numbers.first().copied().unwrap_or(5_000.0);
    let count = numbers.get(1).copied().unwrap_or(100_000.0) as u64;
    let (bootstrap, registry) = stack_env()?;
    let kafka = KafkaConfig::new(&bootstrap);
    let run = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (requests, dead, predictions) =
        (format!("{run}.requests"), format!("{run}.dead-letter"), format!("{run}.predictions"));
    ensure_topics(
        &kafka,
        &[TopicSpec::event(&requests, 6), TopicSpec::event(&dead, 3), TopicSpec::event(&predictions, 6)],
    )
    .await?;

    let mut child = Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .args(["pipeline", "--bootstrap", &bootstrap, "--registry-url", &registry])
        .args(["--input-topic", &requests, "--dead-letter-topic", &dead, "--predictions-topic", &predictions])
        .args(["--group", &format!("{run}-pipeline"), "--tenants", "*"])
        .arg("--models")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))
        .env("STREAMSCORE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();

    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry, &requests));
    let mut load = LoadConfig::new(&requests);
    load.rate = Some(rate);
    load.count = Some(count);
    load.tenants = 8;
    load.versions = vec![None, Some("1".to_owned()), Some("2".to_owned())];
    let cpu_before = cpu_seconds(&pid.to_string());
    let generated = loadgen::run(&kafka, codec, &load).await?;

    // Read every prediction: (written_at − request created_at) per request.
    let consumer: BaseConsumer =
        kafka.client_config().set("group.id", format!("{run}-reader")).set("auto.offset.reset", "earliest").create()?;
    consumer.subscribe(&[&predictions])?;
    let outcomes = Codec::<PredictionOutcome>::with_url(&registry, &predictions);
    let mut latencies = Vec::with_capacity(count as usize);
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let deadline = Instant::now() + Duration::from_secs(300);
    while (latencies.len() as u64) < generated.good && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let outcome = outcomes.decode(message?.payload().unwrap_or_default()).await?.value;
        if outcome.shadow {
            continue;
        }
        latencies.push(outcome.lineage.written_at - outcome.request_created_at);
        first = first.min(outcome.lineage.written_at);
        last = last.max(outcome.lineage.written_at);
    }
    let cpu = cpu_seconds(&pid.to_string()) - cpu_before;
    Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    child.wait()?;

    latencies.sort_unstable();
    let span = (last - first) as f64 / 1e6;
    println!("fused pipeline at {rate:.0} req/s, {} requests, against {bootstrap}:", generated.sent);
    println!("  predictions:  {} in {span:.1} s ({:.0}/s)", latencies.len(), latencies.len() as f64 / span.max(1e-9));
    println!("  pipeline CPU: {cpu:.2} s user+system, {:.2} µs per event", cpu * 1e6 / latencies.len().max(1) as f64);
    if !latencies.is_empty() {
        println!(
            "  prediction written − request created: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            quantile(&latencies, 0.50),
            quantile(&latencies, 0.99),
            quantile(&latencies, 1.0)
        );
    }
    println!(
        "rerun: export $(cat .streamscore/stack.env); cargo bench --bench pipeline_load -- --bench {rate} {count}"
    );
    Ok(())
}
