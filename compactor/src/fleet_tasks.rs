//! Cluster-wide tasks the compactor fleet runs besides compaction: the snapshot schedule (one
//! worker at a time) and Parquet exports asked for with `strata export --fleet`.
//!
//! Both are claimed with a key under the worker's etcd lease (`{prefix}-tasks/{name}`,
//! create-if-absent), so a worker that dies gives its task up within a lease TTL and another
//! worker takes it. Export jobs are small JSON records (`{prefix}-jobs/export/{id}`) that the
//! client creates and polls; the worker running a job writes its progress into the record.
//!
//! Why a task interrupted anywhere is harmless: a snapshot is complete only once its record is
//! written last (an incomplete one is deleted by the schedule later), and an export writes
//! its `_manifest.json` last into a place of its own, which a retry clears before starting
//! again (the client checked it was empty when it asked).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_manifest::etcd::Etcd;
use strata_manifest::ManifestStore;
use strata_objstore::{Roots, Store};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{etcd as etcd_err, CompactorError, Result, ResultExt};
use crate::export::{
    export, read_export_manifest, ExportManifest, ExportOptions, ExportPartition, Progress,
    EXPORT_MANIFEST,
};
use crate::snapshot::{schedule_tick, SnapshotManifests, SnapshotSchedule, SnapshotTarget};

/// How long a snapshot may take to pin one partition: well below the compactors' default
/// 5 min grace before deleting compacted inputs (see `snapshot.rs`).
pub const MAX_PIN_DELAY: Duration = Duration::from_secs(120);

/// The pin delay for compactors deleting inputs after `gc_grace`.
pub fn max_pin_delay(gc_grace: Duration) -> Duration {
    MAX_PIN_DELAY.min(gc_grace / 2)
}

/// A store to read from: its objects, manifests and partitions, and for a cluster its etcd
/// and the revision of the partition map `partitions` came from.
#[derive(Clone)]
pub struct ExportSource {
    pub store: Arc<dyn Store>,
    pub manifests: Arc<dyn ManifestStore>,
    pub partitions: Vec<ExportPartition>,
    pub cluster: Option<(Etcd, i64)>,
}

impl ExportSource {
    /// A cluster's current partitions, read from etcd.
    pub async fn cluster(
        etcd: Etcd,
        store: Arc<dyn Store>,
        manifests: Arc<dyn ManifestStore>,
    ) -> Result<ExportSource> {
        let view = etcd.view().await.map_err(etcd_err("reading the cluster"))?;
        let (map, rev) = view
            .partition_map()
            .map_err(|detail| CompactorError::PartitionMap {
                what: "reading the partition map".into(),
                detail,
            })?;
        let partitions = map
            .ids()
            .into_iter()
            .map(|p| ExportPartition {
                partition: p,
                hash_range: map.range_of(p),
            })
            .collect();
        Ok(ExportSource {
            store,
            manifests,
            partitions,
            cluster: Some((etcd, rev)),
        })
    }
}

/// What to export (the flags of `strata export`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportRequest {
    /// Destination: `file:///DIR` or `s3://BUCKET/PREFIX`.
    pub to: String,
    /// An archival snapshot's id instead of the latest state.
    pub snapshot: Option<String>,
    /// Only what changed since the export at this URL.
    pub since: Option<String>,
    /// Target size of each Parquet file, MiB.
    pub file_mb: u64,
    /// Only this tenant's namespace, keys as its tenant sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Runs an export as requested: the CLI's own and the fleet's. `roots` opens the destination
