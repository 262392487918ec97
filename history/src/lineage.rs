//! `streamscore lineage <request-id>`: everything the topics say about one request.
//!
//! The request's record (where it is, its writer schema id, its key), ingest's decision, each
//! outcome (primary and shadows, rejections) with the version, model sha256 and backend that
//! produced it, the quota decision and the sha256 of the policy in force, the audit
//! commitment covering each event, and the drift alerts whose window contains the request.
//!
//! It reads the topics only, with no index: one pass over the predictions, dead letters, audit
//! log and alerts (linear in their size; the same reader as `audit verify`, ~100k records/s
//! here), plus one fetch of the request record itself.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use streamscore_contracts::audit::{committed_events, kinds, AuditKey, Position};
use streamscore_contracts::{
    AuditRecord, Codec, DeadLetter, DriftAlert, InferenceRequest, OutcomeStatus, PredictionOutcome, WireHeader,
};
use streamscore_kafka::KafkaConfig;

/// Where to look.
#[derive(Debug, Clone)]
pub struct LineageConfig {
    pub kafka: KafkaConfig,
    pub registry_url: String,
    pub predictions_topic: String,
    pub dead_letter_topic: String,
    pub audit_topic: String,
    pub alerts_topic: String,
    /// The audit key: a copy of an event counts as committed only when the HMAC of its own
    /// bytes is the one its commitment lists.
    pub key: AuditKey,
}

/// The request record as produced.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub position: Position,
    pub key: Option<String>,
    pub schema_id: Option<u32>,
    pub bytes: usize,
    pub tenant: Option<String>,
    pub model: Option<String>,
    pub requested_version: Option<String>,
    pub created_at: Option<i64>,
}

/// An audit entry, by chain and seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryRef {
    pub chain: String,
    pub seq: i64,
    pub position: Position,
}

/// One outcome of the request.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub position: Position,
    pub event_id: String,
    pub shadow: bool,
    pub status: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub model: String,
    pub version: Option<String>,
    pub model_sha256: Option<String>,
    pub backend: Option<String>,
    pub score: Option<f64>,
    pub label: Option<String>,
    pub instance: String,
    /// The stage that wrote it (`infer`; `ingest` for the rejection of a refused request).
    pub stage: String,
    pub written_at: i64,
    /// `admitted` (scored or failed), or the rejection's reason when quotas said no.
    pub quota: String,
    /// The rollout split that chose the version, when one did: `rollout <id> generation <g> step <s>`.
    pub routed_by: Option<String>,
    /// The sha256 of the tenant policy in force for the writer, from its audit chain.
    pub policy_sha256: Option<String>,
    /// The `MODEL_LOADED` entry of the version that scored it (its sha256 and backend).
    pub model_loaded: Option<EntryRef>,
    /// The `BATCH_COMMITTED` entry covering this copy of the event (its id and the HMAC of its
    /// bytes); `None` for a copy no commitment names: a crash leftover or a forgery
    /// (`audit verify` tells which).
    pub committed: Option<EntryRef>,
}

/// A dead letter of the request.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLettered {
    pub position: Position,
    pub event_id: String,
    pub reason: String,
    pub detail: String,
    pub writer_schema_id: Option<i32>,
    pub committed: Option<EntryRef>,
}

/// A drift alert whose window contains the request.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub position: Position,
    pub model: String,
    pub version: String,
    pub feature: String,
    pub severity: String,
    pub statistic: f64,
    pub window_start: i64,
    pub window_end: i64,
}

/// A replay whose range covered the request (`streamscore replay` records itself).
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub entry: EntryRef,
    pub occurred_at: i64,
    pub mode: String,
    /// Same version: every score bit-identical and every decision the same.
    pub ok: bool,
    pub report_sha256: String,
    pub out: String,
}

