//! Cluster settings: `P/config` (the partition count, created once) and
//! `P/compaction-settings` (the cluster's compaction settings); `P/partmap` too when a
//! restored cluster is initialised with its partition map.

use super::{unavailable, Etcd};
use crate::ManifestResult;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Cluster-wide settings fixed when the cluster is created.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Number of hash-range partitions.
    pub partitions: u32,
}

/// Compaction settings of the whole cluster (`strata ctl compaction set`), stored in etcd so
/// that every compactor worker runs the same ones: each field set here overrides the workers'
/// own flag of the same name. Validated by the ctl command and again by each worker (a
/// setting a worker cannot apply leaves it on its flags, with a warning).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompactionSettings {
    /// `--compaction-strategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// `--compaction-strategy-for P=S`, per partition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub strategy_for: BTreeMap<u32, String>,
    /// `--compaction-window-secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// `--subcompactions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcompactions: Option<u64>,
    /// `--snapshot-every-secs` (0: no schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_every_secs: Option<u64>,
    /// `--snapshot-keep-secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_keep_secs: Option<u64>,
}

impl Etcd {
    /// The cluster config, creating it with `partitions` if the cluster is new. An existing
    /// cluster keeps its own partition count whatever `partitions` says.
    pub async fn init_config(&self, partitions: u32) -> ManifestResult<ClusterConfig> {
        let key = self.key("config");
        let want = ClusterConfig { partitions };
        let body = serde_json::to_vec(&want).map_err(|e| unavailable("encode config", e))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), body, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("init config", e))?;
        if resp.succeeded() {
            return Ok(want);
        }
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                if let Some(kv) = g.kvs().first() {
                    return serde_json::from_slice(kv.value())
                        .map_err(|e| unavailable("decode config", e));
                }
            }
        }
        Err(unavailable("init config", "config key vanished"))
    }

    /// Writes a new cluster's config together with its partition map (a keyspace restored
    /// from a snapshot taken after splits), in one transaction and only if the prefix has no
    /// config yet. `false` if it had one.
    pub async fn init_config_with_map(
        &self,
        partitions: u32,
        ranges: &[(u64, u32)],
    ) -> ManifestResult<bool> {
        let key = self.key("config");
        let body = serde_json::to_vec(&ClusterConfig { partitions })
            .map_err(|e| unavailable("encode config", e))?;
        let map = serde_json::to_vec(ranges).map_err(|e| unavailable("encode partition map", e))?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(self.key("partmap"), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key, body, None),
                TxnOp::put(self.key("partmap"), map, None),
            ]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("init config and partition map", e))?;
        Ok(resp.succeeded())
    }

    /// The cluster's compaction settings alone (what `view` would show of them).
    pub async fn compaction_settings(
        &self,
    ) -> ManifestResult<Option<Result<CompactionSettings, String>>> {
        let r = self
            .client
            .clone()
            .get(self.key("compaction-settings"), None)
            .await
            .map_err(|e| unavailable("read compaction settings", e))?;
        Ok(r.kvs().first().map(|kv| {
            serde_json::from_slice::<CompactionSettings>(kv.value())
                .map_err(|e| format!("unreadable compaction settings: {e}"))
        }))
    }

    /// Replaces the cluster's compaction settings (`None`: removes them, back to each
    /// worker's flags). With `if_revision`, only if the key's modification revision is still
    /// that (0: the key is absent); `false` if it changed.
    pub async fn set_compaction_settings(
        &self,
        settings: Option<&CompactionSettings>,
        if_revision: Option<i64>,
    ) -> ManifestResult<bool> {
        let key = self.key("compaction-settings");
        let op = match settings {
            Some(s) => {
                let body = serde_json::to_vec(s).map_err(|e| unavailable("encode settings", e))?;
                TxnOp::put(key.clone(), body, None)
            }
            None => TxnOp::delete(key.clone(), None),
        };
        let guard: Vec<Compare> = match if_revision {
            None => Vec::new(),
            Some(0) => vec![Compare::create_revision(key, CompareOp::Equal, 0)],
            Some(rev) => vec![Compare::mod_revision(key, CompareOp::Equal, rev)],
        };
        let resp = self
            .client
            .clone()
            .txn(Txn::new().when(guard).and_then([op]))
            .await
            .map_err(|e| unavailable("write compaction settings", e))?;
        Ok(resp.succeeded())
    }
}
