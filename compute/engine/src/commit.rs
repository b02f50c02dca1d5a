//! The commit loop: adaptive group commit into WAL segments.
//!
//! One task owns seq assignment, condition checks, memtable inserts and WAL segment ids.
//! Requests that arrive while segment PUTs are in flight accumulate into the next group. Up to
//! `wal_pipeline_depth` (at most `WAL_MAX_IN_FLIGHT`) PUTs are in flight at once: a group is
//! put at once when nothing is in flight, a further one while others are (the pipeline) once
//! it holds `wal_pipeline_min_bytes`, and when the pipeline is full the group grows until the
//! lowest PUT returns. At low load a write costs
//! one PUT round trip; at high load PUTs overlap (a local disk's journal or S3 serves them in
//! parallel) and stay large.
//!
//! Invariants:
//! - Memtable inserts happen in seq order (only this task inserts).
//! - Segment ids are consecutive and never skipped; the create of id `i` starts only once the
//!   creates of every id up to `i - WAL_MAX_IN_FLIGHT` succeeded (the window's front is
//!   removed only when its own create succeeded). A writer fenced at `j` thus never writes at
//!   `j + WAL_MAX_IN_FLIGHT` or above, where the newer writer's data begins (`Db::open`).
//! - A group is acknowledged only once its segment and every lower one landed (acks in segment
//!   order): a later group may have been checked against an earlier group's effects.
//! - `visible_seq` and `durable_seq` advance only after the segment holding those seqs landed.
//!   Explicitly buffered writes are visible once in the memtable (through `buffered_seq`),
//!   which never exposes a durable write early.
//! - A segment whose PUT failed transiently is retried with the same name and bytes until it
//!   lands or we are fenced: later groups depend on its effects, so it is never dropped.
//! - A create that finds the segment name taken means a newer writer fenced us: nothing above
//!   `durable_seq` ever becomes visible, and the engine stops. Groups below the taken name
//!   still in flight get "outcome unknown" (they may have landed, and the new writer may replay
//!   them); the group at the name and those above it applied nothing (the new writer's epoch
//!   filter skips whatever of them lands).

use crate::db::{Db, DbInner};
use crate::error::{EngineError, EngineResult};
use crate::memtable::{Memtable, Snap};
use crate::stall::Writer;
pub(crate) use crate::txn::Role;
use crate::txn::{encode_intent, IntentState, Participant, Plan, Sequence, MARKER_TTL_MS};
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strata_clock::Instant;
use strata_format::{encode_wal_segment, Entry, Kind, WalSegmentHeader, WAL_MAX_IN_FLIGHT};
use strata_manifest::layout::wal_path;
use strata_objstore::{PutMode, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What one op in a write batch does.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store `value`; `ttl_ms` 0 means it never expires.
    Put {
        /// The value.
        value: Bytes,
        /// Time to live from the write, in milliseconds; 0 never expires.
        ttl_ms: u64,
    },
    /// Write a tombstone.
    Delete,
}

/// A write condition, checked against the state before the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// No condition.
    None,
    /// Holds only when the key has no live value.
    IfAbsent,
    /// Holds only when the key's live value has exactly this version.
    IfVersion(u64),
}

/// One op of a batch.
#[derive(Debug, Clone)]
pub struct WriteOp {
    /// The key written.
    pub key: Bytes,
    /// What is written to it.
    pub op: Op,
    /// The condition the whole batch depends on.
    pub cond: Cond,
}

/// What one op did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpOutcome {
    /// The seq (version) the op wrote.
    pub version: u64,
    /// For deletes: whether a live value was there.
    pub found: bool,
}

type Reply = oneshot::Sender<EngineResult<Vec<OpOutcome>>>;

struct WriteReq {
    ops: Vec<WriteOp>,
    durable: bool,
    role: Role,
    reply: Reply,
}

