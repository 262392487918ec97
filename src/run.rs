//! The main job: the local stack, the fused pipeline (ingest + infer) and the load generator
//! in one command, with a live view (events/s in and out, dead-lettered, p50/p99 of request
//! created → prediction acknowledged) until stopped or for a given duration, and a summary.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use streamscore_contracts::{Codec, InferenceRequest};
use streamscore_infer::selection::BackendChoice;
use streamscore_infer::{BatchConfig, InferConfig};
use streamscore_ingest::{IngestConfig, Tenants};
use streamscore_kafka::{KafkaConfig, Shutdown};
use streamscore_telemetry::{quantile, LiveStats};

use crate::loadgen::{self, LoadConfig};
use crate::pipeline::{self, PipelineConfig};
use crate::stack::{self, StackConfig};

/// What the main job runs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub stack: StackConfig,
    pub duration: Option<Duration>,
    pub rate: f64,
    pub tenants: u32,
    pub bad_share: f64,
    pub versions: Vec<Option<String>>,
    /// Shadow versions by model.
    pub shadow: std::collections::HashMap<String, String>,
    pub batch: BatchConfig,
    pub drift: Option<String>,
    pub policy: std::path::PathBuf,
    pub backend: BackendChoice,
    /// Port of the HTTP bridge on 127.0.0.1 (0 = any free port; `None` = no bridge).
    pub bridge_port: Option<u16>,
    /// Port of the Prometheus endpoint on 127.0.0.1 (`/metrics`; 0 = any free port).
    pub metrics_port: u16,
}

/// Start-up left out of the steady-state latency figures.
const WARM_UP: Duration = Duration::from_secs(10);

fn ms(micros: Option<u64>) -> String {
    #[allow(clippy::cast_precision_loss)]
    micros.map_or_else(|| "-".to_owned(), |m| format!("{:.1} ms", m as f64 / 1000.0))
}

