//! Archival snapshots: a pinned, consistent manifest set (see `docs/snapshots.md`).
//!
//! A snapshot of a store holds, per partition, a copy of the partition's manifest as of the
//! snapshot, extended with one extra L0 SST (the snapshot's "tail SST") that holds the
//! writes that were only in the WAL. So a snapshot is manifests only: it references SSTs,
//! never WAL segments, and every acknowledged write before `create` began is in it.
//!
//! ```text
//! snapshots/{id}/p{partition:05}.manifest   the partition's manifest (wal_replay_from = MAX:
//!                                           nothing to replay)
//! snapshots/{id}/snapshot.json              written last: the snapshot is complete
//! ```
//!
//! Garbage collection (compactor) treats every SST a snapshot manifest lists as referenced,
//! complete or not, until the snapshot is deleted. Creating a snapshot reads a partition's
//! latest manifest and writes the pin well within `gc_grace` of that read (a compaction that
//! drops one of its SSTs right after the read deletes it only after `gc_grace`), then checks
//! that every pinned SST still exists.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_format::{decode_manifest, encode_manifest, Manifest, SstBuilder, SstInfo, SstOptions};
use strata_manifest::layout::{new_sst_id, sst_path};
use strata_manifest::{now_ms, ManifestError, ManifestResult, ManifestStore};
use strata_objstore::{PutMode, Store, StoreError};

use crate::export::{is_not_found, read_wal_tail, ExportPartition};

/// Prefix of every snapshot object.
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";

fn record_path(id: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}{id}/snapshot.json")
}

fn manifest_path(id: &str, p: u32) -> String {
    format!("{SNAPSHOTS_PREFIX}{id}/p{p:05}.manifest")
}

/// `(snapshot id, partition)` of a snapshot manifest's path.
fn parse_manifest_path(path: &str) -> Option<(String, u32)> {
    let rest = path.strip_prefix(SNAPSHOTS_PREFIX)?;
    let (id, name) = rest.split_once('/')?;
    let p = name
        .strip_prefix('p')?
        .strip_suffix(".manifest")?
        .parse()
        .ok()?;
    Some((id.to_string(), p))
}

/// `snapshot.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub format: String,
    pub id: String,
    pub created_ms: u64,
    /// Revision of the cluster's partition map (0: uniform or embedded).
    pub map_revision: i64,
    pub partitions: Vec<SnapshotPartition>,
    /// A cluster's cross-partition transaction records seen while pinning (listed before and
    /// after each partition): a partition pinned with a prepared intent learns its outcome
    /// from them after a restore.
    #[serde(default)]
    pub txns: Vec<(String, strata_manifest::etcd::TxnRecord)>,
}

/// What a snapshot holds of one partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotPartition {
    pub partition: u32,
    /// The key-hash range the partition served (`None`: every key); its SSTs may still hold
    /// keys outside it (moved by a split), which readers of the snapshot must skip.
    pub hash_range: Option<(u64, Option<u64>)>,
    /// Version of the live manifest the snapshot copied.
    pub manifest_version: u64,
    /// Every write of the partition with a seq up to this is in the snapshot.
    pub max_seq: u64,
    /// SSTs referenced (the tail SST included) and their bytes.
    pub ssts: u64,
    pub bytes: u64,
    /// Writes taken from the WAL into the tail SST.
    pub wal_entries: u64,
}

impl SnapshotRecord {
    /// Bytes of every SST the snapshot pins.
    pub fn bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.bytes).sum()
    }
}

/// A fresh snapshot id: creation time first, so ids list in creation order.
fn new_id() -> String {
    // The low bits of a fresh SST id are random.
    format!("{:013}-{:05x}", now_ms(), new_sst_id() & 0xf_ffff)
}

