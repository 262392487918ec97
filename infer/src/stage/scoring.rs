//! Batch scoring: one batcher per loaded version, each batch scored off the reactor (shadow
//! versions on the same rows), one outcome per request and shadow, written and committed in
//! the audit log before the requests are acknowledged; rejections.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Explained requests one explanation lane scores and explains together at most (what is
/// waiting when the lane is free; each explanation is 2^16 rows for the shipped models).
pub(super) const EXPLAIN_BATCH: usize = 8;

/// Starts the batcher of a loaded version (with its shadow, if one is configured and loaded),
/// and its explanation lane.
pub(super) fn start_batcher(
    shared: &Arc<Shared>,
    key: &str,
    models: &HashMap<String, Arc<Loaded>>,
    batchers: &mut HashMap<String, Lanes>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let Some(loaded) = models.get(key).cloned() else { return };
    shared
        .loaded
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.to_owned(), Arc::clone(&loaded));
    let version = Arc::clone(&loaded.version);
    let key = key.to_owned();
    let (tx, rx) = mpsc::channel::<Queued>(shared.config.batch.max_batch * 4);
    let (explain_tx, explain_rx) = mpsc::channel::<Queued>(shared.config.batch.max_batch * 4);
    shared
        .batchers
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.clone(), (tx.downgrade(), explain_tx.downgrade()));
    batchers.insert(key.clone(), Lanes { plain: tx, explain: explain_tx });
    let configured_shadow = shared
        .config
        .shadow
        .get(&version.meta.name)
        .filter(|v| **v != version.meta.version)
        .and_then(|v| models.get(&format!("{}/{v}", version.meta.name)).cloned());
    tasks.spawn(explain_lane(Arc::clone(shared), Arc::clone(&loaded), configured_shadow.clone(), explain_rx));
    let shared_for_batches = Arc::clone(shared);
    let config = shared.config.batch;
    tasks.spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        let order = |items: &[Queued]| {
            quota::fair::fair_order(items.iter().map(|i| (i.validated.request.tenant.as_str(), i.tier)))
        };
        batcher::run_fair(rx, config, order, |batch| {
            let shared = Arc::clone(&shared_for_batches);
            let loaded = Arc::clone(&loaded);
            // The model's rollout, while it shadows a candidate, decides the shadow per batch.
            let shadow = rollout_shadow(&shared, &loaded.version).or_else(|| configured_shadow.clone());
            running.spawn(async move {
                guarded(&shared, &loaded, shadow.as_deref(), batch, false).await;
            });
        })
        .await;
        while running.join_next().await.is_some() {}
    });
}

/// The version `version`'s model rollout shadows now, if it is loaded here (a version does not
/// shadow itself: the candidate's own batches have none).
fn rollout_shadow(shared: &Shared, version: &ModelVersion) -> Option<Arc<Loaded>> {
    let rollouts = shared.config.rollouts.current();
    let shadow = rollouts.shadow_of(&version.meta.name).filter(|v| *v != version.meta.version)?;
    let loaded = shared.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    loaded.get(&format!("{}/{shadow}", version.meta.name)).cloned()
}

/// The explanation lane of a version: the explained requests waiting (up to
/// [`EXPLAIN_BATCH`]) are scored and explained together, one batch at a time, apart from the
/// version's other batches; the explanations run on the blocking pool, off the reactor.
async fn explain_lane(
    shared: Arc<Shared>,
    loaded: Arc<Loaded>,
    shadow: Option<Arc<Loaded>>,
    mut rx: mpsc::Receiver<Queued>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < EXPLAIN_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let shadow = rollout_shadow(&shared, &loaded.version).or_else(|| shadow.clone());
        guarded(&shared, &loaded, shadow.as_deref(), batch, true).await;
    }
}

/// Scores a batch; a failure or a panic (a scorer, the outcome code) stops the stage with an
/// error naming it, and the batch's requests are never acknowledged, so nothing is lost.
async fn guarded(shared: &Shared, loaded: &Loaded, shadow: Option<&Loaded>, batch: Vec<Queued>, explain: bool) {
    let scored = std::panic::AssertUnwindSafe(score_batch(shared, loaded, shadow, batch, explain)).catch_unwind().await;
    let error = match scored {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(payload) => InferError::Panicked {
            what: format!("a batch of {}", loaded.version.key()),
            message: panic_message(payload.as_ref()),
        },
    };
    let _ = shared.errors.send(error);
}

