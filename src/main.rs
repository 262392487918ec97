//! `streamscore`: the command-line program. `streamscore --help` lists the commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use streamscore::stack::{self, StackConfig};
use streamscore_ingest::IngestConfig;
use streamscore_kafka::{ensure_topics, event_topics_with, KafkaConfig};

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

#[derive(Debug, clap::Args)]
struct Endpoints {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Schema registry URL (`http://user:password@host:port` to send credentials; `--help`
    /// never shows the environment's value).
    #[arg(long, env = "STREAMSCORE_REGISTRY_URL", hide_env_values = true, default_value = "http://127.0.0.1:8081")]
    registry_url: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: bring up the local stack, run the fused pipeline (ingest + infer) and the
    /// load generator, with a live view, until Ctrl-C or --duration-secs.
    Run {
        /// Directory for broker storage, logs and pid files.
        #[arg(long, env = "STREAMSCORE_DATA_DIR", default_value = ".streamscore")]
        data_dir: PathBuf,
        /// Broker port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 9092)]
        broker_port: u16,
        /// Registry port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8081)]
        registry_port: u16,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration_secs: Option<f64>,
        /// Requests per second from the load generator.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Tenants (`tenant-01` ...).
        #[arg(long, default_value_t = 4)]
        tenants: u32,
        /// Share of bad records the load generator injects.
        #[arg(long, default_value_t = 0.02)]
        bad_share: f64,
        /// Versions requests ask for (`default` = routing decides).
        #[arg(long, default_value = "default,1,2")]
        versions: String,
        /// Shadow version, `model:version`, scored on the same batches.
        #[arg(long, default_value = "fraud:2")]
        shadow: String,
        #[command(flatten)]
        batch: BatchArgs,
        /// Drift to inject: `feature:shift:scale:after_seconds`.
        #[arg(long)]
        drift: Option<String>,
        /// Tenant policy file.
        #[arg(long, default_value = "policies/tenants.toml")]
        policy: PathBuf,
        /// Scoring backend: cpu (tract), cuda (custom kernels; a clear error where it cannot
        /// run, never a silent CPU run), or auto (CUDA where it can run a model, else CPU).
        #[arg(long, default_value = "cpu")]
        backend: streamscore_infer::selection::BackendChoice,
        /// Port of the HTTP bridge on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        bridge_port: u16,
        /// Run without the HTTP bridge.
        #[arg(long)]
        no_bridge: bool,
        /// Port of the Prometheus endpoint (`/metrics`) on 127.0.0.1, as `pipeline` serves it
        /// (0 = any free port; a taken port falls back to a free one, said so).
        #[arg(long, default_value_t = 9401)]
        metrics_port: u16,
    },
    /// Run ingest and infer fused in one process (the default deployment).
    Pipeline {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(flatten)]
        ingest: IngestArgs,
        #[command(flatten)]
        infer: InferArgs,
        /// Serve Prometheus metrics (`GET /metrics`, `GET /healthz`) on this address; `off`
        /// serves none, port 0 any free port.
        #[arg(long, default_value = "127.0.0.1:9401", value_name = "ADDR|off")]
        metrics_listen: MetricsListen,
    },
    /// Monitor predictions: drift per model version against the reference distributions,
    /// latency, alerts on monitor.alerts and the audit log.
    Monitor {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Model store directory (reference distributions).
        #[arg(long, env = "STREAMSCORE_MODELS", default_value = "models")]
        models: PathBuf,
        /// Topic predictions are read from.
        #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
        predictions_topic: String,
        /// Topic dead letters are read from (counted by reason; refused inputs count in drift).
        #[arg(long, default_value = streamscore_contracts::topics::DEAD_LETTER)]
        dead_letter_topic: String,
        /// Topic drift alerts are written to.
        #[arg(long, default_value = streamscore_contracts::topics::ALERTS)]
        alerts_topic: String,
        /// Topic of the audit log.
        #[arg(long, default_value = streamscore_contracts::topics::AUDIT)]
        audit_topic: String,
        /// Consumer group.
        #[arg(long, default_value = "streamscore-monitor")]
        group: String,
        /// Tumbling window length in event-time seconds.
        #[arg(long, default_value_t = 10.0)]
        window_secs: f64,
        /// Windows merged into the sliding view.
        #[arg(long, default_value_t = 3)]
        sliding_windows: usize,
        /// Consecutive windows over a threshold before an alert.
        #[arg(long, default_value_t = 2)]
        consecutive: u32,
        /// Also close a window after this many predictions (0 = by time only).
        #[arg(long, default_value_t = 0)]
        window_events: u64,
        /// Threshold overrides, `method=warn:alert,...` for psi, js, ks, wasserstein, missing
        /// (defaults: psi=0.1:0.25, js=0.1:0.2, ks=0.1:0.2, wasserstein=0.05:0.1, missing=0.01:0.05).
        #[arg(long, default_value = "")]
        thresholds: String,
        /// A consumer group whose lag is measured and exported, `GROUP=TOPIC` (repeatable;
        /// default: the stages' default groups, streamscore-pipeline=inference.requests ...).
        #[arg(long = "lag-target", value_name = "GROUP=TOPIC")]
        lag_targets: Vec<String>,
        /// Seconds between lag measurements (each costs the broker a few requests per group).
        #[arg(long, default_value_t = 10.0)]
        lag_every_secs: f64,
        /// Serve Prometheus metrics (`GET /metrics`, `GET /healthz`) on this address; `off`
        /// serves none, port 0 any free port.
        #[arg(long, default_value = "127.0.0.1:9404", value_name = "ADDR|off")]
        metrics_listen: MetricsListen,
    },
    /// Run the infer stage on its own, reading the validated topic.
    Infer {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(flatten)]
        infer: InferArgs,
        /// Topic validated requests are read from.
        #[arg(long, default_value = streamscore_contracts::topics::VALIDATED)]
        validated_topic: String,
        /// Consumer group.
        #[arg(long, default_value = "streamscore-infer")]
        group: String,
        /// Model store directory.
        #[arg(long, env = "STREAMSCORE_MODELS", default_value = "models")]
        models: PathBuf,
        /// Where records of the validated topic that can never be read go.
        #[arg(long, default_value = streamscore_contracts::topics::DEAD_LETTER)]
        dead_letter_topic: String,
        /// Serve Prometheus metrics (`GET /metrics`, `GET /healthz`) on this address; `off`
        /// serves none, port 0 any free port.
        #[arg(long, default_value = "127.0.0.1:9403", value_name = "ADDR|off")]
        metrics_listen: MetricsListen,
    },
    /// Manage the local stack: tansu broker, topics, built-in registry, schemas.
    Stack {
        #[command(subcommand)]
        action: StackAction,
        /// Directory for broker storage, logs and pid files.
        #[arg(long, env = "STREAMSCORE_DATA_DIR", default_value = ".streamscore", global = true)]
        data_dir: PathBuf,
    },
    /// Serve the Confluent-compatible schema registry, its state in a Kafka topic.
    Registry {
        /// Kafka bootstrap servers.
        #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Topic holding the registry's state.
        #[arg(long, default_value = streamscore_registry::DEFAULT_TOPIC)]
        topic: String,
        /// Users allowed to write: one `name:role:sha256-of-password` per line, role reader,
        /// writer (register) or admin (delete, config). Without it the registry is open to all.
        #[arg(long, env = "STREAMSCORE_REGISTRY_USERS_FILE")]
        users_file: Option<PathBuf>,
        /// Reads need a user too (default: reads are open).
        #[arg(long)]
        auth_reads: bool,
    },
    /// Create the event topics (idempotent).
    Topics {
        /// Kafka bootstrap servers.
        #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Partitions of the request, validated and prediction topics (the local stack uses 1;
        /// see streamscore_kafka::topics).
        #[arg(long, default_value_t = streamscore_kafka::topics::CLUSTER_PARTITIONS)]
        partitions: i32,
        /// Replicas of each partition (3 on a production cluster; the local stack has one broker).
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// `min.insync.replicas` of each topic (2 with a replication factor of 3: a write with
        /// acks=all survives one broker down); default: the broker's.
        #[arg(long)]
        min_insync_replicas: Option<i32>,
        /// Also register the event contracts (request, validated, outcome, dead letter, alert,
        /// audit) in this schema registry, under the topics' subjects.
        #[arg(long)]
        registry_url: Option<String>,
    },
    /// Check that a stage answers: GET URL, exit 0 on a 2xx answer within --timeout-secs, else
    /// say why and exit 1 (the container image's health check).
    Probe {
        /// What to get, e.g. http://127.0.0.1:9401/healthz (a stage's metrics address).
        #[arg(env = "STREAMSCORE_PROBE_URL", default_value = "http://127.0.0.1:9401/healthz")]
        url: String,
        #[arg(long, default_value_t = 3.0)]
        timeout_secs: f64,
    },
    /// The audit log: `audit verify` checks every chain and every output event against its
    /// commitment and names the first bad record (exit status 1).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Everything the topics say about one request: its record and writer schema id, ingest's
    /// decision, each outcome (shadows too) with version, model sha256, backend, quota decision
    /// and policy sha256, the audit entries committing them, and drift alerts covering it.
    Lineage {
        #[command(flatten)]
        endpoints: Endpoints,
        /// The request id (as the producer or the bridge set it).
        request_id: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        logs: LogTopics,
        #[arg(long, default_value = streamscore_contracts::topics::ALERTS)]
        alerts_topic: String,
    },
    /// Re-score the request history offline (never writing the live topics): same version as
    /// the original (every score bit-identical, every quota decision the same, or exit 1) or
    /// another (`--model fraud@2`: an agreement report). Rows to a .jsonl or .parquet file, the
    /// report beside it (<out>.report.json).
    Replay {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Start: an RFC 3339 time or µs (event time, `created_at`), or `offset:N` (every partition).
        #[arg(long)]
        from: Option<String>,
        /// End (inclusive): as --from.
        #[arg(long)]
        to: Option<String>,
        /// Only this tenant's requests.
        #[arg(long)]
        tenant: Option<String>,
        /// Score every request for this model with this version: `name@version`.
        #[arg(long)]
        model: Option<String>,
        /// Where the rows go: FILE.jsonl or FILE.parquet.
        #[arg(long)]
        out: PathBuf,
        /// The tenant policy the pipeline ran with (quotas, pins, tenants); its sha256 is in the report.
        #[arg(long, default_value = "policies/tenants.toml")]
        policy: PathBuf,
        /// Replay without quotas or a policy (the pipeline ran without `--policy`).
        #[arg(long)]
        no_policy: bool,
        /// Known tenants without a policy, as the pipeline's `--tenants`.
        #[arg(long, env = "STREAMSCORE_TENANTS", default_value = DEFAULT_TENANTS)]
        tenants: String,
        /// Model store directory.
        #[arg(long, env = "STREAMSCORE_MODELS", default_value = "models")]
        models: PathBuf,
        #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
        requests_topic: String,
        #[command(flatten)]
        logs: LogTopics,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Do not record the replay in the audit log (REPLAYED: range, mode, result, the
        /// report's sha256).
        #[arg(long)]
        no_audit: bool,
    },
    /// Print the `kafka-acls.sh` commands that bind tenants to their producers' principals:
    /// each tenant with `kafka_principals` in the policy gets its own requests topic, writable
    /// only by those principals (see the README's Security section).
    Acls {
        /// Tenant policy file.
        #[arg(long, default_value = "policies/tenants.toml")]
        policy: PathBuf,
        /// The shared requests topic; a bound tenant's topic is `<this>.<tenant>`.
        #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
        requests_topic: String,
        /// The cluster's bootstrap servers, as kafka-acls.sh reaches them.
        #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Client properties kafka-acls.sh authenticates with (its --command-config).
        #[arg(long)]
        command_config: Option<String>,
    },
    /// Run the ingest stage on its own: validate requests, dead-letter bad ones, write
    /// validated requests to the validated topic.
    Ingest {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(flatten)]
        ingest: IngestArgs,
        /// Topic validated requests are written to.
        #[arg(long, default_value = streamscore_contracts::topics::VALIDATED)]
        validated_topic: String,
        /// Serve Prometheus metrics (`GET /metrics`, `GET /healthz`) on this address; `off`
        /// serves none, port 0 any free port.
        #[arg(long, default_value = "127.0.0.1:9402", value_name = "ADDR|off")]
        metrics_listen: MetricsListen,
        /// Tenant policy: its tenants replace `--tenants`, and tenants with `kafka_principals`
        /// are read from their own topics (`<input topic>.<tenant>`) and refused elsewhere.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Load generator: publish Confluent-framed Avro requests at a target rate.
    Produce {
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Serve synchronous HTTP callers over the pipeline: Open Inference Protocol v2
    /// (/v2/models/{model}/infer, as KServe and Triton clients send it) and streamscore's
    /// JSON (/v1/models/{model}/predict). API keys from the tenant policy decide the tenant.
    Bridge {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Address to listen on (also serves /metrics, /healthz, /ready, /openapi.json).
        #[arg(long, env = "STREAMSCORE_BRIDGE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Tenant policy file: API keys (api_key_sha256), allowed models, pins, quotas.
        #[arg(long, default_value = "policies/tenants.toml")]
        policy: PathBuf,
        /// Model store directory.
        #[arg(long, env = "STREAMSCORE_MODELS", default_value = "models")]
        models: PathBuf,
        /// Topic requests are published to.
        #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
        requests_topic: String,
        /// Topic outcomes are read from.
        #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
        predictions_topic: String,
        /// How long a caller waits for its outcome before a 504, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        deadline_ms: u64,
        /// Callers (rows) waiting at once before new calls get 503.
        #[arg(long, default_value_t = streamscore_bridge::DEFAULT_MAX_WAITERS)]
        max_waiters: usize,
        /// Largest request body in bytes (chunked bodies included): 413 above.
        #[arg(long, default_value_t = streamscore_bridge::DEFAULT_MAX_BODY_BYTES)]
        max_body_bytes: usize,
        /// This instance's reply_to id (default: bridge:host:pid:random, new at every start).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Write synthetic transactions (the models' training data) as CSV.
    Synth {
        /// Generator seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Number of rows.
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Produce a few Avro requests and read them back through ingest, with their schema ids.
    Demo {
        #[command(flatten)]
        endpoints: Endpoints,
        /// How many requests to produce.
        #[arg(long, default_value_t = 6)]
        count: u64,
    },
}

#[derive(Debug, Clone, Copy, clap::Args)]
struct BatchArgs {
    /// Largest micro-batch.
    #[arg(long, env = "STREAMSCORE_MAX_BATCH", default_value_t = 256)]
    max_batch: usize,
    /// Longest a request waits for its batch to fill, in microseconds (timer resolution 1 ms).
    #[arg(long, env = "STREAMSCORE_MAX_WAIT_US", default_value_t = 2000)]
    max_wait_us: u64,
}

impl BatchArgs {
    fn config(self) -> streamscore_infer::BatchConfig {
        streamscore_infer::BatchConfig {
            max_batch: self.max_batch,
            max_wait: std::time::Duration::from_micros(self.max_wait_us),
        }
    }
}

#[derive(Debug, clap::Args)]
struct InferArgs {
    /// Topic predictions are written to.
    #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
    predictions_topic: String,
    /// The audit log (each stage's keyed chain, and the commitments of every output).
    #[arg(long, default_value = streamscore_contracts::topics::AUDIT)]
    audit_topic: String,
    /// Shadow versions, `model:version,...`, scored on the same batches and written flagged.
    #[arg(long)]
    shadow: Option<String>,
    /// Tenant pins, `tenant:version,...`, used when a request names no version (the policy
    /// file's pins apply too).
    #[arg(long)]
    pins: Option<String>,
    /// Tenant policy file (quotas, pins, allowed models); without it no quotas apply.
    #[arg(long, env = "STREAMSCORE_POLICY")]
    policy: Option<PathBuf>,
    /// Compacted topic where quota buckets are committed with the input offsets, so a
    /// redelivered request gets the same quota decision (with --policy).
    #[arg(long, default_value = streamscore_infer::stage::QUOTA_CHECKPOINTS)]
    quota_checkpoints_topic: String,
    /// Scoring backend: cpu (tract), cuda (custom kernels; a clear error where it cannot run,
    /// never a silent CPU run), or auto (CUDA where it can run, else CPU, said in the log).
    #[arg(long, default_value = "cpu")]
    backend: streamscore_infer::selection::BackendChoice,
    #[command(flatten)]
    batch: BatchArgs,
}

fn pairs(text: Option<&str>) -> Result<std::collections::HashMap<String, String>> {
    text.unwrap_or_default()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once(':')
                .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
                .with_context(|| format!("{p:?}: expected name:version"))
        })
        .collect()
}

impl InferArgs {
    fn config(&self, endpoints: &Endpoints) -> Result<streamscore_infer::InferConfig> {
        let mut config = streamscore_infer::InferConfig::new(
            KafkaConfig::new(&endpoints.bootstrap),
            &endpoints.registry_url,
            streamscore_contracts::lineage::default_instance(),
        );
        config.predictions_topic = self.predictions_topic.clone();
        config.audit_topic = self.audit_topic.clone();
        config.shadow = pairs(self.shadow.as_deref())?;
        config.pins = pairs(self.pins.as_deref())?;
        config.batch = self.batch.config();
        config.policy = self.policy.clone();
        config.quota_state_topic = self.quota_checkpoints_topic.clone();
        Ok(config)
    }
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Read audit.log, the predictions and the dead letters and check them: every chain whole
    /// (HMAC, seq, links), every output committed, every commitment found, in order.
    Verify {
        #[command(flatten)]
        endpoints: Endpoints,
        /// Only events written from this time (RFC 3339, or µs since the epoch).
        #[arg(long)]
        from: Option<String>,
        /// Only events written until this time (RFC 3339, or µs since the epoch).
        #[arg(long)]
        to: Option<String>,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
        /// The audit key file (else STREAMSCORE_AUDIT_KEY_FILE or STREAMSCORE_AUDIT_KEY).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Head checkpoints the writers kept outside Kafka (catches a truncated tail).
        #[arg(long, env = "STREAMSCORE_AUDIT_HEAD_DIR", hide_env_values = true)]
        heads: Option<PathBuf>,
        #[command(flatten)]
        logs: LogTopics,
    },
}

/// The topics the analysts' commands read.
#[derive(Debug, clap::Args)]
struct LogTopics {
    /// The predictions (outcomes of every request, shadows and rejections too).
    #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
    predictions_topic: String,
    /// The dead letters.
    #[arg(long, default_value = streamscore_contracts::topics::DEAD_LETTER)]
    dead_letter_topic: String,
    /// The audit log (the stages' chains and the commitments of every output).
    #[arg(long, default_value = streamscore_contracts::topics::AUDIT)]
    audit_topic: String,
}

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// Topic requests are read from.
    #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
    input_topic: String,
    /// Topic bad records are written to.
    #[arg(long, default_value = streamscore_contracts::topics::DEAD_LETTER)]
    dead_letter_topic: String,
    /// Consumer group.
    #[arg(long, default_value = "streamscore-ingest")]
    group: String,
    /// Model store directory.
    #[arg(long, env = "STREAMSCORE_MODELS", default_value = "models")]
    models: PathBuf,
    /// Known tenants, comma-separated, or `*` for any.
    #[arg(long, env = "STREAMSCORE_TENANTS", default_value = DEFAULT_TENANTS)]
    tenants: String,
    /// Largest record value accepted, in bytes (larger ones are dead-lettered TOO_LARGE).
    #[arg(long, default_value_t = streamscore_ingest::decide::DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: usize,
    /// Oldest accepted `created_at`, in seconds before ingest time (older: TIMESTAMP_OUT_OF_RANGE).
    #[arg(long, default_value_t = 86_400)]
    max_event_age_secs: u64,
    /// Furthest accepted `created_at`, in seconds after ingest time (clock skew).
    #[arg(long, default_value_t = 300)]
    max_event_lead_secs: u64,
}

