//! `streamscore explain <request-id>`: the explanation of a past request, recomputed from the
//! topics with the version that scored it.
//!
//! It reads the predictions topic (one pass, no index; records that do not contain the id's
//! bytes are not decoded), takes the request's primary scored outcome, and explains the exact
//! feature vector that outcome says the model saw, with the model store's copy of the version
//! that scored it (its file's sha256 must be the one the outcome names) on the backend that
//! scored it. The method scores the same rows in the same batches as infer's explanation lane,
//! so when the request asked for an explanation live, the two are equal bit for bit; the
//! command says whether they are (exit status 1 when not).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use streamscore_contracts::audit::Position;
use streamscore_contracts::{Codec, Explanation, OutcomeStatus, PredictionOutcome};
use streamscore_infer::selection::BackendChoice;
use streamscore_kafka::KafkaConfig;
use streamscore_modelstore::ModelStore;

/// Where to look, and what to explain with.
#[derive(Debug, Clone)]
pub struct ExplainConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub predictions_topic: String,
    /// The model store holding the version that scored the request.
    pub models: PathBuf,
    /// The backend to recompute on; `None`: the one that scored the request (what makes the
    /// recomputation bit-for-bit).
    pub backend: Option<BackendChoice>,
}

/// How the recomputation compares with the explanation the outcome carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Every attribution, value, score and the method the same, bit for bit.
    Equal,
    Differs,
    /// The request did not ask for an explanation live.
    NoLiveExplanation,
}

/// A recomputed explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Recomputed {
    pub request_id: String,
    /// The outcome explained.
    pub position: Position,
    pub event_id: String,
    pub model: String,
    pub version: String,
    pub model_sha256: String,
    /// The backend that scored the request, and the one that recomputed it.
    pub scored_on: Option<String>,
    pub recomputed_on: String,
    pub score: Option<f64>,
    pub explanation: Explanation,
    /// The explanation the outcome carries, when the request asked for one.
    pub live: Option<Explanation>,
    pub comparison: Comparison,
    /// Copies of the request's primary outcome found (more than one: redelivered).
    pub copies: usize,
    /// Records read.
    pub scanned: usize,
}

/// Whether two explanations are the same bit for bit.
pub fn bit_equal(a: &Explanation, b: &Explanation) -> bool {
    let same = |x: f64, y: f64| x.to_bits() == y.to_bits();
    let lists = |x: &[streamscore_contracts::Attribution], y: &[streamscore_contracts::Attribution]| {
        x.len() == y.len()
            && x.iter().zip(y).all(|(p, q)| {
                p.feature == q.feature
                    && same(p.value, q.value)
                    && same(p.baseline, q.baseline)
                    && same(p.attribution, q.attribution)
            })
    };
    a.method == b.method
        && same(a.baseline_score, b.baseline_score)
        && same(a.score, b.score)
        && lists(&a.attributions, &b.attributions)
        && lists(&a.top, &b.top)
        && a.permutations == b.permutations
        && a.error_bound.map(f64::to_bits) == b.error_bound.map(f64::to_bits)
}

