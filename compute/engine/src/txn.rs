//! Cross-partition transactions: the participant side (one partition's engine).
//!
//! A `BatchWrite` whose keys span partitions commits in two phases (the coordinator is in
//! `strata-compute`'s `service/txn.rs`, the durable transaction record in etcd):
//!
//! 1. **Prepare** at every partition: the commit loop checks the ops' conditions, refuses if a
//!    key is locked by another transaction, and writes one *intent record* — the partition's
//!    ops, not yet applied — under the system key `INTENT_PREFIX ++ txn id`. From sequencing
//!    on, the keys are locked in memory: plain writes wait, reads wait, other prepares fail.
//!    The intent is an ordinary WAL entry, so it survives a crash of the owner: a new owner
//!    rebuilds the locks from intent records before serving (see `Db::open`).
//! 2. **Decision** in the transaction record (pending → committed, or → aborted), a single
//!    compare-and-swap: the commit point.
//! 3. **Resolve** at every partition: commit applies the intent's ops and replaces the intent
//!    by a `Committed` marker (with the versions written); abort replaces it by an `Aborted`
//!    marker. Markers expire after `MARKER_TTL_MS`; they make resolves idempotent and stop a
//!    delayed prepare from installing an intent after its transaction was aborted.
//!
//! Invariants:
//! - A key is unlocked only once its resolve is *visible* (the resolve's segment landed and
//!   `visible_seq` moved past it), so a read that finds a key unlocked after a decision sees
//!   the transaction's outcome: no reader ever sees one partition's half of a transaction
//!   committed and, afterwards, another partition's half missing.
//! - Between prepare and resolve nothing else writes a locked key, so the conditions checked
//!   at prepare still hold when the ops are applied.
//! - A participant never decides by itself: an intent whose coordinator went silent is
//!   resolved from the record; a pending record is first swung to aborted (the same CAS the
//!   coordinator's commit races against), so both sides agree on one outcome.

use crate::commit::{Cond, Op, OpOutcome, WriteOp};
use crate::db::Db;
use crate::error::{EngineError, EngineResult};
use crate::memtable::Snap;
use crate::version::View;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
pub use strata_format::{
    decode_intent, encode_intent, is_system_key, IntentState, TxnOp, INTENT_PREFIX, SYSTEM_PREFIX,
};
use tokio::sync::Notify;

/// How long a resolution marker is kept (it only has to outlive any in-flight prepare and
/// coordinator retries, which are bounded by request deadlines of seconds).
pub const MARKER_TTL_MS: u64 = 3_600_000;
/// An intent older than this whose transaction is still pending is aborted by the partition's
/// owner (the coordinator is presumed dead). A live coordinator finishes well within it:
/// its whole prepare phase is bounded by `PREPARE_BUDGET` in `strata-compute`'s
/// `service/txn.rs`.
pub const TXN_TIMEOUT_MS: u64 = 4_000;

/// The key of a transaction's intent record.
pub fn intent_key(txn: &str) -> Bytes {
    let mut k = Vec::with_capacity(INTENT_PREFIX.len() + txn.len());
    k.extend_from_slice(INTENT_PREFIX);
    k.extend_from_slice(txn.as_bytes());
    Bytes::from(k)
}

/// What a write is, for cross-partition transactions (see `txn.rs`).
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// An ordinary write: refused (nothing applied) if it touches a locked key.
    Plain,
    /// Check the ops' conditions, lock their keys and write the intent record.
    Prepare { txn: Arc<str>, created_ms: u64 },
    /// Apply (commit) or drop (abort) a prepared intent; its locks go when this is visible.
    Resolve { txn: Arc<str>, commit: bool },
}

/// What the commit loop does with a write once its role is taken into account.
pub(crate) enum Plan {
    /// Answer at once: nothing was applied, and nothing in flight was observed.
    Refuse(EngineError),
    /// Answer once everything sequenced so far is durable: the answer was derived from state
    /// (an intent, a marker) that may still be in flight.
    AnswerWhenDurable(EngineResult<Vec<OpOutcome>>),
    /// Check the ops' conditions and sequence them (and the marker).
    Sequence(Sequence),
}

