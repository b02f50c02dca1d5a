//! Strata compaction: leveled planning, merge execution and garbage collection of inputs.
//!
//! One [`Compactor`] serves one partition. It is used in-process by the embedded store and
//! by the standalone `strata compactor` process; both drive it through [`Compactor::run`] (or
//! [`Compactor::compact_once`] for tests and tools).
//!
//! A job goes through three steps:
//! 1. **Plan** ([`plan`], a pure function of the manifest): L0 → L1 when L0 holds
//!    `l0_trigger` files or more (all of L0 plus every overlapping L1 file), otherwise the
//!    first level over its size target pushes one file (round-robin by key) into the next.
//! 2. **Execute**: stream the inputs block by block (`stream.rs`, every checksum verified,
//!    memory bounded by `memory_bytes`), merge them in internal key order keeping only the newest version of each key, drop a newest version that is a
//!    tombstone or expired when no deeper level holds the key, and cut outputs at
//!    `target_file_bytes`, each written in 8 MiB parts as it fills (a multipart upload on S3,
//!    a staging file locally). Outputs get fresh ids by create-if-absent puts (a large one
//!    reserves its id with a placeholder, then is uploaded over it); nothing references them
//!    until the commit does.
//! 3. **Commit**: rebase on the latest manifest (copying its `writer_epoch`, WAL replay point
//!    and flushed seq untouched), replace the inputs by the outputs and create version + 1.
//!    A conflict re-reads and retries; if the inputs are gone or the key range of the job
//!    changed meanwhile, the job is abandoned and its outputs deleted.
//!
//! Inputs dropped by a commit are deleted only after `gc_grace`, because readers may still
//! hold an older manifest version that references them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)
)]

mod compactor;
pub mod error;
pub mod export;
pub mod fleet;
pub mod fleet_tasks;
mod gc;
mod merge;
mod plan;
mod rebase;
pub mod settings;
pub mod snapshot;
mod stream;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use strata_format::SstOptions;

pub use compactor::{Compactor, CompactorStats, ReaderFloor};
pub use error::{CompactorError, Result};

/// `gc_grace` on the embedded default, where the compactor runs in the engine's process and
/// learns from the engine which manifest versions its readers still hold (the reader floor:
/// an input waits for every in-process reader of it, however long a scan holds on). The grace
/// only covers readers in *other* processes, which all cope with an input vanishing: exports
/// re-read from a newer manifest, and snapshots pin within `max_pin_delay(EMBEDDED_GC_GRACE)`
/// of reading their manifest and check that the pinned SSTs are still there. Short, so that a
/// write flood's compacted inputs leave the disk within seconds (`docs/gc.md`).
pub const EMBEDDED_GC_GRACE: Duration = Duration::from_secs(10);
pub use plan::{level_target_bytes, plan, plan_at, plan_with_cursors, Job, Strategy};