/// Finds the request's primary scored outcome and explains it again.
pub async fn recompute(config: &ExplainConfig, request_id: &str) -> Result<Recomputed> {
    let [predictions] = crate::audit::read_topics(&config.kafka, [config.predictions_topic.as_str()], false).await?;
    let scanned = predictions.len();
    let codec = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    let mut found: Vec<(Position, PredictionOutcome)> = Vec::new();
    let mut other = None;
    for (position, _, bytes) in &predictions {
        if !bytes.windows(request_id.len().max(1)).any(|w| w == request_id.as_bytes()) {
            continue;
        }
        let Ok(decoded) = codec.decode(bytes).await else { continue };
        let outcome = decoded.value;
        if outcome.lineage.request_id.as_deref() != Some(request_id) || outcome.shadow {
            continue;
        }
        if outcome.status == OutcomeStatus::Scored {
            found.push((position.clone(), outcome));
        } else {
            other = Some(outcome);
        }
    }
    let Some((position, outcome)) = found.first().cloned() else {
        match other {
            Some(o) => bail!(
                "request {request_id} was not scored ({:?}{}): there is nothing to explain",
                o.status,
                o.reason.map(|r| format!(", {r}")).unwrap_or_default()
            ),
            None => bail!(
                "no outcome of request {request_id} on {} ({scanned} records read): check the id, or `streamscore lineage {request_id}`",
                config.predictions_topic
            ),
        }
    };
    let (Some(version_name), Some(sha256)) = (outcome.model_version.clone(), outcome.model_sha256.clone()) else {
        bail!("the outcome at {position} names no model version or sha256: it cannot be explained again");
    };
    let store = ModelStore::open(&config.models)
        .with_context(|| format!("opening the model store {}", config.models.display()))?;
    let key = format!("{}/{version_name}", outcome.model);
    let version = store.get(&outcome.model, &version_name).with_context(|| {
        format!(
            "{key} scored the request, but the model store {} does not have it; point --models at one that does",
            config.models.display()
        )
    })?;
    if !version.meta.sha256.eq_ignore_ascii_case(&sha256) {
        bail!(
            "the store's {key} is another file (sha256 {}) than the one that scored the request ({sha256}); \
             point --models at the store that served it",
            version.meta.sha256
        );
    }
    let row: Vec<f32> = version
        .meta
        .features
        .iter()
        .map(|f| {
            // The outcome's features are the model's f32 input, written as f64: exact.
            #[allow(clippy::cast_possible_truncation)]
            outcome
                .features
                .get(&f.name)
                .map(|v| *v as f32)
                .with_context(|| format!("the outcome at {position} lacks feature {} of {key}", f.name))
        })
        .collect::<Result<_>>()?;
    let choice = match config.backend {
        Some(choice) => choice,
        None => match outcome.backend.as_deref() {
            Some("cuda") => BackendChoice::Cuda,
            _ => BackendChoice::Cpu,
        },
    };
    let backend = streamscore_infer::selection::select(choice).with_context(|| {
        format!(
            "the request was scored on {}; a bit-for-bit recomputation needs that backend here \
             (or give --backend cpu for tract's, equal within float rounding)",
            outcome.backend.as_deref().unwrap_or("an unknown backend")
        )
    })?;
    let scorer = backend.load(&version)?;
    let recomputed_on = scorer.backend().to_owned();
    let explanation =
        tokio::task::spawn_blocking(move || streamscore_infer::explain::explain_row(scorer.as_ref(), &version, &row))
            .await
            .context("the explanation panicked")??;
    let live = outcome.explanation.clone();
    let comparison = match &live {
        None => Comparison::NoLiveExplanation,
        Some(l) if bit_equal(l, &explanation) => Comparison::Equal,
        Some(_) => Comparison::Differs,
    };
    Ok(Recomputed {
        request_id: request_id.to_owned(),
        position,
        event_id: outcome.lineage.event_id.clone(),
        model: outcome.model.clone(),
        version: version_name,
        model_sha256: sha256,
        scored_on: outcome.backend.clone(),
        recomputed_on,
        score: outcome.score,
        explanation,
        live,
        comparison,
        copies: found.len(),
        scanned,
    })
}

/// The report as text.
pub fn describe(r: &Recomputed) -> String {
    use std::fmt::Write as _;
    let e = &r.explanation;
    let mut out = String::new();
    let _ = writeln!(out, "request {} ({} records scanned)", r.request_id, r.scanned);
    let _ = writeln!(
        out,
        "  outcome    {} event {}{}",
        r.position,
        r.event_id,
        if r.copies > 1 { format!(" ({} copies, redelivered)", r.copies) } else { String::new() }
    );
    let _ = writeln!(
        out,
        "  model      {}/{} sha256 {}, scored on {}, recomputed on {}",
        r.model,
        r.version,
        r.model_sha256,
        r.scored_on.as_deref().unwrap_or("?"),
        r.recomputed_on
    );
    let method = match (e.permutations, e.error_bound) {
        (Some(n), Some(bound)) => format!("{} ({n} permutations, 95% error bound {bound:.2e})", e.method),
        _ => format!("{} ({} coalitions)", e.method, 1_u64 << e.attributions.len().min(63)),
    };
    let _ = writeln!(
        out,
        "  score      {} (outcome {}), baseline score {:.6}, sum of attributions {:+.6}; {method}",
        format_args!("{:.6}", e.score),
        r.score.map_or_else(|| "?".to_owned(), |s| format!("{s:.6}")),
        e.baseline_score,
        e.score - e.baseline_score,
    );
    // Values and baselines are the model's f32 inputs: shown as such (0.91, not 0.9100000262).
    #[allow(clippy::cast_possible_truncation)]
    let input = |v: f64| v as f32;
    let _ = writeln!(out, "  reasons");
    for (i, a) in e.top.iter().enumerate() {
        let (value, baseline) = (input(a.value), input(a.baseline));
        let _ = writeln!(
            out,
            "    {}. {:<22} {:>+.6}   value {value} (baseline {baseline})",
            i + 1,
            a.feature,
            a.attribution
        );
    }
    let _ = writeln!(out, "  every feature");
    for a in &e.attributions {
        let (value, baseline) = (input(a.value), input(a.baseline));
        let _ = writeln!(out, "    {:<24} {:>+.6}   value {value} (baseline {baseline})", a.feature, a.attribution);
    }
    let _ = writeln!(
        out,
        "  live       {}",
        match r.comparison {
            Comparison::Equal => "the outcome's own explanation is equal, bit for bit",
            Comparison::Differs => "DIFFERS from the outcome's own explanation (another backend, model file or build?)",
            Comparison::NoLiveExplanation => "the request did not ask for an explanation when it was scored",
        }
    );
    out
}
