//! Execution of compaction jobs against the object store and the manifest store, and the run
//! loop (which also runs garbage collection: delayed deletion of inputs and the sweeps, in
//! `gc.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use strata_clock::Instant;
use strata_format::{read_all_entries, Entry, Manifest, SstInfo};
use strata_manifest::layout::{new_sst_id, sst_path, STORE_ID_PATH};
use strata_manifest::{ManifestError, ManifestStore};
use strata_objstore::{PutMode, Store, StoreError, Upload};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::{CompactorError, Result, ResultExt, WithWhat};
use crate::gc::{PendingDelete, ORPHAN_SWEEP_EVERY};
use crate::merge::{merge, Cut, Cutter, MergeCounts};
use crate::plan::{plan_with_cursors, Job};
use crate::rebase::rebase;
use crate::stream::Input;
use crate::{CompactionOptions, CompactionReport};

/// How long [`Compactor::run`] waits for a manifest change when there is nothing to do.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// First and largest pause after a failed job.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Inputs read concurrently by one job.
const READ_CONCURRENCY: usize = 8;
/// Commit attempts (each after a conflict) before a job gives up.
const MAX_COMMIT_ATTEMPTS: usize = 64;
/// Fresh ids tried for one output before giving up (ids clash only by bad luck).
const MAX_ID_ATTEMPTS: usize = 16;

/// How one merge's uploader stopped.
pub(crate) enum Stop {
    /// Its merge finished and every output was written.
    Done,
    /// Another part of the job failed (its error is reported there).
    Cancelled,
    /// Writing an output failed.
    Failed(CompactorError),
}

/// Compaction outputs are written in parts of this size as they fill (S3's minimum part is
/// 5 MiB): a merge holds about three of them (building, queued, uploading), whatever
/// `target_file_bytes` is. Counted in `CompactionOptions::memory_bytes`.
pub(crate) const OUTPUT_PART_BYTES: usize = 8 << 20;
/// Decodes a whole SST read for `info`, checking every block's checksum and that its size and
/// entry count are what the manifest says; `what` names it in errors.
async fn verified_entries(data: Bytes, info: &SstInfo, what: &str) -> Result<Vec<Entry>> {
    if data.len() as u64 != info.props.file_size {
        return Err(CompactorError::Corrupt(format!(
            "{what} is {} bytes, the manifest says {}",
            data.len(),
            info.props.file_size
        )));
    }
    let entries = tokio::task::spawn_blocking(move || read_all_entries(&data))
        .await
        .with_context(|| format!("decoding task for {what} failed"))?
        .with_context(|| format!("{what} is corrupt"))?;
    if entries.len() as u64 != info.props.entries {
        return Err(CompactorError::Corrupt(format!(
            "{what} holds {} entries, the manifest says {}",
            entries.len(),
            info.props.entries
        )));
    }
    Ok(entries)
}

/// In a cold tier root: the id of the store (keyspace) that owns it.
const TIER_OWNER_PATH: &str = "tier-owner";

/// Totals since the compactor started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactorStats {
    /// Jobs committed (trivial moves included).
    pub jobs: u64,
    /// Jobs that only moved a file down a level.
    pub trivial_moves: u64,
    /// SSTs dropped whole, unread, because every value in them had expired.
    pub expired_files_dropped: u64,
    /// SSTs moved to the cold tier, and their bytes.
    pub tiered_files: u64,
    pub tiered_bytes: u64,
    /// Wall time of the jobs that merged data, in milliseconds (planning to commit): the
    /// base of compaction throughput, `bytes_in / busy_millis`.
    pub busy_millis: u64,
    /// Jobs abandoned because the manifest changed under them.
    pub abandoned: u64,
    /// Jobs that failed with an error.
    pub failures: u64,
    /// Manifest commits that lost a race and were rebased.
    pub commit_conflicts: u64,
    /// Input files read.
    pub files_in: u64,
    /// Output files written.
    pub files_out: u64,
    /// Bytes of input files read.
    pub bytes_in: u64,
    /// Bytes of output files written.
    pub bytes_out: u64,
    /// Bytes of L0 files compacted: about the bytes the engine flushed, the base of write
    /// amplification.
    pub l0_bytes_in: u64,
    /// Entries read.
    pub entries_in: u64,
    /// Entries written.
    pub entries_out: u64,
    /// Tombstones dropped at the bottom.
    pub dropped_tombstones: u64,
    /// Expired values dropped at the bottom.
    pub dropped_expired: u64,
    /// Input files deleted after their grace period.
    pub files_deleted: u64,
    /// Input files waiting for their grace period to pass, and their bytes.
    pub pending_deletions: u64,
    pub pending_deletion_bytes: u64,
    /// Looks at a job that writes skipped because the process's deletion budget was spent.
    pub budget_pauses: u64,
    /// Bytes written per byte flushed, flush included: `(l0_bytes_in + bytes_out) /
    /// l0_bytes_in` (0 before the first L0 compaction).
    pub write_amplification: f64,
    /// Bytes written per byte read by compaction: `bytes_out / bytes_in`.
    pub rewrite_ratio: f64,
}

