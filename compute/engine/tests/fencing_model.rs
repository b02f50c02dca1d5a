//! Exhaustive explicit-state model check of the WAL fencing protocol of `docs/write-path.md`
//! (section "Model check" there says what is modelled, what is abstracted away, and what the
//! checker found).
//!
//! The model is a transition system over one partition:
//! - an object store with WAL segment names -> (writer, writes, nonce) and manifest versions ->
//!   (writer epoch, `wal_replay_from`, `last_flushed_seq`, writes in SSTs). Create-if-absent is
//!   the only write, plus WAL GC's delete. A create may *time out*: the writer sees
//!   `Unavailable` and the request stays in the network as a "ghost" that may land at any later
//!   step (or never). Timed-out creates are retried with the same name and bytes, and an
//!   `AlreadyExists` is resolved by reading the object back and comparing (objstore's
//!   `Retrying`).
//! - W1, the old owner, running: accepts client writes into groups, puts one segment at a time
//!   (`compute/engine/src/commit.rs`), acks a group only when its create succeeded, stops on a foreign
//!   `AlreadyExists`; freezes and flushes (`compute/engine/src/flush.rs`: wait durable, SST, commit
//!   manifest `v+1` with rebase on conflict, foreign epoch => fenced); runs WAL GC
//!   (`compute/engine/src/wal_gc.rs`).
//! - W2 (and optionally W3) opening (`Db::open` in `compute/engine/src/db.rs`): read manifest, list,
//!   create marker `max(max_listed, replay_from-1)+1` (re-list on conflict), replay
//!   `[replay_from, marker)` with the same missing-segment checks as the code, claim the
//!   manifest (rebase on conflict), then run like W1.
//!
//! Every interleaving is explored breadth-first with a visited set, so each counterexample
//! printed is a shortest one. Invariants, checked in every reachable state:
//! 1. every write acked before a writer finished opening is in what that writer recovered (the
//!    segments it replayed, or the SSTs of the manifest it claimed);
//! 2. once a writer has finished opening, no writer that opened before it acks a write the
//!    newer one did not recover (promise 4 of the doc; `strict_late_acks` checks the literal
//!    "acks nothing", which fails harmlessly, see the test);
//! 3. at most one writer is told its manifest commit succeeded, per version;
//! 4. every acked write is recoverable from the store right now: in an SST of the latest
//!    manifest, or in a present segment at or above its replay point with a seq above its
//!    `last_flushed_seq`.
//!
//! The configurations also switch on candidate fixes (`gc_keeps_markers`, `post_fence_check`,
//! `claim_fix`, `seq_fix`) and deliberately broken variants (`Bug`), and each test asserts
//! which invariants fail or hold. Run with `--no-capture` to see state counts and shortest
//! counterexample traces.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Instant;

/// Segment names 1..NSEG (0 unused).
const NSEG: usize = 12;
/// Manifest versions 1..NMAN (0 unused).
const NMAN: usize = 10;
/// Writers: W1 (index 0, the old owner), W2, W3.
const NW: usize = 3;
/// Client writes, numbered globally (bit i of a `u8` mask).
const MAXW: usize = 8;
const NLANDED: usize = 8;
const NGHOST: usize = 2;

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// What `Db::open` does: load the manifest, then list the WAL (fence floor from the
    /// manifest's replay point).
    ManifestFirst,
    /// List the WAL, create the marker at max+1, only then read the manifest.
    ListFirst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gc {
    Off,
    /// Deletes below the replay point of the writer's latest manifest at once.
    NoGrace,
    /// Deletes below a replay point only once it is older than any open in progress
    /// (the grace period is longer than an open takes).
    Grace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Third {
    None,
    /// W3 opens concurrently with W2.
    Concurrent,
    /// W3 starts opening once W2 finished (or failed) opening.
    AfterSecond,
}

/// Deliberately broken variants, to show the checker can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// The opener writes its marker with an overwriting put instead of create-if-absent.
    MarkerOverwrite,
    /// The writer acks a group as soon as its segment put starts.
    AckBeforePut,
    /// A retried create that finds the name taken assumes its earlier attempt won.
    RetryNoCompare,
    /// Manifest versions are written with an overwriting put.
    ManifestOverwrite,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    name: &'static str,
    /// Client writes each writer may accept (W1, W2, W3).
    writes: [u8; NW],
    /// Flushes each writer may do.
    flushes: u8,
    third: Third,
    order: Order,
    /// After winning the marker, (re-)read the latest manifest; if its replay point is above
    /// the marker, the marker name may be one GC deleted: re-list with that floor.
    post_fence_check: bool,
    gc: Gc,
    /// Creates that may time out, in all.
    timeouts: u8,
    bug: Bug,
    /// Invariant 2 in its literal form: no ack at all by a replaced writer (even of a write
    /// the new owner recovered).
    strict_late_acks: bool,
    /// Fix: WAL GC never deletes a fencing marker (an empty segment).
    gc_keeps_markers: bool,
    /// Fix: a claimed manifest records the claimer's marker name, and `claim_manifest` gives
    /// up instead of building on a manifest claimed with a higher marker (a newer opener won).
    claim_fix: bool,
    /// Fix: after claiming, `next_seq` is also above the claimed manifest's
    /// `last_flushed_seq` (the claim may have rebased onto a newer manifest than recovery used).
    seq_fix: bool,
    /// A timed-out create may land even after its retry resolved (e.g. after GC deleted the
    /// name).
    late_ghosts: bool,
    /// Stop at the first violating state (runs that only need to exhibit a counterexample).
    stop_at_first: bool,
    /// Check invariant 4 (off for the broken variants, so that their counterexamples show
    /// the fencing invariants failing rather than the write simply missing from the store).
    durability: bool,
}

const BASE: Config = Config {
    name: "",
    writes: [3, 0, 0],
    flushes: 2,
    third: Third::None,
    order: Order::ManifestFirst,
    post_fence_check: false,
    gc: Gc::Grace,
    timeouts: 1,
    bug: Bug::None,
    strict_late_acks: false,
    gc_keeps_markers: false,
    claim_fix: false,
    seq_fix: false,
    late_ghosts: false,
    stop_at_first: false,
    durability: true,
};

