//! The cluster's control plane in etcd: node registry, partition ownership under leases,
//! writer epochs, and per partition a pointer to its current manifest object.
//!
//! Key layout under a cluster prefix `P` (default `/strata`):
//! - `P/config`              cluster config (partition count), created once, never changed
//! - `P/nodes/{node}`        a live node's address, under the node's lease
//! - `P/owners/{p:05}`       the owner of partition p, under the owner's lease
//! - `P/epochs/{p:05}`       the writer epoch that may commit p's manifests, under the owner's lease
//! - `P/manifests/{p:05}`    p's current manifest: version and object path (no lease)
//! - `P/drain/{node}`        present while an operator wants the node drained (no lease)
//! - `P/stats/{node}`        a node's published per-partition progress, under its lease
//!
//! Invariants:
//! - A manifest pointer moves only in a transaction that compares the pointer's revision
//!   (no lost update) and either the epoch key (the owner's writer epoch, or a compactor
//!   building on that owner's manifest) or the owner key's creation revision (the owner
//!   installing its new epoch). When the owner's lease expires, its owner and epoch keys
//!   vanish, so nothing built on its epoch can commit any more.
//! - Manifest bodies are immutable objects with a unique name per attempt: a commit whose
//!   transaction fails leaves an unreferenced object behind, never a half-visible one.

use crate::layout::manifest_prefix;
use crate::{ManifestError, ManifestResult, ManifestStore, Watchers};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_format::{decode_manifest, encode_manifest, Manifest};
use strata_objstore::{PutMode, Store};
use tokio::sync::watch;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster (several clusters can share one etcd).
    pub prefix: String,
    /// Deadline of every etcd request: a request to an etcd that is down fails after this
    /// instead of hanging.
    pub request_timeout: Duration,
}

impl EtcdSettings {
    /// Settings for the given endpoints with the default prefix and timeout.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdSettings {
            endpoints,
            prefix: "/strata".into(),
            request_timeout: Duration::from_secs(2),
        }
    }
}

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

/// A registered node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// gRPC address peers and clients use (`host:port`).
    pub addr: String,
    /// Start time, ms since the Unix epoch.
    pub started_ms: u64,
}

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

/// Progress of one partition as its owner publishes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Partition.
    pub partition: u32,
    /// Writer epoch.
    pub epoch: u64,
    /// Latest durable sequence number.
    pub durable_seq: u64,
    /// Latest sequence number in a flushed SST (the manifest's).
    pub flushed_seq: u64,
    /// Manifest version.
    pub manifest_version: u64,
    /// Bytes in memtables (not yet flushed).
    pub memtable_bytes: u64,
    /// Writes per second over the last publishing interval.
    #[serde(default)]
    pub writes_per_sec: u64,
    /// Files in L0.
    #[serde(default)]
    pub l0_files: u64,
    /// Files per level below L0 (`[L1, L2, …]`).
    #[serde(default)]
    pub level_files: Vec<u64>,
    /// Bytes of every SST of the current manifest.
    #[serde(default)]
    pub sst_bytes: u64,
    /// Bytes of the deepest non-empty level (about the live data once compacted).
    #[serde(default)]
    pub last_level_bytes: u64,
    /// Set when the owner cannot serve the partition because its stored data is corrupt
    /// (what failed, naming the object); the other fields are then zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<String>,
}

impl PartitionProgress {
    /// Read amplification of a point read that misses the memtables: how many SSTs it may
    /// have to consult (every L0 file, plus one per non-empty level).
    pub fn read_amplification(&self) -> u64 {
        self.l0_files + self.level_files.iter().filter(|&&n| n > 0).count() as u64
    }

    /// Space amplification, estimated as every SST byte over the bytes of the deepest
    /// non-empty level (which holds most live data once compacted, as RocksDB estimates
    /// it). 0 while nothing is below L0.
    pub fn space_amplification(&self) -> f64 {
        if self.last_level_bytes == 0 {
            0.0
        } else {
            self.sst_bytes as f64 / self.last_level_bytes as f64
        }
    }
}

