//! Engine counters, exported in Prometheus text format by the server.

use std::sync::atomic::AtomicU64;

/// Counters of the engine. All monotonic.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub gets: AtomicU64,
    pub writes: AtomicU64,
    pub wal_segments: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_put_micros: AtomicU64,
    pub wal_put_failures: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_bytes: AtomicU64,
    pub flush_failures: AtomicU64,
    pub wal_segments_deleted: AtomicU64,
}
