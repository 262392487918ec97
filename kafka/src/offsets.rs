//! At-least-once offset tracking: an input offset is stored only after every output derived
//! from it, and from every record before it on its partition, is acknowledged.
//!
//! Records of a partition are handed out in order and acknowledged in any order. The tracker
//! keeps the in-flight offsets per partition and reports the highest offset below which
//! everything is acknowledged — the offset to store — so produce requests stay in flight
//! instead of flushing the producer per batch.

use std::collections::{BTreeSet, HashMap};

use tokio::sync::mpsc;

/// In-flight offsets per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionState>,
}

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    /// Highest offset handed out.
    highest: i64,
    /// First offset handed out since the partition (re)started.
    first: i64,
    /// Last offset reported as done.
    stored: Option<i64>,
}

impl OffsetTracker {
    /// Records that `offset` of `partition` was handed out. An offset at or below one already
    /// seen means the partition was rewound (rebalance, seek): its state starts over.
    pub fn begin(&mut self, partition: i32, offset: i64) {
        let state = self.partitions.entry(partition).or_default();
        if offset <= state.highest && (!state.in_flight.is_empty() || state.stored.is_some()) {
            *state = PartitionState::default();
        }
        if state.in_flight.is_empty() && state.stored.is_none() {
            state.first = offset;
        }
        state.in_flight.insert(offset);
        state.highest = offset;
    }

    /// Records that `offset` is fully acknowledged. Returns the offset that is now safe to
    /// store (every offset up to and including it is done), if it moved.
    pub fn done(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&partition)?;
        if !state.in_flight.remove(&offset) {
            return None;
        }
        let safe = match state.in_flight.first() {
            Some(first) => first - 1,
            None => state.highest,
        };
        if state.stored.is_some_and(|s| s >= safe) || safe < state.first {
            return None;
        }
        state.stored = Some(safe);
        Some(safe)
    }

    /// Records still in flight, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Forgets partitions no longer assigned.
    pub fn retain(&mut self, assigned: impl Fn(i32) -> bool) {
        self.partitions.retain(|p, _| assigned(*p));
    }
}

/// An acknowledgement owed for one input record, sent back to the stage that consumed it.
#[derive(Debug)]
pub struct Ack {
    pub partition: i32,
    pub offset: i64,
    tx: mpsc::UnboundedSender<(i32, i64)>,
}

impl Ack {
    pub fn new(partition: i32, offset: i64, tx: mpsc::UnboundedSender<(i32, i64)>) -> Self {
        Self { partition, offset, tx }
    }

    /// Every output for this record is acknowledged by the broker.
    pub fn done(self) {
        // The consuming stage may be gone (shutting down); nothing is lost: the offset is
        // simply not stored and the record is redelivered.
        let _ = self.tx.send((self.partition, self.offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_below_the_first_unacknowledged_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.begin(0, o);
        }
        assert_eq!(t.done(0, 12), None, "10 and 11 are still in flight");
        assert_eq!(t.done(0, 10), Some(10));
        assert_eq!(t.done(0, 11), Some(12));
        assert_eq!(t.done(0, 14), None);
        assert_eq!(t.done(0, 13), Some(14));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.done(0, 13), None, "double ack is ignored");
    }

    #[test]
    fn partitions_are_independent_and_rewinds_start_over() {
        let mut t = OffsetTracker::default();
        t.begin(0, 5);
        t.begin(1, 7);
        assert_eq!(t.done(1, 7), Some(7));
        assert_eq!(t.in_flight(), 1);
        // Partition 1 rewound to 3 after a rebalance: offsets there count from scratch.
        t.begin(1, 3);
        assert_eq!(t.done(1, 3), Some(3));
        assert_eq!(t.done(0, 5), Some(5));
        t.retain(|p| p == 0);
        assert_eq!(t.done(1, 4), None);
    }
}
