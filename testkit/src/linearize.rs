//! Linearizability checker for histories of single-key register operations
//! (read / write / compare-and-set / put-if-absent / delete) against a versioned KV store.
//!
//! # Why our own checker
//!
//! It handles unknown outcomes, which library checkers do not. The histories a fault test
//! records are full of operations whose outcome is unknown: a write that timed out, or whose
//! node was killed mid-request, may or may not have been applied, and a later read may show
//! it. Here such an op may take effect at any point after its invocation, or never
//! ([`Outcome::Unknown`]), with a version that is not known either (see "Unknown versions"
//! below). Library checkers take histories of completed operations, so such a history would
//! have to be cut down to what is known, which rejects correct histories or hides violations.
//! It also models Strata's versions, conditional writes and tombstones directly. Its unit
//! tests check its verdicts against a plain exhaustive search.
//!
//! # Model
//!
//! Every key is an independent register whose state is `absent | Some(value)` plus the version
//! of the last write (a delete writes a tombstone, which has a version too). Linearizability is
//! compositional (P-compositionality), so [`check`] splits the history by key and checks each key
//! on its own with a Wing–Gong / Lowe "just-in-time linearization" depth-first search: at every
//! step it picks an operation that may come next (one invoked no later than the earliest
//! response among the definite operations not yet linearized), applies it to the model, and
//! memoizes `(set of linearized ops, model state)` so that no configuration is explored twice.
//! The search is bounded ([`DEFAULT_MAX_STEPS`] per key); when the bound is hit the checker
//! reports that it gave up instead of hanging.
//!
//! Reductions that keep the search small (each one is sound and complete; a unit test checks the
//! verdicts against a plain exhaustive search):
//! * A next op that leaves the state unchanged (a read, a failed condition) is linearized at
//!   once, without branching.
//! * Versions never decrease along a linearization, so a position where the version is already
//!   past what some pending definite op needs (a read of an older version, a write of a lower
//!   one) is abandoned at once.
//! * An op with an unknown outcome is only taken into effect when that unblocks some other op
//!   (else it may as well happen later or never). Unknown ops with the same effect are
//!   interchangeable, and values that no read returned are indistinguishable, so such ops are
//!   tried once per group. Positions that applied a superset of the unknown ops of a position
//!   that failed are pruned.
//!
//! Cost: histories whose reads carry versions check in about one search step per op even with
//! a hundred ops in flight; ops with unknown outcome make proving a violation more expensive
//! (thousands of ops per key with a few percent unknown: a second or so in release builds; many
//! times that in debug builds). Give each write a distinct value: it makes reports clearer.
//!
//! Semantics of the model:
//! * A successful write/CAS/put-if-absent/delete returning version `v` requires `v` to be greater
//!   than the key's current version (versions increase along the linearization; they may have
//!   gaps, e.g. when the store hands out one global sequence across keys). Every applied delete
//!   writes a tombstone with a new version, even on an absent key (as Strata does); when the
//!   tombstone version is not reported it is taken to be unknown.
//! * `Cas { expected_version }` holds iff the key is live with exactly that version;
//!   `PutIfAbsent` iff the key is absent; `Delete { if_version: Some(e) }` like CAS.
//! * A read returning `(value, version)` must see exactly the current value and version; a read
//!   returning `None` must see the key absent (the tombstone version is not checked).
//! * [`Outcome::PreconditionFailed`] must be linearized (inside its interval) at a point where the
//!   condition does not hold; it changes nothing.
//! * [`Outcome::Unknown`] (timeout, unavailable, task cancelled): the op may take effect at any
//!   point after its invocation, or never. Its response time is +infinity, so it never constrains
//!   the order of other ops, and the search may end without linearizing it.
//! * [`Outcome::Rejected`]: definitely not applied and observed nothing (e.g. a request rejected
//!   by validation before touching any state). It is ignored. Reads with an unknown outcome are
//!   ignored too (they observed nothing we know of).
//!
//! Unknown versions (the documented approximation): when an op with an unknown outcome takes
//! effect, the version it wrote is not known. The state then records only a lower bound
//! ("some version >= l", where `l` is one more than the lower bound of the previous version).
//! A later read of `(value, V)` matches such a state iff the values are equal and `V >= l`; the
//! version is then fixed to `V`. A later successful write with version `w` needs `w > l`; a CAS
//! or conditional delete expecting `e` can succeed iff `e >= l` (fixing the version to `e`).
//! The one imprecision: a [`Outcome::PreconditionFailed`] CAS against an unknown version is
//! always accepted, and the implied "version != e" is not remembered, so the checker may accept
//! a few non-linearizable histories involving unknown-outcome writes; it never rejects a
//! linearizable one (given the semantics above).
//!
//! Real-time order: `a` must precede `b` iff `a.response < b.invoke`; equal timestamps count as
//! concurrent. Record invoke times just before sending a request and response times just after
//! receiving the reply (see [`Recorder`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Search steps allowed per key before the checker gives up.
pub const DEFAULT_MAX_STEPS: u64 = 2_000_000;

/// At most this many sets of unknown ops are remembered per (definite ops, state) position.
const MAX_ANTICHAIN: usize = 32;

/// At most this many ops of a key are printed in a report.
const MAX_DUMP_OPS: usize = 300;

// ---------------------------------------------------------------------------------------------
// History types
// ---------------------------------------------------------------------------------------------

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Strongly consistent read of the key.
    Read,
    /// Unconditional put.
    Write { value: Vec<u8> },
    /// Put iff the key is live with exactly `expected_version`.
    Cas {
        expected_version: u64,
        value: Vec<u8>,
    },
    /// Put iff the key is absent.
    PutIfAbsent { value: Vec<u8> },
    /// Delete (writes a tombstone); with `if_version`, only if the key is live with that version.
    Delete { if_version: Option<u64> },
}

impl OpKind {
    pub fn read() -> OpKind {
        OpKind::Read
    }
    pub fn write(value: impl AsRef<[u8]>) -> OpKind {
        OpKind::Write {
            value: value.as_ref().to_vec(),
        }
    }
    pub fn cas(expected_version: u64, value: impl AsRef<[u8]>) -> OpKind {
        OpKind::Cas {
            expected_version,
            value: value.as_ref().to_vec(),
        }
    }
    pub fn put_if_absent(value: impl AsRef<[u8]>) -> OpKind {
        OpKind::PutIfAbsent {
            value: value.as_ref().to_vec(),
        }
    }
    pub fn delete() -> OpKind {
        OpKind::Delete { if_version: None }
    }
    pub fn delete_if(expected_version: u64) -> OpKind {
        OpKind::Delete {
            if_version: Some(expected_version),
        }
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read returned `Some((value, version))`, or `None` when the key was absent.
    Read(Option<(Vec<u8>, u64)>),
    /// A write / CAS / put-if-absent was applied with this version.
    Written(u64),
    /// A delete was applied. `found`: whether a live value was deleted; `version`: the
    /// tombstone's version. Either may be `None` when not reported (then it is not checked).
    Deleted {
        found: Option<bool>,
        version: Option<u64>,
    },
    /// A conditional op's condition did not hold at its linearization point; nothing applied.
    PreconditionFailed,
    /// Definitely not applied and observed nothing (e.g. rejected by validation). Ignored.
    Rejected,
    /// Timeout / unavailable / cancelled: may have taken effect at any time after invoke, or never.
    Unknown,
}

/// One operation of a history. Times are nanoseconds on one clock (see [`Clock`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub key: Vec<u8>,
    pub kind: OpKind,
    pub invoke: u64,
    /// `None` = no response (the outcome must then be [`Outcome::Unknown`] or `Rejected`).
    /// Ignored when the outcome is `Unknown`: an unknown op may take effect at any later time.
    pub response: Option<u64>,
    pub outcome: Outcome,
}

impl Op {
    pub fn new(
        client: usize,
        key: impl AsRef<[u8]>,
        kind: OpKind,
        invoke: u64,
        response: Option<u64>,
        outcome: Outcome,
    ) -> Op {
        Op {
            client,
            key: key.as_ref().to_vec(),
            kind,
            invoke,
            response,
            outcome,
        }
    }

    /// An op that completed at `response` with `outcome`.
    pub fn completed(
        client: usize,
        key: impl AsRef<[u8]>,
        kind: OpKind,
        invoke: u64,
        response: u64,
        outcome: Outcome,
    ) -> Op {
        Op::new(client, key, kind, invoke, Some(response), outcome)
    }

    /// An op whose outcome is unknown (no response).
    pub fn unknown(client: usize, key: impl AsRef<[u8]>, kind: OpKind, invoke: u64) -> Op {
        Op::new(client, key, kind, invoke, None, Outcome::Unknown)
    }

    pub fn is_unknown(&self) -> bool {
        self.outcome == Outcome::Unknown
    }
}