/// Appends a request's input row for `version` to `input`: the vector ingest checked, when it
/// checked it against this version (validated once); else the features checked here, as
/// for an event an ingest older than version 2 of `ValidatedRequest` wrote, or one routed to
/// another version than ingest expected (a pin changed in between).
pub(super) fn append_row(
    input: &mut Vec<f32>,
    validated: &ValidatedRequest,
    version: &ModelVersion,
) -> Result<(), streamscore_modelstore::FeatureError> {
    match validated.vector_for(&version.meta.version, version.meta.features.len()) {
        Some(vector) => input.extend_from_slice(vector),
        None => input.extend_from_slice(&version.check(&validated.request.features)?),
    }
    Ok(())
}

/// The lane of `version`'s model's fallback (its explanation lane for `explain`, when it
/// has a baseline), when the model has a fallback other than `version` that is loaded here.
fn fallback_lane(shared: &Shared, version: &ModelVersion, explain: bool) -> Option<(String, mpsc::Sender<Queued>)> {
    let fallback = shared.store.current().fallback(&version.meta.name)?;
    let key = fallback.key();
    if key == version.key() {
        return None;
    }
    let batchers = shared.batchers.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (plain, explaining) = batchers.get(&key)?;
    let lane = if explain && fallback.meta.baseline_row().is_some() { explaining } else { plain };
    lane.upgrade().map(|tx| (key.clone(), tx))
}