/// Everything under the cluster prefix, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// etcd revision of the read.
    pub revision: i64,
    /// Cluster config, if the cluster was initialised.
    pub config: Option<ClusterConfig>,
    /// Live nodes by id.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Owners by partition.
    pub owners: BTreeMap<u32, Ownership>,
    /// Manifest versions by partition.
    pub manifests: BTreeMap<u32, u64>,
    /// Nodes an operator asked to drain.
    pub draining: Vec<String>,
    /// Published progress by node.
    pub stats: BTreeMap<String, Vec<PartitionProgress>>,
    /// Compactor workers registered (under their leases), by worker id.
    pub compactors: BTreeMap<String, CompactorInfo>,
    /// Compaction claims: partition -> (worker id, creation revision of the claim).
    pub compaction_claims: BTreeMap<u32, (String, i64)>,
    /// The partition map's ranges `(start hash, partition)` once a partition split, and the
    /// key's modification revision; `None` while the map is the uniform one of the config.
    pub partmap: Option<(Vec<(u64, u32)>, i64)>,
    /// The cluster's compaction settings and their key's modification revision (`None`:
    /// none set, workers use their flags). Unreadable settings read as `Err`.
    pub compaction_settings: Option<(Result<CompactionSettings, String>, i64)>,
}

impl ClusterView {
    /// The partition map in force (uniform over the configured count until a split), and the
    /// revision of the `partmap` key (0 while there is none). An unreadable map is an error:
    /// guessing could let two partitions serve one key.
    pub fn partition_map(&self) -> Result<(strata_format::PartitionMap, i64), String> {
        match (&self.partmap, &self.config) {
            (Some((r, rev)), _) => strata_format::PartitionMap::from_ranges(r.clone())
                .map(|m| (m, *rev))
                .map_err(|e| format!("partition map at revision {rev}: {e}")),
            (None, Some(c)) => Ok((strata_format::PartitionMap::uniform(c.partitions), 0)),
            (None, None) => Err("the cluster has no config yet".into()),
        }
    }

    /// [`ClusterView::partition_map`] for display: the uniform map when it cannot be read.
    pub fn partition_map_or_uniform(&self) -> strata_format::PartitionMap {
        self.partition_map().map(|(m, _)| m).unwrap_or_else(|_| {
            strata_format::PartitionMap::uniform(self.config.map_or(1, |c| c.partitions))
        })
    }
}

/// A registered compactor worker (`P/compactors/{id}`, under the worker's lease).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CompactorInfo {
    pub id: String,
    pub started_ms: u64,
    /// Totals since the worker started: compaction jobs committed, bytes read, bytes written.
    #[serde(default)]
    pub jobs: u64,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    /// Bytes of L0 files compacted: about what the nodes flushed, the base of write
    /// amplification.
    #[serde(default)]
    pub l0_bytes_in: u64,
    /// Wall time spent in jobs that merged data, milliseconds: `bytes_in / busy_millis` is
    /// the worker's compaction throughput.
    #[serde(default)]
    pub busy_millis: u64,
    /// Per partition this worker compacted: `[l0_bytes_in, bytes_out]`, the terms of
    /// [`CompactorInfo::partition_write_amplification`].
    #[serde(default)]
    pub partition_bytes: std::collections::BTreeMap<u32, [u64; 2]>,
}

impl CompactorInfo {
    /// Write amplification of the worker's compactions so far: bytes written by flushes
    /// (≈ L0 bytes compacted) plus by compactions, over the flushed bytes. 0 until known.
    pub fn write_amplification(&self) -> f64 {
        if self.l0_bytes_in == 0 {
            0.0
        } else {
            (self.l0_bytes_in + self.bytes_out) as f64 / self.l0_bytes_in as f64
        }
    }

    /// Write amplification of one partition's compactions by this worker, if it has any.
    pub fn partition_write_amplification(&self, p: u32) -> Option<f64> {
        let [l0, out] = *self.partition_bytes.get(&p)?;
        (l0 > 0).then(|| (l0 + out) as f64 / l0 as f64)
    }
}

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

/// A cross-partition transaction's record (`{prefix}/txns/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxnRecord {
    pub state: TxnState,
    /// Participating partitions.
    pub partitions: Vec<u32>,
    /// Coordinating node.
    pub coordinator: String,
    pub created_ms: u64,
}

/// The manifest pointer's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pointer {
    version: u64,
    path: String,
}

fn unavailable(op: &'static str, e: impl std::fmt::Display) -> ManifestError {
    ManifestError::Etcd(format!("{op}: {e}"))
}

