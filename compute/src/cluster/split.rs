//! Hot-partition splits.
//!
//! An owner watches the write rates it publishes. A partition whose rate stays at or above
//! `split_writes_per_sec` and at least 4× the median partition's for `split_after` splits:
//! it keeps the lower half of its hash range, and a new partition (the next unused id) takes
//! the upper half. The ring then places the new partition like any other (usually on another
//! node), so the load spreads.
//!
//! Procedure (the owner of `p`, holding its owner key throughout):
//! 1. take `p` out of service and close it: every accepted write durable, every memtable
//!    flushed (requests meanwhile get retry-safe `UNAVAILABLE` and nodes retry them);
//! 2. copy the live entries of the upper half (latest version each, versions and expiry kept)
//!    into SSTs under the new partition's prefix;
//! 3. one etcd transaction installs the new partition map and the new partition's first
//!    manifest (its `last_flushed_seq` is `p`'s last seq, so versions keep growing), guarded
//!    by the map's revision and by our tenure of `p`;
//! 4. reopen `p` serving only its lower half.
//!
//! Invariants: no key is ever served by two partitions — after the map swings, `p`'s engine
//! refuses (retry-safe) keys outside its range, and the new partition holds every write `p`
//! acknowledged for its half because `p` was closed (nothing in flight) before the copy. A
//! split that fails before the transaction changes nothing (its SSTs are unreferenced); a
//! transaction whose outcome is unknown is resolved by re-reading the map before `p` serves
//! again. Prepared cross-partition transactions keep their intents in `p`, so first new
//! prepares are refused (their coordinators retry) and the prepared ones drain (up to 3 s);
//! if they do not, the split is skipped and tried again later.
//!
//! What `p` keeps of the upper half is dead weight until compaction rewrites it; scans of `p`
//! leave those keys out (`DbOptions::hash_range`).

use super::{ClusterNode, PartState};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use strata_clock::Instant;
use strata_engine::{EngineError, EngineResult};
use strata_format::Manifest;
use strata_manifest::etcd::{ClusterView, PartitionProgress};

/// Least time between two splits started by one node (lets the map and the load settle).
const SPLIT_COOLDOWN: Duration = Duration::from_secs(10);

/// Per-node split bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct SplitState {
    /// Partitions of ours that are hot, and since when.
    hot_since: Mutex<HashMap<u32, Instant>>,
    busy: AtomicBool,
    last: Mutex<Option<Instant>>,
}

/// Looks at the rates just measured for our partitions (`mine`) against everyone's, and
/// starts a split of one partition that has been hot for long enough.
pub(crate) fn consider(node: &ClusterNode, view: &ClusterView, mine: &[PartitionProgress]) {
    let opts = &node.inner.opts;
    if opts.split_writes_per_sec == 0 || mine.is_empty() {
        return;
    }
    let mut rates: HashMap<u32, u64> = view
        .stats
        .values()
        .flatten()
        .map(|s| (s.partition, s.writes_per_sec))
        .collect();
    for s in mine {
        rates.insert(s.partition, s.writes_per_sec);
    }
    let ids = node.map().ids();
    if ids.len() >= opts.split_max_partitions {
        return;
    }
    let mut all: Vec<u64> = ids
        .iter()
        .map(|p| rates.get(p).copied().unwrap_or(0))
        .collect();
    all.sort_unstable();
    let median = all.get(all.len() / 2).copied().unwrap_or(0);
    let st = &node.inner.split;
    let now = strata_clock::now();
    let mut candidate = None;
    {
        let mut hot = st.hot_since.lock();
        hot.retain(|p, _| mine.iter().any(|s| s.partition == *p));
        for s in mine {
            if s.writes_per_sec >= opts.split_writes_per_sec
                && s.writes_per_sec >= median.saturating_mul(4)
            {
                let since = *hot.entry(s.partition).or_insert(now);
                if now.duration_since(since) >= opts.split_after {
                    candidate = Some((s.partition, s.writes_per_sec));
                }
            } else {
                hot.remove(&s.partition);
            }
        }
    }
    let Some((p, rate)) = candidate else {
        return;
    };
    if st.last.lock().is_some_and(|t| t.elapsed() < SPLIT_COOLDOWN) {
        return;
    }
    if st.busy.swap(true, Ordering::AcqRel) {
        return;
    }
    st.hot_since.lock().remove(&p);
    tracing::info!(
        partition = p,
        writes_per_sec = rate,
        median,
        "partition is hot; splitting it"
    );
    let node = node.clone();
    tokio::spawn(async move {
        match split(&node, p).await {
            Ok(Some(q)) => tracing::info!(partition = p, new_partition = q, "split done"),
            Ok(None) => tracing::info!(partition = p, "split skipped"),
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "split failed; the partition serves on unsplit")
            }
        }
        *node.inner.split.last.lock() = Some(strata_clock::now());
        node.inner.split.busy.store(false, Ordering::Release);
    });
}

