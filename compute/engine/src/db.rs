//! The engine of one partition: recovery, reads, and the handle writes go through.
//!
//! Write path (see `docs/write-path.md` for the safety argument): the commit loop assigns
//! seqs, checks conditions, inserts into the active memtable (invisible to readers), and puts
//! the group as one WAL segment. Only after the PUT returns does `visible_seq` advance and
//! the writers get their acknowledgement. Flush turns frozen memtables into SSTs once every
//! seq in them is durable, and commits a manifest that moves the WAL replay point.

use crate::commit::{self, CommitHandle, Cond, Op, OpOutcome, Role, WriteOp};
use crate::error::{EngineError, EngineResult};
use crate::flush;
use crate::lifecycle::{Lifecycle, State};
use crate::memtable::{Memtable, Snap};
use crate::metrics::EngineMetrics;
use crate::seqs::Seqs;
use crate::sst_reader::{BlockSource, SstReader};
use crate::version::{Version, View};
use bytes::Bytes;
use futures::future::try_join_all;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_cache::BlockCache;
use strata_clock::{Clock, Rng};
use strata_format::{
    decode_wal_segment, encode_wal_segment, Entry, Kind, Manifest, SstOptions, WalEpochFilter,
    WalSegmentHeader, WAL_MARKER_LEN, WAL_MAX_IN_FLIGHT,
};
use strata_manifest::layout::{parse_wal_path, wal_path, wal_prefix, STORE_ID_PATH};
use strata_manifest::{ManifestError, ManifestStore};
use strata_objstore::{PutMode, Store, StoreError};
use tokio::sync::Notify;

/// Bytes a read result adds to a reply beyond its value (field tags, lengths, version): what
/// bounded multi-key reads count per key.
pub const READ_RESULT_OVERHEAD: usize = 24;

/// Engine tuning.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Partition this engine serves.
    pub partition: u32,
    /// A memtable is frozen and flushed when it reaches this size.
    pub memtable_bytes: u64,
    /// Writes wait when all memtables together pass this size (the write-buffer budget).
    pub write_buffer_bytes: u64,
    /// Largest WAL segment a commit group builds before waiting for the previous PUT.
    pub max_group_bytes: usize,
    /// WAL segment PUTs in flight at once (the pipelined group commit; clamped to
    /// `1..=strata_format::WAL_MAX_IN_FLIGHT`). Writes are still acknowledged in segment
    /// order. 1 puts one segment at a time.
    pub wal_pipeline_depth: usize,
    /// A group is put while other PUTs are in flight only once it holds this many bytes (one
    /// is always put at once when nothing is in flight).
    pub wal_pipeline_min_bytes: usize,
    /// A write whose values reach this many bytes is large: large writes are
    /// sequenced only while the large writes sequenced and not yet durable stay within
    /// `large_in_flight_bytes`, and smaller writes that arrive meanwhile go first (see
    /// `commit.rs`). 0 (the default) treats no write as large.
    pub large_write_bytes: usize,
    /// Most bytes of large writes sequenced and not yet durable (one is always let through
    /// when none is in flight): a small write waits behind at most this much of them.
    pub large_in_flight_bytes: usize,
    /// Encoding of flushed SSTs.
    pub sst: SstOptions,
    /// How long a request waits for its WAL PUT before it gets `UNAVAILABLE`.
    pub write_timeout: Duration,
    /// In a cluster: the node's ownership lease. Nothing is read or acknowledged while it
    /// is not known to be valid (a frozen node that wakes up past its lease serves nothing).
    pub lease: Option<crate::LeaseGuard>,
    /// Counters to add to; a node shares one set across its partitions. Fresh when `None`.
    pub metrics: Option<Arc<EngineMetrics>>,
    /// In a cluster: the key-hash range `[start, end)` this partition serves (`end` `None` =
    /// up to 2^64). After a split the partition's older data still holds keys of the other
    /// half; scans leave them out. `None` serves every key.
    pub hash_range: Option<(u64, Option<u64>)>,
    /// A scan stops (`ABORTED`, "snapshot too old") once its view is this old: compaction
    /// deletes replaced files `gc_grace` (5 min) after replacing them, so a view must never be
    /// used past that (see `docs/gc.md`). Keep it below the compactors' grace.
    pub max_snapshot_age: Duration,
    /// Opens the other store roots a manifest may name (a keyspace restored from a snapshot
    /// reads its source's unchanged SSTs in place).
    pub roots: strata_objstore::Roots,
    /// When writes slow down and stop for compaction debt (`stall.rs`).
    pub stall: crate::stall::StallLimits,
    /// The wall clock (TTL expiry, manifest and WAL timestamps) and the monotonic clock
    /// (deadlines). Tests pass a manual one to expire TTLs without sleeping.
    pub clock: Clock,
    /// Random numbers (writer epochs' low bits). Seed it for reproducible runs.
    pub rng: Rng,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            partition: 0,
            memtable_bytes: 64 << 20,
            write_buffer_bytes: 256 << 20,
            max_group_bytes: 8 << 20,
            wal_pipeline_depth: WAL_MAX_IN_FLIGHT as usize,
            wal_pipeline_min_bytes: 32 << 10,
            // Off by default: measured with 1 MiB in flight, small writes beside a flood of
            // large ones waited half as long and the flood ran 44% slower (docs/write-path.md).
            large_write_bytes: 0,
            large_in_flight_bytes: 1 << 20,
            sst: SstOptions::default(),
            write_timeout: Duration::from_secs(10),
            lease: None,
            metrics: None,
            hash_range: None,
            max_snapshot_age: MAX_SNAPSHOT_AGE,
            roots: strata_objstore::Roots::default(),
            stall: crate::stall::StallLimits::default(),
            clock: Clock::system(),
            rng: Rng::from_entropy(),
        }
    }
}

/// WAL segments that landed and are not yet fully covered by a flushed SST.
#[derive(Debug, Default)]
pub(crate) struct Landed {
    /// (segment id, largest seq in it; 0 for an empty fencing marker), in id order.
    pub segments: VecDeque<(u64, u64)>,
    pub last_id: u64,
}

impl Landed {
    pub fn push(&mut self, id: u64, max_seq: u64) {
        self.segments.push_back((id, max_seq));
        self.last_id = self.last_id.max(id);
    }