impl IngestArgs {
    fn event_window(&self) -> streamscore_ingest::decide::EventTimeWindow {
        streamscore_ingest::decide::EventTimeWindow {
            past: std::time::Duration::from_secs(self.max_event_age_secs),
            future: std::time::Duration::from_secs(self.max_event_lead_secs),
        }
    }
}

/// The tenants the load generator uses by default (`tenant-01` ... `tenant-08`).
const DEFAULT_TENANTS: &str = "tenant-01,tenant-02,tenant-03,tenant-04,tenant-05,tenant-06,tenant-07,tenant-08";

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Topic to publish to.
    #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
    topic: String,
    /// Target events per second (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many requests.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Number of tenants (`tenant-01` ...).
    #[arg(long, default_value_t = 4)]
    tenants: u32,
    /// Zipf exponent of the tenant mix: 0 uniform, 1 and up skewed to tenant-01.
    #[arg(long, default_value_t = 0.0)]
    tenant_skew: f64,
    /// Model name.
    #[arg(long, default_value = "fraud")]
    model: String,
    /// Versions to ask for, comma-separated; `default` leaves the version to routing.
    #[arg(long, default_value = "default")]
    versions: String,
    /// Share of bad records (0..1), spread evenly over --bad-kinds.
    #[arg(long, default_value_t = 0.0)]
    bad_share: f64,
    /// Kinds of bad records (reason codes, comma-separated), default all.
    #[arg(long)]
    bad_kinds: Option<String>,
    /// Drift: `feature:shift:scale:after_seconds`, e.g. `amount:400:1.5:30`.
    #[arg(long)]
    drift: Option<String>,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the generator's own counts as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum StackAction {
    /// Start what is not running (installing tansu once if needed), create topics, register schemas.
    Up {
        /// Broker port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 9092)]
        broker_port: u16,
        /// Registry port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8081)]
        registry_port: u16,
    },
    /// Stop the registry and the broker.
    Down,
    /// Show what is running.
    Status,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("STREAMSCORE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"))
    };
    if let Command::Run { data_dir, .. } = &cli.command {
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
        tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).init();
    }
    apply_kafka_settings(&cli)?;
    if let Command::Run { data_dir, .. } = &cli.command {
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
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Stack { action, data_dir } => match action {
            StackAction::Up { broker_port, registry_port } => {
                stack::up(&StackConfig { data_dir, broker_port, registry_port }).await?;
            }
            StackAction::Down => stack::down(&data_dir)?,
            StackAction::Status => {
                if !stack::status(&data_dir)? {
                    std::process::exit(3);
                }
            }
        },
        Command::Registry { bootstrap, listen, topic, users_file, auth_reads } => {
            let auth = match &users_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    streamscore_registry::Auth::parse(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                        .with_authenticated_reads(auth_reads)
                }
                None => {
                    tracing::warn!(
                        "no --users-file: anyone who can reach the registry may register, delete and reconfigure"
                    );
                    streamscore_registry::Auth::open()
                }
            };
            let kafka = KafkaConfig::new(bootstrap);
            let store =
                streamscore_registry::Store::open(&kafka, &topic).await.context("opening the registry's topic")?;
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, topic, "schema registry serving");
            let prometheus = streamscore_telemetry::install_recorder();
            let metrics: streamscore_registry::api::MetricsRender = Arc::new(move || prometheus.render());
            streamscore_registry::serve(Arc::new(store), Arc::new(auth), Some(metrics), listener, shutdown_signal())
                .await;
            tracing::info!("schema registry stopped");
        }
        Command::Audit { action: AuditAction::Verify { endpoints, from, to, json, key_file, heads, logs } } => {
            use streamscore_contracts::audit::{AuditKey, Window};
            let key = match key_file {
                Some(path) => {
                    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    AuditKey::new(bytes.trim_ascii_end())
                }
                None => AuditKey::from_env().map_err(anyhow::Error::msg)?,
            };
            let heads = match heads {
                Some(dir) if dir.is_dir() => streamscore_kafka::audit::read_heads(&dir).map_err(anyhow::Error::msg)?,
                _ => Vec::new(),
            };
            let window = Window {
                from: from.as_deref().map(streamscore::audit::parse_time).transpose()?.unwrap_or(i64::MIN),
                to: to.as_deref().map(streamscore::audit::parse_time).transpose()?.unwrap_or(i64::MAX),
            };
            let config = streamscore::audit::VerifyConfig {
                kafka: KafkaConfig::new(&endpoints.bootstrap),
                registry_url: endpoints.registry_url.clone(),
                audit_topic: logs.audit_topic,
                predictions_topic: logs.predictions_topic,
                dead_letter_topic: logs.dead_letter_topic,
                key,
                heads,
                window,
            };
            let (report, reading) = streamscore::audit::verify(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", streamscore::audit::describe(&report, reading));
            }
            if !report.ok() {
                std::process::exit(1);
            }
        }
        Command::Lineage { endpoints, request_id, json, logs, alerts_topic } => {
            let config = streamscore::lineage::LineageConfig {
                kafka: KafkaConfig::new(&endpoints.bootstrap),
                registry_url: endpoints.registry_url.clone(),
                predictions_topic: logs.predictions_topic,
                dead_letter_topic: logs.dead_letter_topic,
                audit_topic: logs.audit_topic,
                alerts_topic,
            };
            let trace = streamscore::lineage::trace(&config, &request_id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&trace)?);
            } else {
                print!("{}", streamscore::lineage::describe(&trace));
            }
            if trace.ingest == "unknown" && trace.request.is_none() {
                std::process::exit(1);
            }
        }
        Command::Replay {
            endpoints,
            from,
            to,
            tenant,
            model,
            out,
            policy,
            no_policy,
            tenants,
            models,
            requests_topic,
            logs,
            json,
            no_audit,
        } => {
            use streamscore::replay::Bound;
            let model = model
                .map(|m| {
                    m.split_once('@')
                        .map(|(a, b)| (a.to_owned(), b.to_owned()))
                        .with_context(|| format!("--model {m:?}: name@version, e.g. fraud@2"))
                })
                .transpose()?;
            let config = streamscore::replay::ReplayConfig {
                kafka: KafkaConfig::new(&endpoints.bootstrap),
                registry_url: endpoints.registry_url.clone(),
                requests_topic,
                predictions_topic: logs.predictions_topic,
                dead_letter_topic: logs.dead_letter_topic,
                models,
                policy: (!no_policy).then_some(policy),
                tenants: streamscore_ingest::Tenants::parse(&tenants),
                from: from.as_deref().map(Bound::parse).transpose()?,
                to: to.as_deref().map(Bound::parse).transpose()?,
                tenant,
                model,
                out: out.clone(),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                audit_topic: (!no_audit).then_some(logs.audit_topic),
            };
            let report = streamscore::replay::replay(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", streamscore::replay::describe(&report, &out));
            }
            if !report.ok() {
                std::process::exit(1);
            }
        }
        Command::Acls { policy, requests_topic, bootstrap, command_config } => {
            let policy = streamscore_infer::quota::Policy::load(&policy)?;
            for line in streamscore::acls::commands(&policy, &requests_topic, &bootstrap, command_config.as_deref()) {
                println!("{line}");
            }
        }
        Command::Topics { bootstrap, partitions, replication_factor, min_insync_replicas, registry_url } => {
            anyhow::ensure!(replication_factor >= 1, "--replication-factor must be 1 or more");
            if let Some(m) = min_insync_replicas {
                anyhow::ensure!(
                    (1..=replication_factor).contains(&m),
                    "--min-insync-replicas {m}: between 1 and the replication factor ({replication_factor})"
                );
            }
            // The quota checkpoints too, so a cluster's replication applies to them (the
            // pipeline creates them with one replica where they are missing).
            let mut specs = event_topics_with(partitions);
            specs.push(streamscore_kafka::TopicSpec::state(streamscore_infer::stage::QUOTA_CHECKPOINTS));
            for spec in &mut specs {
                spec.replication = replication_factor;
                if let Some(m) = min_insync_replicas {
                    spec.configs.push(("min.insync.replicas".to_owned(), m.to_string()));
                }
            }
            for outcome in ensure_topics(&KafkaConfig::new(bootstrap), &specs).await? {
                println!("{outcome}");
            }
            if let Some(url) = registry_url {
                for (subject, id) in streamscore::demo::register_contracts(&url).await? {
                    println!("registered {subject} (id {id})");
                }
            }
        }
        Command::Probe { url, timeout_secs } => {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs_f64(timeout_secs.clamp(0.1, 300.0)))
                .build()?;
            match client.get(&url).send().await {
                Ok(response) if response.status().is_success() => println!("{url}: {}", response.status()),
                Ok(response) => {
                    eprintln!("{url}: {}", response.status());
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("{url}: {:#}", anyhow::Error::from(e));
                    std::process::exit(1);
                }
            }
        }
        Command::Run {
            data_dir,
            broker_port,
            registry_port,
            duration_secs,
            rate,
            tenants,
            bad_share,
            versions,
            shadow,
            batch,
            drift,
            policy,
            backend,
            bridge_port,
            no_bridge,
            metrics_port,
        } => {
            let shadow = (!shadow.is_empty())
                .then(|| {
                    shadow
                        .split_once(':')
                        .map(|(m, v)| (m.to_owned(), v.to_owned()))
                        .context("--shadow: expected model:version")
                })
                .transpose()?;
            let config = streamscore::run::RunConfig {
                stack: StackConfig { data_dir, broker_port, registry_port },
                duration: duration_secs.map(std::time::Duration::from_secs_f64),
                rate,
                tenants,
                bad_share,
                versions: versions.split(',').map(str::trim).map(|v| (v != "default").then(|| v.to_owned())).collect(),
                shadow,
                batch: batch.config(),
                drift,
                policy,
                backend,
                bridge_port: (!no_bridge).then_some(bridge_port),
                metrics_port,
            };
            streamscore::run::run(config, shutdown_signal()).await?;
        }
        Command::Pipeline { endpoints, ingest, infer, metrics_listen } => {
            serve_metrics(metrics_listen).await?;
            let mut ingest_config = IngestConfig::new(KafkaConfig::new(&endpoints.bootstrap), &endpoints.registry_url);
            ingest_config.group_id = ingest.group.clone();
            ingest_config.input_topic = ingest.input_topic.clone();
            ingest_config.dead_letter_topic = ingest.dead_letter_topic.clone();
            ingest_config.predictions_topic = infer.predictions_topic.clone();
            ingest_config.event_window = ingest.event_window();
            let config = streamscore::pipeline::PipelineConfig {
                ingest: ingest_config,
                infer: infer.config(&endpoints)?,
                models: ingest.models.clone(),
                tenants: tenants_for(infer.policy.as_deref(), &ingest.tenants)?,
                max_record_bytes: ingest.max_record_bytes,
                channel_capacity: 10_000,
            };
            let stats = Arc::new(streamscore_telemetry::LiveStats::default());
            tracing::info!("pipeline running (ingest + infer fused)");
            let backend = streamscore_infer::selection::select(infer.backend)?;
            let summary = streamscore::pipeline::run(config, backend, stats, shutdown_signal()).await?;
            tracing::info!(
                consumed = summary.consumed,
                validated = summary.validated,
                dead_lettered = summary.dead_lettered,
                "pipeline stopped"
            );
        }
        Command::Monitor {
            endpoints,
            models,
            predictions_topic,
            dead_letter_topic,
            alerts_topic,
            audit_topic,
            group,
            window_secs,
            sliding_windows,
            consecutive,
            window_events,
            thresholds,
            lag_targets,
            lag_every_secs,
            metrics_listen,
        } => {
            serve_metrics(metrics_listen).await?;
            let store = streamscore_modelstore::ModelStore::open(&models)
                .with_context(|| format!("loading {}", models.display()))?;
            let mut config = streamscore_monitor::stage::MonitorConfig::new(
                KafkaConfig::new(&endpoints.bootstrap),
                &endpoints.registry_url,
                streamscore_contracts::lineage::default_instance(),
            );
            config.predictions_topic = predictions_topic;
            config.dead_letter_topic = dead_letter_topic;
            config.alerts_topic = alerts_topic;
            config.audit_topic = audit_topic;
            config.group = group;
            if !lag_targets.is_empty() {
                config.lag_targets = lag_targets
                    .iter()
                    .map(|t| {
                        t.split_once('=')
                            .filter(|(g, topic)| !g.is_empty() && !topic.is_empty())
                            .map(|(group, topic)| streamscore_monitor::lag::LagTarget {
                                group: group.to_owned(),
                                topic: topic.to_owned(),
                            })
                            .with_context(|| format!("--lag-target {t:?}: expected GROUP=TOPIC"))
                    })
                    .collect::<Result<_>>()?;
            }
            anyhow::ensure!(lag_every_secs.is_finite() && lag_every_secs > 0.0, "--lag-every-secs must be above 0");
            config.lag_every = std::time::Duration::from_secs_f64(lag_every_secs);
            #[allow(clippy::cast_possible_truncation)]
            {
                config.detector.window_us = (window_secs * 1e6) as i64;
            }
            config.detector.sliding_windows = sliding_windows;
            config.detector.consecutive = consecutive;
            config.detector.window_events = window_events;
            config.detector.thresholds = config
                .detector
                .thresholds
                .with_overrides(&thresholds)
                .map_err(|e| anyhow::anyhow!("--thresholds {e}"))?;
            let summary = streamscore_monitor::stage::run(config, store, shutdown_signal()).await?;
            tracing::info!(predictions = summary.predictions, alerts = summary.alerts.len(), "monitor stopped");
        }
        Command::Infer { endpoints, infer, validated_topic, group, models, dead_letter_topic, metrics_listen } => {
            serve_metrics(metrics_listen).await?;
            let config = infer.config(&endpoints)?;
            let store = streamscore_modelstore::SharedStore::new(
                streamscore_modelstore::ModelStore::open(&models)
                    .with_context(|| format!("loading {}", models.display()))?,
            );
            let kafka = KafkaConfig::new(&endpoints.bootstrap);
            let input = streamscore_infer::source::ValidatedInput {
                topic: validated_topic,
                group,
                dead_letter_topic,
                checkpoints: config.policy.as_ref().map(|_| config.quota_state_topic.clone()),
                instance: config.instance.clone(),
                drain_timeout: std::time::Duration::from_secs(5),
            };
            if let Some(topic) = &input.checkpoints {
                ensure_topics(&kafka, &[streamscore_kafka::TopicSpec::state(topic)]).await?;
            }
            let (tx, rx) = tokio::sync::mpsc::channel(10_000);
            let stats = Arc::new(streamscore_telemetry::LiveStats::default());
            let backend = streamscore_infer::selection::select(infer.backend)?;
            let stage = tokio::spawn(streamscore_infer::run(config, store, backend, rx, stats));
            let consumed = streamscore_infer::source::consume_validated(
                &kafka,
                &endpoints.registry_url,
                &input,
                tx,
                shutdown_signal(),
            )
            .await;
            // The stage's own failure is the cause when both failed.
            stage.await.context("the infer stage panicked")??;
            consumed?;
        }
        Command::Ingest { endpoints, ingest, validated_topic, metrics_listen, policy } => {
            run_ingest(endpoints, ingest, validated_topic, metrics_listen, policy).await?;
        }
        Command::Produce { endpoints, load } => run_produce(endpoints, load).await?,
        Command::Bridge {
            endpoints,
            listen,
            policy,
            models,
            requests_topic,
            predictions_topic,
            deadline_ms,
            max_waiters,
            max_body_bytes,
            instance,
        } => {
            let mut config = streamscore_bridge::BridgeConfig::new(
                KafkaConfig::new(&endpoints.bootstrap),
                &endpoints.registry_url,
                models,
                policy,
            );
            config.requests_topic = requests_topic;
            config.predictions_topic = predictions_topic;
            config.deadline = std::time::Duration::from_millis(deadline_ms);
            config.max_waiters = max_waiters;
            config.max_body_bytes = max_body_bytes;
            if let Some(instance) = instance {
                config.instance = instance;
            }
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            let prometheus = streamscore_telemetry::install_recorder();
            let metrics: streamscore_bridge::MetricsRender = Arc::new(move || prometheus.render());
            println!("bridge on http://{listen} (Open Inference Protocol v2 on /v2, streamscore JSON on /v1)");
            streamscore_bridge::serve(config, listener, Some(metrics), shutdown_signal()).await?;
            tracing::info!("bridge stopped");
        }
        Command::Synth { seed, rows, out } => {
            let writer: Box<dyn std::io::Write> = match &out {
                Some(path) => {
                    Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?)
                }
                None => Box::new(std::io::stdout().lock()),
            };
            streamscore::synth_csv(seed, rows, std::io::BufWriter::new(writer))?;
        }
        Command::Demo { endpoints, count } => {
            streamscore::demo::run(&endpoints.bootstrap, &endpoints.registry_url, count).await?;
        }
    }
    Ok(())
}

