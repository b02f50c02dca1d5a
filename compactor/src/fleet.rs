//! The compactor fleet: `strata compactor` worker processes sharing a cluster's compaction.
//!
//! Each worker registers under its own etcd lease (`P/compactors/{id}`). Partitions are spread
//! over the registered workers with the same consistent-hash ring the serving nodes use; a
//! worker claims the compaction of each partition the ring gives it with a key under its lease
//! (`P/compaction/{p}`, create-if-absent) and runs a [`Compactor`] for it. When workers come
//! or go the ring moves about 1/N of the partitions; a worker gives up claims the ring no
//! longer gives it (stop its compactor, then delete the claim), and a worker that dies loses
//! its lease, so its claims vanish and the ring's choice claims them within a lease TTL.
//!
//! Why a job interrupted anywhere is harmless: outputs are created under fresh ids and become
//! visible only through the manifest commit, which is a compare-and-swap of the partition's
//! manifest pointer guarded by the owner's epoch; a crashed job's outputs are orphans, deleted
//! by the orphan sweep after `orphan_grace`. Two compactors briefly running on one partition
//! (a claim moving) cannot corrupt it either: the second commit rebases, finds its inputs gone
//! and abandons. Serving nodes stop compacting in-process while any worker is registered.

use crate::{CompactionOptions, Compactor};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use strata_clock::Instant;
use strata_manifest::etcd::{CompactorInfo, Etcd};
use strata_manifest::ring::Ring;
use strata_manifest::{EtcdManifestStore, ManifestStore};
use strata_objstore::Store;
use tokio::sync::watch;
use tracing::{info, warn};

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Worker id (unique among the cluster's workers).
    pub id: String,
    /// TTL of the worker's etcd lease: a dead worker's partitions move after about this.
    pub lease_ttl: Duration,
    /// How often the worker re-reads the cluster and rebalances.
    pub poll: Duration,
    /// Virtual nodes per worker on the ring.
    pub vnodes: u32,
    /// Compaction knobs (the hash range is set per partition from the partition map).
    pub compaction: CompactionOptions,
    /// The cluster's snapshot schedule (run by one worker at a time); `None`: no schedule.
    pub snapshots: Option<crate::snapshot::SnapshotSchedule>,
}

impl WorkerOptions {
    /// Defaults for worker `id`.
    pub fn new(id: String) -> Self {
        WorkerOptions {
            id,
            lease_ttl: Duration::from_secs(5),
            poll: Duration::from_secs(1),
            vnodes: 256,
            compaction: CompactionOptions::default(),
            snapshots: None,
        }
    }
}