/// What a write sequences, besides checking its ops' conditions.
pub(crate) struct Sequence {
    /// The ops to check and (unless this is a prepare) apply.
    pub ops: Vec<WriteOp>,
    /// The intent record or resolution marker to write after the ops, under its key. A
    /// `Committed` marker's versions are filled in by the commit loop once sequenced.
    pub marker: Option<(Bytes, IntentState)>,
    /// A prepare: the transaction whose keys lock once its intent is sequenced, and when it
    /// was created. Its ops are checked but not applied.
    pub lock: Option<(Arc<str>, u64)>,
    /// A resolve: the transaction whose locks go once this is visible.
    pub unlock: Option<Arc<str>>,
}

impl Sequence {
    fn plain(ops: Vec<WriteOp>) -> Self {
        Sequence {
            ops,
            marker: None,
            lock: None,
            unlock: None,
        }
    }
}

/// The participant's view of one partition, as the commit loop sees it for one write.
pub(crate) struct Participant<'a> {
    /// The partition's transaction locks.
    pub locks: &'a Locks,
    /// The partition is splitting: prepares are refused.
    pub splitting: bool,
    /// The partition, for messages.
    pub partition: u32,
    /// Now, in Unix milliseconds (for expiring markers).
    pub now: u64,
}

impl Participant<'_> {
    /// Decides what a write of `role` sequences. Runs in the commit loop (so locks and
    /// intents cannot change under it) and reads only `view`.
    pub(crate) async fn plan(&self, view: &View, ops: Vec<WriteOp>, role: Role) -> Plan {
        match role {
            Role::Plain => match self.locks.first_locked(ops.iter().map(|o| &o.key)) {
                Some(txn) => Plan::Refuse(EngineError::Locked(format!(
                    "a key of this write is locked by transaction {txn}, which is being \
                     committed; nothing was applied"
                ))),
                None => Plan::Sequence(Sequence::plain(ops)),
            },
            Role::Prepare { txn, created_ms } => self.prepare(view, ops, txn, created_ms).await,
            Role::Resolve { txn, commit } => self.resolve(view, txn, commit).await,
        }
    }

    async fn prepare(
        &self,
        view: &View,
        ops: Vec<WriteOp>,
        txn: Arc<str>,
        created_ms: u64,
    ) -> Plan {
        if self.splitting {
            return Plan::Refuse(EngineError::Conflict(format!(
                "partition {} is splitting; transaction {txn} not prepared, nothing was applied",
                self.partition
            )));
        }
        if self.locks.pending(&txn).is_some() {
            // A repeated prepare: done once its intent is durable.
            return Plan::AnswerWhenDurable(Ok(Vec::new()));
        }
        match self.intent_state(view, &txn).await {
            Err(e) => return Plan::Refuse(e),
            Ok(Some(IntentState::Aborted)) => {
                return Plan::AnswerWhenDurable(Err(EngineError::Conflict(format!(
                    "transaction {txn} was already aborted; nothing was applied"
                ))))
            }
            Ok(Some(_)) => return Plan::AnswerWhenDurable(Ok(Vec::new())),
            Ok(None) => {}
        }
        if let Some(other) = self.locks.first_locked(ops.iter().map(|o| &o.key)) {
            return Plan::Refuse(EngineError::Conflict(format!(
                "a key of transaction {txn} is locked by transaction {other}; nothing was \
                 applied"
            )));
        }
        let marker = IntentState::Prepared {
            created_ms,
            ops: ops.iter().map(from_write_op).collect(),
        };
        Plan::Sequence(Sequence {
            ops,
            marker: Some((intent_key(&txn), marker)),
            lock: Some((txn, created_ms)),
            unlock: None,
        })
    }

    async fn resolve(&self, view: &View, txn: Arc<str>, commit: bool) -> Plan {
        if let Some(p) = self.locks.pending(&txn) {
            if p.resolving {
                return Plan::Refuse(EngineError::Locked(format!(
                    "transaction {txn} is being resolved; retry"
                )));
            }
            let (ops, marker) = if commit {
                let ops = p.ops.iter().map(to_write_op).collect();
                (
                    ops,
                    IntentState::Committed {
                        versions: Vec::new(),
                    },
                )
            } else {
                (Vec::new(), IntentState::Aborted)
            };
            return Plan::Sequence(Sequence {
                ops,
                marker: Some((intent_key(&txn), marker)),
                lock: None,
                unlock: Some(txn),
            });
        }
        // Already resolved here, or never prepared: answer from the marker.
        let answer = match self.intent_state(view, &txn).await {
            Err(e) => Err(e),
            Ok(Some(IntentState::Committed { versions })) if commit => Ok(versions
                .into_iter()
                .map(|version| OpOutcome {
                    version,
                    found: false,
                })
                .collect()),
            Ok(Some(IntentState::Aborted)) if !commit => Ok(Vec::new()),
            // Never prepared here (or the prepare is still in flight): write an aborted
            // marker so a late prepare cannot install an intent.
            Ok(None) if !commit => {
                return Plan::Sequence(Sequence {
                    ops: Vec::new(),
                    marker: Some((intent_key(&txn), IntentState::Aborted)),
                    lock: None,
                    unlock: None,
                })
            }
            Ok(other) => Err(EngineError::Internal(format!(
                "asked to {} transaction {txn}, but this partition holds {}",
                if commit { "commit" } else { "abort" },
                match other {
                    Some(IntentState::Committed { .. }) => "its commit",
                    Some(IntentState::Aborted) => "its abort",
                    Some(IntentState::Prepared { .. }) => "an unlocked intent",
                    None => "no intent",
                }
            ))),
        };
        Plan::AnswerWhenDurable(answer)
    }

    /// The decoded intent record or resolution marker of `txn` in this partition, if any.
    async fn intent_state(&self, view: &View, txn: &str) -> EngineResult<Option<IntentState>> {
        let e = Db::get_entry(view, &intent_key(txn), Snap::LATEST).await?;
        match crate::db::live(e, self.now) {
            Some((v, _)) => Ok(Some(decode_intent(&v).map_err(|e| {
                EngineError::Corruption(format!("intent record of transaction {txn}: {e}"))
            })?)),
            None => Ok(None),
        }
    }
}

