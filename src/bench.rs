//! `strata bench`: drives a server with concurrent closed-loop clients over
//! several gRPC channels and reports throughput and latency percentiles per
//! operation type, as a table and as JSON.
//!
//! The pure parts (key and value generation, the operation mix, zipfian keys,
//! histogram summaries and the JSON shape) live in `bench/workload.rs` and
//! `bench/stats.rs`; this file holds the flags and the network loop.

mod rss;
mod stats;
mod workload;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_compute::pb;
use strata_compute::pb::kv_client::KvClient;
use tonic::transport::Channel;

use crate::client_cli::{self, ConsistencyArg, DEFAULT_TARGET};
use stats::{Outcome, PreloadSummary, Recorder, Report};
use workload::{
    preload_batches, KeyChooser, KeyFormat, Mix, OpGenerator, OpPlan, ValuePool, ValueSizes,
    Workload, Zipfian, MAX_VALUE_BYTES,
};

/// Keys per BatchWrite while preloading.
const PRELOAD_BATCH_KEYS: usize = 64;
/// Value bytes per BatchWrite while preloading (one larger value still goes alone).
const PRELOAD_BATCH_BYTES: usize = 2 << 20;
/// Attempts per preload batch on retryable errors.
const PRELOAD_ATTEMPTS: u32 = 5;
/// Duration of the measured phase when neither --duration nor --ops is given.
const DEFAULT_DURATION_SECS: f64 = 10.0;
/// Recorders are shared by groups of clients (bounded memory with many clients).
const MAX_RECORDER_SHARDS: usize = 16;

/// Key distribution.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipfian with theta 0.99 (hot keys scattered over the keyspace).
    Zipfian,
}

/// Write durability.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// Acknowledged once the WAL segment is in the object store.
    Durable,
    /// Acknowledged once applied in memory.
    Buffered,
}

impl DurabilityArg {
    fn to_pb(self) -> i32 {
        match self {
            DurabilityArg::Durable => pb::Durability::Durable as i32,
            DurabilityArg::Buffered => pb::Durability::Buffered as i32,
        }
    }
}

/// Flags of `strata bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Server address, HOST:PORT or a full http:// URI; several comma-separated addresses
    /// (nodes of one cluster) spread the connections over them.
    #[arg(long, env = "STRATA_TARGET", default_value = DEFAULT_TARGET)]
    pub target: String,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Workload::Default)]
    pub workload: Workload,
    /// On a cluster, send every request to the targets and let nodes forward (default: route
    /// each key straight to its partition's owner, as the client library does).
    #[arg(long)]
    pub forward: bool,
    /// Concurrent clients (each keeps one request in flight).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Clients sharing one gRPC channel (HTTP/2 connection).
    #[arg(long, default_value_t = 8)]
    pub clients_per_channel: usize,
    /// Seconds to measure (default 10, or unlimited with --ops, or until the
    /// keyspace is written for `load`); the run stops at whichever limit comes first.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Requests to issue in total (a batch counts as one).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Keyspace size.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key size in bytes (`key` + zero-padded index).
    #[arg(long, default_value_t = 50)]
    pub key_size: usize,
    /// Fixed value size in bytes (overrides the scale-sheet distribution;
    /// the `put` workload defaults to 1024).
    #[arg(long)]
    pub value_size: Option<usize>,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Share of requests that are reads (default workload).
    #[arg(long, default_value_t = 0.7)]
    pub read_fraction: f64,
    /// Share of requests that are batches (default workload).
    #[arg(long, default_value_t = 0.2)]
    pub batch_fraction: f64,
    /// Keys per BatchGet / BatchWrite.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Share of single writes that are deletes (default workload).
    #[arg(long, default_value_t = 0.0)]
    pub delete_fraction: f64,
    /// Entries per Scan (scan workload).
    #[arg(long, default_value_t = 100)]
    pub scan_length: u32,
    /// Durability of writes.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Durable)]
    pub durability: DurabilityArg,
    /// Consistency of reads.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Strong)]
    pub consistency: ConsistencyArg,
    /// Write the whole keyspace before measuring (default for read and scan).
    #[arg(long, overrides_with = "no_preload")]
    pub preload: bool,
    /// Do not preload, even for read and scan.
    #[arg(long, overrides_with = "preload")]
    pub no_preload: bool,
    /// RNG seed (random when absent; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the JSON report to FILE (`-` = stdout, after the table).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// On a cluster, send each measured BatchWrite whole, so one whose keys span partitions
    /// commits as a cross-partition transaction (by default it is split per partition).
    #[arg(long)]
    pub txn: bool,
    /// Sample this process's resident memory (the server's pid, on this machine) every
    /// 250 ms during the run; the table shows its peak, the JSON the whole curve.
    #[arg(long, value_name = "PID")]
    pub report_rss: Option<u32>,
    /// Print every operation slower than this (ms) to stderr as `SLOW <start, UTC> <op>
    /// <latency ms>`: a timeline to lay beside the server's log when looking for stalls.
    #[arg(long, value_name = "MS")]
    pub slow_ms: Option<u64>,
}

