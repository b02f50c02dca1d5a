//! The manifest store seam.
//!
//! A manifest is an immutable object describing one partition's durable state: its SSTs by
//! level, and the WAL segment recovery must replay from. Each change writes a new version.
//! [`ManifestStore`] hides where the pointer to the latest version lives: in embedded mode it
//! is the object store itself (version N+1 is created with a conditional put, so two writers
//! can never both commit N+1); in a cluster it will be etcd.

mod embedded;
pub mod layout;

pub use embedded::EmbeddedManifestStore;

use async_trait::async_trait;
use std::sync::Arc;
use strata_format::{FormatError, Manifest};
use strata_objstore::StoreError;
use thiserror::Error;

/// Milliseconds since the Unix epoch (0 if the clock is before it). Manifests, WAL headers
/// and SST ids all carry times from this one clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Errors of the manifest store.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Someone else committed the version this commit wanted: re-read and decide again.
    #[error("manifest version {version} of partition {partition} was committed by someone else")]
    Conflict {
        /// Partition.
        partition: u32,
        /// The version that could not be created.
        version: u64,
    },
    /// The object store failed.
    #[error("manifest store: {0}")]
    Store(#[from] StoreError),
    /// A manifest object failed its checksum or could not be decoded.
    #[error("manifest object {path} is corrupt: {source}")]
    Corrupt {
        /// Object path.
        path: String,
        /// Decode error.
        source: FormatError,
    },
}

/// Result alias.
pub type ManifestResult<T> = Result<T, ManifestError>;

/// Where manifests live and how the latest one is found.
#[async_trait]
pub trait ManifestStore: Send + Sync + std::fmt::Debug + 'static {
    /// The latest committed manifest of `partition`, read from storage; `None` if it has none.
    async fn load_latest(&self, partition: u32) -> ManifestResult<Option<Arc<Manifest>>>;

    /// Commits `next` as the successor of `next.version - 1`. Fails with
    /// [`ManifestError::Conflict`] if that version already exists (someone else committed
    /// first); nothing is changed then.
    async fn commit(&self, partition: u32, next: &Manifest) -> ManifestResult<()>;

    /// A receiver that sees every manifest committed through this process's store handle, so
    /// in-process components (engine, compactor) learn of each other's commits without polling.
    fn subscribe(&self, partition: u32) -> tokio::sync::watch::Receiver<Option<Arc<Manifest>>>;
}
