//! The main job: `streamscore run`.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The main job: bring up the local stack, run the fused pipeline (ingest + infer) and the
/// load generator, with a live view, until Ctrl-C or --duration-secs.
#[derive(Debug, clap::Args)]
pub(crate) struct RunCommand {
    /// Directory for broker storage, logs and pid files.
    #[arg(long, env = "STREAMSCORE_DATA_DIR", default_value = ".streamscore")]
    pub(crate) data_dir: PathBuf,
    /// Broker port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 9092)]
    pub(crate) broker_port: u16,
    /// Registry port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8081)]
    pub(crate) registry_port: u16,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub(crate) duration_secs: Option<f64>,
    /// Requests per second from the load generator.
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) rate: f64,
    /// Tenants (`tenant-01` ...).
    #[arg(long, default_value_t = 4)]
    pub(crate) tenants: u32,
    /// Share of bad records the load generator injects.
    #[arg(long, default_value_t = 0.02)]
    pub(crate) bad_share: f64,
    /// Versions requests ask for (`default` = routing decides).
    #[arg(long, default_value = "default,1,2")]
    pub(crate) versions: String,
    /// Shadow versions, `model:version,...` (as `pipeline --shadow`), scored on the same
    /// batches; empty for none.
    #[arg(long, default_value = "fraud:2")]
    pub(crate) shadow: String,
    #[command(flatten)]
    pub(crate) batch: BatchArgs,
    /// Drift to inject: `feature:shift:scale:after_seconds`.
    #[arg(long)]
    pub(crate) drift: Option<String>,
    /// Tenant policy file.
    #[arg(long, default_value = "policies/tenants.toml")]
    pub(crate) policy: PathBuf,
    /// Scoring backend: cpu (tract), cuda (custom kernels; a clear error where it cannot
    /// run, never a silent CPU run), or auto (CUDA where it can run a model, else CPU).
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: streamscore_infer::selection::BackendChoice,
    /// Port of the HTTP bridge on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    pub(crate) bridge_port: u16,
    /// Run without the HTTP bridge.
    #[arg(long)]
    pub(crate) no_bridge: bool,
    /// Port of the Prometheus endpoint (`/metrics`) on 127.0.0.1, as `pipeline` serves it
    /// (0 = any free port; a taken port falls back to a free one, said so).
    #[arg(long, default_value_t = 9401)]
    pub(crate) metrics_port: u16,
}

impl RunCommand {
    pub(crate) async fn run(self, shutdown: Shutdown) -> Result<()> {
        let Self {
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
        } = self;
        let shadow = pairs(Some(&shadow)).context("--shadow")?;
        let config = streamscore::run::RunConfig {
            stack: StackConfig {
                data_dir,
                broker_port,
                registry_port,
                partitions: streamscore_kafka::topics::LOCAL_PARTITIONS,
            },
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
        streamscore::run::run(config, shutdown).await?;

        Ok(())
    }
}
