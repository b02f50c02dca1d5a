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
//! 2. **Execute**: read the inputs whole (every checksum verified), merge them in internal
//!    key order keeping only the newest version of each key, drop a newest version that is a
//!    tombstone or expired when no deeper level holds the key, and cut outputs at
//!    `target_file_bytes`. Outputs are created under fresh ids with create-if-absent puts;
//!    nothing references them until the commit does.
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
pub mod export;
pub mod fleet;
mod merge;
mod plan;

#[cfg(test)]
mod tests;

use std::time::Duration;

use strata_format::SstOptions;

pub use compactor::{Compactor, CompactorStats, ReaderFloor};
pub use plan::{level_target_bytes, plan, plan_with_cursors, Job};

/// Knobs of leveled compaction.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// Number of L0 files that triggers an L0 → L1 compaction (default 4).
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
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            l0_trigger: 4,
            l1_target_bytes: 256 << 20,
            level_multiplier: 10,
            max_levels: 6,
            target_file_bytes: 64 << 20,
            sst: SstOptions::default(),
            gc_grace: Duration::from_secs(5 * 60),
            orphan_grace: Duration::from_secs(60 * 60),
            hash_range: None,
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
}

pub(crate) use strata_manifest::now_ms;
