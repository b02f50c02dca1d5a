//! A node of a cluster: membership under an etcd lease, partition ownership, failover and
//! hand-off, and the routing table requests use.
//!
//! Every node runs the same loop: read the cluster state from etcd, compute where each
//! partition should live (a consistent-hash ring over the live, non-draining nodes), and
//! converge towards it:
//! - a partition that should be ours and has no owner is acquired (owner key created under
//!   our lease), opened (which fences the previous writer's WAL stream and replays its tail)
//!   and served;
//! - a partition we serve that should live elsewhere is handed off: writes stop, everything
//!   accepted becomes durable and is flushed, then the owner key is deleted so the new owner
//!   can acquire it and replay (almost) nothing;
//! - a partition whose owner died has no owner key any more once the dead node's lease
//!   expired, and its ring successor acquires it.
//!
//! Safety does not rest on this loop being timely. A deposed writer cannot acknowledge a
//! write the new owner misses (WAL fencing, see docs/write-path.md), cannot move the manifest
//! pointer (epoch-guarded etcd transactions), and serves nothing once its lease deadline has
//! passed on its own monotonic clock ([`LeaseGuard`]).

/// Placement of partitions on nodes (shared with the compactor fleet).
pub use strata_manifest::ring;
mod split;
mod txn_recovery;

use crate::pb;
use crate::LeaseGuard;
use parking_lot::{Mutex, RwLock};
use ring::Ring;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_cache::BlockCache;
use strata_clock::Instant;
use strata_engine::EngineError;
use strata_engine::{store_uid, Db, DbOptions};
use strata_engine::{ReplicaRead, Replicas};
use strata_format::PartitionMap;
use strata_manifest::etcd::{ClusterView, Etcd, NodeInfo, OwnerInfo, PartitionProgress};
use strata_manifest::EtcdManifestStore;
use strata_objstore::Store;
use tokio::sync::{watch, Semaphore};

/// How a node joins and behaves in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// This node's id (unique in the cluster).
    pub node_id: String,
    /// Address peers and clients use to reach this node (`host:port`).
    pub advertise: String,
    /// TTL of the node's lease: a dead node's partitions move after at most this.
    pub lease_ttl: Duration,
    /// Virtual nodes per node on the ring.
    pub vnodes: u32,
    /// Partition count used when this node creates the cluster (an existing cluster keeps
    /// its own).
    pub partitions: u32,
    /// How often the node re-reads the cluster state without being told of a change (an etcd
    /// watch wakes it at once when membership or ownership changes).
    pub poll_interval: Duration,
    /// Template of every partition engine's options.
    pub db: DbOptions,
    /// Most partitions opened at once.
    pub max_concurrent_opens: usize,
    /// A partition writing at least this many ops per second (and 4× the median partition)
    /// for `split_after` splits in two; 0 never splits.
    pub split_writes_per_sec: u64,
    /// How long a partition must stay hot before it splits.
    pub split_after: Duration,
    /// No split once the cluster has this many partitions.
    pub split_max_partitions: usize,
}

impl ClusterOptions {
    /// Defaults for a node.
    pub fn new(node_id: String, advertise: String) -> Self {
        ClusterOptions {
            node_id,
            advertise,
            lease_ttl: Duration::from_secs(2),
            vnodes: 256,
            partitions: 16,
            poll_interval: Duration::from_millis(500),
            db: DbOptions::default(),
            max_concurrent_opens: 4,
            split_writes_per_sec: 2000,
            split_after: Duration::from_secs(30),
            split_max_partitions: 1024,
        }
    }
}

enum PartState {
    /// Acquired in etcd; the engine is opening.
    Opening,
    Serving(Db),
    /// Handing off: no new requests; the engine is closing.
    Releasing,
    /// Its stored data is corrupt, so it cannot open. We keep the owner key (so no other
    /// node tries and fails in turn), answer its requests `DATA_LOSS` naming what failed, report
    /// it (`ctl status`, a log line), serve every other partition, and try to open it again
    /// after `CORRUPT_RETRY`, doubling with each failure (an operator may have restored the object).
    Corrupt {
        why: String,
        since: Instant,
    },
}

/// How long after failing to open for corruption a partition is tried again; doubled for
/// every further failure, up to 64 times this.
const CORRUPT_RETRY: Duration = Duration::from_secs(60);

/// The wait before the next open of a partition that failed `failures` times.
fn corrupt_retry_after(failures: u32) -> Duration {
    CORRUPT_RETRY * (1u32 << failures.saturating_sub(1).min(6))
}

