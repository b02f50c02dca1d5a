//! Strata compute: the engine (WAL, memtables, flush, reads) and the gRPC server.

pub mod cluster;
mod commit;
pub mod connections;
mod db;
mod error;
mod flush;
mod lease;
mod memtable;
pub mod message_limit;
mod metrics;
mod replica;
mod scan;
pub mod server;
mod sst_reader;
mod stall;
pub mod txn;
mod txn_coord;
mod version;
mod wal_gc;

pub use commit::{Cond, Op, OpOutcome, WriteOp};
pub use db::{store_uid, Db, DbOptions, DbStats, RecoveryReport, MAX_SNAPSHOT_AGE};
pub use error::{is_retry_safe, retryable, EngineError, EngineResult, RETRY_SAFE_HEADER};
pub use lease::LeaseGuard;
pub use metrics::EngineMetrics;
pub use replica::ReplicaRead;
pub use scan::Scanner;
pub use stall::StallLimits;
pub use txn_coord::TxnService;

/// Generated protobuf and gRPC code for `strata.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("strata.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_descriptor");
}

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest value, in bytes (a hard limit).
pub const MAX_VALUE_BYTES: usize = 1_048_576;
/// Largest gRPC request or response.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
