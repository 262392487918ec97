//! What the kill and scale-out tests compare: an outcome's content, and the quota decision
//! the policy gives each request when a partition's requests are decided in offset order.

use std::collections::{BTreeMap, HashMap};

use streamscore_contracts::{InferenceRequest, OutcomeStatus, PredictionOutcome};
use streamscore_infer::quota::{Policy, QuotaDecision, Quotas};

/// What an outcome says, apart from who wrote it, when, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub status: OutcomeStatus,
    pub shadow: bool,
    pub version: Option<String>,
    pub score: Option<u64>,
    pub label: Option<String>,
    pub reason: Option<String>,
    pub retry_after_ms: Option<i64>,
    pub features: BTreeMap<String, u64>,
}

impl Content {
    pub fn of(o: &PredictionOutcome) -> Self {
        Self {
            status: o.status,
            shadow: o.shadow,
            version: o.model_version.clone(),
            score: o.score.map(f64::to_bits),
            label: o.label.clone(),
            reason: o.reason.clone(),
            retry_after_ms: o.retry_after_ms,
            features: o.features.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect(),
        }
    }
}

/// The decision of every request at (partition, offset) when each partition's requests from
/// `from[partition]` on (every one, without an entry) are decided in offset order by one
/// `Quotas` that starts full, on the clock of when each reached the broker (µs, beside the
/// offset).
pub fn expected_decisions(
    policy: &std::path::Path,
    by_partition: &BTreeMap<i32, Vec<(i64, i64, InferenceRequest)>>,
    from: &HashMap<i32, i64>,
) -> HashMap<(i32, i64), QuotaDecision> {
    let mut expected = HashMap::new();
    for (partition, records) in by_partition {
        let mut records: Vec<&(i64, i64, InferenceRequest)> = records.iter().collect();
        records.sort_by_key(|(offset, _, _)| *offset);
        let start = from.get(partition).copied().unwrap_or(i64::MIN);
        let mut quotas = Quotas::new(Policy::load(policy).expect("the test policy loads"));
        for (offset, received_at, request) in records.into_iter().filter(|(offset, _, _)| *offset >= start) {
            quotas.adopt(&request.tenant, 1, None);
            let decision = quotas.decide(&request.tenant, &request.model, *received_at);
            quotas.release(&request.tenant);
            expected.insert((*partition, *offset), decision);
        }
    }
    expected
}

/// The offsets `group` has committed on `topic`'s partitions `0..partitions`.
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<(i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        super::kafka().client_config().set("group.id", group).set("enable.auto.commit", "false").create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, std::time::Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw().filter(|o| *o >= 0).map(|o| (e.partition(), o)))
        .collect()
}
