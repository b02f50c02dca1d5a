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
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_format::{decode_manifest, Manifest, SstBuilder, SstInfo, SstOptions};
use strata_manifest::layout::{new_sst_id, sst_path};
use strata_manifest::{ManifestError, ManifestResult, ManifestStore};
use strata_objstore::{PutMode, Store, StoreError};

use crate::error::{etcd as etcd_err, CompactorError, Result, ResultExt, WithWhat};
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
    /// Created by the snapshot schedule (deleted by it once older than its retention).
    #[serde(default)]
    pub scheduled: bool,
    /// When the last partition was pinned (0 in records written before it was recorded):
    /// the snapshot holds no write acknowledged after this.
    #[serde(default)]
    pub completed_ms: u64,
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

    /// The latest time the snapshot may reflect (a write acknowledged after it is not in it).
    pub fn as_of_ms(&self) -> u64 {
        if self.completed_ms != 0 {
            self.completed_ms
        } else {
            self.created_ms
        }
    }
}

/// Suffix of the ids of snapshots the schedule creates (and may delete once they age out).
const SCHEDULED_SUFFIX: &str = "-auto";

/// A fresh snapshot id: creation time first, so ids list in creation order; scheduled ones
/// end in `-auto`, so the schedule never deletes a snapshot someone made by hand.
fn new_id(created_ms: u64, scheduled: bool) -> String {
    // The low bits of a fresh SST id are random.
    let suffix = if scheduled { SCHEDULED_SUFFIX } else { "" };
    format!("{created_ms:013}-{:05x}{suffix}", new_sst_id() & 0xf_ffff)
}

/// Creation time (ms) a snapshot id starts with.
pub fn id_created_ms(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// Whether the schedule created snapshot `id`.
pub fn is_scheduled(id: &str) -> bool {
    id.ends_with(SCHEDULED_SUFFIX)
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
    scheduled: bool,
) -> Result<SnapshotRecord> {
    let target = SnapshotTarget {
        store,
        manifests,
        partitions,
        map_revision,
        max_pin_delay,
        txns,
        clock: strata_clock::Clock::system(),
    };
    create_snapshot_of(&target, scheduled).await
}

/// [`create_snapshot`] of a target (with the clock it names).
pub async fn create_snapshot_of(
    target: &SnapshotTarget<'_>,
    scheduled: bool,
) -> Result<SnapshotRecord> {
    let store = &target.store;
    let created_ms = target.clock.unix_ms();
    let id = new_id(created_ms, scheduled);
    let r = create_inner(target, scheduled, &id, created_ms).await;
    if r.is_err() {
        // The partitions pinned so far would keep their SSTs for as long as the partial
        // snapshot stays; nothing can use it.
        let prefix = format!("{SNAPSHOTS_PREFIX}{id}/");
        if let Ok(objects) = store.list(&prefix).await {
            for o in objects {
                let _ = store.delete(&o.path).await;
            }
        }
    }
    r
}

/// What a snapshot is taken of, and how: the store's pieces, as [`create_snapshot`] takes
/// them.
pub struct SnapshotTarget<'a> {
    /// The store's objects.
    pub store: Arc<dyn Store>,
    /// Its manifests.
    pub manifests: Arc<dyn ManifestStore>,
    /// The partitions to pin, with their hash ranges.
    pub partitions: &'a [ExportPartition],
    /// Revision of the partition map `partitions` came from (0: uniform or embedded).
    pub map_revision: i64,
    /// How long pinning one partition may take: below the compactors' `gc_grace` (a
    /// partition whose pin took longer is snapshotted again).
    pub max_pin_delay: Duration,
    /// A cluster's etcd, for its transaction records and partition map (`None`: embedded).
    pub txns: Option<&'a strata_manifest::etcd::Etcd>,
    /// The clock of the snapshot's dates (its id, `created_ms`, `completed_ms`).
    pub clock: strata_clock::Clock,
}