/// Creates a snapshot of `partitions`. `max_pin_delay` must be below the compactors'
/// `gc_grace`: a partition whose pin took longer is snapshotted again.
pub async fn create_snapshot(
    store: Arc<dyn Store>,
    manifests: Arc<dyn ManifestStore>,
    partitions: &[ExportPartition],
    map_revision: i64,
    max_pin_delay: Duration,
    txns: Option<&strata_manifest::etcd::Etcd>,
) -> Result<SnapshotRecord> {
    let id = new_id();
    let created_ms = now_ms();
    let mut out = Vec::with_capacity(partitions.len());
    let mut records: BTreeMap<String, strata_manifest::etcd::TxnRecord> = BTreeMap::new();
    let mut list_txns = |found: Vec<(String, strata_manifest::etcd::TxnRecord)>| {
        for (tid, rec) in found {
            // A later listing's state wins (pending -> decided).
            records.insert(tid, rec);
        }
    };
    for part in partitions {
        let p = part.partition;
        if let Some(etcd) = txns {
            list_txns(
                etcd.txn_list()
                    .await
                    .context("listing transaction records")?,
            );
        }
        let mut attempt = 0;
        let snap = loop {
            attempt += 1;
            match pin_partition(&store, &*manifests, &id, p, max_pin_delay).await {
                Err(e) if attempt < 5 && is_not_found(&e) => {
                    tracing::info!(partition = p, error = %e, "the partition moved while pinned; again");
                }
                r => break r.with_context(|| format!("snapshot {id}: partition {p}"))?,
            }
        };
        out.push(SnapshotPartition {
            hash_range: part.hash_range,
            ..snap
        });
        if let Some(etcd) = txns {
            list_txns(
                etcd.txn_list()
                    .await
                    .context("listing transaction records")?,
            );
        }
    }
    let record = SnapshotRecord {
        format: "strata-snapshot-v1".into(),
        id: id.clone(),
        created_ms,
        map_revision,
        partitions: out,
        txns: records.into_iter().collect(),
    };
    let body = serde_json::to_vec_pretty(&record).context("encoding snapshot.json")?;
    store
        .put(&record_path(&id), Bytes::from(body), PutMode::Create)
        .await
        .with_context(|| format!("writing {}", record_path(&id)))?;
    Ok(record)
}

/// Pins one partition: its latest manifest plus a tail SST of the writes only in the WAL.
async fn pin_partition(
    store: &Arc<dyn Store>,
    manifests: &dyn ManifestStore,
    id: &str,
    p: u32,
    max_pin_delay: Duration,
) -> Result<SnapshotPartition> {
    let started = Instant::now();
    let Some(m) = manifests.load_latest(p).await? else {
        bail!("partition {p} has no manifest");
    };
    let tail = read_wal_tail(store, manifests, p, &m, &()).await?;
    let mut snap = (*m).clone();
    let wal_entries = tail.entries.len() as u64;
    let mut tail_sst = None;
    if !tail.entries.is_empty() {
        let mut entries = tail.entries;
        entries.sort_by(|a, b| a.internal_cmp(b));
        entries.dedup_by(|a, b| a.key == b.key && a.seq == b.seq);
        let mut builder = SstBuilder::new(SstOptions::default());
        for e in &entries {
            builder.add(e).context("building the snapshot's tail SST")?;
        }
        let (data, props) = builder.finish().context("finishing the tail SST")?;
        let sst_id = new_sst_id();
        let path = sst_path(p, sst_id);
        store
            .put(&path, data, PutMode::Create)
            .await
            .with_context(|| format!("writing the tail SST {path}"))?;
        snap.l0.insert(
            0,
            SstInfo {
                id: sst_id,
                level: 0,
                props,
            },
        );
        tail_sst = Some(path);
    }
    snap.last_flushed_seq = snap.last_flushed_seq.max(tail.max_seq);
    // Nothing to replay: the WAL's writes are in the tail SST.
    snap.wal_replay_from = u64::MAX;
    let path = manifest_path(id, p);
    store
        .put(&path, encode_manifest(&snap), PutMode::Create)
        .await
        .with_context(|| format!("writing {path}"))?;
    let files: Vec<&SstInfo> = snap.ssts().collect();
    // The pin protects the SSTs from the compactors' GC only if it was written before any of
    // them could be deleted: within gc_grace of reading the manifest, and while they exist.
    let mut missing = None;
    if started.elapsed() <= max_pin_delay {
        // SSTs under another root are checked by id pins only: this keyspace's cold tier
        // (its GC honours the same pins) or a restore source's (protected by that source's
        // snapshot).
        let elsewhere = snap.root_index();
        for f in files.iter().filter(|f| !elsewhere.contains_key(&f.id)) {
            match store.head(&sst_path(p, f.id)).await {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => {
                    missing = Some(f.id);
                    break;
                }
                Err(e) => return Err(anyhow!(e).context("checking a pinned SST")),
            }
        }
    } else {
        missing = Some(0);
    }
    if let Some(sst) = missing {
        let _ = store.delete(&path).await;
        if let Some(t) = tail_sst {
            let _ = store.delete(&t).await;
        }
        return Err(anyhow!(crate::export::Reread(format!(
            "SST {sst} of partition {p} went before the pin held (or the pin took over {max_pin_delay:?})"
        ))));
    }
    Ok(SnapshotPartition {
        partition: p,
        hash_range: None,
        manifest_version: m.version,
        max_seq: snap.last_flushed_seq,
        ssts: files.len() as u64,
        bytes: files.iter().map(|f| f.props.file_size).sum(),
        wal_entries,
    })
}