/// A recorded history: ops in any order, plus optional initial states of keys
/// (keys without one start absent).
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Op>,
    initial: BTreeMap<Vec<u8>, Option<(Vec<u8>, u64)>>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn from_ops(ops: Vec<Op>) -> History {
        History {
            ops,
            initial: BTreeMap::new(),
        }
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Declares the state of `key` before the history (default: absent).
    pub fn set_initial(&mut self, key: impl AsRef<[u8]>, state: Option<(Vec<u8>, u64)>) {
        self.initial.insert(key.as_ref().to_vec(), state);
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn check(&self) -> Result<CheckStats, Violation> {
        check(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Recording helpers
// ---------------------------------------------------------------------------------------------

/// Monotonic clock in nanoseconds since its creation. `Copy`, so every task can hold one.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// Converts an `Instant` to this clock's nanoseconds (0 for instants before the start).
    pub fn at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }
}

struct RecorderInner {
    clock: Clock,
    ops: Mutex<Vec<Op>>,
}

/// Shared, thread-safe history recorder; clone it into every task.
///
/// ```ignore
/// let p = rec.invoke(client, &key, OpKind::write(&val)); // stamps invoke time
/// match kv.put(req).await {
///     Ok(r) => p.written(r.into_inner().version),         // stamps response time
///     Err(s) if s.code() == Code::FailedPrecondition => p.precondition_failed(),
///     Err(_) => p.unknown(),
/// }
/// ```
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::with_clock(Clock::new())
    }

    pub fn with_clock(clock: Clock) -> Recorder {
        Recorder {
            inner: Arc::new(RecorderInner {
                clock,
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Starts an op now. Call it right before sending the request, and finish the returned
    /// [`Pending`] right after the reply arrives. A `Pending` dropped unfinished (task
    /// cancelled, panic, early return) is recorded with an unknown outcome.
    pub fn invoke(&self, client: usize, key: impl AsRef<[u8]>, kind: OpKind) -> Pending {
        Pending {
            recorder: self.clone(),
            client,
            key: key.as_ref().to_vec(),
            kind: Some(kind),
            invoke: self.inner.clock.now(),
        }
    }

    /// Records a fully built op.
    pub fn record(&self, op: Op) {
        self.lock().push(op);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A snapshot of everything recorded so far.
    pub fn history(&self) -> History {
        History::from_ops(self.lock().clone())
    }

    pub fn check(&self) -> Result<CheckStats, Violation> {
        check(&self.history())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        // A panicking task must not hide the history from the check.
        self.inner.ops.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An invoked op awaiting its outcome. Finishing consumes it; dropping it records `Unknown`.
#[must_use = "finish the op with its outcome (dropping it records an unknown outcome)"]
pub struct Pending {
    recorder: Recorder,
    client: usize,
    key: Vec<u8>,
    kind: Option<OpKind>,
    invoke: u64,
}

impl Pending {
    pub fn invoke_time(&self) -> u64 {
        self.invoke
    }

    /// Records the outcome with the current time as response time (`Unknown`: no response).
    pub fn finish(mut self, outcome: Outcome) {
        self.finish_inner(outcome);
    }

    /// A read returned `Some((value, version))` or `None` (absent; map Strata's
    /// `found == false` here, not to version 0).
    pub fn read(self, result: Option<(Vec<u8>, u64)>) {
        self.finish(Outcome::Read(result));
    }

    /// A write / CAS / put-if-absent succeeded with `version`.
    pub fn written(self, version: u64) {
        self.finish(Outcome::Written(version));
    }

    /// A delete succeeded, returning whether a live value was found and the tombstone version.
    pub fn deleted(self, found: bool, version: u64) {
        self.finish(Outcome::Deleted {
            found: Some(found),
            version: Some(version),
        });
    }

    pub fn precondition_failed(self) {
        self.finish(Outcome::PreconditionFailed);
    }

    /// Definitely not applied and observed nothing (e.g. invalid argument). Ignored by the check.
    pub fn rejected(self) {
        self.finish(Outcome::Rejected);
    }

    /// Timeout / unavailable / connection error: the op may or may not take effect.
    pub fn unknown(self) {
        self.finish(Outcome::Unknown);
    }

    fn finish_inner(&mut self, outcome: Outcome) {
        let Some(kind) = self.kind.take() else {
            return;
        };
        let response = if outcome == Outcome::Unknown {
            None
        } else {
            Some(self.recorder.inner.clock.now())
        };
        self.recorder.record(Op {
            client: self.client,
            key: std::mem::take(&mut self.key),
            kind,
            invoke: self.invoke,
            response,
            outcome,
        });
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish_inner(Outcome::Unknown);
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// Summary of a successful check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Keys checked.
    pub keys: usize,
    /// Ops in the history.
    pub ops: usize,
    /// Ops with an unknown outcome.
    pub unknown_ops: usize,
    /// Ops ignored (rejected ops, reads with unknown outcome).
    pub ignored_ops: usize,
    /// Search steps over all keys.
    pub steps: u64,
    /// Most search steps spent on one key.
    pub max_key_steps: u64,
}

impl fmt::Display for CheckStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "linearizable: {} keys, {} ops ({} unknown outcome, {} ignored), {} search steps (max {} on one key)",
            self.keys, self.ops, self.unknown_ops, self.ignored_ops, self.steps, self.max_key_steps
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// No linearization of the key's ops exists.
    NotLinearizable,
    /// The search hit its step limit; linearizability is undecided.
    GaveUp { steps: u64 },
    /// An op is inconsistent in itself (e.g. a read with a write outcome, response < invoke).
    Malformed,
}

/// Why a check failed. `Display` and `Debug` both print the full report (so `.unwrap()` on a
/// failed check prints the key's ops).
#[derive(Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    pub kind: ViolationKind,
    /// Human-readable report: reason, longest linearizable prefix, the key's ops by invoke time.
    pub report: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report)
    }
}

impl fmt::Debug for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n{}", self.report)
    }
}

impl std::error::Error for Violation {}

// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

/// Checks `history` with [`DEFAULT_MAX_STEPS`] per key.
pub fn check(history: &History) -> Result<CheckStats, Violation> {
    check_with_limit(history, DEFAULT_MAX_STEPS)
}

/// Checks `history`, giving up on a key after `max_steps_per_key` search steps. All keys are
/// checked; a definite violation is reported in preference to a key the search gave up on.
pub fn check_with_limit(
    history: &History,
    max_steps_per_key: u64,
) -> Result<CheckStats, Violation> {
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut stats = CheckStats {
        keys: by_key.len(),
        ops: history.ops.len(),
        ..CheckStats::default()
    };
    let mut gave_up: Option<Violation> = None;
    for (key, mut ops) in by_key {
        // Stable: ops invoked at the same time keep their recording order.
        ops.sort_by_key(|o| o.invoke);
        let initial = history.initial.get(key).cloned().flatten();
        let prepared = prepare(key, ops, initial)?;
        stats.unknown_ops += prepared.unk.len();
        stats.ignored_ops += prepared.ignored;
        let result = search(&prepared, max_steps_per_key);
        stats.steps += result.steps;
        stats.max_key_steps = stats.max_key_steps.max(result.steps);
        match result.end {
            End::Linearizable => {}
            End::NotLinearizable => {
                return Err(prepared.violation(ViolationKind::NotLinearizable, &result.best_path))
            }
            End::GaveUp => {
                if gave_up.is_none() {
                    gave_up = Some(prepared.violation(
                        ViolationKind::GaveUp {
                            steps: result.steps,
                        },
                        &result.best_path,
                    ));
                }
            }
        }
    }
    match gave_up {
        Some(v) => Err(v),
        None => Ok(stats),
    }
}

/// A register version as far as the search knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Ver {
    Known(u64),
    /// Written by an op with an unknown outcome: some version `>=` this bound.
    AtLeast(u64),
}

impl Ver {
    /// The version after a read saw `v`, if possible.
    fn observe(self, v: u64) -> Option<Ver> {
        match self {
            Ver::Known(c) => (c == v).then_some(self),
            Ver::AtLeast(l) => (v >= l).then_some(Ver::Known(v)),
        }
    }

    /// Whether the current version can be less than `v`.
    fn may_be_below(self, v: u64) -> bool {
        match self {
            Ver::Known(c) | Ver::AtLeast(c) => c < v,
        }
    }

    /// Whether the current version can differ from `v`.
    fn may_differ(self, v: u64) -> bool {
        match self {
            Ver::Known(c) => c != v,
            Ver::AtLeast(_) => true,
        }
    }

    /// The least the version can be.
    fn bound(self) -> u64 {
        match self {
            Ver::Known(c) | Ver::AtLeast(c) => c,
        }
    }

    /// The version of a write of unknown version applied on top of this one.
    fn bump(self) -> Ver {
        match self {
            Ver::Known(c) | Ver::AtLeast(c) => Ver::AtLeast(c.saturating_add(1)),
        }
    }
}

/// Model state: interned value (None = absent; `ANON`: a value no read returned) and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    val: Option<u32>,
    ver: Ver,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Cond {
    None,
    IfAbsent,
    IfVersion(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Res {
    /// Applied; the version it wrote, if known.
    Ok(Option<u64>),
    /// Condition did not hold.
    CondFailed,
    /// May or may not have been applied.
    Unknown,
}

/// An op's effect on the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Eff {
    Read(Option<(u32, u64)>),
    /// Put (`val: Some`) or delete (`val: None`); `found` only for deletes.
    Mutate {
        val: Option<u32>,
        cond: Cond,
        res: Res,
        found: Option<bool>,
    },
}

fn cond_holds(cond: Cond, s: State) -> Option<State> {
    match cond {
        Cond::None => Some(s),
        Cond::IfAbsent => s.val.is_none().then_some(s),
        Cond::IfVersion(e) => {
            s.val?;
            Some(State {
                val: s.val,
                ver: s.ver.observe(e)?,
            })
        }
    }
}

fn cond_may_fail(cond: Cond, s: State) -> bool {
    match cond {
        Cond::None => false,
        Cond::IfAbsent => s.val.is_some(),
        Cond::IfVersion(e) => s.val.is_none() || s.ver.may_differ(e),
    }
}

/// The state after `eff` at state `s`, or `None` if `eff` cannot happen at `s`. For ops with an
/// unknown outcome this is the "took effect" branch (not taking effect = never linearizing it).
fn apply(eff: &Eff, s: State) -> Option<State> {
    match *eff {
        Eff::Read(None) => s.val.is_none().then_some(s),
        Eff::Read(Some((v, ver))) => {
            if s.val != Some(v) {
                return None;
            }
            Some(State {
                val: s.val,
                ver: s.ver.observe(ver)?,
            })
        }
        Eff::Mutate {
            val,
            cond,
            res,
            found,
        } => match res {
            Res::CondFailed => cond_may_fail(cond, s).then_some(s),
            Res::Ok(version) => {
                let s = cond_holds(cond, s)?;
                if found.is_some_and(|f| f != s.val.is_some()) {
                    return None;
                }
                let ver = match version {
                    Some(v) if s.ver.may_be_below(v) => Ver::Known(v),
                    Some(_) => return None,
                    None => s.ver.bump(),
                };
                Some(State { val, ver })
            }
            Res::Unknown => {
                let s = cond_holds(cond, s)?;
                Some(State {
                    val,
                    ver: s.ver.bump(),
                })
            }
        },
    }
}

/// The highest version the key may have right before `eff` for it to apply (`u64::MAX`: any).
/// Versions never decrease along a linearization, so once the state's version is past the cap
/// of a definite op not yet linearized, that op can never be linearized.
fn cap(eff: &Eff) -> u64 {
    match *eff {
        Eff::Read(Some((_, r))) => r,
        Eff::Read(None) => u64::MAX,
        Eff::Mutate { cond, res, .. } => {
            let by_cond = match cond {
                Cond::IfVersion(e) => e,
                _ => u64::MAX,
            };
            match res {
                Res::Ok(Some(w)) => by_cond.min(w.saturating_sub(1)),
                Res::Ok(None) => by_cond,
                Res::CondFailed | Res::Unknown => u64::MAX,
            }
        }
    }
}

/// The value id standing for every value no definite read returned.
const ANON: u32 = u32::MAX;

/// A prepared op of one key.
#[derive(Clone, Copy, Debug)]
struct KOp {
    /// Index into `Prepared::ops`.
    id: usize,
    invoke: u64,
    /// `u64::MAX` for unknown outcomes.
    response: u64,
    eff: Eff,
}

/// One key's history, ready to search.
struct Prepared<'a> {
    key: &'a [u8],
    /// All ops of the key sorted by invoke (ids index this).
    ops: Vec<&'a Op>,
    /// Ops with a definite outcome, sorted by invoke.
    def: Vec<KOp>,
    /// Ops with an unknown outcome, sorted by invoke.
    unk: Vec<KOp>,
    /// `caps[i]`: `cap` of `def[i]`.
    caps: Vec<u64>,
    /// `cap_suffix_min[i]`: least `cap` of `def[i..]`.
    cap_suffix_min: Vec<u64>,
    /// Unknown ops grouped by identical effect, each group in invoke order. The search only
    /// ever applies a group's ops in that order (they are interchangeable once available), so
    /// the applied ones are always a prefix of their group.
    groups: Vec<Vec<usize>>,
    /// `group_of[k]`: the group of `unk[k]`.
    group_of: Vec<usize>,
    /// `ignored[id]`: why the op is ignored.
    ignored_why: Vec<Option<&'static str>>,
    ignored: usize,
    values: Vec<Vec<u8>>,
    init: State,
    initial_value: Option<Vec<u8>>,
}

fn prepare<'a>(
    key: &'a [u8],
    ops: Vec<&'a Op>,
    initial: Option<(Vec<u8>, u64)>,
) -> Result<Prepared<'a>, Violation> {
    let mut p = Prepared {
        key,
        ignored_why: vec![None; ops.len()],
        ops,
        def: Vec::new(),
        unk: Vec::new(),
        caps: Vec::new(),
        cap_suffix_min: Vec::new(),
        groups: Vec::new(),
        group_of: Vec::new(),
        ignored: 0,
        values: Vec::new(),
        init: State {
            val: None,
            ver: Ver::Known(0),
        },
        initial_value: None,
    };
    let mut interned: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut intern = |v: &[u8], values: &mut Vec<Vec<u8>>| -> u32 {
        *interned.entry(v.to_vec()).or_insert_with(|| {
            values.push(v.to_vec());
            (values.len() - 1) as u32
        })
    };
    if let Some((v, ver)) = initial {
        p.initial_value = Some(v.clone());
        p.init = State {
            val: Some(intern(&v, &mut p.values)),
            ver: Ver::Known(ver),
        };
    }
    for id in 0..p.ops.len() {
        let op = p.ops[id];
        let ignore = match (&op.kind, &op.outcome) {
            (_, Outcome::Rejected) => Some("rejected"),
            (OpKind::Read, Outcome::Unknown) => Some("read with unknown outcome"),
            _ => None,
        };
        if let Some(why) = ignore {
            p.ignored_why[id] = Some(why);
            p.ignored += 1;
            continue;
        }
        let eff = match &op.kind {
            OpKind::Read => match &op.outcome {
                Outcome::Read(r) => {
                    Eff::Read(r.as_ref().map(|(v, ver)| (intern(v, &mut p.values), *ver)))
                }
                _ => return Err(p.malformed(id, "a read needs a Read outcome")),
            },
            OpKind::Write { value } | OpKind::Cas { value, .. } | OpKind::PutIfAbsent { value } => {
                let cond = match &op.kind {
                    OpKind::Cas {
                        expected_version, ..
                    } => Cond::IfVersion(*expected_version),
                    OpKind::PutIfAbsent { .. } => Cond::IfAbsent,
                    _ => Cond::None,
                };
                let res = match &op.outcome {
                    Outcome::Written(v) => Res::Ok(Some(*v)),
                    Outcome::PreconditionFailed if cond != Cond::None => Res::CondFailed,
                    Outcome::Unknown => Res::Unknown,
                    _ => return Err(p.malformed(id, "outcome does not fit a put")),
                };
                Eff::Mutate {
                    val: Some(intern(value, &mut p.values)),
                    cond,
                    res,
                    found: None,
                }
            }
            OpKind::Delete { if_version } => {
                let cond = match if_version {
                    Some(e) => Cond::IfVersion(*e),
                    None => Cond::None,
                };
                let (res, found) = match &op.outcome {
                    Outcome::Deleted { found, version } => (Res::Ok(*version), *found),
                    Outcome::PreconditionFailed if cond != Cond::None => (Res::CondFailed, None),
                    Outcome::Unknown => (Res::Unknown, None),
                    _ => return Err(p.malformed(id, "outcome does not fit a delete")),
                };
                Eff::Mutate {
                    val: None,
                    cond,
                    res,
                    found,
                }
            }
        };
        if op.outcome == Outcome::Unknown {
            p.unk.push(KOp {
                id,
                invoke: op.invoke,
                response: u64::MAX,
                eff,
            });
        } else {
            let Some(response) = op.response else {
                return Err(p.malformed(id, "a definite outcome needs a response time"));
            };
            if response < op.invoke {
                return Err(p.malformed(id, "response before invoke"));
            }
            p.def.push(KOp {
                id,
                invoke: op.invoke,
                response,
                eff,
            });
        }
    }
    // Values no definite read returned cannot be told apart: make them one value, so that
    // unknown ops writing them become interchangeable (one group) and positions merge.
    let observed: HashSet<u32> = p
        .def
        .iter()
        .filter_map(|o| match o.eff {
            Eff::Read(Some((v, _))) => Some(v),
            _ => None,
        })
        .collect();
    let anonymize = |val: &mut Option<u32>| {
        if val.is_some_and(|v| !observed.contains(&v)) {
            *val = Some(ANON);
        }
    };
    for o in p.def.iter_mut().chain(p.unk.iter_mut()) {
        if let Eff::Mutate { val, .. } = &mut o.eff {
            anonymize(val);
        }
    }
    anonymize(&mut p.init.val);
    let mut group_ids: HashMap<Eff, usize> = HashMap::new();
    for (k, u) in p.unk.iter().enumerate() {
        let g = *group_ids.entry(u.eff).or_insert_with(|| {
            p.groups.push(Vec::new());
            p.groups.len() - 1
        });
        p.groups[g].push(k);
        p.group_of.push(g);
    }
    p.caps = p.def.iter().map(|o| cap(&o.eff)).collect();
    p.cap_suffix_min = vec![u64::MAX; p.def.len() + 1];
    for i in (0..p.def.len()).rev() {
        p.cap_suffix_min[i] = p.cap_suffix_min[i + 1].min(p.caps[i]);
    }
    Ok(p)
}