/// A handle on the cluster's etcd keys. Cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Etcd {
    /// Connects (lazily: an etcd that is down makes requests fail, not this call hang).
    pub async fn connect(s: &EtcdSettings) -> ManifestResult<Self> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(s.request_timeout)
            .with_timeout(s.request_timeout)
            .with_keep_alive(Duration::from_secs(2), s.request_timeout)
            .with_keep_alive_while_idle(true);
        let client = tokio::time::timeout(
            s.request_timeout * 2,
            Client::connect(s.endpoints.clone(), Some(opts)),
        )
        .await
        .map_err(|_| unavailable("connect", format!("no answer from {:?}", s.endpoints)))?
        .map_err(|e| unavailable("connect", e))?;
        Ok(Etcd {
            client,
            prefix: s.prefix.trim_end_matches('/').to_string(),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn owner_key(&self, p: u32) -> String {
        self.key(&format!("owners/{p:05}"))
    }

    fn epoch_key(&self, p: u32) -> String {
        self.key(&format!("epochs/{p:05}"))
    }

    fn pointer_key(&self, p: u32) -> String {
        self.key(&format!("manifests/{p:05}"))
    }

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

    /// Grants a lease of `ttl_secs`; returns its id and granted TTL.
    pub async fn grant_lease(&self, ttl_secs: i64) -> ManifestResult<(i64, i64)> {
        let r = self
            .client
            .clone()
            .lease_grant(ttl_secs, None)
            .await
            .map_err(|e| unavailable("lease grant", e))?;
        Ok((r.id(), r.ttl()))
    }

    /// Renews a lease once; returns the remaining TTL in seconds (0: the lease is gone).
    pub async fn keep_alive(&self, lease: i64) -> ManifestResult<i64> {
        // etcd answers an expired (or revoked) lease with "lease not found", at whichever step
        // it notices: that is an answer (the lease is gone), not an outage.
        let gone = |e: &etcd_client::Error| e.to_string().contains("lease not found");
        let (mut keeper, mut stream) = match self.client.clone().lease_keep_alive(lease).await {
            Ok(ks) => ks,
            Err(e) if gone(&e) => return Ok(0),
            Err(e) => return Err(unavailable("lease keep-alive", e)),
        };
        match keeper.keep_alive().await {
            Ok(()) => {}
            Err(e) if gone(&e) => return Ok(0),
            Err(e) => return Err(unavailable("lease keep-alive", e)),
        }
        match stream.message().await {
            Ok(Some(r)) => Ok(r.ttl()),
            Ok(None) => Err(unavailable("lease keep-alive", "stream closed")),
            Err(e) if gone(&e) => Ok(0),
            Err(e) => Err(unavailable("lease keep-alive", e)),
        }
    }

    /// Revokes a lease: every key under it goes at once.
    pub async fn revoke(&self, lease: i64) -> ManifestResult<()> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| unavailable("lease revoke", e))?;
        Ok(())
    }

    /// Registers (or re-registers) a node under `lease`.
    pub async fn register(&self, node: &NodeInfo, lease: i64) -> ManifestResult<()> {
        self.put_under_lease(&format!("nodes/{}", node.id), node, lease, "register node")
            .await
    }

    /// Registers (or refreshes) a compactor worker under its lease.
    pub async fn register_compactor(&self, info: &CompactorInfo, lease: i64) -> ManifestResult<()> {
        self.put_under_lease(
            &format!("compactors/{}", info.id),
            info,
            lease,
            "register compactor",
        )
        .await
    }

    /// Puts `value` as JSON at `rest` under the cluster prefix, attached to `lease` (it
    /// vanishes with the lease).
    async fn put_under_lease<T: Serialize>(
        &self,
        rest: &str,
        value: &T,
        lease: i64,
        what: &'static str,
    ) -> ManifestResult<()> {
        let body = serde_json::to_vec(value).map_err(|e| unavailable(what, e))?;
        self.client
            .clone()
            .put(
                self.key(rest),
                body,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(())
    }

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

    /// Creates `key` = `holder` under `lease` if it does not exist: its creation revision,
    /// or `None` if it exists.
    async fn claim_key(
        &self,
        key: String,
        holder: &str,
        lease: i64,
        what: &'static str,
    ) -> ManifestResult<Option<i64>> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                holder,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Deletes `key` if its creation revision is `create_revision` (a claim still ours).
    async fn release_key(
        &self,
        key: String,
        create_revision: i64,
        what: &'static str,
    ) -> ManifestResult<bool> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                create_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(resp.succeeded())
    }

    /// Claims the cluster-wide task `name` (a snapshot schedule, an export job) for `holder`
    /// under its lease, if nobody holds it. Returns the claim's creation revision, or `None`
    /// if someone else holds it. A holder that dies loses the claim with its lease.
    pub async fn claim_task(
        &self,
        name: &str,
        holder: &str,
        lease: i64,
    ) -> ManifestResult<Option<i64>> {
        self.claim_key(self.task_key(name), holder, lease, "claim task")
            .await
    }

    /// Whether the claim on task `name` created at `create_revision` still exists.
    pub async fn task_held(&self, name: &str, create_revision: i64) -> ManifestResult<bool> {
        let r = self
            .client
            .clone()
            .get(self.task_key(name), None)
            .await
            .map_err(|e| unavailable("read task claim", e))?;
        Ok(r.kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == create_revision))
    }

    /// Gives up the claim on task `name` created at `create_revision` (if still ours).
    pub async fn release_task(&self, name: &str, create_revision: i64) -> ManifestResult<bool> {
        self.release_key(self.task_key(name), create_revision, "release task")
            .await
    }

    // Task claims and job records live beside the cluster prefix (`{prefix}-tasks/`,
    // `{prefix}-jobs/`), like transaction records: a job's progress updates must not wake
    // every node's watch on the cluster, nor grow its view.
    fn task_key(&self, name: &str) -> String {
        format!("{}-tasks/{name}", self.prefix)
    }

    fn job_key(&self, kind: &str, id: &str) -> String {
        format!("{}-jobs/{kind}/{id}", self.prefix)
    }

    /// Job records (small JSON documents; etcd is not for bulk data).
    /// Creates the record; fails if the id exists.
    pub async fn job_create(&self, kind: &str, id: &str, body: Vec<u8>) -> ManifestResult<()> {
        self.create_record(self.job_key(kind, id), body, "create job record")
            .await
    }

    /// Creates `key` = `body` if it does not exist; fails (naming the key) if it does.
    async fn create_record(
        &self,
        key: String,
        body: Vec<u8>,
        what: &'static str,
    ) -> ManifestResult<()> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), body, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable(what, e))?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(unavailable(what, format!("{key} exists")))
        }
    }

    /// Replaces a job record only while it exists and the claim on `task` created at
    /// `claim_revision` still holds: a worker that lost its claim cannot overwrite the record
    /// of the worker that took the job over.
    pub async fn job_update_fenced(
        &self,
        kind: &str,
        id: &str,
        body: Vec<u8>,
        task: &str,
        claim_revision: i64,
    ) -> ManifestResult<bool> {
        let key = self.job_key(kind, id);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Greater, 0),
                Compare::create_revision(self.task_key(task), CompareOp::Equal, claim_revision),
            ])
            .and_then([TxnOp::put(key, body, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("update job record", e))?;
        Ok(resp.succeeded())
    }

    /// A job record's body, if it exists.
    pub async fn job_get(&self, kind: &str, id: &str) -> ManifestResult<Option<Vec<u8>>> {
        let r = self
            .client
            .clone()
            .get(self.job_key(kind, id), None)
            .await
            .map_err(|e| unavailable("read job record", e))?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Every job record of `kind`: (id, body).
    pub async fn job_list(&self, kind: &str) -> ManifestResult<Vec<(String, Vec<u8>)>> {
        self.list_under(format!("{}-jobs/{kind}/", self.prefix), "list job records")
            .await
    }

    /// Every key under `prefix`: (the rest of the key, value).
    async fn list_under(
        &self,
        prefix: String,
        what: &'static str,
    ) -> ManifestResult<Vec<(String, Vec<u8>)>> {
        let r = self
            .client
            .clone()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| unavailable(what, e))?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| {
                let id = kv.key_str().ok()?.strip_prefix(&prefix)?.to_string();
                Some((id, kv.value().to_vec()))
            })
            .collect())
    }

    /// Deletes a job record.
    pub async fn job_delete(&self, kind: &str, id: &str) -> ManifestResult<()> {
        self.client
            .clone()
            .delete(self.job_key(kind, id), None)
            .await
            .map_err(|e| unavailable("delete job record", e))?;
        Ok(())
    }

    /// Gives up the compaction claim on `p` created at `create_revision` (if still ours).
    pub async fn release_compaction(&self, p: u32, create_revision: i64) -> ManifestResult<bool> {
        let key = self.key(&format!("compaction/{p:05}"));
        self.release_key(key, create_revision, "release compaction")
            .await
    }

    /// Publishes a node's partition progress under its lease.
    pub async fn publish_stats(
        &self,
        node: &str,
        stats: &[PartitionProgress],
        lease: i64,
    ) -> ManifestResult<()> {
        self.put_under_lease(&format!("stats/{node}"), &stats, lease, "publish stats")
            .await
    }

    /// Marks (or unmarks) a node for draining.
    pub async fn set_drain(&self, node: &str, drain: bool) -> ManifestResult<()> {
        let key = self.key(&format!("drain/{node}"));
        let mut c = self.client.clone();
        if drain {
            c.put(key, "1", None).await.map(|_| ())
        } else {
            c.delete(key, None).await.map(|_| ())
        }
        .map_err(|e| unavailable("set drain", e))
    }

    /// Reads the whole cluster state in one request.
    pub async fn view(&self) -> ManifestResult<ClusterView> {
        let prefix = format!("{}/", self.prefix);
        let resp = self
            .client
            .clone()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| unavailable("read cluster", e))?;
        let mut v = ClusterView {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            ..Default::default()
        };
        let mut epochs: HashMap<u32, u64> = HashMap::new();
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let rest = &key[prefix.len()..];
            let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
            match kind {
                "config" => v.config = serde_json::from_slice(kv.value()).ok(),
                "nodes" => {
                    if let Ok(n) = serde_json::from_slice::<NodeInfo>(kv.value()) {
                        v.nodes.insert(name.to_string(), n);
                    }
                }
                "owners" => {
                    if let (Ok(p), Ok(o)) = (
                        name.parse::<u32>(),
                        serde_json::from_slice::<OwnerInfo>(kv.value()),
                    ) {
                        v.owners.insert(
                            p,
                            Ownership {
                                owner: o,
                                create_revision: kv.create_revision(),
                                epoch: None,
                            },
                        );
                    }
                }
                "epochs" => {
                    if let (Ok(p), Some(e)) = (
                        name.parse::<u32>(),
                        kv.value_str().ok().and_then(|s| s.parse::<u64>().ok()),
                    ) {
                        epochs.insert(p, e);
                    }
                }
                "manifests" => {
                    if let (Ok(p), Ok(ptr)) = (
                        name.parse::<u32>(),
                        serde_json::from_slice::<Pointer>(kv.value()),
                    ) {
                        v.manifests.insert(p, ptr.version);
                    }
                }
                "drain" => v.draining.push(name.to_string()),
                "compactors" => {
                    if let Ok(c) = serde_json::from_slice::<CompactorInfo>(kv.value()) {
                        v.compactors.insert(name.to_string(), c);
                    }
                }
                "compaction" => {
                    if let (Ok(p), Ok(w)) = (name.parse::<u32>(), kv.value_str()) {
                        v.compaction_claims
                            .insert(p, (w.to_string(), kv.create_revision()));
                    }
                }
                "partmap" => {
                    // An undecodable map becomes an empty one, which `partition_map` refuses.
                    let r =
                        serde_json::from_slice::<Vec<(u64, u32)>>(kv.value()).unwrap_or_default();
                    v.partmap = Some((r, kv.mod_revision()));
                }
                "compaction-settings" => {
                    let parsed = serde_json::from_slice::<CompactionSettings>(kv.value())
                        .map_err(|e| format!("unreadable compaction settings: {e}"));
                    v.compaction_settings = Some((parsed, kv.mod_revision()));
                }
                "stats" => {
                    if let Ok(s) = serde_json::from_slice::<Vec<PartitionProgress>>(kv.value()) {
                        v.stats.insert(name.to_string(), s);
                    }
                }
                _ => {}
            }
        }
        for (p, o) in v.owners.iter_mut() {
            o.epoch = epochs.get(p).copied();
        }
        Ok(v)
    }

    /// Wakes `notify` whenever something under the cluster prefix changes other than the
    /// published progress (membership, ownership, epochs, pointers, drains), until `stop`.
    /// A broken watch is re-created after a pause; callers still poll as a fallback, since a
    /// watch can miss nothing that a later full read would not show.
    pub async fn watch_changes(
        &self,
        notify: Arc<tokio::sync::Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let prefix = format!("{}/", self.prefix);
        let stats = format!("{prefix}stats/");
        loop {
            let opened = self
                .client
                .clone()
                .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
                .await;
            if let Ok(mut stream) = opened {
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    match msg {
                        Ok(Some(r)) => {
                            let relevant = r.events().iter().any(|e| {
                                e.kv()
                                    .is_none_or(|kv| !kv.key().starts_with(stats.as_bytes()))
                            });
                            if relevant {
                                notify.notify_one();
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

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
            rand::random::<u64>()
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
            .put(&path, encode_manifest(m), PutMode::Create)
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
            .put(&path, encode_manifest(child_manifest), PutMode::Create)
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
            .put(&path, encode_manifest(next), PutMode::Create)
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