/// Splits partition `p` (owned here). Returns the new partition's id, or `None` if there was
/// nothing to do (not ours any more, or transactions in flight).
pub async fn split(node: &ClusterNode, p: u32) -> EngineResult<Option<u32>> {
    let inner = &node.inner;
    let view = inner.view.read().clone();
    let (map, map_rev) = view.partition_map().map_err(EngineError::Unavailable)?;
    if *node.map() != map {
        return Err(EngineError::Unavailable(
            "the partition map is changing; split later".into(),
        ));
    }
    let Some((new_map, q)) = map.split(p) else {
        return Ok(None);
    };
    let Some(q_range) = new_map.range_of(q) else {
        return Err(EngineError::Internal(
            "split map lacks the new range".into(),
        ));
    };
    let (db, tenure) = {
        let mut parts = inner.parts.write();
        let Some(part) = parts.get_mut(&p) else {
            return Ok(None);
        };
        let PartState::Serving(db) = &part.state else {
            return Ok(None);
        };
        (db.clone(), part.tenure)
    };
    // Prepared transactions keep their intents in p: let them finish (new ones are refused,
    // and their coordinators retry) before taking p out of service.
    if !db.drain_prepared(Duration::from_secs(3)).await {
        return Ok(None);
    }
    {
        let mut parts = inner.parts.write();
        match parts.get_mut(&p) {
            Some(part) if part.tenure == tenure && matches!(part.state, PartState::Serving(_)) => {
                part.state = PartState::Releasing
            }
            _ => return Ok(None),
        }
    }
    node.publish_owned();
    let started = strata_clock::now();
    let attempt = async {
        db.close(Duration::from_secs(20)).await?;
        let (ssts, last_seq) = db.export_for_split(q, q_range).await?;
        let files = ssts.len();
        let child = Manifest {
            version: 1,
            writer_epoch: 0,
            last_flushed_seq: last_seq,
            wal_replay_from: 1,
            next_sst_id: 1,
            l0: ssts,
            levels: Vec::new(),
            created_ms: node.clock().unix_ms(),
            roots: Vec::new(),
            // The parent's compactions may have removed tombstones of any deletion up to
            // the split (this node's view of the parent may be behind its compactor's).
            dropped_tombstone_seq: last_seq,
        };
        let rev = inner
            .manifests
            .commit_split(p, tenure, map_rev, &new_map, q, &child)
            .await?;
        Ok::<_, EngineError>((rev, files))
    }
    .await;
    let committed = match attempt {
        Ok((rev, files)) => {
            tracing::info!(
                partition = p,
                new_partition = q,
                files,
                committed = rev.is_some(),
                ms = started.elapsed().as_millis() as u64,
                "split transaction"
            );
            if let Some(rev) = rev {
                node.adopt_map(new_map.clone(), rev);
            }
            rev.is_some()
        }
        Err(EngineError::StorageUnavailable(m) | EngineError::Unavailable(m))
            if m.contains("commit partition split") =>
        {
            // The transaction's outcome is unknown: learn it before p serves again, or p
            // could take writes for keys the new partition already serves.
            learn_split_outcome(node, &new_map).await
        }
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "split abandoned before committing");
            false
        }
    };
    // Reopen p (serving the range the map now gives it) unless it stopped being ours meanwhile.
    {
        let mut parts = inner.parts.write();
        match parts.get_mut(&p) {
            Some(part) if part.tenure == tenure => part.state = PartState::Opening,
            _ => return Ok(committed.then_some(q)),
        }
    }
    super::open_engine(node.clone(), p, tenure).await;
    Ok(committed.then_some(q))
}

/// Whether the map in etcd is the one our split planned (a split whose commit got no
/// answer). Keeps asking until etcd answers: until then the partition stays closed, since
/// serving it with the wrong range could let two partitions take one key. Adopts what it read.
async fn learn_split_outcome(node: &ClusterNode, planned: &strata_format::PartitionMap) -> bool {
    loop {
        match node.inner.etcd.view().await {
            Ok(v) => match v.partition_map() {
                Ok((map, rev)) => {
                    let ours = map == *planned;
                    node.adopt_map(map, rev);
                    return ours;
                }
                Err(e) => tracing::error!(error = %e, "unreadable partition map after a split"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot read the partition map yet"),
        }
        strata_clock::sleep(Duration::from_millis(500)).await;
    }
}
