//! `strata bench`: drives a server (`--target`, over gRPC) or Strata's engine in this process
//! (`--embedded DIR`) with concurrent closed-loop clients and reports throughput and latency
//! percentiles per operation type, as a table and as JSON.
//!
//! The pure parts (key and value generation, the operation mix, YCSB, zipfian keys,
//! histogram summaries and the JSON shape) live in `bench/workload.rs` and `bench/stats.rs`;
//! the load loop every target shares in `bench/driver.rs` (also built into the SlateDB peer
//! of `infra/bench-compare`); the targets in `bench/grpc.rs` and `bench/embedded.rs`. This
//! file holds the flags and puts a run together.

mod driver;
mod embedded;
mod grpc;
mod rss;
mod stats;
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_compute::pb;

use crate::client_cli::{self, ConsistencyArg, DEFAULT_TARGET};
use driver::{Backend, RunSpec};
use stats::Report;
use workload::{
    KeyChooser, KeyFormat, Mix, ValuePool, ValueSizes, Workload, Zipfian, MAX_VALUE_BYTES,
};

pub use embedded::EmbeddedArgs;

/// Duration of the measured phase when neither --duration nor --ops is given.
const DEFAULT_DURATION_SECS: f64 = 10.0;

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
    #[command(flatten)]
    pub engine: EmbeddedArgs,
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
    /// Key distribution (YCSB workloads use their own: zipfian, latest for D).
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
    /// Entries per Scan (scan workload; the largest scan length of YCSB E).
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
    #[command(flatten)]
    pub auth: crate::security::ClientAuthArgs,
    /// On a cluster, send each measured BatchWrite whole, so one whose keys span partitions
    /// commits as a cross-partition transaction (by default it is split per partition).
    #[arg(long)]
    pub txn: bool,
    /// Sample this process's resident memory and CPU time (the server's pid, on this
    /// machine) every 250 ms during the run; the table shows its peak, the JSON the whole
    /// curve. With --embedded, the bench process itself is sampled unless a PID is given.
    /// Resets the process's peak-RSS counter (VmHWM) at the start, so the peak is the run's.
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
    let embedded = args.engine.embedded.is_some();
    match args.workload {
        Workload::Ping if embedded => {
            bail!("--workload ping measures the gRPC stack: use it with --target, not --embedded")
        }
        Workload::StorePut | Workload::StoreGet if !embedded => {
            bail!(
            "--workload {} measures the object store from this process: use it with --embedded DIR",
            if args.workload == Workload::StorePut { "store-put" } else { "store-get" }
        )
        }
        _ => {}
    }
    if !embedded && args.engine.object_store.is_some() {
        bail!("--object-store applies to --embedded (a server takes its own --object-store)");
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
        args.workload.preloads_by_default()
    };
    let sizes = args.workload.value_sizes(args.value_size);
    Ok(Plan {
        duration,
        ops: args.ops,
        preload: preload && !args.workload.is_floor(),
        sizes,
        seed: args.seed.unwrap_or_else(|| rand::rng().random()),
        channels: args.clients.div_ceil(args.clients_per_channel),
    })
}

fn config_json(args: &BenchArgs, plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "target": if args.engine.embedded.is_some() { "embedded" } else { args.target.as_str() },
        "embedded_dir": args.engine.embedded,
        "object_store": args.engine.object_store,
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
        "distribution": distribution_name(args),
        "zipfian_theta": (args.distribution == Distribution::Zipfian || args.workload.is_ycsb()).then_some(Zipfian::DEFAULT_THETA),
        "read_fraction": args.read_fraction,
        "batch_fraction": args.batch_fraction,
        "batch_size": args.batch_size,
        "delete_fraction": args.delete_fraction,
        "scan_length": args.scan_length,
        "durability": args.durability,
        "consistency": args.consistency,
        "preload": plan.preload,
        "seed": plan.seed,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// The key distribution a run uses (YCSB workloads fix theirs).
fn distribution_name(args: &BenchArgs) -> &'static str {
    match (args.workload, args.distribution) {
        (Workload::YcsbD, _) => "latest",
        (w, _) if w.is_ycsb() => "zipfian",
        (_, Distribution::Uniform) => "uniform",
        (_, Distribution::Zipfian) => "zipfian",
    }
}

