//! Engine errors: one enum whose variants say what the caller should do, typed enough that the
//! service edge (`strata-compute`'s `status.rs`) maps each to a gRPC code and a
//! machine-readable reason without reading messages. The enum is `Clone` because a group commit
//! answers every waiter of a failed group with the same error.

use thiserror::Error;

/// Errors of the engine, grouped by what the caller should do about them.
#[derive(Debug, Error, Clone)]
pub enum EngineError {
    /// The request is malformed; retrying it unchanged cannot succeed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A write condition (`if_absent`, `if_version`) did not hold; nothing was applied.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Storage is unreachable or this node can no longer write; the outcome of a write that
    /// gets this error is unknown (like a timeout), and nothing acknowledged is lost.
    #[error("{0}")]
    Unavailable(String),
    /// Storage (the object store, etcd) could not be reached or failed; the outcome of a write
    /// that gets this error is unknown, and nothing acknowledged is lost.
    #[error("{0}")]
    StorageUnavailable(String),
    /// This node does not serve the partition (not its owner, opening, or its lease lapsed)
    /// and applied nothing: the request may be retried, on the owner.
    #[error("{0}")]
    NotServing(String),
    /// The partition no longer serves this key because it split; nothing was applied: retry
    /// with the new partition map.
    #[error("{0}")]
    Split(String),
    /// A newer writer of the partition fenced this one. `applied_nothing` says whether the
    /// request is known not to have been applied (then it may be retried, on the new owner);
    /// otherwise its outcome is unknown.
    #[error("{msg}")]
    Fenced {
        /// What was fenced, for the client and the log.
        msg: String,
        /// Whether the request certainly applied nothing.
        applied_nothing: bool,
    },
    /// A key is locked by a cross-partition transaction being committed; nothing was applied
    /// (retry once it is resolved).
    #[error("{0}")]
    Locked(String),
    /// A cross-partition transaction could not commit (it conflicted with another one or was
    /// aborted; nothing was applied, and the whole transaction may be retried). gRPC `ABORTED`.
    #[error("{0}")]
    Conflict(String),
    /// A scan's snapshot grew too old to continue: files it reads may have been compacted
    /// away. Restart the scan after the last key received. gRPC `ABORTED`.
    #[error("{0}")]
    SnapshotTooOld(String),
    /// The store refuses the request for lack of a resource, and applied nothing: a write
    /// stall (compaction or flush debt past its hard limit), no space left on a disk. gRPC
    /// `RESOURCE_EXHAUSTED`, with `retry-after-ms` metadata when a wait is known to help.
    #[error("{msg}")]
    ResourceExhausted {
        /// Which resource ran out.
        kind: Exhausted,
        /// What ran out, for the client and the log.
        msg: String,
        /// A hint for when to try again.
        retry_after_ms: Option<u64>,
    },
    /// Stored data failed a checksum or could not be decoded.
    #[error("data corruption: {0}")]
    Corruption(String),
    /// The engine is shutting down.
    #[error("engine is closed")]
    Closed,
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The resource behind [`EngineError::ResourceExhausted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// Compaction or flush debt past its hard limit (`stall.rs`).
    WriteStall,
    /// No space left on a disk.
    NoSpace,
}

/// Result alias.
pub type EngineResult<T> = Result<T, EngineError>;

impl From<strata_objstore::StoreError> for EngineError {
    fn from(e: strata_objstore::StoreError) -> Self {
        use strata_objstore::StoreError as S;
        match e {
            S::Unavailable { .. } => EngineError::StorageUnavailable(e.to_string()),
            S::NotFound(_) => EngineError::Corruption(format!("missing object: {e}")),
            // Nothing was written: a clear refusal, not an unknown outcome.
            S::NoSpace { .. } => EngineError::ResourceExhausted {
                kind: Exhausted::NoSpace,
                msg: e.to_string(),
                retry_after_ms: Some(1000),
            },
            _ => EngineError::Internal(e.to_string()),
        }
    }
}

impl From<strata_format::FormatError> for EngineError {
    fn from(e: strata_format::FormatError) -> Self {
        EngineError::Corruption(e.to_string())
    }
}

impl From<strata_manifest::ManifestError> for EngineError {
    fn from(e: strata_manifest::ManifestError) -> Self {
        use strata_manifest::ManifestError as M;
        match e {
            M::Store(s) => s.into(),
            M::Corrupt { .. } => EngineError::Corruption(e.to_string()),
            M::Invalid { .. } => EngineError::Internal(e.to_string()),
            M::Conflict { .. } => EngineError::Unavailable(e.to_string()),
            M::Etcd(_) => EngineError::StorageUnavailable(e.to_string()),
            M::NotOwner { .. } => EngineError::NotServing(e.to_string()),
        }
    }
}