struct Claimed {
    create_revision: i64,
    /// What the compactor runs by (its strategy and knobs as set by the cluster's settings
    /// over this worker's flags); a change restarts it with the new ones.
    settings: String,
    compactor: Compactor,
    /// The hash range the compactor was started with (restarted when a split changes it).
    range: Option<(u64, Option<u64>)>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs a worker until `stop` turns true: registers, claims, compacts, and on the way out
/// stops its compactors (finishing jobs in progress), releases its claims and revokes its lease.
pub async fn run_worker(
    etcd: Etcd,
    store: Arc<dyn Store>,
    opts: WorkerOptions,
    mut stop: watch::Receiver<bool>,
) -> crate::Result<()> {
    let manifests = Arc::new(EtcdManifestStore::new(etcd.clone(), store.clone()));
    let claimed: Arc<Mutex<HashMap<u32, Claimed>>> = Arc::default();
    // Every compactor this worker ran, for its published totals.
    let ever: Arc<Mutex<Vec<Compactor>>> = Arc::default();
    // The manifest version each partition's owner reads from (published in etcd): compacted
    // inputs are deleted only once the owner has moved past the commit that dropped them.
    let floors: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let mut lease: Option<(i64, Instant)> = None;
    let ttl = opts.lease_ttl.as_secs().max(1) as i64;
    let mut info = CompactorInfo {
        id: opts.id.clone(),
        started_ms: opts.compaction.clock.unix_ms(),
        ..Default::default()
    };
    let mut last_renew = strata_clock::now();
    let worker = Worker {
        etcd: &etcd,
        store: &store,
        manifests: &manifests,
        opts: &opts,
        claimed: &claimed,
        ever: &ever,
        floors: &floors,
    };
    // The cluster-wide tasks (snapshot schedule, export jobs) follow the worker's lease.
    let (lease_tx, lease_rx) = watch::channel(None::<i64>);
    let tasks = {
        let ms: Arc<dyn ManifestStore> = manifests.clone();
        tokio::spawn(crate::fleet_tasks::run_fleet_tasks(
            crate::fleet_tasks::FleetTasks {
                etcd: etcd.clone(),
                store: store.clone(),
                manifests: ms,
                worker: opts.id.clone(),
                roots: opts.compaction.roots.clone(),
                schedule: opts.snapshots,
                pin_delay: crate::fleet_tasks::max_pin_delay(opts.compaction.gc_grace),
                lease_ttl: opts.lease_ttl,
                clock: opts.compaction.clock.clone(),
                lease: lease_rx,
                stop: stop.clone(),
            },
        ))
    };
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        // Lease: take one, keep it alive; on losing it, every claim is gone with it.
        let lease_id = match lease {
            Some((id, _)) if last_renew.elapsed() < opts.lease_ttl / 3 => Some(id),
            Some((id, _)) => match etcd.keep_alive(id).await {
                Ok(left) if left > 0 => {
                    last_renew = strata_clock::now();
                    Some(id)
                }
                Ok(_) => {
                    warn!(worker = %opts.id, "lease lost; dropping every claim");
                    stop_all(&claimed).await;
                    lease = None;
                    None
                }
                Err(e) => {
                    // Unknown: keep working only while the lease surely still holds.
                    if last_renew.elapsed() >= opts.lease_ttl * 4 / 5 {
                        warn!(worker = %opts.id, error = %e, "cannot renew the lease; pausing");
                        stop_all(&claimed).await;
                        lease = None;
                    }
                    lease.map(|l| l.0)
                }
            },
            None => match etcd.grant_lease(ttl).await {
                Ok((id, _)) => {
                    lease = Some((id, strata_clock::now()));
                    last_renew = strata_clock::now();
                    Some(id)
                }
                Err(e) => {
                    warn!(worker = %opts.id, error = %e, "cannot get a lease yet");
                    None
                }
            },
        };
        lease_tx.send_replace(lease_id);
        if let Some(lease_id) = lease_id {
            // Totals over the compactors this worker runs (published for `strata ctl status`).
            {
                let mut per: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
                let (mut jobs, mut bytes_in, mut bytes_out, mut l0, mut busy) = (0, 0, 0, 0, 0);
                for c in ever.lock().iter() {
                    let s = c.stats();
                    jobs += s.jobs;
                    bytes_in += s.bytes_in;
                    bytes_out += s.bytes_out;
                    l0 += s.l0_bytes_in;
                    busy += s.busy_millis;
                    let e = per.entry(c.partition()).or_default();
                    e.0 += s.l0_bytes_in;
                    e.1 += s.bytes_out;
                }
                (info.jobs, info.bytes_in, info.bytes_out, info.l0_bytes_in) =
                    (jobs, bytes_in, bytes_out, l0);
                info.busy_millis = busy;
                info.partition_bytes = per
                    .into_iter()
                    .map(|(p, (l0, out))| (p, [l0, out]))
                    .collect();
            }
            if let Err(e) = etcd.register_compactor(&info, lease_id).await {
                warn!(worker = %opts.id, error = %e, "registering failed");
            } else {
                rebalance(&worker, lease_id).await;
            }
        }
        tokio::select! {
            _ = strata_clock::sleep(opts.poll) => {}
            _ = stop.changed() => {}
        }
    }
    info!(worker = %opts.id, "stopping: finishing jobs and releasing claims");
    let held: Vec<(u32, i64)> = claimed
        .lock()
        .iter()
        .map(|(p, c)| (*p, c.create_revision))
        .collect();
    stop_all(&claimed).await;
    // An export in progress is abandoned with the lease; another worker runs it again.
    tasks.abort();
    let _ = tasks.await;
    for (p, rev) in held {
        let _ = etcd.release_compaction(p, rev).await;
    }
    if let Some((id, _)) = lease {
        let _ = etcd.revoke(id).await;
    }
    Ok(())
}

/// What [`rebalance`] works with: the worker's pieces of state, each shared differently.
struct Worker<'a> {
    etcd: &'a Etcd,
    store: &'a Arc<dyn Store>,
    manifests: &'a Arc<EtcdManifestStore>,
    opts: &'a WorkerOptions,
    /// The partitions whose compaction this worker claimed.
    claimed: &'a Arc<Mutex<HashMap<u32, Claimed>>>,
    /// Every compactor this worker ran, for its published totals.
    ever: &'a Arc<Mutex<Vec<Compactor>>>,
    /// The manifest version each partition's owner reads from.
    floors: &'a Arc<Mutex<HashMap<u32, u64>>>,
}