/// Scores a batch (and its shadow) and writes an outcome per request; `explain`: the batch is
/// an explanation lane's, and each scored outcome gets its explanation.
pub(super) async fn score_batch(
    shared: &Shared,
    loaded: &Loaded,
    shadow: Option<&Loaded>,
    mut batch: Vec<Queued>,
    explain: bool,
) -> Result<(), InferError> {
    let started = Instant::now();
    let features = loaded.scorer.features();
    let mut input = Vec::with_capacity(batch.len() * features);
    let mut rows: Vec<Result<std::ops::Range<usize>, String>> = Vec::with_capacity(batch.len());
    for item in &batch {
        let start = input.len();
        match append_row(&mut input, &item.validated, &loaded.version) {
            Ok(()) => rows.push(Ok(start..input.len())),
            Err(e) => rows.push(Err(e.to_string())),
        }
    }
    let n = input.len() / features.max(1);
    // One copy of the batch's rows, shared by the primary, the shadow and the outcomes.
    let input: Arc<[f32]> = input.into();
    let panicked = |version: &ModelVersion| {
        let what = format!("the scorer of {}", version.key());
        move |message| InferError::Panicked { what, message }
    };
    let primary = score(Arc::clone(&loaded.scorer), Arc::clone(&input), n).await.map_err(panicked(&loaded.version))?;
    let inference_us = micros(started.elapsed());
    // The version failed on this batch: the model's fallback scores its requests instead (its
    // outcomes flagged FALLBACK), when it has one loaded; else they are FAILED.
    if let Err(e) = &primary {
        if let Some((to, tx)) = fallback_lane(shared, &loaded.version, explain) {
            let from = loaded.version.key();
            let detail = format!("{from} failed: {e}; scored by the fallback {to}");
            let (mut kept, mut kept_rows) = (Vec::new(), Vec::new());
            for (mut item, row) in batch.into_iter().zip(rows) {
                if row.is_ok() {
                    item.fallback = Some((from.clone(), detail.clone()));
                    tx.send(item).await.map_err(|_| InferError::Delivery(format!("batcher of {to} stopped")))?;
                } else {
                    kept.push(item);
                    kept_rows.push(row);
                }
            }
            (batch, rows) = (kept, kept_rows);
        }
    }
    // A shadow whose features are laid out as the primary's scores the same rows; another
    // layout (other features, or the same in another order) gets rows of its own.
    let shadow_rows = shadow.filter(|s| !same_layout(&s.version, &loaded.version)).map(|s| {
        let mut own = Vec::with_capacity(input.len());
        let mut ranges = Vec::with_capacity(batch.len());
        for (item, row) in batch.iter().zip(&rows) {
            if row.is_err() {
                continue;
            }
            let start = own.len();
            match append_row(&mut own, &item.validated, &s.version) {
                Ok(()) => ranges.push(Ok(start..own.len())),
                Err(e) => {
                    own.truncate(start);
                    ranges.push(Err(format!("{} {}: {e}", s.version.meta.name, s.version.meta.version)));
                }
            }
        }
        (Arc::<[f32]>::from(own), ranges)
    });
    let shadow_scores = match (shadow, &shadow_rows) {
        (Some(s), None) => {
            Some((s, score(Arc::clone(&s.scorer), Arc::clone(&input), n).await.map_err(panicked(&s.version))?))
        }
        (Some(s), Some((own, ranges))) => {
            let rows = ranges.iter().filter(|r| r.is_ok()).count();
            Some((s, score(Arc::clone(&s.scorer), Arc::clone(own), rows).await.map_err(panicked(&s.version))?))
        }
        (None, _) => None,
    };
    let explanations = match (explain, &primary) {
        (true, Ok(_)) => Some(
            explain_rows(loaded, Arc::clone(&input), rows.iter().filter_map(|r| r.clone().ok()).collect())
                .await
                .map_err(panicked(&loaded.version))?,
        ),
        _ => None,
    };
    metrics::histogram!("streamscore_infer_batch_size").record(batch.len() as f64);
    metrics::histogram!("streamscore_infer_inference_seconds", "model" => loaded.version.key())
        .record(started.elapsed().as_secs_f64());

    let mut row_index = 0;
    let mut shadow_row_index = 0;
    let quotas = shared.config.policy.is_some();
    let mut events = Vec::with_capacity(batch.len() * if shadow.is_some() { 2 } else { 1 });
    let mut acks = Vec::with_capacity(batch.len());
    // Per batch, not per record: the metric handles, the shadow's event kind, the counts.
    let queue_wait = metrics::histogram!("streamscore_infer_queue_wait_seconds");
    let shadow_kind = shadow.map(|s| format!("shadow/{}", s.version.meta.version));
    let mut counts = StatusCounts::default();
    for (item, row) in batch.into_iter().zip(&rows) {
        let queue_wait_us = micros(started.duration_since(item.enqueued));
        queue_wait.record(queue_wait_us as f64 / 1e6);
        let (outcome, seen) = match row {
            Ok(range) => {
                let i = row_index;
                row_index += 1;
                // The exact features the model saw: written from the row by the encoder, for
                // the prediction and its shadow alike (no map per request).
                let seen = Some((&*loaded.version, &input[range.clone()]));
                let mut outcome = outcome_for(shared, loaded, &item, "prediction", false);
                outcome.routed_by.clone_from(&item.routed_by);
                if let Some((from, detail)) = &item.fallback {
                    outcome.reason = Some(OutcomeReason::Fallback.code().to_owned());
                    outcome.detail = Some(detail.clone());
                    metrics::counter!(
                        "streamscore_infer_fallbacks_total",
                        "model" => loaded.version.meta.name.clone(),
                        "from" => from.clone(),
                        "to" => loaded.version.key(),
                    )
                    .increment(1);
                }
                if let Some(routed) = &item.routed_by {
                    metrics::counter!(
                        "streamscore_rollout_outcomes_total",
                        "model" => loaded.version.meta.name.clone(),
                        "version" => loaded.version.meta.version.clone(),
                        "step" => routed.step.to_string(),
                    )
                    .increment(1);
                }
                outcome.batch_size = i32::try_from(rows.len()).unwrap_or(i32::MAX);
                outcome.queue_wait_us = queue_wait_us;
                outcome.inference_us = inference_us;
                fill_score(&mut outcome, &loaded.version, primary.as_ref().map(|s| s[i]));
                if let Some(explained) = explanations.as_ref().and_then(|e| e.get(i)) {
                    match explained {
                        Ok(explanation) => outcome.explanation = Some(explanation.clone()),
                        Err(e) => {
                            outcome.status = OutcomeStatus::Failed;
                            outcome.reason = Some(OutcomeReason::ModelError.code().to_owned());
                            outcome.detail = Some(e.to_string());
                        }
                    }
                }
                if let (Some((s, scores)), Some(kind)) = (&shadow_scores, &shadow_kind) {
                    let mut shadow_outcome = outcome_for(shared, s, &item, kind, true);
                    shadow_outcome.batch_size = outcome.batch_size;
                    shadow_outcome.queue_wait_us = queue_wait_us;
                    // The shadow's own row (and the features it saw), when its layout differs.
                    let mut shadow_seen = seen;
                    match &shadow_rows {
                        None => fill_score(&mut shadow_outcome, &s.version, scores.as_ref().map(|s| s[i])),
                        Some((own, ranges)) => match &ranges[i] {
                            Ok(range) => {
                                let j = shadow_row_index;
                                shadow_row_index += 1;
                                shadow_seen = Some((&*s.version, &own[range.clone()]));
                                fill_score(&mut shadow_outcome, &s.version, scores.as_ref().map(|s| s[j]));
                            }
                            Err(detail) => {
                                shadow_seen = None;
                                shadow_outcome.status = OutcomeStatus::Rejected;
                                shadow_outcome.reason = Some(OutcomeReason::FeaturesInvalid.code().to_owned());
                                shadow_outcome.detail = Some(detail.clone());
                            }
                        },
                    }
                    shared.stats.shadow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    events.push(send(shared, &shadow_outcome, shadow_seen, &item.ack).await?);
                }
                (outcome, seen)
            }
            Err(detail) => {
                let mut outcome = outcome_for(shared, loaded, &item, "prediction", false);
                outcome.routed_by.clone_from(&item.routed_by);
                outcome.status = OutcomeStatus::Rejected;
                outcome.reason = Some(OutcomeReason::FeaturesInvalid.code().to_owned());
                outcome.detail = Some(detail.clone());
                (outcome, None)
            }
        };
        counts.add(outcome.status);
        events.push(send(shared, &outcome, seen, &item.ack).await?);
        // The request has its answer (written; acknowledged by the broker shortly).
        if quotas {
            let _ = shared.released.send(item.validated.request.tenant);
        }
        acks.push(item.ack);
    }
    counts.record(shared, &loaded.version.meta.name, &loaded.version.meta.version, loaded.scorer.backend());
    // One audit entry commits the batch's outputs; each request is done once it is acknowledged.
    shared.committer.audit().commit(events, acks).await?;
    Ok(())
}

