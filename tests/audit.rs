//! The audit log against the real broker: a pipeline run (predictions, shadows, quota
//! rejections, dead letters) verifies clean, and each kind of tampering, applied to a copy of
//! its topics, is named by `audit verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use streamscore::audit::VerifyConfig;
use streamscore::loadgen::{self, LoadConfig};
use streamscore_contracts::audit::{committed_events, kinds, AuditKey, ChainHead, ProblemKind, Report, Window};
use streamscore_contracts::{AuditRecord, Codec, InferenceRequest, PredictionOutcome};

mod support;
use support::{StageTopics, TestRegistry};

/// The topics of one run: audit, predictions, dead letters.
#[derive(Debug, Clone)]
struct Logs {
    audit: String,
    predictions: String,
    dead_letter: String,
}

/// The records of a run, to copy with a change.
struct Run {
    audit: Vec<OwnedMessage>,
    predictions: Vec<OwnedMessage>,
    dead_letter: Vec<OwnedMessage>,
}

/// A record's key, value and partition.
type Record = (Vec<u8>, Vec<u8>, i32);

fn records(messages: &[OwnedMessage]) -> Vec<Record> {
    messages
        .iter()
        .map(|m| (m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec(), m.partition()))
        .collect()
}

/// Copies of the three topics, each record on the partition it came from, in the order given
/// (each partition's order as read).
async fn copy(prefix: &str, audit: &[Record], predictions: &[Record], dead_letter: &[Record]) -> Logs {
    let logs = Logs {
        audit: support::unique(&format!("{prefix}-audit")),
        predictions: support::unique(&format!("{prefix}-predictions")),
        dead_letter: support::unique(&format!("{prefix}-dead")),
    };
    let partitions = |records: &[Record]| records.iter().map(|r| r.2 + 1).max().unwrap_or(1);
    let specs = [(&logs.audit, audit), (&logs.predictions, predictions), (&logs.dead_letter, dead_letter)]
        .iter()
        .map(|(t, records)| streamscore_kafka::TopicSpec::event(t, partitions(records)))
        .collect::<Vec<_>>();
    streamscore_kafka::ensure_topics(&support::kafka(), &specs).await.unwrap();
    let producer = support::kafka().producer().unwrap();
    for (topic, records) in [(&logs.audit, audit), (&logs.predictions, predictions), (&logs.dead_letter, dead_letter)] {
        for (key, value, partition) in records {
            let record = rdkafka::producer::FutureRecord::to(topic).key(key).payload(value).partition(*partition);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
    }
    logs
}

/// Where the record at `index` of `records` lands in a copy: its partition, and its offset
/// there (how many records of that partition come before it).
fn position_in_copy(records: &[Record], index: usize) -> (i32, i64) {
    let partition = records[index].2;
    (partition, records[..index].iter().filter(|r| r.2 == partition).count() as i64)
}

async fn verify(registry: &str, logs: &Logs, heads: Vec<ChainHead>) -> Report {
    let config = VerifyConfig {
        kafka: support::kafka(),
        registry_url: registry.to_owned(),
        audit_topic: logs.audit.clone(),
        predictions_topic: logs.predictions.clone(),
        dead_letter_topic: logs.dead_letter.clone(),
        key: AuditKey::from_env().unwrap(),
        heads,
        window: Window::ALL,
    };
    streamscore::audit::verify(&config).await.unwrap().0
}

fn head_again(entries: &[AuditRecord], chain: &str, seq: i64) -> ChainHead {
    ChainHead {
        chain: chain.to_owned(),
        seq,
        hash: entries
            .iter()
            .find(|e| e.details["chain"] == chain && e.seq == seq)
            .map(|e| e.hash.clone())
            .unwrap_or_default(),
        topic: String::new(),
    }
}

fn kinds_of(report: &Report) -> Vec<ProblemKind> {
    report.problems.iter().map(|p| p.kind).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_verifies_and_every_kind_of_tampering_is_named() {
    let registry = TestRegistry::start().await;
    let topics = StageTopics::create("audit").await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("tenants.toml");
    std::fs::write(
        &policy,
        "version = 1\nunknown_tenants = \"refuse\"\n[tenants.tenant-01]\nrate_per_sec = 100000\nburst = 100000\n\
         [tenants.tenant-02]\nrate_per_sec = 100000\nburst = 100000\n\
         [tenants.tenant-03]\nrate_per_sec = 1\nburst = 5\non_exceed = \"reject\"\n",
    )
    .unwrap();
    let audit_topic = support::unique("audit-log");
    let instance = support::unique("audit-test");
    let mut config = support::pipeline_config(
        &support::kafka(),
        &registry.url,
        topics.pipeline(),
        &support::unique("audit-pipeline"),
        &instance,
    );
    config.infer.audit_topic.clone_from(&audit_topic);
    config.infer.policy = Some(policy);
    config.infer.quota_state_topic = support::unique("quota");
    config.infer.shadow.insert("fraud".to_owned(), "2".to_owned());
    config.tenants = streamscore_ingest::Tenants::parse("tenant-01,tenant-02,tenant-03");

    let codec = Arc::new(Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests));
    let mut load = LoadConfig::new(&topics.requests);
    load.count = Some(300);
    load.tenants = 3;
    load.bad_share = 0.1;
    load.seed = 5;
    let generated = loadgen::run(&support::kafka(), codec, &load).await.unwrap();
    assert_eq!(generated.errors, 0);

    // Every request answered: a prediction (and its shadow) or a rejection, or a dead letter.
    let outputs = support::answer_all(config, &topics, 300, Duration::from_secs(60)).await;
    assert!(outputs.len() >= 300);

    let run = tokio::task::block_in_place(|| Run {
        audit: support::read_all(&[&audit_topic], Duration::from_secs(2)),
        predictions: support::read_all(&[&topics.predictions], Duration::from_secs(1)),
        dead_letter: support::read_all(&[&topics.dead_letter], Duration::from_secs(1)),
    });
    let original = Logs {
        audit: audit_topic.clone(),
        predictions: topics.predictions.clone(),
        dead_letter: topics.dead_letter.clone(),
    };
    let report = verify(&registry.url, &original, Vec::new()).await;
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.chains, 2, "ingest's chain and infer's");
    assert!(report.open_chains.is_empty(), "both stopped cleanly: {:?}", report.open_chains);
    assert_eq!(report.events, run.predictions.len() + run.dead_letter.len(), "every event read");
    assert_eq!(report.committed_events, report.events, "every event committed");

    // The run's pieces: the audit entries decoded, the predictions decoded.
    let audit_codec = Codec::<AuditRecord>::with_url(&registry.url, &audit_topic);
    audit_codec.register().await.unwrap();
    let mut entries = Vec::new();
    for message in &run.audit {
        entries.push(audit_codec.decode(message.payload().unwrap()).await.unwrap().value);
    }
    // The control plane is in the log too: each stage's start and stop, the schemas it writes
    // (with the sha256 of their text), the policy and the models it loaded.
    for kind in
        ["CHAIN_STARTED", "SCHEMA_REGISTERED", "POLICY_LOADED", "MODEL_LOADED", "BATCH_COMMITTED", "STAGE_STOPPED"]
    {
        assert!(entries.iter().any(|e| e.kind == kind), "no {kind} entry");
    }
    let schema_sha256 =
        streamscore_contracts::sha256_hex(<PredictionOutcome as streamscore_contracts::Event>::SCHEMA.text.as_bytes());
    assert!(entries.iter().any(|e| e.kind == "SCHEMA_REGISTERED"
        && e.subject == format!("{}-value", topics.predictions)
        && e.details["sha256"] == schema_sha256));
    let outcomes = Codec::<PredictionOutcome>::with_url(&registry.url, &topics.predictions);
    outcomes.register().await.unwrap();
    let mut predictions = Vec::new();
    for message in &run.predictions {
        predictions.push(outcomes.decode(message.payload().unwrap()).await.unwrap().value);
    }
    assert!(predictions.iter().any(|p| p.shadow), "shadows are committed too");
    assert!(predictions.iter().any(|p| p.reason.as_deref() == Some("QUOTA_EXCEEDED")), "and quota rejections");
    assert!(!run.dead_letter.is_empty(), "and dead letters");
    let (audit, preds, dead) = (records(&run.audit), records(&run.predictions), records(&run.dead_letter));

    // Lineage of a request that was scored and shadowed, one refused by quotas, one
    // dead-lettered: from the topics alone.
    let lineage = streamscore::lineage::LineageConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        predictions_topic: topics.predictions.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        audit_topic: audit_topic.clone(),
        alerts_topic: support::unique("no-alerts"),
        key: AuditKey::from_env().unwrap(),
    };
    let scored = predictions.iter().find(|p| p.shadow).unwrap();
    let id = scored.lineage.request_id.clone().unwrap();
    let trace = streamscore::lineage::trace(&lineage, &id).await.unwrap();
    assert_eq!(trace.ingest, "validated");
    let record = trace.request.as_ref().unwrap();
    assert_eq!(
        (record.position.topic.as_str(), record.position.offset),
        (topics.requests.as_str(), scored.lineage.source.offset)
    );
    assert_eq!(
        record.schema_id,
        Codec::<InferenceRequest>::with_url(&registry.url, &topics.requests).register().await.ok()
    );
    assert_eq!(record.key.as_deref(), scored.lineage.tenant.as_deref());
    assert_eq!(trace.outcomes.len(), 2, "{trace:#?}");
    let policy_sha256 = streamscore_contracts::sha256_hex(&std::fs::read(dir.path().join("tenants.toml")).unwrap());
    for (outcome, version) in trace.outcomes.iter().zip(["1", "2"]) {
        assert_eq!(outcome.shadow, version == "2");
        assert_eq!(outcome.version.as_deref(), Some(version));
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(support::models_dir().join(format!("fraud/{version}/metadata.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(outcome.model_sha256.as_deref(), meta["sha256"].as_str());
        assert_eq!(outcome.backend.as_deref(), Some("cpu"));
        assert_eq!(outcome.quota, "admitted");
        assert_eq!(outcome.policy_sha256.as_deref(), Some(policy_sha256.as_str()));
        assert!(outcome.model_loaded.is_some(), "the load of {version} is found");
        assert!(outcome.committed.as_ref().is_some_and(|c| c.chain.starts_with("infer/")), "{outcome:?}");
    }
    // Replayed later (the same version, the same policy): the replay is in the audit log, and
    // the request's lineage shows it.
    let replay = streamscore::replay::ReplayConfig {
        kafka: support::kafka(),
        registry_url: registry.url.clone(),
        requests_topic: topics.requests.clone(),
        predictions_topic: topics.predictions.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        models: support::models_dir(),
        policy: Some(dir.path().join("tenants.toml")),
        tenants: streamscore_ingest::Tenants::Any,
        from: None,
        to: None,
        tenant: None,
        model: None,
        out: dir.path().join("replay.jsonl"),
        progress: false,
        audit_topic: Some(audit_topic.clone()),
    };
    let replayed = streamscore::replay::replay(&replay).await.unwrap();
    assert!(replayed.ok(), "{:#?}", replayed.first_mismatches);
    let trace = streamscore::lineage::trace(&lineage, &id).await.unwrap();
    assert_eq!(trace.replays.len(), 1, "{trace:#?}");
    assert!(trace.replays[0].ok && trace.replays[0].mode == "same-version");
    let report = std::fs::read(streamscore::replay::report_path(&replay.out)).unwrap();
    assert_eq!(trace.replays[0].report_sha256, streamscore_contracts::sha256_hex(&report));
    let refused = predictions.iter().find(|p| p.reason.as_deref() == Some("QUOTA_EXCEEDED")).unwrap();
    let trace = streamscore::lineage::trace(&lineage, refused.lineage.request_id.as_deref().unwrap()).await.unwrap();
    assert_eq!(trace.outcomes.len(), 1);
    assert_eq!(trace.outcomes[0].quota, "rejected: QUOTA_EXCEEDED");
    assert!(trace.outcomes[0].committed.is_some());
    let letters = Codec::<streamscore_contracts::DeadLetter>::with_url(&registry.url, &topics.dead_letter);
    let letter = letters.decode(run.dead_letter[0].payload().unwrap()).await.unwrap().value;
    if let Some(id) = letter.lineage.request_id.as_deref() {
        let trace = streamscore::lineage::trace(&lineage, id).await.unwrap();
        assert_eq!(trace.ingest, "dead-lettered");
        assert_eq!(trace.dead_letters[0].reason, letter.reason.code());
        assert!(trace.dead_letters[0].committed.as_ref().is_some_and(|c| c.chain.starts_with("ingest/")));
    }

    // An event edited: one prediction's score changed and re-encoded.
    let mut edited = preds.clone();
    let target = predictions.iter().position(|p| p.score.is_some()).unwrap();
    let mut changed = predictions[target].clone();
    changed.score = Some(1.0 - changed.score.unwrap());
    edited[target].1 = outcomes.encode(&changed).unwrap();
    let logs = copy("edited-event", &audit, &edited, &dead).await;
    let report = verify(&registry.url, &logs, Vec::new()).await;
    assert_eq!(kinds_of(&report), [ProblemKind::EditedEvent], "{:#?}", report.problems);
    assert_eq!(
        report.problems[0].position.as_ref().map(|p| (p.partition, p.offset)),
        Some(position_in_copy(&edited, target))
    );

    // An event deleted.
    let mut deleted = preds.clone();
    deleted.remove(target);
    let report = verify(&registry.url, &copy("deleted-event", &audit, &deleted, &dead).await, Vec::new()).await;
    assert_eq!(kinds_of(&report), [ProblemKind::DeletedEvent], "{:#?}", report.problems);

    // An event injected: a prediction with an id of its own.
    let mut injected = preds.clone();
    let mut forged = predictions[target].clone();
    forged.lineage.event_id = uuid::Uuid::new_v4().to_string();
    injected.push((preds[target].0.clone(), outcomes.encode(&forged).unwrap(), preds[target].2));
    let report = verify(&registry.url, &copy("injected-event", &audit, &injected, &dead).await, Vec::new()).await;
    assert_eq!(kinds_of(&report), [ProblemKind::InjectedEvent], "{:#?}", report.problems);

    // Two events of one commitment swapped.
    let commitment_of: HashMap<&str, (i64, usize)> = entries
        .iter()
        .filter(|e| e.kind == kinds::BATCH_COMMITTED)
        .flat_map(|e| committed_events(&e.details).into_iter().enumerate().map(move |(i, (id, _))| (id, (e.seq, i))))
        .collect();
    let swap = (0..predictions.len() - 1)
        .filter(|&i| preds[i].2 == preds[i + 1].2) // one partition: events of one commitment keep their order
        .find(|&i| {
            let (a, b) = (&predictions[i].lineage.event_id, &predictions[i + 1].lineage.event_id);
            matches!((commitment_of.get(a.as_str()), commitment_of.get(b.as_str())), (Some(x), Some(y)) if x.0 == y.0)
        })
        .expect("two neighbours of one commitment");
    let mut reordered = preds.clone();
    reordered.swap(swap, swap + 1);
    let report = verify(&registry.url, &copy("reordered-event", &audit, &reordered, &dead).await, Vec::new()).await;
    assert_eq!(kinds_of(&report), [ProblemKind::ReorderedEvent], "{:#?}", report.problems);

    // An entry edited: a commitment's subject changed, re-encoded (the HMAC no longer fits).
    let commitment = entries.iter().position(|e| e.kind == kinds::BATCH_COMMITTED).unwrap();
    let mut edited_entry = entries[commitment].clone();
    edited_entry.subject = "0 events".to_owned();
    let mut edited_audit = audit.clone();
    edited_audit[commitment].1 = audit_codec.encode(&edited_entry).unwrap();
    let report = verify(&registry.url, &copy("edited-entry", &edited_audit, &preds, &dead).await, Vec::new()).await;
    assert_eq!(kinds_of(&report), [ProblemKind::EditedEntry], "{:#?}", report.problems);

    // An entry deleted: the chain has a gap (and the events it committed are uncommitted).
    let mut without_entry = audit.clone();
    without_entry.remove(commitment);
    let report = verify(&registry.url, &copy("deleted-entry", &without_entry, &preds, &dead).await, Vec::new()).await;
    assert_eq!(kinds_of(&report)[0], ProblemKind::DeletedEntry, "{:#?}", report.problems);

    // The tail of infer's chain cut (its last commitment and STAGE_STOPPED): the head
    // checkpoint the writer kept outside Kafka says where it ended.
    let infer_chain = entries.iter().find(|e| e.stage == "infer").unwrap().details["chain"].clone();
    let last = entries.iter().filter(|e| e.details["chain"] == infer_chain).map(|e| e.seq).max().unwrap();
    let head = ChainHead {
        chain: infer_chain.clone(),
        seq: last,
        hash: entries.iter().find(|e| e.details["chain"] == infer_chain && e.seq == last).unwrap().hash.clone(),
        topic: audit_topic.clone(),
    };
    if let Some(dir) = std::env::var_os(streamscore_kafka::audit::HEAD_DIR_ENV) {
        let kept = streamscore_kafka::audit::read_heads(std::path::Path::new(&dir)).unwrap();
        assert!(kept.contains(&head), "the writer checkpointed its head outside Kafka");
    }
    let truncated: Vec<Record> = audit
        .iter()
        .zip(&entries)
        .filter(|(_, e)| !(e.details["chain"] == infer_chain && e.seq >= last - 1))
        .map(|(r, _)| r.clone())
        .collect();
    let logs = copy("truncated", &truncated, &preds, &dead).await;
    let report = verify(&registry.url, &logs, Vec::new()).await;
    assert!(report.open_chains.contains(&infer_chain), "without the head the cut chain is only open");
    // (The copy is another topic: the head is moved to it, as if the log had been cut there.)
    let report = verify(&registry.url, &logs, vec![ChainHead { topic: logs.audit.clone(), ..head }]).await;
    assert!(kinds_of(&report).contains(&ProblemKind::TruncatedChain), "{:#?}", report.problems);
    // A head of another log does not concern this one.
    let report = verify(
        &registry.url,
        &original,
        vec![ChainHead {
            topic: "another.audit".to_owned(),
            seq: last + 5,
            ..head_again(&entries, &infer_chain, last)
        }],
    )
    .await;
    assert!(report.ok(), "{:#?}", report.problems);
    let report = verify(
        &registry.url,
        &logs,
        vec![ChainHead { topic: logs.audit.clone(), ..head_again(&entries, &infer_chain, last) }],
    )
    .await;
    assert!(kinds_of(&report).contains(&ProblemKind::TruncatedChain), "{:#?}", report.problems);
    registry.stop().await;
}
