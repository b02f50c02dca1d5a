//! The etcd manifest store against a real etcd (infra/etcd.sh) and the in-memory object store:
//! the manifest pointer moves only under the partition owner's epoch (invariant 2 of DESIGN.md).
//!
//! - the owner installs its epoch with its tenure (owner key creation revision), then commits
//!   under that epoch; a compactor-like committer building on the owner's manifest commits too;
//! - a committer with another epoch and no tenure gets `NotOwner`, a stale base gets `Conflict`;
//! - once the owner's lease is gone, nothing built on its epoch commits any more, and a new
//!   owner installs its own epoch.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper that fails panics with the failure"
)]

use std::sync::Arc;
use strata_format::Manifest;
use strata_manifest::etcd::{Etcd as EtcdKeys, OwnerInfo};
use strata_manifest::{EtcdManifestStore, EtcdSettings, ManifestError, ManifestStore};
use strata_objstore::{open_store, RetryPolicy, S3Settings, Store, StoreConfig};
use strata_testkit::infra::Etcd;

fn memory_store() -> Arc<dyn Store> {
    open_store(&StoreConfig {
        url: "memory://".into(),
        s3: S3Settings::default(),
        retry: RetryPolicy::default(),
    })
    .expect("memory store")
    .0
}

fn manifest(version: u64, epoch: u64) -> Manifest {
    Manifest {
        version,
        writer_epoch: epoch,
        wal_replay_from: 1,
        next_sst_id: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_pointers_move_only_under_the_owners_epoch() {
    let Some(etcd) = Etcd::start() else { return };
    let settings = EtcdSettings::new(vec![etcd.endpoint.clone()]);
    let keys = EtcdKeys::connect(&settings).await.expect("connect");
    let store = memory_store();
    const P: u32 = 3;

    // Node A: lease, owner key, and its manifest store knowing its tenure.
    let (lease_a, _) = keys.grant_lease(2).await.expect("lease");
    let a = EtcdManifestStore::new(keys.clone(), store.clone());
    a.set_lease(lease_a);
    let owner = |n: &str| OwnerInfo {
        node: n.into(),
        addr: format!("{n}:1"),
    };
    let tenure_a = keys
        .acquire(P, &owner("a"), lease_a)
        .await
        .expect("acquire")
        .expect("free partition");
    assert_eq!(
        keys.acquire(P, &owner("b"), lease_a)
            .await
            .expect("acquire"),
        None,
        "a partition has one owner"
    );
    // Without its tenure registered even the owner cannot install an epoch.
    let err = a.commit(P, &manifest(1, 0)).await.unwrap_err();
    assert!(matches!(err, ManifestError::NotOwner { .. }), "{err}");
    a.set_owned(P, tenure_a);
    a.commit(P, &manifest(1, 0)).await.expect("init");
    a.commit(P, &manifest(2, 0xa))
        .await
        .expect("claim with epoch a");
    a.commit(P, &manifest(3, 0xa))
        .await
        .expect("commit under epoch a");
    assert_eq!(a.load_latest(P).await.unwrap().unwrap().version, 3);

    // Another process (a compactor) building on A's manifest commits; one with a stale base
    // conflicts; one with a foreign epoch and no tenure is refused.
    let c = EtcdManifestStore::new(keys.clone(), store.clone());
    c.commit(P, &manifest(4, 0xa))
        .await
        .expect("compactor on epoch a");
    let err = c.commit(P, &manifest(4, 0xa)).await.unwrap_err();
    assert!(matches!(err, ManifestError::Conflict { .. }), "{err}");
    let err = c.commit(P, &manifest(5, 0xb)).await.unwrap_err();
    assert!(matches!(err, ManifestError::NotOwner { .. }), "{err}");

    // A's lease ends (it died): its owner and epoch keys go with it. Nothing on epoch a
    // commits any more, not even from A's own store.
    keys.revoke(lease_a).await.expect("revoke");
    let err = a.commit(P, &manifest(5, 0xa)).await.unwrap_err();
    assert!(matches!(err, ManifestError::NotOwner { .. }), "{err}");
    let err = c.commit(P, &manifest(5, 0xa)).await.unwrap_err();
    assert!(matches!(err, ManifestError::NotOwner { .. }), "{err}");

    // B takes over and installs its epoch on top of the latest manifest.
    let (lease_b, _) = keys.grant_lease(2).await.expect("lease");
    let b = EtcdManifestStore::new(keys.clone(), store.clone());
    b.set_lease(lease_b);
    let tenure_b = keys
        .acquire(P, &owner("b"), lease_b)
        .await
        .expect("acquire")
        .expect("free after A's lease ended");
    b.set_owned(P, tenure_b);
    b.commit(P, &manifest(5, 0xb))
        .await
        .expect("claim with epoch b");
    // A stale tenure (A's, recorded before) does not let A back in.
    let err = a.commit(P, &manifest(6, 0xa)).await.unwrap_err();
    assert!(matches!(err, ManifestError::NotOwner { .. }), "{err}");
    let latest = b.load_latest(P).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.writer_epoch), (5, 0xb));

    let view = keys.view().await.expect("view");
    assert_eq!(view.owners[&P].owner.node, "b");
    assert_eq!(view.owners[&P].epoch, Some(0xb));
    assert_eq!(view.manifests[&P], 5);
}

/// Cluster-wide compaction settings are written only over the revision they were read at:
/// of two concurrent `ctl compaction set`, the later write fails instead of dropping the
/// other's fields.
#[tokio::test(flavor = "multi_thread")]
async fn compaction_settings_are_compare_and_set() {
    use strata_manifest::etcd::CompactionSettings;
    let Some(etcd) = Etcd::start() else { return };
    let keys = EtcdKeys::connect(&EtcdSettings::new(vec![etcd.endpoint.clone()]))
        .await
        .expect("connect");
    let a = CompactionSettings {
        strategy: Some("size-tiered".into()),
        ..Default::default()
    };
    assert!(keys
        .set_compaction_settings(Some(&a), Some(0))
        .await
        .unwrap());
    // Absent was the condition: now it is there.
    assert!(!keys
        .set_compaction_settings(Some(&a), Some(0))
        .await
        .unwrap());
    let rev = keys.view().await.unwrap().compaction_settings.unwrap().1;
    let b = CompactionSettings {
        subcompactions: Some(4),
        ..a.clone()
    };
    assert!(keys
        .set_compaction_settings(Some(&b), Some(rev))
        .await
        .unwrap());
    // A writer that read before b landed loses.
    assert!(!keys
        .set_compaction_settings(Some(&a), Some(rev))
        .await
        .unwrap());
    assert_eq!(
        keys.compaction_settings().await.unwrap(),
        Some(Ok(b.clone()))
    );
    assert!(keys.set_compaction_settings(None, None).await.unwrap());
    assert_eq!(keys.compaction_settings().await.unwrap(), None);
}
