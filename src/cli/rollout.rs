//! `streamscore rollout`: model rollouts (the control plane, `streamscore-control`).

#[allow(clippy::wildcard_imports)]
use super::*;

use std::collections::HashMap;

use streamscore_contracts::{Rollout, RolloutStatus};
use streamscore_control::lifecycle::{self, Change};
use streamscore_control::publish::Publisher;
use streamscore_control::split;

/// Model rollouts: traffic splits, canary steps gated on live figures, promotion and rollback,
/// each change written to `control.rollouts` (every stage follows it within seconds) and to
/// the audit log.
#[derive(Debug, clap::Args)]
pub(crate) struct RolloutCommand {
    #[command(subcommand)]
    pub(crate) action: RolloutAction,
    #[command(flatten)]
    pub(crate) endpoints: Endpoints,
    #[command(flatten)]
    pub(crate) store: ModelStoreArgs,
    /// The control topic (compacted, keyed by model).
    #[arg(long, global = true, default_value = streamscore_contracts::topics::ROLLOUTS)]
    pub(crate) rollouts_topic: String,
    /// The audit log every change is recorded in.
    #[arg(long, global = true, default_value = streamscore_contracts::topics::AUDIT)]
    pub(crate) audit_topic: String,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RolloutAction {
    /// A fixed experiment (A/B): `rollout split fraud 1=80,2=20`; percents summing to 100.
    /// Requests that name no version and have no tenant pin go to a version by a hash of their
    /// request id (the same id, the same version).
    Split {
        model: String,
        /// `version=percent,...`
        shares: String,
        #[arg(long, default_value = "a fixed split")]
        reason: String,
    },
    /// Starts rolling out `<model>@<version>`: shadow first (scored beside what answers, answering
    /// nothing), then each canary step once its gates hold for the step's time and samples,
    /// then promoted; rolled back automatically when a gate fails (the controller, run by
    /// `streamscore monitor` and the main job).
    Start {
        /// `model@version`
        target: String,
        /// The candidate's share at each step, in percent, ending at 100.
        #[arg(long, default_value = "1,5,25,50,100")]
        steps: String,
        /// How long each step's gates must hold.
        #[arg(long, default_value_t = 60)]
        step_secs: u64,
        /// How many candidate outcomes each step needs.
        #[arg(long, default_value_t = 500)]
        min_samples: u64,
        #[arg(long, default_value = "rollout started")]
        reason: String,
    },
    /// Split, step, each gate's figure and threshold, time in step, the last change.
    Status {
        model: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The candidate answers everything now.
    Promote {
        model: String,
        #[arg(long, default_value = "promoted by hand")]
        reason: String,
    },
    /// Holds the rollout where it is (split kept; the controller leaves it alone).
    Pause {
        model: String,
        #[arg(long, default_value = "paused by hand")]
        reason: String,
    },
    /// Goes on where a pause held it (the step's time starts again).
    Resume {
        model: String,
        #[arg(long, default_value = "resumed by hand")]
        reason: String,
    },
    /// The incumbent answers everything again.
    Rollback {
        model: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

/// `user@host` of whoever runs the command.
fn who() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".to_owned());
    let host = streamscore_contracts::lineage::default_instance();
    let host = host.split(':').next().unwrap_or("localhost").to_owned();
    format!("{user}@{host}")
}

impl RolloutCommand {
    pub(crate) async fn run(self) -> Result<()> {
        let Self { action, endpoints, store, rollouts_topic, audit_topic } = self;
        let kafka = KafkaConfig::new(&endpoints.bootstrap);
        // The command's own stop: it reads the topic to its end, then stops following.
        let (stopper, shutdown) = Shutdown::new();
        let table = streamscore_control::follow(&kafka, &endpoints.registry_url, &rollouts_topic, &shutdown)
            .await
            .with_context(|| format!("reading the rollouts on {rollouts_topic}"))?;
        let rollouts = table.current();
        stopper.stop(streamscore_kafka::StopReason::Requested("read".to_owned()));
        let change = |reason: String| Change {
            by: who(),
            reason,
            at: streamscore_contracts::now_micros(),
            figures: HashMap::new(),
        };
        let models = store.open()?;
        let known_version = |model: &str, version: &str| -> Result<()> {
            models
                .route(model, Some(version), None)
                .map(|_| ())
                .with_context(|| format!("{model}@{version} is not in the model store {}", store.dir.display()))
        };
        let (current, next) = match action {
            RolloutAction::Status { model, json } => {
                let mut shown: Vec<&Rollout> = rollouts
                    .all()
                    .map(|r| r.as_ref())
                    .filter(|r| model.as_ref().is_none_or(|m| *m == r.model))
                    .collect();
                shown.sort_by(|a, b| a.model.cmp(&b.model));
                if json {
                    println!("{}", serde_json::to_string_pretty(&shown)?);
                } else if shown.is_empty() {
                    println!("no rollouts: every model answers its default version (model.json)");
                } else {
                    for rollout in shown {
                        print!("{}", describe(rollout));
                    }
                }
                return Ok(());
            }
            RolloutAction::Split { model, shares, reason } => {
                let shares = split::parse(&shares).map_err(anyhow::Error::msg)?;
                for share in &shares {
                    known_version(&model, &share.version)?;
                }
                let current = rollouts.get(&model).map(|r| r.as_ref().clone());
                let next = lifecycle::experiment(current.as_ref(), &model, shares, change(reason))?;
                (current, next)
            }
            RolloutAction::Start { target, steps, step_secs, min_samples, reason } => {
                let (model, candidate) = target
                    .split_once('@')
                    .with_context(|| format!("{target:?}: expected model@version, e.g. fraud@2"))?;
                known_version(model, candidate)?;
                let steps: Vec<i32> = steps
                    .split(',')
                    .map(|s| s.trim().parse::<i32>().with_context(|| format!("--steps: {s:?} is not a percent")))
                    .collect::<Result<_>>()?;
                let current = rollouts.get(model).map(|r| r.as_ref().clone());
                let incumbent = match &current {
                    Some(c) => lifecycle::answering(c).map(str::to_owned).unwrap_or_else(|| c.incumbent.clone()),
                    None => {
                        models.route(model, None, None).with_context(|| format!("model {model}"))?.meta.version.clone()
                    }
                };
                let next = lifecycle::start(
                    current.as_ref(),
                    model,
                    &incumbent,
                    candidate,
                    steps,
                    i64::try_from(step_secs).unwrap_or(i64::MAX),
                    i64::try_from(min_samples).unwrap_or(i64::MAX),
                    change(reason),
                )?;
                (current, next)
            }
            RolloutAction::Promote { model, reason } => {
                let current = in_force(&rollouts, &model)?;
                let next = lifecycle::promote(&current, change(reason))?;
                (Some(current), next)
            }
            RolloutAction::Pause { model, reason } => {
                let current = in_force(&rollouts, &model)?;
                let next = lifecycle::pause(&current, change(reason))?;
                (Some(current), next)
            }
            RolloutAction::Resume { model, reason } => {
                let current = in_force(&rollouts, &model)?;
                let next = lifecycle::resume(&current, change(reason))?;
                (Some(current), next)
            }
            RolloutAction::Rollback { model, reason } => {
                let current = in_force(&rollouts, &model)?;
                let next = lifecycle::rollback(&current, change(reason))?;
                (Some(current), next)
            }
        };
        // Written by this command's own audit chain (`control/<user@host>`).
        let (_stopper, shutdown) = Shutdown::new();
        let audit = Arc::new(
            streamscore_kafka::audit::AuditWriter::new(
                &kafka,
                &endpoints.registry_url,
                &audit_topic,
                "control",
                &who(),
                &shutdown,
            )
            .await
            .context("opening the audit log")?,
        );
        let publisher = Publisher::new(&kafka, &endpoints.registry_url, &rollouts_topic, Arc::clone(&audit), &shutdown)
            .await
            .context("writing to the control topic")?;
        publisher.publish(current.as_ref(), &next).await.context("writing the rollout")?;
        audit.close(HashMap::new()).await.context("closing the audit chain")?;
        print!("{}", describe(&next));
        Ok(())
    }
}

/// The rollout of `model` in force, or an error saying how to start one.
fn in_force(rollouts: &streamscore_control::Rollouts, model: &str) -> Result<Rollout> {
    rollouts
        .get(model)
        .map(|r| r.as_ref().clone())
        .ok_or_else(|| streamscore_control::RolloutError::NoRollout(model.to_owned()).into())
}

/// A rollout for people: what answers, where it is, the last change and its figures.
pub(crate) fn describe(rollout: &Rollout) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  {}  generation {}  rollout {}",
        rollout.model,
        rollout.status.code(),
        rollout.generation,
        rollout.rollout_id
    );
    let _ = writeln!(out, "  split      {}", split::describe(&rollout.split));
    if let Some(candidate) = &rollout.candidate {
        let _ = writeln!(out, "  candidate  {candidate} over incumbent {}", rollout.incumbent);
    }
    if let Some(shadow) = &rollout.shadow {
        let _ = writeln!(out, "  shadow     {shadow} (scored beside, answering nothing)");
    }
    // A settled rollout (promoted, rolled back) has no step in progress.
    if !rollout.steps.is_empty()
        && matches!(rollout.status, RolloutStatus::Shadow | RolloutStatus::Canary | RolloutStatus::Paused)
    {
        let steps: Vec<String> = rollout
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| if i32::try_from(i).ok() == Some(rollout.step) { format!("[{s}%]") } else { format!("{s}%") })
            .collect();
        let in_step = (streamscore_contracts::now_micros() - rollout.step_started_at) / 1_000_000;
        let _ = writeln!(
            out,
            "  steps      {} ({}); {in_step} s in this step, {} s and {} candidate outcomes needed",
            steps.join(" "),
            match rollout.status {
                RolloutStatus::Shadow => "shadow",
                RolloutStatus::Paused => "paused",
                _ => "canary",
            },
            rollout.step_secs,
            rollout.min_samples
        );
    }
    let _ = writeln!(out, "  changed    by {}: {}", rollout.changed_by, rollout.reason);
    let mut figures: Vec<(&String, &String)> = rollout.figures.iter().collect();
    figures.sort();
    for (name, value) in figures {
        let _ = writeln!(out, "  {name:<18} {value}");
    }
    out
}
