//! Strata compute: the cluster layer (membership, ownership, routing, splits, the transaction
//! coordinator) and the gRPC service layer on top of the engine (`strata-engine`).
//!
//! Dependencies point one way: `service` (the KV, Admin and Txn services, request validation,
//! the error → `Status` mapping in `service/status.rs`) → `cluster` → `strata_engine`. The engine's types
//! are re-exported here so callers of the server need one crate.

pub mod cluster;
pub mod connections;
pub mod reload;
pub mod service;
pub mod tls;

/// The service layer under its earlier name.
pub use service as server;
pub use service::message_limit;
pub use service::status::{is_retry_safe, retryable, status, RETRY_SAFE_HEADER};
pub use service::TxnService;
pub use strata_engine::{
    prefix_end, store_uid, txn, Cond, Db, DbOptions, DbStats, EngineError, EngineMetrics,
    EngineResult, LeaseGuard, Op, OpOutcome, RecoveryReport, ReplicaRead, Scanner, StallLimits,
    WriteOp, MAX_KEY_BYTES, MAX_SNAPSHOT_AGE, MAX_VALUE_BYTES,
};

/// Generated protobuf and gRPC code for `strata.v1` (from `strata-proto`).
pub use strata_proto::pb;

/// Largest gRPC request or response.
pub use strata_proto::MAX_MESSAGE_BYTES;