/// Whether two versions take the same input row: the same features in the same order.
fn same_layout(a: &ModelVersion, b: &ModelVersion) -> bool {
    a.meta.features.len() == b.meta.features.len()
        && a.meta.features.iter().zip(&b.meta.features).all(|(x, y)| x.name == y.name)
}

/// Explains the rows `ranges` of `input` by `loaded`, on the blocking pool, one after the
/// other; per row its explanation or why it has none. `Err(message)`: a panic.
pub(super) async fn explain_rows(
    loaded: &Loaded,
    input: Arc<[f32]>,
    ranges: Vec<std::ops::Range<usize>>,
) -> Result<Vec<Result<streamscore_contracts::Explanation, crate::explain::ExplainError>>, String> {
    let scorer = Arc::clone(&loaded.scorer);
    let version = Arc::clone(&loaded.version);
    let model = version.key();
    let explained = tokio::task::spawn_blocking(move || {
        ranges
            .into_iter()
            .map(|range| {
                let started = std::time::Instant::now();
                let explained = crate::explain::explain_row(scorer.as_ref(), &version, &input[range]);
                metrics::histogram!("streamscore_infer_explanation_seconds", "model" => version.key())
                    .record(started.elapsed().as_secs_f64());
                explained
            })
            .collect()
    })
    .await;
    match explained {
        Ok(all) => Ok(all),
        Err(e) if e.is_panic() => Err(panic_message(e.into_panic().as_ref())),
        Err(e) => Err(format!("explaining a batch of {model}: {e}")),
    }
}

/// The most rows a CPU backend scores inline, on the async worker that assembled the batch:
/// tract scores 256 rows of the shipped models in well under 100 µs, less than a hand-off to
/// the blocking pool and back costs in thread wake-ups (measured in the drain bench).
/// Larger batches, and every CUDA batch (it waits on the device), go to the blocking pool.
pub(super) const INLINE_ROWS: usize = 256;