struct Part {
    state: PartState,
    /// Creation revision of our owner key.
    tenure: i64,
    /// Opens of this tenure that failed for corruption; the retry interval doubles with each
    /// (every open writes a fence marker and replays the WAL tail, so retries stay rare).
    corrupt_failures: u32,
}

struct Inner {
    opts: ClusterOptions,
    etcd: Etcd,
    manifests: Arc<EtcdManifestStore>,
    store: Arc<dyn Store>,
    cache: BlockCache,
    partitions: u32,
    lease: LeaseGuard,
    lease_id: AtomicI64,
    parts: RwLock<HashMap<u32, Part>>,
    view: RwLock<Arc<ClusterView>>,
    owned_tx: watch::Sender<BTreeSet<u32>>,
    opens: Semaphore,
    stop: watch::Receiver<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Flushed data of partitions owned elsewhere, for eventually consistent reads.
    replicas: Replicas,
    /// Woken by the etcd watch when membership or ownership changes.
    changed: Arc<tokio::sync::Notify>,
    /// Which hash range each partition serves (uniform until a hot partition splits), and
    /// the etcd revision of that map (0: the uniform one). Only ever moves forward.
    map: RwLock<(Arc<PartitionMap>, i64)>,
    /// Hot-partition split policy and state.
    split: split::SplitState,
}

/// A running cluster node. Cheap to clone.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node", &self.inner.opts.node_id)
            .finish()
    }
}

/// Where a request for a partition goes.
pub enum Route {
    /// Served here.
    Local(Db),
    /// Served by the node at this address.
    Remote(String),
}

impl ClusterNode {
    /// Joins the cluster: creates it if new, takes a lease, registers, and starts the
    /// membership and ownership loops. Partitions are acquired in the background.
    pub async fn start(
        opts: ClusterOptions,
        etcd: Etcd,
        store: Arc<dyn Store>,
        cache: BlockCache,
        stop: watch::Receiver<bool>,
    ) -> Result<ClusterNode, EngineError> {
        let cfg = etcd.init_config(opts.partitions).await?;
        let manifests = Arc::new(EtcdManifestStore::new(etcd.clone(), store.clone()));
        let replicas = Replicas::new(
            store.clone(),
            cache.clone(),
            store_uid(&store).await?,
            opts.db.roots.clone(),
            manifests.clone(),
            opts.db.clock.clone(),
        );
        let lease = LeaseGuard::new();
        let ttl_secs = opts.lease_ttl.as_secs().max(1) as i64;
        let sent = strata_clock::now();
        let (id, granted) = etcd.grant_lease(ttl_secs).await?;
        lease.renewed(sent, Duration::from_secs(granted.max(1) as u64));
        manifests.set_lease(id);
        let node = NodeInfo {
            id: opts.node_id.clone(),
            addr: opts.advertise.clone(),
            started_ms: opts.db.clock.unix_ms(),
        };
        etcd.register(&node, id).await?;
        let inner = Arc::new(Inner {
            partitions: cfg.partitions,
            opens: Semaphore::new(opts.max_concurrent_opens.max(1)),
            opts,
            etcd,
            manifests,
            store,
            cache,
            lease,
            lease_id: AtomicI64::new(id),
            parts: RwLock::new(HashMap::new()),
            view: RwLock::new(Arc::new(ClusterView::default())),
            owned_tx: watch::channel(BTreeSet::new()).0,
            stop,
            tasks: Mutex::new(Vec::new()),
            replicas,
            changed: Arc::new(tokio::sync::Notify::new()),
            map: RwLock::new((Arc::new(PartitionMap::uniform(cfg.partitions)), 0)),
            split: split::SplitState::default(),
        });
        tracing::info!(
            node = %inner.opts.node_id,
            addr = %inner.opts.advertise,
            partitions = inner.partitions,
            lease = format!("{id:x}"),
            "joined the cluster"
        );
        let node = ClusterNode { inner };
        let t1 = tokio::spawn(lease_loop(node.clone()));
        let t2 = tokio::spawn(reconcile_loop(node.clone()));
        let t3 = {
            let (etcd, changed, stop) = (
                node.inner.etcd.clone(),
                node.inner.changed.clone(),
                node.inner.stop.clone(),
            );
            tokio::spawn(async move { etcd.watch_changes(changed, stop).await })
        };
        let t4 = tokio::spawn(txn_resolver_loop(node.clone()));
        node.inner.tasks.lock().extend([t1, t2, t3, t4]);
        Ok(node)
    }