/// (and other roots SSTs may live under) with this process's S3 settings.
/// `clock` dates the export's manifest and pins.
pub async fn run_export(
    source: ExportSource,
    roots: &Roots,
    req: &ExportRequest,
    progress: &dyn Progress,
    clock: &strata_clock::Clock,
) -> Result<ExportManifest> {
    let (store, manifests, partitions, cluster) = match &req.snapshot {
        // A snapshot is fixed: no split can change it under the export.
        Some(id) => {
            let snap = SnapshotManifests::load(&*source.store, id).await?;
            let parts = snap.partitions();
            let m: Arc<dyn ManifestStore> = Arc::new(snap);
            (source.store, m, parts, None)
        }
        None => (
            source.store,
            source.manifests,
            source.partitions,
            source.cluster,
        ),
    };
    let dest = roots
        .get(&req.to)
        .with_context(|| format!("opening the destination {}", req.to))?;
    let since = match &req.since {
        Some(url) => {
            let prev = roots
                .get(url)
                .with_context(|| format!("opening the earlier export {url}"))?;
            Some(read_export_manifest(&*prev, "").await?)
        }
        None => None,
    };
    let opts = ExportOptions {
        target_file_bytes: req.file_mb.max(1) << 20,
        since,
        map_revision: cluster.as_ref().map_or(0, |c| c.1),
        roots: roots.clone(),
        namespace: req.namespace.clone(),
        clock: clock.clone(),
        ..ExportOptions::default()
    };
    let m = export(
        store,
        manifests,
        &partitions,
        dest.clone(),
        "",
        &opts,
        progress,
    )
    .await?;
    // A partition that split during the export moved half its keys to a partition the export
    // did not read (and compaction may drop them from the old one): refuse the result.
    if let Some((etcd, rev)) = &cluster {
        let now = etcd
            .view()
            .await
            .map_err(etcd_err("re-reading the cluster"))?;
        let (_, now_rev) = now
            .partition_map()
            .map_err(|detail| CompactorError::PartitionMap {
                what: "re-reading the partition map".into(),
                detail,
            })?;
        if now_rev != *rev {
            let _ = dest.delete(EXPORT_MANIFEST).await;
            return Err(CompactorError::Conflict(format!(
                "a partition split during the export (partition map revision {rev} -> \
                 {now_rev}); its result is incomplete and its _manifest.json was removed: \
                 export again into a new place"
            )));
        }
    }
    Ok(m)
}

/// Runs the snapshot schedule of an embedded store until `stop`.
/// `clock` dates the snapshots and decides when one is due.
pub async fn run_embedded_schedule(
    store: Arc<dyn Store>,
    manifests: Arc<dyn ManifestStore>,
    sched: SnapshotSchedule,
    pin_delay: Duration,
    clock: strata_clock::Clock,
    mut stop: watch::Receiver<bool>,
) {
    let parts = [ExportPartition {
        partition: 0,
        hash_range: None,
    }];
    loop {
        tokio::select! {
            _ = strata_clock::sleep(sched.poll()) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let target = SnapshotTarget {
            store: store.clone(),
            manifests: manifests.clone(),
            partitions: &parts,
            map_revision: 0,
            max_pin_delay: pin_delay,
            txns: None,
            clock: clock.clone(),
        };
        let tick = schedule_tick(&target, &sched, clock.unix_ms());
        log_tick(tick.await);
    }
}

fn log_tick(r: Result<crate::snapshot::ScheduleTick>) {
    match r {
        Ok(t) => {
            if let Some(s) = &t.created {
                info!(snapshot = %s.id, bytes = s.bytes(), "scheduled snapshot created");
            }
            for id in &t.deleted {
                info!(snapshot = %id, "scheduled snapshot aged out and deleted");
            }
        }
        Err(e) => warn!(error = %e.report(), "scheduled snapshot failed; trying again"),
    }
}

const SCHEDULE_TASK: &str = "snapshot-schedule";

/// A claim on a task: its creation revision and the lease it lives under.
type TaskClaim = Option<(i64, i64)>;

/// Makes sure this worker holds task `name` under `lease` (claiming it if free). `false`
/// when someone else holds it or etcd cannot tell.
async fn hold_task(
    etcd: &Etcd,
    name: &str,
    worker: &str,
    lease: i64,
    claim: &mut TaskClaim,
) -> bool {
    if let Some((rev, l)) = *claim {
        // Under an older lease the claim died with it.
        if l == lease && etcd.task_held(name, rev).await.unwrap_or(false) {
            return true;
        }
        *claim = None;
    }
    match etcd.claim_task(name, worker, lease).await {
        Ok(Some(rev)) => {
            info!(worker, task = name, "claimed");
            *claim = Some((rev, lease));
            true
        }
        Ok(None) => false,
        Err(e) => {
            warn!(worker, task = name, error = %e, "claiming failed");
            false
        }
    }
}

/// What [`run_fleet_tasks`] runs with: the worker's pieces, each shared differently.
pub(crate) struct FleetTasks {
    pub(crate) etcd: Etcd,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) manifests: Arc<dyn ManifestStore>,
    /// The worker's id.
    pub(crate) worker: String,
    pub(crate) roots: Roots,
    /// The worker's own snapshot schedule (the cluster's settings override it).
    pub(crate) schedule: Option<SnapshotSchedule>,
    /// How long a snapshot may take to pin one partition.
    pub(crate) pin_delay: Duration,
    /// How long a claim outlives its worker.
    pub(crate) lease_ttl: Duration,
    /// The worker's clock (snapshot dates and schedule, job records' times).
    pub(crate) clock: strata_clock::Clock,
    /// The worker's current lease (`None` while it has none).
    pub(crate) lease: watch::Receiver<Option<i64>>,
    /// Turns true when the worker stops.
    pub(crate) stop: watch::Receiver<bool>,
}