/// The run's settings for the driver.
fn run_spec(args: &BenchArgs, plan: &Plan, rss_pid: Option<u32>) -> anyhow::Result<RunSpec> {
    let zipfian = args.distribution == Distribution::Zipfian || args.workload.is_ycsb();
    Ok(RunSpec {
        workload: args.workload,
        clients: args.clients,
        duration: plan.duration,
        ops: plan.ops,
        keyspace: args.keys,
        keys: KeyFormat::new(args.key_size, args.keys)?,
        chooser: if zipfian {
            KeyChooser::zipfian(args.keys, Zipfian::DEFAULT_THETA)
        } else {
            KeyChooser::uniform(args.keys)
        },
        sizes: plan.sizes.clone(),
        mix: Mix {
            read_fraction: args.read_fraction,
            batch_fraction: args.batch_fraction,
            batch_size: args.batch_size,
            delete_fraction: args.delete_fraction,
            scan_length: args.scan_length,
        },
        seed: plan.seed,
        slow: args.slow_ms.map(Duration::from_millis),
        hide_progress: driver::hide_progress(args.no_progress),
        rss_pid,
    })
}

/// Preloads (when planned), measures and writes the report.
async fn drive<B: Backend>(
    args: &BenchArgs,
    plan: &Plan,
    spec: &RunSpec,
    backend: &Arc<B>,
    meter: Option<&strata_objstore::Metered>,
) -> anyhow::Result<()> {
    let mut pool_rng = SmallRng::seed_from_u64(driver::sub_seed(plan.seed, u64::MAX));
    let pool = Arc::new(ValuePool::new(&mut pool_rng));
    let preload = if plan.preload {
        eprintln!("preloading {} keys ...", args.keys);
        let s = driver::preload(backend, spec, &pool, args.clients).await?;
        eprintln!(
            "preloaded {} keys in {:.2} s ({:.0} keys/s, {:.2} MB/s)",
            s.keys, s.elapsed_s, s.keys_per_s, s.mb_per_s
        );
        Some(s)
    } else {
        None
    };
    let before = meter.map(|m| m.counts());
    let run = driver::measure(backend, spec, &pool).await?;
    let store_requests = meter.zip(before).map(|(m, b)| {
        let a = m.counts();
        let ops = run.summary.total.ops.max(1) as f64;
        let requests = (a.puts - b.puts)
            + (a.gets - b.gets)
            + (a.heads - b.heads)
            + (a.lists - b.lists)
            + (a.deletes - b.deletes);
        serde_json::json!({
            "puts": a.puts - b.puts,
            "gets": a.gets - b.gets,
            "heads": a.heads - b.heads,
            "lists": a.lists - b.lists,
            "deletes": a.deletes - b.deletes,
            "errors": a.errors - b.errors,
            "bytes_put": a.bytes_put - b.bytes_put,
            "bytes_got": a.bytes_got - b.bytes_got,
            "requests_per_op": requests as f64 / ops,
            "gets_per_op": (a.gets - b.gets) as f64 / ops,
            "puts_per_op": (a.puts - b.puts) as f64 / ops,
        })
    });
    let report = Report {
        config: config_json(args, plan),
        preload,
        rss: run.rss,
        timeline: run.timeline,
        store_requests,
        summary: run.summary,
    };
    write_report(args, &report)
}