    /// The first segment recovery must replay once every seq <= `flushed_seq` is in an SST.
    pub fn replay_point(&mut self, flushed_seq: u64) -> u64 {
        while let Some(&(_, max)) = self.segments.front() {
            if max <= flushed_seq {
                self.segments.pop_front();
            } else {
                break;
            }
        }
        self.segments
            .front()
            .map(|&(id, _)| id)
            .unwrap_or(self.last_id + 1)
    }
}

pub(crate) struct DbInner {
    pub opts: DbOptions,
    pub store: Arc<dyn Store>,
    pub manifests: Arc<dyn ManifestStore>,
    pub src: BlockSource,
    pub view: RwLock<Arc<View>>,
    /// The visible, buffered and durable seqs (`seqs.rs`).
    pub seqs: Seqs,
    /// Open, fenced or closed (`lifecycle.rs`).
    pub lifecycle: Lifecycle,
    pub writer_epoch: u64,
    pub landed: Mutex<Landed>,
    pub flush_wanted: Notify,
    pub flushed: Notify,
    pub next_memtable_id: AtomicU64,
    pub metrics: Arc<EngineMetrics>,
    /// Serializes installation of versions (flush and manifest watcher).
    pub install_lock: tokio::sync::Mutex<()>,
    /// Holds writes back while compaction is far behind.
    pub stall: crate::stall::WriteStall,
    /// Refuses writes while the WAL or a flush cannot write for lack of space.
    pub disk: crate::stall::DiskSpace,
    /// The manifest versions readers hold (the in-process compactor's reader floor).
    pub live: Arc<crate::version::LiveVersions>,
    /// Keys locked by prepared cross-partition transactions (see `txn.rs`).
    pub locks: crate::txn::Locks,
    /// Set while the partition prepares to split: new transaction prepares are refused
    /// (retry-safe for their coordinator) so the prepared ones can drain.
    pub refuse_prepares: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for DbInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("partition", &self.opts.partition)
            .field("store", &self.store.describe())
            .finish()
    }
}

/// An open partition engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pub(crate) inner: Arc<DbInner>,
    commit: CommitHandle,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// Summary of what recovery found, for logs and tests.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// The manifest version recovery started from.
    pub manifest_version: u64,
    /// WAL segments replayed into the memtable (those past the manifest's replay point).
    pub replayed_segments: u64,
    /// Entries those segments held.
    pub replayed_entries: u64,
    /// The WAL segment id this open claimed to fence earlier writers.
    pub fence_segment: u64,
    /// The seq the next write gets.
    pub next_seq: u64,
    /// Prepared cross-partition transactions found (their keys are locked until resolved).
    pub prepared_txns: u64,
    /// WAL segments holding writes that were skipped: landed by a deposed writer's pipeline
    /// after a newer writer's marker, so never acknowledged (`strata_format::WalEpochFilter`).
    pub orphaned_segments: u64,
}