/// Scores a batch: inline for a small CPU batch, else off the reactor. `Ok(Err(_))`: the model failed (the rows get FAILED outcomes);
/// `Err(message)`: the scorer panicked.
pub(super) async fn score(
    scorer: Arc<dyn Scorer>,
    input: Arc<[f32]>,
    rows: usize,
) -> Result<Result<Vec<f32>, BackendError>, String> {
    if rows == 0 {
        return Ok(Ok(Vec::new()));
    }
    if rows <= INLINE_ROWS && scorer.backend() == "cpu" {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scorer.score(&input, rows)))
            .map_err(|payload| panic_message(payload.as_ref()));
    }
    match tokio::task::spawn_blocking(move || scorer.score(&input, rows)).await {
        Ok(scores) => Ok(scores),
        Err(e) if e.is_panic() => Err(panic_message(e.into_panic().as_ref())),
        Err(e) => Ok(Err(BackendError::Run { rows, reason: format!("scoring task failed: {e}") })),
    }
}

pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(super) fn outcome_for(
    shared: &Shared,
    loaded: &Loaded,
    item: &Item,
    kind: &str,
    shadow: bool,
) -> PredictionOutcome {
    let request = &item.validated.request;
    let version = &loaded.version;
    let lineage = Lineage::derive(
        item.validated.lineage.source.clone(),
        Stage::Infer,
        kind,
        &shared.config.instance,
        Some(request.request_id.clone()),
        Some(request.tenant.clone()),
    );
    let mut outcome = PredictionOutcome::new(lineage, request, OutcomeStatus::Scored);
    outcome.shadow = shadow;
    outcome.model_version = Some(version.meta.version.clone());
    outcome.model_sha256 = Some(version.meta.sha256.clone());
    outcome.backend = Some(loaded.scorer.backend().to_owned());
    outcome
}

pub(super) fn fill_score(outcome: &mut PredictionOutcome, version: &ModelVersion, score: Result<f32, &BackendError>) {
    match score {
        Ok(score) => {
            let score = f64::from(score);
            outcome.score = Some(score);
            outcome.label = Some(version.meta.label(score).to_owned());
        }
        Err(e) => {
            outcome.status = OutcomeStatus::Failed;
            outcome.reason = Some(OutcomeReason::ModelError.code().to_owned());
            outcome.detail = Some(e.to_string());
        }
    }
}

/// Outcomes of one model version by status, counted once per batch.
#[derive(Debug, Default)]
pub(super) struct StatusCounts {
    scored: u64,
    rejected: u64,
    failed: u64,
}

impl StatusCounts {
    pub(super) fn add(&mut self, status: OutcomeStatus) {
        match status {
            OutcomeStatus::Scored => self.scored += 1,
            OutcomeStatus::Rejected => self.rejected += 1,
            OutcomeStatus::Failed => self.failed += 1,
        }
    }

    /// Adds the counts to the live figures and `streamscore_infer_predictions_total`;
    /// `backend`: what scored them (`none` for rejections before scoring).
    pub(super) fn record(&self, shared: &Shared, model: &str, version: &str, backend: &'static str) {
        use std::sync::atomic::Ordering::Relaxed;
        for (status, n, live) in [
            ("scored", self.scored, &shared.stats.scored),
            ("rejected", self.rejected, &shared.stats.rejected),
            ("failed", self.failed, &shared.stats.failed),
        ] {
            if n == 0 {
                continue;
            }
            live.fetch_add(n, Relaxed);
            metrics::counter!(
                "streamscore_infer_predictions_total",
                "model" => model.to_owned(),
                "version" => version.to_owned(),
                "backend" => backend,
                "status" => status,
            )
            .increment(n);
        }
    }
}

/// Counts one rejection written before scoring. Labels stay bounded: a model or version the
/// store does not have is `_unknown`, whatever the request named.
pub(super) fn count_rejection(shared: &Shared, outcome: &PredictionOutcome, reason: OutcomeReason) {
    let (model, version) = match reason {
        OutcomeReason::UnknownModel => ("_unknown", "_unknown"),
        OutcomeReason::UnknownModelVersion => (outcome.model.as_str(), "_unknown"),
        _ => (outcome.model.as_str(), outcome.model_version.as_deref().unwrap_or_default()),
    };
    StatusCounts { rejected: 1, ..StatusCounts::default() }.record(shared, model, version, "none");
}