/// Every snapshot in the store: complete ones with their record, and ids of incomplete ones
/// (a `create` that did not finish; they pin their SSTs until deleted) with `None`.
pub async fn list_snapshots(store: &dyn Store) -> Result<Vec<(String, Option<SnapshotRecord>)>> {
    let objects = store
        .list(SNAPSHOTS_PREFIX)
        .await
        .context("listing snapshots")?;
    let mut ids: BTreeMap<String, bool> = BTreeMap::new();
    for o in &objects {
        let Some(rest) = o.path.strip_prefix(SNAPSHOTS_PREFIX) else {
            continue;
        };
        if let Some((id, name)) = rest.split_once('/') {
            let complete = ids.entry(id.to_string()).or_default();
            *complete |= name == "snapshot.json";
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for (id, complete) in ids {
        let record = if complete {
            Some(read_record(store, &id).await?)
        } else {
            None
        };
        out.push((id, record));
    }
    Ok(out)
}

async fn read_record(store: &dyn Store, id: &str) -> Result<SnapshotRecord> {
    let path = record_path(id);
    let data = store
        .get(&path)
        .await
        .with_context(|| format!("reading {path}"))?;
    serde_json::from_slice(&data).with_context(|| format!("{path} is not a snapshot record"))
}

/// Deletes snapshot `id`: its record first (so it is no longer listed as complete), then its
/// manifests. The SSTs only it referenced become unreferenced; the compactors' orphan sweep
/// removes them. Refused while a keyspace restored from it may still read them, unless
/// `force`.
pub async fn delete_snapshot(store: &dyn Store, id: &str, force: bool) -> Result<usize> {
    let prefix = format!("{SNAPSHOTS_PREFIX}{id}/");
    let objects = store
        .list(&prefix)
        .await
        .with_context(|| format!("listing {prefix}"))?;
    if objects.is_empty() {
        bail!("no snapshot {id:?} (see `strata ctl snapshot list`)");
    }
    let restored: Vec<&str> = objects
        .iter()
        .filter(|o| o.path.starts_with(&format!("{prefix}restored/")))
        .map(|o| o.path.as_str())
        .collect();
    if !restored.is_empty() && !force {
        let mut targets = Vec::new();
        for path in &restored {
            if let Ok(b) = store.get(path).await {
                targets.push(String::from_utf8_lossy(&b).into_owned());
            }
        }
        bail!(
            "snapshot {id} was restored to {}: those keyspaces read its SSTs in place until their compactions rewrite them; delete it anyway with --force",
            targets.join(", ")
        );
    }
    let record = record_path(id);
    if objects.iter().any(|o| o.path == record) {
        store
            .delete(&record)
            .await
            .with_context(|| format!("deleting {record}"))?;
    }
    let mut n = 0;
    for o in objects.iter().filter(|o| o.path != record) {
        store
            .delete(&o.path)
            .await
            .with_context(|| format!("deleting {}", o.path))?;
        n += 1;
    }
    Ok(n)
}

/// Ids of the SSTs of partition `p` that some snapshot (complete or not) references. An error
/// means "unknown": callers must then delete nothing.
pub async fn pinned_ssts(store: &dyn Store, p: u32) -> Result<HashSet<u64>> {
    let objects = store
        .list(SNAPSHOTS_PREFIX)
        .await
        .context("listing snapshots for their pins")?;
    let mut pinned = HashSet::new();
    for o in objects {
        if parse_manifest_path(&o.path).is_some_and(|(_, q)| q == p) {
            let data = store
                .get(&o.path)
                .await
                .with_context(|| format!("reading {}", o.path))?;
            let m = decode_manifest(&data)
                .map_err(|e| anyhow!("snapshot manifest {} is corrupt: {e}", o.path))?;
            pinned.extend(m.ssts().map(|f| f.id));
        }
    }
    Ok(pinned)
}

/// A snapshot's manifests, as a read-only [`ManifestStore`] (for export and restore).
#[derive(Debug)]
pub struct SnapshotManifests {
    pub record: SnapshotRecord,
    manifests: BTreeMap<u32, Arc<Manifest>>,
}

impl SnapshotManifests {
    /// Loads complete snapshot `id`.
    pub async fn load(store: &dyn Store, id: &str) -> Result<SnapshotManifests> {
        let record = match read_record(store, id).await {
            Ok(r) => r,
            Err(e)
                if e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<StoreError>(),
                        Some(StoreError::NotFound(_))
                    )
                }) =>
            {
                bail!("no complete snapshot {id:?} (see `strata ctl snapshot list`)")
            }
            Err(e) => return Err(e),
        };
        let mut manifests = BTreeMap::new();
        for part in &record.partitions {
            let path = manifest_path(id, part.partition);
            let data = store
                .get(&path)
                .await
                .with_context(|| format!("reading {path}"))?;
            let m = decode_manifest(&data)
                .map_err(|e| anyhow!("snapshot manifest {path} is corrupt: {e}"))?;
            manifests.insert(part.partition, Arc::new(m));
        }
        Ok(SnapshotManifests { record, manifests })
    }

    /// The partitions of the snapshot, with their hash ranges.
    pub fn partitions(&self) -> Vec<ExportPartition> {
        self.record
            .partitions
            .iter()
            .map(|p| ExportPartition {
                partition: p.partition,
                hash_range: p.hash_range,
            })
            .collect()
    }
}

