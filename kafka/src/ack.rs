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
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::{mpsc, oneshot};

/// One assignment of one partition to this consumer: a partition revoked and assigned again
/// gets a new generation, and acknowledgements of the old one are ignored.
#[derive(Debug)]
pub struct Assignment {
    pub topic: Arc<str>,
    pub partition: i32,
    /// How many partitions the topic had when it was assigned (0: unknown).
    pub partitions: i32,
    pub generation: u64,
    /// The state committed with the offset this assignment started from (checkpoint mode).
    pub restored: HashMap<String, String>,
}

impl Assignment {
    /// An assignment with nothing restored (tests, and stages fed by hand).
    pub fn detached(topic: &str, partition: i32) -> Arc<Self> {
        Arc::new(Self { topic: Arc::from(topic), partition, partitions: 0, generation: 0, restored: HashMap::new() })
    }
}

/// Sent to the source when a record is finished.
#[derive(Debug)]
pub struct Finished {
    pub assignment: Arc<Assignment>,
    pub offset: i64,
    /// The record's Kafka timestamp (ms; -1 if it had none), for latency.
    pub timestamp_ms: i64,
    /// When the broker had acknowledged every output of the record (ms since the epoch): what
    /// a consumer of the outputs waited for. A [`Gate`] may hold the record longer.
    pub outputs_at_ms: i64,
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
    /// Set by [`Ack::done_through`]: the record passes this gate before it is finished.
    gate: OnceLock<Arc<Gate>>,
}

impl AckInner {
    /// One hold released: the stage is done, or an output was acknowledged.
    pub(crate) fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner).take();
            let finished = Finished {
                assignment: Arc::clone(&self.assignment),
                offset: self.offset,
                timestamp_ms: self.timestamp_ms,
                outputs_at_ms: streamscore_contracts::now_micros() / 1000,
                state,
            };
            match self.gate.get() {
                Some(gate) => gate.arrive(finished, self.tx.clone()),
                // The source may be gone (shutting down): nothing is lost, the offset is
                // simply not stored and the record is redelivered.
                None => {
                    let _ = self.tx.send(finished);
                }
            }
        }
    }
}

/// Holds a group of records whose outputs are all acknowledged until something that depends
/// on those outputs being durable is durable too: the audit commitment of the outputs, which
/// may only name what the broker has. [`Gate::new`] gives the gate and a receiver that
/// resolves once every record arrived (`Err` if one never will: an output failed and the
/// record was dropped); [`Gate::pass`] then finishes them.
#[derive(Debug)]
pub struct Gate {
    waiting: AtomicUsize,
    arrived: Mutex<Vec<(Finished, mpsc::UnboundedSender<Finished>)>>,
    open: Mutex<Option<oneshot::Sender<()>>>,
}

impl Gate {
    /// A gate for `records` records.
    pub fn new(records: usize) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let gate = Arc::new(Self {
            waiting: AtomicUsize::new(records),
            arrived: Mutex::new(Vec::with_capacity(records)),
            open: Mutex::new(Some(tx)),
        });
        if records == 0 {
            gate.opened();
        }
        (gate, rx)
    }

    fn arrive(&self, finished: Finished, tx: mpsc::UnboundedSender<Finished>) {
        self.arrived.lock().unwrap_or_else(PoisonError::into_inner).push((finished, tx));
        if self.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.opened();
        }
    }

    fn opened(&self) {
        if let Some(open) = self.open.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = open.send(());
        }
    }

    /// Finishes every record that arrived (their offsets may be stored now).
    pub fn pass(&self) {
        for (finished, tx) in self.arrived.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = tx.send(finished);
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
                gate: OnceLock::new(),
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

    /// [`Ack::done`], but once every output is acknowledged the record waits at `gate` instead
    /// of finishing, until the gate is passed.
    pub fn done_through(self, gate: &Arc<Gate>) {
        // Set before the stage's own hold is released, so the last release sees it.
        let _ = self.inner.gate.set(Arc::clone(gate));
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

    #[tokio::test]
    async fn a_gate_holds_its_records_until_every_output_is_acknowledged_and_it_is_passed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (a, b) = (Ack::new(0, 1, tx.clone()), Ack::new(0, 2, tx));
        let (out_a, out_b) = (a.output(), b.output());
        let (gate, mut open) = Gate::new(2);
        a.done_through(&gate);
        b.done_through(&gate);
        out_a.release();
        assert!(open.try_recv().is_err(), "b's output is not acknowledged yet");
        out_b.release();
        open.await.expect("every record arrived");
        assert!(rx.try_recv().is_err(), "arrived, not finished: the gate holds them");
        gate.pass();
        let offsets: Vec<i64> = std::iter::from_fn(|| rx.try_recv().ok()).map(|f| f.offset).collect();
        assert_eq!(offsets, [1, 2]);
    }

    #[tokio::test]
    async fn a_gate_whose_record_lost_an_output_never_opens() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let ack = Ack::new(0, 1, tx);
        let output = ack.output();
        let (gate, open) = Gate::new(1);
        ack.done_through(&gate);
        drop(gate);
        drop(output); // a failed delivery drops its hold without releasing it
        assert!(open.await.is_err(), "the gate is gone without opening: nothing is committed");
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