/// Claims what the ring gives us and nobody holds; gives up what it no longer gives us, and
/// forgets claims that vanished (expired or deleted by hand).
async fn rebalance(worker: &Worker<'_>, lease: i64) {
    let Worker {
        etcd,
        store,
        manifests,
        opts,
        claimed,
        ever,
        floors,
    } = *worker;
    let view = match etcd.view().await {
        Ok(v) => v,
        Err(e) => {
            warn!(worker = %opts.id, error = %e, "reading the cluster failed");
            return;
        }
    };
    let map = match view.partition_map() {
        Ok((map, _)) => map,
        Err(e) => {
            warn!(worker = %opts.id, error = %e, "unreadable partition map; not rebalancing");
            return;
        }
    };
    *floors.lock() = view
        .stats
        .values()
        .flatten()
        .map(|s| (s.partition, s.manifest_version))
        .collect();
    // The cluster's compaction settings over this worker's flags.
    let base = match &view.compaction_settings {
        None => opts.compaction.clone(),
        Some((parsed, _)) => {
            let applied = parsed
                .as_ref()
                .map_err(|e| crate::CompactorError::InvalidSettings(e.clone()))
                .and_then(|s| crate::settings::apply_settings(s, &opts.compaction));
            match applied {
                Ok(o) => o,
                Err(e) => {
                    warn!(worker = %opts.id, error = %e, "cannot apply the cluster's compaction settings; using this worker's flags");
                    opts.compaction.clone()
                }
            }
        }
    };
    // Only a change of what a partition's compactor runs by restarts it.
    let settings_of = |p: u32| crate::settings::fingerprint(&base, p);
    let ring = Ring::new(view.compactors.keys().cloned(), opts.vnodes);
    let ids = map.ids();
    // Give up: claims no longer ours by the ring, or gone from etcd.
    let mine: Vec<(u32, i64)> = claimed
        .lock()
        .iter()
        .map(|(p, c)| (*p, c.create_revision))
        .collect();
    for (p, rev) in mine {
        let still_held = view
            .compaction_claims
            .get(&p)
            .is_some_and(|(w, r)| *w == opts.id && *r == rev);
        // A split changed the partition's range: hand it over and claim it again, so its
        // compactor drops the moved half.
        // So does a change of the cluster's compaction settings, to restart with them.
        let same_range = claimed
            .lock()
            .get(&p)
            .is_some_and(|c| c.range == map.range_of(p) && c.settings == settings_of(p));
        let wanted = ring.owner(p) == Some(opts.id.as_str()) && ids.contains(&p) && same_range;
        if still_held && wanted {
            continue;
        }
        let Some(c) = claimed.lock().remove(&p) else {
            continue;
        };
        if !still_held {
            warn!(worker = %opts.id, partition = p, "our compaction claim vanished");
        }
        // In the background: a job in progress finishes first (up to 30 s), and the main
        // loop keeps renewing the lease meanwhile. The claim goes only after the compactor
        // stopped, so the next worker never overlaps a job of ours.
        let etcd = etcd.clone();
        let id = opts.id.clone();
        tokio::spawn(async move {
            let _ = c.stop.send(true);
            let _ = strata_clock::timeout(Duration::from_secs(30), c.task).await;
            // Kept in `ever` for its totals only.
            c.compactor.retire();
            if still_held {
                let _ = etcd.release_compaction(p, rev).await;
                info!(worker = %id, partition = p, "handed the partition's compaction over");
            }
        });
    }
    // Claim: ours by the ring, held by nobody.
    for p in ids {
        if ring.owner(p) != Some(opts.id.as_str())
            || view.compaction_claims.contains_key(&p)
            || claimed.lock().contains_key(&p)
        {
            continue;
        }
        match etcd.claim_compaction(p, &opts.id, lease).await {
            Ok(Some(rev)) => {
                let copts = CompactionOptions {
                    hash_range: map.range_of(p),
                    ..base.clone()
                };
                let strategy = *copts.strategy_overrides.get(&p).unwrap_or(&copts.strategy);
                let ms: Arc<dyn ManifestStore> = manifests.clone();
                let f = floors.clone();
                let compactor = Compactor::new(store.clone(), ms, p, copts)
                    .with_reader_floor(Arc::new(move |p| f.lock().get(&p).copied()));
                let (tx, rx) = watch::channel(false);
                let task = tokio::spawn(compactor.clone().run(rx));
                ever.lock().push(compactor.clone());
                info!(worker = %opts.id, partition = p, ?strategy, "claimed the partition's compaction");
                claimed.lock().insert(
                    p,
                    Claimed {
                        create_revision: rev,
                        settings: settings_of(p),
                        compactor: compactor.clone(),
                        range: map.range_of(p),
                        stop: tx,
                        task,
                    },
                );
            }
            Ok(None) => {}
            Err(e) => warn!(worker = %opts.id, partition = p, error = %e, "claim failed"),
        }
    }
}

async fn stop_all(claimed: &Arc<Mutex<HashMap<u32, Claimed>>>) {
    let all: Vec<Claimed> = claimed.lock().drain().map(|(_, c)| c).collect();
    for c in &all {
        let _ = c.stop.send(true);
    }
    for c in all {
        let _ = strata_clock::timeout(Duration::from_secs(30), c.task).await;
        c.compactor.retire();
    }
}