fn write_report(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", report.summary.table()).context("writing report to stdout")?;
    if let Some(r) = &report.rss {
        write!(stdout, "{}", r.line()).context("writing report to stdout")?;
    }
    if let Some(s) = &report.store_requests {
        writeln!(
            stdout,
            "object store: {} PUTs, {} GETs ({:.3} requests per operation)",
            s["puts"],
            s["gets"],
            s["requests_per_op"].as_f64().unwrap_or(0.0)
        )
        .context("writing report to stdout")?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(report).context("serializing JSON report")?;
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

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    eprintln!(
        "strata bench: workload={:?} target={} clients={} keys={} values={} distribution={} seed={}",
        args.workload,
        match &args.engine.embedded {
            Some(d) => format!("embedded:{}", d.display()),
            None => args.target.clone(),
        },
        args.clients,
        args.keys,
        plan.sizes.describe(),
        distribution_name(&args),
        plan.seed
    );
    match args.engine.embedded.clone() {
        Some(dir) => run_embedded(&args, &plan, &dir).await,
        None => run_grpc(&args, &plan).await,
    }
}

async fn run_embedded(args: &BenchArgs, plan: &Plan, dir: &std::path::Path) -> anyhow::Result<()> {
    let pid = Some(args.report_rss.unwrap_or_else(std::process::id));
    let spec = run_spec(args, plan, pid)?;
    if matches!(args.workload, Workload::StorePut | Workload::StoreGet) {
        let (store, meter) = embedded::open_store_only(&args.engine, dir).await?;
        let floor =
            Arc::new(embedded::StoreFloor::new(store, args.workload == Workload::StoreGet).await?);
        let result = drive(args, plan, &spec, &floor, Some(&meter)).await;
        let cleaned = floor.clean().await;
        return result.and(cleaned);
    }
    let engine = embedded::EmbeddedEngine::open(&args.engine, dir).await?;
    let backend = Arc::new(embedded::EngineBackend {
        db: engine.db.clone(),
        durable: args.durability == DurabilityArg::Durable,
    });
    let result = drive(args, plan, &spec, &backend, Some(&engine.meter)).await;
    drop(backend);
    let closed = engine.close().await;
    result.and(closed)
}

async fn run_grpc(args: &BenchArgs, plan: &Plan) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let targets: Vec<&str> = args
        .target
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    anyhow::ensure!(!targets.is_empty(), "--target: no address given");
    let creds = args.auth.creds()?;
    let creds = &creds;
    let channels = futures::future::try_join_all(
        (0..plan.channels).map(|i| client_cli::connect(targets[i % targets.len()], timeout, creds)),
    )
    .await?;
    let map = grpc::cluster_map(channels[0].clone()).await;
    let partitions = map.as_ref().map(|m| m.partitions).unwrap_or(1);
    let direct = match &map {
        Some(m) if !args.forward => {
            let nodes = m.nodes.len().max(1);
            grpc::direct_clients(m, plan.channels.div_ceil(nodes), timeout, creds).await?
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
    let per_client = |i: usize| channels[i / args.clients_per_channel].clone();
    let backend = Arc::new(grpc::Grpc {
        clients: (0..args.clients)
            .map(|i| client_cli::kv_client(per_client(i)))
            .collect(),
        health: (0..args.clients)
            .map(|i| tonic_health::pb::health_client::HealthClient::new(per_client(i)))
            .collect(),
        durability: args.durability.to_pb(),
        consistency: args.consistency.to_pb(),
        partitions,
        direct,
        key_prefix: map
            .as_ref()
            .map(|m| m.key_prefix.clone())
            .unwrap_or_default(),
        txn: args.txn,
    });
    let spec = run_spec(args, plan, args.report_rss)?;
    drive(args, plan, &spec, &backend, None).await
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
    fn ycsb_and_floor_flags() {
        let p = plan(&parse(&["--workload", "ycsb-a"])).expect("valid");
        assert!(p.preload);
        assert!(matches!(p.sizes, ValueSizes::Fixed(1024)));
        let a = parse(&["--workload", "ycsb-d"]);
        assert_eq!(distribution_name(&a), "latest");
        assert!(plan(&parse(&["--workload", "ping"])).is_ok());
        assert!(plan(&parse(&["--workload", "ping", "--embedded", "/tmp/x"])).is_err());
        assert!(plan(&parse(&["--workload", "store-put"])).is_err());
        let p = plan(&parse(&["--workload", "store-get", "--embedded", "/tmp/x"])).expect("valid");
        assert!(!p.preload);
        assert!(plan(&parse(&["--object-store", "file:///tmp/x"])).is_err());
    }
}
