//! Checking the audit log and the events it commits.
//!
//! What is detected, given the key:
//! - an entry edited (its HMAC no longer matches), deleted (a gap in its chain's seq), or
//!   injected (a forged entry cannot carry a valid HMAC; a copy of a seq with other content);
//! - a chain's tail truncated or a whole chain deleted, seen by the next chain of the same
//!   writer (its `CHAIN_STARTED` names where the previous one ended) or by a head checkpoint
//!   kept outside Kafka;
//! - an event edited (its bytes no longer match their commitment), deleted (committed, not
//!   found), injected (found, never committed), or reordered within its partition (events of
//!   one commitment appear in another order than they were sent; batches themselves are
//!   written concurrently, so their events may interleave).
//!
//! Not detected: anything done with the key (keep it off the brokers); the last entries of a
//! chain still running, when no head checkpoint is given.
//!
//! Commitments name only acknowledged outputs (`streamscore_kafka::audit`), so a crash never
//! leaves a commitment without its event. At-least-once redelivery leaves identical copies
//! (fine) or, after a crash between the outputs' acknowledgement and their commitment,
//! uncommitted copies of committed events: each is a crash leftover only if it says what a
//! committed copy says, less when, by which process and how fast it was written (its
//! content digest); an uncommitted copy that says something else — a forged answer, before
//! or after the genuine one — is named as injected.
//!
//! With a window (`--from`/`--to`), the commitments made in it are checked, and the events
//! within the offsets those commitments cover: not the events' own `written_at`, which is only
//! their word.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{committed_events, content_hash, kinds, AuditKey, GENESIS};
use crate::events::AuditRecord;

/// Where a record is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// An audit-log record as read: decoded, or not.
#[derive(Debug, Clone)]
pub struct SeenEntry {
    pub position: Position,
    pub record: Option<AuditRecord>,
}

/// An output event as read: its id (when it decodes), the HMAC of its bytes, and the keyed
/// digest of what it says less when and how it was written ([`super::outcome_content`],
/// [`super::dead_letter_content`]; the reader may leave it out for events with one copy).
#[derive(Debug, Clone)]
pub struct SeenEvent {
    pub position: Position,
    pub event_id: Option<String>,
    pub hash: String,
    pub content: Option<String>,
}

/// Where a chain was when its writer last checkpointed its head (outside Kafka).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
    /// The audit topic the chain is written to (heads of other logs are not this log's).
    #[serde(default)]
    pub topic: String,
}

/// The event-time window checked (µs; inclusive). Commitments written within `slack_us` after
/// `to` still count for the events of the window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

impl Window {
    pub const ALL: Window = Window { from: i64::MIN, to: i64::MAX };
    const SLACK_US: i64 = 60_000_000;

