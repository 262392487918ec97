//! `streamscore`: the command-line program. `streamscore --help` lists the commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use streamscore::stack::{self, StackConfig};
use streamscore_kafka::{ensure_topics, event_topics, KafkaConfig};

/// Event-sourced streaming inference on Kafka.
#[derive(Debug, Parser)]
#[command(name = "streamscore", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Endpoints {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Schema registry URL.
    #[arg(
        long,
        env = "STREAMSCORE_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry_url: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the local stack: tansu broker, topics, built-in registry, schemas.
    Stack {
        #[command(subcommand)]
        action: StackAction,
        /// Directory for broker storage, logs and pid files.
        #[arg(
            long,
            env = "STREAMSCORE_DATA_DIR",
            default_value = ".streamscore",
            global = true
        )]
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
    },
    /// Create the event topics (idempotent).
    Topics {
        /// Kafka bootstrap servers.
        #[arg(long, env = "STREAMSCORE_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STREAMSCORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Stack { action, data_dir } => match action {
            StackAction::Up {
                broker_port,
                registry_port,
            } => {
                stack::up(&StackConfig {
                    data_dir,
                    broker_port,
                    registry_port,
                })
                .await?;
            }
            StackAction::Down => stack::down(&data_dir)?,
            StackAction::Status => {
                if !stack::status(&data_dir)? {
                    std::process::exit(3);
                }
            }
        },
        Command::Registry {
            bootstrap,
            listen,
            topic,
        } => {
            let kafka = KafkaConfig::new(bootstrap);
            let store = streamscore_registry::Store::open(&kafka, &topic)
                .await
                .context("opening the registry's topic")?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, topic, "schema registry serving");
            let prometheus = streamscore_monitor::install_recorder();
            let metrics: streamscore_registry::api::MetricsRender =
                Arc::new(move || prometheus.render());
            streamscore_registry::serve(
                Arc::new(store),
                Some(metrics),
                listener,
                shutdown_signal(),
            )
            .await;
            tracing::info!("schema registry stopped");
        }
        Command::Topics { bootstrap } => {
            for outcome in ensure_topics(&KafkaConfig::new(bootstrap), &event_topics()).await? {
                println!("{outcome}");
            }
        }
        Command::Demo { endpoints, count } => {
            streamscore::demo::run(&endpoints.bootstrap, &endpoints.registry_url, count).await?;
        }
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
