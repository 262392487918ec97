//! The acknowledgement owed for one input record.
//!
//! A [`Source`](crate::Source) hands out each record with an [`Ack`]. Every output derived from
//! the record is sent through a [`Sink`](crate::Sink) with the ack attached; the stage calls
//! [`Ack::done`] once it has sent all of them. The record is finished when the stage is done
//! *and* the broker acknowledged every output; only then may the source store its offset.
//! A failed output never finishes its record, so its offset is never stored.
//!
//! A stage that keeps state per partition (quotas) attaches the state the record left behind
//! with [`Ack::set_state`]; the source commits it with the offset (see
//! [`checkpoint`](crate::checkpoint)), so a record redelivered after a crash meets exactly the
//! state it met the first time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

/// One assignment of one partition to this consumer: a partition revoked and assigned again
/// gets a new generation, and acknowledgements of the old one are ignored.
#[derive(Debug)]
pub struct Assignment {
    pub topic: Arc<str>,
    pub partition: i32,
    pub generation: u64,
    /// The state committed with the offset this assignment started from (checkpoint mode).
    pub restored: HashMap<String, String>,
}

impl Assignment {
    /// An assignment with nothing restored (tests, and stages fed by hand).
    pub fn detached(topic: &str, partition: i32) -> Arc<Self> {
        Arc::new(Self { topic: Arc::from(topic), partition, generation: 0, restored: HashMap::new() })
    }
}

/// Sent to the source when a record is finished.
#[derive(Debug)]
pub struct Finished {
    pub assignment: Arc<Assignment>,
    pub offset: i64,
    /// The record's Kafka timestamp (ms; -1 if it had none), for latency.
    pub timestamp_ms: i64,
    /// The state this record left behind, keyed (e.g. a tenant's quota bucket).
    pub state: Option<(String, String)>,
}

/// The shared state of an [`Ack`]; an output's hold on its input (opaque outside this crate).
#[derive(Debug)]
pub struct AckInner {
    assignment: Arc<Assignment>,
    offset: i64,
    timestamp_ms: i64,
    /// The stage's own hold (1 until [`Ack::done`]) plus outputs not yet acknowledged.
    pending: AtomicUsize,
    state: Mutex<Option<(String, String)>>,
    tx: mpsc::UnboundedSender<Finished>,
}

impl AckInner {
    /// One hold released: the stage is done, or an output was acknowledged.
    pub(crate) fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner).take();
            // The source may be gone (shutting down): nothing is lost, the offset is simply
            // not stored and the record is redelivered.
            let _ = self.tx.send(Finished {
                assignment: Arc::clone(&self.assignment),
                offset: self.offset,
                timestamp_ms: self.timestamp_ms,
                state,
            });
        }
    }
}

/// What is owed for one input record; see the module documentation.
#[derive(Debug)]
pub struct Ack {
    inner: Arc<AckInner>,
}

impl Ack {
    /// An ack for `offset` of `partition` whose completion is sent to `tx` (tests, and stages
    /// fed by hand; a [`Source`](crate::Source) makes its own).
    pub fn new(partition: i32, offset: i64, tx: mpsc::UnboundedSender<Finished>) -> Self {
        Self::for_assignment(Assignment::detached("", partition), offset, -1, tx)
    }

    pub(crate) fn for_assignment(
        assignment: Arc<Assignment>,
        offset: i64,
        timestamp_ms: i64,
        tx: mpsc::UnboundedSender<Finished>,
    ) -> Self {
        Self {
            inner: Arc::new(AckInner {
                assignment,
                offset,
                timestamp_ms,
                pending: AtomicUsize::new(1),
                state: Mutex::new(None),
                tx,
            }),
        }
    }

    pub fn partition(&self) -> i32 {
        self.inner.assignment.partition
    }

    pub fn offset(&self) -> i64 {
        self.inner.offset
    }

    /// The assignment the record was consumed under, with the state restored for it.
    pub fn assignment(&self) -> &Arc<Assignment> {
        &self.inner.assignment
    }

    /// Records the state this record left behind under `key`; committed with the offset.
    pub fn set_state(&self, key: String, value: String) {
        *self.inner.state.lock().unwrap_or_else(PoisonError::into_inner) = Some((key, value));
    }

    /// A hold for one more output; released when the broker acknowledges it.
    pub(crate) fn output(&self) -> Arc<AckInner> {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        Arc::clone(&self.inner)
    }

    /// Every output for this record has been sent: once the broker has acknowledged them all,
    /// the record is finished.
    pub fn done(self) {
        self.inner.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_only_when_the_stage_and_every_output_are_done() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ack = Ack::new(3, 42, tx);
        let first = ack.output();
        let second = ack.output();
        ack.set_state("tenant".to_owned(), "1:2".to_owned());
        first.release();
        ack.done();
        assert!(rx.try_recv().is_err(), "one output is still unacknowledged");
        second.release();
        let finished = rx.try_recv().expect("finished");
        assert_eq!((finished.assignment.partition, finished.offset), (3, 42));
        assert_eq!(finished.state, Some(("tenant".to_owned(), "1:2".to_owned())));
    }

    #[test]
    fn a_record_with_an_unacknowledged_output_is_never_finished() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ack = Ack::new(0, 1, tx);
        let output = ack.output();
        ack.done();
        drop(output); // a failed delivery drops its hold without releasing it
        assert!(rx.try_recv().is_err());
    }
}