/// An intent op as an engine write (its condition was checked at prepare).
pub(crate) fn to_write_op(op: &TxnOp) -> WriteOp {
    WriteOp {
        key: op.key.clone(),
        op: match &op.value {
            Some(v) => Op::Put {
                value: v.clone(),
                ttl_ms: op.ttl_ms,
            },
            None => Op::Delete,
        },
        cond: Cond::None,
    }
}

/// The intent form of an engine write.
pub(crate) fn from_write_op(op: &WriteOp) -> TxnOp {
    match &op.op {
        Op::Put { value, ttl_ms } => TxnOp {
            key: op.key.clone(),
            value: Some(value.clone()),
            ttl_ms: *ttl_ms,
        },
        Op::Delete => TxnOp {
            key: op.key.clone(),
            value: None,
            ttl_ms: 0,
        },
    }
}

/// A prepared transaction this partition holds locks for.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub ops: Vec<TxnOp>,
    /// When this engine locked it (prepare, or re-lock on open): the age that decides when
    /// the owner stops waiting for the coordinator, on this node's monotonic clock (another
    /// node's wall clock may be off).
    pub since: strata_clock::Instant,
    /// A resolve is sequenced and waiting for its segment to land.
    pub resolving: bool,
}

#[derive(Debug, Default)]
struct LockTable {
    by_key: HashMap<Bytes, Arc<str>>,
    pending: HashMap<Arc<str>, Pending>,
}

/// The partition's transaction locks (in memory; rebuilt from intent records on open).
#[derive(Debug, Default)]
pub(crate) struct Locks {
    table: Mutex<LockTable>,
    /// Number of locked keys, read without the mutex on the hot path.
    count: AtomicUsize,
    changed: Notify,
}

