//! Strata's engine: one partition's LSM tree on an object store.
//!
//! A [`Db`] is the whole write and read path of one partition: operations are sequenced by the
//! commit loop (`commit`), made durable in WAL segments (group commit, fenced by the writer's
//! epoch), applied to memtables (`memtable`), flushed to L0 SSTs (`flush`) and recorded in
//! manifests (through [`strata_manifest::ManifestStore`]); reads and [`Scanner`]s see a snapshot
//! of memtables and SSTs (`version`), blocks come through the [`strata_cache::BlockCache`];
//! WAL segments a flush made redundant are deleted (`wal_gc`); writes slow down before debt runs
//! away (`stall`); the participant side of cross-partition transactions (intents and locks)
//! lives in [`txn`]. Read replicas of a partition owned elsewhere are [`ReplicaRead`]s.
//!
//! The engine knows nothing of gRPC or etcd: the service layer (`strata-compute`) maps
//! [`EngineError`] to gRPC statuses, and the cluster layer hands the engine a manifest store and
//! a writer epoch. Compaction runs elsewhere (`strata-compactor`) and reaches the engine only
//! through committed manifests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use strata_cache::{BlockCache, CacheConfig};
//! use strata_engine::{Db, DbOptions};
//! use strata_manifest::{EmbeddedManifestStore, ManifestStore};
//! use strata_objstore::{LocalStore, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path())?);
//! let manifests: Arc<dyn ManifestStore> = Arc::new(EmbeddedManifestStore::new(store.clone()));
//! let cache = BlockCache::open(CacheConfig {
//!     memory_bytes: 64 << 20,
//!     disk_dir: None,
//!     disk_bytes: 0,
//! })
//! .await?;
//! let (db, _recovery) = Db::open(DbOptions::default(), store, manifests, cache).await?;
//! // A durable write: acknowledged once its WAL segment is in the store (fsynced here).
//! let version = db.put(Bytes::from("greeting"), Bytes::from("hello")).await?;
//! let (value, at) = db.get(b"greeting").await?.expect("just written");
//! assert_eq!((value.as_ref(), at), (&b"hello"[..], version));
//! db.close(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod commit;
mod db;
mod error;
mod flush;
mod lease;
mod lifecycle;
mod memtable;
mod metrics;
mod replica;
mod scan;
mod seqs;
mod sst_reader;
mod stall;
pub mod txn;
mod version;
mod wal_gc;

pub use commit::{Cond, Op, OpOutcome, WriteOp};
pub use db::{
    store_uid, Db, DbOptions, DbStats, RecoveryReport, MAX_SNAPSHOT_AGE, READ_RESULT_OVERHEAD,
};
pub use error::{EngineError, EngineResult, Exhausted};
pub use lease::LeaseGuard;
pub use metrics::EngineMetrics;
pub use replica::{ReplicaRead, Replicas};
pub use scan::{prefix_end, Scanner};
pub use stall::StallLimits;

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest value, in bytes (a hard limit).
pub const MAX_VALUE_BYTES: usize = 1_048_576;
