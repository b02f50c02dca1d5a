//! The load loop every bench target shares: closed-loop clients turning planned operations
//! into requests against a [`Backend`] (gRPC, the engine in-process, a raw object store, or a
//! peer such as SlateDB in `infra/bench-compare`), the preload, progress, stop conditions,
//! RSS/CPU sampling and the merged [`Summary`].
//!
//! Nothing here knows a protocol: a backend gets a materialized [`Op`] (keys and values as
//! `Bytes`) and answers an [`Outcome`] or an [`OpError`]. That keeps every target measured by
//! the same generator, the same clock and the same histograms, so ratios between targets in
//! one run compare like with like.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::rss::{self, RssReport};
use super::stats::{Outcome, PreloadSummary, Recorder, Summary};
use super::workload::{
    preload_batches, KeyChooser, KeyFormat, Mix, OpGenerator, OpPlan, ValuePool, ValueSizes,
    Workload,
};

/// Keys per batch while preloading.
pub const PRELOAD_BATCH_KEYS: usize = 64;
/// Value bytes per preload batch (one larger value still goes alone).
pub const PRELOAD_BATCH_BYTES: usize = 2 << 20;
/// Preload tasks at least (a one-client run still preloads quickly, even on a store whose
/// durable writes take 100 ms).
const PRELOAD_MIN_TASKS: usize = 16;
/// Attempts per preload batch on retryable errors.
const PRELOAD_ATTEMPTS: u32 = 5;
/// Recorders are shared by groups of clients (bounded memory with many clients).
const MAX_RECORDER_SHARDS: usize = 16;
/// Interval of the throughput timeline.
const TIMELINE_EVERY: Duration = Duration::from_millis(250);

/// One request, materialized: what a backend sends.
#[derive(Debug, Clone)]
pub enum Op {
    Get(Bytes),
    BatchGet(Vec<Bytes>),
    Put(Bytes, Bytes),
    BatchWrite(Vec<(Bytes, Bytes)>),
    Delete(Bytes),
    /// Start key and entry limit.
    Scan(Bytes, u32),
    /// A put of a new key (reported apart from updates).
    Insert(Bytes, Bytes),
    /// Read the key, then write the value back (timed as one operation).
    ReadModifyWrite(Bytes, Bytes),
    /// A floor request with a payload size (empty round trip, raw store PUT or GET).
    Floor(usize),
}

/// A failed request.
#[derive(Debug, Clone)]
pub struct OpError {
    /// Short code for the report (a gRPC code name, or a backend's own error kind).
    pub code: String,
    /// The error with its context, for the first-error line.
    pub message: String,
    /// Whether the preload may try the request again.
    pub retryable: bool,
    /// The server asked to wait this long before the next request (`retry-after-ms` on a
    /// quota refusal): the client does, as a well-behaved client would.
    pub retry_after: Option<Duration>,
}

/// A system under test.
pub trait Backend: Send + Sync + 'static {
    /// Executes `op` for client `client` and waits for the whole answer (the whole stream for
    /// scans). `bytes_written` of the outcome is the larger of the backend's and the key +
    /// value bytes of the request.
    fn execute(
        &self,
        client: usize,
        op: Op,
    ) -> impl Future<Output = Result<Outcome, OpError>> + Send;

    /// Moves what the preload wrote out of memory into the store's files (memtables flushed
    /// to SSTs), so read workloads measure the read path and not the memtable. A no-op where
    /// the backend cannot (a server over gRPC has no flush RPC).
    fn settle(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// Everything the driver needs to run one measured phase (and its preload).
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub workload: Workload,
    pub clients: usize,
    pub duration: Option<Duration>,
    pub ops: Option<u64>,
    pub keyspace: u64,
    pub keys: KeyFormat,
    pub chooser: KeyChooser,
    pub sizes: ValueSizes,
    pub mix: Mix,
    pub seed: u64,
    /// Print operations slower than this to stderr.
    pub slow: Option<Duration>,
    pub hide_progress: bool,
    /// Sample this process's RSS and CPU during the measured phase.
    pub rss_pid: Option<u32>,
}

/// What a measured phase produced.
#[derive(Debug)]
pub struct RunResult {
    pub summary: Summary,
    pub rss: Option<RssReport>,
    pub timeline: Vec<(u64, u64)>,
}

/// Distinct, well-mixed seed per stream (splitmix64).
pub fn sub_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed.wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether progress bars should be hidden (asked to, or stderr is not a terminal).
pub fn hide_progress(asked: bool) -> bool {
    asked || !std::io::stderr().is_terminal()
}