impl Locks {
    /// Whether no key is locked (fast path: nothing to wait for).
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// The transaction holding the first locked key among `keys`.
    pub fn first_locked<'a>(&self, keys: impl IntoIterator<Item = &'a Bytes>) -> Option<Arc<str>> {
        if self.is_empty() {
            return None;
        }
        let t = self.table.lock();
        keys.into_iter().find_map(|k| t.by_key.get(k).cloned())
    }

    /// The transaction holding a locked key in `[start, end)`.
    pub fn locked_in_range(&self, start: &[u8], end: Option<&[u8]>) -> Option<Arc<str>> {
        if self.is_empty() {
            return None;
        }
        let t = self.table.lock();
        t.by_key
            .iter()
            .find(|(k, _)| k.as_ref() >= start && end.is_none_or(|e| k.as_ref() < e))
            .map(|(_, txn)| txn.clone())
    }

    pub fn pending(&self, txn: &str) -> Option<Pending> {
        self.table.lock().pending.get(txn).cloned()
    }

    /// Every prepared transaction: (id, how long it has been locked here).
    pub fn all_pending(&self) -> Vec<(String, std::time::Duration)> {
        self.table
            .lock()
            .pending
            .iter()
            .map(|(k, p)| (k.to_string(), p.since.elapsed()))
            .collect()
    }

    /// Locks the keys of a prepared transaction.
    pub fn lock(&self, txn: &str, ops: Vec<TxnOp>) {
        let mut t = self.table.lock();
        let id: Arc<str> = Arc::from(txn);
        for op in &ops {
            t.by_key.insert(op.key.clone(), id.clone());
        }
        t.pending.insert(
            id,
            Pending {
                ops,
                since: strata_clock::now(),
                resolving: false,
            },
        );
        self.count.store(t.by_key.len(), Ordering::Release);
    }

    /// Marks a transaction's resolve as sequenced; false if it is unknown or already resolving.
    pub fn start_resolving(&self, txn: &str) -> bool {
        let mut t = self.table.lock();
        match t.pending.get_mut(txn) {
            Some(p) if !p.resolving => {
                p.resolving = true;
                true
            }
            _ => false,
        }
    }

    /// Releases a transaction's locks (its resolve is visible) and wakes the waiters.
    pub fn unlock(&self, txn: &str) {
        {
            let mut t = self.table.lock();
            if let Some(p) = t.pending.remove(txn) {
                for op in p.ops {
                    if t.by_key.get(&op.key).is_some_and(|h| h.as_ref() == txn) {
                        t.by_key.remove(&op.key);
                    }
                }
            }
            self.count.store(t.by_key.len(), Ordering::Release);
        }
        self.changed.notify_waiters();
    }

    /// Waits until `locked()` reports nothing, or the deadline passes (then returns the
    /// transaction still holding a lock).
    pub async fn wait_until_free(
        &self,
        deadline: strata_clock::Instant,
        locked: impl Fn(&Locks) -> Option<Arc<str>>,
    ) -> Result<(), Arc<str>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(txn) = locked(self) else {
                return Ok(());
            };
            // The poll bound is a backstop against a missed wake-up; unlocks notify.
            let wake = deadline.min(strata_clock::now() + std::time::Duration::from_millis(250));
            tokio::select! {
                _ = &mut notified => {}
                _ = strata_clock::sleep_until(wake) => {
                    if strata_clock::now() >= deadline {
                        return Err(txn);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_released_per_transaction() {
        let l = Locks::default();
        let op = |k: &'static [u8]| TxnOp {
            key: Bytes::from_static(k),
            value: None,
            ttl_ms: 0,
        };
        l.lock("t1", vec![op(b"a"), op(b"b")]);
        assert_eq!(
            l.first_locked([&Bytes::from_static(b"b")]).as_deref(),
            Some("t1")
        );
        assert!(l.locked_in_range(b"c", None).is_none());
        assert!(l.locked_in_range(b"a", Some(b"b")).is_some());
        assert!(l.start_resolving("t1"));
        assert!(!l.start_resolving("t1"));
        l.unlock("t1");
        assert!(l.is_empty());
        assert!(l.first_locked([&Bytes::from_static(b"a")]).is_none());
    }
}
