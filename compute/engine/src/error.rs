//! Engine errors: a rich internal enum with a small, stable kind that maps to gRPC codes.

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
    /// This node does not serve the partition (not its owner, opening, deposed, or its
    /// lease lapsed) and applied nothing: the request may be retried, on the owner.
    #[error("{0}")]
    NotServing(String),
    /// A key is locked by a cross-partition transaction being committed; nothing was applied
    /// (retry once it is resolved).
    #[error("{0}")]
    Locked(String),
    /// A cross-partition transaction could not commit (it conflicted with another one or was
    /// aborted; nothing was applied, and the whole transaction may be retried), or a scan's
    /// snapshot grew too old to continue (restart it). gRPC `ABORTED`.
    #[error("{0}")]
    Conflict(String),
    /// The store refuses the request for lack of a resource, and applied nothing: a write
    /// stall (compaction or flush debt past its hard limit), no space left on a disk. gRPC
    /// `RESOURCE_EXHAUSTED`, with `retry-after-ms` metadata when a wait is known to help.
    #[error("{msg}")]
    ResourceExhausted {
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

/// Result alias.
pub type EngineResult<T> = Result<T, EngineError>;

impl From<strata_objstore::StoreError> for EngineError {
    fn from(e: strata_objstore::StoreError) -> Self {
        use strata_objstore::StoreError as S;
        match e {
            S::Unavailable { .. } => EngineError::Unavailable(e.to_string()),
            S::NotFound(_) => EngineError::Corruption(format!("missing object: {e}")),
            // Nothing was written: a clear refusal, not an unknown outcome.
            S::NoSpace { .. } => EngineError::ResourceExhausted {
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
            M::Conflict { .. } | M::Etcd(_) => EngineError::Unavailable(e.to_string()),
            M::NotOwner { .. } => EngineError::NotServing(e.to_string()),
        }
    }
}
