//! The manifest pointers (`P/manifests/{p:05}`) and [`EtcdManifestStore`], which commits
//! manifests by swinging them, guarded by the writer epoch (`P/epochs/{p:05}`) or the
//! owner's tenure (`P/owners/{p:05}`); a partition split also writes `P/partmap`.

use super::{unavailable, Etcd};
use crate::layout::manifest_prefix;
use crate::{ManifestError, ManifestResult, ManifestStore, Watchers};
use async_trait::async_trait;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use strata_format::{decode_manifest, Manifest};
use strata_objstore::{PutMode, Store};
use tokio::sync::watch;

/// The manifest pointer's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pointer {
    pub(super) version: u64,
    pub(super) path: String,
}

/// What this process holds, which decides how it may commit manifests.
#[derive(Debug, Default)]
struct Tenures {
    /// Partition -> creation revision of our owner key.
    owned: HashMap<u32, i64>,
}

/// Manifests in the object store, pointed to from etcd; commits guarded by ownership epochs.
#[derive(Debug)]
pub struct EtcdManifestStore {
    etcd: Etcd,
    store: Arc<dyn Store>,
    /// Our node's lease (0: none), under which we put epoch keys.
    lease: AtomicI64,
    tenures: Mutex<Tenures>,
    watchers: Watchers,
}

impl EtcdManifestStore {
    /// A manifest store of the cluster `etcd` with bodies in `store`.
    pub fn new(etcd: Etcd, store: Arc<dyn Store>) -> Self {
        EtcdManifestStore {
            etcd,
            store,
            lease: AtomicI64::new(0),
            tenures: Mutex::new(Tenures::default()),
            watchers: Watchers::default(),
        }
    }

    /// The etcd handle.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Sets the lease under which this node installs epochs.
    pub fn set_lease(&self, lease: i64) {
        self.lease.store(lease, Ordering::SeqCst);
    }

    /// Records that we own `p` with the owner key created at `create_revision`: commits
    /// that install a new writer epoch for `p` are then allowed while that key exists.
    pub fn set_owned(&self, p: u32, create_revision: i64) {
        self.tenures.lock().owned.insert(p, create_revision);
    }

    /// Forgets our ownership of `p`.
    pub fn clear_owned(&self, p: u32) {
        self.tenures.lock().owned.remove(&p);
    }

    fn unique_path(p: u32, version: u64) -> String {
        format!(
            "{}{version:020}-{:016x}.manifest",
            manifest_prefix(p),
            strata_clock::unique_u64()
        )
    }

    /// Installs the first manifest (`m.version` 1) of partition `p` of a keyspace being
    /// restored: the body, then the pointer, created only if the partition has none. Restore
    /// runs before any node of the new keyspace starts; the node that then owns `p` takes
    /// over with a new epoch as after any failover. Returns false if `p` already had one.
    pub async fn install_restored(&self, p: u32, m: &Manifest) -> ManifestResult<bool> {
        let e = &self.etcd;
        let path = Self::unique_path(p, m.version);
        let ptr = serde_json::to_vec(&Pointer {
            version: m.version,
            path: path.clone(),
        })
        .map_err(|err| unavailable("encode manifest pointer", err))?;
        self.store
            .put(&path, crate::encode_valid(p, m)?, PutMode::Create)
            .await?;
        let resp = e
            .client
            .clone()
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        e.pointer_key(p),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([TxnOp::put(e.pointer_key(p), ptr, None)]),
            )
            .await
            .map_err(|err| unavailable("install a restored manifest pointer", err))?;
        Ok(resp.succeeded())
    }

    /// Splits partition `parent`: installs `map` (in which `child` serves part of the
    /// parent's old range) and `child`'s first manifest, in one transaction that holds only if
    /// the partition map is still the one the split was planned on (`map_revision`, 0 = never
    /// written) and we still own `parent` (`tenure`). Returns the etcd revision of the new
    /// map if it committed; on `None` nothing changed (the child's manifest body stays
    /// unreferenced).
    pub async fn commit_split(
        &self,
        parent: u32,
        tenure: i64,
        map_revision: i64,
        map: &strata_format::PartitionMap,
        child: u32,
        child_manifest: &Manifest,
    ) -> ManifestResult<Option<i64>> {
        let e = &self.etcd;
        let path = Self::unique_path(child, child_manifest.version);
        let ptr = serde_json::to_vec(&Pointer {
            version: child_manifest.version,
            path: path.clone(),
        })
        .map_err(|err| unavailable("encode manifest pointer", err))?;
        let body = serde_json::to_vec(map.ranges())
            .map_err(|err| unavailable("encode partition map", err))?;
        self.store
            .put(
                &path,
                crate::encode_valid(child, child_manifest)?,
                PutMode::Create,
            )
            .await?;
        let map_key = e.key("partmap");
        let compares = vec![
            if map_revision == 0 {
                Compare::create_revision(map_key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(map_key.clone(), CompareOp::Equal, map_revision)
            },
            Compare::create_revision(e.owner_key(parent), CompareOp::Equal, tenure),
            Compare::create_revision(e.pointer_key(child), CompareOp::Equal, 0),
        ];
        let ops = vec![
            TxnOp::put(map_key, body, None),
            TxnOp::put(e.pointer_key(child), ptr, None),
        ];
        let resp = e
            .client
            .clone()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|err| unavailable("commit partition split", err))?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Pointer, epoch and owner keys of `p` in one read.
    async fn read_keys(&self, p: u32) -> ManifestResult<Keys> {
        let e = &self.etcd;
        let txn = Txn::new().and_then([
            TxnOp::get(e.pointer_key(p), None),
            TxnOp::get(e.epoch_key(p), None),
            TxnOp::get(e.owner_key(p), None),
        ]);
        let resp = e
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|err| unavailable("read manifest pointer", err))?;
        let mut keys = Keys::default();
        for (i, r) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(g) = r else { continue };
            let Some(kv) = g.kvs().first() else { continue };
            match i {
                0 => {
                    let ptr: Pointer = serde_json::from_slice(kv.value())
                        .map_err(|err| unavailable("decode manifest pointer", err))?;
                    keys.pointer = Some((ptr, kv.mod_revision()));
                }
                1 => keys.epoch = kv.value_str().ok().and_then(|s| s.parse().ok()),
                _ => keys.owner_create_revision = Some(kv.create_revision()),
            }
        }
        Ok(keys)
    }
}

