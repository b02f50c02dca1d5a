//! Cross-partition transaction records (`P-txns/{id}`), beside the cluster prefix: the
//! record is the transaction's commit point.

use super::{unavailable, Etcd};
use crate::ManifestResult;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

/// The state of a cross-partition transaction: its record in etcd is the commit point.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    /// Created; participants may hold prepared intents. Moves exactly once, to one of:
    Pending,
    /// Decided: every participant applies its intent.
    Committed,
    /// Decided: every participant drops its intent.
    Aborted,
}

/// A cross-partition transaction's record (`{prefix}-txns/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxnRecord {
    pub state: TxnState,
    /// Participating partitions.
    pub partitions: Vec<u32>,
    /// Coordinating node.
    pub coordinator: String,
    pub created_ms: u64,
}

impl Etcd {
    /// Transaction records live beside the cluster prefix, not under it: the watch and the
    /// full-state reads every node does on membership changes never see them.
    fn txn_prefix(&self) -> String {
        format!("{}-txns/", self.prefix)
    }

    fn txn_key(&self, id: &str) -> String {
        format!("{}{id}", self.txn_prefix())
    }

    /// Every transaction record: (id, record).
    pub async fn txn_list(&self) -> ManifestResult<Vec<(String, TxnRecord)>> {
        Ok(self
            .list_under(self.txn_prefix(), "list txn records")
            .await?
            .into_iter()
            .filter_map(|(id, v)| Some((id, serde_json::from_slice(&v).ok()?)))
            .collect())
    }

    /// Creates a transaction's record (state pending). Fails if the id exists.
    pub async fn txn_begin(&self, id: &str, rec: &TxnRecord) -> ManifestResult<()> {
        let body = serde_json::to_vec(rec).map_err(|e| unavailable("encode txn record", e))?;
        self.create_record(self.txn_key(id), body, "create txn record")
            .await
    }

    /// A transaction's record and its modification revision, if it exists.
    pub async fn txn_get(&self, id: &str) -> ManifestResult<Option<(TxnRecord, i64)>> {
        let r = self
            .client
            .clone()
            .get(self.txn_key(id), None)
            .await
            .map_err(|e| unavailable("read txn record", e))?;
        match r.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some((
                serde_json::from_slice(kv.value())
                    .map_err(|e| unavailable("decode txn record", format!("{id}: {e}")))?,
                kv.mod_revision(),
            ))),
        }
    }

    /// Decides a pending transaction: swings its record from pending to `decision` in one
    /// compare-and-swap, unless it was already decided. Returns the outcome that holds (the
    /// one already recorded, if any), or `None` if there is no record.
    ///
    /// Coordinator (commit or abort) and participants recovering after a silent coordinator
    /// (abort) race only through this: exactly one decision is ever recorded.
    pub async fn txn_decide(
        &self,
        id: &str,
        decision: TxnState,
    ) -> ManifestResult<Option<TxnState>> {
        let key = self.txn_key(id);
        loop {
            let Some((mut rec, rev)) = self.txn_get(id).await? else {
                return Ok(None);
            };
            if rec.state != TxnState::Pending {
                return Ok(Some(rec.state));
            }
            rec.state = decision;
            let body = serde_json::to_vec(&rec).map_err(|e| unavailable("encode txn record", e))?;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key.clone(), body, None)]);
            let resp = self
                .client
                .clone()
                .txn(txn)
                .await
                .map_err(|e| unavailable("decide txn", e))?;
            if resp.succeeded() {
                return Ok(Some(decision));
            }
        }
    }

    /// Deletes a transaction's record (once every participant resolved it).
    pub async fn txn_delete(&self, id: &str) -> ManifestResult<()> {
        self.client
            .clone()
            .delete(self.txn_key(id), None)
            .await
            .map_err(|e| unavailable("delete txn record", e))?;
        Ok(())
    }
}