enum Msg {
    Write(WriteReq),
    Freeze(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Sends work to the commit loop.
#[derive(Clone, Debug)]
pub(crate) struct CommitHandle {
    tx: mpsc::Sender<Msg>,
}

impl CommitHandle {
    pub async fn submit(
        &self,
        ops: Vec<WriteOp>,
        durable: bool,
        role: Role,
        timeout: Duration,
    ) -> EngineResult<Vec<OpOutcome>> {
        let (reply, rx) = oneshot::channel();
        let deadline = strata_clock::now() + timeout;
        let msg = Msg::Write(WriteReq {
            ops,
            durable,
            role,
            reply,
        });
        match strata_clock::timeout_at(deadline, self.tx.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(EngineError::Closed),
            Err(_) => {
                return Err(EngineError::Unavailable(format!(
                    "write not accepted within {timeout:?}: the write pipeline is backed up"
                )))
            }
        }
        match strata_clock::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(EngineError::Unavailable(
                "write outcome unknown: the engine stopped before acknowledging it".into(),
            )),
            Err(_) => Err(EngineError::Unavailable(format!(
                "write outcome unknown: the WAL did not become durable within {timeout:?}"
            ))),
        }
    }

    pub fn request_freeze(&self) {
        let (tx, _rx) = oneshot::channel();
        let _ = self.tx.try_send(Msg::Freeze(tx));
    }

    pub async fn freeze_now(&self) -> EngineResult<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Freeze(tx))
            .await
            .map_err(|_| EngineError::Closed)?;
        rx.await.map_err(|_| EngineError::Closed)
    }

    /// Stops accepting writes and waits until every accepted write is durable (or failed).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

pub(crate) fn start(
    inner: Arc<DbInner>,
    next_seq: u64,
    next_segment: u64,
) -> (CommitHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let task = tokio::spawn(
        Committer {
            inner,
            rx,
            window: VecDeque::new(),
            puts: FuturesUnordered::new(),
            next_seq,
            next_segment,
            group: Group::default(),
            accepting: true,
            shutdown_waiters: Vec::new(),
            deferred: Vec::new(),
            held: VecDeque::new(),
        }
        .run(),
    );
    (CommitHandle { tx }, task)
}

/// Requests the commit loop's channel holds.
const CHANNEL_CAPACITY: usize = 4096;
/// Most large writes held back at once (see [`Committer::held`]).
const HELD_MAX: usize = CHANNEL_CAPACITY;