/// Knobs of compaction.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// How SSTs are organised (default leveled).
    pub strategy: Strategy,
    /// Per-partition strategies that override `strategy` (a [`Compactor`] applies the one
    /// of its partition).
    pub strategy_overrides: std::collections::BTreeMap<u32, Strategy>,
    /// Size-tiered: runs are merged while the next older run is at most this many percent
    /// larger than the runs merged so far (default 1, as in RocksDB's universal compaction).
    pub size_ratio_percent: u64,
    /// Size-tiered: every run is merged into one when the runs above the oldest hold more
    /// than this many percent of its bytes (default 200).
    pub max_space_amp_percent: u64,
    /// Size-tiered and time-window: levels available to runs (default 32). Runs are kept
    /// packed at the deepest levels; when none is free, a merge takes the next older run too.
    pub tiered_levels: usize,
    /// Size-tiered and time-window: number of sorted runs (each L0 file is one) that
    /// triggers a merge (default 4; the leveled strategy uses `l0_trigger`).
    pub run_trigger: usize,
    /// A job whose inputs hold at least `subcompaction_min_bytes` is cut by key range into
    /// up to this many parts merged in parallel (default 2; 1 turns it off).
    pub subcompactions: usize,
    /// See `subcompactions` (default 32 MiB).
    pub subcompaction_min_bytes: u64,
    /// Leveled: number of L0 files that triggers an L0 → L1 compaction (default 4).
    pub l0_trigger: usize,
    /// Size target of L1 in bytes (default 256 MiB).
    pub l1_target_bytes: u64,
    /// Each level below L1 may hold this many times the bytes of the level above (default 10).
    pub level_multiplier: u64,
    /// Number of levels below L0 (L1..=Lmax_levels; default 6). The last one is never
    /// compacted further.
    pub max_levels: usize,
    /// Outputs are cut once they reach about this size (default 64 MiB).
    pub target_file_bytes: u64,
    /// Memory of one job (default 256 MiB): each of its merges (one per subcompaction) holds
    /// about three 8 MiB parts of output (building, queued, uploading: outputs are written in
    /// parts as they fill, whatever `target_file_bytes` is); the rest is the inputs'
    /// read-ahead, chunks sized so that every input of every merge fits (`stream.rs`). A budget
    /// below 24 MiB per merge is exceeded by the outputs' parts, and its read-ahead falls to
    /// the smallest chunk (4 KiB: about one GET per block); `strata serve` warns of it.
    pub memory_bytes: u64,
    /// Options of the SSTs compaction writes.
    pub sst: SstOptions,
    /// Inputs are deleted this long after the commit that dropped them (default 5 min):
    /// readers may still hold an older manifest version that references them.
    pub gc_grace: Duration,
    /// An SST that no manifest references is deleted once it is this old (by the creation
    /// time in its id): outputs of flushes and compactions that crashed before their commit,
    /// and compacted inputs whose deletion was lost with a restart. In-flight outputs are far
    /// younger; default 1 h.
    pub orphan_grace: Duration,
    /// In a cluster: the key-hash range the partition serves. After a split, the partition's
    /// older SSTs still hold the other half's keys (served elsewhere now, never read here);
    /// compaction drops them. `None` keeps every key.
    pub hash_range: Option<(u64, Option<u64>)>,
    /// Opens the other store roots a manifest may name (see [`strata_format::SstRoot`]).
    pub roots: strata_objstore::Roots,
    /// Tiering of cold SSTs to another root; `None` (default): off.
    pub tier: Option<TierOptions>,
    /// Bytes of compacted inputs waiting out `gc_grace`, shared by the compactors of a
    /// process, above which they start no job that writes (`None`, default: no limit).
    pub deletion_budget: Option<Arc<DeletionBudget>>,
    /// The wall clock: TTL expiry while merging, when an SST counts as old enough to tier,
    /// manifest timestamps, the orphan sweep's ages. Tests pass a manual one. (Graces and
    /// timers run on the monotonic clock, tokio's, which tests pause instead.)
    pub clock: strata_clock::Clock,
}

/// A byte budget for compacted inputs waiting to be deleted. They must wait out `gc_grace`
/// (readers may hold older versions), so at a high compaction rate they can pile up to rate
/// × grace bytes (tens of GB on a local disk); above the budget, compactors pause the jobs
/// that write until deletions bring it back under. Shared by every compactor of a process.
#[derive(Debug, Default)]
pub struct DeletionBudget {
    /// The limit in bytes.
    pub limit: u64,
    pending: std::sync::atomic::AtomicU64,
    /// Compactors sharing it: over the limit, only those holding more than their share
    /// pause, so one partition whose deletions cannot proceed (its owner is behind) does not
    /// stall the others.
    sharers: std::sync::atomic::AtomicU64,
}