/// Leveled compaction of one partition. Cheap to clone: clones share state, so one clone
/// can [`run`](Self::run) while another reads [`stats`](Self::stats).
#[derive(Debug, Clone)]
pub struct Compactor {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) manifests: Arc<dyn ManifestStore>,
    pub(crate) partition: u32,
    pub(crate) opts: CompactionOptions,
    /// One job at a time per compactor.
    job_lock: tokio::sync::Mutex<()>,
    /// Per level (index n - 1 for Ln), the largest key of the last file compacted out of it.
    cursors: Mutex<Vec<Option<Bytes>>>,
    /// Inputs dropped by a commit, deleted once their grace period has passed.
    pub(crate) pending: Mutex<Vec<PendingDelete>>,
    pub(crate) stats: Mutex<CompactorStats>,
    /// SSTs seen unreferenced (and older than `orphan_grace`) by an earlier sweep, and when:
    /// in this store, and in its cold tier.
    pub(crate) orphans: Mutex<std::collections::HashMap<u64, Instant>>,
    pub(crate) cold_orphans: Mutex<std::collections::HashMap<u64, Instant>>,
    /// Manifest bodies seen collectable by an earlier sweep, and when.
    pub(crate) old_manifests: Mutex<std::collections::HashMap<String, Instant>>,
    /// See [`Compactor::with_reader_floor`].
    pub(crate) reader_floor: Mutex<Option<FloorFn>>,
    /// Stopped for good (see `retire`).
    retired: std::sync::atomic::AtomicBool,
    /// Whether this keyspace owns the cold tier root (`None`: not known yet).
    tier_ours: Mutex<Option<bool>>,
}

impl Inner {
    /// A stopped compactor's queued deletions are left to the orphan sweep: they no longer
    /// count against the process's budget, nor does the compactor share it. Once only.
    fn retire(&self) {
        if self
            .retired
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let queued: Vec<PendingDelete> = self.pending.lock().drain(..).collect();
        if let Some(b) = &self.opts.deletion_budget {
            b.sub(queued.iter().map(|d| d.bytes).sum());
            b.leave();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.retire();
    }
}

/// A [`ReaderFloor`] that debug-prints as a placeholder.
#[derive(Clone)]
pub(crate) struct FloorFn(pub(crate) ReaderFloor);

impl std::fmt::Debug for FloorFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaderFloor")
    }
}

/// The manifest version the partition's owner reads from, when known (for a compactor in
/// another process than the owner: see [`Compactor::with_reader_floor`]).
pub type ReaderFloor = Arc<dyn Fn(u32) -> Option<u64> + Send + Sync>;

/// How one step ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing needs compacting.
    Idle,
    /// A job was committed.
    Done(CompactionReport),
    /// The manifest changed under the job; its outputs were deleted.
    Abandoned,
}

/// What a commit attempt ended with.
#[derive(Debug)]
pub(crate) enum Committed {
    Version(u64),
    Abandoned(String),
}

impl Compactor {
    /// A compactor of `partition`.
    pub fn new(
        store: Arc<dyn Store>,
        manifests: Arc<dyn ManifestStore>,
        partition: u32,
        mut opts: CompactionOptions,
    ) -> Self {
        if let Some(s) = opts.strategy_overrides.get(&partition) {
            opts.strategy = *s;
        }
        let c = Compactor {
            inner: Arc::new(Inner {
                store,
                manifests,
                partition,
                opts,
                job_lock: tokio::sync::Mutex::new(()),
                cursors: Mutex::new(Vec::new()),
                pending: Mutex::new(Vec::new()),
                stats: Mutex::new(CompactorStats::default()),
                orphans: Mutex::new(std::collections::HashMap::new()),
                cold_orphans: Mutex::new(std::collections::HashMap::new()),
                old_manifests: Mutex::new(std::collections::HashMap::new()),
                reader_floor: Mutex::new(None),
                retired: Default::default(),
                tier_ours: Mutex::new(None),
            }),
        };
        if let Some(b) = &c.inner.opts.deletion_budget {
            b.join();
        }
        c
    }

    /// Stops counting this compactor's queued deletions against the deletion budget (they
    /// are left to the orphan sweep). For a stopped compactor that is kept for its stats.
    pub fn retire(&self) {
        self.inner.retire();
    }

    /// Makes deletions of compacted inputs wait, beyond `gc_grace`, until `floor` says the
    /// partition's owner reads from the version that dropped them (`None`: unknown, keep
    /// waiting). For a compactor outside the owner's process, whose commits the owner adopts
    /// only when it notices them.
    pub fn with_reader_floor(self, floor: ReaderFloor) -> Self {
        *self.inner.reader_floor.lock() = Some(FloorFn(floor));
        self
    }

    /// The partition this compactor serves.
    pub fn partition(&self) -> u32 {
        self.inner.partition
    }

    /// Plans on the latest manifest; if something needs compacting, runs one job and commits
    /// it. `Ok(None)` means nothing to do, or that the job was abandoned because the
    /// manifest changed under it (its outputs are deleted then; planning again will do).
    pub async fn compact_once(&self) -> Result<Option<CompactionReport>> {
        match self.step().await? {
            Outcome::Done(report) => Ok(Some(report)),
            Outcome::Idle | Outcome::Abandoned => Ok(None),
        }
    }

