//! The command line, one module per group of commands: each command's arguments (a clap
//! `Args` struct) and what it does (`run`). The argument groups several commands share
//! (endpoints, ingest and infer settings, batches, the load generator, the log topics) and the
//! helpers they share are here.

pub(crate) mod analysts;
pub(crate) mod main_job;
pub(crate) mod ops;
pub(crate) mod rollout;
pub(crate) mod stages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Subcommand;
use streamscore::stack::{self, StackConfig};
use streamscore_ingest::IngestConfig;
use streamscore_kafka::{ensure_topics, event_topics_with, KafkaConfig, Shutdown};

#[derive(Debug, clap::Args)]
pub(crate) struct Endpoints {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub(crate) bootstrap: String,
    /// Schema registry URL (`http://user:password@host:port` to send credentials; `--help`
    /// never shows the environment's value).
    #[arg(long, env = "STREAMSCORE_REGISTRY_URL", hide_env_values = true, default_value = "http://127.0.0.1:8081")]
    pub(crate) registry_url: String,
}

#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct BatchArgs {
    /// Largest micro-batch.
    #[arg(long, env = "STREAMSCORE_MAX_BATCH", default_value_t = 256)]
    pub(crate) max_batch: usize,
    /// Longest a request waits for its batch to fill, in microseconds (timer resolution 1 ms).
    #[arg(long, env = "STREAMSCORE_MAX_WAIT_US", default_value_t = 2000)]
    pub(crate) max_wait_us: u64,
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
pub(crate) struct InferArgs {
    /// Topic predictions are written to.
    #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
    pub(crate) predictions_topic: String,
    /// The audit log (each stage's keyed chain, and the commitments of every output).
    #[arg(long, default_value = streamscore_contracts::topics::AUDIT)]
    pub(crate) audit_topic: String,
    /// Shadow versions, `model:version,...`, scored on the same batches and written flagged.
    #[arg(long)]
    pub(crate) shadow: Option<String>,
    /// The rollouts to follow (compacted, keyed by model): each model's split routes what names
    /// no version and has no pin (`streamscore rollout`).
    #[arg(long, default_value = streamscore_contracts::topics::ROLLOUTS)]
    pub(crate) rollouts_topic: String,
    /// Tenant pins, `tenant:version,...`, used when a request names no version (the policy
    /// file's pins apply too).
    #[arg(long)]
    pub(crate) pins: Option<String>,
    /// Tenant policy file (quotas, pins, allowed models); without it no quotas apply.
    #[arg(long, env = "STREAMSCORE_POLICY")]
    pub(crate) policy: Option<PathBuf>,
    /// Compacted topic where quota buckets are committed with the input offsets, so a
    /// redelivered request gets the same quota decision (with --policy).
    #[arg(long, default_value = streamscore_infer::stage::QUOTA_CHECKPOINTS)]
    pub(crate) quota_checkpoints_topic: String,
    /// Scoring backend: cpu (tract), cuda (custom kernels; a clear error where it cannot run,
    /// never a silent CPU run), or auto (CUDA where it can run, else CPU, said in the log).
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: streamscore_infer::selection::BackendChoice,
    #[command(flatten)]
    pub(crate) batch: BatchArgs,
}

pub(crate) fn pairs(text: Option<&str>) -> Result<std::collections::HashMap<String, String>> {
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
        config.rollouts_topic = Some(self.rollouts_topic.clone());
        config.pins = pairs(self.pins.as_deref())?;
        config.batch = self.batch.config();
        config.policy = self.policy.clone();
        config.quota_state_topic = self.quota_checkpoints_topic.clone();
        Ok(config)
    }
}

/// The topics the analysts' commands read.
#[derive(Debug, clap::Args)]
pub(crate) struct LogTopics {
    /// The predictions (outcomes of every request, shadows and rejections too).
    #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
    pub(crate) predictions_topic: String,
    /// The dead letters.
    #[arg(long, default_value = streamscore_contracts::topics::DEAD_LETTER)]
    pub(crate) dead_letter_topic: String,
    /// The audit log (the stages' chains and the commitments of every output).
    #[arg(long, default_value = streamscore_contracts::topics::AUDIT)]
    pub(crate) audit_topic: String,
}