/// A worker's share of the cluster's tasks until `stop`: the snapshot schedule while it holds
/// the schedule's claim, and the export jobs it claims, each in its own loop (a long export
/// never delays a scheduled snapshot). `lease` follows the worker's current lease (`None`
/// while it has none); `lease_ttl` is how long a claim outlives its worker.
pub(crate) async fn run_fleet_tasks(tasks: FleetTasks) {
    let FleetTasks {
        etcd,
        store,
        manifests,
        worker,
        roots,
        schedule,
        pin_delay,
        lease_ttl,
        clock,
        lease,
        stop,
    } = tasks;
    let snapshots = async {
        let mut stop = stop.clone();
        let mut claim: TaskClaim = None;
        let mut poll = schedule.map_or(Duration::from_secs(1), |s| s.poll());
        loop {
            tokio::select! {
                _ = strata_clock::sleep(poll) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let Some(lease_id) = *lease.borrow() else {
                continue;
            };
            // The cluster's settings (`ctl compaction set`) over this worker's flags.
            let settings = match etcd.compaction_settings().await {
                Ok(Some(Ok(s))) => Some(s),
                // Unreadable settings: the worker's flags (the fleet logs why).
                Ok(_) => None,
                Err(e) => {
                    warn!(worker = %worker, error = %e, "reading the compaction settings for the snapshot schedule");
                    continue;
                }
            };
            let Some(sched) = crate::settings::schedule_with(settings.as_ref(), schedule) else {
                poll = Duration::from_secs(1);
                if let Some((rev, _)) = claim.take() {
                    let _ = etcd.release_task(SCHEDULE_TASK, rev).await;
                }
                continue;
            };
            poll = sched.poll();
            if !hold_task(&etcd, SCHEDULE_TASK, &worker, lease_id, &mut claim).await {
                continue;
            }
            let tick = async {
                let src =
                    ExportSource::cluster(etcd.clone(), store.clone(), manifests.clone()).await?;
                let rev = src.cluster.as_ref().map_or(0, |c| c.1);
                let target = SnapshotTarget {
                    store: store.clone(),
                    manifests: manifests.clone(),
                    partitions: &src.partitions,
                    map_revision: rev,
                    max_pin_delay: pin_delay,
                    txns: Some(&etcd),
                    clock: clock.clone(),
                };
                schedule_tick(&target, &sched, clock.unix_ms()).await
            };
            log_tick(tick.await);
        }
        if let Some((rev, _)) = claim {
            let _ = etcd.release_task(SCHEDULE_TASK, rev).await;
        }
    };
    let exports = async {
        let mut stop = stop.clone();
        let ctx = JobContext {
            etcd: &etcd,
            store: &store,
            manifests: &manifests,
            worker: &worker,
            roots: &roots,
            lease_ttl,
            clock: &clock,
        };
        loop {
            tokio::select! {
                _ = strata_clock::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let Some(lease_id) = *lease.borrow() else {
                continue;
            };
            if let Err(e) = export_jobs_step(&ctx, lease_id).await {
                warn!(worker = %worker, error = %e.report(), "export jobs");
            }
        }
    };
    tokio::join!(snapshots, exports);
}

/// Kind of the export job records in etcd.
pub const EXPORT_JOBS: &str = "export";

/// An export job's record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportJob {
    pub id: String,
    pub request: ExportRequest,
    pub created_ms: u64,
    pub state: JobState,
    /// The worker running (or that ran) it.
    pub worker: Option<String>,
    /// Runs started (a worker that died mid-run makes another start it again).
    pub attempts: u32,
    /// Progress: bytes of SSTs and WAL read, of an estimated total.
    pub read_bytes: u64,
    pub total_bytes: u64,
    pub updated_ms: u64,
    pub error: Option<String>,
    pub result: Option<ExportManifest>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Done,
    Failed,
}

/// A job given up after this many runs that did not finish (workers dying under it).
const MAX_ATTEMPTS: u32 = 3;

/// Finished job records are removed after this (the client normally removes them).
const FINISHED_RECORD_TTL_MS: u64 = 3_600_000;

impl ExportJob {
    /// A new pending job.
    pub fn new(request: ExportRequest) -> ExportJob {
        // Made by the client that asks for the export (`strata export --via-fleet`), which
        // has no clock of a store to hand: the system's.
        let created_ms = strata_clock::system_unix_ms();
        ExportJob {
            id: format!(
                "{created_ms:013}-{:08x}",
                (strata_clock::unique_u64() as u32)
            ),
            request,
            created_ms,
            state: JobState::Pending,
            worker: None,
            attempts: 0,
            read_bytes: 0,
            total_bytes: 0,
            updated_ms: created_ms,
            error: None,
            result: None,
        }
    }

    fn task_name(&self) -> String {
        format!("export-{}", self.id)
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).context("encoding an export job")
    }

    pub fn decode(body: &[u8]) -> Result<ExportJob> {
        serde_json::from_slice(body).context("decoding an export job")
    }
}

