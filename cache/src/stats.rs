//! Counters of a [`crate::BlockCache`] and the snapshot it reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of cache counters (monotonic since open) and gauges.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CacheStats {
    /// Lookups (`get`, `get_or_fetch`) answered from the cache, memory or disk.
    pub hits: u64,
    /// Lookups not answered from the cache (for `get_or_fetch`: the value was fetched,
    /// by this call or by a concurrent one it shared a fetch with).
    pub misses: u64,
    /// Values put into the cache: `insert` calls plus successful fetches.
    pub inserts: u64,
    /// Bytes the memory tier currently accounts for (values plus per-entry overhead).
    pub memory_used_bytes: u64,
    /// Hits served by the disk tier (a subset of `hits`).
    pub disk_hits: u64,
    /// Memory tier budget in bytes.
    pub memory_capacity_bytes: u64,
    /// Disk tier capacity in bytes (0 = memory only).
    pub disk_capacity_bytes: u64,
    /// Fetch closures run by `get_or_fetch` (concurrent callers sharing one fetch count once).
    pub fetches: u64,
    /// Fetch closures that returned an error (errors are not cached).
    pub fetch_errors: u64,
    /// Disk writes foyer dropped because its queue or flush buffer was full (under load).
    /// Those entries stay in memory but will not survive eviction or a restart.
    pub disk_write_drops: u64,
    /// Values too large for a disk block, kept in memory only.
    pub disk_oversize_skips: u64,
    /// Disk tier read errors (treated as misses).
    pub disk_errors: u64,
    /// Bytes written to the disk tier device.
    pub disk_write_bytes: u64,
    /// Bytes read from the disk tier device.
    pub disk_read_bytes: u64,
}

/// The counters this crate maintains itself (foyer's are in `foyer_metrics`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) inserts: AtomicU64,
    pub(crate) disk_hits: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_errors: AtomicU64,
    pub(crate) disk_oversize_skips: AtomicU64,
}

/// Add one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Read a counter.
pub(crate) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
