//! The crate's error type.
//!
//! Every public function of the crate returns a [`Result`] with a [`CompactorError`]: a typed
//! enum whose variants keep what failed underneath as their [`source`](std::error::Error::source)
//! (the object store's, the manifest store's, the format's errors, ...) next to a `what`
//! naming the operation. Its `Display` is that operation only; [`CompactorError::report`]
//! (or `anyhow`'s `{:#}` in the CLI, which walks the same chain) shows the whole story, e.g.
//! `opening compaction input p00000/sst/… (L0): reading the footer of …: object not found: …`.

use std::fmt;

use strata_format::FormatError;
use strata_manifest::ManifestError;
use strata_objstore::StoreError;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, CompactorError>;

/// Why a compaction, GC sweep, snapshot, restore step, export or fleet task failed.
///
/// Variants with a `what` name the operation that failed (`"reading p00003/sst/…"`); the
/// error underneath is their `source`. Variants with only a message are failures found by
/// this crate itself (corruption it detected, a refused request, a lost race).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactorError {
    /// An object-store operation failed.
    #[error("{what}")]
    Store {
        /// The operation, naming the object or prefix.
        what: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Loading or committing a partition's manifest failed.
    #[error("{what}")]
    Manifest {
        /// The operation, naming the partition.
        what: String,
        /// The manifest store's error.
        #[source]
        source: ManifestError,
    },
    /// etcd, the cluster's control plane, failed (its view, transaction records, task
    /// claims, export-job records).
    #[error("{what}")]
    Etcd {
        /// The operation.
        what: String,
        /// The error of the etcd client (reported through the manifest crate).
        #[source]
        source: ManifestError,
    },
    /// The cluster's partition map in etcd could not be read.
    #[error("{what}: {detail}")]
    PartitionMap {
        /// The operation that needed it.
        what: String,
        /// Why it is unreadable.
        detail: String,
    },
    /// Encoding or decoding an SST, WAL segment or manifest failed (corruption that a
    /// checksum or the decoder caught, or an encoder refusing its input).
    #[error("{what}")]
    Format {
        /// The operation or object, e.g. `"SST p00000/sst/… is corrupt"`.
        what: String,
        /// The format's error.
        #[source]
        source: FormatError,
    },
    /// Data that decoded but disagrees with itself or with the manifest (sizes, entry
    /// counts, key order, missing WAL segments).
    #[error("{0}")]
    Corrupt(String),
    /// An input moved under a read (a flush or compaction collected it): reading the
    /// partition again from its newer manifest will do. Retried where it can happen; seen
    /// only once the retries ran out.
    #[error("{0}")]
    Reread(String),
    /// Something was not there: a snapshot, a partition's manifest.
    #[error("{0}")]
    NotFound(String),
    /// A request that the store's state refuses: an export into a place that is not empty,
    /// deleting a snapshot a keyspace was restored from, restoring one being deleted.
    #[error("{0}")]
    Refused(String),
    /// Compaction settings (`strata ctl compaction set`, a strategy name) that cannot be
    /// applied.
    #[error("{0}")]
    InvalidSettings(String),
    /// The operation lost to concurrent changes: commit races, id clashes, a partition
    /// split while a snapshot or export ran. Trying again may succeed.
    #[error("{0}")]
    Conflict(String),
    /// Encoding or decoding JSON (a snapshot record, an export manifest, an export job).
    #[error("{what}")]
    Json {
        /// The operation, naming the object.
        what: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// Writing a Parquet file of an export.
    #[error("{what}")]
    Parquet {
        /// The step.
        what: String,
        /// The Parquet writer's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building the Arrow record batches of an export.
    #[error("{what}")]
    Arrow {
        /// The step.
        what: String,
        /// Arrow's error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// An operating-system call (starting a thread).
    #[error("{what}")]
    Io {
        /// The operation.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A spawned task (decoding on the blocking pool) panicked or was cancelled.
    #[error("{what}")]
    Task {
        /// The task.
        what: String,
        /// Tokio's error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A thread or channel of a job stopped without an answer (a panic), or an invariant of
    /// the crate broke.
    #[error("{0}")]
    Internal(String),
    /// Context added to another error of this crate: `what` was being done when `source`
    /// failed.
    #[error("{what}")]
    Context {
        /// What was being done.
        what: String,
        /// The error underneath.
        #[source]
        source: Box<CompactorError>,
    },
}

impl CompactorError {
    /// The whole chain of this error, `anyhow`'s `{:#}` style: the operation, then each
    /// error underneath, joined by `": "`. For logs and for messages stored for others (an
    /// export job's `error`).
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }

    /// Whether an object the operation needed was not in the object store (directly, through
    /// the manifest store, or under any context).
    pub fn is_object_not_found(&self) -> bool {
        match self {
            CompactorError::Store { source, .. } => matches!(source, StoreError::NotFound(_)),
            CompactorError::Manifest { source, .. } | CompactorError::Etcd { source, .. } => {
                matches!(source, ManifestError::Store(StoreError::NotFound(_)))
            }
            CompactorError::Context { source, .. } => source.is_object_not_found(),
            _ => false,
        }
    }

    /// Whether the error says that an input moved under a read (an object vanished, or a
    /// [`CompactorError::Reread`] at any level): reading again from a newer manifest may
    /// succeed.
    pub fn is_moved(&self) -> bool {
        match self {
            CompactorError::Reread(_) => true,
            CompactorError::Context { source, .. } => source.is_moved(),
            e => e.is_object_not_found(),
        }
    }
}

/// An error with every error underneath it, as [`CompactorError::report`] shows it.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(&'a CompactorError);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

/// Errors of other crates that take a `what` to become a [`CompactorError`].
pub(crate) trait WithWhat {
    /// This error as the source of a [`CompactorError`] whose operation is `what`.
    fn with_what(self, what: String) -> CompactorError;
}

impl WithWhat for StoreError {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Store { what, source: self }
    }
}

impl WithWhat for ManifestError {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Manifest { what, source: self }
    }
}

impl WithWhat for FormatError {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Format { what, source: self }
    }
}

impl WithWhat for serde_json::Error {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Json { what, source: self }
    }
}