    /// The clock this node reads (its engines' `DbOptions::clock`): record timestamps, the
    /// transaction janitor's ages, staleness.
    pub fn clock(&self) -> &strata_clock::Clock {
        &self.inner.opts.db.clock
    }

    /// The random numbers this node draws (its engines' `DbOptions::rng`): transaction ids and
    /// back-offs.
    pub fn rng(&self) -> &strata_clock::Rng {
        &self.inner.opts.db.rng
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.opts.node_id
    }

    /// Number of partitions the cluster was created with (ids may exceed it after splits:
    /// see [`ClusterNode::map`]).
    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    /// The partition map in force, as this node last read it.
    pub fn map(&self) -> Arc<PartitionMap> {
        self.inner.map.read().0.clone()
    }

    /// Reads the cluster state (and partition map) from etcd now, instead of waiting for the
    /// watch: for a request a peer refused because our map is older than its.
    pub async fn refresh_view(&self) {
        match self.inner.etcd.view().await {
            Ok(v) => self.install_view(Arc::new(v)),
            Err(e) => tracing::debug!(error = %e, "refreshing the cluster state failed"),
        }
    }

    /// Compactor workers registered in the cluster (0: nodes compact their own partitions).
    pub fn compactor_fleet_size(&self) -> usize {
        self.inner.view.read().compactors.len()
    }

    /// The etcd revision of the partition map in force (0: the uniform one).
    pub fn map_revision(&self) -> i64 {
        self.inner.map.read().1
    }

    /// Adopts partition map `map` read at revision `rev`, unless ours is newer (a view read
    /// before our own split committed must not undo it).
    pub(crate) fn adopt_map(&self, map: PartitionMap, rev: i64) {
        let mut cur = self.inner.map.write();
        if rev > cur.1 {
            tracing::info!(
                ranges = map.ranges().len(),
                revision = rev,
                "partition map changed"
            );
            *cur = (Arc::new(map), rev);
        }
    }

    /// Splits partition `p` (owned here) in two now, whatever its load (see `split.rs`).
    /// Returns the new partition's id, or `None` if there was nothing to do.
    pub async fn split_partition(&self, p: u32) -> Result<Option<u32>, EngineError> {
        split::split(self, p).await
    }

    /// Adopts a newer view (and its partition map).
    fn install_view(&self, view: Arc<ClusterView>) {
        match view.partition_map() {
            Ok((map, rev)) => self.adopt_map(map, rev),
            Err(e) => tracing::error!(error = %e, "ignoring an unreadable partition map"),
        }
        *self.inner.view.write() = view;
    }

    /// The cluster's etcd handle.
    pub fn etcd(&self) -> &Etcd {
        &self.inner.etcd
    }

    /// The manifest store (for in-process compaction of owned partitions).
    pub fn manifests(&self) -> Arc<EtcdManifestStore> {
        self.inner.manifests.clone()
    }

    /// Partitions this node serves, updated as they move.
    pub fn owned(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.inner.owned_tx.subscribe()
    }

    /// The engines this node serves right now.
    pub fn serving(&self) -> Vec<Db> {
        self.inner
            .parts
            .read()
            .values()
            .filter_map(|p| match &p.state {
                PartState::Serving(db) => Some(db.clone()),
                _ => None,
            })
            .collect()
    }

    /// Where partition `p` is served. `NotServing` (safe to retry) while it moves.
    pub fn route(&self, p: u32) -> Result<Route, EngineError> {
        if let Some(part) = self.inner.parts.read().get(&p) {
            return match &part.state {
                PartState::Serving(db) if self.inner.lease.valid() => Ok(Route::Local(db.clone())),
                PartState::Serving(_) => Err(EngineError::NotServing(format!(
                    "partition {p}: this node's ownership lease has lapsed"
                ))),
                PartState::Opening => Err(EngineError::NotServing(format!(
                    "partition {p} is being opened on this node"
                ))),
                PartState::Releasing => Err(EngineError::NotServing(format!(
                    "partition {p} is moving to another node"
                ))),
                PartState::Corrupt { why, .. } => Err(EngineError::Corruption(format!(
                    "partition {p} is unavailable: its stored data is corrupt ({why})"
                ))),
            };
        }
        let view = self.inner.view.read().clone();
        match view.owners.get(&p) {
            Some(o) if o.owner.node != self.inner.opts.node_id => {
                Ok(Route::Remote(o.owner.addr.clone()))
            }
            _ => Err(EngineError::NotServing(format!(
                "partition {p} has no owner right now (failover in progress)"
            ))),
        }
    }