// ---------------------------------------------------------------------------------------------
// State

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Seg {
    writer: u8,
    /// Writes in the segment (empty for a fencing marker).
    writes: u8,
    /// Distinguishes a writer's markers (the real header has a creation time).
    nonce: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Man {
    epoch: u8,
    /// `claim_fix` only: the marker name of the writer that claimed (kept by its flushes).
    fence: u8,
    replay_from: u8,
    last_flushed_seq: u8,
    /// Writes in the SSTs this manifest lists.
    ssts: u8,
}

/// A timed-out create still in the network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
struct Ghost {
    name: u8,
    writer: u8,
    writes: u8,
    nonce: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Fail {
    /// The listing checks in `Db::open` ("WAL segment ... is missing").
    MissingSegment,
    /// A listed segment was gone when fetched.
    NotFound,
    /// `claim_fix`: a newer opener claimed the manifest first.
    LostClaimRace,
    /// The model ran out of names/versions (bounds too small; must not happen).
    Bound,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Phase {
    Idle,
    List,
    Marker { fence: u8, retried: bool },
    PostRead { fence: u8 },
    Replay { fence: u8 },
    Claim { base: u8 },
    ClaimReload,
    Running,
    Failed(Fail),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Flush {
    Idle,
    Commit { base: u8, rp: u8 },
    Reload { rp: u8 },
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct InFlight {
    name: u8,
    writes: u8,
    retried: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Writer {
    phase: Phase,
    /// `STATE_FENCED`: no new writes, no flush start, no GC.
    fenced: bool,
    /// The commit loop met a foreign segment and stopped putting.
    wal_dead: bool,
    // Opening.
    /// Latest manifest version when this open began; 0 when not opening.
    start_v: u8,
    /// Replay point of a manifest read before listing (fence floor); 0 if none.
    floor: u8,
    /// The manifest version recovery replays from.
    mv: u8,
    listed: u16,
    todo: u16,
    max_seq: u8,
    nonce: u8,
    // Running.
    next_seg: u8,
    next_seq: u8,
    durable: u8,
    /// The manifest version this process last committed (its base for the next commit).
    known_v: u8,
    active: u8,
    imm: u8,
    flush: Flush,
    inflight: Option<InFlight>,
    group: u8,
    landed: [(u8, u8); NLANDED],
    n_landed: u8,
    last_id: u8,
    writes_left: u8,
    flushes_left: u8,
    // History variables for the invariants.
    opened_at: u8,
    recovered: u8,
    acked_at_open: u8,
}

impl Writer {
    fn new(cfg: &Config, i: usize) -> Writer {
        Writer {
            writes_left: cfg.writes[i],
            flushes_left: cfg.flushes,
            ..Writer::BLANK
        }
    }

    const BLANK: Writer = Writer {
        phase: Phase::Idle,
        fenced: false,
        wal_dead: false,
        start_v: 0,
        floor: 0,
        mv: 0,
        listed: 0,
        todo: 0,
        max_seq: 0,
        nonce: 0,
        next_seg: 0,
        next_seq: 0,
        durable: 0,
        known_v: 0,
        active: 0,
        imm: 0,
        flush: Flush::Idle,
        inflight: None,
        group: 0,
        landed: [(0, 0); NLANDED],
        n_landed: 0,
        last_id: 0,
        writes_left: 0,
        flushes_left: 0,
        opened_at: 0,
        recovered: 0,
        acked_at_open: 0,
    };

    /// Forgets what can no longer influence the future (canonical states).
    fn canon(&mut self) {
        let keep = Writer {
            opened_at: self.opened_at,
            recovered: self.recovered,
            acked_at_open: self.acked_at_open,
            ..Writer::BLANK
        };
        match self.phase {
            Phase::Failed(f) => {
                *self = Writer {
                    phase: Phase::Failed(f),
                    ..keep
                }
            }
            Phase::Running => {
                self.floor = 0;
                self.mv = 0;
                self.listed = 0;
                self.todo = 0;
                self.max_seq = 0;
                self.nonce = 0;
                let dead = self.fenced
                    && self.flush == Flush::Idle
                    && (self.wal_dead || self.inflight.is_none());
                if dead {
                    *self = Writer {
                        phase: Phase::Running,
                        fenced: true,
                        wal_dead: true,
                        ..keep
                    };
                }
            }
            _ => {}
        }
    }

    fn opening(&self) -> bool {
        self.start_v != 0
    }

    fn landed_push(&mut self, id: u8, max_seq: u8) -> bool {
        if self.n_landed as usize == NLANDED {
            return false;
        }
        self.landed[self.n_landed as usize] = (id, max_seq);
        self.n_landed += 1;
        self.last_id = self.last_id.max(id);
        true
    }

    /// `Landed::replay_point` in db.rs.
    fn replay_point(&mut self, flushed_seq: u8) -> u8 {
        while self.n_landed > 0 && self.landed[0].1 <= flushed_seq {
            self.landed.copy_within(1.., 0);
            self.n_landed -= 1;
            self.landed[self.n_landed as usize] = (0, 0);
        }
        if self.n_landed > 0 {
            self.landed[0].0
        } else {
            self.last_id + 1
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct State {
    wal: [Option<Seg>; NSEG],
    man: [Option<Man>; NMAN],
    ghosts: [Option<Ghost>; NGHOST],
    w: [Writer; NW],
    seq_of: [u8; MAXW],
    nwrites: u8,
    acked: u8,
    /// Writes acked by a writer after a newer writer finished opening (invariant 2).
    late_acks: u8,
    /// Writers told "committed" per manifest version (invariant 3).
    man_ok: [u8; NMAN],
    timeouts_left: u8,
    opens: u8,
}

fn bits(mut m: u32) -> impl Iterator<Item = u8> {
    std::iter::from_fn(move || {
        (m != 0).then(|| {
            let i = m.trailing_zeros() as u8;
            m &= m - 1;
            i
        })
    })
}

fn lowest(m: u16) -> Option<u8> {
    (m != 0).then(|| m.trailing_zeros() as u8)
}

fn highest(m: u16) -> Option<u8> {
    (m != 0).then(|| 15 - m.leading_zeros() as u8)
}

impl State {
    fn initial(cfg: &Config) -> State {
        let mut w = [
            Writer::new(cfg, 0),
            Writer::new(cfg, 1),
            Writer::new(cfg, 2),
        ];
        // W1 opened on a fresh store: manifest v1 stamped with its epoch, its marker is
        // segment 1.
        let w1 = &mut w[0];
        w1.phase = Phase::Running;
        w1.next_seg = 2;
        w1.next_seq = 1;
        w1.known_v = 1;
        w1.opened_at = 1;
        w1.landed_push(1, 0);
        let mut wal = [None; NSEG];
        wal[1] = Some(Seg {
            writer: 0,
            writes: 0,
            nonce: 1,
        });
        let mut man = [None; NMAN];
        man[1] = Some(Man {
            epoch: 0,
            fence: if cfg.claim_fix { 1 } else { 0 },
            replay_from: 1,
            last_flushed_seq: 0,
            ssts: 0,
        });
        let mut man_ok = [0; NMAN];
        man_ok[1] = 1;
        State {
            wal,
            man,
            ghosts: [None; NGHOST],
            w,
            seq_of: [0; MAXW],
            nwrites: 0,
            acked: 0,
            late_acks: 0,
            man_ok,
            timeouts_left: cfg.timeouts,
            opens: 1,
        }
    }

    fn latest(&self) -> u8 {
        (1..NMAN)
            .rev()
            .find(|&v| self.man[v].is_some())
            .unwrap_or(0) as u8
    }

    fn manifest(&self, v: u8) -> Man {
        self.man[v as usize].expect("manifest version read by a writer exists")
    }

    fn present(&self) -> u16 {
        (1..NSEG)
            .filter(|&i| self.wal[i].is_some())
            .fold(0, |m, i| m | 1 << i)
    }

    fn max_seq_of(&self, writes: u8) -> u8 {
        bits(writes as u32)
            .map(|i| self.seq_of[i as usize])
            .max()
            .unwrap_or(0)
    }

    fn ack(&mut self, cfg: &Config, i: usize, writes: u8) {
        self.acked |= writes;
        let me = self.w[i].opened_at;
        for k in 0..NW {
            if k != i && self.w[k].opened_at > me {
                // The doc's promise: a replaced writer cannot ack a write the new one misses.
                // (`strict_late_acks`: no ack at all once replaced.)
                let missed = if cfg.strict_late_acks {
                    writes
                } else {
                    writes & !self.w[k].recovered
                };
                self.late_acks |= missed;
            }
        }
    }

    fn drop_ghost(&mut self, g: Ghost) {
        for slot in self.ghosts.iter_mut() {
            if *slot == Some(g) {
                *slot = None;
            }
        }
        self.ghosts.sort();
    }

    /// A create that times out: the request may still land later. False if the budget is
    /// spent.
    fn time_out(&mut self, g: Ghost) -> bool {
        if self.timeouts_left == 0 {
            return false;
        }
        if !self.ghosts.contains(&Some(g)) {
            let Some(slot) = self.ghosts.iter_mut().find(|s| s.is_none()) else {
                return false;
            };
            *slot = Some(g);
            self.ghosts.sort();
        }
        self.timeouts_left -= 1;
        true
    }

    /// A WAL create through `Retrying`: create-if-absent; on `AlreadyExists` read back and
    /// compare. True if the writer is told it succeeded.
    fn create_wal(&mut self, cfg: &Config, g: Ghost, retried: bool, overwrite: bool) -> bool {
        let seg = Seg {
            writer: g.writer,
            writes: g.writes,
            nonce: g.nonce,
        };
        let ok = match self.wal[g.name as usize] {
            None => {
                self.wal[g.name as usize] = Some(seg);
                true
            }
            Some(_) if overwrite => {
                self.wal[g.name as usize] = Some(seg);
                true
            }
            Some(existing) => existing == seg || (retried && cfg.bug == Bug::RetryNoCompare),
        };
        // Unless `late_ghosts`, the timed-out attempt is taken to land, if ever, before the
        // retry resolves.
        if !cfg.late_ghosts {
            self.drop_ghost(g);
        }
        ok
    }
}

// ---------------------------------------------------------------------------------------------
// Transitions

#[derive(Clone, Copy, Debug)]
struct Act {
    w: u8,
    what: &'static str,
    arg: u8,
}

struct Succ<'a> {
    cfg: &'a Config,
    out: Vec<(State, Act)>,
}

impl Succ<'_> {
    fn push(&mut self, s: State, w: usize, what: &'static str, arg: u8) {
        self.out.push((
            s,
            Act {
                w: w as u8,
                what,
                arg,
            },
        ));
    }
}

fn may_start(cfg: &Config, s: &State, i: usize) -> bool {
    match i {
        1 => true,
        2 => match cfg.third {
            Third::None => false,
            Third::Concurrent => true,
            Third::AfterSecond => matches!(s.w[1].phase, Phase::Running | Phase::Failed(_)),
        },
        _ => false,
    }
}

fn fail(s: &mut State, i: usize, f: Fail) {
    s.w[i].phase = Phase::Failed(f);
    s.w[i].start_v = 0;
}

/// List the WAL and pick the fence name (the loop in `Db::open`).
fn list(s: &mut State, i: usize) {
    let present = s.present();
    let w = &mut s.w[i];
    w.listed = present;
    let max_listed = highest(present).unwrap_or(0);
    let fence = max_listed.max(w.floor.saturating_sub(1)) + 1;
    if fence as usize >= NSEG {
        return fail(s, i, Fail::Bound);
    }
    w.nonce += 1;
    w.phase = Phase::Marker {
        fence,
        retried: false,
    };
}

fn after_marker(cfg: &Config, s: &mut State, i: usize, fence: u8) {
    if cfg.order == Order::ListFirst || cfg.post_fence_check {
        s.w[i].phase = Phase::PostRead { fence };
    } else {
        begin_replay(s, i, fence);
    }
}

/// The listing checks of `Db::open`, then the fetches.
fn begin_replay(s: &mut State, i: usize, fence: u8) {
    let m = s.manifest(s.w[i].mv);
    let r = m.replay_from;
    let w = &mut s.w[i];
    let at_or_above: u16 = w.listed & !((1u16 << r) - 1);
    if let Some(first) = lowest(at_or_above) {
        if first != r && first < fence {
            return fail(s, i, Fail::MissingSegment);
        }
    }
    let ids = at_or_above & ((1u16 << fence) - 1);
    if let (Some(lo), Some(hi)) = (lowest(ids), highest(ids)) {
        if (hi - lo + 1) as u32 != ids.count_ones() {
            return fail(s, i, Fail::MissingSegment);
        }
    }
    w.todo = ids;
    w.max_seq = m.last_flushed_seq;
    w.active = 0;
    w.landed = [(0, 0); NLANDED];
    w.n_landed = 0;
    w.last_id = 0;
    w.phase = Phase::Replay { fence };
    if ids == 0 {
        finish_replay(s, i, fence);
    }
}

fn finish_replay(s: &mut State, i: usize, fence: u8) {
    let w = &mut s.w[i];
    if !w.landed_push(fence, 0) {
        return fail(s, i, Fail::Bound);
    }
    w.next_seg = fence + 1;
    w.phase = Phase::Claim { base: w.mv };
}

fn start_segment(cfg: &Config, s: &mut State, i: usize, writes: u8) {
    let w = &mut s.w[i];
    let name = w.next_seg;
    if name as usize >= NSEG {
        return fail(s, i, Fail::Bound);
    }
    w.next_seg += 1;
    w.inflight = Some(InFlight {
        name,
        writes,
        retried: false,
    });
    if cfg.bug == Bug::AckBeforePut {
        s.ack(cfg, i, writes);
    }
}

fn successors(cfg: &Config, s: &State) -> Vec<(State, Act)> {
    let mut out = Succ {
        cfg,
        out: Vec::new(),
    };
    for i in 0..NW {
        writer_steps(&mut out, s, i);
    }
    // A timed-out create lands late (or never: then this step is simply not taken).
    for g in s.ghosts.iter().flatten() {
        let mut n = *s;
        if n.wal[g.name as usize].is_none() {
            n.wal[g.name as usize] = Some(Seg {
                writer: g.writer,
                writes: g.writes,
                nonce: g.nonce,
            });
        }
        n.drop_ghost(*g);
        out.push(
            n,
            g.writer as usize,
            "timed-out create of segment lands late",
            g.name,
        );
    }
    for (n, _) in out.out.iter_mut() {
        for w in n.w.iter_mut() {
            w.canon();
        }
    }
    out.out
}

fn writer_steps(out: &mut Succ, s: &State, i: usize) {
    let cfg = out.cfg;
    let me = s.w[i];
    match me.phase {
        Phase::Idle => {
            if may_start(cfg, s, i) {
                let mut n = *s;
                let latest = n.latest();
                let floor = n.manifest(latest).replay_from;
                n.w[i].start_v = latest;
                match cfg.order {
                    Order::ManifestFirst => {
                        let w = &mut n.w[i];
                        w.mv = latest;
                        w.floor = floor;
                        w.phase = Phase::List;
                        out.push(n, i, "open: load latest manifest, version", latest);
                    }
                    Order::ListFirst => {
                        list(&mut n, i);
                        out.push(
                            n,
                            i,
                            "open: list WAL; highest name",
                            highest(s.present()).unwrap_or(0),
                        );
                    }
                }
            }
        }
        Phase::List => {
            let mut n = *s;
            list(&mut n, i);
            out.push(
                n,
                i,
                "open: list WAL; highest name",
                highest(s.present()).unwrap_or(0),
            );
        }
        Phase::Marker { fence, retried } => {
            let g = Ghost {
                name: fence,
                writer: i as u8,
                writes: 0,
                nonce: me.nonce,
            };
            let mut n = *s;
            if n.create_wal(cfg, g, retried, cfg.bug == Bug::MarkerOverwrite) {
                after_marker(cfg, &mut n, i, fence);
                out.push(n, i, "open: create fence marker -> ok, name", fence);
            } else {
                n.w[i].phase = Phase::List;
                out.push(
                    n,
                    i,
                    "open: create fence marker -> AlreadyExists, name",
                    fence,
                );
            }
            let mut n = *s;
            if n.time_out(g) {
                n.w[i].phase = Phase::Marker {
                    fence,
                    retried: true,
                };
                out.push(n, i, "open: create fence marker times out, name", fence);
            }
        }
        Phase::PostRead { fence } => {
            let mut n = *s;
            let latest = n.latest();
            let r = n.manifest(latest).replay_from;
            n.w[i].mv = latest;
            if cfg.post_fence_check && r > fence {
                n.w[i].floor = r;
                n.w[i].phase = Phase::List;
                out.push(
                    n,
                    i,
                    "open: manifest replay point above marker, re-list; version",
                    latest,
                );
            } else {
                begin_replay(&mut n, i, fence);
                out.push(n, i, "open: load latest manifest, version", latest);
            }
        }
        Phase::Replay { fence } => {
            let mut n = *s;
            let id = lowest(me.todo).expect("replay has work");
            match n.wal[id as usize] {
                None => {
                    fail(&mut n, i, Fail::NotFound);
                    out.push(
                        n,
                        i,
                        "open: fetch segment -> NotFound (open fails), name",
                        id,
                    );
                }
                Some(seg) => {
                    let lfs = n.manifest(me.mv).last_flushed_seq;
                    let seg_max = n.max_seq_of(seg.writes);
                    let w = &mut n.w[i];
                    for b in bits(seg.writes as u32) {
                        if s.seq_of[b as usize] > lfs {
                            w.active |= 1 << b;
                        }
                    }
                    w.max_seq = w.max_seq.max(seg_max);
                    w.todo &= !(1 << id);
                    if !w.landed_push(id, seg_max) {
                        fail(&mut n, i, Fail::Bound);
                    } else if w.todo == 0 {
                        finish_replay(&mut n, i, fence);
                    }
                    out.push(n, i, "open: replay segment", id);
                }
            }
        }
        Phase::Claim { base } => {
            let mut n = *s;
            let v = base + 1;
            if v as usize >= NMAN {
                fail(&mut n, i, Fail::Bound);
                out.push(n, i, "out of manifest versions", v);
                return;
            }
            let fence = me.next_seg - 1;
            if cfg.claim_fix && n.manifest(base).fence > fence {
                fail(&mut n, i, Fail::LostClaimRace);
                out.push(
                    n,
                    i,
                    "open: manifest claimed with a higher marker: give up; version",
                    base,
                );
                return;
            }
            let next = Man {
                epoch: i as u8,
                fence: if cfg.claim_fix { fence } else { 0 },
                ..n.manifest(base)
            };
            if n.man[v as usize].is_none() || cfg.bug == Bug::ManifestOverwrite {
                n.man[v as usize] = Some(next);
                n.man_ok[v as usize] |= 1 << i;
                n.opens += 1;
                let (opens, acked) = (n.opens, n.acked);
                let w = &mut n.w[i];
                w.phase = Phase::Running;
                w.start_v = 0;
                w.opened_at = opens;
                w.known_v = v;
                w.recovered = w.active | next.ssts;
                w.acked_at_open = acked;
                if cfg.seq_fix {
                    w.max_seq = w.max_seq.max(next.last_flushed_seq);
                }
                w.next_seq = w.max_seq + 1;
                w.durable = w.max_seq;
                out.push(n, i, "open: claim manifest -> ok, version", v);
            } else {
                n.w[i].phase = Phase::ClaimReload;
                out.push(n, i, "open: claim manifest -> conflict, version", v);
            }
        }
        Phase::ClaimReload => {
            let mut n = *s;
            let latest = n.latest();
            n.w[i].phase = Phase::Claim { base: latest };
            out.push(
                n,
                i,
                "open: reload latest manifest after conflict, version",
                latest,
            );
        }
        Phase::Running => running_steps(out, s, i),
        Phase::Failed(_) => {}
    }
}

fn running_steps(out: &mut Succ, s: &State, i: usize) {
    let cfg = out.cfg;
    let me = s.w[i];
    // A client write enters the commit loop.
    if !me.fenced && !me.wal_dead && me.writes_left > 0 && (s.nwrites as usize) < MAXW {
        let mut n = *s;
        let id = n.nwrites;
        n.nwrites += 1;
        let bit = 1u8 << id;
        let w = &mut n.w[i];
        n.seq_of[id as usize] = w.next_seq;
        w.next_seq += 1;
        w.active |= bit;
        w.writes_left -= 1;
        if w.inflight.is_none() {
            start_segment(cfg, &mut n, i, bit);
        } else {
            w.group |= bit;
        }
        out.push(n, i, "accept client write", id);
    }
    // The in-flight segment's create.
    if let (Some(f), false) = (me.inflight, me.wal_dead) {
        let g = Ghost {
            name: f.name,
            writer: i as u8,
            writes: f.writes,
            nonce: 0,
        };
        let mut n = *s;
        if n.create_wal(cfg, g, f.retried, false) {
            if cfg.bug != Bug::AckBeforePut {
                n.ack(cfg, i, f.writes);
            }
            let seg_max = n.max_seq_of(f.writes);
            let w = &mut n.w[i];
            w.durable = w.durable.max(seg_max);
            w.inflight = None;
            if !w.landed_push(f.name, seg_max) {
                fail(&mut n, i, Fail::Bound);
            } else if w.group != 0 {
                let group = std::mem::take(&mut w.group);
                start_segment(cfg, &mut n, i, group);
            }
            out.push(n, i, "put segment -> ok, ack its writes; name", f.name);
        } else {
            let w = &mut n.w[i];
            w.fenced = true;
            w.wal_dead = true;
            w.inflight = None;
            w.group = 0;
            out.push(n, i, "put segment -> AlreadyExists: fenced; name", f.name);
        }
        let mut n = *s;
        if n.time_out(g) {
            n.w[i].inflight = Some(InFlight { retried: true, ..f });
            out.push(
                n,
                i,
                "put segment times out (will retry same bytes); name",
                f.name,
            );
        }
    }
    // Freeze the active memtable.
    if !me.fenced && me.active != 0 && me.imm == 0 && me.flushes_left > 0 {
        let mut n = *s;
        let w = &mut n.w[i];
        w.imm = std::mem::take(&mut w.active);
        out.push(n, i, "freeze memtable", 0);
    }
    // Flush: once the frozen memtable is durable, write the SST and compute the replay point.
    if !me.fenced && me.imm != 0 && me.flush == Flush::Idle && me.durable >= s.max_seq_of(me.imm) {
        let mut n = *s;
        let max = n.max_seq_of(me.imm);
        let w = &mut n.w[i];
        let rp = w.replay_point(max);
        w.flush = Flush::Commit {
            base: w.known_v,
            rp,
        };
        out.push(n, i, "flush: SST written; replay point", rp);
    }
    // Flush: commit the manifest (continues even once fenced, as commit_with_rebase does).
    match me.flush {
        Flush::Idle => {}
        Flush::Commit { base, rp } => {
            let mut n = *s;
            let b = n.manifest(base);
            let v = base + 1;
            if b.epoch != i as u8 {
                n.w[i].fenced = true;
                n.w[i].flush = Flush::Idle;
                out.push(
                    n,
                    i,
                    "flush: base manifest has a foreign epoch: fenced; version",
                    base,
                );
            } else if v as usize >= NMAN {
                fail(&mut n, i, Fail::Bound);
                out.push(n, i, "out of manifest versions", v);
            } else if n.man[v as usize].is_none() || cfg.bug == Bug::ManifestOverwrite {
                let max = n.max_seq_of(me.imm);
                n.man[v as usize] = Some(Man {
                    epoch: i as u8,
                    fence: b.fence,
                    replay_from: b.replay_from.max(rp),
                    last_flushed_seq: b.last_flushed_seq.max(max),
                    ssts: b.ssts | me.imm,
                });
                n.man_ok[v as usize] |= 1 << i;
                let w = &mut n.w[i];
                w.known_v = v;
                w.imm = 0;
                w.flushes_left -= 1;
                w.flush = Flush::Idle;
                out.push(n, i, "flush: commit manifest -> ok, version", v);
            } else {
                n.w[i].flush = Flush::Reload { rp };
                out.push(n, i, "flush: commit manifest -> conflict, version", v);
            }
        }
        Flush::Reload { rp } => {
            let mut n = *s;
            let latest = n.latest();
            n.w[i].flush = Flush::Commit { base: latest, rp };
            out.push(n, i, "flush: reload latest manifest, version", latest);
        }
    }
    // WAL GC.
    if !me.fenced && cfg.gc != Gc::Off {
        let mut bound = me.known_v;
        if cfg.gc == Gc::Grace {
            for k in 0..NW {
                if s.w[k].opening() {
                    bound = bound.min(s.w[k].start_v);
                }
            }
        }
        let r = s.manifest(bound).replay_from;
        let mut candidates = s.present();
        if cfg.gc_keeps_markers {
            for id in 1..NSEG {
                if matches!(s.wal[id], Some(seg) if seg.writes == 0) {
                    candidates &= !(1 << id);
                }
            }
        }
        if let Some(id) = lowest(candidates) {
            if id < r {
                let mut n = *s;
                n.wal[id as usize] = None;
                out.push(n, i, "WAL GC: delete segment", id);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants

/// Every invariant the state violates, as (number, description).
fn check(cfg: &Config, s: &State) -> Vec<(u8, String)> {
    let mut bad = Vec::new();
    for (k, w) in s.w.iter().enumerate().skip(1) {
        if w.opened_at > 0 && w.acked_at_open & !w.recovered != 0 {
            bad.push((
                1,
                format!(
                    "W{} finished opening without acked writes {:?} (it recovered {:?})",
                    k + 1,
                    bits((w.acked_at_open & !w.recovered) as u32).collect::<Vec<_>>(),
                    bits(w.recovered as u32).collect::<Vec<_>>()
                ),
            ));
        }
    }
    if s.late_acks != 0 {
        bad.push((
            2,
            format!(
                "writes {:?} acked by a writer after a newer writer finished opening",
                bits(s.late_acks as u32).collect::<Vec<_>>()
            ),
        ));
    }
    for v in 1..NMAN {
        if s.man_ok[v].count_ones() > 1 {
            bad.push((
                3,
                format!(
                    "writers {:?} were all told they committed manifest version {v}",
                    bits(s.man_ok[v] as u32).map(|w| w + 1).collect::<Vec<_>>()
                ),
            ));
        }
    }
    if cfg.durability {
        let m = s.manifest(s.latest());
        let mut recoverable = m.ssts;
        for id in (m.replay_from as usize)..NSEG {
            if let Some(seg) = s.wal[id] {
                for b in bits(seg.writes as u32) {
                    if s.seq_of[b as usize] > m.last_flushed_seq {
                        recoverable |= 1 << b;
                    }
                }
            }
        }
        if s.acked & !recoverable != 0 {
            bad.push((
                4,
                format!(
                    "acked writes {:?} are not recoverable from the store (latest manifest {m:?})",
                    bits((s.acked & !recoverable) as u32).collect::<Vec<_>>()
                ),
            ));
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------------
// Search

/// FxHash: derived `Hash` with a fast hasher keeps the debug-build search quick.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

struct Report {
    states: usize,
    transitions: usize,
    depth: usize,
    /// Shortest counterexample per violated invariant.
    violations: Vec<(u8, String, Vec<String>)>,
    /// States where an opener failed on a missing segment (an availability error).
    open_failures: usize,
    first_open_failure: Option<Vec<String>>,
    /// Terminal states in which no writer can take writes.
    ownerless_terminal: usize,
    bound_hits: usize,
}

fn describe(a: &Act) -> String {
    format!("W{}: {} {}", a.w + 1, a.what, a.arg)
}

fn summary(s: &State) -> String {
    let mut out = String::from("final store: WAL {");
    for (id, seg) in s.wal.iter().enumerate() {
        if let Some(seg) = seg {
            let _ = write!(out, " {id}:W{}", seg.writer + 1);
            if seg.writes != 0 {
                let _ = write!(out, "{:?}", bits(seg.writes as u32).collect::<Vec<_>>());
            } else {
                out.push_str("(marker)");
            }
        }
    }
    out.push_str(" } manifests {");
    for (v, m) in s.man.iter().enumerate() {
        if let Some(m) = m {
            let _ = write!(
                out,
                " v{v}:W{} replay_from={} flushed_seq={} ssts={:?}",
                m.epoch + 1,
                m.replay_from,
                m.last_flushed_seq,
                bits(m.ssts as u32).collect::<Vec<_>>()
            );
        }
    }
    let _ = write!(
        out,
        " }} acked={:?}",
        bits(s.acked as u32).collect::<Vec<_>>()
    );
    out
}

/// Replays the path to state `idx` and describes it.
fn trace(cfg: &Config, parents: &[(u32, u16)], idx: u32) -> Vec<String> {
    let mut path = Vec::new();
    let mut at = idx;
    while at != 0 {
        let (p, k) = parents[at as usize];
        path.push(k);
        at = p;
    }
    path.reverse();
    let mut s = State::initial(cfg);
    let mut lines = Vec::new();
    for k in path {
        let (n, a) = successors(cfg, &s).swap_remove(k as usize);
        lines.push(describe(&a));
        s = n;
    }
    lines.push(summary(&s));
    lines
}

fn explore(cfg: &Config) -> Report {
    let init = State::initial(cfg);
    let mut index: FxMap<State, u32> = FxMap::with_capacity_and_hasher(1 << 16, Default::default());
    let mut parents: Vec<(u32, u16)> = vec![(0, 0)];
    let mut depth_of: Vec<u16> = vec![0];
    index.insert(init, 0);
    let mut queue = VecDeque::from([(init, 0u32)]);
    let mut report = Report {
        states: 0,
        transitions: 0,
        depth: 0,
        violations: Vec::new(),
        open_failures: 0,
        first_open_failure: None,
        ownerless_terminal: 0,
        bound_hits: 0,
    };
    while let Some((s, idx)) = queue.pop_front() {
        report.states += 1;
        report.depth = report.depth.max(depth_of[idx as usize] as usize);
        let bad = check(cfg, &s);
        if !bad.is_empty() {
            for (inv, msg) in bad {
                if !report.violations.iter().any(|v| v.0 == inv) {
                    let tr = trace(cfg, &parents, idx);
                    report.violations.push((inv, msg, tr));
                }
            }
            if cfg.stop_at_first {
                break;
            }
            // Do not explore past a violation.
            continue;
        }
        if s.w
            .iter()
            .any(|w| matches!(w.phase, Phase::Failed(Fail::Bound)))
        {
            report.bound_hits += 1;
            continue;
        }
        if s.w.iter().any(|w| {
            matches!(
                w.phase,
                Phase::Failed(Fail::MissingSegment | Fail::NotFound)
            )
        }) {
            report.open_failures += 1;
            if report.first_open_failure.is_none() {
                report.first_open_failure = Some(trace(cfg, &parents, idx));
            }
        }
        let succ = successors(cfg, &s);
        report.transitions += succ.len();
        if succ.is_empty()
            && !s
                .w
                .iter()
                .any(|w| w.phase == Phase::Running && !w.fenced && !w.wal_dead)
        {
            report.ownerless_terminal += 1;
        }
        for (k, (n, _)) in succ.into_iter().enumerate() {
            if let Entry::Vacant(e) = index.entry(n) {
                let id = parents.len() as u32;
                e.insert(id);
                parents.push((idx, k as u16));
                depth_of.push(depth_of[idx as usize] + 1);
                queue.push_back((n, id));
            }
        }
    }
    report
}

fn run(cfg: Config) -> Report {
    #[expect(
        clippy::disallowed_methods,
        reason = "the model checker reports its own running time"
    )]
    let t = Instant::now();
    let r = explore(&cfg);
    println!(
        "[{}] {} states, {} transitions, depth {}, {:.2?}; open failures (missing segment) in {} \
         states; ownerless terminal states {}; bound hits {}",
        cfg.name,
        r.states,
        r.transitions,
        r.depth,
        t.elapsed(),
        r.open_failures,
        r.ownerless_terminal,
        r.bound_hits
    );
    for (inv, msg, tr) in &r.violations {
        println!("  invariant {inv} violated: {msg}");
        for line in tr {
            println!("    {line}");
        }
    }
    if let Some(tr) = &r.first_open_failure {
        println!("  shortest path to an open failing on a missing segment:");
        for line in tr {
            println!("    {line}");
        }
    }
    assert_eq!(r.bound_hits, 0, "[{}] model bounds too small", cfg.name);
    r
}

fn violated(r: &Report) -> Vec<u8> {
    let mut v: Vec<u8> = r.violations.iter().map(|v| v.0).collect();
    v.sort();
    v
}

fn assert_safe(r: &Report, name: &str) {
    assert!(
        r.violations.is_empty(),
        "[{name}] counterexample found: {:?}",
        r.violations
            .iter()
            .map(|v| (&v.0, &v.1))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// The checks

/// The protocol as implemented, old owner vs. new owner: W1 takes 3 writes, flushes, GCs;
/// W2 opens concurrently (manifest read before listing), may flush what it replayed, GCs; one
/// create may time out; WAL GC waits out a grace period longer than any open.
///
/// Real bug: once W2's replay point passes its own fencing marker, WAL GC deletes the marker.
/// W1's next segment name *is* that marker, so W1's next create succeeds and W1 acks writes
/// below the replay point that nobody will ever replay. No timing assumption is broken: W1
/// only has to put its next segment after the GC (it was idle, or stalled).
///
/// Fix: GC never deletes a fencing marker. Then the model is safe.
#[test]
fn real_protocol_old_owner_vs_opener() {
    let r = run(Config {
        name: "pre-fix code, W1 vs opening W2, GC with grace",
        stop_at_first: true,
        ..BASE
    });
    assert_eq!(
        violated(&r),
        vec![2, 4],
        "expected the marker-GC counterexample"
    );
    // Timed-out creates may also land after their retry resolved (even after GC).
    let r = run(Config {
        name: "fix: GC keeps markers, W1 vs opening W2, GC with grace",
        gc_keeps_markers: true,
        late_ghosts: true,
        ..BASE
    });
    assert_safe(&r, "GC keeps markers");
    assert_eq!(
        r.open_failures, 0,
        "an open hit a missing segment despite the grace period"
    );
    assert!(r.states > 10_000);
}

/// Invariant 2 taken literally ("W1 never acks once W2 opened") does not hold, harmlessly:
/// W1's timed-out segment lands, W2 replays it, then W1's retry reads it back and acks. The
/// write is in W2's state, which is what the doc promises.
#[test]
fn literal_no_ack_after_open_fails_only_for_recovered_writes() {
    let r = run(Config {
        name: "pre-fix code, literal invariant 2",
        writes: [1, 0, 0],
        gc: Gc::Off,
        strict_late_acks: true,
        ..BASE
    });
    assert_eq!(violated(&r), vec![2]);
}

/// With markers kept, a chain of owners: W3 opens once W2 has opened, everyone writes.
#[test]
fn owners_in_turn_with_markers_kept_are_safe() {
    let r = run(Config {
        name: "fix: GC keeps markers, W3 opens after W2",
        writes: [1, 1, 1],
        flushes: 1,
        third: Third::AfterSecond,
        timeouts: 0,
        gc_keeps_markers: true,
        ..BASE
    });
    assert_safe(&r, "W3 after W2");
    assert_eq!(r.open_failures, 0);
}

/// Without the grace period: an open hits a missing segment (availability error), and worse,
/// when GC has emptied the WAL at and above the opener's stale replay point the fence lands
/// on a deleted name, which the opener re-creates: W1 is not fenced and its acks are lost.
#[test]
fn gc_without_grace_breaks_fencing() {
    let r = run(Config {
        name: "pre-fix code, GC without grace",
        gc: Gc::NoGrace,
        gc_keeps_markers: true,
        ..BASE
    });
    assert!(
        r.open_failures > 0,
        "expected an open to hit a missing segment"
    );
    assert!(violated(&r).contains(&2), "{:?}", violated(&r));
}

/// Listing before reading the manifest (marker at listed max + 1) re-creates a GC'd name even
/// with the grace period: GC may have emptied the WAL long before the open began.
#[test]
fn list_first_order_is_unsafe_even_with_grace() {
    let r = run(Config {
        name: "list first, GC with grace",
        order: Order::ListFirst,
        gc_keeps_markers: true,
        stop_at_first: true,
        ..BASE
    });
    assert_eq!(
        violated(&r),
        vec![1],
        "expected W2 to open without an acked write"
    );
}

/// Fix for both: after winning the marker, read the latest manifest and refuse a marker below
/// its replay point (re-list from there), replaying from that manifest. Fencing is then safe
/// in either order without any grace period; the grace period only avoids failed opens.
#[test]
fn post_fence_manifest_check_makes_grace_a_liveness_matter() {
    for (name, order) in [
        (
            "fix: manifest first + post-fence check, GC without grace",
            Order::ManifestFirst,
        ),
        (
            "fix: list first + post-fence check, GC without grace",
            Order::ListFirst,
        ),
    ] {
        let r = run(Config {
            name,
            order,
            writes: [2, 1, 0],
            post_fence_check: true,
            gc: Gc::NoGrace,
            gc_keeps_markers: true,
            ..BASE
        });
        assert_safe(&r, name);
    }
}

/// Two openers racing. The one that lost the fence race (lower marker) rebases its manifest
/// claim on the winner's claim and finishes opening without the winner's acked writes; with
/// GC deleting markers, its next segment is the winner's deleted marker and its acks are lost.
#[test]
fn concurrent_openers() {
    let cfg = Config {
        name: "pre-fix code, W2 and W3 open concurrently",
        writes: [0, 1, 1],
        flushes: 1,
        third: Third::Concurrent,
        timeouts: 0,
        ..BASE
    };
    let r = run(cfg);
    assert!(violated(&r).contains(&1), "{:?}", violated(&r));
    assert!(violated(&r).contains(&4), "{:?}", violated(&r));
    let r = run(Config {
        name: "fix: GC keeps markers, W2 and W3 open concurrently",
        gc_keeps_markers: true,
        ..cfg
    });
    assert!(violated(&r).contains(&1), "{:?}", violated(&r));
    assert!(!violated(&r).contains(&4), "{:?}", violated(&r));
    let r = run(Config {
        name: "fix: GC keeps markers + claim fix, W2 and W3 open concurrently",
        gc_keeps_markers: true,
        claim_fix: true,
        ..cfg
    });
    assert_safe(&r, "claim fix");
}

/// All fixes together (markers kept, post-fence manifest check, fence-ordered claims,
/// `next_seq` above the claimed manifest), W1 writing, W2 and W3 opening concurrently, W3
/// writing, WAL GC *without* a grace period: safe. The grace period is then only about
/// avoiding failed opens.
///
/// Without the `next_seq` fix the same configuration loses a write: GC deletes a segment
/// during W3's open, W2's marker re-creates that name, W3 replays the marker in its place,
/// computes `next_seq` from its stale manifest, rebases its claim onto the manifest that
/// flushed the deleted segment, and then writes with a seq at or below that manifest's
/// `last_flushed_seq`, which replay skips.
#[test]
fn all_fixes_concurrent_openers_without_grace() {
    let cfg = Config {
        name: "all fixes, W2 and W3 open concurrently, GC without grace",
        writes: [1, 0, 1],
        flushes: 1,
        third: Third::Concurrent,
        timeouts: 0,
        gc: Gc::NoGrace,
        post_fence_check: true,
        gc_keeps_markers: true,
        claim_fix: true,
        seq_fix: true,
        ..BASE
    };
    let r = run(cfg);
    assert_safe(&r, cfg.name);
    let r = run(Config {
        name: "all fixes but next_seq, W2 and W3 open concurrently, GC without grace",
        seq_fix: false,
        stop_at_first: true,
        ..cfg
    });
    assert_eq!(violated(&r), vec![4]);
}

/// The protocol as `compute/engine/src/db.rs` and `wal_gc.rs` implement it now: manifest read
/// before listing, post-fence manifest check, markers never garbage-collected, claims that
/// refuse a manifest claimed by a higher epoch (the epoch's high bits are the marker name),
/// and `next_seq` above the claimed manifest. Checked against an old owner and two
/// concurrent openers, with late-landing timed-out creates and with GC both with and without
/// its grace period.
#[test]
fn implemented_protocol_is_safe() {
    for gc in [Gc::Grace, Gc::NoGrace] {
        let cfg = Config {
            name: "implemented protocol, W1 writing, W2 and W3 opening concurrently",
            writes: [1, 0, 1],
            flushes: 1,
            third: Third::Concurrent,
            timeouts: 0,
            gc,
            post_fence_check: true,
            gc_keeps_markers: true,
            claim_fix: true,
            seq_fix: true,
            ..BASE
        };
        assert_safe(&run(cfg), cfg.name);
    }
    let cfg = Config {
        name: "implemented protocol, W1 vs opening W2, timeouts landing late",
        post_fence_check: true,
        gc_keeps_markers: true,
        claim_fix: true,
        seq_fix: true,
        late_ghosts: true,
        ..BASE
    };
    let r = run(cfg);
    assert_safe(&r, cfg.name);
    assert_eq!(r.open_failures, 0);
}

/// Broken variants: the checker must find a counterexample for each.
#[test]
fn broken_variants_are_caught() {
    let either: [u8; 2] = [1, 2];
    for (name, bug, expect) in [
        (
            "bug: marker put without create-if-absent",
            Bug::MarkerOverwrite,
            either,
        ),
        (
            "bug: ack before the segment put returns",
            Bug::AckBeforePut,
            either,
        ),
        (
            "bug: retry drops the content comparison",
            Bug::RetryNoCompare,
            either,
        ),
        (
            "bug: manifest put without create-if-absent",
            Bug::ManifestOverwrite,
            [3, 3],
        ),
    ] {
        let r = run(Config {
            name,
            bug,
            gc: Gc::Off,
            durability: false,
            stop_at_first: true,
            ..BASE
        });
        assert!(
            violated(&r).iter().any(|v| expect.contains(v)),
            "[{name}] expected invariant {expect:?} to fail, got {:?}",
            violated(&r)
        );
    }
}
