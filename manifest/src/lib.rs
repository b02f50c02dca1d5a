//! The manifest store seam.
//!
//! A manifest is an immutable object describing one partition's durable state: its SSTs by
//! level, and the WAL segment recovery must replay from. Each change writes a new version.
//! [`ManifestStore`] hides where the pointer to the latest version lives: in embedded mode it
//! is the object store itself (version N+1 is created with a conditional put, so two writers
//! can never both commit N+1); in a cluster (the `etcd` module, behind the `etcd` feature) the bodies stay in the object store
//! and etcd holds the pointer, swung in transactions guarded by the owner's writer epoch.

mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod layout;
pub mod ring;

pub use embedded::EmbeddedManifestStore;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdManifestStore, EtcdSettings, EtcdTls, EtcdUser};

use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use strata_format::{FormatError, Manifest};
use strata_objstore::StoreError;
use thiserror::Error;

/// Milliseconds since the Unix epoch (0 if the clock is before it). Manifests, WAL headers
/// and SST ids all carry times from this one clock.
pub fn now_ms() -> u64 {
    strata_clock::system_unix_ms()
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
    /// The commit would install or build on a writer epoch that does not own the partition
    /// (any more): the writer was deposed and must stop.
    #[error("partition {partition}: writer epoch {epoch:x} does not own it (deposed)")]
    NotOwner {
        /// Partition.
        partition: u32,
        /// The epoch that tried to commit.
        epoch: u64,
    },
    /// etcd could not be reached or answered an error; the outcome is unknown.
    #[error("etcd: {0}")]
    Etcd(String),
    /// A manifest about to be committed breaks an invariant of the tree
    /// ([`Manifest::validate`]): a bug in whoever built it. Nothing was written.
    #[error("partition {partition}: refusing to commit an invalid manifest: {source}")]
    Invalid {
        /// Partition.
        partition: u32,
        /// What is wrong (names the manifest version).
        source: FormatError,
    },
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

/// `m` encoded for storage, once it passed [`Manifest::validate`]: every manifest commit goes
/// through here, so an invalid tree is refused before anything is written.
pub fn encode_valid(partition: u32, m: &Manifest) -> ManifestResult<bytes::Bytes> {
    m.validate()
        .map_err(|source| ManifestError::Invalid { partition, source })?;
    Ok(strata_format::encode_manifest(m))
}

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

/// In-process subscribers to each partition's latest manifest.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    senders: Mutex<HashMap<u32, tokio::sync::watch::Sender<Option<Arc<Manifest>>>>>,
}

impl Watchers {
    fn sender(&self, partition: u32) -> tokio::sync::watch::Sender<Option<Arc<Manifest>>> {
        self.senders
            .lock()
            .entry(partition)
            .or_insert_with(|| tokio::sync::watch::channel(None).0)
            .clone()
    }

    /// Publishes `m` unless a newer version was published already.
    pub(crate) fn publish(&self, partition: u32, m: Arc<Manifest>) {
        self.sender(partition).send_if_modified(|cur| {
            let newer = cur.as_ref().is_none_or(|c| c.version < m.version);
            if newer {
                *cur = Some(m.clone());
            }
            newer
        });
    }

    pub(crate) fn subscribe(
        &self,
        partition: u32,
    ) -> tokio::sync::watch::Receiver<Option<Arc<Manifest>>> {
        self.sender(partition).subscribe()
    }
}