/// A fixed-size bitset.
#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        (self.0[i / 64] >> (i % 64)) & 1 == 1
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    /// The first clear bit at or after `i` (`len` bits in all), if any.
    fn next_clear(&self, mut i: usize, len: usize) -> Option<usize> {
        while i < len {
            let w = !self.0[i / 64] >> (i % 64);
            if w != 0 {
                let j = i + w.trailing_zeros() as usize;
                return (j < len).then_some(j);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// Appends the words covering bits `[first, hi)` after their offset: bits below `first` are
    /// all set and bits from `hi` on all clear, so this identifies the set exactly.
    fn encode(&self, first: usize, hi: usize, out: &mut Vec<u64>) {
        let lo = first / 64;
        let hi = hi.div_ceil(64).max(lo);
        out.push(lo as u64);
        out.push((hi - lo) as u64);
        out.extend_from_slice(&self.0[lo..hi]);
    }
}

/// An op to linearize next: index into `def` or `unk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cand {
    Def(usize),
    Unk(usize),
}

enum End {
    Linearizable,
    NotLinearizable,
    GaveUp,
}

struct SearchResult {
    end: End,
    steps: u64,
    /// The linearized ops at the deepest point reached (most definite ops linearized).
    best_path: Vec<Cand>,
}

/// The search position.
#[derive(Clone)]
struct Pos {
    state: State,
    done_def: Bits,
    /// Definite ops linearized.
    ndone: usize,
    /// First definite op not linearized; one past the last one linearized.
    first_def: usize,
    hi_def: usize,
    done_unk: Bits,
    /// Applied ops per group of unknown ops (always the group's first ones).
    group_applied: Vec<usize>,
}

/// What `Pos::mark` changes besides bits, for `Pos::unmark`.
#[derive(Clone, Copy)]
struct Undo {
    state: State,
    first_def: usize,
    hi_def: usize,
}

impl Pos {
    fn new(p: &Prepared) -> Pos {
        Pos {
            state: p.init,
            done_def: Bits::new(p.def.len()),
            ndone: 0,
            first_def: 0,
            hi_def: 0,
            done_unk: Bits::new(p.unk.len()),
            group_applied: vec![0; p.groups.len()],
        }
    }

    /// Linearizes `c`, moving to state `ns`.
    fn mark(&mut self, p: &Prepared, c: Cand, ns: State) -> Undo {
        let undo = Undo {
            state: self.state,
            first_def: self.first_def,
            hi_def: self.hi_def,
        };
        self.state = ns;
        match c {
            Cand::Def(i) => {
                self.done_def.set(i);
                self.ndone += 1;
                self.hi_def = self.hi_def.max(i + 1);
                while self.first_def < p.def.len() && self.done_def.get(self.first_def) {
                    self.first_def += 1;
                }
            }
            Cand::Unk(k) => {
                self.done_unk.set(k);
                self.group_applied[p.group_of[k]] += 1;
            }
        }
        undo
    }

    fn unmark(&mut self, p: &Prepared, c: Cand, undo: Undo) {
        match c {
            Cand::Def(i) => {
                self.done_def.clear(i);
                self.ndone -= 1;
            }
            Cand::Unk(k) => {
                self.done_unk.clear(k);
                self.group_applied[p.group_of[k]] -= 1;
            }
        }
        self.state = undo.state;
        self.first_def = undo.first_def;
        self.hi_def = undo.hi_def;
    }

    /// Whether some definite op not linearized yet can no longer be linearized because the
    /// version is already past its cap.
    fn dead(&self, p: &Prepared) -> bool {
        let mut least = p.cap_suffix_min[self.hi_def];
        let mut i = self.first_def;
        while let Some(j) = self.done_def.next_clear(i, self.hi_def) {
            least = least.min(p.caps[j]);
            i = j + 1;
        }
        self.state.ver.bound() > least
    }

    /// Identifies the definite ops linearized and the state (bits below `first_def` are all
    /// set, from `hi_def` on clear).
    fn memo_key(&self) -> MemoKey {
        let mut v = Vec::with_capacity(4);
        self.done_def.encode(self.first_def, self.hi_def, &mut v);
        (v.into_boxed_slice(), self.state)
    }

    /// Definite ops that may be linearized next (all of them, applicable or not), and the
    /// earliest response among the definite ops not linearized yet.
    fn minimal_defs(&self, p: &Prepared) -> (Vec<usize>, u64) {
        let mut min_resp = u64::MAX;
        let mut undone = Vec::new();
        let mut i = self.first_def;
        // Ops past the first one invoked after `min_resp` cannot lower it (response >= invoke).
        while let Some(j) = self.done_def.next_clear(i, p.def.len()) {
            if p.def[j].invoke > min_resp {
                break;
            }
            min_resp = min_resp.min(p.def[j].response);
            undone.push(j);
            i = j + 1;
        }
        undone.retain(|&j| p.def[j].invoke <= min_resp);
        (undone, min_resp)
    }

    /// Applicable next ops with their successor states, the preferred one last.
    fn successors(&self, p: &Prepared) -> Vec<(Cand, State)> {
        let s = self.state;
        let (defs, min_resp) = self.minimal_defs(p);
        let mut out = Vec::new();
        let mut blocked: Vec<&Eff> = Vec::new();
        for &i in &defs {
            match apply(&p.def[i].eff, s) {
                // A minimal definite op that leaves the state unchanged (a read, a failed
                // condition) can always be linearized right now: in any valid completion, moving
                // it here keeps every state equal or more permissive. No branching needed.
                Some(ns) if ns == s => return vec![(Cand::Def(i), s)],
                Some(ns) => out.push((Cand::Def(i), ns)),
                None => blocked.push(&p.def[i].eff),
            }
        }
        // Unknown ops: an available one stays available forever (its response is +inf), so of
        // a group of identical ones only the first not applied yet is a candidate. Conditional
        // ones whose expected version is already passed can never apply again.
        let bound = s.ver.bound();
        let mut unks: Vec<(usize, State)> = Vec::new();
        for (g, members) in p.groups.iter().enumerate() {
            let Some(&k) = members.get(self.group_applied[g]) else {
                continue;
            };
            let eff = &p.unk[k].eff;
            if p.unk[k].invoke > min_resp
                || matches!(eff, Eff::Mutate { cond: Cond::IfVersion(e), .. } if *e < bound)
            {
                continue;
            }
            match apply(eff, s) {
                Some(ns) => unks.push((k, ns)),
                None => blocked.push(eff),
            }
        }
        // Take an unknown op into effect only if that unblocks an op. Sound and complete: if a
        // valid completion applies unknown op U and then X, with X already applicable before U,
        // then U can be moved after X (X a read of absent or a failed condition: both unchanged
        // by the swap) or dropped (otherwise X leaves an equal or more permissive state without
        // U). Repeating that yields a valid completion where every applied unknown op unblocks
        // the op right after it.
        for (k, ns) in unks {
            if blocked.iter().any(|eff| apply(eff, ns).is_some()) {
                out.push((Cand::Unk(k), ns));
            }
        }
        out.reverse();
        out
    }
}

/// Positions visited. A position with the same definite ops linearized and the same state as
/// a visited one, and a superset of its unknown ops applied, has fewer options left, so it
/// cannot succeed where the visited one failed. (A visited position is never an ancestor of
/// one it dominates: every unknown op raises the version, so the state would differ.)
#[derive(Default)]
struct Memo {
    /// (definite ops linearized, state) -> unknown-op sets applied (an antichain).
    seen: HashMap<MemoKey, Vec<Box<[u64]>>>,
}

/// Definite ops linearized (see `Pos::memo_key`) and the state.
type MemoKey = (Box<[u64]>, State);

impl Memo {
    /// Records `pos`; false if it is dominated by a position visited before.
    fn visit(&mut self, pos: &Pos) -> bool {
        let subset = |a: &[u64], b: &[u64]| a.iter().zip(b).all(|(x, y)| x & !y == 0);
        let unk = &pos.done_unk.0;
        let sets = self.seen.entry(pos.memo_key()).or_default();
        if sets.iter().any(|s| subset(s, unk)) {
            return false;
        }
        sets.retain(|s| !subset(unk, s));
        if sets.len() >= MAX_ANTICHAIN {
            // Forgetting a position only costs pruning, never correctness.
            sets.remove(0);
        }
        sets.push(unk.clone().into_boxed_slice());
        true
    }
}

struct Frame {
    /// The op linearized to reach this node (None at the root), and how to undo it.
    via: Option<(Cand, Undo)>,
    /// This node's entry in the trail.
    trail: usize,
    /// Successors not tried yet, the next one last.
    cands: Vec<(Cand, State)>,
}

/// Paths of the search tree, as (op, parent entry) entries; `usize::MAX` = the root.
#[derive(Default)]
struct Trail(Vec<(Cand, usize)>);

impl Trail {
    fn push(&mut self, c: Cand, parent: usize) -> usize {
        self.0.push((c, parent));
        self.0.len() - 1
    }

    fn path(&self, mut at: usize) -> Vec<Cand> {
        let mut path = Vec::new();
        while at != usize::MAX {
            path.push(self.0[at].0);
            at = self.0[at].1;
        }
        path.reverse();
        path
    }
}

fn search(p: &Prepared, max_steps: u64) -> SearchResult {
    let mut pos = Pos::new(p);
    let mut steps = 0u64;
    let mut trail = Trail::default();
    // The deepest position reached (most definite ops linearized), for the report.
    let (mut best_done, mut best) = (0usize, usize::MAX);
    if p.def.is_empty() {
        return SearchResult {
            end: End::Linearizable,
            steps,
            best_path: Vec::new(),
        };
    }
    let mut memo = Memo::default();
    let mut stack = vec![Frame {
        via: None,
        trail: usize::MAX,
        cands: pos.successors(p),
    }];
    let end = loop {
        let Some(top) = stack.last_mut() else {
            break End::NotLinearizable;
        };
        let parent = top.trail;
        let Some((c, ns)) = top.cands.pop() else {
            if let Some((c, undo)) = stack.pop().and_then(|f| f.via) {
                pos.unmark(p, c, undo);
            }
            continue;
        };
        let undo = pos.mark(p, c, ns);
        if pos.ndone == p.def.len() {
            steps += 1;
            break End::Linearizable;
        }
        // A child of a live position is live unless its version went up.
        let dead = pos.state.ver.bound() > undo.state.ver.bound() && pos.dead(p);
        if dead || !memo.visit(&pos) {
            // Hopeless or explored before: undo and try the next candidate. (A hopeless
            // position still counts for the report: it shows which op got stranded.)
            if dead && pos.ndone > best_done {
                best_done = pos.ndone;
                best = trail.push(c, parent);
            }
            pos.unmark(p, c, undo);
            continue;
        }
        steps += 1;
        let at = trail.push(c, parent);
        if pos.ndone > best_done {
            best_done = pos.ndone;
            best = at;
        }
        if steps >= max_steps {
            break End::GaveUp;
        }
        let cands = pos.successors(p);
        stack.push(Frame {
            via: Some((c, undo)),
            trail: at,
            cands,
        });
    };
    let best_path = match end {
        End::Linearizable => Vec::new(),
        _ => trail.path(best),
    };
    SearchResult {
        end,
        steps,
        best_path,
    }
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

fn show_bytes(b: &[u8]) -> String {
    const MAX: usize = 40;
    if b.iter().all(|&c| c == b' ' || c.is_ascii_graphic()) {
        let s = String::from_utf8_lossy(b);
        if b.len() <= MAX {
            format!("{s:?}")
        } else {
            format!("{:?}..({} bytes)", &s[..MAX - 8], b.len())
        }
    } else {
        let hex: String = b.iter().take(16).map(|c| format!("{c:02x}")).collect();
        if b.len() <= 16 {
            format!("0x{hex}")
        } else {
            format!("0x{hex}..({} bytes)", b.len())
        }
    }
}

fn show_time(ns: u64) -> String {
    format!("{}.{:03}us", ns / 1000, ns % 1000)
}

fn show_kind(k: &OpKind) -> String {
    match k {
        OpKind::Read => "read".to_string(),
        OpKind::Write { value } => format!("write {}", show_bytes(value)),
        OpKind::Cas {
            expected_version,
            value,
        } => format!("cas(if v{expected_version}) {}", show_bytes(value)),
        OpKind::PutIfAbsent { value } => format!("put-if-absent {}", show_bytes(value)),
        OpKind::Delete { if_version: None } => "delete".to_string(),
        OpKind::Delete {
            if_version: Some(e),
        } => format!("delete(if v{e})"),
    }
}

fn show_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Read(None) => "absent".to_string(),
        Outcome::Read(Some((v, ver))) => format!("{} v{ver}", show_bytes(v)),
        Outcome::Written(v) => format!("ok v{v}"),
        Outcome::Deleted { found, version } => {
            let found = match found {
                Some(f) => format!(" found={f}"),
                None => String::new(),
            };
            let version = match version {
                Some(v) => format!(" v{v}"),
                None => String::new(),
            };
            format!("deleted{found}{version}")
        }
        Outcome::PreconditionFailed => "precondition failed".to_string(),
        Outcome::Rejected => "rejected".to_string(),
        Outcome::Unknown => "UNKNOWN".to_string(),
    }
}

