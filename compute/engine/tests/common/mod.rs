//! Helpers shared by the engine's integration tests.
#![allow(
    dead_code,
    reason = "each test crate that includes these helpers uses some of them"
)]

use bytes::Bytes;
use std::sync::Arc;
use strata_cache::{BlockCache, CacheConfig};
use strata_engine::{Cond, Db, DbOptions, Op, RecoveryReport, WriteOp};
use strata_manifest::{EmbeddedManifestStore, ManifestStore};
use strata_objstore::{FaultInjecting, Faults, LocalStore, Store};

pub async fn open(dir: &std::path::Path, opts: DbOptions) -> Db {
    open_on(Arc::new(LocalStore::open(dir).unwrap()), opts).await
}

pub async fn open_on(store: Arc<dyn Store>, opts: DbOptions) -> Db {
    open_reporting(store, opts).await.0
}

/// Opens on `store` and returns what recovery found too.
pub async fn open_reporting(store: Arc<dyn Store>, opts: DbOptions) -> (Db, RecoveryReport) {
    let manifests: Arc<dyn ManifestStore> = Arc::new(EmbeddedManifestStore::new(store.clone()));
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: 8 << 20,
        disk_dir: None,
        disk_bytes: 0,
    })
    .await
    .unwrap();
    Db::open(opts, store, manifests, cache).await.unwrap()
}

/// A local store under `dir` behind a fault injector, and the handle that controls it.
pub fn faulty(dir: &std::path::Path) -> (Arc<dyn Store>, Faults) {
    let faults = Faults::default();
    let local: Arc<dyn Store> = Arc::new(LocalStore::open(dir).unwrap());
    (Arc::new(FaultInjecting::new(local, faults.clone())), faults)
}

pub fn put(key: &str, value: &str, cond: Cond) -> WriteOp {
    WriteOp {
        key: Bytes::copy_from_slice(key.as_bytes()),
        op: Op::Put {
            value: Bytes::copy_from_slice(value.as_bytes()),
            ttl_ms: 0,
        },
        cond,
    }
}
