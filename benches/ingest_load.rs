//! Sustained throughput of the ingest stage against the local broker: the load generator and
//! the stage run side by side for a fixed time; figures come from the generator's and the
//! stage's own counters.
//!
//! Run (with the local stack up, e.g. `streamscore stack up`):
//!     export $(cat .streamscore/stack.env); cargo bench --bench ingest_load -- --bench [SECONDS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::{Codec, InferenceRequest};
use streamscore_ingest::{Handoff, IngestConfig, RequestDecider, Tenants};
use streamscore_kafka::{ensure_topics, KafkaConfig, TopicSpec};
use streamscore_modelstore::{ModelStore, SharedStore};

#[path = "support/mod.rs"]
mod support;
use support::{cpu_seconds, stack_env};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("ingest_load: a load harness; run it with `cargo bench --bench ingest_load` against a running stack");
        return Ok(());
    }
    let seconds: f64 = args.iter().filter_map(|a| a.parse().ok()).next().unwrap_or(30.0);
    let (bootstrap, registry) = stack_env()?;
    let kafka = KafkaConfig::new(&bootstrap);
    let run = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (requests, validated, dead) =
        (format!("{run}.requests"), format!("{run}.validated"), format!("{run}.dead-letter"));
    ensure_topics(
        &kafka,
        &[TopicSpec::event(&requests, 6), TopicSpec::event(&validated, 6), TopicSpec::event(&dead, 3)],
    )
    .await?;

    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry, &requests));
    codec.register().await?;
    let decider = RequestDecider::new(Arc::clone(&codec), "bench")
        .with_tenants(Tenants::Any)
        .with_models(SharedStore::new(ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models"))?));
    let mut config = IngestConfig::new(kafka.clone(), &registry);
    config.group_id = format!("{run}-ingest");
    config.input_topic = requests.clone();
    config.dead_letter_topic = dead.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    let stage = tokio::spawn(streamscore_ingest::run(config, decider, Handoff::Topic { topic: validated }, async {
        let _ = stop_rx.await;
    }));
    let mut load = LoadConfig::new(&requests);
    load.duration = Some(Duration::from_secs_f64(seconds));
    load.tenants = 8;
    load.bad_share = 0.05;
    let generated = loadgen::run(&kafka, codec, &load).await?;
    let produce_elapsed = started.elapsed();
    // Give the stage time to catch up with what was produced, then stop it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(());
    let summary = stage.await??;
    let elapsed = started.elapsed();
    let cpu = cpu_seconds("self") - cpu_before;
    println!("ingest load over {:.1} s against {bootstrap}:", produce_elapsed.as_secs_f64());
    println!(
        "  load generator: {} sent ({:.0}/s), {} bad, {} errors",
        generated.sent,
        generated.sent as f64 / produce_elapsed.as_secs_f64(),
        generated.bad_total(),
        generated.errors
    );
    println!(
        "  ingest stage:   {} consumed ({:.0}/s over {:.1} s), {} validated, {} dead-lettered",
        summary.consumed,
        summary.consumed as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        summary.validated,
        summary.dead_lettered
    );
    println!(
        "  process CPU (generator + stage + clients): {:.1} s, {:.1} µs per event",
        cpu,
        cpu * 1e6 / summary.consumed.max(1) as f64
    );
    println!("rerun: export $(cat .streamscore/stack.env); cargo bench --bench ingest_load -- --bench {seconds}");
    Ok(())
}
