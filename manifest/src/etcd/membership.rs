//! Who is in the cluster and what it reports: `P/nodes/{node}`, `P/compactors/{id}` and
//! `P/stats/{node}` (all under their holder's lease), and `P/drain/{node}` (no lease).

use super::{unavailable, Etcd};
use crate::ManifestResult;
use etcd_client::PutOptions;
use serde::{Deserialize, Serialize};

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

impl Etcd {
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
}