    fn contains(&self, at: i64) -> bool {
        (self.from..=self.to).contains(&at)
    }
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProblemKind {
    /// An audit entry whose HMAC does not match its content.
    EditedEntry,
    /// A seq missing from a chain.
    DeletedEntry,
    /// An entry that does not belong: an unreadable record, a second different copy of a seq,
    /// an entry that does not follow its predecessor.
    InjectedEntry,
    /// A chain that ends before where its writer said it ended.
    TruncatedChain,
    /// A chain named by its successor or a head checkpoint that is not in the log.
    DeletedChain,
    /// Entries written with another key than the verifier's.
    WrongKey,
    /// An event whose bytes do not match its commitment.
    EditedEvent,
    /// A committed event not found.
    DeletedEvent,
    /// An event no commitment covers.
    InjectedEvent,
    /// Committed events of one writer in another order than sent.
    ReorderedEvent,
}

/// One finding, naming the record where one is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub position: Option<Position>,
    /// The chain (writer) concerned.
    pub writer: Option<String>,
    pub seq: Option<i64>,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(position) = &self.position {
            write!(f, " at {position}")?;
        }
        if let Some(writer) = &self.writer {
            write!(f, " (writer {writer}")?;
            if let Some(seq) = self.seq {
                write!(f, ", seq {seq}")?;
            }
            write!(f, ")")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub chains: usize,
    pub entries: usize,
    pub commitments: usize,
    pub events: usize,
    pub committed_events: usize,
    /// Uncommitted copies left by a crash before their batch was committed (each followed by
    /// the committed copy of the same event): not tampering.
    pub crash_leftovers: usize,
    /// Identical extra copies (at-least-once redelivery).
    pub duplicates: usize,
    /// Entries from before keyed chains (no `chain` detail): not checked.
    pub legacy_entries: usize,
    /// Chains that end without `STAGE_STOPPED`, a successor's link or a head checkpoint: their
    /// last entries cannot be checked for truncation.
    pub open_chains: Vec<String>,
    pub keyed: bool,
    /// Sorted by position (topic, partition, offset), then the ones without a position.
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The events a verification checks: all of them, or, with a window, those within the offsets
/// per partition that the window's commitments cover.
enum Scope<'a> {
    All,
    Offsets(HashMap<(&'a str, i32), (i64, i64)>),
}

impl<'a> Scope<'a> {
    fn of(
        window: Window,
        commitments: &[(&str, i64, &Position, &AuditRecord)],
        copies: &BTreeMap<&str, Vec<&'a SeenEvent>>,
    ) -> Self {
        if window.from == i64::MIN && window.to == i64::MAX {
            return Self::All;
        }
        let mut ranges: HashMap<(&'a str, i32), (i64, i64)> = HashMap::new();
        for (_, _, _, record) in commitments.iter().filter(|c| window.contains(c.3.occurred_at)) {
            for (id, hash) in committed_events(&record.details) {
                for copy in copies.get(id).into_iter().flatten().filter(|c| c.hash == hash) {
                    let p = &copy.position;
                    let range = ranges.entry((p.topic.as_str(), p.partition)).or_insert((p.offset, p.offset));
                    range.0 = range.0.min(p.offset);
                    range.1 = range.1.max(p.offset);
                }
            }
        }
        Self::Offsets(ranges)
    }

    fn covers(&self, position: &Position) -> bool {
        match self {
            Self::All => true,
            Self::Offsets(ranges) => ranges
                .get(&(position.topic.as_str(), position.partition))
                .is_some_and(|(first, last)| (*first..=*last).contains(&position.offset)),
        }
    }
}

/// One commitment of an event: (hash, chain, seq, index in the batch, occurred_at).
type Committed<'a> = (&'a str, &'a str, i64, usize, i64);
/// A committed event's place: (offset, chain, seq, index in the batch, position).
type Placed<'a> = (i64, &'a str, i64, usize, &'a Position);

struct Chain<'a> {
    entries: Vec<(&'a Position, &'a AuditRecord)>,
}

/// Checks every chain in `entries` and every event in `events` against the commitments.
/// `heads` are the head checkpoints writers kept outside Kafka (may be empty).
pub fn verify(
    key: &AuditKey,
    entries: &[SeenEntry],
    events: &[SeenEvent],
    heads: &[ChainHead],
    window: Window,
) -> Report {
    let mut report = Report { keyed: key.is_keyed(), ..Report::default() };
    let mut problems = Vec::new();
    let problem = |kind, position: Option<&Position>, writer: Option<&str>, seq: Option<i64>, detail: String| Problem {
        kind,
        position: position.cloned(),
        writer: writer.map(str::to_owned),
        seq,
        detail,
    };

    // ---- chains ----
    let mut chains: BTreeMap<&str, Chain<'_>> = BTreeMap::new();
    for seen in entries {
        let Some(record) = &seen.record else {
            problems.push(problem(
                ProblemKind::InjectedEntry,
                Some(&seen.position),
                None,
                None,
                "a record that is not an audit entry".to_owned(),
            ));
            continue;
        };
        match record.details.get("chain") {
            Some(chain) => chains.entry(chain.as_str()).or_insert_with(|| Chain { entries: Vec::new() }),
            None => {
                report.legacy_entries += 1;
                continue;
            }
        }
        .entries
        .push((&seen.position, record));
    }
    report.chains = chains.len();
    // Where each chain ended, as its successor or a head checkpoint says: chain → (seq, hash, by).
    let mut said_ends: HashMap<String, Vec<(i64, String, String)>> = HashMap::new();
    for head in heads.iter().filter(|h| h.topic.is_empty() || entries.iter().any(|e| e.position.topic == h.topic)) {
        said_ends.entry(head.chain.clone()).or_default().push((
            head.seq,
            head.hash.clone(),
            "a head checkpoint".to_owned(),
        ));
    }
    let mut commitments: Vec<(&str, i64, &Position, &AuditRecord)> = Vec::new();
    let mut last_of: HashMap<&str, (i64, &str, bool)> = HashMap::new();
    for (name, chain) in &mut chains {
        chain.entries.sort_by_key(|(position, record)| (record.seq, (*position).clone()));
        let mut expected = 0_i64;
        let mut prev_hash = GENESIS.to_owned();
        let mut previous: Option<&AuditRecord> = None;
        let mut wrong_key_reported = false;
        for (position, record) in &chain.entries {
            report.entries += 1;
            if record.details.get("key_id").map(String::as_str) != Some(key.id()) {
                if !wrong_key_reported {
                    problems.push(problem(
                        ProblemKind::WrongKey,
                        Some(position),
                        Some(name),
                        Some(record.seq),
                        format!(
                            "written with key {:?}, verifying with key {:?}",
                            record.details.get("key_id").map_or("?", String::as_str),
                            key.id()
                        ),
                    ));
                    wrong_key_reported = true;
                }
                continue;
            }
            if let Some(before) = previous.filter(|p| p.seq == record.seq) {
                if *before == **record {
                    report.duplicates += 1;
                } else {
                    problems.push(problem(
                        ProblemKind::InjectedEntry,
                        Some(position),
                        Some(name),
                        Some(record.seq),
                        "a second entry with this seq and other content".to_owned(),
                    ));
                }
                continue;
            }
            if content_hash(key, record) != record.hash {
                problems.push(problem(
                    ProblemKind::EditedEntry,
                    Some(position),
                    Some(name),
                    Some(record.seq),
                    format!("{} {:?}: its HMAC does not match its content", record.kind, record.subject),
                ));
            } else if record.seq != expected {
                problems.push(problem(
                    ProblemKind::DeletedEntry,
                    Some(position),
                    Some(name),
                    Some(record.seq),
                    format!("entries {expected}..{} are missing before this one", record.seq - 1),
                ));
            } else if record.prev_hash != prev_hash {
                problems.push(problem(
                    ProblemKind::InjectedEntry,
                    Some(position),
                    Some(name),
                    Some(record.seq),
                    format!("does not follow entry {}: its prev_hash names another entry", record.seq - 1),
                ));
            }
            if record.kind == kinds::CHAIN_STARTED {
                if let (Some(chain), Some(seq), Some(hash)) = (
                    record.details.get("previous_chain"),
                    record.details.get("previous_seq").and_then(|s| s.parse::<i64>().ok()),
                    record.details.get("previous_hash"),
                ) {
                    said_ends.entry(chain.clone()).or_default().push((
                        seq,
                        hash.clone(),
                        format!("the next chain {name}"),
                    ));
                }
            }
            if record.kind == kinds::BATCH_COMMITTED {
                commitments.push((name, record.seq, position, record));
            }
            expected = record.seq + 1;
            prev_hash = record.hash.clone();
            previous = Some(record);
        }
        if let Some(last) = previous {
            last_of.insert(name, (last.seq, last.hash.as_str(), last.kind == kinds::STAGE_STOPPED));
        }
    }
    for (chain, ends) in &said_ends {
        for (seq, hash, by) in ends {
            match last_of.get(chain.as_str()) {
                None => problems.push(problem(
                    ProblemKind::DeletedChain,
                    None,
                    Some(chain),
                    Some(*seq),
                    format!("{by} says this chain ended at seq {seq}; none of it is in the log"),
                )),
                Some((last, _, _)) if last < seq => problems.push(problem(
                    ProblemKind::TruncatedChain,
                    None,
                    Some(chain),
                    Some(*last),
                    format!("{by} says this chain ended at seq {seq}; the log ends at seq {last}"),
                )),
                Some((last, last_hash, _)) if last == seq && last_hash != hash => problems.push(problem(
                    ProblemKind::EditedEntry,
                    None,
                    Some(chain),
                    Some(*last),
                    format!("{by} names another last entry (hash {hash})"),
                )),
                Some(_) => {}
            }
        }
    }
    report.open_chains = last_of
        .iter()
        .filter(|(chain, (_, _, stopped))| !stopped && !said_ends.contains_key(**chain))
        .map(|(chain, _)| (*chain).to_owned())
        .collect();
    report.open_chains.sort();

    // ---- events against commitments ----
    report.commitments = commitments.len();
    if problems.iter().any(|p| p.kind == ProblemKind::WrongKey) {
        // Event hashes are keyed too: with another key every event would look edited.
        report.events = events.len();
        problems.sort_by(|a, b| (&a.writer, a.seq).cmp(&(&b.writer, b.seq)));
        report.problems = problems;
        return report;
    }
    // event id → every commitment of it: (hash, chain, seq, index in the batch, occurred_at).
    let mut committed: HashMap<&str, Vec<Committed<'_>>> = HashMap::new();
    for (chain, seq, _, record) in &commitments {
        for (index, (id, hash)) in committed_events(&record.details).into_iter().enumerate() {
            committed.entry(id).or_default().push((hash, chain, *seq, index, record.occurred_at));
        }
    }
    let mut copies: BTreeMap<&str, Vec<&SeenEvent>> = BTreeMap::new();
    let mut unreadable: Vec<&SeenEvent> = Vec::new();
    for event in events {
        match &event.event_id {
            Some(id) => copies.entry(id.as_str()).or_default().push(event),
            None => unreadable.push(event),
        }
    }
    for found in copies.values_mut() {
        found.sort_by(|a, b| a.position.cmp(&b.position));
    }
    // With a window, the events checked are those within the offsets, per partition, that the
    // window's commitments cover: a commitment's time is under the HMAC, an event's own
    // `written_at` is only the event's word (a forgery would simply claim another time).
    let scope = Scope::of(window, &commitments, &copies);
    for event in unreadable {
        if scope.covers(&event.position) {
            problems.push(problem(
                ProblemKind::InjectedEvent,
                Some(&event.position),
                None,
                None,
                "a record that does not decode as this topic's event".to_owned(),
            ));
        }
    }
    // Every commitment (of the window) finds its event.
    for (chain, seq, position, record) in &commitments {
        if !window.contains(record.occurred_at) || record.occurred_at > window.to.saturating_sub(Window::SLACK_US) {
            continue;
        }
        for (id, hash) in committed_events(&record.details) {
            let found = copies.get(id).map(Vec::as_slice).unwrap_or_default();
            if found.iter().any(|e| e.hash == hash) {
                continue;
            }
            match found.first() {
                Some(copy) => problems.push(problem(
                    ProblemKind::EditedEvent,
                    Some(&copy.position),
                    Some(chain),
                    Some(*seq),
                    format!("event {id}: its bytes do not match the commitment at {position}"),
                )),
                None => problems.push(problem(
                    ProblemKind::DeletedEvent,
                    None,
                    Some(chain),
                    Some(*seq),
                    format!("event {id}, committed at {position}, is not in the topics"),
                )),
            }
        }
    }
    // Every event (of the window) is committed; committed ones keep their order.
    let mut order: HashMap<(&str, i32), Vec<Placed<'_>>> = HashMap::new();
    for (id, found) in &copies {
        let commits = committed.get(id).map(Vec::as_slice).unwrap_or_default();
        // What the committed copies say (less when and how they were written).
        let committed_content: Vec<&str> = found
            .iter()
            .filter(|c| commits.iter().any(|k| k.0 == c.hash))
            .filter_map(|c| c.content.as_deref())
            .collect();
        let mut seen_hashes = HashSet::new();
        for copy in found {
            if !scope.covers(&copy.position) {
                continue;
            }
            report.events += 1;
            if let Some((_, chain, seq, index, _)) = commits.iter().find(|c| c.0 == copy.hash) {
                if seen_hashes.insert(copy.hash.as_str()) {
                    report.committed_events += 1;
                    // Order is checked on first copies: redelivered ones come later.
                    order.entry((copy.position.topic.as_str(), copy.position.partition)).or_default().push((
                        copy.position.offset,
                        chain,
                        *seq,
                        *index,
                        &copy.position,
                    ));
                } else {
                    report.duplicates += 1;
                }
                continue;
            }
            if commits.is_empty() {
                problems.push(problem(
                    ProblemKind::InjectedEvent,
                    Some(&copy.position),
                    None,
                    None,
                    format!("event {id} is in no commitment"),
                ));
                continue;
            }
            // A copy the commitments do not name, of an event they do: a crash leftover (its
            // outputs were acknowledged, the process died before their commitment, and the
            // redelivered request was answered again) when it says what a committed copy says,
            // wherever it sits; else a forgery (or an edit, reported above when no copy
            // matches the commitment).
            let same = copy.content.as_deref().is_some_and(|content| committed_content.contains(&content));
            if same {
                report.crash_leftovers += 1;
            } else if found.iter().any(|o| commits.iter().any(|k| k.0 == o.hash)) {
                problems.push(problem(
                    ProblemKind::InjectedEvent,
                    Some(&copy.position),
                    None,
                    None,
                    format!(
                        "event {id}: an uncommitted copy that says something else than the committed one \
                         (another score, status, version, reply address or features)"
                    ),
                ));
            }
        }
    }
    for ((topic, partition), mut placed) in order {
        placed.sort_by_key(|p| p.0);
        // Batches are written concurrently, so only the events of one commitment have an
        // order: the order they were sent in, one after another.
        let mut last: HashMap<(&str, i64), (usize, i64)> = HashMap::new();
        for (offset, chain, seq, index, position) in placed {
            if let Some(&(last_index, last_offset)) = last.get(&(chain, seq)) {
                if index < last_index {
                    problems.push(problem(
                        ProblemKind::ReorderedEvent,
                        Some(position),
                        Some(chain),
                        Some(seq),
                        format!(
                            "{topic}/{partition}: committed as event {index} of seq {seq}, but it comes after event \
                             {last_index} of the same commitment (offset {last_offset})"
                        ),
                    ));
                    continue;
                }
            }
            last.insert((chain, seq), (index, offset));
        }
    }
    problems.sort_by(|a, b| match (&a.position, &b.position) {
        (Some(x), Some(y)) => x.cmp(y).then(a.kind.cmp(&b.kind)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => (&a.writer, a.seq, a.kind).cmp(&(&b.writer, b.seq, b.kind)),
    });
    problems.dedup();
    report.problems = problems;
    report
}

#[cfg(test)]
mod tests {
    use super::super::{commitment_details, AuditChain};
    use super::*;

    const KEY: &[u8] = b"test key";

    fn at(topic: &str, partition: i32, offset: i64) -> Position {
        Position { topic: topic.to_owned(), partition, offset }
    }

    /// A log: a chain that committed 2 batches of 3 events over 2 partitions and stopped.
    struct Log {
        entries: Vec<SeenEntry>,
        events: Vec<SeenEvent>,
        key: AuditKey,
    }

    fn log() -> Log {
        let key = AuditKey::new(KEY);
        let mut chain = AuditChain::new("infer", "i-1", key.clone(), 100);
        let mut records = vec![chain.append(kinds::CHAIN_STARTED, "c", None, HashMap::new())];
        let mut events = Vec::new();
        let mut offsets = [0_i64, 0];
        for batch in 0..2 {
            let mut committed = Vec::new();
            for i in 0..3 {
                let id = format!("event-{batch}-{i}");
                let bytes = format!("bytes of {id}");
                let hash = key.event_hash(bytes.as_bytes());
                let partition = usize::from(i % 2 == 1);
                events.push(SeenEvent {
                    position: at("predictions", i32::from(i % 2 == 1), offsets[partition]),
                    event_id: Some(id.clone()),
                    hash: hash.clone(),
                    content: Some(format!("what {id} says")),
                });
                offsets[partition] += 1;
                committed.push((id, hash));
            }
            records.push(chain.append(
                kinds::BATCH_COMMITTED,
                "3 events",
                None,
                commitment_details(&committed, String::new()),
            ));
        }
        records.push(chain.append(kinds::STAGE_STOPPED, "c", None, HashMap::new()));
        let entries = records
            .into_iter()
            .enumerate()
            .map(|(i, record)| SeenEntry { position: at("audit", 0, i as i64), record: Some(record) })
            .collect();
        Log { entries, events, key }
    }

    fn check(log: &Log) -> Report {
        verify(&log.key, &log.entries, &log.events, &[], Window::ALL)
    }

    fn kinds_of(report: &Report) -> Vec<ProblemKind> {
        report.problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn a_clean_log_verifies() {
        let report = check(&log());
        assert!(report.ok(), "{:#?}", report.problems);
        assert_eq!((report.chains, report.entries, report.commitments, report.events), (1, 4, 2, 6));
        assert_eq!(report.committed_events, 6);
        assert!(report.open_chains.is_empty(), "stopped cleanly");
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        // Edited entry.
        let mut edited = log();
        if let Some(r) = edited.entries[1].record.as_mut() {
            r.subject = "99 events".to_owned();
        }
        assert_eq!(kinds_of(&check(&edited)), [ProblemKind::EditedEntry]);
        assert_eq!(check(&edited).problems[0].position, Some(at("audit", 0, 1)));

        // Deleted entry (the first commitment): a gap, and its events are uncommitted.
        let mut deleted = log();
        deleted.entries.remove(1);
        let report = check(&deleted);
        assert!(kinds_of(&report).contains(&ProblemKind::DeletedEntry), "{:#?}", report.problems);
        assert!(kinds_of(&report).contains(&ProblemKind::InjectedEvent));

        // Injected entry: a forged one without the key.
        let mut injected = log();
        let mut forged_chain = AuditChain::new("infer", "i-1", AuditKey::new(b"wrong"), 100);
        let mut forged = forged_chain.append(kinds::BATCH_COMMITTED, "x", None, HashMap::new());
        forged.details.insert("key_id".to_owned(), AuditKey::new(KEY).id().to_owned());
        forged.seq = 2;
        injected.entries.push(SeenEntry { position: at("audit", 0, 9), record: Some(forged) });
        assert_eq!(kinds_of(&check(&injected)), [ProblemKind::InjectedEntry]);

        // Truncated tail: the stop entry and the last commitment are gone; the next chain's
        // first entry says where this one ended.
        let mut truncated = log();
        truncated.entries.truncate(2);
        let head = truncated.entries[1].record.clone();
        let mut next = AuditChain::new("infer", "i-1", truncated.key.clone(), 200);
        let link = HashMap::from([
            ("previous_chain".to_owned(), "infer/i-1@100".to_owned()),
            ("previous_seq".to_owned(), "3".to_owned()),
            ("previous_hash".to_owned(), head.map(|h| h.hash).unwrap_or_default()),
        ]);
        truncated.entries.push(SeenEntry {
            position: at("audit", 0, 2),
            record: Some(next.append(kinds::CHAIN_STARTED, "c", None, link)),
        });
        let report = check(&truncated);
        assert!(kinds_of(&report).contains(&ProblemKind::TruncatedChain), "{:#?}", report.problems);
        // ... and by a head checkpoint, without a next chain.
        let mut open = log();
        open.entries.truncate(3);
        let head = ChainHead { chain: "infer/i-1@100".to_owned(), seq: 3, hash: "h".to_owned(), topic: String::new() };
        let report = verify(&open.key, &open.entries, &open.events, &[head.clone()], Window::ALL);
        assert_eq!(kinds_of(&report), [ProblemKind::TruncatedChain]);
        let report = verify(&open.key, &[], &[], &[head], Window::ALL);
        assert_eq!(kinds_of(&report), [ProblemKind::DeletedChain]);
        assert_eq!(check(&open).open_chains, ["infer/i-1@100"], "without a head, an open chain is said to be open");

        // Edited event.
        let mut event_edited = log();
        event_edited.events[4].hash = AuditKey::new(KEY).event_hash(b"other bytes");
        let report = check(&event_edited);
        assert_eq!(kinds_of(&report), [ProblemKind::EditedEvent]);
        assert_eq!(report.problems[0].position, Some(event_edited.events[4].position.clone()));
        assert_eq!(report.problems[0].seq, Some(2));

        // Deleted event.
        let mut event_deleted = log();
        event_deleted.events.remove(0);
        assert_eq!(kinds_of(&check(&event_deleted)), [ProblemKind::DeletedEvent]);

        // Injected event.
        let mut event_injected = log();
        event_injected.events.push(SeenEvent {
            position: at("predictions", 0, 50),
            event_id: Some("forged".to_owned()),
            hash: "00".to_owned(),
            content: None,
        });
        assert_eq!(kinds_of(&check(&event_injected)), [ProblemKind::InjectedEvent]);

        // Reordered events of one partition.
        let mut reordered = log();
        let (a, b) = (0, 2); // events 0 and 2 are both on partition 0, offsets 0 and 1
        let offset_a = reordered.events[a].position.offset;
        reordered.events[a].position.offset = reordered.events[b].position.offset;
        reordered.events[b].position.offset = offset_a;
        assert_eq!(kinds_of(&check(&reordered)), [ProblemKind::ReorderedEvent]);

        // Another key.
        let other = Log { key: AuditKey::new(b"not it"), ..log() };
        assert_eq!(kinds_of(&check(&other)), [ProblemKind::WrongKey]);
    }

    #[test]
    fn redelivery_is_not_tampering() {
        // An identical copy (redelivered) and an uncommitted copy that says the same (outputs
        // acknowledged, then a crash before their commitment; written again, at another time
        // and in another batch) are fine, before or after the committed copy.
        let mut redelivered = log();
        let mut copy = redelivered.events[1].clone();
        copy.position.offset = 10;
        redelivered.events.push(copy);
        for offset in [-1, 11] {
            let mut leftover = redelivered.events[1].clone();
            leftover.position.offset = offset;
            leftover.hash = format!("an attempt at offset {offset}, written at another time");
            redelivered.events.push(leftover);
        }
        let report = check(&redelivered);
        assert!(report.ok(), "{:#?}", report.problems);
        assert_eq!((report.duplicates, report.crash_leftovers), (1, 2));

        // A copy that says something else is a forgery, after the genuine copy or before it.
        for offset in [10, -1] {
            let mut forged_copy = log();
            let mut copy = forged_copy.events[1].clone();
            copy.position.offset = offset;
            copy.hash = "forged".to_owned();
            copy.content = Some("another score".to_owned());
            forged_copy.events.push(copy);
            let report = check(&forged_copy);
            assert_eq!(kinds_of(&report), [ProblemKind::InjectedEvent], "a forgery at offset {offset}");
            assert_eq!(report.problems[0].position, Some(at("predictions", 1, offset)));
        }
    }

    #[test]
    fn a_window_checks_the_offsets_its_commitments_cover_whatever_events_claim() {
        // Commitments at 5 and 6 (occurred_at is under the HMAC); a forged event between the
        // committed ones is checked even though it claims no time at all.
        let mut log = log();
        let occurred: Vec<i64> = log.entries.iter().filter_map(|e| e.record.as_ref().map(|r| r.occurred_at)).collect();
        let window = Window { from: occurred[1], to: occurred[2] };
        let mut forged = log.events[0].clone();
        forged.event_id = Some("forged".to_owned());
        forged.position.offset = 1;
        log.events.iter_mut().filter(|e| e.position.partition == 0 && e.position.offset >= 1).for_each(|e| {
            e.position.offset += 1;
        });
        log.events.push(forged);
        let report = verify(&log.key, &log.entries, &log.events, &[], window);
        assert_eq!(kinds_of(&report), [ProblemKind::InjectedEvent], "{:#?}", report.problems);
        // Outside the covered offsets, nothing is checked.
        let mut after = log.events.last().cloned().expect("an event");
        after.position.offset = 99;
        log.events.push(after);
        let report = verify(&log.key, &log.entries, &log.events, &[], window);
        assert_eq!(report.problems.len(), 1);
    }
}