    /// Loops [`compact_once`](Self::compact_once) until `shutdown` becomes true (or its
    /// sender goes away): back to back while there is work, otherwise waiting for a manifest
    /// change or one second. Errors are logged and retried after a growing backoff. Inputs
    /// whose grace period has passed are deleted along the way. A job in progress is
    /// finished before the loop notices shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let p = self.inner.partition;
        let mut changes = self.inner.manifests.subscribe(p);
        let mut backoff = BACKOFF_MIN;
        // Not at once: a compactor that just took a partition over does not know what its
        // predecessor replaced a moment ago (see `sweep_orphans`).
        let mut next_sweep = strata_clock::now() + self.inner.opts.gc_grace;
        info!(partition = p, "compactor started");
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            if strata_clock::now() >= next_sweep {
                next_sweep = strata_clock::now() + ORPHAN_SWEEP_EVERY;
                match self.sweep_manifests().await {
                    Ok(0) => {}
                    Ok(n) => info!(partition = p, deleted = n, "deleted old manifest versions"),
                    Err(e) => warn!(
                        partition = p,
                        error = %e.report(),
                        "sweeping old manifests failed"
                    ),
                }
                match self.sweep_orphans().await {
                    Ok(0) => {}
                    Ok(n) => info!(partition = p, deleted = n, "deleted orphaned SSTs"),
                    Err(e) => warn!(
                        partition = p,
                        error = %e.report(),
                        "sweeping orphaned SSTs failed"
                    ),
                }
            }
            if let Err(e) = self.collect_garbage().await {
                warn!(
                    partition = p,
                    error = %e.report(),
                    "deleting compacted inputs failed"
                );
            }
            // Mark the current manifest as seen: a commit during the job wakes the wait below.
            changes.borrow_and_update();
            let outcome = self.step().await;
            let wait = match outcome {
                Ok(Outcome::Done(r)) => {
                    backoff = BACKOFF_MIN;
                    log_report(&r);
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Outcome::Abandoned) => {
                    // Usually a race that planning again resolves at once; a manifest that
                    // keeps making jobs abandon must not make the loop spin.
                    let wait = backoff / 4;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    Some(wait)
                }
                Ok(Outcome::Idle) => {
                    backoff = BACKOFF_MIN;
                    None
                }
                Err(e) => {
                    warn!(
                        partition = p,
                        error = %e.report(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "compaction failed"
                    );
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    Some(wait)
                }
            };
            let stop = match wait {
                None => tokio::select! {
                    r = shutdown.changed() => r.is_err(),
                    _ = wait_for_change(&mut changes) => false,
                    _ = strata_clock::sleep(IDLE_WAIT) => false,
                },
                Some(pause) => tokio::select! {
                    r = shutdown.changed() => r.is_err(),
                    _ = strata_clock::sleep(pause) => false,
                },
            };
            if stop {
                break;
            }
        }
        let pending = self.inner.pending.lock().len();
        info!(
            partition = p,
            pending_deletions = pending,
            "compactor stopped"
        );
    }

    /// Totals since start.
    pub fn stats(&self) -> CompactorStats {
        let mut s = self.inner.stats.lock().clone();
        {
            let pending = self.inner.pending.lock();
            s.pending_deletions = pending.len() as u64;
            s.pending_deletion_bytes = pending.iter().map(|d| d.bytes).sum();
        }
        if s.l0_bytes_in > 0 {
            s.write_amplification = (s.l0_bytes_in + s.bytes_out) as f64 / s.l0_bytes_in as f64;
        }
        if s.bytes_in > 0 {
            s.rewrite_ratio = s.bytes_out as f64 / s.bytes_in as f64;
        }
        s
    }

    /// Whether this keyspace owns its cold tier root. The first keyspace to tier there writes
    /// its store id into `tier-owner` (create-if-absent); any other keyspace given the same
    /// tier URL (e.g. one restored from a snapshot, started with the same flags) neither
    /// tiers there nor sweeps it, since its sweep would delete SSTs it cannot see are live.
    /// `false` while it cannot tell.
    pub(crate) async fn tier_is_ours(&self) -> bool {
        if let Some(known) = *self.inner.tier_ours.lock() {
            return known;
        }
        let Some(tier) = &self.inner.opts.tier else {
            return false;
        };
        let p = self.inner.partition;
        let answer = async {
            let id = match self.inner.store.get(STORE_ID_PATH).await {
                Ok(b) => b,
                // No engine has opened the store yet: nothing to tier.
                Err(StoreError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e.with_what("reading the store id".into())),
            };
            let cold = self
                .inner
                .opts
                .roots
                .get(&tier.url)
                .with_context(|| format!("opening the cold tier {}", tier.url))?;
            loop {
                match cold.get(TIER_OWNER_PATH).await {
                    Ok(owner) => return Ok(Some(owner == id)),
                    Err(StoreError::NotFound(_)) => {
                        match cold.put(TIER_OWNER_PATH, id.clone(), PutMode::Create).await {
                            Ok(()) => return Ok(Some(true)),
                            Err(StoreError::AlreadyExists(_)) => continue,
                            Err(e) => return Err(e.with_what("claiming the cold tier".into())),
                        }
                    }
                    Err(e) => return Err(e.with_what("reading the cold tier's owner".into())),
                }
            }
        };
        match answer.await {
            Ok(Some(ours)) => {
                if !ours {
                    warn!(
                        partition = p,
                        tier = %tier.url,
                        "the cold tier belongs to another keyspace (its {TIER_OWNER_PATH} names another store): no tiering, no cold sweep; give this keyspace a tier URL of its own"
                    );
                }
                *self.inner.tier_ours.lock() = Some(ours);
                ours
            }
            Ok(None) => false,
            Err(e) => {
                warn!(partition = p, error = %e.report(), "cannot tell who owns the cold tier; not tiering for now");
                false
            }
        }
    }

    /// One job: plan, execute, commit.
    pub(crate) async fn step(&self) -> Result<Outcome> {
        let result = self.step_inner().await;
        let mut stats = self.inner.stats.lock();
        match &result {
            Err(_) => stats.failures += 1,
            Ok(Outcome::Abandoned) => stats.abandoned += 1,
            Ok(Outcome::Done(r)) => {
                stats.jobs += 1;
                if r.trivial_move {
                    stats.trivial_moves += 1;
                } else if r.drop_expired {
                    stats.expired_files_dropped += r.input_files as u64;
                    stats.dropped_expired += r.dropped_expired;
                } else if r.tiered {
                    // Counted by the job (only what actually moved).
                } else {
                    stats.busy_millis += r.millis;
                    stats.files_in += r.input_files as u64;
                    stats.files_out += r.output_files as u64;
                    stats.bytes_in += r.input_bytes;
                    stats.bytes_out += r.output_bytes;
                    stats.entries_in += r.entries_in;
                    stats.entries_out += r.entries_out;
                    stats.dropped_tombstones += r.dropped_tombstones;
                    stats.dropped_expired += r.dropped_expired;
                }
            }
            Ok(Outcome::Idle) => {}
        }
        result
    }

    async fn step_inner(&self) -> Result<Outcome> {
        let _job = self.inner.job_lock.lock().await;
        let started = strata_clock::now();
        let p = self.inner.partition;
        let Some(m) = crate::error::load_latest(&*self.inner.manifests, p).await? else {
            return Ok(Outcome::Idle);
        };
        let cursors = self.inner.cursors.lock().clone();
        let Some(job) = plan_with_cursors(&m, &self.inner.opts, &cursors) else {
            return Ok(Outcome::Idle);
        };
        if job.tier_to.is_some() && !self.tier_is_ours().await {
            return Ok(Outcome::Idle);
        }
        // Over the deletion budget, only jobs that write nothing new (trivial moves, whole
        // expired drops, which free space) run until deletions catch up.
        if let Some(b) = &self.inner.opts.deletion_budget {
            let writes = !(job.trivial_move || job.drop_expired);
            let own: u64 = self.inner.pending.lock().iter().map(|d| d.bytes).sum();
            if writes && b.must_pause(own) {
                let mut stats = self.inner.stats.lock();
                stats.budget_pauses += 1;
                if stats.budget_pauses == 1 || stats.budget_pauses.is_multiple_of(60) {
                    info!(
                        partition = p,
                        pending_bytes = b.pending(),
                        limit = b.limit,
                        "compaction paused: compacted inputs waiting out their grace exceed the deletion budget"
                    );
                }
                return Ok(Outcome::Idle);
            }
        }
        debug!(
            partition = p,
            input_level = job.input_level,
            inputs = job.input_files(),
            bytes = job.input_bytes(),
            trivial = job.trivial_move,
            "compaction planned on manifest {}",
            m.version
        );
        let n: u64 = job.upper.iter().map(|f| f.props.entries).sum();
        let (outputs, counts, parts) = if job.trivial_move {
            let counts = MergeCounts {
                entries_in: n,
                entries_out: n,
                ..MergeCounts::default()
            };
            (job.upper.clone(), counts, 0)
        } else if job.drop_expired {
            let counts = MergeCounts {
                entries_in: n,
                dropped_expired: n,
                // Dropped whole only when no older kept SST overlaps: they hide nothing
                // (`max_dropped_tombstone_seq` stays), and readers expire values themselves.
                ..MergeCounts::default()
            };
            (Vec::new(), counts, 0)
        } else if let Some(url) = &job.tier_to {
            self.copy_to_tier(&job, url).await?;
            let counts = MergeCounts {
                entries_in: n,
                entries_out: n,
                ..MergeCounts::default()
            };
            (job.upper.clone(), counts, 0)
        } else {
            self.execute(&job).await?
        };
        let (committed, next) = self
            .commit_returning(&job, &outputs, counts.max_dropped_tombstone_seq)
            .await?;
        let version = match committed {
            Committed::Version(v) => v,
            Committed::Abandoned(why) => {
                info!(partition = p, reason = why, "compaction abandoned");
                if !job.metadata_only() {
                    self.delete_outputs(&outputs).await;
                }
                if let Some(url) = &job.tier_to {
                    // Our copies, unless another compactor (a hand-over) tiered the same SSTs
                    // to the same names and committed them: those stay.
                    let listed: std::collections::HashSet<u64> =
                        match self.inner.manifests.load_latest(p).await {
                            Ok(Some(m)) => m
                                .roots
                                .iter()
                                .filter(|r| r.owned && r.url == *url)
                                .flat_map(|r| r.ids.iter().copied())
                                .collect(),
                            // Unknown: leave them to the cold root's orphan sweep.
                            _ => job.upper.iter().map(|f| f.id).collect(),
                        };
                    let ids: Vec<u64> = job
                        .upper
                        .iter()
                        .map(|f| f.id)
                        .filter(|id| !listed.contains(id))
                        .collect();
                    self.delete_in_root(url, &ids).await;
                }
                return Ok(Outcome::Abandoned);
            }
        };
        if job.input_level >= 1 && !job.drop_expired && job.tier_to.is_none() {
            let mut cursors = self.inner.cursors.lock();
            if cursors.len() < job.input_level {
                cursors.resize(job.input_level, None);
            }
            if let (Some(slot), Some(f)) = (cursors.get_mut(job.input_level - 1), job.upper.first())
            {
                *slot = Some(f.props.largest_key.clone());
            }
        }
        let due = strata_clock::now() + self.inner.opts.gc_grace;
        if let (Some(url), Some(next)) = (&job.tier_to, &next) {
            // From the manifest this commit wrote (never a re-read, which may fail or be
            // newer): what it moved loses its hot copy after the grace (older views read
            // it). A copy of an SST that manifest no longer lists at all (compacted away
            // meanwhile) was never referenced and goes now; one listed under a root (tiered
            // by another compactor during a hand-over, to the same name) is left alone.
            let moved: std::collections::HashSet<u64> = next
                .roots
                .iter()
                .filter(|r| r.owned && r.url == *url)
                .flat_map(|r| r.ids.iter().copied())
                .collect();
            let listed: std::collections::HashSet<u64> = next.ssts().map(|f| f.id).collect();
            let gone: Vec<&SstInfo> = job.upper.iter().filter(|f| moved.contains(&f.id)).collect();
            let stale: Vec<&SstInfo> = job
                .upper
                .iter()
                .filter(|f| !listed.contains(&f.id))
                .collect();
            self.queue(gone.iter().map(|f| PendingDelete {
                id: f.id,
                bytes: f.props.file_size,
                root: None,
                due,
                version,
            }));
            let stale: Vec<u64> = stale.iter().map(|f| f.id).collect();
            self.delete_in_root(url, &stale).await;
            let mut stats = self.inner.stats.lock();
            stats.tiered_files += gone.len() as u64;
            stats.tiered_bytes += gone.iter().map(|f| f.props.file_size).sum::<u64>();
        } else if !job.trivial_move {
            // Inputs under another keyspace's root (a restore's source) are never deleted
            // here; those in this keyspace's cold tier are deleted there.
            self.queue(job.inputs().filter_map(|f| {
                let root = match job.root_entry(f.id) {
                    None => None,
                    Some(r) if r.owned => Some(r.url.clone()),
                    Some(_) => return None,
                };
                Some(PendingDelete {
                    id: f.id,
                    bytes: f.props.file_size,
                    root,
                    due,
                    version,
                })
            }));
            if job.input_level == 0 && !job.drop_expired {
                let l0: u64 = job.upper.iter().map(|f| f.props.file_size).sum();
                self.inner.stats.lock().l0_bytes_in += l0;
            }
        }
        let output_bytes = outputs.iter().map(|f| f.props.file_size).sum();
        // Through the `metrics` facade (a no-op unless the process installed a recorder).
        let kind = if job.tier_to.is_some() {
            "tier"
        } else if job.drop_expired {
            "drop_expired"
        } else if job.trivial_move {
            "move"
        } else if job.input_level == 0 {
            "l0"
        } else {
            "merge"
        };
        metrics::histogram!("strata_compaction_duration_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        Ok(Outcome::Done(CompactionReport {
            partition: p,
            input_level: job.input_level,
            output_level: job.output_level,
            input_files: job.input_files(),
            input_bytes: job.input_bytes(),
            output_files: outputs.len(),
            output_bytes,
            entries_in: counts.entries_in,
            entries_out: counts.entries_out,
            dropped_tombstones: counts.dropped_tombstones,
            dropped_expired: counts.dropped_expired,
            millis: started.elapsed().as_millis() as u64,
            manifest_version: version,
            trivial_move: job.trivial_move,
            drop_expired: job.drop_expired,
            subcompactions: parts,
            tiered: job.tier_to.is_some(),
        }))
    }

    /// Reads and merges the inputs of `job` and writes the outputs (not yet referenced by
    /// any manifest); also returns the number of parts the merge ran in. On failure, the
    /// outputs already written are deleted.
    ///
    /// A large job is cut into parts by user key (every version of a key lands in one part)
    /// that merge in parallel, each cutting its own outputs: parts cover disjoint, ordered
    /// key ranges, so their outputs never overlap.
    pub(crate) async fn execute(&self, job: &Job) -> Result<(Vec<SstInfo>, MergeCounts, usize)> {
        // Inputs are opened (footer and index) up front, then streamed as they merge.
        let inputs: Vec<Arc<Input>> = futures::stream::iter(job.inputs().cloned())
            .map(|info| {
                let root = job.root_of(info.id).map(str::to_string);
                self.open_input(info, root)
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;

        let opts = &self.inner.opts;
        let parts = if opts.subcompactions > 1 && job.input_bytes() >= opts.subcompaction_min_bytes
        {
            opts.subcompactions
        } else {
            1
        };
        // Parts cut by user key at block boundaries: all versions of a key in one part.
        let bounds = crate::stream::split_points(&inputs, parts);
        let mut edges: Vec<Option<Bytes>> = vec![None];
        edges.extend(bounds.into_iter().map(Some));
        edges.push(None);
        // The job's memory: about three output parts per merge (see below), the rest for
        // reading ahead in its inputs.
        let merges_n = edges.len() - 1;
        let for_outputs = (merges_n * 3 * OUTPUT_PART_BYTES) as u64;
        let chunk = crate::stream::chunk_bytes(
            opts.memory_bytes.saturating_sub(for_outputs),
            inputs.len() * merges_n,
        );
        // Keys split off to another partition: no reader of this one ever asks for them, and
        // every version of them goes, so nothing older can resurface.
        let hash_range = opts.hash_range;
        let pieces: Vec<Vec<crate::stream::EntryStream>> = edges
            .windows(2)
            .map(|w| {
                inputs
                    .iter()
                    .map(|input| {
                        crate::stream::spawn(
                            input.clone(),
                            crate::stream::Range {
                                lo: w[0].clone(),
                                hi: w[1].clone(),
                                hash_range,
                            },
                            chunk,
                        )
                    })
                    .collect()
            })
            .collect();
        let parts = pieces.len();

        // Each part merges on a thread of its own and hands its outputs over in parts of
        // OUTPUT_PART_BYTES to an uploader of its own through a channel of one: a part being
        // built, one queued and one uploading, so a merge holds about three parts of output
        // however large its outputs are.
        let now = self.inner.opts.clock.unix_ms();
        let mut merges = Vec::with_capacity(parts);
        let mut uploaders = Vec::with_capacity(parts);
        let level = job.output_level as u32;
        let failed = Arc::new(tokio::sync::watch::channel(false).0);
        for piece in pieces {
            let (tx, rx) = tokio::sync::mpsc::channel::<Cut>(1);
            let deeper = job.deeper.clone();
            let mut cutter =
                Cutter::new(opts.sst.clone(), opts.target_file_bytes, OUTPUT_PART_BYTES);
            // A dedicated thread, not the blocking pool: the merge blocks on its input
            // streams, whose readers need the blocking pool (decoding, local-store I/O), so
            // enough merges parked in the pool could starve their own readers.
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let failed_merge = failed.clone();
            let run = move || -> Result<MergeCounts> {
                let send = |cut: Cut| {
                    tx.blocking_send(cut)
                        .map_err(|_| CompactorError::Internal("the output writer stopped".into()))
                };
                let counts = merge(piece, now, &deeper, |e| {
                    cutter.add(&e)?.into_iter().try_for_each(send)
                })?;
                cutter.finish()?.into_iter().try_for_each(send)?;
                Ok(counts)
            };
            std::thread::Builder::new()
                .name("strata-merge".into())
                .spawn(move || {
                    lower_thread_priority();
                    let r = run();
                    if r.is_err() {
                        // The job fails: the other parts stop building outputs for it.
                        failed_merge.send_replace(true);
                    }
                    let _ = done_tx.send(r);
                })
                .context("starting a merge thread")?;
            merges.push(done_rx);
            uploaders.push(self.upload_outputs(rx, level, failed.clone()));
        }

        // Uploaders run together. One that fails tells the others (they stop too) and drops
        // its channel, which stops its merge; so does each of the others.
        let mut written = Vec::new();
        let mut write_err = None;
        let mut cancelled = false;
        for (outs, stop) in futures::future::join_all(uploaders).await {
            written.extend(outs);
            match stop {
                Stop::Done => {}
                Stop::Cancelled => cancelled = true,
                Stop::Failed(e) => {
                    write_err.get_or_insert(e);
                }
            }
        }
        let mut counts = MergeCounts::default();
        let mut merge_err = None;
        for m in merges {
            match m
                .await
                .map_err(|_| {
                    CompactorError::Internal(
                        "a merge thread stopped without an answer (a panic)".into(),
                    )
                })
                .and_then(|r| r.context("merging compaction inputs"))
            {
                Ok(c) => counts.add(&c),
                Err(e) => {
                    merge_err.get_or_insert(e);
                }
            }
        }
        if cancelled && write_err.is_none() && merge_err.is_none() {
            merge_err = Some(CompactorError::Internal(
                "a part of the job stopped without an error".into(),
            ));
        }
        match write_err.or(merge_err) {
            None => {
                written.sort_by(|a, b| a.props.smallest_key.cmp(&b.props.smallest_key));
                Ok((written, counts, parts))
            }
            Some(e) => {
                self.delete_outputs(&written).await;
                Err(e)
            }
        }
    }

    /// Writes the outputs one merge hands over (see [`Cut`]) until its channel closes;
    /// returns those written whole and the error that stopped it, if any. An output of one
    /// part is written with one create-if-absent put; a larger one reserves its id with a
    /// create-if-absent put of a unique placeholder, then streams its parts over it (an upload
    /// in parts cannot be create-if-absent, and ids are only unique with high probability).
    /// On an error the output being written is given up and its placeholder deleted.
    async fn upload_outputs(
        &self,
        mut rx: tokio::sync::mpsc::Receiver<Cut>,
        level: u32,
        failed: Arc<tokio::sync::watch::Sender<bool>>,
    ) -> (Vec<SstInfo>, Stop) {
        let mut written = Vec::new();
        let mut open: Option<(u64, Box<dyn Upload>)> = None;
        let mut others_failed = failed.subscribe();
        let err = loop {
            let cut = tokio::select! {
                cut = rx.recv() => cut,
                // Another merge's output failed: the job fails, stop building outputs for it.
                _ = others_failed.wait_for(|f| *f) => break Stop::Cancelled,
            };
            let Some(cut) = cut else {
                break Stop::Done;
            };
            let r: Result<()> = async {
                match cut {
                    Cut::Part(data) => {
                        if open.is_none() {
                            open = Some(self.start_output().await?);
                        }
                        if let Some((id, u)) = open.as_mut() {
                            u.put_part(data).await.map_err(|e| {
                                e.with_what(format!(
                                    "writing compaction output {}",
                                    sst_path(self.inner.partition, *id)
                                ))
                            })?;
                        }
                    }
                    Cut::Done(tail, props) => {
                        let id = match open.take() {
                            None => self.write_output(tail).await?,
                            Some((id, mut u)) => {
                                let path = sst_path(self.inner.partition, id);
                                let r = match u.put_part(tail).await {
                                    Ok(()) => u.complete().await,
                                    Err(e) => Err(e),
                                };
                                if let Err(e) = r {
                                    // Aborted first: a completion attempt still running
                                    // (its answer lost to a timeout) must not rename the
                                    // object into place after the delete below.
                                    // Bounded: the job's other merges wait for this.
                                    let _ = strata_clock::timeout(
                                        std::time::Duration::from_secs(10),
                                        u.abort(),
                                    )
                                    .await;
                                    // Whatever the upload left at the path is an orphan.
                                    self.delete_outputs_by_id(&[id]).await;
                                    return Err(
                                        e.with_what(format!("writing compaction output {path}"))
                                    );
                                }
                                id
                            }
                        };
                        written.push(SstInfo { id, level, props });
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                failed.send_replace(true);
                break Stop::Failed(e);
            }
        };
        if let Some((id, mut u)) = open.take() {
            let _ = u.abort().await;
            self.delete_outputs_by_id(&[id]).await;
        }
        (written, err)
    }

    /// Reserves a fresh SST id for an output written in parts and starts its upload.
    async fn start_output(&self) -> Result<(u64, Box<dyn Upload>)> {
        // Unique content: the retrying layer takes a create that meets identical bytes after
        // an unknown outcome for its own, so two writers' placeholders must differ.
        let rng = strata_clock::Rng::from_entropy();
        let nonce = Bytes::from(format!(
            "reserved {:016x}{:016x}",
            rng.next_u64(),
            rng.next_u64()
        ));
        let id = self.write_output(nonce).await?;
        let path = sst_path(self.inner.partition, id);
        match strata_objstore::start_upload(&self.inner.store, &path).await {
            Ok(u) => Ok((id, u)),
            Err(e) => {
                self.delete_outputs_by_id(&[id]).await;
                Err(e.with_what(format!("starting compaction output {path}")))
            }
        }
    }

    /// Opens one input for streaming (its footer and index, verified).
    async fn open_input(&self, info: SstInfo, root: Option<String>) -> Result<Arc<Input>> {
        let key = sst_path(self.inner.partition, info.id);
        // An input under another root (a restored keyspace's unchanged SST) is read there.
        let store = self
            .inner
            .opts
            .roots
            .store_for(&self.inner.store, root.as_deref())
            .with_context(|| format!("opening the root {root:?} of input {key}"))?;
        let display = match &root {
            None => key.clone(),
            Some(url) => format!("{url}/{key}"),
        };
        let level = info.level;
        Input::open(store, key, display.clone(), info)
            .await
            .map(Arc::new)
            .with_context(|| format!("opening compaction input {display} (L{level})"))
    }

    /// Creates an output SST under a fresh id; returns the id.
    async fn write_output(&self, data: Bytes) -> Result<u64> {
        let p = self.inner.partition;
        for _ in 0..MAX_ID_ATTEMPTS {
            let id = new_sst_id();
            let path = sst_path(p, id);
            match self
                .inner
                .store
                .put(&path, data.clone(), PutMode::Create)
                .await
            {
                Ok(()) => return Ok(id),
                Err(StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e.with_what(format!("writing compaction output {path}"))),
            }
        }
        Err(CompactorError::Conflict(format!(
            "no free SST id found for a compaction output of partition {p}"
        )))
    }

    /// Copies the job's SSTs, unchanged and verified, to the cold root `url` (in the
    /// configured storage class).
    async fn copy_to_tier(&self, job: &Job, url: &str) -> Result<()> {
        let p = self.inner.partition;
        let cold = self
            .inner
            .opts
            .roots
            .get(url)
            .with_context(|| format!("opening the cold tier {url}"))?;
        let class = self
            .inner
            .opts
            .tier
            .as_ref()
            .and_then(|t| t.storage_class.clone());
        for f in &job.upper {
            let path = sst_path(p, f.id);
            let data = self
                .inner
                .store
                .get(&path)
                .await
                .with_context(|| format!("reading {path} to tier it"))?;
            // Never copy corruption into the cold tier: every block is verified first.
            verified_entries(data.clone(), f, &path)
                .await
                .context("not tiered")?;
            let put = match &class {
                Some(c) => cold.put_class(&path, data, c).await,
                None => cold.put(&path, data, PutMode::Overwrite).await,
            };
            put.with_context(|| format!("writing {url}/{path}"))?;
        }
        Ok(())
    }

    /// Best-effort deletion of SSTs under another root (this keyspace's cold tier) that no
    /// manifest references.
    async fn delete_in_root(&self, url: &str, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let store = match self.inner.opts.roots.get(url) {
            Ok(s) => s,
            Err(e) => {
                warn!(url, error = %e, "cannot open the cold tier to delete unreferenced copies");
                return;
            }
        };
        for id in ids {
            let path = sst_path(self.inner.partition, *id);
            if let Err(e) = store.delete(&path).await {
                warn!(url, path, error = %e, "deleting an unreferenced cold copy failed");
            }
        }
    }

    /// Best-effort deletion of outputs no manifest references.
    async fn delete_outputs(&self, outputs: &[SstInfo]) {
        let ids: Vec<u64> = outputs.iter().map(|f| f.id).collect();
        self.delete_outputs_by_id(&ids).await;
    }

    /// Deletes unreferenced outputs (or reserved ids) by id; failures are logged (the orphan
    /// sweep deletes what is left).
    async fn delete_outputs_by_id(&self, ids: &[u64]) {
        for &id in ids {
            let path = sst_path(self.inner.partition, id);
            if let Err(e) = self.inner.store.delete(&path).await {
                warn!(path, error = %e, "deleting an unreferenced compaction output failed");
            }
        }
    }

    /// Commits `job` with `outputs`, rebasing on the latest manifest after each conflict.
    #[cfg(test)]
    pub(crate) async fn commit(&self, job: &Job, outputs: &[SstInfo]) -> Result<Committed> {
        Ok(self.commit_returning(job, outputs, 0).await?.0)
    }

    /// Like [`Self::commit`], also returning the manifest committed.
    async fn commit_returning(
        &self,
        job: &Job,
        outputs: &[SstInfo],
        dropped_tombstone_seq: u64,
    ) -> Result<(Committed, Option<Manifest>)> {
        let p = self.inner.partition;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let Some(latest) = self
                .inner
                .manifests
                .load_latest(p)
                .await
                .with_context(|| format!("loading the manifest of partition {p} to commit"))?
            else {
                return Ok((
                    Committed::Abandoned("the manifest disappeared".into()),
                    None,
                ));
            };
            let mut next = match rebase(&latest, job, outputs, self.inner.opts.clock.unix_ms()) {
                Ok(next) => next,
                Err(why) => return Ok((Committed::Abandoned(why), None)),
            };
            next.dropped_tombstone_seq = next.dropped_tombstone_seq.max(dropped_tombstone_seq);
            match self.inner.manifests.commit(p, &next).await {
                Ok(()) => return Ok((Committed::Version(next.version), Some(next))),
                Err(ManifestError::Conflict { .. }) => {
                    self.inner.stats.lock().commit_conflicts += 1;
                    debug!(
                        partition = p,
                        version = next.version,
                        "compaction commit lost a race; rebasing"
                    );
                }
                Err(e) => {
                    // The commit may have landed anyway (a timed-out conditional create).
                    if self.landed(outputs, job).await {
                        return Ok((Committed::Version(next.version), Some(next)));
                    }
                    return Err(e.with_what(format!(
                        "committing compaction of partition {p} as manifest version {}",
                        next.version
                    )));
                }
            }
        }
        Err(CompactorError::Conflict(format!(
            "compaction commit of partition {p} lost {MAX_COMMIT_ATTEMPTS} races in a row"
        )))
    }

    /// After an ambiguous commit error: whether the latest manifest shows the job committed
    /// (its first output listed in the output level; outputs carry fresh ids, and a trivial
    /// move's file is listed there only once moved).
    async fn landed(&self, outputs: &[SstInfo], job: &Job) -> bool {
        let Ok(Some(latest)) = self.inner.manifests.load_latest(self.inner.partition).await else {
            return false;
        };
        if let Some(url) = &job.tier_to {
            let Some(first) = job.upper.first() else {
                return false;
            };
            return latest
                .roots
                .iter()
                .any(|r| r.owned && r.url == *url && r.ids.contains(&first.id));
        }
        if job.drop_expired {
            // Dropped files are listed nowhere once the drop landed.
            let listed: std::collections::HashSet<u64> = latest.ssts().map(|f| f.id).collect();
            return job.upper.iter().all(|f| !listed.contains(&f.id));
        }
        let Some(first) = outputs.first() else {
            return false;
        };
        if job.trivial_move {
            // Landed: listed in a level other than the one it moved out of (a tiered commit
            // may renumber the level it went to).
            return latest.levels.iter().enumerate().any(|(i, files)| {
                i + 1 != job.input_level && files.iter().any(|f| f.id == first.id)
            });
        }
        // Fresh ids: listed anywhere means landed (a tiered commit renumbers levels).
        latest.levels.iter().flatten().any(|f| f.id == first.id)
    }
}

async fn wait_for_change(changes: &mut watch::Receiver<Option<Arc<Manifest>>>) {
    if changes.changed().await.is_err() {
        // The store dropped its sender: no more notifications; rely on the timer.
        futures::future::pending::<()>().await;
    }
}

fn log_report(r: &CompactionReport) {
    info!(
        partition = r.partition,
        from = r.input_level,
        to = r.output_level,
        input_files = r.input_files,
        input_bytes = r.input_bytes,
        output_files = r.output_files,
        output_bytes = r.output_bytes,
        entries_in = r.entries_in,
        entries_out = r.entries_out,
        dropped_tombstones = r.dropped_tombstones,
        dropped_expired = r.dropped_expired,
        millis = r.millis,
        version = r.manifest_version,
        trivial_move = r.trivial_move,
        drop_expired = r.drop_expired,
        subcompactions = r.subcompactions,
        "compaction committed"
    );
}

/// Whether compaction of a partition serving the hash range `r` keeps `key`. The store's own
/// records (transaction intents and markers) live in the partition whose transaction wrote
/// them, whatever their hash, and always stay.
pub(crate) fn keep_key(key: &[u8], r: (u64, Option<u64>)) -> bool {
    strata_format::is_system_key(key)
        || strata_format::hash_in_range(strata_format::key_hash(key), r)
}

/// Nice value of merge threads: below the server's request handling, so on a small machine a
/// large compaction takes the CPU the foreground leaves rather than stalling requests (the
/// mix's slow operations line up with compactions; issue 11's timeline).
const MERGE_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority to `MERGE_NICE` (Linux: nice values are
/// per thread). Best effort: a failure only leaves the thread at normal priority.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, MERGE_NICE)
        };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "lowering a merge thread's priority failed"
            );
        }
    }
}