#[derive(Debug, Default)]
struct Keys {
    pointer: Option<(Pointer, i64)>,
    epoch: Option<u64>,
    owner_create_revision: Option<i64>,
}

#[async_trait]
impl ManifestStore for EtcdManifestStore {
    async fn load_latest(&self, partition: u32) -> ManifestResult<Option<Arc<Manifest>>> {
        let keys = self.read_keys(partition).await?;
        let Some((ptr, _)) = keys.pointer else {
            return Ok(None);
        };
        let data = self.store.get(&ptr.path).await?;
        let m = decode_manifest(&data).map_err(|source| ManifestError::Corrupt {
            path: ptr.path.clone(),
            source,
        })?;
        if m.version != ptr.version {
            return Err(ManifestError::Corrupt {
                path: ptr.path,
                source: strata_format::FormatError::Corrupt {
                    what: "manifest",
                    detail: format!(
                        "etcd points at version {} but the object holds {}",
                        ptr.version, m.version
                    ),
                },
            });
        }
        let m = Arc::new(m);
        self.watchers.publish(partition, m.clone());
        Ok(Some(m))
    }

    async fn commit(&self, partition: u32, next: &Manifest) -> ManifestResult<()> {
        let p = partition;
        let keys = self.read_keys(p).await?;
        let current = keys
            .pointer
            .as_ref()
            .map(|(ptr, _)| ptr.version)
            .unwrap_or(0);
        if current + 1 != next.version {
            return Err(ManifestError::Conflict {
                partition: p,
                version: next.version,
            });
        }
        let e = &self.etcd;
        let mut compares = vec![match &keys.pointer {
            Some((_, rev)) => Compare::mod_revision(e.pointer_key(p), CompareOp::Equal, *rev),
            None => Compare::create_revision(e.pointer_key(p), CompareOp::Equal, 0),
        }];
        let path = Self::unique_path(p, next.version);
        let ptr = serde_json::to_vec(&Pointer {
            version: next.version,
            path: path.clone(),
        })
        .map_err(|err| unavailable("encode manifest pointer", err))?;
        let mut ops = vec![TxnOp::put(e.pointer_key(p), ptr, None)];
        if keys.epoch == Some(next.writer_epoch) {
            // The installed epoch's owner, or a compactor building on its manifest.
            compares.push(Compare::value(
                e.epoch_key(p),
                CompareOp::Equal,
                next.writer_epoch.to_string(),
            ));
        } else {
            // Installing a new epoch: only the owner of the partition may.
            let tenure = self.tenures.lock().owned.get(&p).copied();
            let lease = self.lease.load(Ordering::SeqCst);
            match tenure {
                Some(rev) if keys.owner_create_revision == Some(rev) && lease != 0 => {
                    compares.push(Compare::create_revision(
                        e.owner_key(p),
                        CompareOp::Equal,
                        rev,
                    ));
                    ops.push(TxnOp::put(
                        e.epoch_key(p),
                        next.writer_epoch.to_string(),
                        Some(PutOptions::new().with_lease(lease)),
                    ));
                }
                _ => {
                    return Err(ManifestError::NotOwner {
                        partition: p,
                        epoch: next.writer_epoch,
                    })
                }
            }
        }
        // The body first: the pointer may only ever name an object that exists.
        self.store
            .put(&path, crate::encode_valid(p, next)?, PutMode::Create)
            .await?;
        let resp = e
            .client
            .clone()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|err| unavailable("swing manifest pointer", err))?;
        if !resp.succeeded() {
            // Either the pointer moved (a racing commit) or our epoch/tenure is gone; the
            // caller re-reads and finds out which. The body stays unreferenced (GC's job).
            let again = self.read_keys(p).await?;
            let moved = again
                .pointer
                .as_ref()
                .map(|(ptr, _)| ptr.version)
                .unwrap_or(0)
                != current;
            return Err(if moved {
                ManifestError::Conflict {
                    partition: p,
                    version: next.version,
                }
            } else {
                ManifestError::NotOwner {
                    partition: p,
                    epoch: next.writer_epoch,
                }
            });
        }
        self.watchers.publish(p, Arc::new(next.clone()));
        Ok(())
    }

    fn subscribe(&self, partition: u32) -> watch::Receiver<Option<Arc<Manifest>>> {
        self.watchers.subscribe(partition)
    }
}
