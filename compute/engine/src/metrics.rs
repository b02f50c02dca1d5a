//! Engine counters, exported in Prometheus text format by the server.

use std::sync::atomic::AtomicU64;

/// Counters of the engine and the server's connections. All monotonic but `connections_open`.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Point reads served.
    pub gets: AtomicU64,
    /// Write batches applied.
    pub writes: AtomicU64,
    /// WAL segments written.
    pub wal_segments: AtomicU64,
    /// Bytes of WAL segments written.
    pub wal_bytes: AtomicU64,
    /// Time spent in WAL PUTs, microseconds.
    pub wal_put_micros: AtomicU64,
    /// WAL PUTs that failed.
    pub wal_put_failures: AtomicU64,
    /// Memtables flushed to L0.
    pub flushes: AtomicU64,
    /// Bytes of L0 SSTs flushed.
    pub flush_bytes: AtomicU64,
    /// Flushes that failed (and were retried).
    pub flush_failures: AtomicU64,
    /// WAL segments deleted by WAL GC.
    pub wal_segments_deleted: AtomicU64,
    /// Write batches delayed in the write stall's slowdown band (`stall.rs`).
    pub write_stall_delays: AtomicU64,
    /// Write batches that waited at the stop limit.
    pub write_stall_stops: AtomicU64,
    /// Write batches refused (`RESOURCE_EXHAUSTED`) after waiting out the stop limit.
    pub write_stall_refusals: AtomicU64,
    /// Total time writes spent held back by the stall, microseconds.
    pub write_stall_micros: AtomicU64,
    /// Time commit loops read no new writes because the memtables were over the write
    /// budget (`DbOptions::write_buffer_bytes`), waiting for a flush, microseconds: every
    /// writer of the partition waits then, whatever its size or tenant.
    pub write_buffer_full_micros: AtomicU64,
    /// Client connections open now (a gauge; `connections.rs`).
    pub connections_open: AtomicU64,
    /// Client connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections closed at once because `--max-connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed after `--idle-timeout-secs` without a request in flight.
    pub connections_idle_closed: AtomicU64,
    /// Connections closed for not finishing the HTTP/2 handshake in time.
    pub connections_handshake_timeouts: AtomicU64,
    /// Connections closed because their tenant held its share of the node's connections.
    pub connections_over_share_closed: AtomicU64,
}
