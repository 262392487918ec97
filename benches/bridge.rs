//! The HTTP bridge (`streamscore bridge`, a separate process) in front of the fused pipeline
//! (`streamscore pipeline` with quotas and a shadow, as the main job runs it), against the
//! local broker: requests/s and p50/p99 of the HTTP round trip at concurrency 1, 16 and 64
//! with single-row and 64-row calls (closed loop), then single-row calls paced at a rate
//! (open loop: the target is p99 ≤ 25 ms at 500 req/s), then the same paced run with every
//! Nth call explained (`?explain=true`): the unexplained calls' p50/p99 beside the first paced
//! run's, and the explained calls' own (explanations run in a lane of their own, so the
//! unexplained p99 should not move beyond noise). Beside each: CPU-µs per call of the
//! bridge, the pipeline and the broker (their pids' CPU), and the calls that were not 200.
//!
//! Run (with the local stack up, e.g. `streamscore stack up`):
//!     export $(cat .streamscore/stack.env)
//!     cargo bench --bench bridge -- --bench [SECONDS_PER_STEP] [RATE] [EXPLAIN_EVERY]
//! Defaults: 10 s per step, 500 req/s paced, every 50th call explained in the mixed run.
//! `BENCH_BRIDGE_PACED_ONLY=1` skips the closed-loop steps.
//! `BENCH_BRIDGE_KAFKA_PROPERTIES="key=value;..."` sets librdkafka properties of the bridge
//! process alone. `BENCH_BRIDGE_TLS=1` serves the bridge over HTTPS (a P-256 certificate for
//! 127.0.0.1 made with `openssl` for the run; the harness's clients trust it), to set beside a
//! plain run: what TLS costs a call.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use streamscore_kafka::{ensure_topics, KafkaConfig, TopicSpec};

#[path = "support/mod.rs"]
mod support;
use support::{cpu_seconds, stack_env};

const KEY: &str = "bench-key";

struct Processes {
    bridge: Child,
    pipeline: Child,
    broker_pid: String,
}

