//! The audit log: keyed hash chains, and commitments that cover every output event.
//!
//! - **Chains.** Every writer (a stage instance, from one start to its stop) keeps its own
//!   chain, named `<stage>/<instance>@<start µs>` so a restarted process (PID 1 again in a
//!   container) starts a new chain instead of reusing the old one's ids. Entry `n` carries the
//!   hash of entry `n-1` and an HMAC-SHA256 over its own content, every field included. The
//!   key comes from a file or an environment variable ([`AuditKey::from_env`]) and is never
//!   written to Kafka, so someone who can write the topic cannot forge a consistent chain.
//!   A chain's first entry (`CHAIN_STARTED`) names the previous chain of the same stage and
//!   instance and where it ended, so a truncated or deleted chain is seen by the next one.
//! - **Commitments.** Each batch of outputs (predictions, shadows, rejections, dead letters)
//!   is committed by one `BATCH_COMMITTED` entry listing every event's id and the HMAC of its
//!   exact record bytes. [`verify`] (the `streamscore audit verify` command) checks every
//!   chain and every event against the commitments.

mod verify;

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use verify::{verify, ChainHead, Position, Problem, ProblemKind, Report, SeenEntry, SeenEvent, Window};

use crate::events::AuditRecord;
use crate::hex;
use crate::lineage::{now_micros, Lineage, EVENT_ID_NAMESPACE};

/// `prev_hash` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A file holding the audit key (its bytes, trailing whitespace ignored).
pub const KEY_FILE_ENV: &str = "STREAMSCORE_AUDIT_KEY_FILE";
/// The audit key itself, when no key file is given.
pub const KEY_ENV: &str = "STREAMSCORE_AUDIT_KEY";
/// The shortest audit key accepted (128 bits).
pub const MIN_KEY_BYTES: usize = 16;

/// Entry kinds with a meaning for verification.
pub mod kinds {
    /// A chain's first entry; names the previous chain of the same writer and its head.
    pub const CHAIN_STARTED: &str = "CHAIN_STARTED";
    /// A stage stopping cleanly: the chain's last entry.
    pub const STAGE_STOPPED: &str = "STAGE_STOPPED";
    /// A batch of output events, each as `event_id:hmac`.
    pub const BATCH_COMMITTED: &str = "BATCH_COMMITTED";
}

type HmacSha256 = Hmac<Sha256>;

