//! How a rollout moves: every change is a new state (the next generation) computed here from
//! the current one, by the command or by the controller; nothing is written here.
//!
//! ```text
//! split ─▶ EXPERIMENT (fixed shares)
//! start ─▶ SHADOW ──gates hold──▶ CANARY step 0 ─▶ … ─▶ CANARY last step ─▶ PROMOTED
//!            │                        │
//!            └──── a gate fails, or rollback ─────────▶ ROLLED_BACK
//! pause: PAUSED (split kept) ── resume ─▶ where it was;  promote: PROMOTED at once
//! ```

use std::collections::HashMap;

use streamscore_contracts::{Rollout, RolloutStatus, Share};

use crate::split::{self, BASIS_POINTS};

/// Who made a change, why, when, and the gate figures of the moment.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub by: String,
    pub reason: String,
    pub at: i64,
    pub figures: HashMap<String, String>,
}

/// Why a rollout command cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Split(#[from] split::SplitError),
    #[error("model {0} has no rollout; start one with `streamscore rollout start {0}@<version>` or `rollout split`")]
    NoRollout(String),
    #[error("model {model}: {version} is already what answers (status {status})")]
    AlreadyIncumbent { model: String, version: String, status: &'static str },
    #[error("model {model} is in a fixed experiment ({split}); end it first: `rollout promote`, `rollout rollback` or `rollout split` with one version at 100")]
    Experiment { model: String, split: String },
    #[error("model {model}: a rollout of {candidate} is {status}; roll it back or promote it first")]
    InProgress { model: String, candidate: String, status: &'static str },
    #[error("model {model}: cannot {action} a rollout that is {status}")]
    Status { model: String, action: &'static str, status: &'static str },
    #[error("steps {0:?}: each step is a percent in 1..=100, increasing, ending at 100")]
    Steps(Vec<i32>),
}

fn shares_of(pairs: &[(&str, i32)]) -> Vec<Share> {
    pairs
        .iter()
        .filter(|(_, basis_points)| *basis_points > 0)
        .map(|(version, basis_points)| Share { version: (*version).to_owned(), basis_points: *basis_points })
        .collect()
}

/// The version that answers everything under `rollout` (its split's only version), if one does.
pub fn answering(rollout: &Rollout) -> Option<&str> {
    match rollout.split.as_slice() {
        [only] => Some(&only.version),
        _ => None,
    }
}

fn next(current: Option<&Rollout>, model: &str, rollout_id: String, change: Change) -> Rollout {
    Rollout {
        model: model.to_owned(),
        generation: current.map_or(1, |c| c.generation + 1),
        rollout_id,
        status: RolloutStatus::Paused,
        incumbent: String::new(),
        candidate: None,
        split: Vec::new(),
        shadow: None,
        steps: Vec::new(),
        step: -1,
        step_secs: 0,
        min_samples: 0,
        step_started_at: change.at,
        resume_status: None,
        changed_at: change.at,
        changed_by: change.by,
        reason: change.reason,
        figures: change.figures,
    }
}

/// A fixed split (an A/B experiment): `shares` from now on, for requests without an explicit
/// version or a pin. The version with the largest share is its incumbent.
pub fn experiment(
    current: Option<&Rollout>,
    model: &str,
    shares: Vec<Share>,
    change: Change,
) -> Result<Rollout, RolloutError> {
    split::check(&shares)?;
    let incumbent = shares.iter().max_by_key(|s| s.basis_points).map(|s| s.version.clone()).unwrap_or_default();
    let mut rollout = next(current, model, uuid::Uuid::new_v4().to_string(), change);
    rollout.status = if shares.len() == 1 { RolloutStatus::Promoted } else { RolloutStatus::Experiment };
    rollout.incumbent = incumbent;
    rollout.split = shares;
    Ok(rollout)
}

/// Starts rolling out `candidate` over `incumbent` (what answers now): shadow first.
#[allow(clippy::too_many_arguments)]
pub fn start(
    current: Option<&Rollout>,
    model: &str,
    incumbent: &str,
    candidate: &str,
    steps: Vec<i32>,
    step_secs: i64,
    min_samples: i64,
    change: Change,
) -> Result<Rollout, RolloutError> {
    if let Some(current) = current {
        match current.status {
            RolloutStatus::Experiment => {
                return Err(RolloutError::Experiment {
                    model: model.to_owned(),
                    split: split::describe(&current.split),
                })
            }
            RolloutStatus::Shadow | RolloutStatus::Canary | RolloutStatus::Paused => {
                return Err(RolloutError::InProgress {
                    model: model.to_owned(),
                    candidate: current.candidate.clone().unwrap_or_default(),
                    status: current.status.code(),
                })
            }
            RolloutStatus::Promoted | RolloutStatus::RolledBack => {}
        }
    }
    if candidate == incumbent {
        return Err(RolloutError::AlreadyIncumbent {
            model: model.to_owned(),
            version: candidate.to_owned(),
            status: current.map_or("the default", |c| c.status.code()),
        });
    }
    let valid = !steps.is_empty()
        && steps.windows(2).all(|w| w[0] < w[1])
        && steps.iter().all(|s| (1..=100).contains(s))
        && steps.last() == Some(&100);
    if !valid {
        return Err(RolloutError::Steps(steps));
    }
    let mut rollout = next(current, model, uuid::Uuid::new_v4().to_string(), change);
    rollout.status = RolloutStatus::Shadow;
    rollout.incumbent = incumbent.to_owned();
    rollout.candidate = Some(candidate.to_owned());
    rollout.split = shares_of(&[(incumbent, BASIS_POINTS)]);
    rollout.shadow = Some(candidate.to_owned());
    rollout.steps = steps;
    rollout.step = -1;
    rollout.step_secs = step_secs.max(0);
    rollout.min_samples = min_samples.max(0);
    Ok(rollout)
}

/// The candidate's share at `step` of `rollout`, in basis points.
fn step_share(rollout: &Rollout, step: i32) -> i32 {
    usize::try_from(step).ok().and_then(|i| rollout.steps.get(i)).map_or(0, |percent| percent * 100)
}

fn canary(current: &Rollout, step: i32, change: Change) -> Rollout {
    let mut rollout = next(Some(current), &current.model, current.rollout_id.clone(), change);
    let candidate = current.candidate.clone().unwrap_or_default();
    let share = step_share(current, step);
    rollout.status = RolloutStatus::Canary;
    rollout.incumbent = current.incumbent.clone();
    rollout.candidate = current.candidate.clone();
    // The incumbent first: as the candidate's share grows its range grows downwards, so a
    // request the candidate answered at one step it answers at every later step.
    rollout.split = shares_of(&[(&current.incumbent, BASIS_POINTS - share), (&candidate, share)]);
    rollout.shadow = Some(candidate);
    rollout.steps = current.steps.clone();
    rollout.step = step;
    rollout.step_secs = current.step_secs;
    rollout.min_samples = current.min_samples;
    rollout
}

/// The next step: SHADOW → the first canary step; a canary step → the next; the last step →
/// PROMOTED.
pub fn advance(current: &Rollout, change: Change) -> Result<Rollout, RolloutError> {
    match current.status {
        RolloutStatus::Shadow => Ok(canary(current, 0, change)),
        RolloutStatus::Canary => {
            let next_step = current.step + 1;
            if usize::try_from(next_step).is_ok_and(|i| i < current.steps.len())
                && step_share(current, next_step) < BASIS_POINTS
            {
                Ok(canary(current, next_step, change))
            } else {
                promote(current, change)
            }
        }
        status => Err(RolloutError::Status { model: current.model.clone(), action: "advance", status: status.code() }),
    }
}

/// The candidate answers everything.
pub fn promote(current: &Rollout, change: Change) -> Result<Rollout, RolloutError> {
    let candidate = match (&current.status, &current.candidate) {
        (RolloutStatus::Shadow | RolloutStatus::Canary | RolloutStatus::Paused, Some(candidate)) => candidate.clone(),
        // An experiment: its largest share wins.
        (RolloutStatus::Experiment, _) => current.incumbent.clone(),
        (RolloutStatus::Paused, None) => match current.resume_status {
            Some(RolloutStatus::Experiment) => current.incumbent.clone(),
            _ => {
                return Err(RolloutError::Status { model: current.model.clone(), action: "promote", status: "PAUSED" })
            }
        },
        (status, _) => {
            return Err(RolloutError::Status { model: current.model.clone(), action: "promote", status: status.code() })
        }
    };
    let mut rollout = next(Some(current), &current.model, current.rollout_id.clone(), change);
    rollout.status = RolloutStatus::Promoted;
    rollout.incumbent = current.incumbent.clone();
    rollout.candidate = current.candidate.clone();
    rollout.split = shares_of(&[(&candidate, BASIS_POINTS)]);
    rollout.steps = current.steps.clone();
    rollout.step = current.step;
    Ok(rollout)
}

/// The incumbent answers everything again.
pub fn rollback(current: &Rollout, change: Change) -> Result<Rollout, RolloutError> {
    if matches!(current.status, RolloutStatus::RolledBack) {
        return Err(RolloutError::Status { model: current.model.clone(), action: "roll back", status: "ROLLED_BACK" });
    }
    let mut rollout = next(Some(current), &current.model, current.rollout_id.clone(), change);
    rollout.status = RolloutStatus::RolledBack;
    rollout.incumbent = current.incumbent.clone();
    rollout.candidate = current.candidate.clone();
    rollout.split = shares_of(&[(&current.incumbent, BASIS_POINTS)]);
    rollout.steps = current.steps.clone();
    rollout.step = current.step;
    Ok(rollout)
}

/// Holds the rollout where it is (split and shadow kept; the controller leaves it alone).
pub fn pause(current: &Rollout, change: Change) -> Result<Rollout, RolloutError> {
    if !matches!(current.status, RolloutStatus::Experiment | RolloutStatus::Shadow | RolloutStatus::Canary) {
        return Err(RolloutError::Status {
            model: current.model.clone(),
            action: "pause",
            status: current.status.code(),
        });
    }
    let mut rollout = current.clone();
    let (at, by, reason, figures) = (change.at, change.by, change.reason, change.figures);
    rollout.generation += 1;
    rollout.status = RolloutStatus::Paused;
    rollout.resume_status = Some(current.status);
    rollout.changed_at = at;
    rollout.changed_by = by;
    rollout.reason = reason;
    rollout.figures = figures;
    Ok(rollout)
}

/// Goes on where a pause held it; the step's time starts again.
pub fn resume(current: &Rollout, change: Change) -> Result<Rollout, RolloutError> {
    let Some(status) = current.resume_status.filter(|_| current.status == RolloutStatus::Paused) else {
        return Err(RolloutError::Status {
            model: current.model.clone(),
            action: "resume",
            status: current.status.code(),
        });
    };
    let mut rollout = current.clone();
    rollout.generation += 1;
    rollout.status = status;
    rollout.resume_status = None;
    rollout.step_started_at = change.at;
    rollout.changed_at = change.at;
    rollout.changed_by = change.by;
    rollout.reason = change.reason;
    rollout.figures = change.figures;
    Ok(rollout)
}

/// The audit entry kind of a change to `to`.
pub fn audit_kind(from: Option<&Rollout>, to: &Rollout) -> &'static str {
    match to.status {
        RolloutStatus::Shadow => "ROLLOUT_STARTED",
        RolloutStatus::Experiment => "ROLLOUT_SPLIT",
        RolloutStatus::Canary if from.is_some_and(|f| f.status == RolloutStatus::Paused) => "ROLLOUT_RESUMED",
        RolloutStatus::Canary => "ROLLOUT_STEP",
        RolloutStatus::Paused => "ROLLOUT_PAUSED",
        RolloutStatus::Promoted => "ROLLOUT_PROMOTED",
        RolloutStatus::RolledBack => "ROLLOUT_ROLLED_BACK",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(reason: &str) -> Change {
        Change { by: "ops@host".to_owned(), reason: reason.to_owned(), at: 1_000, figures: HashMap::new() }
    }

    fn share_of(rollout: &Rollout, version: &str) -> i32 {
        rollout.split.iter().find(|s| s.version == version).map_or(0, |s| s.basis_points)
    }

    #[test]
    fn a_rollout_goes_from_shadow_through_its_steps_to_promoted() {
        let started = start(None, "fraud", "1", "2", vec![5, 25, 100], 10, 100, change("go")).expect("starts");
        assert_eq!(
            (started.status, started.generation, started.shadow.as_deref()),
            (RolloutStatus::Shadow, 1, Some("2"))
        );
        assert_eq!(share_of(&started, "1"), 10_000, "the shadow answers nothing");
        let step0 = advance(&started, change("gates held")).expect("a step");
        assert_eq!((step0.status, step0.step, share_of(&step0, "2")), (RolloutStatus::Canary, 0, 500));
        assert_eq!(step0.rollout_id, started.rollout_id);
        let step1 = advance(&step0, change("gates held")).expect("a step");
        assert_eq!((step1.step, share_of(&step1, "2"), step1.generation), (1, 2_500, 3));
        let promoted = advance(&step1, change("gates held")).expect("promoted: the last step is 100%");
        assert_eq!((promoted.status, answering(&promoted)), (RolloutStatus::Promoted, Some("2")));
        // The candidate's range only grows: a request it answered, it keeps answering.
        for id in (0..2_000).map(|i| format!("req-{i}")) {
            let at0 = split::choose(&step0.split, "fraud", &id);
            if at0 == Some("2") {
                assert_eq!(split::choose(&step1.split, "fraud", &id), Some("2"), "{id}");
            }
        }
    }

    #[test]
    fn pause_resume_rollback_and_refusals() {
        let started = start(None, "fraud", "1", "2", vec![10, 100], 10, 100, change("go")).expect("starts");
        let step = advance(&started, change("held")).expect("step");
        let paused = pause(&step, change("weekend")).expect("pauses");
        assert_eq!(
            (paused.status, paused.split.clone()),
            (RolloutStatus::Paused, step.split.clone()),
            "the split is kept"
        );
        assert!(advance(&paused, change("x")).is_err(), "the controller leaves a paused rollout alone");
        let resumed = resume(&paused, Change { at: 5_000, ..change("monday") }).expect("resumes");
        assert_eq!((resumed.status, resumed.step_started_at), (RolloutStatus::Canary, 5_000));
        assert_eq!(audit_kind(Some(&paused), &resumed), "ROLLOUT_RESUMED");
        let back = rollback(&resumed, change("scores diverge")).expect("rolls back");
        assert_eq!((back.status, answering(&back), back.shadow.clone()), (RolloutStatus::RolledBack, Some("1"), None));
        assert!(matches!(
            start(Some(&step), "fraud", "1", "3", vec![100], 1, 1, change("x")),
            Err(RolloutError::InProgress { .. })
        ));
        assert!(matches!(
            start(Some(&back), "fraud", "1", "1", vec![100], 1, 1, change("x")),
            Err(RolloutError::AlreadyIncumbent { .. })
        ));
        assert!(matches!(
            start(None, "fraud", "1", "2", vec![50, 20, 100], 1, 1, change("x")),
            Err(RolloutError::Steps(_))
        ));
        assert!(matches!(start(None, "fraud", "1", "2", vec![50], 1, 1, change("x")), Err(RolloutError::Steps(_))));
        let ab =
            experiment(None, "fraud", split::parse("1=80,2=20").expect("split"), change("a/b")).expect("experiment");
        assert_eq!((ab.status, ab.incumbent.as_str()), (RolloutStatus::Experiment, "1"));
        assert!(matches!(
            start(Some(&ab), "fraud", "1", "2", vec![100], 1, 1, change("x")),
            Err(RolloutError::Experiment { .. })
        ));
        let settled = promote(&ab, change("1 wins")).expect("promotes");
        assert_eq!(answering(&settled), Some("1"));
    }
}