/// Known tenants for ingest: the policy's when there is one (every tenant if it admits unknown
/// ones), else the `--tenants` list.
fn tenants_for(policy: Option<&std::path::Path>, list: &str) -> Result<streamscore_ingest::Tenants> {
    use streamscore_infer::quota::{policy::UnknownTenants, Policy};
    let Some(path) = policy else { return Ok(streamscore_ingest::Tenants::parse(list)) };
    let policy = Policy::load(path)?;
    Ok(match policy.file.unknown_tenants {
        UnknownTenants::Default => streamscore_ingest::Tenants::Any,
        UnknownTenants::Refuse => streamscore_ingest::Tenants::Only(policy.file.tenants.keys().cloned().collect()),
    })
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct MetricsListen(Option<SocketAddr>);

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("{s:?}: {e} (expected HOST:PORT, e.g. 0.0.0.0:9401, or off)"))
    }
}

async fn serve_metrics(listen: MetricsListen) -> Result<()> {
    streamscore_telemetry::install_recorder();
    if let Some(listen) = listen.0 {
        streamscore_telemetry::serve_metrics_on(listen).await?;
    }
    Ok(())
}

async fn run_ingest(
    endpoints: Endpoints,
    args: IngestArgs,
    validated_topic: String,
    metrics: MetricsListen,
    policy: Option<PathBuf>,
) -> Result<()> {
    use streamscore_contracts::{Codec, InferenceRequest};
    use streamscore_ingest::{Handoff, RequestDecider, TenantTopics};
    serve_metrics(metrics).await?;
    let tenants = tenants_for(policy.as_deref(), &args.tenants)?;
    let tenant_topics = match &policy {
        Some(path) => {
            let policy = streamscore_infer::quota::Policy::load(path)?;
            TenantTopics::new(&args.input_topic, policy.bound_tenants().map(|(t, _)| t))
        }
        None => TenantTopics::default(),
    };
    let models = streamscore_modelstore::ModelStore::open(&args.models)
        .with_context(|| format!("loading the model store {}", args.models.display()))?;
    let kafka = KafkaConfig::new(&endpoints.bootstrap);
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&endpoints.registry_url, &args.input_topic));
    let decider = RequestDecider::new(codec, streamscore_contracts::lineage::default_instance())
        .with_tenants(tenants)
        .with_tenant_topics(tenant_topics.clone())
        .with_models(streamscore_modelstore::SharedStore::new(models))
        .with_max_record_bytes(args.max_record_bytes)
        .with_event_time_window(args.event_window());
    let mut config = IngestConfig::new(kafka, &endpoints.registry_url);
    config.group_id = args.group;
    config.input_topic = args.input_topic;
    config.dead_letter_topic = args.dead_letter_topic;
    config.tenant_topics = tenant_topics.topics();
    if !tenant_topics.is_empty() {
        let specs: Vec<_> = tenant_topics
            .topics()
            .iter()
            .map(|t| streamscore_kafka::TopicSpec::event(t, streamscore_kafka::topics::CLUSTER_PARTITIONS))
            .collect();
        streamscore_kafka::ensure_topics(&config.kafka, &specs).await.context("creating the tenants' topics")?;
    }
    tracing::info!(
        input = config.input_topic,
        tenant_topics = ?config.tenant_topics,
        output = validated_topic,
        group = config.group_id,
        "ingest running"
    );
    let summary =
        streamscore_ingest::run(config, decider, Handoff::Topic { topic: validated_topic }, shutdown_signal()).await?;
    tracing::info!(
        consumed = summary.consumed,
        validated = summary.validated,
        dead_lettered = summary.dead_lettered,
        "ingest stopped"
    );
    Ok(())
}