#[derive(Default)]
struct Group {
    batches: Vec<Vec<Entry>>,
    waiters: Vec<(Reply, Vec<OpOutcome>)>,
    bytes: usize,
    /// The part of `bytes` that large writes hold (see [`Committer::held`]).
    large_bytes: usize,
    max_seq: u64,
    /// Transactions whose locks are released once this group is visible.
    unlock: Vec<Arc<str>>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// A segment in the pipeline, from its first PUT until it is acknowledged.
struct InFlight {
    segment_id: u64,
    data: Bytes,
    group: Group,
    started: Instant,
    attempts: u32,
    /// Its create succeeded; it is acknowledged once every lower segment's did too.
    done: bool,
}

/// A PUT of the pipeline: (segment id, its outcome).
type PutFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (u64, Result<Result<(), StoreError>, tokio::task::JoinError>),
            > + Send
            + Sync,
    >,
>;

struct Committer {
    inner: Arc<DbInner>,
    rx: mpsc::Receiver<Msg>,
    /// Segments put and not yet acknowledged, in id order (consecutive ids).
    window: VecDeque<InFlight>,
    /// The PUTs of `window`'s segments still running.
    puts: FuturesUnordered<PutFuture>,
    next_seq: u64,
    next_segment: u64,
    group: Group,
    accepting: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// Answers derived from state that may not be durable yet (failed conditions, repeated
    /// transaction prepares and resolves answered from what is already there), waiting for
    /// it: (largest seq that state includes, reply, answer).
    deferred: Vec<(u64, Reply, EngineResult<Vec<OpOutcome>>)>,
    /// Large writes received but not sequenced yet, in arrival order, with their sizes (at
    /// most [`HELD_MAX`]).
    ///
    /// Fairness between small and large writes: acknowledgements go in segment order, so a
    /// small write sequenced behind megabytes of large ones waits for all of them to be
    /// written and synced (measured: a tenant's 1 KiB puts beside another's flood of 1 MiB
    /// puts had a p99 50-120x their p99 alone). Large writes are therefore sequenced only
    /// while the large bytes sequenced and not yet durable (the open group's and the
    /// pipeline's) stay within `large_in_flight_bytes`; the others wait here while smaller
    /// writes that arrive after them are sequenced first. Writes in flight together are
    /// concurrent, so any order between them is linearizable; a write is never reordered
    /// with one that was acknowledged before it was sent. One large write is always let
    /// through when none is in flight, and held writes go before any newer large one, so
    /// none waits for ever. Held writes are bounded by count as the channel is (they were in
    /// memory there too), and a writer that lost the partition refuses them at once.
    held: VecDeque<(WriteReq, usize)>,
}

impl Committer {
    async fn run(mut self) {
        let depth = self
            .inner
            .opts
            .wal_pipeline_depth
            .clamp(1, WAL_MAX_IN_FLIGHT as usize);
        // A further PUT while others are in flight only once its group is this large: a
        // pipelined PUT of a few ops would cost a request and an fsync for little, and keep
        // the groups small (measured: depth 4 with no minimum cut 64 writers' puts by a third
        // on the local directory store, where concurrent fsyncs barely overlap).
        let min_bytes = self.inner.opts.wal_pipeline_min_bytes;
        loop {
            // The flush's signal is listened for from before the budget is read: a `Notified`
            // receives `notify_waiters` from its creation on, so a flush that finishes while
            // this turn drains or encodes a segment is not missed (it used to leave the loop
            // waiting for the 100 ms re-check with no PUT in flight).
            let inner = self.inner.clone();
            let flushed = inner.flushed.notified();
            // One reading of the budget per turn: the drain below and the `select!` must agree
            // on it, or a flush finishing in between could leave every branch disabled.
            let over_budget = self.over_write_budget();
            // Held large writes that fit now go first, oldest first: not past the write budget
            // (they wait for a flush like any write) nor past the group's bound. A writer that
            // lost the partition drains them at once (`handle` refuses each: not applied).
            if !self.held.is_empty() && self.inner.lifecycle.is_open() {
                // A full disk refuses new writes before they are sequenced (`Db::write`):
                // held ones were not sequenced either, so they are refused the same way at
                // once (nothing applied) rather than queued behind the failing segment.
                if let Err(e) = self.inner.disk.check() {
                    for (w, _) in std::mem::take(&mut self.held) {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
            }
            while let Some(&(_, n)) = self.held.front() {
                let open = self.inner.lifecycle.is_open();
                if open
                    && (over_budget
                        || !self.large_fits(n)
                        || self.group.bytes >= self.inner.opts.max_group_bytes)
                {
                    break;
                }
                if let Some((w, _)) = self.held.pop_front() {
                    // A caller that gave up has been told the outcome is unknown: applying
                    // nothing is one of the outcomes it allows, and spares the WAL the bytes.
                    if open && w.reply.is_closed() {
                        continue;
                    }
                    self.handle(Msg::Write(w)).await;
                }
            }
            if self.window.len() < depth
                && !self.group.is_empty()
                && (self.window.is_empty() || self.group.bytes >= min_bytes)
            {
                let group = std::mem::take(&mut self.group);
                self.start_put(group);
            }
            if self.window.is_empty() && !self.accepting && self.held.is_empty() {
                for w in self.shutdown_waiters.drain(..) {
                    let _ = w.send(());
                }
                // Keep answering so late senders get an error rather than hanging.
                while let Some(msg) = self.rx.recv().await {
                    if let Msg::Freeze(tx) = msg {
                        // Close still freezes, so the final flush sees every write.
                        self.freeze();
                        let _ = tx.send(());
                    } else {
                        self.reject(msg, EngineError::Closed);
                    }
                }
                return;
            }
            // Held writes are bounded by count like the channel they came from (they were in
            // memory there too), not by the group's bytes: small writes must still be read
            // while large ones wait.
            let can_take = self.accepting
                && !over_budget
                && self.group.bytes < self.inner.opts.max_group_bytes
                && self.held.len() < HELD_MAX;
            let waiting_since = over_budget.then(strata_clock::now);
            tokio::select! {
                Some((id, res)) = self.puts.next(), if !self.puts.is_empty() => {
                    self.put_done(id, res);
                }
                msg = self.rx.recv(), if can_take => {
                    match msg {
                        Some(Msg::Write(w)) => {
                            let n = self.large_size(&w);
                            // Behind the held ones too, so large writes keep their order.
                            if n > 0 && (!self.held.is_empty() || !self.large_fits(n)) {
                                self.held.push_back((w, n));
                            } else {
                                self.handle(Msg::Write(w)).await;
                            }
                        }
                        Some(msg) => self.handle(msg).await,
                        None => self.accepting = false,
                    }
                }
                _ = flushed, if over_budget => {}
                _ = strata_clock::sleep(Duration::from_millis(100)), if over_budget => {}
            }
            if let Some(t) = waiting_since {
                self.inner
                    .metrics
                    .write_buffer_full_micros
                    .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        }
    }

    /// The size of `w` if it is a large write (its values), else 0. Values only: keys are
    /// small, and counting them would let only one 1 MiB value through a 2 MiB bound.
    fn large_size(&self, w: &WriteReq) -> usize {
        let large = self.inner.opts.large_write_bytes;
        if large == 0 {
            return 0;
        }
        let n: usize = w
            .ops
            .iter()
            .map(|op| match &op.op {
                Op::Put { value, .. } => value.len(),
                Op::Delete => 0,
            })
            .sum();
        if n >= large {
            n
        } else {
            0
        }
    }

    /// Whether a large write of `n` bytes may be sequenced now: the large bytes not yet
    /// durable stay within the bound with it, or none are in flight.
    fn large_fits(&self, n: usize) -> bool {
        let in_flight = self.group.large_bytes
            + self
                .window
                .iter()
                .map(|f| f.group.large_bytes)
                .sum::<usize>();
        in_flight == 0 || in_flight + n <= self.inner.opts.large_in_flight_bytes
    }

    fn over_write_budget(&self) -> bool {
        let view = self.inner.view.read();
        let total: u64 = view.memtables().map(|m| m.approximate_bytes()).sum();
        total > self.inner.opts.write_buffer_bytes
    }

    fn reject(&self, msg: Msg, err: EngineError) {
        match msg {
            Msg::Write(w) => {
                let _ = w.reply.send(Err(err));
            }
            Msg::Freeze(tx) | Msg::Shutdown(tx) => {
                let _ = tx.send(());
            }
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Write(w) => {
                if !self.inner.lifecycle.is_open() {
                    let _ = w.reply.send(Err(EngineError::NotServing(
                        "this node lost ownership of the partition".into(),
                    )));
                    return;
                }
                if self.inner.opts.lease.as_ref().is_some_and(|l| !l.valid()) {
                    let _ = w.reply.send(Err(EngineError::NotServing(
                        "this node's ownership lease has lapsed".into(),
                    )));
                    return;
                }
                self.apply(w).await;
            }
            Msg::Freeze(tx) => {
                self.freeze();
                let _ = tx.send(());
            }
            Msg::Shutdown(tx) => {
                self.accepting = false;
                self.shutdown_waiters.push(tx);
            }
        }
        if self.inner.view.read().active.approximate_bytes() >= self.inner.opts.memtable_bytes {
            self.freeze();
        }
    }

    fn freeze(&mut self) {
        let mut view = self.inner.view.write();
        if view.active.is_empty() {
            return;
        }
        let id = self.inner.next_memtable_id.fetch_add(1, Ordering::Relaxed);
        let mut next = (**view).clone();
        let old = std::mem::replace(&mut next.active, Arc::new(Memtable::new(id)));
        next.imms.insert(0, old);
        *view = Arc::new(next);
        drop(view);
        self.inner.flush_wanted.notify_one();
    }

    /// Sends `answer` once everything sequenced so far is durable: it was derived from state
    /// that may still be in flight, and must not be acted on before a crash can no longer
    /// undo that state.
    fn answer_when_durable(&mut self, reply: Reply, answer: EngineResult<Vec<OpOutcome>>) {
        let observed = self.next_seq - 1;
        if observed <= self.inner.seqs.durable() {
            let _ = reply.send(answer);
        } else {
            self.deferred.push((observed, reply, answer));
        }
    }

    async fn apply(&mut self, w: WriteReq) {
        let large = self.large_size(&w);
        let now = self.inner.opts.clock.unix_ms();
        let view = self.inner.view.read().clone();
        let WriteReq {
            ops,
            durable,
            role,
            reply,
        } = w;
        // What the write's transaction role adds (see `txn.rs`): the intent record or
        // resolution marker to sequence besides `ops`, and which locks to take or release.
        let participant = Participant {
            locks: &self.inner.locks,
            splitting: self.inner.refuse_prepares.load(Ordering::SeqCst),
            partition: self.inner.opts.partition,
            now,
        };
        let Sequence {
            ops,
            marker,
            lock,
            unlock,
        } = match participant.plan(&view, ops, role).await {
            Plan::Refuse(err) => {
                let _ = reply.send(Err(err));
                return;
            }
            Plan::AnswerWhenDurable(answer) => {
                self.answer_when_durable(reply, answer);
                return;
            }
            Plan::Sequence(s) => s,
        };
        // Conditions and `found` see the latest state, durable or not: groups land in order,
        // so by the time this one lands every state it was checked against has landed too.
        let mut current: HashMap<&[u8], Option<(u64, bool)>> = HashMap::new();
        let mut outcomes = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let needs_read = !matches!((&op.op, op.cond), (Op::Put { .. }, Cond::None));
            let state = if needs_read {
                match current.get(op.key.as_ref()) {
                    Some(s) => *s,
                    None => {
                        let e = match Db::get_entry(&view, &op.key, Snap::LATEST).await {
                            Ok(e) => e,
                            Err(err) => {
                                let _ = reply.send(Err(err));
                                return;
                            }
                        };
                        let s = e.map(|e| {
                            let live = e.kind == Kind::Put
                                && (e.expires_at_ms == 0 || e.expires_at_ms > now);
                            (e.seq, live)
                        });
                        current.insert(op.key.as_ref(), s);
                        s
                    }
                }
            } else {
                None
            };
            let live_version = state.and_then(|(v, live)| live.then_some(v));
            let ok = match op.cond {
                Cond::None => true,
                Cond::IfAbsent => live_version.is_none(),
                Cond::IfVersion(v) => live_version == Some(v),
            };
            if !ok {
                let what = match op.cond {
                    Cond::IfAbsent => "if_absent".to_string(),
                    Cond::IfVersion(v) => format!("if_version={v}"),
                    Cond::None => String::new(),
                };
                let have = match live_version {
                    Some(v) => format!("the key exists with version {v}"),
                    None => "the key is absent".to_string(),
                };
                let err = EngineError::FailedPrecondition(format!(
                    "condition {what} failed for op {i} (key of {} bytes): {have}; nothing was applied",
                    op.key.len()
                ));
                // The check may have seen writes that are not durable yet. Answering before
                // they land would let a client learn of a state that a crash can still undo,
                // or that a read issued after this answer does not see (not linearizable):
                // the answer waits until everything sequenced so far is durable.
                self.answer_when_durable(reply, Err(err));
                return;
            }
            outcomes.push(OpOutcome {
                version: 0,
                found: live_version.is_some(),
            });
        }
        if let Some(txn) = &unlock {
            // Only the commit loop touches this flag, so the check above still holds.
            self.inner.locks.start_resolving(txn);
        }
        // A prepare applies none of its ops yet: only the intent record is written.
        let ops = if lock.is_some() {
            outcomes.clear();
            Vec::new()
        } else {
            ops
        };
        let mut entries = Vec::with_capacity(ops.len() + 1);
        let mut bytes = 0;
        for (op, out) in ops.into_iter().zip(outcomes.iter_mut()) {
            let seq = self.next_seq;
            self.next_seq += 1;
            out.version = seq;
            let e = match op.op {
                Op::Put { value, ttl_ms } => Entry {
                    key: op.key,
                    seq,
                    kind: Kind::Put,
                    expires_at_ms: if ttl_ms == 0 {
                        0
                    } else {
                        now.saturating_add(ttl_ms)
                    },
                    value,
                },
                Op::Delete => Entry {
                    key: op.key,
                    seq,
                    kind: Kind::Delete,
                    expires_at_ms: 0,
                    value: Bytes::new(),
                },
            };
            bytes += e.key.len() + e.value.len() + 32;
            entries.push(e);
        }
        if let Some((key, state)) = marker {
            let (state, expires_at_ms) = match state {
                IntentState::Committed { .. } => (
                    IntentState::Committed {
                        versions: outcomes.iter().map(|o| o.version).collect(),
                    },
                    now.saturating_add(MARKER_TTL_MS),
                ),
                IntentState::Aborted => (state, now.saturating_add(MARKER_TTL_MS)),
                prepared => (prepared, 0),
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let e = Entry {
                key,
                seq,
                kind: Kind::Put,
                expires_at_ms,
                value: encode_intent(&state),
            };
            bytes += e.key.len() + e.value.len() + 32;
            entries.push(e);
            if let (Some((txn, _)), IntentState::Prepared { ops, .. }) = (lock, state) {
                // Locked from sequencing on: everything after this in the stream sees it.
                self.inner.locks.lock(&txn, ops);
            }
        }
        {
            let active = self.inner.view.read().active.clone();
            for e in &entries {
                active.insert(e, !durable);
            }
        }
        let max_seq = self.next_seq - 1;
        self.group.max_seq = max_seq;
        self.group.bytes += bytes;
        self.group.large_bytes += large;
        self.group.batches.push(entries);
        self.group.unlock.extend(unlock);
        let m = &self.inner.metrics;
        m.writes.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        if durable {
            self.group.waiters.push((reply, outcomes));
        } else {
            // Buffered: visible and acknowledged now; durable with its group, or lost in a crash.
            // Only buffered entries become visible early: durable ones wait for their PUT.
            self.inner.seqs.buffered_acknowledged(max_seq);
            let _ = reply.send(Ok(outcomes));
        }
    }

    fn start_put(&mut self, group: Group) {
        let ops: usize = group.batches.iter().map(Vec::len).sum();
        metrics::histogram!("strata_commit_group_ops").record(ops as f64);
        metrics::histogram!("strata_commit_group_bytes").record(group.bytes as f64);
        metrics::histogram!("strata_commit_pipeline_depth").record(self.window.len() as f64);
        let segment_id = self.next_segment;
        self.next_segment += 1;
        let data = encode_wal_segment(
            &WalSegmentHeader {
                segment_id,
                writer_epoch: self.inner.writer_epoch,
                created_ms: self.inner.opts.clock.unix_ms(),
            },
            &group.batches,
        );
        self.spawn_put(segment_id, data.clone(), 1, Duration::ZERO);
        self.window.push_back(InFlight {
            segment_id,
            data,
            group,
            started: strata_clock::now(),
            attempts: 1,
            done: false,
        });
    }

    fn spawn_put(&mut self, segment_id: u64, body: Bytes, attempts: u32, delay: Duration) {
        let store = self.inner.store.clone();
        let path = wal_path(self.inner.opts.partition, segment_id);
        let task = tokio::spawn(async move {
            if !delay.is_zero() {
                strata_clock::sleep(delay).await;
            }
            match store.put(&path, body.clone(), PutMode::Create).await {
                // A retry of a segment whose earlier PUT failed may find that PUT's object:
                // an earlier attempt can land although its answer was lost. Our own bytes
                // there mean it landed; anything else means a newer writer fenced us.
                Err(StoreError::AlreadyExists(p)) if attempts > 1 => match store.get(&path).await {
                    Ok(existing) if existing == body => Ok(()),
                    Ok(_) => Err(StoreError::AlreadyExists(p)),
                    Err(e) => Err(e),
                },
                other => other,
            }
        });
        self.puts
            .push(Box::pin(async move { (segment_id, task.await) }));
    }

    /// One PUT of the pipeline returned.
    fn put_done(
        &mut self,
        segment_id: u64,
        res: Result<Result<(), StoreError>, tokio::task::JoinError>,
    ) {
        let Some(front) = self.window.front().map(|f| f.segment_id) else {
            return; // fenced meanwhile: the window was answered already
        };
        let Some(idx) = segment_id
            .checked_sub(front)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.window.len())
        else {
            return;
        };
        let res = res.unwrap_or_else(|e| {
            Err(StoreError::Unavailable {
                op: "put",
                path: String::new(),
                detail: format!("WAL put task failed: {e}"),
            })
        });
        match res {
            Ok(()) => {
                let f = &mut self.window[idx];
                f.done = true;
                let m = &self.inner.metrics;
                m.wal_segments.fetch_add(1, Ordering::Relaxed);
                m.wal_bytes
                    .fetch_add(f.data.len() as u64, Ordering::Relaxed);
                m.wal_put_micros
                    .fetch_add(f.started.elapsed().as_micros() as u64, Ordering::Relaxed);
                while self.window.front().is_some_and(|f| f.done) {
                    if let Some(f) = self.window.pop_front() {
                        self.acknowledge(f);
                    }
                }
            }
            Err(StoreError::AlreadyExists(_)) => self.fenced(idx),
            Err(e) => {
                // Unknown outcome: tell the waiters so (they must not hang), and retry the same
                // segment: later groups were checked against its effects, and a gap in the ids
                // would stall every segment above it.
                self.inner
                    .metrics
                    .wal_put_failures
                    .fetch_add(1, Ordering::Relaxed);
                let f = &mut self.window[idx];
                tracing::warn!(
                    partition = self.inner.opts.partition,
                    segment = f.segment_id,
                    attempts = f.attempts,
                    error = %e,
                    "WAL segment put failed; retrying"
                );
                let err = EngineError::Unavailable(format!(
                    "write outcome unknown: object store failed while writing the WAL: {e}"
                ));
                for (reply, _) in std::mem::take(&mut f.group.waiters) {
                    let _ = reply.send(Err(err.clone()));
                }
                if let StoreError::NoSpace { .. } = e {
                    // New writes are refused from now on (exactly: they never get here). The
                    // ones already sequenced behind this segment wait for it; tell them now
                    // rather than at their timeout. Their outcome is unknown: the segments are
                    // retried and land with this one once space returns.
                    self.inner.disk.full(
                        Writer::Wal,
                        format!("no space left on {}: {e}", self.inner.store.describe()),
                    );
                    let err = EngineError::Unavailable(format!(
                        "write outcome unknown: no space left on {} for the WAL; the write is \
                         retried and may still land",
                        self.inner.store.describe()
                    ));
                    let later = self.window.iter_mut().skip(idx + 1).map(|f| &mut f.group);
                    for g in later.chain(std::iter::once(&mut self.group)) {
                        for (reply, _) in std::mem::take(&mut g.waiters) {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
                let f = &mut self.window[idx];
                f.attempts += 1;
                let (attempts, data) = (f.attempts, f.data.clone());
                let backoff = Duration::from_millis((50u64 << (attempts - 1).min(5)).min(2000));
                self.spawn_put(segment_id, data, attempts, backoff);
            }
        }
    }

    /// The lowest segment of the window and every one below it landed: its writes become
    /// durable and visible, and its writers are answered.
    fn acknowledge(&mut self, f: InFlight) {
        // Only here, not when any segment lands: a later, smaller segment landing while a lower
        // one still fails for lack of space must not lift the refusal of new writes.
        self.inner.disk.ok(Writer::Wal);
        self.inner.landed.lock().push(f.segment_id, f.group.max_seq);
        self.inner.seqs.landed(f.group.max_seq);
        // Only now: a reader that finds a key unlocked must see its resolve.
        for txn in &f.group.unlock {
            self.inner.locks.unlock(txn);
        }
        // A node whose lease lapsed while the PUT was in flight must not acknowledge: a new
        // owner may already serve the partition. The segment did land, so the outcome is
        // unknown (the new owner's replay may or may not include it).
        let lapsed = self.inner.opts.lease.as_ref().is_some_and(|l| !l.valid());
        let durable = f.group.max_seq;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(observed, _, _)| *observed <= durable);
        self.deferred = waiting;
        for (_, reply, answer) in ready {
            let _ = reply.send(if lapsed {
                Err(EngineError::NotServing(
                    "this node's ownership lease has lapsed".into(),
                ))
            } else {
                answer
            });
        }
        for (reply, outcomes) in f.group.waiters {
            let _ = reply.send(if lapsed {
                Err(EngineError::Unavailable(
                    "write outcome unknown: this node's ownership lease lapsed before the \
                     write was acknowledged"
                        .into(),
                ))
            } else {
                Ok(outcomes)
            });
        }
    }

    /// The create of the window's segment at `idx` found its name taken: a newer writer
    /// fenced this stream. Nothing more is acknowledged.
    fn fenced(&mut self, idx: usize) {
        let f = &self.window[idx];
        tracing::error!(
            partition = self.inner.opts.partition,
            segment = f.segment_id,
            "WAL segment name already taken: fenced by a newer writer; stepping down"
        );
        self.inner.lifecycle.fence();
        self.inner.flush_wanted.notify_waiters();
        // Below the taken name: the segment may have landed and the new writer may replay it.
        let unknown = EngineError::Unavailable(
            "write outcome unknown: this node was fenced by a newer writer of the partition \
             while the write's WAL segment was in flight"
                .into(),
        );
        // At the taken name and above: the new writer's replay skips whatever lands there.
        // Not `Fenced`: the write certainly applied nothing, and for the client this is the
        // ordinary "not the owner (any more)" it retries on the new owner.
        let not_applied = EngineError::NotServing(
            "write not applied: this node was fenced by a newer writer of the partition".into(),
        );
        // Unless the taken name is a retry's: our own earlier attempt may have landed there,
        // been replayed and flushed by the new writer and deleted by WAL GC, before some
        // writer's stray marker took the freed name. Then the groups above it may have been
        // replayed too: every group of the window is "unknown" (found by the model check,
        // `fenced_after_a_retry_the_window_is_unknown`).
        // `attempts` counts the loop's own retries; the store's `Retrying` layer resolves its
        // inner retries by comparing bytes and returns `AlreadyExists` only for bytes not ours.
        // An inner retry whose earlier attempt landed, was collected and had its name taken all
        // within one call cannot happen while `RetryPolicy::total_timeout` (30 s) stays below
        // `WAL_GC_GRACE` (30 s) plus a new writer's open and first flush: keep it so.
        let retried = self.window[idx].attempts > 1;
        for (i, f) in std::mem::take(&mut self.window).into_iter().enumerate() {
            let err = if i < idx || retried {
                &unknown
            } else {
                &not_applied
            };
            for (reply, _) in f.group.waiters {
                let _ = reply.send(Err(err.clone()));
            }
        }
        for (reply, _) in std::mem::take(&mut self.group.waiters) {
            let _ = reply.send(Err(not_applied.clone()));
        }
        // Deferred answers wrote nothing themselves, but what they saw may sit in a segment
        // below the taken name, whose outcome is unknown.
        for (_, reply, _) in std::mem::take(&mut self.deferred) {
            let _ = reply.send(Err(unknown.clone()));
        }
        self.group = Group::default();
        self.puts = FuturesUnordered::new();
        self.accepting = false;
    }
}
