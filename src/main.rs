//! `streamscore`: the command-line program. `streamscore --help` lists the commands; their
//! arguments and what each does are in `cli/` (one module per group of commands).

mod cli;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use streamscore::stack;
use streamscore_kafka::{Shutdown, StopReason, Stopped};

/// mimalloc instead of glibc's malloc: the hot path allocates and frees per record (decoded
/// maps, encoded payloads, rdkafka's messages), and glibc spent a fifth of the pipeline's CPU
/// in malloc, free and the consolidation of freed chunks (perf, drain of 100,000 requests).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event-sourced streaming inference on Kafka.
#[derive(Debug, Parser)]
#[command(name = "streamscore", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A librdkafka property for every Kafka client, `key=value` (repeatable), e.g.
    /// `--kafka-config security.protocol=SASL_SSL`; applied after --kafka-config-file.
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    kafka_config: Vec<String>,
    /// A properties file of librdkafka settings for every Kafka client (`key=value` per line,
    /// `#` comments), e.g. a cluster's SASL and TLS settings.
    #[arg(long, global = true, env = "STREAMSCORE_KAFKA_CONFIG_FILE", value_name = "FILE")]
    kafka_config_file: Option<PathBuf>,
}

/// Checks the Kafka client settings and hands them to every client (and to the processes
/// this one starts) through the environment, before any thread exists.
fn apply_kafka_settings(cli: &Cli) -> Result<()> {
    use streamscore_kafka::config::{parse_properties_file, CONFIG_FILE_ENV, PROPERTIES_ENV};
    if let Some(path) = &cli.kafka_config_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("--kafka-config-file {}", path.display()))?;
        parse_properties_file(&text).map_err(|e| anyhow::anyhow!("--kafka-config-file {}: {e}", path.display()))?;
        std::env::set_var(CONFIG_FILE_ENV, path);
    }
    if !cli.kafka_config.is_empty() {
        for entry in &cli.kafka_config {
            match entry.split_once('=') {
                Some((key, _)) if !key.trim().is_empty() && !entry.contains(';') => {}
                _ => anyhow::bail!("--kafka-config {entry:?}: expected key=value without ';' (use --kafka-config-file for such values)"),
            }
        }
        let mut properties = std::env::var(PROPERTIES_ENV).unwrap_or_default();
        for entry in &cli.kafka_config {
            if !properties.is_empty() {
                properties.push(';');
            }
            properties.push_str(entry);
        }
        std::env::set_var(PROPERTIES_ENV, properties);
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: bring up the local stack, run the fused pipeline (ingest + infer) and the
    /// load generator, with a live view, until Ctrl-C or --duration-secs.
    Run(cli::main_job::RunCommand),
    /// Run ingest and infer fused in one process (the default deployment).
    Pipeline(cli::stages::PipelineCommand),
    /// Monitor predictions: drift per model version against the reference distributions,
    /// model quality from labels on inference.feedback joined to the predictions, latency,
    /// alerts on monitor.alerts and the audit log.
    Monitor(cli::stages::MonitorCommand),
    /// Run the infer stage on its own, reading the validated topic.
    Infer(cli::stages::InferCommand),
    /// Manage the local stack: tansu broker, topics, built-in registry, schemas.
    Stack(cli::ops::StackCommand),
    /// Serve the Confluent-compatible schema registry, its state in a Kafka topic.
    Registry(cli::stages::RegistryCommand),
    /// Create the event topics (idempotent).
    Topics(cli::ops::TopicsCommand),
    /// Check that a stage answers: GET URL, exit 0 on a 2xx answer within --timeout-secs, else
    /// say why and exit 1 (the container image's health check).
    Probe(cli::ops::ProbeCommand),
    /// The audit log: `audit verify` checks every chain and every output event against its
    /// commitment and names the first bad record (exit status 1).
    Audit(cli::analysts::AuditCommand),
    /// Everything the topics say about one request: its record and writer schema id, ingest's
    /// decision, each outcome (shadows too) with version, model sha256, backend, quota decision
    /// and policy sha256, the audit entries committing them, and drift alerts covering it.
    Lineage(cli::analysts::LineageCommand),
    /// Re-score the request history offline (never writing the live topics): same version as
    /// the original (every score bit-identical, every quota decision the same, or exit 1) or
    /// another (`--model fraud@2`: an agreement report). Rows to a .jsonl or .parquet file, the
    /// report beside it (<out>.report.json).
    Replay(cli::analysts::ReplayCommand),
    /// Model rollouts: `split` (a fixed A/B), `start <model>@<version>` (shadow, then canary
    /// steps gated on live figures, then promoted; rolled back automatically when a gate fails),
    /// `status`, `promote`, `pause`, `resume`, `rollback`. Every stage follows the changes
    /// within seconds; each is in the audit log.
    Rollout(cli::rollout::RolloutCommand),
    /// Model quality per version from the topics alone: every scored outcome joined to its
    /// label on inference.feedback (AUC, log loss, Brier, precision/recall/F1 at the version's
    /// threshold, calibration error); --json for machines, --out FILE.parquet for one row per
    /// labeled prediction with its features.
    Quality(cli::analysts::QualityCommand),
    /// Explain a past request again from the topics: baseline Shapley values of its features
    /// by the version (and backend) that scored it, the reason codes, and whether they equal,
    /// bit for bit, the explanation the request got live (exit status 1 when not).
    Explain(cli::analysts::ExplainCommand),
    /// Print the `kafka-acls.sh` commands that bind tenants to their producers' principals:
    /// each tenant with `kafka_principals` in the policy gets its own requests topic, writable
    /// only by those principals (see the README's Security section).
    Acls(cli::ops::AclsCommand),
    /// Run the ingest stage on its own: validate requests, dead-letter bad ones, write
    /// validated requests to the validated topic.
    Ingest(cli::stages::IngestCommand),
    /// Load generator: publish Confluent-framed Avro requests at a target rate.
    Produce(cli::ops::ProduceCommand),
    /// Serve synchronous HTTP callers over the pipeline: Open Inference Protocol v2
    /// (/v2/models/{model}/infer, as KServe and Triton clients send it) and streamscore's
    /// JSON (/v1/models/{model}/predict). API keys from the tenant policy decide the tenant.
    Bridge(cli::stages::BridgeCommand),
    /// Write synthetic transactions (the models' training data) as CSV.
    Synth(cli::ops::SynthCommand),
    /// Produce a few Avro requests and read them back through ingest, with their schema ids.
    Demo(cli::ops::DemoCommand),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("STREAMSCORE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"))
    };
    if let Command::Run(run) = &cli.command {
        let data_dir = &run.data_dir;
        // The live view owns the terminal; logs (one line per dead letter) go to a file.
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let path = data_dir.join("pipeline.log");
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        eprintln!("logs: {}", path.display());
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    } else {
        // Colours only on a terminal: a daemon's log file (the stack's registry.log) stays plain.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(ansi).with_writer(std::io::stderr).init();
    }
    apply_kafka_settings(&cli)?;
    // HTTPS to the registry (and any other server) on ring, trusting STREAMSCORE_REGISTRY_CA
    // too: a CA file that cannot be used stops here rather than at the first call.
    streamscore_contracts::http::install_provider();
    streamscore_contracts::http::check_ca()
        .map_err(|e| anyhow::anyhow!("{e}; point it at a PEM file of CA certificates or unset it"))?;
    if let Command::Run(run) = &cli.command {
        let data_dir = &run.data_dir;
        // The main job's stages key their audit chains with the stack's key (before any thread).
        let (key_file, head_dir) = stack::audit_paths(data_dir)?;
        if std::env::var_os(streamscore_contracts::audit::KEY_FILE_ENV).is_none() {
            std::env::set_var(streamscore_contracts::audit::KEY_FILE_ENV, key_file);
        }
        if std::env::var_os(streamscore_kafka::audit::HEAD_DIR_ENV).is_none() {
            std::env::set_var(streamscore_kafka::audit::HEAD_DIR_ENV, head_dir);
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let (name, long_running) = (cli.command.name(), cli.command.long_running());
    let (result, stop) = runtime.block_on(async {
        // The stop request exists before start-up begins: SIGTERM or Ctrl-C at any point after
        // this is honoured by every wait of the commands that handle it (the others keep the
        // signals' default: they end at once).
        let shutdown = if cli.command.handles_stop_requests() {
            Some(Shutdown::on_signals().context("installing the SIGINT and SIGTERM handlers")?)
        } else {
            None
        };
        let result = run(cli.command, shutdown.clone().unwrap_or_else(Shutdown::never)).await;
        anyhow::Ok((result, shutdown.and_then(|s| s.reason())))
    })?;
    exit(name, long_running, result, stop)
}

/// Says why a long-running command ends (its log's last line: `stack status` shows it), and
/// turns a stop during start-up into exit status 128 + the signal's number.
fn exit(name: &str, long_running: bool, result: Result<()>, stop: Option<StopReason>) -> Result<()> {
    let error = match result {
        Ok(()) => {
            if long_running {
                match stop {
                    Some(reason) => tracing::info!("streamscore {name} exiting: stopped by {reason}"),
                    None => tracing::info!("streamscore {name} exiting: done"),
                }
            }
            return Ok(());
        }
        Err(error) => error,
    };
    if let Some(stopped) = error.chain().find_map(|cause| cause.downcast_ref::<Stopped>()) {
        let code = stopped.reason.exit_code();
        tracing::warn!("streamscore {name} exiting: {stopped}; it had not started its work (exit status {code})");
        std::process::exit(code);
    }
    if long_running {
        tracing::error!("streamscore {name} exiting: {error:#}");
    }
    Err(error)
}

impl Command {
    /// The subcommand's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Run(_) => "run",
            Command::Pipeline(_) => "pipeline",
            Command::Monitor(_) => "monitor",
            Command::Infer(_) => "infer",
            Command::Stack(_) => "stack",
            Command::Registry(_) => "registry",
            Command::Topics(_) => "topics",
            Command::Probe(_) => "probe",
            Command::Audit(_) => "audit",
            Command::Lineage(_) => "lineage",
            Command::Replay(_) => "replay",
            Command::Rollout(_) => "rollout",
            Command::Quality(_) => "quality",
            Command::Explain(_) => "explain",
            Command::Acls(_) => "acls",
            Command::Ingest(_) => "ingest",
            Command::Produce(_) => "produce",
            Command::Bridge(_) => "bridge",
            Command::Synth(_) => "synth",
            Command::Demo(_) => "demo",
        }
    }

    /// Whether the command runs until stopped (it logs why it exits).
    fn long_running(&self) -> bool {
        matches!(
            self,
            Command::Run(_)
                | Command::Pipeline(_)
                | Command::Monitor(_)
                | Command::Infer(_)
                | Command::Registry(_)
                | Command::Ingest(_)
                | Command::Bridge(_)
        )
    }

    /// Whether the command races its waits against SIGINT/SIGTERM (and so must be handed the
    /// stop request): the long-running ones and the load generator.
    fn handles_stop_requests(&self) -> bool {
        self.long_running() || matches!(self, Command::Produce(_))
    }
}

async fn run(command: Command, shutdown: Shutdown) -> Result<()> {
    match command {
        Command::Run(args) => args.run(shutdown).await,
        Command::Pipeline(args) => args.run(shutdown).await,
        Command::Monitor(args) => args.run(shutdown).await,
        Command::Infer(args) => args.run(shutdown).await,
        Command::Stack(args) => args.run().await,
        Command::Registry(args) => args.run(shutdown).await,
        Command::Topics(args) => args.run().await,
        Command::Probe(args) => args.run().await,
        Command::Audit(args) => args.run().await,
        Command::Lineage(args) => args.run().await,
        Command::Replay(args) => args.run().await,
        Command::Rollout(args) => args.run().await,
        Command::Quality(args) => args.run().await,
        Command::Explain(args) => args.run().await,
        Command::Acls(args) => args.run().await,
        Command::Ingest(args) => args.run(shutdown).await,
        Command::Produce(args) => args.run(shutdown).await,
        Command::Bridge(args) => args.run(shutdown).await,
        Command::Synth(args) => args.run().await,
        Command::Demo(args) => args.run().await,
    }
}