async fn run_produce(endpoints: Endpoints, args: LoadArgs) -> Result<()> {
    use streamscore::loadgen::{self, BadKind, LoadConfig};
    use streamscore_contracts::{now_micros, Codec, InferenceRequest};
    let mut config = LoadConfig::new(&args.topic);
    config.rate = args.rate;
    config.count = args.count;
    config.duration = args.duration_secs.map(std::time::Duration::from_secs_f64);
    config.tenants = args.tenants;
    config.tenant_skew = args.tenant_skew;
    config.model = args.model;
    config.versions = args.versions.split(',').map(str::trim).map(|v| (v != "default").then(|| v.to_owned())).collect();
    config.bad_share = args.bad_share;
    if let Some(kinds) = &args.bad_kinds {
        config.bad_kinds = kinds
            .split(',')
            .map(|k| BadKind::parse(k.trim()).with_context(|| format!("unknown bad kind {k:?}")))
            .collect::<Result<_>>()?;
    }
    config.drift = args.drift.as_deref().map(|d| loadgen::parse_drift(d, now_micros())).transpose()?;
    config.seed = args.seed;
    config.progress = true;
    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&endpoints.registry_url, &args.topic));
    let summary = loadgen::run(&KafkaConfig::new(&endpoints.bootstrap), codec, &config).await?;
    print!("{}", loadgen::describe(&summary));
    if let Some(path) = args.summary_json {
        let json = serde_json::json!({
            "sent": summary.sent, "good": summary.good, "bad": summary.bad, "errors": summary.errors,
            "by_tenant": summary.by_tenant, "elapsed_secs": summary.elapsed.as_secs_f64(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if summary.errors > 0 {
        anyhow::bail!("{} requests were not acknowledged by the broker", summary.errors);
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
