//! Operating the system: `stack`, `topics`, `probe`, `acls`, `produce`, `synth`, `demo`.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Manage the local stack: tansu broker, topics, built-in registry, schemas.
#[derive(Debug, clap::Args)]
pub(crate) struct StackCommand {
    #[command(subcommand)]
    pub(crate) action: StackAction,
    /// Directory for broker storage, logs and pid files.
    #[arg(long, env = "STREAMSCORE_DATA_DIR", default_value = ".streamscore", global = true)]
    pub(crate) data_dir: PathBuf,
}

impl StackCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { action, data_dir } = self;
        match action {
            StackAction::Up { broker_port, registry_port, partitions } => {
                stack::up(&StackConfig { data_dir, broker_port, registry_port, partitions }).await?;
            }
            StackAction::Down => stack::down(&data_dir)?,
            StackAction::Status => {
                if !stack::status(&data_dir)? {
                    std::process::exit(3);
                }
            }
        };
        Ok(())
    }
}

/// Create the event topics (idempotent).
#[derive(Debug, clap::Args)]
pub(crate) struct TopicsCommand {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub(crate) bootstrap: String,
    /// Partitions of the request, validated and prediction topics (the local stack uses 1;
    /// see streamscore_kafka::topics).
    #[arg(long, default_value_t = streamscore_kafka::topics::CLUSTER_PARTITIONS)]
    pub(crate) partitions: i32,
    /// Replicas of each partition (3 on a production cluster; the local stack has one broker).
    #[arg(long, default_value_t = 1)]
    pub(crate) replication_factor: i32,
    /// `min.insync.replicas` of each topic (2 with a replication factor of 3: a write with
    /// acks=all survives one broker down); default: the broker's.
    #[arg(long)]
    pub(crate) min_insync_replicas: Option<i32>,
    /// Also register the event contracts (request, validated, outcome, dead letter, alert,
    /// audit) in this schema registry, under the topics' subjects.
    #[arg(long)]
    pub(crate) registry_url: Option<String>,
}

impl TopicsCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { bootstrap, partitions, replication_factor, min_insync_replicas, registry_url } = self;
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

        Ok(())
    }
}

/// Check that a stage answers: GET URL, exit 0 on a 2xx answer within --timeout-secs, else
/// say why and exit 1 (the container image's health check).
#[derive(Debug, clap::Args)]
pub(crate) struct ProbeCommand {
    /// What to get, e.g. http://127.0.0.1:9401/healthz (a stage's metrics address).
    #[arg(env = "STREAMSCORE_PROBE_URL", default_value = "http://127.0.0.1:9401/healthz")]
    pub(crate) url: String,
    #[arg(long, default_value_t = 3.0)]
    pub(crate) timeout_secs: f64,
}

impl ProbeCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { url, timeout_secs } = self;
        let client = streamscore_contracts::http::builder()
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

        Ok(())
    }
}

/// Print the `kafka-acls.sh` commands that bind tenants to their producers' principals:
/// each tenant with `kafka_principals` in the policy gets its own requests topic, writable
/// only by those principals (see the README's Security section).
#[derive(Debug, clap::Args)]
pub(crate) struct AclsCommand {
    /// Tenant policy file.
    #[arg(long, default_value = "policies/tenants.toml")]
    pub(crate) policy: PathBuf,
    /// The shared requests topic; a bound tenant's topic is `<this>.<tenant>`.
    #[arg(long, default_value = streamscore_contracts::topics::REQUESTS)]
    pub(crate) requests_topic: String,
    /// The cluster's bootstrap servers, as kafka-acls.sh reaches them.
    #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub(crate) bootstrap: String,
    /// Client properties kafka-acls.sh authenticates with (its --command-config).
    #[arg(long)]
    pub(crate) command_config: Option<String>,
}

impl AclsCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { policy, requests_topic, bootstrap, command_config } = self;
        let policy = streamscore_infer::quota::Policy::load(&policy)?;
        for line in streamscore::acls::commands(&policy, &requests_topic, &bootstrap, command_config.as_deref()) {
            println!("{line}");
        }

        Ok(())
    }
}

/// Load generator: publish Confluent-framed Avro requests at a target rate.
#[derive(Debug, clap::Args)]
pub(crate) struct ProduceCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    #[command(flatten)]
    pub(crate) load: LoadArgs,
}

impl ProduceCommand {
    pub(crate) async fn run(self, shutdown: Shutdown) -> Result<()> {
        let Self { endpoints, load } = self;
        run_produce(endpoints, load, shutdown).await?;
        Ok(())
    }
}

/// Write synthetic transactions (the models' training data) as CSV.
#[derive(Debug, clap::Args)]
pub(crate) struct SynthCommand {
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Number of rows.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) rows: u64,
    /// Output file (default: standard output).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

impl SynthCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { seed, rows, out } = self;
        let writer: Box<dyn std::io::Write> = match &out {
            Some(path) => {
                Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?)
            }
            None => Box::new(std::io::stdout().lock()),
        };
        streamscore::synth_csv(seed, rows, std::io::BufWriter::new(writer))?;

        Ok(())
    }
}

/// Produce a few Avro requests and read them back through ingest, with their schema ids.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoCommand {
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    /// How many requests to produce.
    #[arg(long, default_value_t = 6)]
    pub(crate) count: u64,
}

impl DemoCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { endpoints, count } = self;
        streamscore::demo::run(&endpoints.bootstrap, &endpoints.registry_url, count).await?;

        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum StackAction {
    /// Start what is not running (installing tansu once if needed), create topics, register schemas.
    Up {
        /// Broker port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 9092)]
        broker_port: u16,
        /// Registry port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8081)]
        registry_port: u16,
        /// Partitions of inference.requests, .validated and .predictions when they are
        /// created (inference.dead-letter: as many, at most 3; audit.log, monitor.alerts and
        /// _schemas: 1), so scale-out can be tried locally. Existing topics keep theirs.
        #[arg(long, default_value_t = streamscore_kafka::topics::LOCAL_PARTITIONS,
              value_parser = clap::value_parser!(i32).range(1..=1000))]
        partitions: i32,
    },
    /// Stop the registry and the broker.
    Down,
    /// Show what is running.
    Status,
}

/// The load generator until its count or duration, or a stop request: one that comes while the
/// request schema is being registered (the registry not answering) ends it with
/// [`streamscore_kafka::Stopped`]; later, it stops sending and reports what was sent.
pub(crate) async fn run_produce(endpoints: Endpoints, args: LoadArgs, shutdown: Shutdown) -> Result<()> {
    use streamscore::loadgen::{self, BadKind, LoadConfig};
    use streamscore_contracts::{now_micros, Codec, InferenceRequest};
    anyhow::ensure!(args.count.is_some() || args.duration_secs.is_some(), "give a --count or a --duration-secs");
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
    // One attempt (the codec gives up after its timeout): a load generator says at once that
    // the registry is not there rather than wait for it as the stages do.
    shutdown
        .race(
            || format!("the schema registry at {} to register {}", codec.registry(), codec.subject()),
            codec.register(),
        )
        .await?
        .context("registering the request schema")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    config.stop = Some(Arc::clone(&stop));
    let stopping = tokio::spawn(async move {
        shutdown.requested().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let summary = loadgen::run(&KafkaConfig::new(&endpoints.bootstrap), codec, &config).await;
    stopping.abort();
    let summary = summary?;
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