/// Progress of a running job, written into its record by a ticker.
#[derive(Default)]
struct Counted {
    total: AtomicU64,
    read: AtomicU64,
}

impl Progress for Counted {
    fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }
    fn add(&self, bytes: u64) {
        self.read.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// What running export jobs needs of the worker.
struct JobContext<'a> {
    etcd: &'a Etcd,
    store: &'a Arc<dyn Store>,
    manifests: &'a Arc<dyn ManifestStore>,
    worker: &'a str,
    roots: &'a Roots,
    lease_ttl: Duration,
    clock: &'a strata_clock::Clock,
}

/// Aborts a spawned task when dropped (a cancelled job must not leave its ticker behind).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One look at the export jobs: removes old finished records, and runs (to the end) the first
/// unfinished job nobody holds.
async fn export_jobs_step(ctx: &JobContext<'_>, lease: i64) -> Result<()> {
    let etcd = ctx.etcd;
    let jobs = etcd
        .job_list(EXPORT_JOBS)
        .await
        .map_err(etcd_err("listing export jobs"))?;
    for (id, body) in jobs {
        let job = match ExportJob::decode(&body) {
            Ok(j) => j,
            Err(e) => {
                warn!(job = %id, error = %e.report(), "an unreadable export job: removed");
                etcd.job_delete(EXPORT_JOBS, &id)
                    .await
                    .map_err(etcd_err(format!("removing export job {id}")))?;
                continue;
            }
        };
        if matches!(job.state, JobState::Done | JobState::Failed) {
            if ctx.clock.unix_ms().saturating_sub(job.updated_ms) > FINISHED_RECORD_TTL_MS {
                etcd.job_delete(EXPORT_JOBS, &id)
                    .await
                    .map_err(etcd_err(format!("removing export job {id}")))?;
            }
            continue;
        }
        let task = job.task_name();
        let mut claim = None;
        if !hold_task(etcd, &task, ctx.worker, lease, &mut claim).await {
            continue;
        }
        let Some((rev, _)) = claim else { continue };
        let outcome = run_claimed(ctx, &id, &task, rev).await;
        let _ = etcd.release_task(&task, rev).await;
        return outcome;
    }
    Ok(())
}

