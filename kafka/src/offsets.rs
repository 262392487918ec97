//! At-least-once offset tracking: an input offset is stored only after every output derived
//! from it, and from every record before it on its partition, is acknowledged.
//!
//! Records of a partition are handed out in order and finished in any order. The tracker keeps
//! the unfinished offsets per partition and reports the highest offset below which everything
//! is finished — the offset to store — so produce requests stay in flight instead of flushing
//! the producer per batch. State a record left behind ([`Ack::set_state`](crate::Ack::set_state))
//! is folded in as its offset becomes safe, so the state of a partition always matches its
//! safe offset.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::ack::{Assignment, Finished};

/// A partition of a topic.
pub type PartitionKey = (Arc<str>, i32);

/// Unfinished offsets per partition, and the state that goes with each safe offset.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<PartitionKey, PartitionState>,
    /// Records handed out and not finished, over all partitions.
    unfinished: usize,
}

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    /// Offsets handed out and not yet safe, in offset order.
    slots: VecDeque<Slot>,
    /// Highest offset handed out in this generation.
    highest: Option<i64>,
    /// Every offset up to and including this one is finished.
    safe: Option<i64>,
    /// State folded in up to `safe`.
    state: HashMap<String, String>,
    /// `safe` moved since [`OffsetTracker::take_moved`] last reported it.
    moved: bool,
}

impl PartitionState {
    fn fresh(assignment: &Assignment) -> Self {
        Self { generation: assignment.generation, state: assignment.restored.clone(), ..Self::default() }
    }

    fn unfinished(&self) -> usize {
        self.slots.iter().filter(|s| !s.finished).count()
    }
}

#[derive(Debug)]
struct Slot {
    offset: i64,
    finished: bool,
    state: Option<(String, String)>,
}

/// A partition whose safe offset moved: what to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafePosition {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The next offset to consume (the safe offset + 1), as Kafka commits it.
    pub next_offset: i64,
    pub state: HashMap<String, String>,
}

impl OffsetTracker {
    /// Starts a new generation of a partition (assigned again), with the state restored for
    /// it. Whatever was tracked for it before is forgotten.
    pub fn assign(&mut self, assignment: &Assignment) {
        let key = (Arc::clone(&assignment.topic), assignment.partition);
        if let Some(old) = self.partitions.insert(key, PartitionState::fresh(assignment)) {
            self.unfinished -= old.unfinished();
        }
    }

    /// Records that `offset` was handed out. An offset at or below one already handed out in
    /// the same generation means the partition was rewound (a seek): it starts over.
    pub fn begin(&mut self, assignment: &Assignment, offset: i64) {
        let key = (Arc::clone(&assignment.topic), assignment.partition);
        let state = self.partitions.entry(key).or_insert_with(|| PartitionState::fresh(assignment));
        if state.generation != assignment.generation || state.highest.is_some_and(|h| offset <= h) {
            self.unfinished -= state.unfinished();
            *state = PartitionState::fresh(assignment);
        }
        state.slots.push_back(Slot { offset, finished: false, state: None });
        state.highest = Some(offset);
        self.unfinished += 1;
    }

    /// Records that a record is finished. Returns the offset that is now safe to store (every
    /// offset up to and including it is finished), if it moved.
    pub fn done(&mut self, finished: Finished) -> Option<i64> {
        let key = (Arc::clone(&finished.assignment.topic), finished.assignment.partition);
        let state = self.partitions.get_mut(&key)?;
        if state.generation != finished.assignment.generation {
            return None; // finished under an assignment that is gone
        }
        let index = state.slots.binary_search_by_key(&finished.offset, |s| s.offset).ok()?;
        let slot = &mut state.slots[index];
        if slot.finished {
            return None;
        }
        slot.finished = true;
        slot.state = finished.state;
        self.unfinished -= 1;
        let mut moved = None;
        while state.slots.front().is_some_and(|s| s.finished) {
            let Some(slot) = state.slots.pop_front() else { break };
            if let Some((k, v)) = slot.state {
                state.state.insert(k, v);
            }
            moved = Some(slot.offset);
        }
        if let Some(safe) = moved {
            state.safe = Some(safe);
            state.moved = true;
        }
        moved
    }