/// Validated settings derived from the flags.
#[derive(Debug, Clone)]
struct Plan {
    duration: Option<Duration>,
    ops: Option<u64>,
    preload: bool,
    sizes: ValueSizes,
    seed: u64,
    channels: usize,
}

fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    ensure!(args.clients >= 1, "--clients must be at least 1");
    ensure!(
        args.clients_per_channel >= 1,
        "--clients-per-channel must be at least 1"
    );
    ensure!(args.batch_size >= 1, "--batch-size must be at least 1");
    ensure!(args.scan_length >= 1, "--scan-length must be at least 1");
    for (name, v) in [
        ("--read-fraction", args.read_fraction),
        ("--batch-fraction", args.batch_fraction),
        ("--delete-fraction", args.delete_fraction),
    ] {
        ensure!(
            (0.0..=1.0).contains(&v),
            "{name} must be within [0, 1], got {v}"
        );
    }
    if let Some(v) = args.value_size {
        ensure!(
            v <= MAX_VALUE_BYTES,
            "--value-size {v} exceeds the {MAX_VALUE_BYTES}-byte value limit"
        );
    }
    if let Some(d) = args.duration {
        ensure!(
            d.is_finite() && d > 0.0,
            "--duration must be a positive number of seconds"
        );
    }
    if args.ops == Some(0) {
        bail!("--ops must be at least 1");
    }
    KeyFormat::new(args.key_size, args.keys)?;

    let duration = match (args.duration, args.ops, args.workload) {
        (Some(d), _, _) => Some(Duration::from_secs_f64(d)),
        (None, Some(_), _) | (None, None, Workload::Load) => None,
        (None, None, _) => Some(Duration::from_secs_f64(DEFAULT_DURATION_SECS)),
    };
    let preload = if args.preload {
        true
    } else if args.no_preload {
        false
    } else {
        matches!(args.workload, Workload::Read | Workload::Scan)
    };
    let sizes = match (args.value_size, args.workload) {
        (Some(v), _) => ValueSizes::Fixed(v),
        (None, Workload::Put) => ValueSizes::Fixed(1024),
        (None, _) => ValueSizes::scale_sheet(),
    };
    Ok(Plan {
        duration,
        ops: args.ops,
        preload,
        sizes,
        seed: args.seed.unwrap_or_else(|| rand::rng().random()),
        channels: args.clients.div_ceil(args.clients_per_channel),
    })
}

/// Distinct, well-mixed seed per stream (splitmix64).
fn sub_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed.wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Everything a client needs to turn a plan into a request.
struct Ctx {
    keys: KeyFormat,
    pool: ValuePool,
    durability: i32,
    consistency: i32,
    /// Partitions of the target (1 for a single node). A batch write is sent as one request
    /// per partition its keys fall in, concurrently: a cluster keeps batches within one
    /// partition.
    partitions: u32,
    /// Per partition, clients connected straight to its owner (empty: every request goes to
    /// the client's own target, and cluster nodes forward what they do not own).
    direct: Vec<Vec<KvClient<Channel>>>,
    /// Measured batch writes go whole (cross-partition transactions on a cluster).
    txn: bool,
    /// `--slow-ms`.
    slow: Option<Duration>,
}

/// A ready-to-send request.
enum Req {
    Get(pb::GetRequest),
    BatchGet(pb::BatchGetRequest),
    Put(pb::PutRequest),
    BatchWrite(pb::BatchWriteRequest),
    Delete(pb::DeleteRequest),
    Scan(pb::ScanRequest),
}