/// Runs a job this worker claimed (claim `rev` on `task`) to its end. Every write of the
/// record is fenced by the claim, and the run is cancelled once the claim is lost (or cannot
/// be confirmed for a lease TTL), so a worker cut off from etcd stops writing the export
/// before the next worker that claims the job starts over.
async fn run_claimed(ctx: &JobContext<'_>, id: &str, task: &str, rev: i64) -> Result<()> {
    let etcd = ctx.etcd;
    // The listing may be stale: the job may have finished (and its claim gone) since.
    let Some(body) = etcd
        .job_get(EXPORT_JOBS, id)
        .await
        .map_err(etcd_err(format!("reading export job {id}")))?
    else {
        return Ok(());
    };
    let mut job = ExportJob::decode(&body)?;
    if matches!(job.state, JobState::Done | JobState::Failed) {
        return Ok(());
    }
    let interrupted = job.attempts > 0;
    job.attempts += 1;
    job.worker = Some(ctx.worker.to_string());
    job.updated_ms = ctx.clock.unix_ms();
    let write = |job: &ExportJob| {
        let body = job.encode();
        async move {
            etcd.job_update_fenced(EXPORT_JOBS, id, body?, task, rev)
                .await
                .map_err(etcd_err("writing the export job's record"))
        }
    };
    if job.attempts > MAX_ATTEMPTS {
        job.state = JobState::Failed;
        job.error = Some(format!(
            "gave up after {MAX_ATTEMPTS} runs that did not finish (their workers stopped)"
        ));
        write(&job).await?;
        return Ok(());
    }
    job.state = JobState::Running;
    if !write(&job).await? {
        return Ok(()); // removed, or our claim is gone
    }
    info!(worker = ctx.worker, job = %job.id, to = %job.request.to, attempt = job.attempts, "export job started");
    let progress = Arc::new(Counted::default());
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let ticker = {
        let (etcd, progress, mut rec) = (etcd.clone(), progress.clone(), job.clone());
        let clock = ctx.clock.clone();
        let (id, task, ttl) = (id.to_string(), task.to_string(), ctx.lease_ttl);
        AbortOnDrop(tokio::spawn(async move {
            let mut confirmed = strata_clock::now();
            loop {
                strata_clock::sleep(Duration::from_millis(500)).await;
                rec.read_bytes = progress.read.load(Ordering::Relaxed);
                rec.total_bytes = progress.total.load(Ordering::Relaxed);
                rec.updated_ms = clock.unix_ms();
                let Ok(body) = rec.encode() else { continue };
                match etcd
                    .job_update_fenced(EXPORT_JOBS, &id, body, &task, rev)
                    .await
                {
                    Ok(true) => confirmed = strata_clock::now(),
                    Ok(false) => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    // Unknown: the claim may outlive our last confirmation by a lease TTL;
                    // stop before the next worker may start.
                    Err(_) if confirmed.elapsed() >= ttl / 2 => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(_) => {}
                }
            }
        }))
    };
    let run = async {
        if interrupted {
            // The earlier run's worker stops writing within half a lease TTL of losing its
            // claim, which outlived its last renewal by at most a TTL: wait that out (and
            // for its last uploads to land) before clearing what it wrote.
            strata_clock::sleep(ctx.lease_ttl * 2 + Duration::from_secs(5)).await;
            clear_partial_export(ctx.roots, &job.request.to).await?;
        }
        let source =
            ExportSource::cluster(etcd.clone(), ctx.store.clone(), ctx.manifests.clone()).await?;
        run_export(source, ctx.roots, &job.request, &*progress, ctx.clock).await
    };
    let result = tokio::select! {
        r = run => r,
        _ = lost_rx.wait_for(|l| *l) => {
            warn!(worker = ctx.worker, job = %job.id, "lost the export job's claim; stopped");
            return Ok(());
        }
    };
    drop(ticker);
    job.read_bytes = progress.read.load(Ordering::Relaxed);
    job.total_bytes = progress.total.load(Ordering::Relaxed);
    job.updated_ms = ctx.clock.unix_ms();
    match result {
        Ok(m) => {
            info!(worker = ctx.worker, job = %job.id, rows = m.rows, files = m.files.len(), "export job done");
            job.state = JobState::Done;
            job.result = Some(m);
        }
        Err(e) => {
            warn!(worker = ctx.worker, job = %job.id, error = %e.report(), "export job failed");
            job.state = JobState::Failed;
            job.error = Some(e.report().to_string());
        }
    }
    // A progress update sent just before the ticker stopped may land after the outcome:
    // write the outcome again until it is what the record says.
    for _ in 0..3 {
        if !write(&job).await? {
            return Ok(());
        }
        strata_clock::sleep(Duration::from_millis(200)).await;
        match etcd
            .job_get(EXPORT_JOBS, id)
            .await
            .map_err(etcd_err(format!("reading export job {id}")))?
        {
            Some(b) if ExportJob::decode(&b).is_ok_and(|j| j.state == JobState::Running) => {}
            _ => break,
        }
    }
    Ok(())
}

/// Removes what an earlier, interrupted run of the same job wrote: its Parquet files and
/// manifest, and nothing else (the place was empty when the job was asked for).
async fn clear_partial_export(roots: &Roots, to: &str) -> Result<()> {
    let dest = roots
        .get(to)
        .with_context(|| format!("opening the destination {to}"))?;
    for o in dest
        .list("")
        .await
        .with_context(|| format!("listing {to}"))?
    {
        let ours = o.path == EXPORT_MANIFEST
            || (o.path.starts_with("part-") && o.path.ends_with(".parquet"));
        if ours {
            dest.delete(&o.path)
                .await
                .with_context(|| format!("deleting {} of an interrupted run", o.path))?;
        }
    }
    Ok(())
}