impl Processes {
    fn cpu(&self) -> [f64; 3] {
        [
            cpu_seconds(&self.bridge.id().to_string()),
            cpu_seconds(&self.pipeline.id().to_string()),
            cpu_seconds(&self.broker_pid),
        ]
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in [&mut self.bridge, &mut self.pipeline] {
            // SIGTERM: both drain and stop.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(18080)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One step's figures.
struct Step {
    calls: u64,
    rows: u64,
    not_ok: u64,
    elapsed: f64,
    latencies_ms: Vec<f64>,
    cpu: [f64; 3],
}

impl Step {
    fn print(mut self, label: &str) {
        self.latencies_ms.sort_by(f64::total_cmp);
        // No CPU figure for a step that shares its run with another (the explained calls).
        let per_call = |cpu: f64| {
            if self.calls == 0 || cpu.is_nan() {
                "–".to_owned()
            } else {
                format!("{:.0}", cpu * 1e6 / self.calls as f64)
            }
        };
        println!(
            "| {label} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} |",
            self.calls as f64 / self.elapsed,
            self.rows as f64 / self.elapsed,
            quantile(&self.latencies_ms, 0.50),
            quantile(&self.latencies_ms, 0.99),
            self.not_ok,
            per_call(self.cpu[0]),
            per_call(self.cpu[1]),
            per_call(self.cpu[2]),
        );
    }
}

fn body(rows: &[Value], n: usize, i: usize) -> Value {
    if n == 1 {
        json!({"features": rows[i % rows.len()]})
    } else {
        json!({"instances": (0..n).map(|k| rows[(i + k) % rows.len()].clone()).collect::<Vec<_>>()})
    }
}

async fn call(http: &reqwest::Client, url: &str, body: &Value) -> (bool, f64) {
    let started = Instant::now();
    let ok = match http.post(url).bearer_auth(KEY).json(body).send().await {
        Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
        Err(_) => false,
    };
    (ok, started.elapsed().as_secs_f64() * 1000.0)
}

/// `concurrency` callers, each calling again as soon as it has its answer.
async fn closed_loop(
    processes: &Processes,
    url: &str,
    rows: &Arc<Vec<Value>>,
    concurrency: usize,
    n: usize,
    seconds: f64,
) -> Step {
    let http = streamscore_contracts::http::client();
    let before = processes.cpu();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let callers = (0..concurrency).map(|c| {
        let (http, url, rows) = (http.clone(), url.to_owned(), Arc::clone(rows));
        tokio::spawn(async move {
            let mut out = (0_u64, 0_u64, Vec::new());
            let mut i = c * 7919;
            while Instant::now() < until {
                let (ok, ms) = call(&http, &url, &body(&rows, n, i)).await;
                i += n;
                out.0 += 1;
                out.1 += u64::from(!ok);
                out.2.push(ms);
            }
            out
        })
    });
    let mut step = Step { calls: 0, rows: 0, not_ok: 0, elapsed: 0.0, latencies_ms: Vec::new(), cpu: [0.0; 3] };
    for caller in futures::future::join_all(callers).await {
        let (calls, not_ok, latencies) = caller.unwrap_or_default();
        step.calls += calls;
        step.not_ok += not_ok;
        step.latencies_ms.extend(latencies);
    }
    step.rows = step.calls * n as u64;
    step.elapsed = started.elapsed().as_secs_f64();
    let after = processes.cpu();
    step.cpu = [after[0] - before[0], after[1] - before[1], after[2] - before[2]];
    step
}

/// Single-row calls started at `rate` per second whatever the answers do (open loop); with
/// `explain_every` > 0 every such call asks for an explanation. The unexplained calls' step
/// (with the whole run's CPU per unexplained call), then the explained calls' (latency only).
async fn paced(
    processes: &Processes,
    url: &str,
    rows: &Arc<Vec<Value>>,
    rate: f64,
    seconds: f64,
    explain_every: usize,
) -> (Step, Step) {
    let http = streamscore_contracts::http::client();
    let before = processes.cpu();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::new();
    let total = (rate * seconds) as usize;
    let explained_url = format!("{url}?explain=true");
    for i in 0..total {
        ticker.tick().await;
        let explain = explain_every > 0 && i % explain_every == explain_every - 1;
        let url = if explain { explained_url.clone() } else { url.to_owned() };
        let (http, body) = (http.clone(), body(rows, 1, i));
        calls.push(tokio::spawn(async move { (explain, call(&http, &url, &body).await) }));
    }
    let empty = || Step { calls: 0, rows: 0, not_ok: 0, elapsed: 0.0, latencies_ms: Vec::new(), cpu: [0.0; 3] };
    let (mut plain, mut explained) = (empty(), empty());
    for answer in futures::future::join_all(calls).await {
        let (explain, (ok, ms)) = answer.unwrap_or((false, (false, f64::NAN)));
        let step = if explain { &mut explained } else { &mut plain };
        step.calls += 1;
        step.not_ok += u64::from(!ok);
        step.latencies_ms.push(ms);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = processes.cpu();
    for step in [&mut plain, &mut explained] {
        step.rows = step.calls;
        step.elapsed = elapsed;
    }
    // The run's CPU per call goes with the unexplained calls (the explanations' cost included).
    plain.cpu = [after[0] - before[0], after[1] - before[1], after[2] - before[2]];
    explained.cpu = [f64::NAN; 3];
    (plain, explained)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == "--bench") else {
        println!("bridge: a load harness; run it with `cargo bench --bench bridge -- --bench` against a running stack");
        return Ok(());
    };
    let seconds: f64 = args.get(at + 1).and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let rate: f64 = args.get(at + 2).and_then(|a| a.parse().ok()).unwrap_or(500.0);
    let explain_every: usize = args.get(at + 3).and_then(|a| a.parse().ok()).unwrap_or(50).max(1);
    let paced_only = std::env::var_os("BENCH_BRIDGE_PACED_ONLY").is_some();
    let (bootstrap, registry) = stack_env()?;
    let broker_pid = std::env::var("STREAMSCORE_BROKER_PID")
        .map_err(|_| anyhow::anyhow!("set STREAMSCORE_BROKER_PID (streamscore stack up writes it to stack.env)"))?;
    let kafka = KafkaConfig::new(&bootstrap);
    let name = format!("bench-bridge-{}", std::process::id());
    let (requests, predictions, dead) =
        (format!("{name}.requests"), format!("{name}.predictions"), format!("{name}.dead-letter"));
    ensure_topics(
        &kafka,
        &[TopicSpec::event(&requests, 1), TopicSpec::event(&predictions, 1), TopicSpec::event(&dead, 1)],
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("tenants.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[tenants.bench]\napi_key_sha256 = [\"{:x}\"]\nrate_per_sec = 1000000\nburst = 1000000\nmax_in_flight = 1000000\n",
            Sha256::digest(KEY.as_bytes())
        ),
    )?;
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/models");
    let binary = env!("CARGO_BIN_EXE_streamscore");
    let pipeline = Command::new(binary)
        .args(["pipeline", "--bootstrap", &bootstrap, "--registry-url", &registry])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--input-topic", &requests, "--dead-letter-topic", &dead, "--predictions-topic", &predictions])
        .args(["--group", &format!("{name}-pipeline"), "--models", models, "--shadow", "fraud:2"])
        .arg("--policy")
        .arg(&policy)
        .env("STREAMSCORE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let port = free_port();
    let tls = std::env::var("BENCH_BRIDGE_TLS").is_ok_and(|v| v == "1");
    let (cert, key) = (dir.path().join("bridge.pem"), dir.path().join("bridge.key"));
    let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    if tls {
        // A CA, and a P-256 certificate for 127.0.0.1 it signs (webpki takes no CA certificate
        // as a server's own).
        let openssl = |args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
            let made = Command::new("openssl").args(args).stderr(Stdio::null()).status()?;
            anyhow::ensure!(made.success(), "openssl {args:?} failed: the bench's certificates");
            Ok(())
        };
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        let ec = [os("-newkey"), os("ec"), os("-pkeyopt"), os("ec_paramgen_curve:P-256"), os("-nodes")];
        let mut args = vec![os("req"), os("-x509"), os("-days"), os("1"), os("-subj"), os("/CN=bench CA")];
        args.extend(ec);
        args.extend([os("-keyout"), ca_key.as_os_str(), os("-out"), ca.as_os_str()]);
        openssl(&args)?;
        let csr = dir.path().join("bridge.csr");
        let mut args = vec![os("req"), os("-new"), os("-subj"), os("/CN=streamscore bench")];
        args.extend(ec);
        args.extend([os("-keyout"), key.as_os_str(), os("-out"), csr.as_os_str()]);
        openssl(&args)?;
        let ext = dir.path().join("ext.cnf");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n")?;
        openssl(&[
            os("x509"),
            os("-req"),
            os("-days"),
            os("1"),
            os("-in"),
            csr.as_os_str(),
            os("-CA"),
            ca.as_os_str(),
            os("-CAkey"),
            ca_key.as_os_str(),
            os("-CAcreateserial"),
            os("-extfile"),
            ext.as_os_str(),
            os("-out"),
            cert.as_os_str(),
        ])?;
        // The harness's clients (streamscore_contracts::http) trust the CA; set before any is built.
        std::env::set_var(streamscore_contracts::http::CA_ENV, &ca);
    }
    let mut bridge = Command::new(binary);
    if tls {
        bridge.arg("bridge").arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
    } else {
        bridge.arg("bridge");
    }
    // Client properties of the bridge process alone (e.g. its listener's fetch wait).
    if let Ok(properties) = std::env::var("BENCH_BRIDGE_KAFKA_PROPERTIES") {
        bridge.env(streamscore_kafka::config::PROPERTIES_ENV, properties);
    }
    let bridge = bridge
        .args(["--bootstrap", &bootstrap, "--registry-url", &registry])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--models", models])
        .args(["--requests-topic", &requests, "--predictions-topic", &predictions])
        .arg("--policy")
        .arg(&policy)
        .env("STREAMSCORE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let processes = Processes { bridge, pipeline, broker_pid };
    let base = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
    let http = streamscore_contracts::http::client();
    let ready = Instant::now();
    while http.get(format!("{base}/ready")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(60), "the bridge did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut generator = streamscore_synth::Generator::new(5);
    let rows: Arc<Vec<Value>> =
        Arc::new((0..4096).map(|i| json!(generator.next(i).by_name::<std::hash::RandomState>())).collect());
    let url = format!("{base}/v1/models/fraud/predict");
    // Warm-up: the pipeline's group join and model loads.
    let warm = closed_loop(&processes, &url, &rows, 4, 1, 5.0).await;
    println!(
        "{base} against {bootstrap} (tansu pid {}); warm-up: {} calls, {} not 200",
        processes.broker_pid, warm.calls, warm.not_ok
    );
    println!();
    println!("| calls | calls/s | rows/s | p50 ms | p99 ms | not 200 | bridge CPU-µs/call | pipeline CPU-µs/call | broker CPU-µs/call |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for n in [1, 64] {
        for concurrency in [1, 16, 64] {
            if paced_only {
                continue;
            }
            let step = closed_loop(&processes, &url, &rows, concurrency, n, seconds).await;
            step.print(&format!("{n} row{}, concurrency {concurrency}", if n == 1 { "" } else { "s" }));
        }
    }
    let (step, _) = paced(&processes, &url, &rows, rate, seconds.max(10.0), 0).await;
    step.print(&format!("1 row, paced {rate:.0}/s"));
    let (plain, explained) = paced(&processes, &url, &rows, rate, seconds.max(10.0), explain_every).await;
    plain.print(&format!("1 row, paced {rate:.0}/s, every {explain_every}th explained: the unexplained calls"));
    explained.print(&format!("1 row, paced {rate:.0}/s, every {explain_every}th explained: the explained calls"));
    let (again, _) = paced(&processes, &url, &rows, rate, seconds.max(10.0), 0).await;
    again.print(&format!("1 row, paced {rate:.0}/s, again (noise)"));
    println!();
    println!(
        "rerun: export $(cat .streamscore/stack.env); cargo bench --bench bridge -- --bench {seconds} {rate} {explain_every}"
    );
    Ok(())
}