impl DeletionBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<DeletionBudget> {
        Arc::new(DeletionBudget {
            limit,
            pending: Default::default(),
            sharers: Default::default(),
        })
    }

    /// Bytes waiting now.
    pub fn pending(&self) -> u64 {
        self.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a compactor holding `own` bytes of it must pause the jobs that write: the
    /// budget is spent and the compactor holds more than its share.
    pub fn must_pause(&self, own: u64) -> bool {
        let sharers = self
            .sharers
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1);
        self.pending() > self.limit && own > self.limit / sharers
    }

    pub(crate) fn join(&self) {
        self.sharers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn leave(&self) {
        let _ = self.sharers.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |v| Some(v.saturating_sub(1)),
        );
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.pending
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: u64) {
        let _ = self.pending.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |v| Some(v.saturating_sub(bytes)),
        );
    }
}

/// Where cold SSTs go and which are cold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierOptions {
    /// The cold root: `s3://BUCKET/PREFIX` (another bucket or prefix) or `file:///DIR`.
    pub url: String,
    /// S3 storage class of the copies there (e.g. `STANDARD_IA`, `GLACIER_IR`); `None`:
    /// the bucket's default.
    pub storage_class: Option<String>,
    /// SSTs in this level or deeper (1 = L1) are cold.
    pub min_level: Option<usize>,
    /// SSTs at least this old (by creation) are cold.
    pub min_age: Option<Duration>,
}

impl TierOptions {
    /// Whether an SST of `level` (0 = L0) created at `created_ms` is cold at `now_ms`.
    pub fn is_cold(&self, level: usize, created_ms: u64, now_ms: u64) -> bool {
        self.min_level.is_some_and(|l| level >= l.max(1))
            || self
                .min_age
                .is_some_and(|a| now_ms.saturating_sub(created_ms) >= a.as_millis() as u64)
    }
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            strategy: Strategy::Leveled,
            strategy_overrides: Default::default(),
            size_ratio_percent: 1,
            max_space_amp_percent: 200,
            tiered_levels: 32,
            run_trigger: 4,
            subcompactions: 2,
            subcompaction_min_bytes: 32 << 20,
            l0_trigger: 4,
            l1_target_bytes: 256 << 20,
            level_multiplier: 10,
            max_levels: 6,
            target_file_bytes: 64 << 20,
            memory_bytes: 256 << 20,
            sst: SstOptions::default(),
            gc_grace: Duration::from_secs(5 * 60),
            orphan_grace: Duration::from_secs(60 * 60),
            hash_range: None,
            roots: strata_objstore::Roots::default(),
            tier: None,
            deletion_budget: None,
            clock: strata_clock::Clock::system(),
        }
    }
}

/// What one committed compaction job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionReport {
    /// Partition.
    pub partition: u32,
    /// Level the job compacted out of (0 = L0).
    pub input_level: usize,
    /// Level the outputs went to (1 = L1).
    pub output_level: usize,
    /// Number of input SSTs (both levels).
    pub input_files: usize,
    /// Bytes of the input SSTs.
    pub input_bytes: u64,
    /// Number of SSTs written.
    pub output_files: usize,
    /// Bytes of the SSTs written.
    pub output_bytes: u64,
    /// Entries read.
    pub entries_in: u64,
    /// Entries written.
    pub entries_out: u64,
    /// Tombstones dropped because nothing deeper holds their key.
    pub dropped_tombstones: u64,
    /// Expired values dropped because nothing deeper holds their key.
    pub dropped_expired: u64,
    /// Wall time of the job, planning to commit.
    pub millis: u64,
    /// Manifest version the job committed.
    pub manifest_version: u64,
    /// True when the job only moved one SST to the next level (nothing overlapped it there
    /// and it had nothing to drop): no data was read or written, and the file and entry
    /// counts and sizes above describe the moved SST (on both sides). Trivial moves are not
    /// counted in the byte totals of [`CompactorStats`].
    pub trivial_move: bool,
    /// True when the job dropped whole SSTs whose values had all expired, unread: the input
    /// counts describe them, nothing was written, `dropped_expired` counts their entries.
    pub drop_expired: bool,
    /// Parts the merge was cut into by key range and run in parallel (1 for an uncut job,
    /// 0 for a job that read no data).
    pub subcompactions: usize,
    /// True when the job moved SSTs to the cold tier (copied, unchanged; the input counts
    /// describe them).
    pub tiered: bool,
}