/// Runs the main job until `shutdown` (bringing the stack up gives way to it too).
pub async fn run(config: RunConfig, shutdown: Shutdown) -> Result<()> {
    // Before anything starts: `--backend cuda` where it cannot run stops here, saying why.
    let backend = streamscore_infer::selection::select(config.backend)?;
    let addrs = shutdown.race(|| "the local stack to come up".to_owned(), stack::up(&config.stack)).await??;
    // The recorder is in place before any stage records.
    serve_metrics(config.metrics_port).await?;
    let kafka = KafkaConfig::new(&addrs.bootstrap);
    let instance = streamscore_contracts::lineage::default_instance();
    let mut ingest = IngestConfig::new(kafka.clone(), &addrs.registry_url);
    ingest.group_id = "streamscore-pipeline".to_owned();
    let mut infer = InferConfig::new(kafka.clone(), &addrs.registry_url, &instance);
    infer.batch = config.batch;
    infer.policy = Some(config.policy.clone());
    infer.shadow = config.shadow.clone();
    let policy = streamscore_infer::quota::Policy::load(&config.policy)?;
    let pipeline_config = PipelineConfig {
        ingest,
        infer,
        models: std::path::PathBuf::from("models"),
        tenants: Tenants::Only(policy.file.tenants.keys().cloned().collect()),
        max_record_bytes: streamscore_ingest::decide::DEFAULT_MAX_RECORD_BYTES,
        channel_capacity: 10_000,
    };
    let stats = Arc::new(LiveStats::default());
    let (stop_pipeline, stopped) = tokio::sync::oneshot::channel::<()>();
    let pipeline = tokio::spawn(pipeline::run(pipeline_config, backend, Arc::clone(&stats), async {
        let _ = stopped.await;
    }));

    let (stop_monitor, monitor_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut monitor_config =
        streamscore_monitor::stage::MonitorConfig::new(kafka.clone(), &addrs.registry_url, &instance);
    monitor_config.report_every = Duration::from_secs(1);
    monitor_config.group = "streamscore-run-monitor".to_owned();
    let monitor = tokio::spawn(streamscore_monitor::stage::run_with_stats(
        monitor_config,
        streamscore_modelstore::ModelStore::open("models")?,
        Some(Arc::clone(&stats)),
        async {
            let _ = monitor_stopped.await;
        },
    ));

    // The rollout controller (gates, steps, automatic rollback) and the view of the rollouts.
    let (stop_controller, controller_shutdown) = streamscore_kafka::Shutdown::new();
    let mut controller_config =
        streamscore_control::controller::ControllerConfig::new(kafka.clone(), &addrs.registry_url, &instance);
    controller_config.thresholds = policy.rollout_gates();
    let controller = tokio::spawn(streamscore_control::controller::run(controller_config, controller_shutdown.clone()));
    let rollouts = streamscore_control::table::follow_in_background(
        &kafka,
        &addrs.registry_url,
        streamscore_contracts::topics::ROLLOUTS,
        &controller_shutdown,
    );
    let mut shown_rollouts = Arc::new(streamscore_control::Rollouts::default());

    let bridge = match config.bridge_port {
        Some(port) => Some(start_bridge(&kafka, &addrs.registry_url, &config.policy, port).await?),
        None => None,
    };

    let stop_load = Arc::new(AtomicBool::new(false));
    let mut load = LoadConfig::new(streamscore_contracts::topics::REQUESTS);
    load.rate = Some(config.rate);
    load.duration = config.duration;
    load.stop = Some(Arc::clone(&stop_load));
    load.tenants = config.tenants;
    load.tenant_skew = 0.8;
    load.versions = config.versions.clone();
    load.bad_share = config.bad_share;
    load.seed = u64::try_from(streamscore_contracts::now_micros()).unwrap_or(1);
    if let Some(drift) = &config.drift {
        load.drift = Some(loadgen::parse_drift(drift, streamscore_contracts::now_micros())?);
    }
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&addrs.registry_url, &load.topic));
    let generator = tokio::spawn({
        let kafka = kafka.clone();
        async move { loadgen::run(&kafka, codec, &load).await }
    });

    println!(
        "running: load {} req/s over {} tenants ({:.0}% bad), fused ingest+infer on the {} backend, batches of up to {} / {} µs; Ctrl-C stops",
        config.rate,
        config.tenants,
        config.bad_share * 100.0,
        config.backend,
        config.batch.max_batch,
        config.batch.max_wait.as_micros()
    );
    println!("  time      in/s     out/s  dead-lettered  rejected        p50        p99   shadow   (latency: request created → every output acknowledged)");
    let started = Instant::now();
    let mut all_latencies = Vec::new();
    // The main job's latency target is over the run after its first seconds (group joins,
    // schema lookups and model loads are start-up, not steady state).
    let mut steady_latencies = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let (mut last_in, mut last_out) = (0, 0);
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = ticker.tick() => {
                let consumed = stats.consumed.load(Relaxed);
                let out = stats.outcomes() + stats.dead_lettered.load(Relaxed);
                let mut window = stats.take_latencies();
                println!(
                    "{:>5.0} s  {:>8}  {:>8}  {:>13}  {:>8}  {:>9}  {:>9}  {:>7}",
                    started.elapsed().as_secs_f64(),
                    consumed - last_in,
                    out - last_out,
                    stats.dead_lettered.load(Relaxed),
                    stats.rejected.load(Relaxed),
                    ms(quantile(&mut window, 0.50)),
                    ms(quantile(&mut window, 0.99)),
                    stats.shadow.load(Relaxed),
                );
                (last_in, last_out) = (consumed, out);
                let current = rollouts.current();
                if current != shown_rollouts {
                    let mut lines: Vec<String> = current
                        .all()
                        .map(|r| format!("{} {} {}{}", r.model, r.status.code(), streamscore_control::split::describe(&r.split),
                            r.shadow.as_ref().map(|s| format!(", shadow {s}")).unwrap_or_default()))
                        .collect();
                    lines.sort();
                    for line in lines {
                        println!("        rollout  {line}");
                    }
                    shown_rollouts = current;
                }
                if started.elapsed().as_secs() % 10 == 0 {
                    let drift = stats.drift.lock().map(|d| d.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("  ")).unwrap_or_default();
                    if !drift.is_empty() {
                        println!("        drift  {drift}");
                    }
                    for alert in stats.alerts.lock().map(|a| a.clone()).unwrap_or_default() {
                        println!("        alert  {alert}");
                    }
                }
                if started.elapsed() > WARM_UP {
                    steady_latencies.extend_from_slice(&window);
                }
                all_latencies.extend(window);
                if generator.is_finished() {
                    break;
                }
            }
        }
    }
    stop_load.store(true, Relaxed);
    let generated = generator.await.context("load generator panicked")??;
    // Let the pipeline finish what was produced (bounded), then stop it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.consumed.load(Relaxed) < generated.sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((stop, task)) = bridge {
        let _ = stop.send(());
        task.await.context("the bridge panicked")?.context("the bridge")?;
    }
    let _ = stop_pipeline.send(());
    let summary = pipeline.await.context("pipeline panicked")??;
    let _ = stop_monitor.send(());
    let monitored = monitor.await.context("monitor panicked")??;
    stop_controller.stop(streamscore_kafka::StopReason::Requested("the main job ends".to_owned()));
    controller.await.context("the rollout controller panicked")?.context("the rollout controller")?;
    let rest = stats.take_latencies();
    steady_latencies.extend_from_slice(&rest);
    all_latencies.extend(rest);

    let elapsed = started.elapsed().as_secs_f64();
    println!();
    print!("{}", loadgen::describe(&generated));
    #[allow(clippy::cast_precision_loss)]
    let rate = summary.consumed as f64 / elapsed;
    println!(
        "pipeline: {} consumed ({rate:.0}/s), {} validated, {} dead-lettered; {} scored, {} rejected, {} failed, {} shadow",
        summary.consumed,
        summary.validated,
        summary.dead_lettered,
        stats.scored.load(Relaxed),
        stats.rejected.load(Relaxed),
        stats.failed.load(Relaxed),
        stats.shadow.load(Relaxed),
    );
    println!(
        "latency (request created → every output acknowledged): p50 {}  p99 {}  max {}  over {} requests",
        ms(quantile(&mut all_latencies, 0.50)),
        ms(quantile(&mut all_latencies, 0.99)),
        ms(quantile(&mut all_latencies, 1.0)),
        all_latencies.len()
    );
    println!(
        "  after the first {} s: p50 {}  p99 {}  max {}  over {} requests",
        WARM_UP.as_secs(),
        ms(quantile(&mut steady_latencies, 0.50)),
        ms(quantile(&mut steady_latencies, 0.99)),
        ms(quantile(&mut steady_latencies, 1.0)),
        steady_latencies.len()
    );
    println!(
        "consumed {} of {} produced{}",
        summary.consumed,
        generated.sent,
        if summary.consumed >= generated.sent {
            " (all)"
        } else {
            " — NOT ALL: the rest stays on the topic for the next run"
        }
    );
    println!("monitor: {} predictions seen, {} drift alerts", monitored.predictions, monitored.alerts.len());
    for alert in monitored.alerts.iter().rev().take(5) {
        println!(
            "  {:?} {}/{} {} {:?} = {:.3}",
            alert.severity, alert.model, alert.model_version, alert.feature, alert.method, alert.statistic
        );
    }
    println!(
        "stack still up: `streamscore stack down` stops it; predictions are on {}",
        streamscore_contracts::topics::PREDICTIONS
    );
    Ok(())
}

