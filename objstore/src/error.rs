use thiserror::Error;

/// Errors from the object store seam.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// A create-if-absent put found the object already there: someone else got there first.
    #[error("object already exists: {0}")]
    AlreadyExists(String),
    /// The path is not one Strata writes.
    #[error("invalid object path: {0:?}")]
    InvalidPath(String),
    /// The store could not be reached or failed transiently; the operation may be retried.
    #[error("object store unavailable during {op} {path}: {detail}")]
    Unavailable {
        /// Operation name.
        op: &'static str,
        /// Object path.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The store's disk is full (or over its quota) and the operation did not take effect:
    /// nothing was created or replaced. Retrying helps only once space is freed.
    #[error("no space left during {op} {path}: {detail}")]
    NoSpace {
        /// Operation name.
        op: &'static str,
        /// Object path.
        path: String,
        /// What went wrong, naming the directory or device.
        detail: String,
    },
    /// Anything else (configuration, permanent failures).
    #[error("object store error during {op} {path}: {detail}")]
    Other {
        /// Operation name.
        op: &'static str,
        /// Object path.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

impl StoreError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Result alias for the object store seam.
pub type StoreResult<T> = Result<T, StoreError>;