#[async_trait]
impl ManifestStore for SnapshotManifests {
    async fn load_latest(&self, partition: u32) -> ManifestResult<Option<Arc<Manifest>>> {
        Ok(self.manifests.get(&partition).cloned())
    }

    async fn commit(&self, partition: u32, _next: &Manifest) -> ManifestResult<()> {
        Err(ManifestError::Etcd(format!(
            "snapshot {} is read-only (partition {partition})",
            self.record.id
        )))
    }

    fn subscribe(&self, partition: u32) -> tokio::sync::watch::Receiver<Option<Arc<Manifest>>> {
        tokio::sync::watch::channel(self.manifests.get(&partition).cloned()).1
    }
}

/// The first manifest of one partition of a keyspace restored from snapshot manifest `snap`,
/// taken of the store at `source_url`: the snapshot's tree, with every SST read where it is
/// (under the source's root, or under the root the snapshot already named for it). Nothing
/// is copied; new writes continue above the snapshot's seqs.
pub fn restored_manifest(snap: &Manifest, source_url: &str) -> Manifest {
    let mut roots: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for f in snap.ssts() {
        let url = snap.root_of(f.id).unwrap_or(source_url);
        roots.entry(url.to_string()).or_default().push(f.id);
    }
    Manifest {
        version: 1,
        writer_epoch: 0,
        last_flushed_seq: snap.last_flushed_seq,
        wal_replay_from: 1,
        next_sst_id: 1,
        l0: snap.l0.clone(),
        levels: snap.levels.clone(),
        created_ms: now_ms(),
        roots: roots
            .into_iter()
            .map(|(url, ids)| strata_format::SstRoot {
                url,
                ids,
                // Another keyspace's SSTs: this one never deletes them.
                owned: false,
            })
            .collect(),
    }
}

/// Records on the source that snapshot `id` was restored to `target_url` (so deleting the
/// snapshot is refused while the restored keyspace may read its SSTs).
pub async fn mark_restored(store: &dyn Store, id: &str, target_url: &str) -> Result<()> {
    let name = format!(
        "{SNAPSHOTS_PREFIX}{id}/restored/{:016x}",
        xxhash_rust::xxh3::xxh3_64(target_url.as_bytes())
    );
    store
        .put(
            &name,
            Bytes::from(target_url.to_string()),
            PutMode::Overwrite,
        )
        .await
        .with_context(|| format!("writing {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_round_trip() {
        let path = manifest_path("0001-ab", 7);
        assert_eq!(parse_manifest_path(&path), Some(("0001-ab".into(), 7)));
        assert_eq!(parse_manifest_path(&record_path("0001-ab")), None);
    }
}