/// Serves the process's metrics on 127.0.0.1:`port` (a free port if that one is taken, said
/// so), as `streamscore pipeline` does, and says how to watch them.
async fn serve_metrics(port: u16) -> Result<()> {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            println!("metrics: 127.0.0.1:{port} is not free ({e}); using another port (--metrics-port picks one)");
            tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("binding the metrics endpoint")?
        }
    };
    let addr = streamscore_telemetry::spawn_metrics(listener)?;
    println!(
        "metrics: http://{addr}/metrics (Prometheus: `prometheus --config.file=deploy/prometheus/local.yml`; \
         the Grafana dashboard: deploy/grafana/dashboards/streamscore.json; README \"Deployment\")"
    );
    Ok(())
}

type BridgeTask = tokio::task::JoinHandle<Result<(), streamscore_bridge::BridgeError>>;

/// Starts the HTTP bridge on 127.0.0.1:`port` (a free port if that one is taken, said so) and
/// prints its URL with a curl example.
async fn start_bridge(
    kafka: &KafkaConfig,
    registry_url: &str,
    policy: &std::path::Path,
    port: u16,
) -> Result<(tokio::sync::oneshot::Sender<()>, BridgeTask)> {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            println!("bridge: 127.0.0.1:{port} is not free ({e}); using another port (--bridge-port picks one)");
            tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("binding the bridge")?
        }
    };
    let addr = listener.local_addr()?;
    let config = streamscore_bridge::BridgeConfig::new(
        kafka.clone(),
        registry_url,
        std::path::PathBuf::from("models"),
        policy.to_owned(),
    );
    let prometheus = streamscore_telemetry::install_recorder();
    let metrics: streamscore_bridge::MetricsRender = Arc::new(move || prometheus.render());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(streamscore_bridge::serve(config, listener, Some(metrics), async {
        let _ = stopped.await;
    }));
    let features: streamscore_contracts::Features = streamscore_synth::Generator::new(7).next(0).by_name();
    let example = serde_json::json!({ "features": features });
    println!("bridge: http://{addr} (Open Inference Protocol v2 on /v2, streamscore JSON on /v1; API key of tenant-01 in policies/tenants.toml)");
    println!("  curl -s -H 'Authorization: Bearer acme-demo-key' -d '{example}' http://{addr}/v1/models/fraud/predict");
    Ok((stop, task))
}