/// The secret the chains and commitments are keyed with. Its id (a fingerprint, not the key)
/// goes in every entry, so a verifier holding another key says so instead of "tampered".
#[derive(Clone)]
pub struct AuditKey {
    key: Vec<u8>,
    id: String,
    /// HMAC already keyed: each use clones its two hash states instead of hashing the padded
    /// key twice again.
    keyed: HmacSha256,
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl AuditKey {
    pub fn new(key: &[u8]) -> Self {
        let mut fingerprint = b"streamscore audit key id\n".to_vec();
        fingerprint.extend_from_slice(key);
        Self { key: key.to_vec(), id: crate::sha256_hex(&fingerprint)[..16].to_owned(), keyed: keyed(key) }
    }

    /// No secret: entries are still chained and hashed, but anyone who can write Kafka could
    /// write a consistent forgery. Verification says so.
    pub fn unkeyed() -> Self {
        Self { key: Vec::new(), id: "unkeyed".to_owned(), keyed: keyed(&[]) }
    }

    /// A key read from `source` (a file or a variable, for the message): refused when shorter
    /// than [`MIN_KEY_BYTES`], which a guess could find.
    pub fn checked(key: &[u8], source: &str) -> Result<Self, String> {
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the audit key from {source} is {} bytes; use at least {MIN_KEY_BYTES} random bytes \
                 (e.g. `head -c 32 /dev/urandom | base64 > audit.key`, as `streamscore stack up` does)",
                key.len()
            ));
        }
        Ok(Self::new(key))
    }

    /// The key from [`KEY_FILE_ENV`], else [`KEY_ENV`], else [`AuditKey::unkeyed`]; a key
    /// shorter than [`MIN_KEY_BYTES`] is refused.
    pub fn from_env() -> Result<Self, String> {
        if let Some(path) = std::env::var_os(KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("reading the audit key file {} ({KEY_FILE_ENV}): {e}", path.to_string_lossy()))?;
            let key = bytes.trim_ascii_end();
            if key.is_empty() {
                return Err(format!("the audit key file {} is empty", path.to_string_lossy()));
            }
            return Self::checked(key, &format!("the file {} ({KEY_FILE_ENV})", path.to_string_lossy()));
        }
        match std::env::var(KEY_ENV) {
            Ok(key) if !key.trim().is_empty() => Self::checked(key.trim().as_bytes(), KEY_ENV),
            _ => Ok(Self::unkeyed()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_keyed(&self) -> bool {
        !self.key.is_empty()
    }

    fn mac(&self) -> HmacSha256 {
        self.keyed.clone()
    }

    /// The commitment hash of one event: HMAC-SHA256 of its exact record bytes, the first
    /// 128 bits as hex.
    pub fn event_hash(&self, record_value: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(record_value);
        hex(&mac.finalize().into_bytes()[..16])
    }
}

/// Where a chain ended, kept outside Kafka (see `STREAMSCORE_AUDIT_HEAD_DIR`) and named by the
/// next chain's first entry.
pub fn chain_id(stage: &str, instance: &str, started_at: i64) -> String {
    format!("{stage}/{instance}@{started_at}")
}

/// The next entries of one writer's chain.
#[derive(Debug, Clone)]
pub struct AuditChain {
    stage: String,
    instance: String,
    chain: String,
    key: AuditKey,
    seq: i64,
    prev_hash: String,
}

impl AuditChain {
    /// A chain for `stage`/`instance` started at `started_at` (µs), keyed with `key`.
    pub fn new(stage: &str, instance: &str, key: AuditKey, started_at: i64) -> Self {
        Self {
            stage: stage.to_owned(),
            instance: instance.to_owned(),
            chain: chain_id(stage, instance, started_at),
            key,
            seq: 0,
            prev_hash: GENESIS.to_owned(),
        }
    }

    /// `<stage>/<instance>@<start>`.
    pub fn id(&self) -> &str {
        &self.chain
    }

    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    /// The last entry appended: its seq and hash.
    pub fn head(&self) -> Option<ChainHead> {
        (self.seq > 0).then(|| ChainHead {
            chain: self.chain.clone(),
            seq: self.seq - 1,
            hash: self.prev_hash.clone(),
            topic: String::new(),
        })
    }

    /// Appends an entry and returns it.
    pub fn append(
        &mut self,
        kind: &str,
        subject: &str,
        lineage: Option<Lineage>,
        mut details: HashMap<String, String>,
    ) -> AuditRecord {
        details.insert("chain".to_owned(), self.chain.clone());
        details.insert("key_id".to_owned(), self.key.id().to_owned());
        details.insert("hashing".to_owned(), HASHING.to_owned());
        let mut seq = itoa::Buffer::new();
        let audit_id = crate::lineage::uuid_v5(
            &EVENT_ID_NAMESPACE,
            &[b"audit/", self.chain.as_bytes(), b"/", seq.format(self.seq).as_bytes()],
        );
        let mut record = AuditRecord {
            audit_id: crate::lineage::hyphenated(audit_id),
            seq: self.seq,
            stage: self.stage.clone(),
            instance: self.instance.clone(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            lineage,
            details,
            occurred_at: now_micros(),
            prev_hash: self.prev_hash.clone(),
            hash: String::new(),
        };
        record.hash = content_hash(&self.key, &record);
        self.seq += 1;
        self.prev_hash = record.hash.clone();
        record
    }
}

/// Feeds length-prefixed fields to a MAC, so no two different field lists feed the same bytes.
struct Fields(HmacSha256);

impl Fields {
    fn field(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    /// An optional field: a tag byte, then the value when there is one (`None` and `Some("")`
    /// or `Some("\0")` feed different bytes).
    fn optional(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.field(b"-"),
            Some(bytes) => {
                self.field(b"+");
                self.field(bytes);
            }
        }
    }
}

/// The `hashing` detail of entries hashed by the current rules: lineage's optional fields
/// tagged (absent and `"\0"` differ). Entries without it were written before and are checked
/// by the rules they were written with; the detail is itself covered by the HMAC, so it cannot
/// be removed without the key.
pub const HASHING: &str = "2";

/// HMAC-SHA256 (hex) over an entry's content: every field but `hash`, each length-prefixed so
/// no two different entries serialize the same.
pub fn content_hash(key: &AuditKey, record: &AuditRecord) -> String {
    let tagged = record.details.get("hashing").is_some_and(|v| v == HASHING);
    let mut mac = key.mac();
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    let optional = |field: &mut dyn FnMut(&[u8]), value: Option<&str>| match (tagged, value) {
        (true, None) => field(b"-"),
        (true, Some(v)) => {
            field(b"+");
            field(v.as_bytes());
        }
        // The first rules: absent as "\0" (kept for entries written under them).
        (false, v) => field(v.unwrap_or("\u{0}").as_bytes()),
    };
    field(record.audit_id.as_bytes());
    field(&record.seq.to_be_bytes());
    field(record.stage.as_bytes());
    field(record.instance.as_bytes());
    field(record.kind.as_bytes());
    field(record.subject.as_bytes());
    match &record.lineage {
        None => field(b"-"),
        Some(l) => {
            field(b"+");
            field(l.event_id.as_bytes());
            optional(&mut field, l.request_id.as_deref());
            optional(&mut field, l.tenant.as_deref());
            field(l.source.topic.as_bytes());
            field(&l.source.partition.to_be_bytes());
            field(&l.source.offset.to_be_bytes());
            field(l.stage.as_bytes());
            field(l.instance.as_bytes());
            field(&l.written_at.to_be_bytes());
        }
    }
    let mut details: Vec<(&String, &String)> = record.details.iter().collect();
    details.sort();
    field(&(details.len() as u64).to_be_bytes());
    for (key, value) in details {
        field(key.as_bytes());
        field(value.as_bytes());
    }
    field(&record.occurred_at.to_be_bytes());
    field(record.prev_hash.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// What an outcome says, keyed: every field but when, by which instance and how fast it was
/// written (`written_at`, `instance`, `batch_size`, `queue_wait_us`, `inference_us`). Two
/// copies of one event with the same content are the same answer written twice (a request
/// redelivered after a crash is scored again in another batch, by another process); a copy
/// with other content (another score, status, version, reply address, features or
/// explanation) is not.
pub fn outcome_content(key: &AuditKey, outcome: &crate::PredictionOutcome) -> String {
    let mut f = Fields(key.mac());
    lineage_content(&mut f, &outcome.lineage);
    f.field(status_code(outcome.status).as_bytes());
    f.field(&[u8::from(outcome.shadow)]);
    f.field(outcome.model.as_bytes());
    f.optional(outcome.model_version.as_deref().map(str::as_bytes));
    f.optional(outcome.model_sha256.as_deref().map(str::as_bytes));
    f.optional(outcome.backend.as_deref().map(str::as_bytes));
    f.optional(outcome.score.map(f64::to_bits).map(u64::to_be_bytes).as_ref().map(|b| &b[..]));
    f.optional(outcome.label.as_deref().map(str::as_bytes));
    f.optional(outcome.reason.as_deref().map(str::as_bytes));
    f.optional(outcome.detail.as_deref().map(str::as_bytes));
    f.optional(outcome.retry_after_ms.map(i64::to_be_bytes).as_ref().map(|b| &b[..]));
    let mut features: Vec<(&String, &f64)> = outcome.features.iter().collect();
    features.sort_by(|a, b| a.0.cmp(b.0));
    f.field(&(features.len() as u64).to_be_bytes());
    for (name, value) in features {
        f.field(name.as_bytes());
        f.field(&value.to_bits().to_be_bytes());
    }
    f.field(&outcome.request_created_at.to_be_bytes());
    f.optional(outcome.reply_to.as_deref().map(str::as_bytes));
    match &outcome.routed_by {
        None => f.field(b"-"),
        Some(routed) => {
            f.field(b"+");
            f.field(routed.rollout_id.as_bytes());
            f.field(&routed.generation.to_be_bytes());
            f.field(&routed.step.to_be_bytes());
        }
    }
    // Appended only when present: the content of an outcome without one is what it was.
    if let Some(e) = &outcome.explanation {
        f.field(e.method.as_bytes());
        f.field(&e.baseline_score.to_bits().to_be_bytes());
        f.field(&e.score.to_bits().to_be_bytes());
        for list in [&e.attributions, &e.top] {
            f.field(&(list.len() as u64).to_be_bytes());
            for a in list {
                f.field(a.feature.as_bytes());
                f.field(&a.value.to_bits().to_be_bytes());
                f.field(&a.baseline.to_bits().to_be_bytes());
                f.field(&a.attribution.to_bits().to_be_bytes());
            }
        }
        f.optional(e.permutations.map(i32::to_be_bytes).as_ref().map(|b| &b[..]));
        f.optional(e.error_bound.map(f64::to_bits).map(u64::to_be_bytes).as_ref().map(|b| &b[..]));
    }
    hex(&f.0.finalize().into_bytes()[..16])
}

/// What a dead letter says, keyed: every field but when and by which instance it was written.
pub fn dead_letter_content(key: &AuditKey, letter: &crate::DeadLetter) -> String {
    let mut f = Fields(key.mac());
    lineage_content(&mut f, &letter.lineage);
    f.field(letter.reason.code().as_bytes());
    f.field(letter.detail.as_bytes());
    f.optional(letter.original_key.as_deref());
    f.optional(letter.original_value.as_deref());
    f.optional(letter.writer_schema_id.map(i32::to_be_bytes).as_ref().map(|b| &b[..]));
    f.optional(letter.original_timestamp_ms.map(i64::to_be_bytes).as_ref().map(|b| &b[..]));
    f.optional(letter.original_value_length.map(i64::to_be_bytes).as_ref().map(|b| &b[..]));
    f.optional(letter.original_value_sha256.as_deref().map(str::as_bytes));
    hex(&f.0.finalize().into_bytes()[..16])
}

fn lineage_content(f: &mut Fields, lineage: &Lineage) {
    f.field(lineage.event_id.as_bytes());
    f.optional(lineage.request_id.as_deref().map(str::as_bytes));
    f.optional(lineage.tenant.as_deref().map(str::as_bytes));
    f.field(lineage.source.topic.as_bytes());
    f.field(&lineage.source.partition.to_be_bytes());
    f.field(&lineage.source.offset.to_be_bytes());
    f.field(lineage.stage.as_bytes());
}

fn status_code(status: crate::OutcomeStatus) -> &'static str {
    match status {
        crate::OutcomeStatus::Scored => "SCORED",
        crate::OutcomeStatus::Rejected => "REJECTED",
        crate::OutcomeStatus::Failed => "FAILED",
    }
}

/// The details of a `BATCH_COMMITTED` entry: `events` lists `event_id:hash` comma-separated in
/// the order they were sent; `sources` the input records they answer.
pub fn commitment_details(events: &[(String, String)], sources: String) -> HashMap<String, String> {
    let mut list = String::with_capacity(events.len() * 70);
    for (i, (id, hash)) in events.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(id);
        list.push(':');
        list.push_str(hash);
    }
    HashMap::from([
        ("events".to_owned(), list),
        ("count".to_owned(), events.len().to_string()),
        ("sources".to_owned(), sources),
    ])
}

/// The `(event_id, hash)` pairs of a commitment's details, in order.
pub fn committed_events(details: &HashMap<String, String>) -> Vec<(&str, &str)> {
    details
        .get("events")
        .map(|list| list.split(',').filter(|e| !e.is_empty()).filter_map(|e| e.split_once(':')).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_hashes_are_hmac_sha256_of_the_record() {
        // RFC 4231, test case 2, cut to 128 bits; twice, so the kept keyed state is reused.
        let key = AuditKey::new(b"Jefe");
        for _ in 0..2 {
            assert_eq!(key.event_hash(b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c7");
        }
        // The unkeyed key is HMAC with the empty key, not no HMAC.
        assert_eq!(AuditKey::unkeyed().event_hash(b""), "b613679a0814d9ec772f95d778c35fc5");
    }

    fn chain(key: AuditKey) -> (AuditChain, Vec<AuditRecord>) {
        let mut chain = AuditChain::new("infer", "host:1", key, 1_700_000_000_000_000);
        let entries = (0..5)
            .map(|i| {
                chain.append(
                    "MODEL_LOADED",
                    &format!("fraud/{i}"),
                    None,
                    HashMap::from([("sha256".to_owned(), "ab".to_owned())]),
                )
            })
            .collect();
        (chain, entries)
    }

    #[test]
    fn entries_are_keyed_and_name_their_chain() {
        let key = AuditKey::new(b"secret");
        let (chain, entries) = chain(key.clone());
        assert_eq!(chain.id(), "infer/host:1@1700000000000000");
        for entry in &entries {
            assert_eq!(entry.details["chain"], chain.id());
            assert_eq!(entry.details["key_id"], key.id());
            assert_eq!(content_hash(&key, entry), entry.hash);
            assert_ne!(content_hash(&AuditKey::new(b"other"), entry), entry.hash, "another key gives another hash");
        }
        assert_eq!(chain.head().map(|h| h.seq), Some(4));
        let restarted = AuditChain::new("infer", "host:1", key.clone(), 1).append("X", "", None, HashMap::new());
        assert_ne!(
            entries[0].audit_id, restarted.audit_id,
            "a restarted writer (same host:pid, another start) gets other ids"
        );
        // Every lineage field is covered.
        let mut entry = entries[1].clone();
        entry.lineage = Some(Lineage::derive(
            crate::SourceOffset::new("t", 0, 1),
            crate::Stage::Infer,
            "prediction",
            "i",
            Some("r".to_owned()),
            Some("acme".to_owned()),
        ));
        let before = content_hash(&key, &entry);
        if let Some(l) = entry.lineage.as_mut() {
            l.tenant = Some("globex".to_owned());
        }
        assert_ne!(content_hash(&key, &entry), before, "the tenant is hashed");
        // An absent request id and the string "\0" are different content.
        let with = |request_id: Option<&str>, hashing: Option<&str>| {
            let mut entry = entry.clone();
            if let Some(l) = entry.lineage.as_mut() {
                l.request_id = request_id.map(str::to_owned);
            }
            match hashing {
                Some(v) => entry.details.insert("hashing".to_owned(), v.to_owned()),
                None => entry.details.remove("hashing"),
            };
            content_hash(&key, &entry)
        };
        assert_eq!(entries[0].details["hashing"], HASHING, "new entries are hashed by the current rules");
        assert_ne!(with(None, Some(HASHING)), with(Some("\u{0}"), Some(HASHING)));
        assert_ne!(with(None, Some(HASHING)), with(Some(""), Some(HASHING)));
        // Entries written before the tag keep verifying by the rules they were written with.
        assert_eq!(with(None, None), with(Some("\u{0}"), None));
    }

    /// An explanation is part of what an outcome says: a copy with another attribution is
    /// another answer, and an outcome without one keeps the content it had.
    #[test]
    fn an_explanation_is_part_of_an_outcomes_content() {
        let key = AuditKey::new(b"k");
        let request = crate::InferenceRequest {
            request_id: "r".to_owned(),
            tenant: "acme".to_owned(),
            model: "fraud".to_owned(),
            model_version: None,
            features: crate::Features::default(),
            created_at: 1,
            reply_to: None,
            attributes: HashMap::new(),
        };
        let lineage =
            Lineage::derive(crate::SourceOffset::new("t", 0, 1), crate::Stage::Infer, "prediction", "i", None, None);
        let plain = crate::PredictionOutcome::new(lineage, &request, crate::OutcomeStatus::Scored);
        let mut explained = plain.clone();
        let attribution =
            |a: f64| crate::Attribution { feature: "amount".to_owned(), value: 1.0, baseline: 0.5, attribution: a };
        explained.explanation = Some(crate::Explanation {
            method: "exact_shapley".to_owned(),
            baseline_score: 0.25,
            score: 0.5,
            attributions: vec![attribution(0.25)],
            top: vec![attribution(0.25)],
            permutations: None,
            error_bound: None,
        });
        assert_ne!(outcome_content(&key, &plain), outcome_content(&key, &explained));
        assert_eq!(outcome_content(&key, &explained), outcome_content(&key, &explained.clone()));
        let mut forged = explained.clone();
        if let Some(e) = forged.explanation.as_mut() {
            e.attributions[0].attribution = 0.250_000_1;
        }
        assert_ne!(outcome_content(&key, &forged), outcome_content(&key, &explained));
    }

    #[test]
    fn a_short_key_is_refused() {
        let error = AuditKey::checked(b"secret", "a test").expect_err("6 bytes");
        assert!(error.contains("6 bytes") && error.contains("at least 16"), "{error}");
        assert!(AuditKey::checked(&[7; MIN_KEY_BYTES], "a test").is_ok());
    }

    #[test]
    fn commitments_round_trip() {
        let key = AuditKey::new(b"k");
        let events = vec![("e1".to_owned(), key.event_hash(b"one")), ("e2".to_owned(), key.event_hash(b"two"))];
        let details = commitment_details(&events, "t/0:1-2".to_owned());
        let parsed: Vec<(String, String)> =
            committed_events(&details).into_iter().map(|(a, b)| (a.to_owned(), b.to_owned())).collect();
        assert_eq!(parsed, events);
        assert_eq!(key.event_hash(b"one").len(), 32);
        assert_ne!(key.event_hash(b"one"), AuditKey::unkeyed().event_hash(b"one"));
    }
}