fn put_request(ctx: &Ctx, rng: &mut SmallRng, idx: u64, len: usize) -> pb::PutRequest {
    pb::PutRequest {
        key: ctx.keys.key(idx),
        value: ctx.pool.value(rng, len),
        ttl_ms: 0,
        condition: None,
        durability: ctx.durability,
    }
}

/// Builds the request and returns the key + value bytes it writes.
fn build(ctx: &Ctx, rng: &mut SmallRng, plan: OpPlan) -> (Req, u64) {
    match plan {
        OpPlan::Get(i) => (
            Req::Get(pb::GetRequest {
                key: ctx.keys.key(i),
                consistency: ctx.consistency,
            }),
            0,
        ),
        OpPlan::BatchGet(ids) => (
            Req::BatchGet(pb::BatchGetRequest {
                keys: ids.into_iter().map(|i| ctx.keys.key(i)).collect(),
                consistency: ctx.consistency,
            }),
            0,
        ),
        OpPlan::Put(i, len) => {
            let p = put_request(ctx, rng, i, len);
            let bytes = (p.key.len() + p.value.len()) as u64;
            (Req::Put(p), bytes)
        }
        OpPlan::BatchWrite(items) => {
            let mut bytes = 0u64;
            let ops = items
                .into_iter()
                .map(|(i, len)| {
                    let p = put_request(ctx, rng, i, len);
                    bytes += (p.key.len() + p.value.len()) as u64;
                    pb::WriteOp {
                        op: Some(pb::write_op::Op::Put(p)),
                    }
                })
                .collect();
            (
                Req::BatchWrite(pb::BatchWriteRequest {
                    ops,
                    durability: ctx.durability,
                }),
                bytes,
            )
        }
        OpPlan::Delete(i) => {
            let key = ctx.keys.key(i);
            let bytes = key.len() as u64;
            (
                Req::Delete(pb::DeleteRequest {
                    key,
                    if_version: None,
                    durability: ctx.durability,
                }),
                bytes,
            )
        }
        OpPlan::Scan(i, limit) => (
            Req::Scan(pb::ScanRequest {
                start: ctx.keys.key(i),
                end: Default::default(),
                prefix: Default::default(),
                limit,
                consistency: ctx.consistency,
            }),
            0,
        ),
    }
}

/// A batch write, split by partition and sent concurrently.
async fn batch_write(
    client: &mut KvClient<Channel>,
    r: pb::BatchWriteRequest,
    partitions: u32,
) -> Result<(), tonic::Status> {
    if partitions <= 1 {
        client.batch_write(r).await?;
        return Ok(());
    }
    let mut groups: std::collections::BTreeMap<u32, Vec<pb::WriteOp>> = Default::default();
    for op in r.ops {
        let key = match &op.op {
            Some(pb::write_op::Op::Put(p)) => &p.key,
            Some(pb::write_op::Op::Delete(d)) => &d.key,
            None => continue,
        };
        groups
            .entry(strata_format::partition_of(key, partitions))
            .or_default()
            .push(op);
    }
    let sends = groups.into_values().map(|ops| {
        let mut c = client.clone();
        let req = pb::BatchWriteRequest {
            ops,
            durability: r.durability,
        };
        async move { c.batch_write(req).await }
    });
    futures::future::try_join_all(sends).await?;
    Ok(())
}

/// The routing table of the cluster behind `channel` (`None` for a single node or an older
/// server).
async fn cluster_map(channel: Channel) -> Option<pb::ClusterMapResponse> {
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let m = admin
        .cluster_map(pb::ClusterMapRequest {})
        .await
        .ok()?
        .into_inner();
    (m.partitions > 1).then_some(m)
}