    /// Records handed out and not yet finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.unfinished
    }

    /// Whether anything handed out is not yet safe.
    pub fn is_idle(&self) -> bool {
        self.partitions.values().all(|p| p.slots.is_empty())
    }

    /// The partitions whose safe offset moved since the last call, with their state.
    pub fn take_moved(&mut self) -> Vec<SafePosition> {
        let mut out = Vec::new();
        for ((topic, partition), state) in &mut self.partitions {
            if let (true, Some(safe)) = (state.moved, state.safe) {
                state.moved = false;
                out.push(SafePosition {
                    topic: Arc::clone(topic),
                    partition: *partition,
                    next_offset: safe + 1,
                    state: state.state.clone(),
                });
            }
        }
        out
    }

    /// Forgets partitions no longer assigned.
    pub fn retain(&mut self, assigned: impl Fn(&str, i32) -> bool) {
        let mut dropped = 0;
        self.partitions.retain(|(topic, partition), state| {
            let keep = assigned(topic, *partition);
            if !keep {
                dropped += state.unfinished();
            }
            keep
        });
        self.unfinished -= dropped;
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::Ack;

    fn finished(assignment: &Arc<Assignment>, offset: i64) -> Finished {
        Finished { assignment: Arc::clone(assignment), offset, timestamp_ms: -1, outputs_at_ms: -1, state: None }
    }

    #[test]
    fn stores_only_below_the_first_unfinished_offset() {
        let mut t = OffsetTracker::default();
        let a = Assignment::detached("t", 0);
        for o in 10..15 {
            t.begin(&a, o);
        }
        assert_eq!(t.done(finished(&a, 12)), None, "10 and 11 are still in flight");
        assert_eq!(t.done(finished(&a, 10)), Some(10));
        assert_eq!(t.done(finished(&a, 11)), Some(12));
        assert_eq!(t.done(finished(&a, 14)), None);
        assert_eq!(t.done(finished(&a, 13)), Some(14));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.done(finished(&a, 13)), None, "double ack is ignored");
        let moved = t.take_moved();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].next_offset, 15);
        assert!(t.take_moved().is_empty(), "reported once");
    }

    #[test]
    fn partitions_and_generations_are_independent_and_rewinds_start_over() {
        let mut t = OffsetTracker::default();
        let p0 = Assignment::detached("t", 0);
        let p1 = Assignment::detached("t", 1);
        t.begin(&p0, 5);
        t.begin(&p1, 7);
        assert_eq!(t.done(finished(&p1, 7)), Some(7));
        assert_eq!(t.in_flight(), 1);
        // Partition 1 rewound to 3 after a seek: offsets there count from scratch.
        t.begin(&p1, 3);
        assert_eq!(t.done(finished(&p1, 3)), Some(3));
        // Partition 0 assigned again: an ack of the old generation is ignored.
        let again = Arc::new(Assignment {
            topic: Arc::from("t"),
            partition: 0,
            partitions: 1,
            generation: 1,
            restored: HashMap::new(),
        });
        t.assign(&again);
        t.begin(&again, 5);
        assert_eq!(t.done(finished(&p0, 5)), None, "stale generation");
        assert_eq!(t.done(finished(&again, 5)), Some(5));
        t.retain(|_, p| p == 0);
        assert_eq!(t.done(finished(&p1, 4)), None);
    }

    #[test]
    fn state_is_folded_in_offset_order_as_offsets_become_safe() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut t = OffsetTracker::default();
        let restored = HashMap::from([("b".to_owned(), "restored".to_owned())]);
        let a = Arc::new(Assignment { topic: Arc::from("t"), partition: 0, partitions: 1, generation: 2, restored });
        t.assign(&a);
        for (offset, key, value) in [(0, "a", "0"), (1, "a", "1"), (2, "b", "2")] {
            t.begin(&a, offset);
            let ack = Ack::for_assignment(Arc::clone(&a), offset, -1, tx.clone());
            ack.set_state(key.to_owned(), value.to_owned());
            ack.done();
        }
        let done: Vec<Finished> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let mut done = done.into_iter();
        let (first, second, third) =
            (done.next().expect("done"), done.next().expect("done"), done.next().expect("done"));
        // Finish out of order: nothing is folded until the gap closes.
        assert_eq!(t.done(third), None);
        assert_eq!(t.done(second), None);
        assert!(t.take_moved().is_empty());
        assert_eq!(t.done(first), Some(2));
        let moved = t.take_moved();
        assert_eq!(moved[0].next_offset, 3);
        assert_eq!(moved[0].state.get("a").map(String::as_str), Some("1"), "the later offset wins");
        assert_eq!(moved[0].state.get("b").map(String::as_str), Some("2"));
    }
}
