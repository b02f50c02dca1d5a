//! Who may write what: partition ownership (`P/owners/{p:05}`, with the writer epoch at
//! `P/epochs/{p:05}`) and compaction claims (`P/compaction/{p:05}`), all under leases.

use super::{unavailable, Etcd};
use crate::ManifestResult;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

/// The owner of a partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnerInfo {
    /// Owning node.
    pub node: String,
    /// Its gRPC address.
    pub addr: String,
}

/// An owner key as read: who, and the key's creation revision (which changes whenever the
/// key is re-created, so it identifies one tenure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// The owner.
    pub owner: OwnerInfo,
    /// Creation revision of the owner key.
    pub create_revision: i64,
    /// The writer epoch the owner installed, if it has opened the partition.
    pub epoch: Option<u64>,
}

impl Etcd {
    /// Claims the compaction of partition `p` for `worker` (under its lease) if nobody holds
    /// it. Returns the claim's creation revision, or `None` if another worker holds it.
    pub async fn claim_compaction(
        &self,
        p: u32,
        worker: &str,
        lease: i64,
    ) -> ManifestResult<Option<i64>> {
        let key = self.key(&format!("compaction/{p:05}"));
        self.claim_key(key, worker, lease, "claim compaction").await
    }

    /// Gives up the compaction claim on `p` created at `create_revision` (if still ours).
    pub async fn release_compaction(&self, p: u32, create_revision: i64) -> ManifestResult<bool> {
        let key = self.key(&format!("compaction/{p:05}"));
        self.release_key(key, create_revision, "release compaction")
            .await
    }

    /// Takes ownership of `p` if nobody holds it. Returns the owner key's creation revision
    /// (our tenure), or `None` if someone else owns it.
    pub async fn acquire(
        &self,
        p: u32,
        owner: &OwnerInfo,
        lease: i64,
    ) -> ManifestResult<Option<i64>> {
        let key = self.owner_key(p);
        let body = serde_json::to_vec(owner).map_err(|e| unavailable("encode owner", e))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                body,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("acquire partition", e))?;
        if !resp.succeeded() {
            return Ok(None);
        }
        // The put is the only write of the transaction: the key was created at its revision.
        Ok(Some(resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Gives up ownership of `p` if we still hold the tenure `create_revision`. The epoch key
    /// goes with it, so nothing built on our epoch commits afterwards.
    pub async fn release(&self, p: u32, create_revision: i64) -> ManifestResult<bool> {
        let key = self.owner_key(p);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                create_revision,
            )])
            .and_then([
                TxnOp::delete(key, None),
                TxnOp::delete(self.epoch_key(p), None),
            ]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("release partition", e))?;
        Ok(resp.succeeded())
    }
}