/// Channels straight to each partition's owner, `per_node` connections per node.
async fn direct_clients(
    map: &pb::ClusterMapResponse,
    per_node: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Vec<KvClient<Channel>>>> {
    let mut by_addr: std::collections::HashMap<String, Vec<KvClient<Channel>>> = Default::default();
    let mut out = vec![Vec::new(); map.partitions as usize];
    for o in &map.owners {
        if o.addr.is_empty() {
            continue;
        }
        if !by_addr.contains_key(&o.addr) {
            let chans = futures::future::try_join_all(
                (0..per_node.max(1)).map(|_| client_cli::connect(&o.addr, timeout)),
            )
            .await?;
            by_addr.insert(
                o.addr.clone(),
                chans.into_iter().map(client_cli::kv_client).collect(),
            );
        }
        if let Some(slot) = out.get_mut(o.partition as usize) {
            *slot = by_addr[&o.addr].clone();
        }
    }
    Ok(out)
}

/// The key a request is routed by (none for batch writes, which are split per partition
/// anyway, and scans, which span every partition).
fn routing_key(req: &Req) -> Option<&[u8]> {
    match req {
        Req::Get(r) => Some(&r.key),
        Req::Put(r) => Some(&r.key),
        Req::Delete(r) => Some(&r.key),
        Req::BatchGet(r) => r.keys.first().map(|k| &k[..]),
        Req::BatchWrite(_) | Req::Scan(_) => None,
    }
}

/// Sends one request and waits for the whole answer (the whole stream for scans).
async fn execute(
    client: &mut KvClient<Channel>,
    req: Req,
    bytes_written: u64,
    partitions: u32,
) -> Result<Outcome, tonic::Status> {
    let mut o = Outcome {
        bytes_written,
        ..Outcome::default()
    };
    match req {
        Req::Get(r) => {
            let key_len = r.key.len() as u64;
            let resp = client.get(r).await?.into_inner();
            o.items = 1;
            if resp.found {
                o.bytes_read = key_len + resp.value.len() as u64;
            } else {
                o.not_found = 1;
            }
        }
        Req::BatchGet(r) => {
            let key_lens: Vec<u64> = r.keys.iter().map(|k| k.len() as u64).collect();
            let resp = client.batch_get(r).await?.into_inner();
            o.items = key_lens.len() as u64;
            for (res, key_len) in resp.results.iter().zip(key_lens) {
                if res.found {
                    o.bytes_read += key_len + res.value.len() as u64;
                } else {
                    o.not_found += 1;
                }
            }
        }
        Req::Put(r) => {
            client.put(r).await?;
            o.items = 1;
        }
        Req::BatchWrite(r) => {
            let n = r.ops.len() as u64;
            batch_write(client, r, partitions).await?;
            o.items = n;
        }
        Req::Delete(r) => {
            let resp = client.delete(r).await?.into_inner();
            o.items = 1;
            o.not_found = u64::from(!resp.found);
        }
        Req::Scan(r) => {
            let mut stream = client.scan(r).await?.into_inner();
            while let Some(chunk) = stream.message().await? {
                for kv in &chunk.entries {
                    o.items += 1;
                    o.bytes_read += (kv.key.len() + kv.value.len()) as u64;
                }
            }
        }
    }
    Ok(o)
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
    fn note_error(&self, status: &tonic::Status) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none() {
            *first = Some(client_cli::status_error(status.clone()).to_string());
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

#[expect(
    clippy::too_many_arguments,
    reason = "one load-generating client's shared counters, each shared differently"
)]
async fn client_loop(
    client: KvClient<Channel>,
    mut generator: OpGenerator,
    mut rng: SmallRng,
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    recorder: Arc<Mutex<Recorder>>,
    deadline: Option<Instant>,
    ops_limit: Option<u64>,
) {
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(max) = ops_limit {
            if shared.issued.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        let Some(plan) = generator.next(&mut rng) else {
            break;
        };
        let kind = plan.kind();
        let (req, bytes_written) = build(&ctx, &mut rng, plan);
        // Straight to the owner when we know it (a cluster); else through our target.
        let direct = routing_key(&req)
            .and_then(|k| {
                ctx.direct
                    .get(strata_format::partition_of(k, ctx.partitions) as usize)
            })
            .filter(|cs| !cs.is_empty())
            .map(|cs| cs[rng.random_range(0..cs.len())].clone());
        let mut c = direct.unwrap_or_else(|| client.clone());
        let t0 = Instant::now();
        // Wall-clock start only when slow ops are printed (not on every op's hot path).
        let wall0 = ctx.slow.map(|_| chrono::Utc::now());
        let split_into = if ctx.txn { 1 } else { ctx.partitions };
        let result = execute(&mut c, req, bytes_written, split_into).await;
        let latency = t0.elapsed();
        if let Some(wall0) = wall0.filter(|_| ctx.slow.is_some_and(|s| latency >= s)) {
            eprintln!(
                "SLOW {} {kind:?} {:.1} ms{}",
                wall0.format("%H:%M:%S%.3f"),
                latency.as_secs_f64() * 1e3,
                result
                    .as_ref()
                    .err()
                    .map(|e| format!(" ({:?})", e.code()))
                    .unwrap_or_default()
            );
        }
        match result {
            Ok(o) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
                shared
                    .bytes
                    .fetch_add(o.bytes_read + o.bytes_written, Ordering::Relaxed);
                lock_recorder(&recorder).record_ok(kind, latency, o);
            }
            Err(status) => {
                shared.note_error(&status);
                lock_recorder(&recorder).record_err(kind, &client_cli::code_name(status.code()));
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

fn is_retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
    )
}

/// Writes every key once with BatchWrites (not measured); clients take strides.
async fn preload(
    args: &BenchArgs,
    plan: &Plan,
    ctx: &Arc<Ctx>,
    clients: &[KvClient<Channel>],
    hide_progress: bool,
) -> anyhow::Result<PreloadSummary> {
    let bar = progress_bar(
        hide_progress,
        args.keys,
        "preload {spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} keys ({per_sec}, eta {eta})",
    );
    let started = Instant::now();
    let written = Arc::new(AtomicU64::new(0));
    let n = clients.len() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        let c = c as u64;
        let mut client = client.clone();
        let ctx = Arc::clone(ctx);
        let bar = bar.clone();
        let written = Arc::clone(&written);
        let mut rng = SmallRng::seed_from_u64(sub_seed(plan.seed, 1_000_000 + c));
        let sizes = plan.sizes.clone();
        let batches = preload_batches(
            args.keys,
            c,
            n,
            PRELOAD_BATCH_KEYS,
            PRELOAD_BATCH_BYTES,
            |_| sizes.sample(&mut rng),
        );
        tasks.spawn(async move {
            for batch in batches {
                let (first, last) = (batch[0].0, batch[batch.len() - 1].0);
                let count = batch.len() as u64;
                let (req, bytes) = build(&ctx, &mut rng, OpPlan::BatchWrite(batch));
                let Req::BatchWrite(req) = req else {
                    unreachable!("build keeps the plan's kind")
                };
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match batch_write(&mut client, req.clone(), ctx.partitions).await {
                        Ok(_) => break,
                        Err(s) if attempt < PRELOAD_ATTEMPTS && is_retryable(s.code()) => {
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                        Err(s) => {
                            return Err(client_cli::status_error(s)).with_context(|| {
                                format!(
                                    "preloading keys {first}..={last} (every {n}th), attempt {attempt}"
                                )
                            });
                        }
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
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let bytes = written.load(Ordering::Relaxed);
    Ok(PreloadSummary {
        keys: args.keys,
        elapsed_s: elapsed,
        keys_per_s: args.keys as f64 / elapsed,
        bytes_written: bytes,
        mb_per_s: bytes as f64 / 1e6 / elapsed,
    })
}

fn config_json(args: &BenchArgs, plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "target": args.target,
        "workload": args.workload,
        "clients": args.clients,
        "channels": plan.channels,
        "duration_s": plan.duration.map(|d| d.as_secs_f64()),
        "ops": plan.ops,
        "keys": args.keys,
        "key_size": args.key_size,
        "value_size": match plan.sizes {
            ValueSizes::Fixed(n) => serde_json::json!(n),
            ValueSizes::Buckets(_) => serde_json::json!("scale-sheet"),
        },
        "distribution": args.distribution,
        "zipfian_theta": (args.distribution == Distribution::Zipfian).then_some(Zipfian::DEFAULT_THETA),
        "read_fraction": args.read_fraction,
        "batch_fraction": args.batch_fraction,
        "batch_size": args.batch_size,
        "delete_fraction": args.delete_fraction,
        "scan_length": args.scan_length,
        "durability": args.durability,
        "consistency": args.consistency,
        "preload": plan.preload,
        "seed": plan.seed,
    })
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let hide_progress = args.no_progress || !std::io::stderr().is_terminal();
    let key_format = KeyFormat::new(args.key_size, args.keys)?;

    eprintln!(
        "strata bench: workload={:?} target={} clients={} channels={} keys={} values={} distribution={:?} seed={}",
        args.workload,
        args.target,
        args.clients,
        plan.channels,
        args.keys,
        plan.sizes.describe(),
        args.distribution,
        plan.seed
    );

    let timeout = Duration::from_millis(args.timeout_ms);
    let targets: Vec<&str> = args
        .target
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    anyhow::ensure!(!targets.is_empty(), "--target: no address given");
    let channels = futures::future::try_join_all(
        (0..plan.channels).map(|i| client_cli::connect(targets[i % targets.len()], timeout)),
    )
    .await?;
    let map = cluster_map(channels[0].clone()).await;
    let partitions = map.as_ref().map(|m| m.partitions).unwrap_or(1);
    let direct = match &map {
        Some(m) if !args.forward => {
            let nodes = m.nodes.len().max(1);
            direct_clients(m, plan.channels.div_ceil(nodes), timeout).await?
        }
        _ => Vec::new(),
    };
    if let Some(m) = &map {
        eprintln!(
            "cluster: {} partitions on {} nodes; requests go {}",
            m.partitions,
            m.nodes.len(),
            if args.forward {
                "to the targets, which forward"
            } else {
                "straight to each key's owner"
            }
        );
    }
    let clients: Vec<KvClient<Channel>> = (0..args.clients)
        .map(|i| client_cli::kv_client(channels[i / args.clients_per_channel].clone()))
        .collect();

    let mut pool_rng = SmallRng::seed_from_u64(sub_seed(plan.seed, u64::MAX));
    let ctx = Arc::new(Ctx {
        keys: key_format,
        pool: ValuePool::new(&mut pool_rng),
        durability: args.durability.to_pb(),
        consistency: args.consistency.to_pb(),
        partitions,
        direct,
        txn: args.txn,
        slow: args.slow_ms.map(Duration::from_millis),
    });

    let preload_summary = if plan.preload {
        eprintln!("preloading {} keys ...", args.keys);
        let s = preload(&args, &plan, &ctx, &clients, hide_progress).await?;
        eprintln!(
            "preloaded {} keys in {:.2} s ({:.0} keys/s, {:.2} MB/s)",
            s.keys, s.elapsed_s, s.keys_per_s, s.mb_per_s
        );
        Some(s)
    } else {
        None
    };

    let chooser = match args.distribution {
        Distribution::Uniform => KeyChooser::uniform(args.keys),
        Distribution::Zipfian => KeyChooser::zipfian(args.keys, Zipfian::DEFAULT_THETA),
    };
    let mix = Mix {
        read_fraction: args.read_fraction,
        batch_fraction: args.batch_fraction,
        batch_size: args.batch_size,
        delete_fraction: args.delete_fraction,
        scan_length: args.scan_length,
    };

    let shared = Arc::new(Shared::default());
    let shards = args.clients.min(MAX_RECORDER_SHARDS);
    let recorders: Vec<Arc<Mutex<Recorder>>> = (0..shards)
        .map(|_| Arc::new(Mutex::new(Recorder::default())))
        .collect();

    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let generator = OpGenerator::new(
            args.workload,
            chooser.clone(),
            plan.sizes.clone(),
            mix.clone(),
            args.keys,
            i as u64,
            args.clients as u64,
        );
        tasks.spawn(client_loop(
            client,
            generator,
            SmallRng::seed_from_u64(sub_seed(plan.seed, i as u64)),
            Arc::clone(&ctx),
            Arc::clone(&shared),
            Arc::clone(&recorders[i % shards]),
            deadline,
            plan.ops,
        ));
    }

    // Progress: by time when there is a deadline, else by requests (or keys for load).
    let (bar_len, by_time) = match (plan.duration, plan.ops) {
        (Some(d), _) => (d.as_millis() as u64, true),
        (None, Some(n)) => (n, false),
        (None, None) => (args.keys, false),
    };
    let bar = progress_bar(
        hide_progress,
        bar_len,
        "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
    );
    let ticker = {
        let shared = Arc::clone(&shared);
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let ok = shared.ok.load(Ordering::Relaxed);
                let errors = shared.errors.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                if by_time {
                    bar.set_position(started.elapsed().as_millis() as u64);
                } else {
                    bar.set_position(ok + errors);
                }
                bar.set_message(format!(
                    "{} ops, {:.0} ops/s, {:.1} MB/s, {} errors",
                    ok + errors,
                    ok as f64 / secs,
                    shared.bytes.load(Ordering::Relaxed) as f64 / 1e6 / secs,
                    errors
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
    let rss_task = match args.report_rss {
        Some(pid) => {
            rss::check(pid)?;
            Some(tokio::spawn(rss::sample(pid, async move {
                let _ = rss_stopped.await;
            })))
        }
        None => None,
    };
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
    let summary = total.summarize(elapsed);
    let report = Report {
        config: config_json(&args, &plan),
        preload: preload_summary,
        rss,
        summary,
    };

    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", report.summary.table()).context("writing report to stdout")?;
    if let Some(r) = &report.rss {
        write!(stdout, "{}", r.line()).context("writing report to stdout")?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("serializing JSON report")?;
        if path.as_os_str() == "-" {
            writeln!(stdout, "{json}").context("writing JSON report to stdout")?;
        } else {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("writing JSON report to {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    stdout.flush().context("flushing stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(extra);
        TestCli::try_parse_from(argv).expect("parses").args
    }

    #[test]
    fn defaults_follow_the_brief() {
        let a = parse(&[]);
        assert_eq!(a.workload, Workload::Default);
        assert_eq!(a.clients, 16);
        assert_eq!(a.keys, 100_000);
        assert_eq!(a.key_size, 50);
        assert_eq!(a.batch_size, 16);
        let p = plan(&a).expect("valid");
        assert_eq!(p.duration, Some(Duration::from_secs(10)));
        assert!(!p.preload);
        assert_eq!(p.channels, 2);
        assert!(matches!(p.sizes, ValueSizes::Buckets(_)));
    }

    #[test]
    fn limits_and_preload_defaults() {
        let p = plan(&parse(&["--ops", "100"])).expect("valid");
        assert_eq!(p.duration, None);
        assert_eq!(p.ops, Some(100));
        let p = plan(&parse(&["--ops", "100", "--duration", "2.5"])).expect("valid");
        assert_eq!(p.duration, Some(Duration::from_millis(2500)));
        let p = plan(&parse(&["--workload", "load"])).expect("valid");
        assert_eq!(p.duration, None);
        let p = plan(&parse(&["--workload", "read"])).expect("valid");
        assert!(p.preload);
        let p = plan(&parse(&["--workload", "scan", "--no-preload"])).expect("valid");
        assert!(!p.preload);
        let p = plan(&parse(&["--workload", "default", "--preload"])).expect("valid");
        assert!(p.preload);
        let p = plan(&parse(&["--workload", "put", "--clients", "64"])).expect("valid");
        assert!(matches!(p.sizes, ValueSizes::Fixed(1024)));
        assert_eq!(p.channels, 8);
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(plan(&parse(&["--read-fraction", "1.5"])).is_err());
        assert!(plan(&parse(&["--clients", "0"])).is_err());
        assert!(plan(&parse(&["--value-size", "2000000"])).is_err());
        assert!(plan(&parse(&["--key-size", "4"])).is_err());
        assert!(plan(&parse(&["--duration", "0"])).is_err());
    }

    #[test]
    fn builds_requests_with_sizes() {
        let mut rng = SmallRng::seed_from_u64(1);
        let ctx = Ctx {
            keys: KeyFormat::new(50, 1000).expect("fits"),
            pool: ValuePool::new(&mut rng),
            durability: pb::Durability::Buffered as i32,
            consistency: pb::Consistency::Eventual as i32,
            partitions: 1,
            direct: Vec::new(),
            txn: false,
            slow: None,
        };
        let (req, bytes) = build(&ctx, &mut rng, OpPlan::BatchWrite(vec![(1, 10), (2, 20)]));
        assert_eq!(bytes, 50 + 10 + 50 + 20);
        match req {
            Req::BatchWrite(r) => {
                assert_eq!(r.ops.len(), 2);
                assert_eq!(r.durability, pb::Durability::Buffered as i32);
            }
            _ => panic!("wrong request"),
        }
        let (req, bytes) = build(&ctx, &mut rng, OpPlan::Scan(5, 100));
        assert_eq!(bytes, 0);
        match req {
            Req::Scan(r) => {
                assert_eq!(r.limit, 100);
                assert_eq!(r.start, ctx.keys.key(5));
                assert_eq!(r.consistency, pb::Consistency::Eventual as i32);
            }
            _ => panic!("wrong request"),
        }
    }

    #[test]
    fn sub_seeds_differ() {
        assert_ne!(sub_seed(1, 0), sub_seed(1, 1));
        assert_ne!(sub_seed(1, 0), sub_seed(2, 0));
        assert_eq!(sub_seed(7, 3), sub_seed(7, 3));
    }
}
