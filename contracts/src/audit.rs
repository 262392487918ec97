//! The hash chain of the audit log.
//!
//! Every writer (a stage instance) keeps its own chain: entry `n` carries the hash of entry
//! `n-1` and a hash over its own content, so removing, reordering or editing an entry breaks
//! the chain at that point. [`verify`] walks a writer's entries and says where it breaks.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::events::AuditRecord;
use crate::lineage::{now_micros, Lineage, EVENT_ID_NAMESPACE};

/// `prev_hash` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The next entries of one writer's chain.
#[derive(Debug, Clone)]
pub struct AuditChain {
    stage: String,
    instance: String,
    seq: i64,
    prev_hash: String,
}

impl AuditChain {
    pub fn new(stage: &str, instance: &str) -> Self {
        Self { stage: stage.to_owned(), instance: instance.to_owned(), seq: 0, prev_hash: GENESIS.to_owned() }
    }

    /// Appends an entry and returns it.
    pub fn append(
        &mut self,
        kind: &str,
        subject: &str,
        lineage: Option<Lineage>,
        details: HashMap<String, String>,
    ) -> AuditRecord {
        let audit_id = Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            format!("audit/{}/{}/{}", self.stage, self.instance, self.seq).as_bytes(),
        );
        let mut record = AuditRecord {
            audit_id: audit_id.to_string(),
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
        record.hash = content_hash(&record);
        self.seq += 1;
        self.prev_hash = record.hash.clone();
        record
    }
}

/// Hex sha256 over an entry's content (everything but `hash`), fields length-prefixed so no
/// two different entries serialize the same.
pub fn content_hash(record: &AuditRecord) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(record.audit_id.as_bytes());
    field(&record.seq.to_be_bytes());
    field(record.stage.as_bytes());
    field(record.instance.as_bytes());
    field(record.kind.as_bytes());
    field(record.subject.as_bytes());
    match &record.lineage {
        None => field(b""),
        Some(l) => {
            field(l.event_id.as_bytes());
            field(format!("{}", l.source).as_bytes());
        }
    }
    let mut details: Vec<(&String, &String)> = record.details.iter().collect();
    details.sort();
    for (key, value) in details {
        field(key.as_bytes());
        field(value.as_bytes());
    }
    field(&record.occurred_at.to_be_bytes());
    field(record.prev_hash.as_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// Entry at this position has a hash that does not match its content.
    Tampered { seq: i64 },
    /// Entry at this position does not point at the previous entry.
    Broken { seq: i64 },
    /// Entries are missing before this position.
    Gap { expected: i64, found: i64 },
}

/// Verifies one writer's entries, in log order.
pub fn verify(entries: &[AuditRecord]) -> Result<(), ChainError> {
    let mut prev = GENESIS.to_owned();
    for (expected, entry) in (0_i64..).zip(entries) {
        if entry.seq != expected {
            return Err(ChainError::Gap { expected, found: entry.seq });
        }
        if entry.prev_hash != prev {
            return Err(ChainError::Broken { seq: entry.seq });
        }
        if content_hash(entry) != entry.hash {
            return Err(ChainError::Tampered { seq: entry.seq });
        }
        prev = entry.hash.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_verify_and_any_change_breaks_them() {
        let mut chain = AuditChain::new("infer", "host:1");
        let entries: Vec<AuditRecord> = (0..5)
            .map(|i| {
                chain.append(
                    "MODEL_LOADED",
                    &format!("fraud/{i}"),
                    None,
                    HashMap::from([("sha256".to_owned(), "ab".to_owned())]),
                )
            })
            .collect();
        assert_eq!(verify(&entries), Ok(()));

        let mut edited = entries.clone();
        edited[2].subject = "fraud/9".to_owned();
        assert_eq!(verify(&edited), Err(ChainError::Tampered { seq: 2 }));

        let mut removed = entries.clone();
        removed.remove(1);
        assert_eq!(verify(&removed), Err(ChainError::Gap { expected: 1, found: 2 }));

        let mut rehashed = entries;
        rehashed[3].subject = "forged".to_owned();
        rehashed[3].hash = content_hash(&rehashed[3]);
        assert_eq!(verify(&rehashed), Err(ChainError::Broken { seq: 4 }), "re-hashing one entry breaks the next link");
    }
}