/// [`create_snapshot`] of `target` under the id it chose, created at `created_ms`.
async fn create_inner(
    target: &SnapshotTarget<'_>,
    scheduled: bool,
    id: &str,
    created_ms: u64,
) -> Result<SnapshotRecord> {
    let SnapshotTarget {
        ref store,
        ref manifests,
        partitions,
        map_revision,
        max_pin_delay,
        txns,
        ref clock,
    } = *target;
    let id = id.to_string();
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
                    .map_err(etcd_err("listing transaction records"))?,
            );
        }
        let mut attempt = 0;
        let snap = loop {
            attempt += 1;
            match pin_partition(store, &**manifests, &id, p, max_pin_delay).await {
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
                    .map_err(etcd_err("listing transaction records"))?,
            );
        }
    }
    // A split while pinning would leave a partition pinned after it with its range from
    // before it, and no manifest of the new partition: take the snapshot again.
    if let Some(etcd) = txns {
        let view = etcd
            .view()
            .await
            .map_err(etcd_err("re-reading the partition map"))?;
        let (_, now_rev) = view
            .partition_map()
            .map_err(|detail| CompactorError::PartitionMap {
                what: "re-reading the partition map".into(),
                detail,
            })?;
        if now_rev != map_revision {
            return Err(CompactorError::Conflict(format!(
                "the partition map changed while the snapshot was pinned (revision \
                 {map_revision} -> {now_rev}: a split); take it again"
            )));
        }
    }
    let record = SnapshotRecord {
        format: "strata-snapshot-v1".into(),
        id: id.clone(),
        created_ms,
        map_revision,
        partitions: out,
        txns: records.into_iter().collect(),
        scheduled,
        completed_ms: clock.unix_ms(),
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
    let started = strata_clock::now();
    let Some(m) = crate::error::load_latest(manifests, p).await? else {
        return Err(CompactorError::NotFound(format!(
            "partition {p} has no manifest"
        )));
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
        .put(
            &path,
            strata_manifest::encode_valid(p, &snap).with_context(|| format!("encoding {path}"))?,
            PutMode::Create,
        )
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
                Err(e) => return Err(e.with_what("checking a pinned SST".into())),
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
        return Err(CompactorError::Reread(format!(
            "SST {sst} of partition {p} went before the pin held (or the pin took over {max_pin_delay:?})"
        )));
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
    let mut out = Vec::new();
    for (id, complete) in snapshot_ids(store).await? {
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
    let first = store
        .list(&prefix)
        .await
        .with_context(|| format!("listing {prefix}"))?;
    if first.is_empty() {
        return Err(CompactorError::NotFound(format!(
            "no snapshot {id:?} (see `strata ctl snapshot list`)"
        )));
    }
    // Against a concurrent restore: we mark "deleting" and then look for restore markers; a
    // restore marks "restored" and then looks for ours (`mark_restored`). With a store that
    // lists what was written before (S3 and local directories do), one of the two sees the
    // other, so a restore never ends up reading a deleted snapshot's SSTs.
    let deleting = deleting_path(id);
    store
        .put(
            &deleting,
            Bytes::from_static(b"deleting"),
            PutMode::Overwrite,
        )
        .await
        .with_context(|| format!("writing {deleting}"))?;
    let objects = store
        .list(&prefix)
        .await
        .with_context(|| format!("listing {prefix}"))?;
    let restored: Vec<&str> = objects
        .iter()
        .filter(|o| o.path.starts_with(&format!("{prefix}restored/")))
        .map(|o| o.path.as_str())
        .collect();
    if !restored.is_empty() && !force {
        let _ = store.delete(&deleting).await;
        let mut targets = Vec::new();
        for path in &restored {
            if let Ok(b) = store.get(path).await {
                targets.push(String::from_utf8_lossy(&b).into_owned());
            }
        }
        return Err(CompactorError::Refused(format!(
            "snapshot {id} was restored to {}: those keyspaces read its SSTs in place until their compactions rewrite them; delete it anyway with --force",
            targets.join(", ")
        )));
    }
    let record = record_path(id);
    if objects.iter().any(|o| o.path == record) {
        store
            .delete(&record)
            .await
            .with_context(|| format!("deleting {record}"))?;
    }
    let mut n = 0;
    // The marker goes last: an interrupted delete stays visibly in progress.
    let (rest, marker): (Vec<_>, Vec<_>) = objects
        .iter()
        .filter(|o| o.path != record)
        .partition(|o| o.path != deleting);
    for o in rest.into_iter().chain(marker) {
        store
            .delete(&o.path)
            .await
            .with_context(|| format!("deleting {}", o.path))?;
        n += 1;
    }
    Ok(n)
}

/// Automatic snapshots: one every `every`, each kept for `keep`. Together they bound what a
/// restore can lose (`every`, the RPO) and how far back one can go (`keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSchedule {
    pub every: Duration,
    pub keep: Duration,
}

impl SnapshotSchedule {
    /// How often the schedule looks: often enough that a snapshot is at most a few seconds
    /// late, rarely enough that listing the snapshots costs nothing.
    pub fn poll(&self) -> Duration {
        (self.every / 10).clamp(Duration::from_millis(200), Duration::from_secs(15))
    }
}

/// What one look of the schedule did.
#[derive(Debug, Default)]
pub struct ScheduleTick {
    pub created: Option<SnapshotRecord>,
    pub deleted: Vec<String>,
}

/// One look of the schedule at `now_ms`: creates a snapshot of `target` once the newest
/// scheduled one is `every` old, and deletes scheduled snapshots older than `keep` (never the
/// newest, never one a keyspace was restored from) and incomplete scheduled ones older than
/// `stale` (a create that died; they pin SSTs). Snapshots made by hand are left alone.
pub async fn schedule_tick(
    target: &SnapshotTarget<'_>,
    sched: &SnapshotSchedule,
    now_ms: u64,
) -> Result<ScheduleTick> {
    let SnapshotTarget {
        ref store,
        partitions,
        max_pin_delay,
        ..
    } = *target;
    let mut out = ScheduleTick::default();
    let ids = snapshot_ids(&**store).await?;
    let scheduled: Vec<&String> = ids
        .iter()
        .filter(|(id, complete)| *complete && is_scheduled(id))
        .map(|(id, _)| id)
        .collect();
    let newest_id = scheduled.iter().max().copied();
    // Retention first: a create that keeps failing must not stop old snapshots aging out.
    let keep = sched.keep.as_millis() as u64;
    // An incomplete snapshot may be a create still running: it is stale only well after
    // every partition could have been pinned.
    let stale = keep.max(max_pin_delay.as_millis() as u64 * (partitions.len() as u64 + 1) * 5);
    for (id, complete) in &ids {
        let Some(t) = id_created_ms(id) else { continue };
        let age = now_ms.saturating_sub(t);
        let expired = if *complete { age > keep } else { age > stale };
        if !is_scheduled(id) || !expired || Some(id) == newest_id {
            continue;
        }
        match delete_snapshot(&**store, id, false).await {
            Ok(_) => out.deleted.push(id.clone()),
            // Restored from: kept until someone deletes it with --force.
            Err(e) => {
                tracing::info!(snapshot = %id, error = %e.report(), "kept past its retention")
            }
        }
    }
    let newest = newest_id.and_then(|id| id_created_ms(id));
    if newest.is_none_or(|t| now_ms.saturating_sub(t) >= sched.every.as_millis() as u64) {
        let r = create_snapshot_of(target, true).await?;
        out.created = Some(r);
    }
    Ok(out)
}

/// Every snapshot id, with whether its record exists (it is complete), in creation order.
async fn snapshot_ids(store: &dyn Store) -> Result<Vec<(String, bool)>> {
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
    Ok(ids.into_iter().collect())
}

/// The snapshot to restore for "the store as it was at `at_ms`": the newest complete one that
/// finished pinning at or before it. It holds every write acknowledged before it began and
/// none acknowledged after `at_ms`, so it lags `at_ms` by at most the schedule's `every`
/// (plus the time a snapshot takes).
pub async fn snapshot_at(store: &dyn Store, at_ms: u64) -> Result<SnapshotRecord> {
    let ids = snapshot_ids(store).await?;
    let mut complete: Vec<(u64, &String)> = ids
        .iter()
        .filter(|(_, c)| *c)
        .filter_map(|(id, _)| Some((id_created_ms(id)?, id)))
        .collect();
    complete.sort();
    let oldest = complete.first().map(|(t, _)| *t);
    // Newest first among those begun by then; the first one finished by then wins (a
    // snapshot of many partitions pins them over a while, and may hold writes from then).
    for (_, id) in complete.iter().rev().filter(|(t, _)| *t <= at_ms) {
        let r = read_record(store, id).await?;
        if r.as_of_ms() <= at_ms {
            return Ok(r);
        }
    }
    match oldest {
        Some(t) => Err(CompactorError::NotFound(format!(
            "no snapshot finished at or before {at_ms} ms: the oldest kept one began at {t} ms \
             (older points are past the schedule's retention)"
        ))),
        None => Err(CompactorError::NotFound(
            "the store has no snapshots: point-in-time restore needs scheduled snapshots \
             (`--snapshot-every-secs` on `strata serve` or `strata compactor`)"
                .into(),
        )),
    }
}

/// Where a running export pins the version it reads, one object per partition:
/// `export-pins/{CREATED_MS:013}-{NONCE:016x}-p{P:05}.manifest` (flat: a local store keeps no
/// empty directory per pin; a manifest, checksummed like
/// every manifest). Compaction GC keeps what a pin lists, as it does for snapshots, so an
/// export that outlasts the GC grace reads its version to the end instead of starting over
/// when an input is deleted under it.
pub const EXPORT_PINS_PREFIX: &str = "export-pins/";

/// An export pin older than this is a crashed export's: ignored, and removed by the GC that
/// finds it. (An export of one partition that runs longer loses its pin and, at worst, reads
/// again from a newer manifest, as before pins.)
const EXPORT_PIN_MAX_AGE_MS: u64 = 6 * 3600 * 1000;

/// `(created ms, partition)` of an export pin's path.
fn parse_export_pin(path: &str) -> Option<(u64, u32)> {
    let rest = path
        .strip_prefix(EXPORT_PINS_PREFIX)?
        .strip_suffix(".manifest")?;
    let mut fields = rest.split('-');
    let created = fields.next()?.parse().ok()?;
    let _nonce = fields.next()?;
    let p = fields.next()?.strip_prefix('p')?.parse().ok()?;
    fields.next().is_none().then_some((created, p))
}

/// Pins `m`, the version of partition `p` an export is about to read; returns the pin's path
/// (for [`unpin_export`]).
/// `now_ms` dates the pin (pins age out by it).
pub(crate) async fn pin_for_export(
    store: &dyn Store,
    p: u32,
    m: &Manifest,
    now_ms: u64,
) -> Result<String> {
    let nonce = strata_clock::unique_u64();
    let path = format!("{EXPORT_PINS_PREFIX}{now_ms:013}-{nonce:016x}-p{p:05}.manifest");
    let data = strata_manifest::encode_valid(p, m).with_context(|| format!("encoding {path}"))?;
    store
        .put(&path, data, PutMode::Create)
        .await
        .with_context(|| format!("pinning the exported version at {path}"))?;
    Ok(path)
}

/// Removes an export's pin (best effort: a pin left behind expires).
pub(crate) async fn unpin_export(store: &dyn Store, path: &str) {
    if let Err(e) = store.delete(path).await {
        tracing::warn!(pin = path, error = %e, "could not remove an export's pin; it expires");
    }
}

/// Ids of the SSTs of partition `p` that some snapshot (complete or not) or a running export
/// references, at `now_ms` (the export pins older than their limit are stale). An error means
/// "unknown": callers must then delete nothing.
pub async fn pinned_ssts(store: &dyn Store, p: u32, now_ms: u64) -> Result<HashSet<u64>> {
    let mut objects = store
        .list(SNAPSHOTS_PREFIX)
        .await
        .context("listing snapshots for their pins")?;
    let now = now_ms;
    for o in store
        .list(EXPORT_PINS_PREFIX)
        .await
        .context("listing the pins of running exports")?
    {
        match parse_export_pin(&o.path) {
            Some((created, q)) if q == p => {
                // Also one dated far ahead (a crashed exporter whose clock ran fast), which
                // would otherwise never age out.
                if now.saturating_sub(created) > EXPORT_PIN_MAX_AGE_MS || created > now + 3_600_000
                {
                    let _ = store.delete(&o.path).await;
                } else {
                    objects.push(o);
                }
            }
            _ => {}
        }
    }
    let mut pinned = HashSet::new();
    for o in objects {
        let ours = parse_manifest_path(&o.path).is_some_and(|(_, q)| q == p)
            || parse_export_pin(&o.path).is_some_and(|(_, q)| q == p);
        if ours {
            let data = match store.get(&o.path).await {
                Ok(data) => data,
                // Removed since the listing (an export done, a snapshot deleted): it pins
                // nothing any more.
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", o.path)),
            };
            let m = decode_manifest(&data)
                .with_context(|| format!("snapshot manifest {} is corrupt", o.path))?;
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
            Err(e) if e.is_object_not_found() => {
                return Err(CompactorError::NotFound(format!(
                    "no complete snapshot {id:?} (see `strata ctl snapshot list`)"
                )))
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
                .with_context(|| format!("snapshot manifest {path} is corrupt"))?;
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
/// is copied; new writes continue above the snapshot's seqs. `now_ms` is its `created_ms`.
pub fn restored_manifest(snap: &Manifest, source_url: &str, now_ms: u64) -> Manifest {
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
        created_ms: now_ms,
        dropped_tombstone_seq: snap.dropped_tombstone_seq,
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
        .with_context(|| format!("writing {name}"))?;
    // See `delete_snapshot`: a delete that began before our marker landed is seen here.
    match store.get(&deleting_path(id)).await {
        Ok(_) => {
            let _ = store.delete(&name).await;
            Err(CompactorError::Refused(format!("snapshot {id} is being deleted (it aged out of the schedule's retention, or was deleted by hand): restore another one")))
        }
        Err(e) if is_not_found_store(&e) => Ok(()),
        Err(e) => Err(e.with_what(format!("checking whether snapshot {id} is being deleted"))),
    }
}

fn deleting_path(id: &str) -> String {
    format!("{SNAPSHOTS_PREFIX}{id}/deleting")
}

fn is_not_found_store(e: &StoreError) -> bool {
    matches!(e, StoreError::NotFound(_))
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