/// `--models`: the model store, for every command that loads it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ModelStoreArgs {
    /// Model store directory: the models, their metadata and reference distributions.
    #[arg(long = "models", env = "STREAMSCORE_MODELS", default_value = "models", value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

impl ModelStoreArgs {
    /// Loads the store, naming the directory in the error.
    pub(crate) fn open(&self) -> Result<streamscore_modelstore::ModelStore> {
        streamscore_modelstore::ModelStore::open(&self.dir)
            .with_context(|| format!("loading the model store {}", self.dir.display()))
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// Topic requests are read from.
    #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
    pub(crate) input_topic: String,
    /// Topic bad records are written to.
    #[arg(long, default_value = streamscore_contracts::topics::DEAD_LETTER)]
    pub(crate) dead_letter_topic: String,
    /// Consumer group.
    #[arg(long, default_value = "streamscore-ingest")]
    pub(crate) group: String,
    #[command(flatten)]
    pub(crate) store: ModelStoreArgs,
    /// Known tenants, comma-separated, or `*` for any.
    #[arg(long, env = "STREAMSCORE_TENANTS", default_value = DEFAULT_TENANTS)]
    pub(crate) tenants: String,
    /// Largest record value accepted, in bytes (larger ones are dead-lettered TOO_LARGE).
    #[arg(long, default_value_t = streamscore_ingest::decide::DEFAULT_MAX_RECORD_BYTES)]
    pub(crate) max_record_bytes: usize,
    /// Oldest accepted `created_at`, in seconds before ingest time (older: TIMESTAMP_OUT_OF_RANGE).
    #[arg(long, default_value_t = 86_400)]
    pub(crate) max_event_age_secs: u64,
    /// Furthest accepted `created_at`, in seconds after ingest time (clock skew).
    #[arg(long, default_value_t = 300)]
    pub(crate) max_event_lead_secs: u64,
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
pub(crate) const DEFAULT_TENANTS: &str =
    "tenant-01,tenant-02,tenant-03,tenant-04,tenant-05,tenant-06,tenant-07,tenant-08";

#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// Topic to publish to.
    #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
    pub(crate) topic: String,
    /// Target events per second (default: as fast as the broker takes them).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Stop after this many requests.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub(crate) duration_secs: Option<f64>,
    /// Number of tenants (`tenant-01` ...).
    #[arg(long, default_value_t = 4)]
    pub(crate) tenants: u32,
    /// Zipf exponent of the tenant mix: 0 uniform, 1 and up skewed to tenant-01.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) tenant_skew: f64,
    /// Model name.
    #[arg(long, default_value = "fraud")]
    pub(crate) model: String,
    /// Versions to ask for, comma-separated; `default` leaves the version to routing.
    #[arg(long, default_value = "default")]
    pub(crate) versions: String,
    /// Share of bad records (0..1), spread evenly over --bad-kinds.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) bad_share: f64,
    /// Kinds of bad records (reason codes, comma-separated), default all.
    #[arg(long)]
    pub(crate) bad_kinds: Option<String>,
    /// Drift: `feature:shift:scale:after_seconds`, e.g. `amount:400:1.5:30`.
    #[arg(long)]
    pub(crate) drift: Option<String>,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Write the generator's own counts as JSON to this file.
    #[arg(long)]
    pub(crate) summary_json: Option<PathBuf>,
}

/// Known tenants for ingest: the policy's when there is one (every tenant if it admits unknown
/// ones), else the `--tenants` list.
pub(crate) fn tenants_for(policy: Option<&std::path::Path>, list: &str) -> Result<streamscore_ingest::Tenants> {
    let Some(path) = policy else { return Ok(streamscore_ingest::Tenants::parse(list)) };
    Ok(streamscore::pipeline::ingest_tenants(&streamscore_infer::quota::Policy::load(path)?))
}

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MetricsListen(pub(crate) Option<SocketAddr>);

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

pub(crate) async fn serve_metrics(listen: MetricsListen) -> Result<()> {
    streamscore_telemetry::install_recorder();
    if let Some(listen) = listen.0 {
        streamscore_telemetry::serve_metrics_on(listen).await?;
    }
    Ok(())
}
