//! The analysts' commands: `audit verify`, `lineage`, `replay`, `quality`, `explain` (their
//! work is in `streamscore-history`).

#[allow(clippy::wildcard_imports)]
use super::*;

/// The audit log: `audit verify` checks every chain and every output event against its
/// commitment and names the first bad record (exit status 1).
#[derive(Debug, clap::Args)]
pub(crate) struct AuditCommand {
    #[command(subcommand)]
    pub(crate) action: AuditAction,
}

impl AuditCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { action: AuditAction::Verify { endpoints, from, to, json, key_file, heads, logs } } = self;
        use streamscore_contracts::audit::{AuditKey, Window};
        let key = match key_file {
            Some(path) => {
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                AuditKey::checked(bytes.trim_ascii_end(), &format!("the file {}", path.display()))
                    .map_err(anyhow::Error::msg)?
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

        Ok(())
    }
}

/// Everything the topics say about one request: its record and writer schema id, ingest's
/// decision, each outcome (shadows too) with version, model sha256, backend, quota decision
/// and policy sha256, the audit entries committing them, and drift alerts covering it.
#[derive(Debug, clap::Args)]
pub(crate) struct LineageCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    /// The request id (as the producer or the bridge set it).
    pub(crate) request_id: String,
    /// Print it as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) logs: LogTopics,
    #[arg(long, default_value = streamscore_contracts::topics::ALERTS)]
    pub(crate) alerts_topic: String,
}

impl LineageCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { endpoints, request_id, json, logs, alerts_topic } = self;
        let config = streamscore::lineage::LineageConfig {
            kafka: KafkaConfig::new(&endpoints.bootstrap),
            registry_url: endpoints.registry_url.clone(),
            predictions_topic: logs.predictions_topic,
            dead_letter_topic: logs.dead_letter_topic,
            audit_topic: logs.audit_topic,
            alerts_topic,
            key: streamscore_contracts::audit::AuditKey::from_env().map_err(anyhow::Error::msg)?,
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

        Ok(())
    }
}

/// Explain a past request again from the topics, with the version and backend that scored
/// it; says whether it equals the live explanation bit for bit (exit status 1 when not).
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    /// The request id (as the producer or the bridge set it).
    pub(crate) request_id: String,
    /// Print it as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Topic of prediction outcomes.
    #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
    pub(crate) predictions_topic: String,
    #[command(flatten)]
    pub(crate) store: ModelStoreArgs,
    /// Recompute on this backend instead of the one that scored the request (cpu, cuda); only
    /// the same backend gives the same bits.
    #[arg(long)]
    pub(crate) backend: Option<streamscore_infer::selection::BackendChoice>,
}

impl ExplainCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { endpoints, request_id, json, predictions_topic, store, backend } = self;
        let config = streamscore_history::explain::ExplainConfig {
            kafka: KafkaConfig::new(&endpoints.bootstrap),
            registry_url: endpoints.registry_url.clone(),
            predictions_topic,
            models: store.dir,
            backend,
        };
        let recomputed = streamscore_history::explain::recompute(&config, &request_id).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&recomputed)?);
        } else {
            print!("{}", streamscore_history::explain::describe(&recomputed));
        }
        if recomputed.comparison == streamscore_history::explain::Comparison::Differs {
            std::process::exit(1);
        }

        Ok(())
    }
}

/// Re-score the request history offline (never writing the live topics): same version as
/// the original (every score bit-identical, every quota decision the same, or exit 1) or
/// another (`--model fraud@2`: an agreement report). Rows to a .jsonl or .parquet file, the
/// report beside it (<out>.report.json).
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    /// Start: an RFC 3339 time or µs (event time, `created_at`), or `offset:N` (every partition).
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// End (inclusive): as --from.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Only this tenant's requests.
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Score every request for this model with this version: `name@version`.
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Where the rows go: FILE.jsonl or FILE.parquet.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The tenant policy the pipeline ran with (quotas, pins, tenants); its sha256 is in the report.
    #[arg(long, default_value = "policies/tenants.toml")]
    pub(crate) policy: PathBuf,
    /// Replay without quotas or a policy (the pipeline ran without `--policy`).
    #[arg(long)]
    pub(crate) no_policy: bool,
    /// Known tenants without a policy, as the pipeline's `--tenants`.
    #[arg(long, env = "STREAMSCORE_TENANTS", default_value = DEFAULT_TENANTS)]
    pub(crate) tenants: String,
    #[command(flatten)]
    pub(crate) store: ModelStoreArgs,
    #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
    pub(crate) requests_topic: String,
    #[command(flatten)]
    pub(crate) logs: LogTopics,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not record the replay in the audit log (REPLAYED: range, mode, result, the
    /// report's sha256).
    #[arg(long)]
    pub(crate) no_audit: bool,
}

impl ReplayCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self {
            endpoints,
            from,
            to,
            tenant,
            model,
            out,
            policy,
            no_policy,
            tenants,
            store,
            requests_topic,
            logs,
            json,
            no_audit,
        } = self;
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
            models: store.dir,
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

        Ok(())
    }
}

/// Model quality per version from the topics alone (not from the monitor's store): every
/// scored outcome (primary and shadow) joined to its label on the feedback topic, as the
/// monitor joins them.
#[derive(Debug, clap::Args)]
pub(crate) struct QualityCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    /// Only this model (`fraud`) or version (`fraud@2`).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Prediction time from (the request's creation): RFC 3339 or µs since the epoch.
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Prediction time up to (inclusive): as --from.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Print the report as JSON: {"versions": [{"model", "version", "labeled", "auc", ...}]}.
    #[arg(long)]
    pub(crate) json: bool,
    /// One row per labeled prediction (request id, tenant, version, score, label, actual,
    /// delay, the features) to this .parquet file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Labels count up to this long after their request's creation (as the monitor's).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub(crate) label_horizon: std::time::Duration,
    #[command(flatten)]
    pub(crate) store: ModelStoreArgs,
    #[arg(long, default_value = streamscore_contracts::topics::PREDICTIONS)]
    pub(crate) predictions_topic: String,
    #[arg(long, default_value = streamscore_contracts::topics::FEEDBACK)]
    pub(crate) feedback_topic: String,
}

impl QualityCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { endpoints, model, from, to, json, out, label_horizon, store, predictions_topic, feedback_topic } =
            self;
        let config = streamscore::quality::QualityConfig {
            kafka: KafkaConfig::new(&endpoints.bootstrap),
            registry_url: endpoints.registry_url.clone(),
            predictions_topic,
            feedback_topic,
            models: store.dir,
            model,
            from: from.as_deref().map(streamscore::audit::parse_time).transpose()?,
            to: to.as_deref().map(streamscore::audit::parse_time).transpose()?,
            horizon_us: i64::try_from(label_horizon.as_micros()).unwrap_or(i64::MAX),
            out,
        };
        let report = streamscore::quality::quality(&config).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", streamscore::quality::describe(&report));
        }

        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditAction {
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