/// Turns a plan into a request with keys and values; returns it and the key + value bytes it
/// writes.
pub fn materialize(
    keys: &KeyFormat,
    pool: &ValuePool,
    rng: &mut SmallRng,
    plan: OpPlan,
) -> (Op, u64) {
    let kv = |rng: &mut SmallRng, i: u64, len: usize| {
        let (k, v) = (keys.key(i), pool.value(rng, len));
        let n = (k.len() + v.len()) as u64;
        (k, v, n)
    };
    match plan {
        OpPlan::Get(i) => (Op::Get(keys.key(i)), 0),
        OpPlan::BatchGet(ids) => (
            Op::BatchGet(ids.into_iter().map(|i| keys.key(i)).collect()),
            0,
        ),
        OpPlan::Put(i, len) => {
            let (k, v, n) = kv(rng, i, len);
            (Op::Put(k, v), n)
        }
        OpPlan::Insert(i, len) => {
            let (k, v, n) = kv(rng, i, len);
            (Op::Insert(k, v), n)
        }
        OpPlan::ReadModifyWrite(i, len) => {
            let (k, v, n) = kv(rng, i, len);
            (Op::ReadModifyWrite(k, v), n)
        }
        OpPlan::BatchWrite(items) => {
            let mut bytes = 0;
            let items = items
                .into_iter()
                .map(|(i, len)| {
                    let (k, v, n) = kv(rng, i, len);
                    bytes += n;
                    (k, v)
                })
                .collect();
            (Op::BatchWrite(items), bytes)
        }
        OpPlan::Delete(i) => {
            let k = keys.key(i);
            let n = k.len() as u64;
            (Op::Delete(k), n)
        }
        OpPlan::Scan(i, limit) => (Op::Scan(keys.key(i), limit), 0),
        // What a floor request writes (a raw PUT's body) the backend reports itself.
        OpPlan::Floor(len) => (Op::Floor(len), 0),
    }
}

/// Counters shared by all clients (progress, stop conditions, abort).
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    issued: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, e: &OpError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(e.message.clone());
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn lock_recorder(r: &Mutex<Recorder>) -> std::sync::MutexGuard<'_, Recorder> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one client shares with the others.
struct ClientCtx<B> {
    backend: Arc<B>,
    keys: KeyFormat,
    pool: Arc<ValuePool>,
    shared: Arc<Shared>,
    slow: Option<Duration>,
    deadline: Option<Instant>,
    ops_limit: Option<u64>,
}

async fn client_loop<B: Backend>(
    ctx: Arc<ClientCtx<B>>,
    client: usize,
    mut generator: OpGenerator,
    mut rng: SmallRng,
    recorder: Arc<Mutex<Recorder>>,
) {
    loop {
        // A backend that answers without waiting (an in-process read from the cache) would
        // otherwise keep this task on its worker forever, starving the RSS sampler and the
        // progress ticker: yield once the task's cooperative budget is spent.
        tokio::task::consume_budget().await;
        if ctx.shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(max) = ctx.ops_limit {
            if ctx.shared.issued.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        let Some(plan) = generator.next(&mut rng) else {
            break;
        };
        let kind = plan.kind();
        let (op, bytes_written) = materialize(&ctx.keys, &ctx.pool, &mut rng, plan);
        let t0 = Instant::now();
        // Wall-clock start only when slow ops are printed (not on every op's hot path).
        let wall0 = ctx.slow.map(|_| chrono::Utc::now());
        let result = ctx.backend.execute(client, op).await;
        let latency = t0.elapsed();
        if let Some(wall0) = wall0.filter(|_| ctx.slow.is_some_and(|s| latency >= s)) {
            eprintln!(
                "SLOW {} {kind:?} {:.1} ms{}",
                wall0.format("%H:%M:%S%.3f"),
                latency.as_secs_f64() * 1e3,
                result
                    .as_ref()
                    .err()
                    .map(|e| format!(" ({})", e.code))
                    .unwrap_or_default()
            );
        }
        match result {
            Ok(mut o) => {
                o.bytes_written = o.bytes_written.max(bytes_written);
                ctx.shared.ok.fetch_add(1, Ordering::Relaxed);
                ctx.shared
                    .bytes
                    .fetch_add(o.bytes_read + o.bytes_written, Ordering::Relaxed);
                lock_recorder(&recorder).record_ok(kind, latency, o);
            }
            Err(e) => {
                ctx.shared.note_error(&e);
                lock_recorder(&recorder).record_err(kind, &e.code);
                if let Some(mut d) = e.retry_after {
                    // Never past the run's end.
                    if let Some(end) = ctx.deadline {
                        d = d.min(end.saturating_duration_since(Instant::now()));
                    }
                    // In slices, so a stopped run does not wait out a long turn.
                    let until = Instant::now() + d;
                    while !ctx.shared.stop.load(Ordering::Relaxed) && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
                    }
                }
            }
        }
    }
}