    /// An eventually consistent read of `key` (partition `p`) from flushed data, for a
    /// partition this node does not own. `None` when the owner must answer instead: we own
    /// it, or the session saw writes newer than the flushed data. Also returns how many
    /// writes the owner last published beyond that data (the staleness), when known.
    pub async fn replica_get(
        &self,
        p: u32,
        key: &[u8],
        session_seq: Option<u64>,
    ) -> Result<Option<(ReplicaRead, Option<u64>)>, EngineError> {
        if self.inner.parts.read().contains_key(&p) {
            return Ok(None);
        }
        let view = self.inner.view.read().clone();
        let want = view.manifests.get(&p).copied().unwrap_or(0);
        let r = self.inner.replicas.get(p, key, want).await?;
        if session_seq.is_some_and(|s| s > r.flushed_seq) {
            return Ok(None);
        }
        let stale = view
            .stats
            .values()
            .flatten()
            .find(|s| s.partition == p)
            .map(|s| s.durable_seq.saturating_sub(r.flushed_seq));
        Ok(Some((r, stale)))
    }

    /// An eventually consistent scan of partition `p` from flushed data (same rules as
    /// [`ClusterNode::replica_get`]).
    pub async fn replica_scan(
        &self,
        p: u32,
        start: bytes::Bytes,
        end: Option<bytes::Bytes>,
        session_seq: Option<u64>,
    ) -> Result<Option<crate::Scanner>, EngineError> {
        if self.inner.parts.read().contains_key(&p) {
            return Ok(None);
        }
        let want = self
            .inner
            .view
            .read()
            .manifests
            .get(&p)
            .copied()
            .unwrap_or(0);
        let (scanner, flushed_seq) = self.inner.replicas.scan(p, want, start, end).await?;
        if session_seq.is_some_and(|s| s > flushed_seq) {
            return Ok(None);
        }
        Ok(Some(
            scanner
                .with_hash_range(self.map().range_of(p))
                .with_max_age(Some(self.inner.opts.db.max_snapshot_age)),
        ))
    }

    /// The routing table for smart clients.
    pub fn cluster_map(&self) -> pb::ClusterMapResponse {
        let view = self.inner.view.read().clone();
        let map = self.map();
        let owners = map
            .ids()
            .into_iter()
            .map(|p| match view.owners.get(&p) {
                Some(o) => pb::PartitionOwner {
                    partition: p,
                    node_id: o.owner.node.clone(),
                    addr: o.owner.addr.clone(),
                    epoch: o.epoch.unwrap_or(0),
                },
                None => pb::PartitionOwner {
                    partition: p,
                    ..Default::default()
                },
            })
            .collect();
        let nodes = view
            .nodes
            .values()
            .map(|n| pb::NodeEntry {
                node_id: n.id.clone(),
                addr: n.addr.clone(),
                draining: view.draining.contains(&n.id),
            })
            .collect();
        pb::ClusterMapResponse {
            partitions: self.inner.partitions,
            owners,
            nodes,
            revision: view.revision,
            node_id: self.inner.opts.node_id.clone(),
            ranges: if view.partmap.is_some() {
                map.ranges()
                    .iter()
                    .map(|&(start, partition)| pb::HashRange { start, partition })
                    .collect()
            } else {
                Vec::new()
            },
            // The service layer sets the caller's namespace prefix.
            key_prefix: Default::default(),
        }
    }

    /// Leaves the cluster cleanly: hands every partition off (durable, flushed, released)
    /// and revokes the lease so successors take over at once.
    pub async fn shutdown(&self, timeout: Duration) {
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
        let ps: Vec<u32> = self.inner.parts.read().keys().copied().collect();
        let releases = ps.into_iter().map(|p| release(self.clone(), p, timeout));
        futures::future::join_all(releases).await;
        let id = self.inner.lease_id.load(Ordering::SeqCst);
        if let Err(e) = self.inner.etcd.revoke(id).await {
            tracing::warn!(error = %e, "revoking the lease failed; it expires by itself");
        }
        self.inner.lease.expire();
    }

    fn publish_owned(&self) {
        let owned: BTreeSet<u32> = self
            .inner
            .parts
            .read()
            .iter()
            .filter(|(_, p)| matches!(p.state, PartState::Serving(_)))
            .map(|(k, _)| *k)
            .collect();
        self.inner.owned_tx.send_if_modified(|cur| {
            let changed = *cur != owned;
            if changed {
                *cur = owned.clone();
            }
            changed
        });
    }