/// Enqueues an outcome of the request `ack` belongs to; returns its event id and the hash its
/// commitment carries.
/// Writes an outcome; `seen`: the version and input row whose features it reports, written
/// straight from the row (else the outcome's own map).
pub(super) async fn send(
    shared: &Shared,
    outcome: &PredictionOutcome,
    seen: Option<(&ModelVersion, &[f32])>,
    ack: &Ack,
) -> Result<(String, String), InferError> {
    let bytes = match seen {
        Some((version, row)) => shared.codec.encode_outcome(
            outcome,
            version.meta.features.iter().map(|f| f.name.as_str()).zip(row.iter().map(|v| f64::from(*v))),
        )?,
        None => shared.codec.encode_outcome(outcome, outcome.features.iter().map(|(k, v)| (k.as_str(), *v)))?,
    };
    let key = outcome.lineage.tenant.as_deref().unwrap_or_default();
    let hash = shared.audit_key.event_hash(&bytes);
    let seal = Seal { hash: &hash, key_id: shared.audit_key.id() };
    shared.sink.send_sealed(&shared.config.predictions_topic, key.as_bytes(), &bytes, ack, seal).await?;
    Ok((outcome.lineage.event_id.clone(), hash))
}

/// Writes a rejection for a request that cannot be scored, then acknowledges it. `admitted`:
/// the request holds a quota in-flight slot to give back.
pub(super) async fn reject(
    shared: &Shared,
    validated: ValidatedRequest,
    ack: Ack,
    reason: OutcomeReason,
    detail: String,
    retry_after_ms: Option<i64>,
    admitted: bool,
) -> Result<(), InferError> {
    let outcome = crate::outcome::rejected(&validated, &shared.config.instance, reason, detail, retry_after_ms);
    count_rejection(shared, &outcome, reason);
    let event = send(shared, &outcome, None, &ack).await?;
    if admitted {
        let _ = shared.released.send(validated.request.tenant);
    }
    shared.committer.add(vec![event], ack).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use streamscore_contracts::{InferenceRequest, Lineage, SourceOffset, Stage, ValidatedRequest};
    use streamscore_modelstore::ModelStore;

    use super::append_row;

    fn store() -> ModelStore {
        ModelStore::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).expect("the shipped models load")
    }

    /// A validated request whose feature map is in range for fraud/1 and fraud/2.
    fn validated(store: &ModelStore) -> ValidatedRequest {
        let version = store.route("fraud", Some("1"), None).expect("fraud/1");
        let features: streamscore_contracts::Features =
            version.meta.features.iter().map(|f| (f.name.clone(), f.min.max(0.0).min(f.max))).collect();
        let request = InferenceRequest {
            request_id: "r-1".to_owned(),
            tenant: "acme".to_owned(),
            model: "fraud".to_owned(),
            model_version: None,
            features,
            created_at: 1,
            reply_to: None,
            attributes: HashMap::new(),
        };
        let source = SourceOffset::new("inference.requests", 0, 1);
        ValidatedRequest::new(Lineage::derive(source, Stage::Ingest, "validated", "t", None, None), request, 1)
    }

    #[test]
    fn the_vector_ingest_checked_is_scored_as_is_for_its_version_only() {
        let store = store();
        let (v1, v2) = (
            store.route("fraud", Some("1"), None).expect("fraud/1"),
            store.route("fraud", Some("2"), None).expect("fraud/2"),
        );
        let mut validated = validated(&store);
        let from_map = v1.check(&validated.request.features).expect("the map is valid");
        // A carried vector that differs from the map shows which one was used.
        let carried: Vec<f32> = from_map.iter().map(|v| v + 0.25).collect();
        validated.model_version = Some("1".to_owned());
        validated.feature_vector = Some(carried.clone());

        let mut input = Vec::new();
        append_row(&mut input, &validated, &v1).expect("a valid row");
        assert_eq!(input, carried, "checked by ingest for this version: not checked again");

        // Routed to another version than ingest checked: the features are checked here.
        let mut input = Vec::new();
        append_row(&mut input, &validated, &v2).expect("a valid row");
        assert_eq!(input, v2.check(&validated.request.features).expect("valid for fraud/2"));

        // No vector (an older ingest), a vector of the wrong length, or a non-finite value.
        for vector in [None, Some(carried[1..].to_vec()), Some(vec![f32::NAN; carried.len()])] {
            validated.feature_vector = vector;
            let mut input = Vec::new();
            append_row(&mut input, &validated, &v1).expect("a valid row");
            assert_eq!(input, from_map);
        }

        // Checked here, an invalid map is an error, as before.
        validated.feature_vector = None;
        validated.request.features.clear();
        assert!(append_row(&mut Vec::new(), &validated, &v1).is_err());
    }
}