impl Prepared<'_> {
    fn t0(&self) -> u64 {
        self.ops.first().map_or(0, |o| o.invoke)
    }

    fn show_op(&self, id: usize) -> String {
        let op = self.ops[id];
        let t0 = self.t0();
        let response = match (op.response, &op.outcome) {
            (Some(r), o) if *o != Outcome::Unknown => show_time(r.saturating_sub(t0)),
            _ => "inf".to_string(),
        };
        format!(
            "#{id:<4} c{:<3} [{:>14} .. {:>14}] {} -> {}",
            op.client,
            show_time(op.invoke - t0),
            response,
            show_kind(&op.kind),
            show_outcome(&op.outcome)
        )
    }

    /// Shows state `s` reached by linearizing `path`.
    fn show_state(&self, s: State, path: &[Cand]) -> String {
        let ver = match s.ver {
            Ver::Known(v) => format!("v{v}"),
            Ver::AtLeast(l) => format!("unknown version >= {l}"),
        };
        if s.val.is_none() {
            return format!("absent (version {ver})");
        }
        // Values no read returned are merged in the model: show the real one.
        let writer = path.iter().rev().find_map(|&c| {
            let eff = match c {
                Cand::Def(i) => self.def[i].eff,
                Cand::Unk(k) => self.unk[k].eff,
            };
            match eff {
                Eff::Mutate { res, .. } if res != Res::CondFailed => Some(self.id_of(c)),
                _ => None,
            }
        });
        match writer {
            Some(id) => match &self.ops[id].kind {
                OpKind::Write { value }
                | OpKind::Cas { value, .. }
                | OpKind::PutIfAbsent { value } => {
                    format!("{} {ver} (written by #{id})", show_bytes(value))
                }
                OpKind::Read | OpKind::Delete { .. } => format!("live {ver}"),
            },
            None => match &self.initial_value {
                Some(v) => format!("{} {ver} (initial)", show_bytes(v)),
                None => format!("live {ver}"),
            },
        }
    }

    fn id_of(&self, c: Cand) -> usize {
        match c {
            Cand::Def(i) => self.def[i].id,
            Cand::Unk(i) => self.unk[i].id,
        }
    }

    fn malformed(&self, id: usize, why: &str) -> Violation {
        let mut r = format!(
            "malformed history for key {}: op #{id}: {why}\n  {}\n",
            show_bytes(self.key),
            self.show_op(id)
        );
        self.dump(&mut r, &vec![false; self.ops.len()], id);
        Violation {
            key: self.key.to_vec(),
            kind: ViolationKind::Malformed,
            report: r,
        }
    }

    fn violation(&self, kind: ViolationKind, best_path: &[Cand]) -> Violation {
        use std::fmt::Write;
        let mut r = String::new();
        let key = show_bytes(self.key);
        let counts = format!(
            "{} ops: {} definite, {} unknown outcome, {} ignored",
            self.ops.len(),
            self.def.len(),
            self.unk.len(),
            self.ignored
        );
        match &kind {
            ViolationKind::GaveUp { steps } => {
                let _ = writeln!(
                    r,
                    "linearizability check GAVE UP on key {key} after {steps} search steps ({counts}); \
                     undecided: reduce concurrency, ops per key or unknown-outcome ops"
                );
            }
            _ => {
                let _ = writeln!(
                    r,
                    "NOT LINEARIZABLE: key {key} ({counts}): no order of these ops is consistent \
                     with a register and with real time"
                );
            }
        }
        // Replay the deepest prefix the search reached.
        let mut pos = Pos::new(self);
        let mut in_prefix = vec![false; self.ops.len()];
        for &c in best_path {
            let eff = match c {
                Cand::Def(i) => &self.def[i].eff,
                Cand::Unk(i) => &self.unk[i].eff,
            };
            let ns = apply(eff, pos.state).expect("the best path replays");
            pos.mark(self, c, ns);
            in_prefix[self.id_of(c)] = true;
        }
        const MAX_ORDER: usize = 60;
        let skipped = best_path.len().saturating_sub(MAX_ORDER);
        let mut order: Vec<String> = best_path[skipped..]
            .iter()
            .map(|&c| match c {
                Cand::Def(_) => format!("#{}", self.id_of(c)),
                Cand::Unk(_) => format!("#{}(unknown, took effect)", self.id_of(c)),
            })
            .collect();
        if skipped > 0 {
            order.insert(0, format!("({skipped} earlier ops) ..."));
        }
        let _ = writeln!(
            r,
            "longest linearizable prefix: {} of {} definite ops, in order: {}",
            pos.ndone,
            self.def.len(),
            if order.is_empty() {
                "(none)".to_string()
            } else {
                order.join(" ")
            }
        );
        let _ = writeln!(
            r,
            "state after it: {}",
            self.show_state(pos.state, best_path)
        );
        let stranded: Vec<usize> = (0..self.def.len())
            .filter(|&i| !pos.done_def.get(i) && self.caps[i] < pos.state.ver.bound())
            .collect();
        if !stranded.is_empty() {
            let _ = writeln!(
                r,
                "definite ops left behind (they need an older version than the state has):"
            );
            for &i in &stranded {
                let need = self.caps[i];
                let _ = writeln!(
                    r,
                    "    {}   (needs version <= {need})",
                    self.show_op(self.def[i].id)
                );
            }
        }
        let (next, _) = pos.minimal_defs(self);
        let _ = writeln!(r, "definite ops that could come next, by real time:");
        for &i in &next {
            let fits = match apply(&self.def[i].eff, pos.state) {
                Some(_) => "fits that state, but every continuation failed",
                None => "does not fit that state",
            };
            let _ = writeln!(r, "    {}   ({fits})", self.show_op(self.def[i].id));
        }
        let focus = stranded
            .first()
            .or(next.first())
            .map_or(self.ops.len().saturating_sub(1), |&i| self.def[i].id);
        self.dump(&mut r, &in_prefix, focus);
        Violation {
            key: self.key.to_vec(),
            kind,
            report: r,
        }
    }

    /// Appends the key's ops by invoke time (at most `MAX_DUMP_OPS`, centred on `focus`).
    fn dump(&self, r: &mut String, in_prefix: &[bool], focus: usize) {
        use std::fmt::Write;
        let n = self.ops.len();
        let (lo, hi) = if n <= MAX_DUMP_OPS {
            (0, n)
        } else {
            let lo = focus.saturating_sub(MAX_DUMP_OPS / 2).min(n - MAX_DUMP_OPS);
            (lo, lo + MAX_DUMP_OPS)
        };
        let _ = writeln!(
            r,
            "ops of key {} by invoke time (t=0 at the first invoke; * = in the prefix above):",
            show_bytes(self.key)
        );
        if lo > 0 {
            let _ = writeln!(r, "    ... {lo} earlier ops not shown");
        }
        for (id, &linearized) in in_prefix.iter().enumerate().take(hi).skip(lo) {
            let mark = if linearized { '*' } else { ' ' };
            let note = match self.ignored_why[id] {
                Some(why) => format!("   (ignored: {why})"),
                None => String::new(),
            };
            let _ = writeln!(r, "  {mark} {}{note}", self.show_op(id));
        }
        if hi < n {
            let _ = writeln!(r, "    ... {} later ops not shown", n - hi);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = b"k";

    fn write(c: usize, v: &str, t: (u64, u64), ver: u64) -> Op {
        Op::completed(c, K, OpKind::write(v), t.0, t.1, Outcome::Written(ver))
    }
    fn read(c: usize, t: (u64, u64), r: Option<(&str, u64)>) -> Op {
        let r = r.map(|(v, ver)| (v.as_bytes().to_vec(), ver));
        Op::completed(c, K, OpKind::Read, t.0, t.1, Outcome::Read(r))
    }
    fn cas(c: usize, expect: u64, v: &str, t: (u64, u64), out: Outcome) -> Op {
        Op::completed(c, K, OpKind::cas(expect, v), t.0, t.1, out)
    }
    fn hist(ops: Vec<Op>) -> History {
        History::from_ops(ops)
    }
    fn assert_ok(h: &History) -> CheckStats {
        match check(h) {
            Ok(s) => s,
            Err(v) => panic!("expected linearizable, got:\n{v}"),
        }
    }
    fn assert_violation(h: &History) -> Violation {
        match check(h) {
            Ok(s) => panic!("expected a violation, got {s}"),
            Err(v) => {
                assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
                v
            }
        }
    }

    #[test]
    fn empty_and_sequential_histories_pass() {
        assert_ok(&History::new());
        let h = hist(vec![
            read(0, (0, 1), None),
            write(0, "a", (2, 3), 5),
            read(1, (4, 5), Some(("a", 5))),
            cas(1, 5, "b", (6, 7), Outcome::Written(9)),
            cas(0, 5, "c", (8, 9), Outcome::PreconditionFailed),
            read(0, (10, 11), Some(("b", 9))),
            Op::completed(
                2,
                K,
                OpKind::delete(),
                12,
                13,
                Outcome::Deleted {
                    found: Some(true),
                    version: Some(10),
                },
            ),
            read(0, (14, 15), None),
            Op::completed(
                2,
                K,
                OpKind::put_if_absent("d"),
                16,
                17,
                Outcome::Written(11),
            ),
            Op::completed(
                2,
                K,
                OpKind::put_if_absent("e"),
                18,
                19,
                Outcome::PreconditionFailed,
            ),
            read(0, (20, 21), Some(("d", 11))),
        ]);
        let s = assert_ok(&h);
        assert_eq!((s.keys, s.ops, s.unknown_ops), (1, 11, 0));
    }

    #[test]
    fn stale_read_after_completed_write_fails() {
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            write(0, "b", (20, 30), 2),
            read(1, (40, 50), Some(("a", 1))),
        ]);
        let v = assert_violation(&h);
        assert_eq!(v.key, K);
        assert!(v.report.contains("#2"), "{v}");
        assert!(v.report.contains("\"b\" v2"), "{v}");
    }

    #[test]
    fn concurrent_write_and_read_pass_in_either_order() {
        for seen in [Some(("a", 1)), Some(("b", 2))] {
            let h = hist(vec![
                write(0, "a", (0, 10), 1),
                write(0, "b", (20, 40), 2),
                read(1, (25, 35), seen),
            ]);
            assert_ok(&h);
        }
        // Read entirely before the write still sees the old value only.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            write(0, "b", (30, 40), 2),
            read(1, (15, 25), Some(("b", 2))),
        ]);
        assert_violation(&h);
        // Two reads overlapping the write may not disagree in real-time order: new then old.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            write(0, "b", (20, 100), 2),
            read(1, (30, 40), Some(("b", 2))),
            read(2, (50, 60), Some(("a", 1))),
        ]);
        assert_violation(&h);
    }

    #[test]
    fn two_cas_successes_on_same_expected_version_fail() {
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            cas(1, 1, "b", (20, 40), Outcome::Written(2)),
            cas(2, 1, "c", (20, 40), Outcome::Written(3)),
        ]);
        assert_violation(&h);
        // One success and one precondition failure is fine.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            cas(1, 1, "b", (20, 40), Outcome::Written(2)),
            cas(2, 1, "c", (20, 40), Outcome::PreconditionFailed),
            read(0, (50, 60), Some(("b", 2))),
        ]);
        assert_ok(&h);
        // A precondition failure with nothing else changing the version fails.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            cas(2, 1, "c", (20, 40), Outcome::PreconditionFailed),
        ]);
        assert_violation(&h);
    }

    #[test]
    fn unknown_write_read_later_passes_and_read_before_invoke_fails() {
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            Op::unknown(1, K, OpKind::write("u"), 20),
            read(2, (100, 110), Some(("u", 7))),
            read(2, (120, 130), Some(("u", 7))),
        ]);
        let s = assert_ok(&h);
        assert_eq!(s.unknown_ops, 1);
        // Never taking effect is fine too.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            Op::unknown(1, K, OpKind::write("u"), 20),
            read(2, (100, 110), Some(("a", 1))),
        ]);
        assert_ok(&h);
        // Read of the unknown write's value before the write was invoked.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            read(2, (12, 18), Some(("u", 7))),
            Op::unknown(1, K, OpKind::write("u"), 20),
        ]);
        assert_violation(&h);
        // The unknown write's version must exceed the version it overwrote.
        let h = hist(vec![
            write(0, "a", (0, 10), 5),
            Op::unknown(1, K, OpKind::write("u"), 20),
            read(2, (100, 110), Some(("u", 5))),
        ]);
        assert_violation(&h);
        // Once read at v7, the unknown write's version is fixed.
        let h = hist(vec![
            Op::unknown(1, K, OpKind::write("u"), 0),
            read(2, (100, 110), Some(("u", 7))),
            read(2, (120, 130), Some(("u", 8))),
        ]);
        assert_violation(&h);
        // A CAS on the version read from an unknown write, then a later write.
        let h = hist(vec![
            Op::unknown(1, K, OpKind::write("u"), 0),
            read(2, (100, 110), Some(("u", 7))),
            cas(2, 7, "x", (120, 130), Outcome::Written(9)),
            read(2, (140, 150), Some(("x", 9))),
        ]);
        assert_ok(&h);
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            write(1, "b", (20, 30), 2),
            read(2, (40, 50), Some(("b", 2))),
            read(2, (60, 70), Some(("a", 1))),
        ]);
        assert_violation(&h);
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            write(1, "b", (20, 30), 2),
            read(2, (40, 50), Some(("a", 1))),
        ]);
        assert_violation(&h);
        // Lost delete.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            Op::completed(
                1,
                K,
                OpKind::delete(),
                20,
                30,
                Outcome::Deleted {
                    found: Some(true),
                    version: Some(2),
                },
            ),
            read(2, (40, 50), Some(("a", 1))),
        ]);
        assert_violation(&h);
    }

    #[test]
    fn version_going_backwards_fails() {
        let h = hist(vec![write(0, "a", (0, 10), 5), write(0, "b", (20, 30), 3)]);
        assert_violation(&h);
        // Duplicate versions.
        let h = hist(vec![write(0, "a", (0, 10), 5), write(1, "b", (0, 10), 5)]);
        assert_violation(&h);
        // Concurrent writes: version order decides linearization order, which reads must match.
        let h = hist(vec![
            write(0, "a", (0, 30), 5),
            write(1, "b", (0, 30), 3),
            read(2, (40, 50), Some(("a", 5))),
        ]);
        assert_ok(&h);
        let h = hist(vec![
            write(0, "a", (0, 30), 5),
            write(1, "b", (0, 30), 3),
            read(2, (40, 50), Some(("b", 3))),
        ]);
        assert_violation(&h);
        // A read whose version does not match the value's write.
        let h = hist(vec![
            write(0, "a", (0, 10), 5),
            read(1, (20, 30), Some(("a", 4))),
        ]);
        assert_violation(&h);
    }

    #[test]
    fn deletes_and_conditional_ops() {
        let del = |c, cond: Option<u64>, t: (u64, u64), out| {
            let kind = OpKind::Delete { if_version: cond };
            Op::completed(c, K, kind, t.0, t.1, out)
        };
        let deleted = |found, version| Outcome::Deleted {
            found: Some(found),
            version: Some(version),
        };
        // Delete of an absent key reports found=false and still bumps the version.
        let h = hist(vec![
            del(0, None, (0, 10), deleted(false, 3)),
            write(0, "a", (20, 30), 4),
            del(0, Some(4), (40, 50), deleted(true, 6)),
            del(0, Some(4), (60, 70), Outcome::PreconditionFailed),
            read(1, (80, 90), None),
        ]);
        assert_ok(&h);
        // found=true on an absent key.
        let h = hist(vec![del(0, None, (0, 10), deleted(true, 3))]);
        assert_violation(&h);
        // A write after a tombstone must have a higher version.
        let h = hist(vec![
            del(0, None, (0, 10), deleted(false, 3)),
            write(0, "a", (20, 30), 2),
        ]);
        assert_violation(&h);
        // Delete with unreported fields.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            del(
                0,
                None,
                (20, 30),
                Outcome::Deleted {
                    found: None,
                    version: None,
                },
            ),
            read(1, (40, 50), None),
            write(0, "b", (60, 70), 3),
        ]);
        assert_ok(&h);
        // Unknown delete may explain a later absent read.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            Op::unknown(1, K, OpKind::delete(), 20),
            read(1, (40, 50), None),
        ]);
        assert_ok(&h);
        // Put-if-absent twice on an absent key, both succeeding, overlapping.
        let pia = |c, v: &str, t: (u64, u64), out| {
            Op::completed(c, K, OpKind::put_if_absent(v), t.0, t.1, out)
        };
        let h = hist(vec![
            pia(0, "a", (0, 10), Outcome::Written(1)),
            pia(1, "b", (0, 10), Outcome::Written(2)),
        ]);
        assert_violation(&h);
        // Initial state.
        let mut h = hist(vec![cas(0, 9, "b", (0, 10), Outcome::Written(10))]);
        assert_violation(&h);
        h.set_initial(K, Some((b"a".to_vec(), 9)));
        assert_ok(&h);
    }

    #[test]
    fn unknown_cas_and_ignored_ops() {
        // An unknown CAS took effect iff its expected version was current.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            Op::unknown(1, K, OpKind::cas(1, "b"), 20),
            read(2, (100, 110), Some(("b", 4))),
        ]);
        assert_ok(&h);
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            Op::unknown(1, K, OpKind::cas(2, "b"), 20),
            read(2, (100, 110), Some(("b", 4))),
        ]);
        assert_violation(&h);
        // Rejected ops and unknown reads are ignored.
        let h = hist(vec![
            write(0, "a", (0, 10), 1),
            Op::completed(1, K, OpKind::write("zzz"), 20, 30, Outcome::Rejected),
            Op::unknown(1, K, OpKind::Read, 20),
            read(2, (40, 50), Some(("a", 1))),
        ]);
        let s = assert_ok(&h);
        assert_eq!(s.ignored_ops, 2);
    }

    #[test]
    fn keys_are_checked_independently() {
        let w = |key: &str, v: &str, t: (u64, u64), ver| {
            Op::completed(0, key, OpKind::write(v), t.0, t.1, Outcome::Written(ver))
        };
        let r = |key: &str, t: (u64, u64), v: &str, ver| {
            let out = Outcome::Read(Some((v.as_bytes().to_vec(), ver)));
            Op::completed(1, key, OpKind::Read, t.0, t.1, out)
        };
        // Versions go "backwards" across keys (x: 5 then y: 1), which is fine per key.
        let mut h = hist(vec![
            w("x", "1", (0, 10), 5),
            w("y", "2", (20, 30), 1),
            w("y", "3", (40, 50), 2),
            r("x", (60, 70), "1", 5),
        ]);
        let s = assert_ok(&h);
        assert_eq!(s.keys, 2);
        h.push(r("y", (60, 70), "2", 1));
        let v = assert_violation(&h);
        assert_eq!(v.key, b"y");
        assert!(v.report.contains("key \"y\""), "{v}");
    }

    #[test]
    fn malformed_ops_are_reported() {
        let h = hist(vec![Op::completed(
            0,
            K,
            OpKind::Read,
            0,
            10,
            Outcome::Written(1),
        )]);
        assert_eq!(check(&h).unwrap_err().kind, ViolationKind::Malformed);
        let h = hist(vec![Op::completed(
            0,
            K,
            OpKind::write("a"),
            10,
            5,
            Outcome::Written(1),
        )]);
        assert_eq!(check(&h).unwrap_err().kind, ViolationKind::Malformed);
        let h = hist(vec![Op::new(
            0,
            K,
            OpKind::write("a"),
            10,
            None,
            Outcome::Written(1),
        )]);
        assert_eq!(check(&h).unwrap_err().kind, ViolationKind::Malformed);
        let h = hist(vec![Op::completed(
            0,
            K,
            OpKind::write("a"),
            0,
            10,
            Outcome::PreconditionFailed,
        )]);
        assert_eq!(check(&h).unwrap_err().kind, ViolationKind::Malformed);
    }

    #[test]
    fn search_gives_up_at_its_limit() {
        // Concurrent deletes of unreported version can go in any order (each order a distinct
        // state), and a read of a value never written makes every order fail: exhaustive search.
        let history = |n| {
            let mut h = History::new();
            for i in 0..n {
                let out = Outcome::Deleted {
                    found: None,
                    version: None,
                };
                h.push(Op::completed(i, K, OpKind::delete(), 0, 100, out));
            }
            h.push(read(99, (50, 60), Some(("never", 1_000_000))));
            h
        };
        let v = check_with_limit(&history(20), 50).unwrap_err();
        assert!(matches!(v.kind, ViolationKind::GaveUp { steps: 50 }), "{v}");
        assert!(v.report.contains("GAVE UP"), "{v}");
        // Small enough to search exhaustively.
        let v = check(&history(6)).unwrap_err();
        assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
        // Unknown writes that cannot explain the read are not even tried.
        let mut h = History::new();
        for i in 0..40 {
            h.push(Op::unknown(i, K, OpKind::write(format!("u{i}")), 0));
        }
        h.push(read(99, (100, 110), Some(("u7", 3))));
        h.push(read(99, (120, 130), Some(("never", 4))));
        let v = assert_violation(&h);
        assert!(v.report.contains("#7(unknown, took effect)"), "{v}");
    }

    #[test]
    fn report_is_readable() {
        let h = hist(vec![
            write(0, "a", (1_000, 2_000), 1),
            write(1, "b", (3_000, 4_000), 2),
            read(2, (5_000, 6_000), Some(("a", 1))),
        ]);
        let v = assert_violation(&h);
        let text = format!("{v:?}");
        assert!(text.contains("NOT LINEARIZABLE"), "{text}");
        assert!(
            text.contains("longest linearizable prefix: 2 of 3"),
            "{text}"
        );
        assert!(
            text.contains("#1    c1   [       2.000us ..        3.000us] write \"b\" -> ok v2"),
            "{text}"
        );
        assert!(text.contains("state after it: \"b\" v2"), "{text}");
    }

    // ----- randomized -----

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, pct: u64) -> bool {
            self.below(100) < pct
        }
    }

    /// A history produced by a true register: ops linearize at increasing instants `t`, and each
    /// op's interval is jittered around its instant, so intervals overlap heavily.
    fn random_history(rng: &mut XorShift, n: u64, nkeys: u64, unknown_pct: u64) -> History {
        let gen = Gen {
            n,
            nkeys,
            unknown_pct,
            ..Gen::default()
        };
        random_history_and_truth(rng, &gen).0
    }

    /// Parameters of generated histories.
    struct Gen {
        n: u64,
        nkeys: u64,
        /// Percentage of ops with unknown outcome (half of which take effect).
        unknown_pct: u64,
        /// Ops linearize about 10 ns apart; invoke and response are up to `jitter` ns away.
        jitter: u64,
        /// Every write writes a distinct value (else values come from 6 choices).
        unique_values: bool,
    }

    impl Default for Gen {
        fn default() -> Gen {
            Gen {
                n: 100,
                nkeys: 1,
                unknown_pct: 0,
                jitter: 60,
                unique_values: false,
            }
        }
    }

    /// Also returns the true linearization as a sequential history (op `i` at `[2i, 2i+1]`).
    fn random_history_and_truth(rng: &mut XorShift, gen: &Gen) -> (History, History) {
        let Gen {
            n,
            nkeys,
            unknown_pct,
            jitter,
            unique_values,
        } = *gen;
        let mut truth = History::new();
        let mut regs: Vec<Option<(Vec<u8>, u64)>> = vec![None; nkeys as usize];
        let mut seq = rng.below(5);
        let mut t = 1_000_000u64;
        let mut h = History::new();
        for _ in 0..n {
            t += 1 + rng.below(20);
            let k = rng.below(nkeys) as usize;
            let key = format!("k{k}");
            let client = rng.below(8) as usize;
            let invoke = t.saturating_sub(rng.below(jitter));
            let response = t + rng.below(jitter);
            let unknown = rng.chance(unknown_pct);
            let takes_effect = !unknown || rng.chance(50);
            let value = if unique_values {
                format!("v{}", truth.len()).into_bytes()
            } else {
                format!("v{}", rng.below(6)).into_bytes()
            };
            let reg = &mut regs[k];
            let cur = reg.as_ref().map(|r| r.1);
            let expect = match cur {
                Some(v) if rng.chance(60) => v,
                Some(v) => v.saturating_sub(rng.below(3)) + rng.below(2),
                None => rng.below(seq + 2),
            };
            let kind = match rng.below(8) {
                0..=2 => OpKind::Read,
                3 => OpKind::write(&value),
                4 => OpKind::cas(expect, &value),
                5 => OpKind::put_if_absent(&value),
                6 => OpKind::delete(),
                _ => OpKind::delete_if(expect),
            };
            let holds = match &kind {
                OpKind::Cas { .. }
                | OpKind::Delete {
                    if_version: Some(_),
                } => cur == Some(expect),
                OpKind::PutIfAbsent { .. } => cur.is_none(),
                _ => true,
            };
            let outcome = match &kind {
                OpKind::Read => Outcome::Read(reg.clone()),
                _ if !holds => Outcome::PreconditionFailed,
                OpKind::Delete { .. } => {
                    seq += 1 + rng.below(3);
                    let found = reg.is_some();
                    if takes_effect {
                        *reg = None;
                    }
                    Outcome::Deleted {
                        found: rng.chance(80).then_some(found),
                        version: rng.chance(80).then_some(seq),
                    }
                }
                _ => {
                    seq += 1 + rng.below(3);
                    if takes_effect {
                        *reg = Some((value.clone(), seq));
                    }
                    Outcome::Written(seq)
                }
            };
            let (ti, tr) = (2 * truth.len() as u64, 2 * truth.len() as u64 + 1);
            let op = if unknown {
                truth.push(Op::unknown(client, &key, kind.clone(), ti));
                Op::unknown(client, &key, kind, invoke)
            } else {
                truth.push(Op::completed(
                    client,
                    &key,
                    kind.clone(),
                    ti,
                    tr,
                    outcome.clone(),
                ));
                Op::completed(client, &key, kind, invoke, response, outcome)
            };
            h.push(op);
            if rng.chance(3) {
                // Rejected noise: ignored by the checker.
                let kind = OpKind::write(b"rejected-noise");
                h.push(Op::completed(
                    client,
                    &key,
                    kind,
                    invoke,
                    response,
                    Outcome::Rejected,
                ));
            }
        }
        // Shuffle the recording order: the checker must not depend on it.
        for i in (1..h.ops.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            h.ops.swap(i, j);
        }
        (h, truth)
    }

    #[test]
    fn random_histories_from_a_real_register_pass() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut total_steps = 0;
        for iter in 0..200 {
            let n = 10 + rng.below(60);
            let nkeys = 1 + rng.below(3);
            let unknown_pct = [0, 5, 15][iter % 3];
            let h = random_history(&mut rng, n, nkeys, unknown_pct);
            match check(&h) {
                Ok(s) => total_steps += s.steps,
                Err(v) => panic!("iteration {iter}: a true register's history was rejected:\n{v}"),
            }
        }
        assert!(total_steps > 0);
    }

    #[test]
    fn random_histories_with_a_forged_read_fail() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        let mut checked = 0;
        for iter in 0..200 {
            let (n, nkeys) = (10 + rng.below(40), 1 + rng.below(2));
            let mut h = random_history(&mut rng, n, nkeys, 5);
            let reads: Vec<usize> = (0..h.ops.len())
                .filter(|&i| matches!(h.ops[i].outcome, Outcome::Read(_)))
                .collect();
            if reads.is_empty() {
                continue;
            }
            let i = reads[rng.below(reads.len() as u64) as usize];
            h.ops[i].outcome = Outcome::Read(Some((b"never-written".to_vec(), 1 + rng.below(50))));
            match check(&h) {
                Err(v) if v.kind == ViolationKind::NotLinearizable => checked += 1,
                other => panic!("iteration {iter}: forged read not caught: {other:?}"),
            }
        }
        assert!(checked > 100);
    }

    /// Plain Wing–Gong search without memo or any pruning: the reference for small histories.
    fn brute_force(p: &Prepared) -> bool {
        fn go(p: &Prepared, done_def: &mut [bool], done_unk: &mut [bool], s: State) -> bool {
            let Some(min_resp) = (0..p.def.len())
                .filter(|&i| !done_def[i])
                .map(|i| p.def[i].response)
                .min()
            else {
                return true;
            };
            for i in 0..p.def.len() {
                if !done_def[i] && p.def[i].invoke <= min_resp {
                    if let Some(ns) = apply(&p.def[i].eff, s) {
                        done_def[i] = true;
                        if go(p, done_def, done_unk, ns) {
                            return true;
                        }
                        done_def[i] = false;
                    }
                }
            }
            for k in 0..p.unk.len() {
                if !done_unk[k] && p.unk[k].invoke <= min_resp {
                    if let Some(ns) = apply(&p.unk[k].eff, s) {
                        done_unk[k] = true;
                        if go(p, done_def, done_unk, ns) {
                            return true;
                        }
                        done_unk[k] = false;
                    }
                }
            }
            false
        }
        go(
            p,
            &mut vec![false; p.def.len()],
            &mut vec![false; p.unk.len()],
            p.init,
        )
    }

    /// Randomly damages one op of `h` (value, version, outcome or timing).
    fn mutate(rng: &mut XorShift, h: &mut History) {
        let i = rng.below(h.ops.len() as u64) as usize;
        let op = &mut h.ops[i];
        match rng.below(6) {
            0 => match &mut op.outcome {
                Outcome::Read(Some((_, v))) | Outcome::Written(v) => {
                    *v = (*v + rng.below(5)).saturating_sub(2)
                }
                _ => op.outcome = Outcome::Unknown,
            },
            1 => match &mut op.outcome {
                Outcome::Read(r) => {
                    *r = r
                        .take()
                        .map(|(_, v)| (format!("v{}", rng.below(6)).into_bytes(), v))
                }
                _ => op.outcome = Outcome::PreconditionFailed,
            },
            2 => {
                op.outcome = match &op.kind {
                    OpKind::Read => Outcome::Read(None),
                    OpKind::Delete { .. } => Outcome::Deleted {
                        found: Some(rng.chance(50)),
                        version: None,
                    },
                    _ => Outcome::Written(1 + rng.below(20)),
                }
            }
            3 => {
                if let Some(r) = op.response.as_mut() {
                    *r += 100;
                    op.invoke += 100;
                }
            }
            4 => {
                if op.outcome != Outcome::Unknown {
                    op.outcome = Outcome::Unknown;
                    op.response = None;
                }
            }
            _ => {
                if op.invoke >= 100 {
                    op.invoke -= 100;
                    if let Some(r) = op.response.as_mut() {
                        *r -= 100;
                    }
                }
            }
        }
    }

    /// Unstructured small histories: random ops, values, versions and times (mostly not
    /// linearizable; exercises odd corners such as unknown versions).
    fn garbage_history(rng: &mut XorShift, n: u64) -> History {
        let mut h = History::new();
        for i in 0..n {
            let value = format!("v{}", rng.below(3));
            let ver = rng.below(8);
            let kind = match rng.below(6) {
                0 | 1 => OpKind::Read,
                2 => OpKind::write(&value),
                3 => OpKind::cas(ver, &value),
                4 => OpKind::put_if_absent(&value),
                _ => OpKind::Delete {
                    if_version: rng.chance(50).then_some(ver),
                },
            };
            let conditional = matches!(
                kind,
                OpKind::Cas { .. }
                    | OpKind::PutIfAbsent { .. }
                    | OpKind::Delete {
                        if_version: Some(_)
                    }
            );
            let outcome = if rng.chance(30) && kind != OpKind::Read {
                Outcome::Unknown
            } else if conditional && rng.chance(30) {
                Outcome::PreconditionFailed
            } else {
                match &kind {
                    OpKind::Read if rng.chance(25) => Outcome::Read(None),
                    OpKind::Read => Outcome::Read(Some((value.into_bytes(), 1 + rng.below(8)))),
                    OpKind::Delete { .. } => Outcome::Deleted {
                        found: rng.chance(60).then(|| rng.chance(50)),
                        version: rng.chance(60).then(|| 1 + rng.below(8)),
                    },
                    _ => Outcome::Written(1 + rng.below(8)),
                }
            };
            let invoke = rng.below(40);
            let response = (outcome != Outcome::Unknown).then(|| invoke + rng.below(25));
            h.push(Op::new(i as usize, "k0", kind, invoke, response, outcome));
        }
        h
    }

    #[test]
    fn search_agrees_with_brute_force() {
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        let (mut pass, mut fail) = (0, 0);
        for iter in 0..3_000 {
            let n = 2 + rng.below(7);
            let unknown_pct = [0, 20, 40][iter % 3];
            let mut h = if iter % 2 == 0 {
                random_history(&mut rng, n, 1, unknown_pct)
            } else {
                garbage_history(&mut rng, n)
            };
            if h.is_empty() {
                continue;
            }
            for _ in 0..rng.below(3) {
                mutate(&mut rng, &mut h);
            }
            let mut ops: Vec<&Op> = h.ops.iter().collect();
            ops.sort_by_key(|o| o.invoke);
            let Ok(p) = prepare(b"k0", ops, None) else {
                continue; // malformed after mutation
            };
            let expected = brute_force(&p);
            match (check(&h), expected) {
                (Ok(_), true) => pass += 1,
                (Err(v), false) if v.kind == ViolationKind::NotLinearizable => fail += 1,
                (got, _) => panic!(
                    "iteration {iter}: brute force says linearizable={expected}, check says {got:?}\n{:#?}",
                    h.ops
                ),
            }
        }
        assert!(pass > 300 && fail > 150, "pass {pass} fail {fail}");
    }

    #[test]
    fn long_history_checks_quickly() {
        let mut rng = XorShift(42);
        for unknown_pct in [0, 2, 10] {
            let gen = Gen {
                n: 3_000,
                unknown_pct,
                ..Gen::default()
            };
            let (h, truth) = random_history_and_truth(&mut rng, &gen);
            assert_ok(&truth);
            let s = assert_ok(&h);
            assert!(s.steps < 100_000, "{s}");
        }
    }

    #[test]
    fn recorder_collects_from_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Recorder>();
        assert_send_sync::<Pending>();

        // Two mutex-protected registers sharing one version counter (like a store's global
        // sequence); every op happens under the lock, strictly between invoke and response.
        type Regs = (Vec<Option<(Vec<u8>, u64)>>, u64);
        let regs: Arc<Mutex<Regs>> = Arc::new(Mutex::new((vec![None, None], 0)));
        let rec = Recorder::new();
        let threads: Vec<_> = (0..4)
            .map(|client| {
                let (rec, regs) = (rec.clone(), regs.clone());
                std::thread::spawn(move || {
                    let mut rng = XorShift(client as u64 * 7 + 1);
                    for i in 0..200 {
                        let k = rng.below(2) as usize;
                        let key = format!("k{k}");
                        if rng.chance(50) {
                            let p = rec.invoke(client, &key, OpKind::Read);
                            let r = regs.lock().unwrap().0[k].clone();
                            p.read(r);
                        } else {
                            let v = format!("c{client}-{i}");
                            let p = rec.invoke(client, &key, OpKind::write(&v));
                            let ver = {
                                let mut g = regs.lock().unwrap();
                                g.1 += 1;
                                let ver = g.1;
                                g.0[k] = Some((v.into_bytes(), ver));
                                ver
                            };
                            if rng.chance(5) {
                                drop(p); // e.g. a cancelled task: recorded as unknown
                            } else {
                                p.written(ver);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(rec.len(), 800);
        assert!(rec.history().ops().iter().any(|o| o.is_unknown()));
        let s = rec.check().unwrap();
        assert_eq!((s.keys, s.ops), (2, 800));

        // A forged read makes it fail, and the report names the key.
        let mut h = rec.history();
        let i = h.ops.iter().position(|o| o.kind == OpKind::Read).unwrap();
        h.ops[i].outcome = Outcome::Read(Some((b"forged".to_vec(), 1)));
        let v = check(&h).unwrap_err();
        assert_eq!(v.key, h.ops[i].key);
    }

    #[test]
    fn clock_converts_instants() {
        let c = Clock::new();
        let a = c.now();
        let later = Instant::now();
        assert!(c.at(later) >= a);
        assert!(c.now() >= c.at(later));
    }
}