impl WithWhat for parquet::errors::ParquetError {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Parquet { what, source: self }
    }
}

impl WithWhat for arrow_schema::ArrowError {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Arrow { what, source: self }
    }
}

impl WithWhat for std::io::Error {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Io { what, source: self }
    }
}

impl WithWhat for tokio::task::JoinError {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Task { what, source: self }
    }
}

impl WithWhat for CompactorError {
    fn with_what(self, what: String) -> CompactorError {
        CompactorError::Context {
            what,
            source: Box::new(self),
        }
    }
}

/// `.context(..)` / `.with_context(..)` on results whose error [`WithWhat`] turns into a
/// [`CompactorError`] naming the operation.
pub(crate) trait ResultExt<T> {
    /// The error, if any, as the source of a [`CompactorError`] whose operation is `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;

    /// Like [`ResultExt::context`], the message built only on error.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: WithWhat> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.with_what(what.into()))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.with_what(what().into()))
    }
}

/// An etcd failure while doing `what` (for `map_err`).
pub(crate) fn etcd(what: impl Into<String>) -> impl FnOnce(ManifestError) -> CompactorError {
    move |source| CompactorError::Etcd {
        what: what.into(),
        source,
    }
}

/// The latest manifest of partition `p`, with the partition named in the error: the one way
/// the crate loads a manifest to plan, collect, export or snapshot from.
pub(crate) async fn load_latest(
    manifests: &dyn strata_manifest::ManifestStore,
    p: u32,
) -> Result<Option<std::sync::Arc<strata_format::Manifest>>> {
    manifests
        .load_latest(p)
        .await
        .with_context(|| format!("loading the manifest of partition {p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_walks_every_source() {
        let e = Err::<(), _>(StoreError::NotFound("p00000/sst/x".into()))
            .context("reading the footer of x")
            .context("opening compaction input x (L0)")
            .unwrap_err();
        assert_eq!(e.to_string(), "opening compaction input x (L0)");
        assert_eq!(
            e.report().to_string(),
            "opening compaction input x (L0): reading the footer of x: object not found: \
             p00000/sst/x"
        );
        assert!(e.is_object_not_found() && e.is_moved());
        let e = CompactorError::Reread("moved".into()).with_what("snapshot 1: partition 0".into());
        assert!(e.is_moved() && !e.is_object_not_found());
        assert!(!CompactorError::NotFound("no snapshot".into()).is_moved());
    }
}