/// Everything found about one request.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub request_id: String,
    pub request: Option<RequestRecord>,
    /// `validated`, `dead-lettered`, or `unknown` when nothing was found.
    pub ingest: String,
    pub dead_letters: Vec<DeadLettered>,
    pub outcomes: Vec<Outcome>,
    pub alerts: Vec<Alert>,
    pub replays: Vec<Replayed>,
    /// Records read to find it.
    pub scanned: usize,
}

/// A record's key and value.
type KeyValue = (Option<Vec<u8>>, Vec<u8>);

/// One record, by position.
fn fetch(kafka: &KafkaConfig, position: &Position) -> Result<Option<KeyValue>> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("streamscore-lineage-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a consumer")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&position.topic, position.partition, Offset::Offset(position.offset))?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) if message.offset() == position.offset => {
                return Ok(Some((message.key().map(<[u8]>::to_vec), message.payload().unwrap_or_default().to_vec())))
            }
            Some(Ok(_)) => return Ok(None),
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {position}")),
            None => {}
        }
    }
    Ok(None)
}

/// Finds everything about `request_id`.
pub async fn trace(config: &LineageConfig, request_id: &str) -> Result<Trace> {
    let topics = [config.predictions_topic.as_str(), config.dead_letter_topic.as_str(), config.audit_topic.as_str()];
    let [predictions, dead_letters, audit] = crate::audit::read_topics(&config.kafka, topics, false).await?;
    // Alerts are optional (no monitor ran): an absent topic reads as empty.
    let [alerts] = crate::audit::read_topics(&config.kafka, [config.alerts_topic.as_str()], true).await?;
    let scanned = predictions.len() + dead_letters.len() + audit.len() + alerts.len();

    let outcomes_codec = Codec::<PredictionOutcome>::with_url(&config.registry_url, &config.predictions_topic);
    let mut found = Vec::new();
    for (position, _, bytes) in &predictions {
        if !contains(bytes, request_id) {
            continue; // the id's bytes are in the record: skip decoding the others
        }
        if let Ok(decoded) = outcomes_codec.decode(bytes).await {
            if decoded.value.lineage.request_id.as_deref() == Some(request_id) {
                found.push((position.clone(), decoded.value, config.key.event_hash(bytes)));
            }
        }
    }
    let letters_codec = Codec::<DeadLetter>::with_url(&config.registry_url, &config.dead_letter_topic);
    let mut letters = Vec::new();
    for (position, _, bytes) in &dead_letters {
        if !contains(bytes, request_id) {
            continue;
        }
        if let Ok(decoded) = letters_codec.decode(bytes).await {
            if decoded.value.lineage.request_id.as_deref() == Some(request_id) {
                letters.push((position.clone(), decoded.value, config.key.event_hash(bytes)));
            }
        }
    }
    let audit_codec = Codec::<AuditRecord>::with_url(&config.registry_url, &config.audit_topic);
    let mut entries = Vec::new();
    for (position, _, bytes) in &audit {
        if let Ok(decoded) = audit_codec.decode(bytes).await {
            entries.push((position.clone(), decoded.value));
        }
    }
    let entry_ref = |position: &Position, entry: &AuditRecord| EntryRef {
        chain: entry.details.get("chain").cloned().unwrap_or_default(),
        seq: entry.seq,
        position: position.clone(),
    };
    // The commitment of this copy: its id *and* the HMAC of its bytes (a forged copy carries
    // the genuine id, never the genuine bytes).
    let commitment_of = |event_id: &str, hash: &str| {
        entries
            .iter()
            .find(|(_, e)| {
                e.kind == kinds::BATCH_COMMITTED
                    && e.details.get("events").is_some_and(|list| list.contains(event_id))
                    && committed_events(&e.details).iter().any(|(id, h)| *id == event_id && *h == hash)
            })
            .map(|(p, e)| entry_ref(p, e))
    };
    // Committed copies first: what follows is read from them, never from an uncommitted copy
    // that merely comes first.
    let mut found: Vec<_> =
        found.into_iter().map(|(p, o, hash)| (commitment_of(&o.lineage.event_id, &hash), p, o)).collect();
    found.sort_by_key(|(committed, position, _)| (committed.is_none(), position.clone()));
    let mut letters: Vec<_> =
        letters.into_iter().map(|(p, d, hash)| (commitment_of(&d.lineage.event_id, &hash), p, d)).collect();
    letters.sort_by_key(|(committed, position, _)| (committed.is_none(), position.clone()));

    // The request record: where the first committed output says it came from.
    let source = found
        .first()
        .map(|(_, _, o)| o.lineage.source.clone())
        .or_else(|| letters.first().map(|(_, _, d)| d.lineage.source.clone()));
    let request = match source {
        None => None,
        Some(source) => {
            let position = Position { topic: source.topic.clone(), partition: source.partition, offset: source.offset };
            let kafka = config.kafka.clone();
            let at = position.clone();
            let record =
                tokio::task::spawn_blocking(move || fetch(&kafka, &at)).await.context("the reader panicked")??;
            let requests = Codec::<InferenceRequest>::with_url(&config.registry_url, &source.topic);
            let mut out = RequestRecord {
                position,
                key: None,
                schema_id: None,
                bytes: 0,
                tenant: None,
                model: None,
                requested_version: None,
                created_at: None,
            };
            if let Some((key, value)) = record {
                out.key = key.map(|k| String::from_utf8_lossy(&k).into_owned());
                out.schema_id = WireHeader::parse(&value).ok().map(|(h, _)| h.schema_id);
                out.bytes = value.len();
                if let Ok(decoded) = requests.decode(&value).await {
                    out.tenant = Some(decoded.value.tenant);
                    out.model = Some(decoded.value.model);
                    out.requested_version = decoded.value.model_version;
                    out.created_at = Some(decoded.value.created_at);
                }
            }
            Some(out)
        }
    };

    let mut outcomes = Vec::new();
    for (committed, position, o) in &found {
        // The writer's chain: the infer chain of the outcome's instance in force when it was
        // written (the last one started before it).
        let chain = entries
            .iter()
            .filter(|(_, e)| e.kind == kinds::CHAIN_STARTED && e.stage == "infer" && e.instance == o.lineage.instance)
            .filter(|(_, e)| e.occurred_at <= o.lineage.written_at)
            .max_by_key(|(_, e)| e.occurred_at)
            .and_then(|(_, e)| e.details.get("chain").cloned());
        let in_chain = |e: &AuditRecord| chain.is_some() && e.details.get("chain") == chain.as_ref();
        let policy_sha256 = entries
            .iter()
            .filter(|(_, e)| in_chain(e) && e.kind.starts_with("POLICY_") && e.kind != "POLICY_REFUSED")
            .filter(|(_, e)| e.occurred_at <= o.lineage.written_at)
            .max_by_key(|(_, e)| e.seq)
            .and_then(|(_, e)| e.details.get("sha256").cloned());
        let version_key = o.model_version.as_ref().map(|v| format!("{}/{v}", o.model));
        let model_loaded = entries
            .iter()
            .filter(|(_, e)| in_chain(e) && e.kind == "MODEL_LOADED" && Some(&e.subject) == version_key.as_ref())
            .max_by_key(|(_, e)| e.seq)
            .map(|(p, e)| entry_ref(p, e));
        let quota = match (o.status, o.reason.as_deref()) {
            (
                OutcomeStatus::Rejected,
                Some(reason @ ("QUOTA_EXCEEDED" | "IN_FLIGHT_EXCEEDED" | "UNKNOWN_TENANT" | "MODEL_NOT_ALLOWED")),
            ) => {
                format!("rejected: {reason}")
            }
            (OutcomeStatus::Rejected, _) if o.lineage.stage == "ingest" => "not reached (refused by ingest)".to_owned(),
            _ if policy_sha256.is_none() => "no quotas (no policy)".to_owned(),
            _ => "admitted".to_owned(),
        };
        outcomes.push(Outcome {
            position: position.clone(),
            event_id: o.lineage.event_id.clone(),
            shadow: o.shadow,
            status: format!("{:?}", o.status).to_uppercase(),
            reason: o.reason.clone(),
            detail: o.detail.clone(),
            model: o.model.clone(),
            version: o.model_version.clone(),
            model_sha256: o.model_sha256.clone(),
            backend: o.backend.clone(),
            score: o.score,
            label: o.label.clone(),
            instance: o.lineage.instance.clone(),
            stage: o.lineage.stage.clone(),
            written_at: o.lineage.written_at,
            quota,
            routed_by: o
                .routed_by
                .as_ref()
                .map(|r| format!("rollout {} generation {} step {}", r.rollout_id, r.generation, r.step)),
            policy_sha256,
            model_loaded,
            committed: committed.clone(),
        });
    }
    // Primary before shadow, committed copies before the rest, then in the order written.
    outcomes.sort_by_key(|o| (o.shadow, o.committed.is_none(), o.position.clone()));
    let dead_letters: Vec<DeadLettered> = letters
        .iter()
        .map(|(committed, position, d)| DeadLettered {
            position: position.clone(),
            event_id: d.lineage.event_id.clone(),
            reason: d.reason.code().to_owned(),
            detail: d.detail.clone(),
            writer_schema_id: d.writer_schema_id,
            committed: committed.clone(),
        })
        .collect();

    let when =
        request.as_ref().and_then(|r| r.created_at).or_else(|| found.first().map(|(_, _, o)| o.request_created_at));
    let alerts_codec = Codec::<DriftAlert>::with_url(&config.registry_url, &config.alerts_topic);
    let mut alerts_found = Vec::new();
    if let Some(at) = when {
        for (position, _, bytes) in &alerts {
            let Ok(decoded) = alerts_codec.decode(bytes).await else { continue };
            let a = decoded.value;
            let versions: Vec<(&str, Option<&str>)> =
                outcomes.iter().map(|o| (o.model.as_str(), o.version.as_deref())).collect();
            let concerns = versions.iter().any(|(m, v)| *m == a.model && *v == Some(a.model_version.as_str()));
            if concerns && a.window_start <= at && at <= a.window_end {
                alerts_found.push(Alert {
                    position: position.clone(),
                    model: a.model,
                    version: a.model_version,
                    feature: a.feature,
                    severity: format!("{:?}", a.severity).to_uppercase(),
                    statistic: a.statistic,
                    window_start: a.window_start,
                    window_end: a.window_end,
                });
            }
        }
    }
    let mut replays = Vec::new();
    if let Some(r) = &request {
        for (position, e) in entries.iter().filter(|(_, e)| e.kind == "REPLAYED") {
            let get = |k: &str| e.details.get(k).cloned().unwrap_or_default();
            if get("requests_topic") != r.position.topic {
                continue;
            }
            let bound =
                |k: &str| Some(get(k)).filter(|t| !t.is_empty()).and_then(|t| crate::replay::Bound::parse(&t).ok());
            let tenant = get("tenant");
            let tenant_ok = tenant.is_empty() || r.tenant.as_deref() == Some(tenant.as_str());
            if tenant_ok
                && crate::replay::in_range((bound("from"), bound("to")), r.position.offset, r.created_at.unwrap_or(0))
            {
                replays.push(Replayed {
                    entry: entry_ref(position, e),
                    occurred_at: e.occurred_at,
                    mode: get("mode"),
                    ok: get("ok") == "true",
                    report_sha256: get("report_sha256"),
                    out: get("out"),
                });
            }
        }
    }
    let ingest = if !dead_letters.is_empty() {
        "dead-lettered".to_owned()
    } else if outcomes.iter().any(|o| o.stage != "ingest") {
        "validated".to_owned()
    } else {
        "unknown".to_owned()
    };
    Ok(Trace {
        request_id: request_id.to_owned(),
        request,
        ingest,
        dead_letters,
        outcomes,
        alerts: alerts_found,
        replays,
        scanned,
    })
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A human view of `trace`.
pub fn describe(trace: &Trace) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "request {} ({} records scanned)", trace.request_id, trace.scanned);
    match &trace.request {
        Some(r) => {
            let _ = writeln!(
                out,
                "  record     {} key {:?}, {} bytes, writer schema id {}",
                r.position,
                r.key.as_deref().unwrap_or("-"),
                r.bytes,
                r.schema_id.map_or("-".to_owned(), |id| id.to_string())
            );
            let _ = writeln!(
                out,
                "  request    tenant {}, model {}{}, created_at {}",
                r.tenant.as_deref().unwrap_or("?"),
                r.model.as_deref().unwrap_or("?"),
                r.requested_version.as_deref().map(|v| format!(" version {v}")).unwrap_or_default(),
                r.created_at.map_or("?".to_owned(), |t| t.to_string())
            );
        }
        None => {
            let _ = writeln!(out, "  not found in the predictions or the dead letters");
        }
    }
    let _ = writeln!(out, "  ingest     {}", trace.ingest);
    for d in &trace.dead_letters {
        let _ = writeln!(out, "  dead letter {} {}: {}", d.position, d.reason, d.detail);
        match &d.committed {
            Some(c) => {
                let _ = writeln!(out, "             committed in {} seq {} ({})", c.chain, c.seq, c.position);
            }
            None => {
                let _ = writeln!(out, "             NOT COMMITTED: no audit commitment names this copy's bytes");
            }
        }
    }
    for o in &trace.outcomes {
        let _ = writeln!(
            out,
            "  {} {} {}: {}{} {}{}",
            if o.shadow { "shadow    " } else { "outcome   " },
            o.position,
            o.status,
            o.model,
            o.version.as_deref().map(|v| format!("/{v}")).unwrap_or_default(),
            o.score.map(|s| format!("score {s:.6}")).unwrap_or_default(),
            o.reason.as_deref().map(|r| format!(" reason {r}")).unwrap_or_default(),
        );
        let _ = writeln!(
            out,
            "             model sha256 {}, backend {}, instance {}",
            o.model_sha256.as_deref().unwrap_or("-"),
            o.backend.as_deref().unwrap_or("-"),
            o.instance
        );
        let _ = writeln!(
            out,
            "             quota {}{}",
            o.quota,
            o.policy_sha256.as_deref().map(|s| format!(" (policy sha256 {s})")).unwrap_or_default()
        );
        if let Some(r) = &o.routed_by {
            let _ = writeln!(out, "             routed by the split of {r}");
        }
        if let Some(c) = &o.model_loaded {
            let _ = writeln!(out, "             model loaded: {} seq {} ({})", c.chain, c.seq, c.position);
        }
        match &o.committed {
            Some(c) => {
                let _ = writeln!(out, "             committed in {} seq {} ({})", c.chain, c.seq, c.position);
            }
            None => {
                let _ = writeln!(
                    out,
                    "             NOT COMMITTED: no audit commitment names this copy's bytes (a crash leftover \
                     or a forgery; `streamscore audit verify` tells which)"
                );
            }
        }
    }
    for r in &trace.replays {
        let _ = writeln!(
            out,
            "  replayed   {} ({}): {}, report sha256 {} ({}; {} seq {})",
            r.mode,
            if r.ok { "ok" } else { "differences" },
            r.out,
            r.report_sha256,
            r.entry.position,
            r.entry.chain,
            r.entry.seq
        );
    }
    for a in &trace.alerts {
        let _ = writeln!(
            out,
            "  drift      {} {}/{} {} {} statistic {:.4} over [{}, {}]",
            a.position, a.model, a.version, a.feature, a.severity, a.statistic, a.window_start, a.window_end
        );
    }
    out
}