fn progress_bar(hidden: bool, len: u64, template: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::new(len).with_style(style)
}

/// Writes every key of the keyspace once with batches (not measured); task `c` of N (`clients`,
/// at least 16) takes keys c, c+N, ...
pub async fn preload<B: Backend>(
    backend: &Arc<B>,
    spec: &RunSpec,
    pool: &Arc<ValuePool>,
    clients: usize,
) -> anyhow::Result<PreloadSummary> {
    let bar = progress_bar(
        spec.hide_progress,
        spec.keyspace,
        "preload {spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} keys ({per_sec}, eta {eta})",
    );
    let started = Instant::now();
    let written = Arc::new(AtomicU64::new(0));
    let n = clients.max(PRELOAD_MIN_TASKS) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..n {
        let backend = Arc::clone(backend);
        let pool = Arc::clone(pool);
        let keys = spec.keys.clone();
        let bar = bar.clone();
        let written = Arc::clone(&written);
        let mut rng = SmallRng::seed_from_u64(sub_seed(spec.seed, 1_000_000 + c));
        let sizes = spec.sizes.clone();
        let batches = preload_batches(
            spec.keyspace,
            c,
            n,
            PRELOAD_BATCH_KEYS,
            PRELOAD_BATCH_BYTES,
            |_| sizes.sample(&mut rng),
        );
        tasks.spawn(async move {
            for batch in batches {
                let (first, last) = match (batch.first(), batch.last()) {
                    (Some(f), Some(l)) => (f.0, l.0),
                    _ => continue,
                };
                let count = batch.len() as u64;
                let (op, bytes) = materialize(&keys, &pool, &mut rng, OpPlan::BatchWrite(batch));
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match backend.execute(c as usize, op.clone()).await {
                        Ok(_) => break,
                        Err(e) if attempt < PRELOAD_ATTEMPTS && e.retryable => {
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                        Err(e) => bail!(
                            "preloading keys {first}..={last} (every {n}th), attempt {attempt}: {}",
                            e.message
                        ),
                    }
                }
                written.fetch_add(bytes, Ordering::Relaxed);
                bar.inc(count);
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res.context("preload task panicked").and_then(|r| r) {
            tasks.abort_all();
            bar.abandon();
            return Err(e);
        }
    }
    if matches!(spec.workload, Workload::Read | Workload::Scan) {
        backend
            .settle()
            .await
            .context("flushing after the preload")?;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let bytes = written.load(Ordering::Relaxed);
    Ok(PreloadSummary {
        keys: spec.keyspace,
        elapsed_s: elapsed,
        keys_per_s: spec.keyspace as f64 / elapsed,
        bytes_written: bytes,
        mb_per_s: bytes as f64 / 1e6 / elapsed,
    })
}

/// Runs the measured phase: `spec.clients` closed-loop clients until the duration or the
/// request count is reached (or the load workload ran out of keys, or Ctrl-C).
pub async fn measure<B: Backend>(
    backend: &Arc<B>,
    spec: &RunSpec,
    pool: &Arc<ValuePool>,
) -> anyhow::Result<RunResult> {
    let shared = Arc::new(Shared::default());
    let shards = spec.clients.clamp(1, MAX_RECORDER_SHARDS);
    let recorders: Vec<Arc<Mutex<Recorder>>> = (0..shards)
        .map(|_| Arc::new(Mutex::new(Recorder::default())))
        .collect();
    if let Some(pid) = spec.rss_pid {
        rss::check(pid)?;
    }

    // YCSB D and E insert new keys past the keyspace: one counter for every client. The
    // generators (zipfian tables) are built before the clock starts.
    let inserts = Arc::new(AtomicU64::new(spec.keyspace));
    let generators: Vec<OpGenerator> = (0..spec.clients)
        .map(|i| {
            OpGenerator::new(
                spec.workload,
                spec.chooser.clone(),
                spec.sizes.clone(),
                spec.mix.clone(),
                spec.keyspace,
                i as u64,
                spec.clients as u64,
            )
            .with_inserts(Arc::clone(&inserts))
        })
        .collect();

    let started = Instant::now();
    let ctx = Arc::new(ClientCtx {
        backend: Arc::clone(backend),
        keys: spec.keys.clone(),
        pool: Arc::clone(pool),
        shared: Arc::clone(&shared),
        slow: spec.slow,
        deadline: spec.duration.map(|d| started + d),
        ops_limit: spec.ops,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, generator) in generators.into_iter().enumerate() {
        tasks.spawn(client_loop(
            Arc::clone(&ctx),
            i,
            generator,
            SmallRng::seed_from_u64(sub_seed(spec.seed, i as u64)),
            Arc::clone(&recorders[i % shards]),
        ));
    }

    // Progress: by time when there is a deadline, else by requests (or keys for load).
    let (bar_len, by_time) = match (spec.duration, spec.ops) {
        (Some(d), _) => (d.as_millis() as u64, true),
        (None, Some(n)) => (n, false),
        (None, None) => (spec.keyspace, false),
    };
    let bar = progress_bar(
        spec.hide_progress,
        bar_len,
        "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
    );
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let ticker = {
        let shared = Arc::clone(&shared);
        let bar = bar.clone();
        let timeline = Arc::clone(&timeline);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TIMELINE_EVERY);
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let ok = shared.ok.load(Ordering::Relaxed);
                let errors = shared.errors.load(Ordering::Relaxed);
                let done = ok + errors;
                timeline
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((started.elapsed().as_millis() as u64, done - last));
                last = done;
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                if by_time {
                    bar.set_position(started.elapsed().as_millis() as u64);
                } else {
                    bar.set_position(done);
                }
                bar.set_message(format!(
                    "{done} ops, {:.0} ops/s, {:.1} MB/s, {errors} errors",
                    ok as f64 / secs,
                    shared.bytes.load(Ordering::Relaxed) as f64 / 1e6 / secs,
                ));
            }
        })
    };
    // Abort when nothing succeeded during the first second.
    let aborted = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let shared = Arc::clone(&shared);
        let aborted = Arc::clone(&aborted);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if shared.ok.load(Ordering::Relaxed) == 0 && shared.errors.load(Ordering::Relaxed) > 0 {
                aborted.store(true, Ordering::Relaxed);
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let interrupt = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let (rss_stop, rss_stopped) = tokio::sync::oneshot::channel::<()>();
    let rss_task = spec.rss_pid.map(|pid| {
        tokio::spawn(rss::sample(pid, async move {
            let _ = rss_stopped.await;
        }))
    });

    let mut panicked = None;
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res {
            shared.stop.store(true, Ordering::Relaxed);
            panicked.get_or_insert(e);
        }
    }
    let elapsed = started.elapsed();
    let _ = rss_stop.send(());
    let rss = match rss_task {
        Some(t) => t.await.ok(),
        None => None,
    };
    ticker.abort();
    watchdog.abort();
    interrupt.abort();
    bar.finish_and_clear();
    if let Some(e) = panicked {
        return Err(anyhow::Error::new(e).context("bench client task failed"));
    }

    let ok = shared.ok.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    if ok == 0 && errors > 0 {
        let first = shared.first_error().unwrap_or_default();
        if aborted.load(Ordering::Relaxed) {
            bail!("every request failed during the first second; first error: {first}");
        }
        bail!("every request failed ({errors}); first error: {first}");
    }
    let mut total = Recorder::default();
    for r in &recorders {
        total.merge(&lock_recorder(r));
    }
    let timeline = std::mem::take(
        &mut *timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(RunResult {
        summary: total.summarize(elapsed),
        rss,
        timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn materialize_counts_written_bytes() {
        let keys = KeyFormat::new(50, 1000).expect("fits");
        let mut rng = SmallRng::seed_from_u64(1);
        let pool = ValuePool::new(&mut rng);
        let (op, bytes) = materialize(
            &keys,
            &pool,
            &mut rng,
            OpPlan::BatchWrite(vec![(1, 10), (2, 20)]),
        );
        assert_eq!(bytes, 50 + 10 + 50 + 20);
        match op {
            Op::BatchWrite(items) => {
                assert_eq!(items.len(), 2);
                assert_eq!(items[1].1.len(), 20);
            }
            other => panic!("wrong op {other:?}"),
        }
        let (op, bytes) = materialize(&keys, &pool, &mut rng, OpPlan::Scan(5, 100));
        assert_eq!(bytes, 0);
        assert!(matches!(op, Op::Scan(k, 100) if k == keys.key(5)));
        let (op, bytes) = materialize(&keys, &pool, &mut rng, OpPlan::ReadModifyWrite(3, 7));
        assert_eq!(bytes, 57);
        assert!(matches!(op, Op::ReadModifyWrite(k, v) if k == keys.key(3) && v.len() == 7));
    }

    #[test]
    fn sub_seeds_differ() {
        assert_ne!(sub_seed(1, 0), sub_seed(1, 1));
        assert_ne!(sub_seed(1, 0), sub_seed(2, 0));
        assert_eq!(sub_seed(7, 3), sub_seed(7, 3));
    }
}