    /// Partitions this node holds but cannot serve because their stored data is corrupt, with
    /// what failed.
    pub fn corrupt_partitions(&self) -> Vec<(u32, String)> {
        let mut out: Vec<(u32, String)> = self
            .inner
            .parts
            .read()
            .iter()
            .filter_map(|(p, part)| match &part.state {
                PartState::Corrupt { why, .. } => Some((*p, why.clone())),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Drops every partition at once, without flushing: our lease is gone, so successors
    /// may already be serving them.
    fn step_down_all(&self, why: &str) {
        let parts: Vec<(u32, Part)> = self.inner.parts.write().drain().collect();
        if !parts.is_empty() {
            tracing::warn!(partitions = parts.len(), "stepping down: {why}");
        }
        for (p, part) in parts {
            if let PartState::Serving(db) = part.state {
                db.abandon();
            }
            self.inner.manifests.clear_owned(p);
        }
        self.publish_owned();
    }
}

/// Keeps the lease alive; on losing it, steps down and rejoins with a new one.
async fn lease_loop(node: ClusterNode) {
    let inner = &node.inner;
    let ttl = inner.opts.lease_ttl.max(Duration::from_secs(1));
    let mut stop = inner.stop.clone();
    loop {
        tokio::select! {
            _ = strata_clock::sleep(ttl / 4) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let id = inner.lease_id.load(Ordering::SeqCst);
        let sent = strata_clock::now();
        match strata_clock::timeout(ttl / 2, inner.etcd.keep_alive(id)).await {
            Ok(Ok(left)) if left > 0 => {
                inner.lease.renewed(sent, Duration::from_secs(left as u64));
                continue;
            }
            Ok(Ok(_)) => {
                // etcd says the lease is gone: whatever we owned may have moved.
                inner.lease.expire();
                node.step_down_all("our lease expired");
            }
            Ok(Err(e)) => {
                if !inner.lease.valid() {
                    tracing::warn!(error = %e, "cannot renew the lease; not serving until etcd answers");
                }
                continue;
            }
            Err(_) => {
                if !inner.lease.valid() {
                    tracing::warn!("lease keep-alive timed out; not serving until etcd answers");
                }
                continue;
            }
        }
        // Rejoin with a fresh lease.
        loop {
            if *stop.borrow() {
                return;
            }
            let sent = strata_clock::now();
            let res = async {
                let (id, granted) = inner.etcd.grant_lease(ttl.as_secs() as i64).await?;
                let me = NodeInfo {
                    id: inner.opts.node_id.clone(),
                    addr: inner.opts.advertise.clone(),
                    started_ms: inner.opts.db.clock.unix_ms(),
                };
                inner.etcd.register(&me, id).await?;
                Ok::<_, strata_manifest::ManifestError>((id, granted))
            }
            .await;
            match res {
                Ok((id, granted)) => {
                    inner.lease_id.store(id, Ordering::SeqCst);
                    inner.manifests.set_lease(id);
                    inner
                        .lease
                        .renewed(sent, Duration::from_secs(granted.max(1) as u64));
                    tracing::info!(
                        lease = format!("{id:x}"),
                        "rejoined the cluster with a new lease"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rejoining the cluster failed; retrying");
                    strata_clock::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Loads manifests that another process committed for partitions we serve (a compactor
/// worker's commits) and installs them, so reads move to the compacted files long before the
/// worker deletes the inputs after their grace period.
fn adopt_remote_manifests(node: &ClusterNode, view: &ClusterView) {
    for db in node.serving() {
        let p = db.partition();
        if view
            .manifests
            .get(&p)
            .is_some_and(|&v| v > db.manifest_version())
        {
            // Installed explicitly (not only through the manifest watch, whose notification a
            // failed install would use up): retried on every pass until the engine has it.
            let manifests = node.inner.manifests.clone();
            tokio::spawn(async move {
                match strata_manifest::ManifestStore::load_latest(&*manifests, p).await {
                    Ok(Some(m)) => {
                        if let Err(e) = db.adopt_manifest(m).await {
                            tracing::warn!(partition = p, error = %e, "installing a newer manifest failed; retrying");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(partition = p, error = %e, "loading a newer manifest failed")
                    }
                }
            });
        }
    }
}

/// Resolves prepared transactions whose coordinator went silent, on the partitions served
/// here (including ones that arrived with a failover: their intents came back on open).
async fn txn_resolver_loop(node: ClusterNode) {
    let mut stop = node.inner.stop.clone();
    let mut last_janitor = strata_clock::now();
    loop {
        for db in node.serving() {
            if !db.prepared_txns().is_empty() {
                txn_recovery::resolve_stale_intents(&node.inner.etcd, &db).await;
            }
        }
        // One node sweeps the records of dead coordinators: the owner of the first partition.
        if last_janitor.elapsed() >= Duration::from_secs(60) {
            last_janitor = strata_clock::now();
            let first = node.map().ids().first().copied();
            if first.is_some_and(|p| node.serving().iter().any(|db| db.partition() == p)) {
                txn_recovery::txn_janitor(&node.inner.etcd, node.clock()).await;
            }
        }
        tokio::select! {
            _ = strata_clock::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Converges ownership towards the ring, and publishes progress.
async fn reconcile_loop(node: ClusterNode) {
    let inner = &node.inner;
    let mut stop = inner.stop.clone();
    let mut last_stats = strata_clock::now() - Duration::from_secs(10);
    // Per partition: durable seq and when we saw it, for write rates.
    let mut seen: HashMap<u32, (u64, Instant)> = HashMap::new();
    loop {
        match inner.etcd.view().await {
            Ok(view) => {
                let view = Arc::new(view);
                node.install_view(view.clone());
                reconcile(&node, &view);
                adopt_remote_manifests(&node, &view);
            }
            Err(e) => tracing::debug!(error = %e, "reading the cluster state failed"),
        }
        if last_stats.elapsed() >= Duration::from_secs(1) && inner.lease.valid() {
            last_stats = strata_clock::now();
            let now = strata_clock::now();
            let stats: Vec<PartitionProgress> = node
                .serving()
                .iter()
                .map(|db| {
                    let (durable, flushed) = db.progress();
                    let s = db.stats();
                    let p = db.partition();
                    // Seqs count written ops, so their growth is the partition's write rate.
                    let rate = match seen.insert(p, (durable, now)) {
                        Some((prev, at)) if durable >= prev => {
                            let secs = now.duration_since(at).as_secs_f64();
                            if secs > 0.0 {
                                ((durable - prev) as f64 / secs) as u64
                            } else {
                                0
                            }
                        }
                        _ => 0,
                    };
                    PartitionProgress {
                        partition: p,
                        epoch: db.writer_epoch(),
                        durable_seq: durable,
                        flushed_seq: flushed,
                        manifest_version: s.manifest_version,
                        memtable_bytes: s.memtable_bytes,
                        writes_per_sec: rate,
                        l0_files: s.l0_files,
                        level_files: s.level_files.clone(),
                        sst_bytes: s.sst_bytes,
                        last_level_bytes: s.last_level_bytes,
                        corrupt: None,
                    }
                })
                .collect();
            let view = inner.view.read().clone();
            split::consider(&node, &view, &stats);
            let mut stats = stats;
            stats.extend(
                node.corrupt_partitions()
                    .into_iter()
                    .map(|(p, why)| PartitionProgress {
                        partition: p,
                        epoch: 0,
                        durable_seq: 0,
                        flushed_seq: 0,
                        manifest_version: 0,
                        memtable_bytes: 0,
                        writes_per_sec: 0,
                        l0_files: 0,
                        level_files: Vec::new(),
                        sst_bytes: 0,
                        last_level_bytes: 0,
                        corrupt: Some(why),
                    }),
            );
            let id = inner.lease_id.load(Ordering::SeqCst);
            if let Err(e) = inner
                .etcd
                .publish_stats(&inner.opts.node_id, &stats, id)
                .await
            {
                tracing::debug!(error = %e, "publishing progress failed");
            }
        }
        tokio::select! {
            _ = strata_clock::sleep(inner.opts.poll_interval) => {}
            _ = inner.changed.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn reconcile(node: &ClusterNode, view: &ClusterView) {
    let inner = &node.inner;
    let me = inner.opts.node_id.as_str();
    if !inner.lease.valid() || !view.nodes.contains_key(me) {
        // Not (yet) a member at this revision: the lease loop sorts that out.
        return;
    }
    let eligible: Vec<String> = view
        .nodes
        .keys()
        .filter(|n| !view.draining.contains(n))
        .cloned()
        .collect();
    // A cluster whose every node drains still serves: then everyone is eligible.
    let ring = if eligible.is_empty() {
        Ring::new(view.nodes.keys().cloned(), inner.opts.vnodes)
    } else {
        Ring::new(eligible, inner.opts.vnodes)
    };
    let map = node.map();
    for p in map.ids() {
        let want = ring.owner(p);
        let owner = view.owners.get(&p);
        let (held, tenure, serving, fenced, corrupt_since) = match inner.parts.read().get(&p) {
            Some(part) => match &part.state {
                PartState::Serving(db) => (true, part.tenure, true, db.is_fenced(), None),
                PartState::Corrupt { since, .. } => (
                    true,
                    part.tenure,
                    false,
                    false,
                    Some((*since, part.corrupt_failures)),
                ),
                _ => (true, part.tenure, false, false, None),
            },
            None => (false, 0, false, false, None),
        };
        if let Some((since, failures)) = corrupt_since {
            let deposed =
                view.revision >= tenure && owner.is_none_or(|o| o.create_revision != tenure);
            if deposed || want.is_some_and(|w| w != me) {
                // Not ours to hold any more: free the key (the next owner tries for itself).
                let mut parts = inner.parts.write();
                if parts.get(&p).is_some_and(|part| part.tenure == tenure) {
                    parts.remove(&p);
                }
                drop(parts);
                inner.manifests.clear_owned(p);
                if !deposed {
                    let etcd = inner.etcd.clone();
                    tokio::spawn(async move {
                        if let Err(e) = etcd.release(p, tenure).await {
                            tracing::warn!(partition = p, error = %e, "release failed; our lease will expire it");
                        }
                    });
                }
            } else if since.elapsed() >= corrupt_retry_after(failures) {
                if let Some(part) = inner.parts.write().get_mut(&p) {
                    part.state = PartState::Opening;
                }
                tokio::spawn(open_engine(node.clone(), p, tenure));
            }
            continue;
        }
        if held {
            // Our owner key is gone or belongs to a later tenure: we are deposed. (Only a view
            // read after our key was created can tell.)
            let deposed =
                view.revision >= tenure && owner.is_none_or(|o| o.create_revision != tenure);
            if serving && fenced && !deposed {
                // Our engine was fenced although we still hold the owner key (another writer
                // opened the partition while etcd was unreachable, or by hand). Give the key
                // up: the ring's choice re-acquires it and replays, fencing that writer.
                inner.parts.write().remove(&p);
                inner.manifests.clear_owned(p);
                node.publish_owned();
                tracing::warn!(
                    partition = p,
                    "our engine was fenced; releasing the partition"
                );
                let etcd = inner.etcd.clone();
                tokio::spawn(async move {
                    if let Err(e) = etcd.release(p, tenure).await {
                        tracing::warn!(partition = p, error = %e, "release failed; our lease will expire it");
                    }
                });
                continue;
            }
            if serving && deposed {
                if let Some(Part {
                    state: PartState::Serving(db),
                    ..
                }) = inner.parts.write().remove(&p)
                {
                    tracing::warn!(partition = p, "ownership moved without us; abandoning");
                    db.abandon();
                }
                inner.manifests.clear_owned(p);
                node.publish_owned();
                continue;
            }
            if serving && want.is_some_and(|w| w != me) {
                tokio::spawn(release(node.clone(), p, Duration::from_secs(20)));
            }
        } else if let Some(o) = owner.filter(|o| o.owner.node == me) {
            // An owner key of ours that no engine backs (a hand-off whose delete failed, or
            // an earlier life of this node id): free it, or the partition stays stuck.
            let etcd = inner.etcd.clone();
            let rev = o.create_revision;
            tokio::spawn(async move {
                if let Err(e) = etcd.release(p, rev).await {
                    tracing::debug!(partition = p, error = %e, "freeing a stale owner key failed");
                }
            });
        } else if want == Some(me) && owner.is_none() {
            inner.parts.write().insert(
                p,
                Part {
                    state: PartState::Opening,
                    tenure: 0,
                    corrupt_failures: 0,
                },
            );
            tokio::spawn(open(node.clone(), p));
        }
    }
}

/// Acquires and opens partition `p` (marked `Opening` by the caller).
async fn open(node: ClusterNode, p: u32) {
    let inner = &node.inner;
    let _permit = inner.opens.acquire().await;
    let forget = |why: String| {
        tracing::warn!(partition = p, "not opening: {why}");
        inner.parts.write().remove(&p);
    };
    let owner = OwnerInfo {
        node: inner.opts.node_id.clone(),
        addr: inner.opts.advertise.clone(),
    };
    let lease_id = inner.lease_id.load(Ordering::SeqCst);
    let tenure = match inner.etcd.acquire(p, &owner, lease_id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            inner.parts.write().remove(&p);
            return;
        }
        Err(e) => return forget(e.to_string()),
    };
    inner.manifests.set_owned(p, tenure);
    inner.replicas.forget(p);
    if let Some(part) = inner.parts.write().get_mut(&p) {
        part.tenure = tenure;
    }
    open_engine(node.clone(), p, tenure).await;
}

/// Opens the engine of `p`, whose owner key we hold with `tenure` (marked `Opening`), with
/// the hash range the current partition map gives it. On failure the partition is released.
async fn open_engine(node: ClusterNode, p: u32, tenure: i64) {
    let inner = &node.inner;
    let started = strata_clock::now();
    let mut opts = inner.opts.db.clone();
    opts.partition = p;
    opts.lease = Some(inner.lease.clone());
    let Some(range) = node.map().range_of(p) else {
        // Not in the map we know (it cannot shrink, so this is a map we have not read yet):
        // serving it without a range could take keys another partition serves.
        tracing::warn!(partition = p, "not in our partition map; not opening it");
        release_after_failed_open(&node, p, tenure).await;
        return;
    };
    opts.hash_range = Some(range);
    let manifests: Arc<dyn strata_manifest::ManifestStore> = inner.manifests.clone();
    match Db::open(opts, inner.store.clone(), manifests, inner.cache.clone()).await {
        Ok((db, report)) => {
            let mut parts = inner.parts.write();
            match parts.get_mut(&p) {
                Some(part) if part.tenure == tenure => {
                    part.state = PartState::Serving(db.clone());
                    tracing::info!(
                        partition = p,
                        epoch = format!("{:x}", db.writer_epoch()),
                        replayed_segments = report.replayed_segments,
                        replayed_entries = report.replayed_entries,
                        ms = started.elapsed().as_millis() as u64,
                        "partition opened; serving"
                    );
                }
                _ => {
                    // We stepped down while opening.
                    db.abandon();
                }
            }
            drop(parts);
            node.publish_owned();
        }
        Err(EngineError::Corruption(why)) => {
            // Keep the key and report; every other partition of this node goes on serving.
            tracing::error!(
                partition = p,
                error = %why,
                "partition is corrupt: not serving it (DATA_LOSS), serving the others; \
                 trying again later"
            );
            let mut parts = inner.parts.write();
            if let Some(part) = parts.get_mut(&p).filter(|part| part.tenure == tenure) {
                part.corrupt_failures += 1;
                tracing::error!(
                    partition = p,
                    failures = part.corrupt_failures,
                    "next open of the corrupt partition in {:?}",
                    corrupt_retry_after(part.corrupt_failures)
                );
                part.state = PartState::Corrupt {
                    why,
                    since: strata_clock::now(),
                };
            }
        }
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "opening partition failed; releasing it");
            release_after_failed_open(&node, p, tenure).await;
        }
    }
}

/// Gives up partition `p` after its engine could not be opened under `tenure`.
async fn release_after_failed_open(node: &ClusterNode, p: u32, tenure: i64) {
    let inner = &node.inner;
    if let Err(e) = inner.etcd.release(p, tenure).await {
        tracing::warn!(partition = p, error = %e, "release failed; our lease will expire it");
    }
    // Only our own tenure's entry: a later acquisition of p must not lose its bookkeeping.
    let mut parts = inner.parts.write();
    if parts.get(&p).is_some_and(|part| part.tenure == tenure) {
        parts.remove(&p);
        inner.manifests.clear_owned(p);
    }
}

/// Hands partition `p` off: stop serving, make everything accepted durable and flushed,
/// then delete the owner key.
async fn release(node: ClusterNode, p: u32, timeout: Duration) {
    let inner = &node.inner;
    let (db, tenure) = {
        let mut parts = inner.parts.write();
        let Some(part) = parts.get_mut(&p) else {
            return;
        };
        let PartState::Serving(db) = &part.state else {
            return;
        };
        let db = db.clone();
        part.state = PartState::Releasing;
        (db, part.tenure)
    };
    node.publish_owned();
    let started = strata_clock::now();
    if let Err(e) = db.close(timeout).await {
        tracing::warn!(partition = p, error = %e, "closing for hand-off failed");
    }
    match inner.etcd.release(p, tenure).await {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "release failed; our lease will expire it")
        }
    }
    inner.manifests.clear_owned(p);
    inner.parts.write().remove(&p);
    tracing::info!(
        partition = p,
        ms = started.elapsed().as_millis() as u64,
        "partition handed off"
    );
}