/// Reads the store's instance id, creating it on a fresh store.
pub async fn store_uid(store: &Arc<dyn Store>) -> EngineResult<u64> {
    loop {
        match store.get(STORE_ID_PATH).await {
            Ok(b) => {
                let s = std::str::from_utf8(&b).map_err(|e| {
                    EngineError::Corruption(format!("{STORE_ID_PATH} is not text: {e}"))
                })?;
                return u64::from_str_radix(s.trim(), 16).map_err(|e| {
                    EngineError::Corruption(format!("{STORE_ID_PATH} is not a hex id: {e}"))
                });
            }
            Err(StoreError::NotFound(_)) => {
                // The store's identity, not part of any replayable history: fresh entropy.
                let id: u64 = strata_clock::Rng::from_entropy().next_u64();
                let body = Bytes::from(format!("{id:016x}\n"));
                match store.put(STORE_ID_PATH, body, PutMode::Create).await {
                    Ok(()) => return Ok(id),
                    Err(StoreError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Db {
    /// Opens the partition: loads the manifest, fences any previous writer by creating the
    /// next WAL segment name, replays the WAL tail, and starts the commit and flush tasks.
    pub async fn open(
        opts: DbOptions,
        store: Arc<dyn Store>,
        manifests: Arc<dyn ManifestStore>,
        cache: BlockCache,
    ) -> EngineResult<(Db, RecoveryReport)> {
        let p = opts.partition;
        let uid = store_uid(&store).await?;
        let src = BlockSource {
            store: store.clone(),
            cache,
            store_uid: uid,
            roots: opts.roots.clone(),
        };
        // Fence: claim the next segment name with a create-if-absent marker. A previous
        // writer still running fails its next create (it never skips a name, and markers are
        // never garbage-collected) and stops; anything it acknowledged is below the fence.
        // Our writer epoch is the marker's name in the high bits, so epochs grow with every
        // takeover, plus random low bits so two racing openers never write identical bytes.
        let mut floor = 0u64;
        let (manifest, fetched, fence_id, writer_epoch, window_end) = loop {
            let manifest = load_or_init_manifest(&*manifests, p, &opts.clock).await?;
            let mut listed: BTreeMap<u64, u64> = store
                .list(&wal_prefix(p))
                .await?
                .into_iter()
                .filter_map(|o| parse_wal_path(&o.path).map(|id| (id, o.size)))
                .collect();
            let max_id = listed.keys().next_back().copied().unwrap_or(0);
            let fence_id = max_id
                .max(manifest.wal_replay_from.saturating_sub(1))
                .max(floor)
                + 1;
            let writer_epoch = (fence_id << EPOCH_RANDOM_BITS)
                | (opts.rng.next_u64() & ((1 << EPOCH_RANDOM_BITS) - 1));
            let marker = encode_wal_segment(
                &WalSegmentHeader {
                    segment_id: fence_id,
                    writer_epoch,
                    created_ms: opts.clock.unix_ms(),
                },
                &[],
            );
            match store
                .put(&wal_path(p, fence_id), marker, PutMode::Create)
                .await
            {
                Ok(()) => {}
                Err(StoreError::AlreadyExists(_)) => {
                    tracing::warn!(
                        partition = p,
                        fence_id,
                        "another writer raced us to the fence; re-listing"
                    );
                    strata_clock::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            // Claim the rest of the window (a deposed writer's pipeline may still land
            // segments at fence_id + 1 .. fence_id + WAL_MAX_IN_FLIGHT - 1, never above) and
            // fill the gaps its pipeline may have left: at or above the highest listed *data*
            // segment minus WAL_MAX_IN_FLIGHT - 1 (a writer starts a PUT only once everything
            // WAL_MAX_IN_FLIGHT below it landed; measured from the highest data segment, not
            // the highest name, so the markers of an open that failed before filling never push
            // a gap out of reach). A filled gap stops that writer there: it acknowledges nothing
            // at or above it, and the replay's epoch filter skips what its pipeline landed
            // above. A lower hole is GC or a lost segment, reported below.
            let window_end = fence_id + WAL_MAX_IN_FLIGHT - 1;
            let max_data = listed
                .iter()
                .rev()
                .find(|(_, &size)| size > WAL_MARKER_LEN)
                .map_or(0, |(&id, _)| id);
            let gap_lo = max_data
                .saturating_sub(WAL_MAX_IN_FLIGHT - 1)
                .max(manifest.wal_replay_from)
                .max(1);
            let gaps: Vec<u64> = (gap_lo..=max_id)
                .filter(|id| !listed.contains_key(id))
                .collect();
            let fills: Vec<u64> = gaps
                .iter()
                .copied()
                .chain(fence_id + 1..=window_end)
                .collect();
            try_join_all(
                fills
                    .iter()
                    .map(|&id| claim_segment(&store, p, id, writer_epoch, opts.clock.unix_ms())),
            )
            .await?;
            for id in &gaps {
                listed.insert(*id, WAL_MARKER_LEN);
            }
            // Re-read the manifest after the fence and the fills: if the replay point moved
            // past the marker while we listed (a slow open racing WAL GC), the names we saw may
            // have been deleted and the marker fences nobody: fence again above the replay
            // point. This manifest only bounds what to fetch; the replay starts at the replay
            // point of the one read after the fetch (below).
            let latest = load_or_init_manifest(&*manifests, p, &opts.clock).await?;
            if let Some(f) = refence_floor(p, fence_id, window_end, &latest) {
                floor = f;
                continue;
            }
            let fetched = fetch_wal_range(&store, p, &listed, &latest, fence_id).await?;
            // And once more after the fetch: a marker may sit on a name WAL GC deleted (our
            // fill, or another opener's slow fence or fill landing late); replayed, its epoch
            // would make the filter skip acknowledged segments above it. A name deleted before
            // we fetched it lies below a replay point committed before that delete, so at or
            // below this manifest's: the replay starts there and never meets such a marker
            // (found by the model check, `post_fetch_check`).
            let after = load_or_init_manifest(&*manifests, p, &opts.clock).await?;
            if after.wal_replay_from < latest.wal_replay_from {
                // Every writer only ever raises it (flush takes the max, claims and compactions
                // copy it); lower would leave fetched-over segments out of the replay.
                return Err(EngineError::Corruption(format!(
                    "the replay point of partition {p} moved backwards while opening ({} -> {})",
                    latest.wal_replay_from, after.wal_replay_from
                )));
            }
            if let Some(f) = refence_floor(p, fence_id, window_end, &after) {
                floor = f;
                continue;
            }
            break (after, fetched, fence_id, writer_epoch, window_end);
        };

        // Replay [replay_from, fence_id) of the manifest read after the fetch, in id order.
        let active = Arc::new(Memtable::new(1));
        let mut landed = Landed::default();
        let mut report = RecoveryReport {
            manifest_version: manifest.version,
            fence_segment: fence_id,
            ..Default::default()
        };
        let mut max_seq = manifest.last_flushed_seq;
        let mut epochs = WalEpochFilter::default();
        for (id, hdr, batches) in fetched
            .into_iter()
            .filter(|(id, _, _)| *id >= manifest.wal_replay_from)
        {
            if !epochs.admit(&hdr) {
                // Landed by a deposed writer's pipeline above a newer writer's marker: none of
                // it was acknowledged (see WalEpochFilter). Older markers there mean nothing.
                if !batches.is_empty() {
                    tracing::info!(
                        partition = p,
                        segment = id,
                        epoch = hdr.writer_epoch,
                        "skipping a WAL segment a deposed writer landed after a newer marker"
                    );
                    report.orphaned_segments += 1;
                }
                continue;
            }
            let mut seg_max = 0;
            for e in batches.iter().flatten() {
                seg_max = seg_max.max(e.seq);
                if e.seq > manifest.last_flushed_seq {
                    // An exactly sized copy: the decoded entry is a slice of the whole segment,
                    // which the memtable would pin while counting only the entry.
                    active.insert(
                        &Entry {
                            key: Bytes::copy_from_slice(&e.key),
                            value: Bytes::copy_from_slice(&e.value),
                            ..e.clone()
                        },
                        false,
                    );
                    report.replayed_entries += 1;
                }
            }
            max_seq = max_seq.max(seg_max);
            landed.push(id, seg_max);
            report.replayed_segments += 1;
        }
        landed.push(fence_id, 0);
        // A flush that covers everything moves the replay point to our first data segment,
        // never into the window where orphans may sit.
        landed.last_id = window_end;

        // Claim the manifest: stamp it with our epoch. From here on, a manifest stamped with
        // another epoch means another writer took over (compactors keep the stamp).
        let manifest = claim_manifest(&*manifests, p, manifest, writer_epoch, &opts.clock).await?;
        report.manifest_version = manifest.version;
        // Seqs continue above everything flushed, including what the claim rebased onto.
        max_seq = max_seq.max(manifest.last_flushed_seq);
        report.next_seq = max_seq + 1;
        let live = Arc::new(crate::version::LiveVersions::default());
        let mut version = open_version(&src, p, manifest.clone(), &HashMap::new()).await?;
        version.hold = Some(live.hold(version.manifest.version));
        let version = Arc::new(version);
        let inner = Arc::new(DbInner {
            opts: opts.clone(),
            store: store.clone(),
            manifests,
            src,
            view: RwLock::new(Arc::new(View {
                active,
                imms: Vec::new(),
                version,
            })),
            seqs: Seqs::new(max_seq),
            lifecycle: Lifecycle::new(),
            writer_epoch,
            landed: Mutex::new(landed),
            flush_wanted: Notify::new(),
            flushed: Notify::new(),
            next_memtable_id: AtomicU64::new(2),
            metrics: opts.metrics.clone().unwrap_or_default(),
            install_lock: tokio::sync::Mutex::new(()),
            stall: crate::stall::WriteStall::new(opts.stall),
            disk: crate::stall::DiskSpace::default(),
            live,
            locks: crate::txn::Locks::default(),
            refuse_prepares: std::sync::atomic::AtomicBool::new(false),
        });
        // Prepared transactions lock their keys again before anything is served: the intent
        // records came back with the WAL replay (or an SST).
        report.prepared_txns = relock_prepared(&inner).await?;
        let (commit, commit_task) = commit::start(inner.clone(), max_seq + 1, window_end + 1);
        let flush_task = tokio::spawn(flush::run(inner.clone()));
        let watch_task = tokio::spawn(flush::watch_manifests(inner.clone()));
        let gc_task = tokio::spawn(crate::wal_gc::run(inner.clone()));
        let db = Db {
            inner,
            commit,
            tasks: Arc::new(Mutex::new(vec![
                commit_task,
                flush_task,
                watch_task,
                gc_task,
            ])),
        };
        // A large replayed tail is flushed right away rather than kept in memory.
        if db.inner.view.read().active.approximate_bytes() >= opts.memtable_bytes {
            db.commit.request_freeze();
        }
        Ok((db, report))
    }

    fn check_open(&self) -> EngineResult<()> {
        match self.inner.lifecycle.get() {
            State::Open => Ok(()),
            State::Fenced => Err(EngineError::NotServing(
                "this node lost ownership of the partition (fenced by a newer writer)".into(),
            )),
            _ => Err(EngineError::Closed),
        }?;
        if let Some(l) = &self.inner.opts.lease {
            if !l.valid() {
                return Err(EngineError::NotServing(format!(
                    "partition {}: this node's ownership lease has lapsed",
                    self.inner.opts.partition
                )));
            }
        }
        Ok(())
    }

    /// Snapshot for readers: the visible seq first, then the view, so every entry with a seq
    /// at or below the snapshot seq is in the view.
    pub(crate) fn snapshot(&self) -> (Snap, Arc<View>) {
        let snap = self.inner.seqs.snapshot();
        let view = self.inner.view.read().clone();
        (snap, view)
    }

    /// Reads the newest entry of `key` that `snap` sees, tombstones included.
    pub(crate) async fn get_entry(
        view: &View,
        key: &[u8],
        snap: Snap,
    ) -> EngineResult<Option<Entry>> {
        for m in view.memtables() {
            if let Some(e) = m.get(key, snap) {
                return Ok(Some(e));
            }
        }
        // Every SST entry is durable (flush waits for the WAL), so a seq bound suffices.
        let read_seq = snap.max();
        for sst in &view.version.l0 {
            if let Some(e) = sst.get(key, read_seq).await? {
                return Ok(Some(e));
            }
        }
        for level in 0..view.version.levels.len() {
            if let Some(sst) = view.version.level_file(level, key) {
                if let Some(e) = sst.get(key, read_seq).await? {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }

    /// The live value of `key`: `(value, version)`, or `None` if absent, deleted or expired.
    pub async fn get(&self, key: &[u8]) -> EngineResult<Option<(Bytes, u64)>> {
        self.check_open()?;
        self.check_keys(std::iter::once(key))?;
        self.inner.metrics.gets.fetch_add(1, Ordering::Relaxed);
        if !self.inner.locks.is_empty() {
            let key = Bytes::copy_from_slice(key);
            self.wait_unlocked(|l| l.first_locked([&key])).await?;
        }
        let (seq, view) = self.snapshot();
        let e = Self::get_entry(&view, key, seq).await?;
        Ok(live(e, self.inner.opts.clock.unix_ms()))
    }

    /// Several keys from one snapshot.
    pub async fn multi_get(&self, keys: &[Bytes]) -> EngineResult<Vec<Option<(Bytes, u64)>>> {
        self.multi_get_bounded(keys, usize::MAX).await
    }

    /// Several keys from one snapshot, in order, until the values read pass `budget` bytes
    /// (counting [`READ_RESULT_OVERHEAD`] per key): returns the results of a prefix of
    /// `keys`, never empty when `keys` is not. The caller sends the rest again, so a reply is
    /// bounded before it is built.
    pub async fn multi_get_bounded(
        &self,
        keys: &[Bytes],
        budget: usize,
    ) -> EngineResult<Vec<Option<(Bytes, u64)>>> {
        self.check_open()?;
        self.check_keys(keys.iter().map(|k| k.as_ref()))?;
        self.inner
            .metrics
            .gets
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        self.wait_unlocked(|l| l.first_locked(keys)).await?;
        let (seq, view) = self.snapshot();
        let now = self.inner.opts.clock.unix_ms();
        let mut out = Vec::with_capacity(keys.len());
        let mut used = 0usize;
        for k in keys {
            let r = live(Self::get_entry(&view, k, seq).await?, now);
            used = used
                .saturating_add(r.as_ref().map_or(0, |(v, _)| v.len()))
                .saturating_add(READ_RESULT_OVERHEAD);
            if used > budget && !out.is_empty() {
                break;
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Applies `ops` atomically: all conditions are checked against the state before the
    /// batch; one failed condition fails the whole batch with nothing applied.
    ///
    /// A write touching a key locked by a transaction being committed waits for it.
    pub async fn write(&self, ops: Vec<WriteOp>, durable: bool) -> EngineResult<Vec<OpOutcome>> {
        self.check_open()?;
        self.check_keys(ops.iter().map(|o| o.key.as_ref()))?;
        // Refused (nothing applied) while the disk is full; held back (or refused) while
        // compaction is far behind.
        self.inner.disk.check()?;
        self.inner
            .stall
            .admit(self.inner.opts.partition, &self.inner.metrics, || {
                self.inner.view.read().version.l0.len()
            })
            .await?;
        self.warm_reads(&ops).await;
        let timeout = self.inner.opts.write_timeout;
        if self.inner.locks.is_empty() {
            // The common case, without a copy of the ops. (A lock taken meanwhile makes the
            // commit loop refuse the write, retry-safe.)
            return self.commit.submit(ops, durable, Role::Plain, timeout).await;
        }
        let deadline = strata_clock::now() + timeout;
        loop {
            let keys: Vec<Bytes> = ops.iter().map(|o| o.key.clone()).collect();
            self.wait_unlocked(|l| l.first_locked(&keys)).await?;
            match self
                .commit
                .submit(ops.clone(), durable, Role::Plain, timeout)
                .await
            {
                Err(EngineError::Locked(_)) if strata_clock::now() < deadline => {}
                r => return r,
            }
        }
    }

    /// Fetches into the block cache what the commit loop will read for `ops`: a condition's
    /// or a delete's current state. The commit loop sequences every write of the partition, so
    /// a read there that misses the cache would hold them all for an object-store GET; read
    /// here first, it finds memory. Best effort: the loop reads again (a flush in between may
    /// change the files) and answers any error itself.
    async fn warm_reads(&self, ops: &[WriteOp]) {
        let keys: Vec<&[u8]> = ops
            .iter()
            .filter(|o| !matches!((&o.op, o.cond), (Op::Put { .. }, Cond::None)))
            .map(|o| o.key.as_ref())
            .collect();
        if keys.is_empty() {
            return;
        }
        let view = self.inner.view.read().clone();
        let reads = keys.iter().map(|k| Self::get_entry(&view, k, Snap::LATEST));
        let _ = futures::future::join_all(reads).await;
    }

    /// Convenience: an unconditional durable put.
    pub async fn put(&self, key: Bytes, value: Bytes) -> EngineResult<u64> {
        let r = self
            .write(
                vec![WriteOp {
                    key,
                    op: Op::Put { value, ttl_ms: 0 },
                    cond: Cond::None,
                }],
                true,
            )
            .await?;
        Ok(r.first().map(|o| o.version).unwrap_or(0))
    }

    /// Starts a scan over a snapshot.
    ///
    /// Not async, so it cannot wait for locked keys: callers use [`Db::scan_unlocked`] first.
    pub fn scan(&self, start: Bytes, end: Option<Bytes>) -> EngineResult<crate::scan::Scanner> {
        self.check_open()?;
        let (seq, view) = self.snapshot();
        Ok(
            crate::scan::Scanner::new(view, seq, start, end, &self.inner.opts.clock)
                .with_hash_range(self.inner.opts.hash_range)
                .with_max_age(Some(self.inner.opts.max_snapshot_age)),
        )
    }

    /// Refuses (retry-safe) keys outside this partition's hash range: a request routed with a
    /// partition map older than a split. Never lets the other half's keys into this partition.
    fn check_keys<'a>(&self, mut keys: impl Iterator<Item = &'a [u8]>) -> EngineResult<()> {
        if self.inner.opts.hash_range.is_none() {
            return Ok(());
        }
        if keys.any(|k| !self.serves_key(k)) {
            return Err(EngineError::Split(format!(
                "partition {} no longer serves this key (it split); retry with the new map",
                self.inner.opts.partition
            )));
        }
        Ok(())
    }

    /// Whether `key` belongs to this partition's hash range.
    pub fn serves_key(&self, key: &[u8]) -> bool {
        self.inner
            .opts
            .hash_range
            .is_none_or(|r| strata_format::hash_in_range(xxhash_rust::xxh3::xxh3_64(key), r))
    }

    /// The hash range this engine serves.
    pub fn hash_range(&self) -> Option<(u64, Option<u64>)> {
        self.inner.opts.hash_range
    }

    /// Starts a scan once no key in `[start, end)` is locked by a transaction being committed.
    pub async fn scan_unlocked(
        &self,
        start: Bytes,
        end: Option<Bytes>,
    ) -> EngineResult<crate::scan::Scanner> {
        self.check_open()?;
        self.wait_unlocked(|l| l.locked_in_range(&start, end.as_deref()))
            .await?;
        self.scan(start, end)
    }

    /// Waits (up to the write timeout) until `locked` finds no key locked by a prepared
    /// transaction. Readers check this *before* taking their snapshot: a lock is released
    /// only once the resolve is visible, so a snapshot taken after the check sees it.
    async fn wait_unlocked(
        &self,
        locked: impl Fn(&crate::txn::Locks) -> Option<Arc<str>>,
    ) -> EngineResult<()> {
        if self.inner.locks.is_empty() {
            return Ok(());
        }
        let deadline = strata_clock::now() + self.inner.opts.write_timeout;
        self.inner
            .locks
            .wait_until_free(deadline, locked)
            .await
            .map_err(|txn| {
                EngineError::Locked(format!(
                    "partition {}: a key is locked by transaction {txn}, still unresolved after \
                     {:?}; nothing was applied",
                    self.inner.opts.partition, self.inner.opts.write_timeout
                ))
            })
    }

    /// Phase one of a cross-partition transaction here: checks the ops' conditions, locks
    /// their keys and makes the intent durable. Idempotent for the same `txn`.
    pub async fn txn_prepare(
        &self,
        txn: &str,
        created_ms: u64,
        ops: Vec<WriteOp>,
    ) -> EngineResult<()> {
        self.check_open()?;
        self.check_keys(ops.iter().map(|o| o.key.as_ref()))?;
        self.warm_reads(&ops).await;
        self.commit
            .submit(
                ops,
                true,
                Role::Prepare {
                    txn: Arc::from(txn),
                    created_ms,
                },
                self.inner.opts.write_timeout,
            )
            .await
            .map(|_| ())
    }

    /// Phase three: applies (commit) or drops (abort) the intent of `txn`; answers the
    /// versions the ops got (in prepare order; empty on abort). Idempotent.
    pub async fn txn_resolve(&self, txn: &str, commit: bool) -> EngineResult<Vec<u64>> {
        self.check_open()?;
        let deadline = strata_clock::now() + self.inner.opts.write_timeout;
        loop {
            let r = self
                .commit
                .submit(
                    Vec::new(),
                    true,
                    Role::Resolve {
                        txn: Arc::from(txn),
                        commit,
                    },
                    self.inner.opts.write_timeout,
                )
                .await;
            match r {
                // A concurrent resolve of the same transaction is landing: wait for it and
                // answer from its marker.
                Err(EngineError::Locked(_)) if strata_clock::now() < deadline => {
                    strata_clock::sleep(Duration::from_millis(20)).await;
                }
                r => return r.map(|o| o.into_iter().map(|o| o.version).collect()),
            }
        }
    }

    /// For a split (the engine closed and fully flushed): copies the live entries whose key
    /// hash is in `range` — latest version each, with version and expiry — into new SSTs under
    /// partition `target`'s prefix. Returns them (as L0 files) and the largest seq this
    /// partition ever assigned, which the new partition continues above.
    pub async fn export_for_split(
        &self,
        target: u32,
        range: (u64, Option<u64>),
    ) -> EngineResult<(Vec<strata_format::SstInfo>, u64)> {
        let view = self.inner.view.read().clone();
        if !view.imms.is_empty() || !view.active.is_empty() {
            return Err(EngineError::Unavailable(
                "memtables were not flushed before the split".into(),
            ));
        }
        if !self.inner.locks.is_empty() || !self.inner.locks.all_pending().is_empty() {
            return Err(EngineError::Unavailable(
                "prepared transactions arrived before the split".into(),
            ));
        }
        let last_seq = (self.inner.seqs.durable())
            .max(view.version.manifest.last_flushed_seq)
            .max(self.inner.seqs.visible());
        let mut scan = crate::scan::Scanner::new(
            view,
            Snap::LATEST,
            Bytes::new(),
            None,
            &self.inner.opts.clock,
        )
        .with_hash_range(Some(range));
        let mut files = Vec::new();
        let mut builder = strata_format::SstBuilder::new(self.inner.opts.sst.clone());
        while !scan.is_done() {
            for e in scan.next_entries(1024).await? {
                builder.add(&e)?;
                if builder.estimated_size() >= SPLIT_SST_BYTES {
                    let full = std::mem::replace(
                        &mut builder,
                        strata_format::SstBuilder::new(self.inner.opts.sst.clone()),
                    );
                    files.push(self.put_split_sst(target, full).await?);
                }
            }
        }
        if !builder.is_empty() {
            files.push(self.put_split_sst(target, builder).await?);
        }
        // L0 is newest first; these do not overlap, so any order reads the same.
        Ok((files, last_seq))
    }

    async fn put_split_sst(
        &self,
        target: u32,
        builder: strata_format::SstBuilder,
    ) -> EngineResult<strata_format::SstInfo> {
        let (data, props) = builder.finish()?;
        loop {
            let id = strata_manifest::layout::new_sst_id();
            match self
                .inner
                .store
                .put(
                    &strata_manifest::layout::sst_path(target, id),
                    data.clone(),
                    PutMode::Create,
                )
                .await
            {
                Ok(()) => {
                    return Ok(strata_format::SstInfo {
                        id,
                        level: 0,
                        props,
                    })
                }
                Err(StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Refuses new transaction prepares and waits (up to `timeout`) until no transaction is
    /// prepared here; true if none is. Refusal stays on when it succeeds (the caller is about
    /// to close the engine); it is lifted when it fails.
    pub async fn drain_prepared(&self, timeout: Duration) -> bool {
        self.inner.refuse_prepares.store(true, Ordering::SeqCst);
        let deadline = strata_clock::now() + timeout;
        let drained = self
            .inner
            .locks
            .wait_until_free(deadline, |l| {
                l.all_pending()
                    .first()
                    .map(|(id, _)| Arc::from(id.as_str()))
            })
            .await
            .is_ok();
        if !drained {
            self.inner.refuse_prepares.store(false, Ordering::SeqCst);
        }
        drained
    }

    /// Transactions prepared here and not yet resolved: (id, how long they have been locked).
    pub fn prepared_txns(&self) -> Vec<(String, Duration)> {
        self.inner.locks.all_pending()
    }

    /// Engine metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.inner.metrics
    }

    /// Current state for status pages and metrics.
    pub fn stats(&self) -> DbStats {
        let view = self.inner.view.read().clone();
        DbStats {
            visible_seq: self.inner.seqs.visible(),
            memtable_bytes: view.memtables().map(|m| m.approximate_bytes()).sum(),
            immutable_memtables: view.imms.len() as u64,
            manifest_version: view.version.manifest.version,
            l0_files: view.version.l0.len() as u64,
            level_files: view.version.levels.iter().map(|l| l.len() as u64).collect(),
            sst_bytes: view
                .version
                .l0
                .iter()
                .chain(view.version.levels.iter().flatten())
                .map(|r| r.info.props.file_size)
                .sum(),
            last_level_bytes: view
                .version
                .levels
                .iter()
                .rev()
                .find(|l| !l.is_empty())
                .map(|l| l.iter().map(|r| r.info.props.file_size).sum())
                .unwrap_or(0),
        }
    }

    /// Freezes the active memtable and waits until every memtable is flushed to SSTs.
    pub async fn flush(&self) -> EngineResult<()> {
        self.check_open()?;
        self.commit.freeze_now().await?;
        loop {
            let notified = self.inner.flushed.notified();
            if self.inner.view.read().imms.is_empty() {
                return Ok(());
            }
            self.check_open()?;
            self.inner.flush_wanted.notify_one();
            let _ = strata_clock::timeout(Duration::from_millis(200), notified).await;
        }
    }

    /// Stops accepting writes, makes every accepted write durable in the WAL, flushes the
    /// memtables (best effort within `timeout`), and stops background tasks.
    pub async fn close(&self, timeout: Duration) -> EngineResult<()> {
        let was_open = self.inner.lifecycle.is_open();
        // One deadline for all of it, whatever the store or the disk does.
        let deadline = strata_clock::now() + timeout;
        // Bounded: with the store down, accepted writes can't become durable; they stay
        // unacknowledged (their clients see UNAVAILABLE) and nothing acknowledged is at risk.
        if strata_clock::timeout_at(deadline, self.commit.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("accepted writes did not become durable before the close deadline");
        }
        // Writes acknowledged as buffered (DURABILITY_BUFFERED) that are still not in the WAL
        // are lost with this process: say how many.
        let durable = self.inner.seqs.durable();
        let buffered = self.inner.seqs.buffered();
        if buffered > durable {
            tracing::error!(
                partition = self.inner.opts.partition,
                lost = buffered - durable,
                "buffered writes could not be made durable before the close deadline and are lost \
                 (at most this many acknowledged DURABILITY_BUFFERED ops)"
            );
        }
        if was_open {
            // The commit loop may be stuck behind a WAL put that cannot land: bounded too.
            let _ = strata_clock::timeout_at(deadline, self.commit.freeze_now()).await;
            while !self.inner.view.read().imms.is_empty()
                && strata_clock::now() < deadline
                && self.inner.lifecycle.is_open()
            {
                let notified = self.inner.flushed.notified();
                self.inner.flush_wanted.notify_one();
                let _ = strata_clock::timeout(Duration::from_millis(200), notified).await;
            }
        }
        self.inner.lifecycle.close();
        self.inner.flush_wanted.notify_waiters();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            t.abort();
        }
        Ok(())
    }

    /// Stops serving at once without flushing: for a node that lost its lease, whose
    /// partitions may already have a new owner. Nothing unacknowledged becomes acknowledged.
    pub fn abandon(&self) {
        self.inner.lifecycle.fence();
        self.inner.flush_wanted.notify_waiters();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            t.abort();
        }
    }

    /// Whether the engine stopped serving by itself (a newer writer fenced it).
    pub fn is_fenced(&self) -> bool {
        self.inner.lifecycle.is_fenced()
    }

    /// The partition this engine serves.
    pub fn partition(&self) -> u32 {
        self.inner.opts.partition
    }

    /// The oldest manifest version a reader of this engine still holds: an SST that a commit
    /// of a newer version dropped is read by no one here any more. For the in-process
    /// compactor's reader floor ([`strata_compactor`]'s `with_reader_floor`).
    pub fn oldest_held_version(&self) -> Option<u64> {
        self.inner.live.oldest()
    }

    /// The clock this engine reads (`DbOptions::clock`), for the components that run beside
    /// it and must agree with it (the in-process compactor's TTLs and graces).
    pub fn clock(&self) -> &Clock {
        &self.inner.opts.clock
    }

    /// Installs `m` (committed by another process: a compactor worker) if it is newer than
    /// the version this engine reads from. Idempotent; callers retry on failure.
    pub async fn adopt_manifest(&self, m: Arc<strata_format::Manifest>) -> EngineResult<()> {
        if m.version <= self.manifest_version() {
            return Ok(());
        }
        crate::flush::install(&self.inner, m).await
    }

    /// Version of the manifest this engine reads from.
    pub fn manifest_version(&self) -> u64 {
        self.inner.view.read().version.manifest.version
    }

    /// Largest durable seq and largest seq in a flushed SST.
    pub fn progress(&self) -> (u64, u64) {
        let durable = self.inner.seqs.durable();
        let flushed = self.inner.view.read().version.manifest.last_flushed_seq;
        (durable, flushed)
    }

    /// The writer epoch of this open (random; distinguishes writers in WAL headers).
    pub fn writer_epoch(&self) -> u64 {
        self.inner.writer_epoch
    }
}

/// Engine state summary.
#[derive(Debug, Clone, Default)]
pub struct DbStats {
    /// Every write up to this seq is visible to reads.
    pub visible_seq: u64,
    /// Bytes in the active and frozen memtables.
    pub memtable_bytes: u64,
    /// Frozen memtables waiting for their flush.
    pub immutable_memtables: u64,
    /// The current manifest's version.
    pub manifest_version: u64,
    /// SSTs in L0.
    pub l0_files: u64,
    /// SSTs in each level below L0 (L1 first).
    pub level_files: Vec<u64>,
    /// Bytes of all SSTs the manifest lists.
    pub sst_bytes: u64,
    /// Bytes of the deepest non-empty level.
    pub last_level_bytes: u64,
}

/// An entry as a live value, or `None` for tombstones and expired values.
pub(crate) fn live(e: Option<Entry>, now: u64) -> Option<(Bytes, u64)> {
    let e = e?;
    if e.kind == Kind::Delete || (e.expires_at_ms != 0 && e.expires_at_ms <= now) {
        return None;
    }
    Some((e.value, e.seq))
}

/// Default bound on a scan's view age: below the compactors' default 5 min `gc_grace`, with
/// room for the time a node takes to adopt a manifest another process committed.
pub const MAX_SNAPSHOT_AGE: Duration = Duration::from_secs(240);

/// Target size of the SSTs a split writes for the new partition.
const SPLIT_SST_BYTES: usize = 32 << 20;

/// If the replay point of `m` moved past our fence while we opened (a slow open racing WAL
/// GC), the names we saw may have been deleted and the marker fences nobody: the floor to
/// fence again above (past our window too).
fn refence_floor(p: u32, fence_id: u64, window_end: u64, m: &Manifest) -> Option<u64> {
    if m.wal_replay_from <= fence_id {
        return None;
    }
    tracing::warn!(
        partition = p,
        fence_id,
        replay_from = m.wal_replay_from,
        "replay point moved past our fence while opening; fencing again"
    );
    Some(m.wal_replay_from.max(window_end + 1) - 1)
}

/// Reads the WAL segments `[m.wal_replay_from, fence_id)` (every one must be listed: ids are
/// sequential, the pipeline's gaps among the highest were filled, and the fence is past the
/// tail), each checked, in id order.
async fn fetch_wal_range(
    store: &Arc<dyn Store>,
    p: u32,
    listed: &BTreeMap<u64, u64>,
    m: &Manifest,
    fence_id: u64,
) -> EngineResult<Vec<(u64, WalSegmentHeader, Vec<Vec<Entry>>)>> {
    let first_listed = listed.range(m.wal_replay_from..).next().map(|(id, _)| *id);
    let ids: Vec<u64> = listed
        .range(m.wal_replay_from..fence_id)
        .map(|(id, _)| *id)
        .collect();
    if let Some(first) = first_listed {
        if first != m.wal_replay_from && first < fence_id {
            return Err(EngineError::Corruption(format!(
                "WAL segment {} is missing (manifest {} replays from it; first present is {first})",
                wal_path(p, m.wal_replay_from),
                m.version
            )));
        }
    }
    for w in ids.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(EngineError::Corruption(format!(
                "WAL segment {} is missing between {} and {}",
                wal_path(p, w[0] + 1),
                w[0],
                w[1]
            )));
        }
    }
    // Fetch concurrently, apply in order.
    try_join_all(ids.iter().map(|&id| {
        let store = store.clone();
        async move {
            let path = wal_path(p, id);
            let data = store.get(&path).await?;
            let (hdr, batches) = decode_wal_segment(&data)
                .map_err(|e| EngineError::Corruption(format!("WAL segment {path}: {e}")))?;
            if hdr.segment_id != id {
                return Err(EngineError::Corruption(format!(
                    "WAL segment {path} says it is segment {}",
                    hdr.segment_id
                )));
            }
            Ok::<_, EngineError>((id, hdr, batches))
        }
    }))
    .await
}

/// Claims segment `id` for the writer of `epoch` with an empty marker. A segment already there
/// of a lower epoch is fine (a deposed writer's segment: it landed first, or it is an orphan of
/// its pipeline that the replay skips); one of a higher epoch means a newer writer opened
/// concurrently and fenced us.
async fn claim_segment(
    store: &Arc<dyn Store>,
    p: u32,
    id: u64,
    epoch: u64,
    now_ms: u64,
) -> EngineResult<()> {
    let header = WalSegmentHeader {
        segment_id: id,
        writer_epoch: epoch,
        created_ms: now_ms,
    };
    let path = wal_path(p, id);
    let marker = encode_wal_segment(&header, &[]);
    match store.put(&path, marker.clone(), PutMode::Create).await {
        Ok(()) => Ok(()),
        Err(StoreError::AlreadyExists(_)) => {
            let data = store.get(&path).await?;
            if data == marker {
                return Ok(()); // our own create, whose answer was lost and retried
            }
            let (found, _) = decode_wal_segment(&data)
                .map_err(|e| EngineError::Corruption(format!("WAL segment {path}: {e}")))?;
            if found.writer_epoch < epoch {
                Ok(())
            } else {
                Err(EngineError::NotServing(format!(
                    "another writer opened partition {p} concurrently (WAL segment {path} has a \
                     newer writer epoch)"
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Low bits of a writer epoch that are random; the high bits are the fence segment id.
const EPOCH_RANDOM_BITS: u32 = 24;

async fn load_or_init_manifest(
    manifests: &dyn ManifestStore,
    p: u32,
    clock: &Clock,
) -> EngineResult<Arc<Manifest>> {
    if let Some(m) = manifests.load_latest(p).await? {
        return Ok(m);
    }
    let m = Manifest {
        version: 1,
        writer_epoch: 0,
        wal_replay_from: 1,
        next_sst_id: 1,
        created_ms: clock.unix_ms(),
        ..Default::default()
    };
    match manifests.commit(p, &m).await {
        Ok(()) => Ok(Arc::new(m)),
        Err(ManifestError::Conflict { .. }) => manifests
            .load_latest(p)
            .await?
            .ok_or_else(|| EngineError::Internal("manifest vanished after a conflict".into())),
        Err(e) => Err(e.into()),
    }
}

/// Stamps the latest manifest with our epoch. Gives up if a writer that fenced after us
/// (a higher epoch) claimed it first: building on its claim would hide its writes from us.
async fn claim_manifest(
    manifests: &dyn ManifestStore,
    p: u32,
    mut base: Arc<Manifest>,
    writer_epoch: u64,
    clock: &Clock,
) -> EngineResult<Arc<Manifest>> {
    loop {
        if base.writer_epoch > writer_epoch {
            return Err(EngineError::Fenced {
                msg: format!(
                    "a newer writer (epoch {:x}) opened partition {p} while we were opening",
                    base.writer_epoch
                ),
                applied_nothing: false,
            });
        }
        let mut next = (*base).clone();
        next.version = base.version + 1;
        next.writer_epoch = writer_epoch;
        next.created_ms = clock.unix_ms();
        match manifests.commit(p, &next).await {
            Ok(()) => return Ok(Arc::new(next)),
            Err(ManifestError::Conflict { .. }) => {
                base = manifests.load_latest(p).await?.ok_or_else(|| {
                    EngineError::Internal("manifest vanished after a conflict".into())
                })?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens the readers of a manifest, reusing already open ones.
pub(crate) async fn open_version(
    src: &BlockSource,
    partition: u32,
    manifest: Arc<Manifest>,
    reuse: &HashMap<u64, Arc<SstReader>>,
) -> EngineResult<Version> {
    let roots = manifest.root_index();
    let open = |info: strata_format::SstInfo| {
        // An SST under another root (a restored keyspace's source, the cold tier) is read
        // where it is.
        let src = match roots.get(&info.id) {
            None => Ok(src.clone()),
            Some(r) => src.at_root(&r.url),
        };
        // An open reader is reused only if it reads from the same root: a tiered SST keeps
        // its id but moves, and its old (hot) copy is deleted after the grace.
        let existing = match &src {
            Ok(s) => reuse
                .get(&info.id)
                .filter(|r| r.store_uid() == s.store_uid)
                .cloned(),
            Err(_) => None,
        };
        async move {
            match existing {
                Some(r) => Ok::<_, EngineError>(r),
                None => Ok(Arc::new(SstReader::open(src?, partition, info).await?)),
            }
        }
    };
    let l0 = try_join_all(manifest.l0.iter().cloned().map(open)).await?;
    let mut levels = Vec::with_capacity(manifest.levels.len());
    for level in &manifest.levels {
        levels.push(try_join_all(level.iter().cloned().map(open)).await?);
    }
    Ok(Version {
        manifest,
        l0,
        levels,
        hold: None,
    })
}

/// Re-locks the keys of every prepared transaction whose intent record is in the partition.
async fn relock_prepared(inner: &Arc<DbInner>) -> EngineResult<u64> {
    let view = inner.view.read().clone();
    let snap = Snap {
        durable: inner.seqs.visible(),
        buffered: 0,
    };
    let start = Bytes::from_static(crate::txn::INTENT_PREFIX);
    let end = crate::scan::prefix_end(crate::txn::INTENT_PREFIX);
    let mut scan = crate::scan::Scanner::new_system(view, snap, start, end, &inner.opts.clock);
    let mut n = 0;
    while !scan.is_done() {
        for (key, value, _) in scan.next_chunk(256).await? {
            let txn = std::str::from_utf8(&key[crate::txn::INTENT_PREFIX.len()..])
                .map_err(|e| EngineError::Corruption(format!("intent key is not a txn id: {e}")))?
                .to_string();
            match crate::txn::decode_intent(&value) {
                Ok(crate::txn::IntentState::Prepared { ops, .. }) => {
                    tracing::info!(
                        partition = inner.opts.partition,
                        txn = %txn,
                        keys = ops.len(),
                        "prepared transaction found on open; its keys stay locked until resolved"
                    );
                    inner.locks.lock(&txn, ops);
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(EngineError::Corruption(format!(
                        "intent record of transaction {txn}: {e}"
                    )))
                }
            }
        }
    }
    Ok(n)
}
