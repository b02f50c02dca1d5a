//! `strata-bench-peers slatedb`: SlateDB in this process, driven by the very workload
//! generator, load loop and report of `strata bench` (its `src/bench/{workload, stats, rss,
//! driver}.rs`, included by path), so `infra/bench-compare.sh` compares like with like: same
//! keys, values, distributions, clients, histograms and JSON.
//!
//! Durable writes wait for SlateDB's WAL flush (`WriteHandle::await_durable`), as Strata's
//! durable writes wait for their WAL segment. On a local directory SlateDB goes through
//! object_store's `LocalFileSystem`, which does not fsync; Strata's local store does.

#[allow(dead_code)]
#[path = "../../../src/bench/driver.rs"]
mod driver;
#[allow(dead_code)]
#[path = "../../../src/bench/rss.rs"]
mod rss;
#[allow(dead_code)]
#[path = "../../../src/bench/stats.rs"]
mod stats;
#[allow(dead_code)]
#[path = "../../../src/bench/workload.rs"]
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slatedb::object_store::ObjectStore;
use slatedb::{Db, Settings, WriteBatch};

use driver::{Backend, Op, OpError, RunSpec};
use stats::{Outcome, Report};
use workload::{KeyChooser, KeyFormat, Mix, ValuePool, ValueSizes, Workload, Zipfian};

#[derive(Parser, Debug)]
#[command(about = "Peers of strata bench: SlateDB in-process on the same store")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// SlateDB 0.18 in this process.
    Slatedb(Args),
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Where the database lives: `file:///DIR` or `s3://BUCKET/PREFIX` (endpoint and
    /// credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
    #[arg(long)]
    store: String,
    /// SlateDB's WAL flush interval, ms (its default is 100; 1 is its lowest-latency setting).
    #[arg(long, default_value_t = 100)]
    flush_ms: u64,
    /// Block cache (foyer, in memory), MiB: the same budget as `strata bench --embedded`.
    #[arg(long, default_value_t = 256)]
    cache_memory_mb: u64,
    #[arg(long, value_enum, default_value_t = Workload::Default)]
    workload: Workload,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long)]
    ops: Option<u64>,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 50)]
    key_size: usize,
    #[arg(long)]
    value_size: Option<usize>,
    /// uniform or zipfian (YCSB workloads use their own).
    #[arg(long, default_value = "uniform")]
    distribution: String,
    #[arg(long, default_value_t = 0.7)]
    read_fraction: f64,
    #[arg(long, default_value_t = 0.2)]
    batch_fraction: f64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 100)]
    scan_length: u32,
    /// durable (wait for the WAL flush) or buffered.
    #[arg(long, default_value = "durable")]
    durability: String,
    #[arg(long, overrides_with = "no_preload")]
    preload: bool,
    #[arg(long, overrides_with = "preload")]
    no_preload: bool,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    no_progress: bool,
}

fn object_store(url: &str) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    if let Some(dir) = url.strip_prefix("file://") {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        let fs = slatedb::object_store::local::LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("opening {dir}"))?;
        return Ok((Arc::new(fs), "db".to_string()));
    }
    let Some(rest) = url.strip_prefix("s3://") else {
        bail!("--store {url}: expected file:///DIR or s3://BUCKET/PREFIX");
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, "db"));
    let env = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let endpoint = env("AWS_ENDPOINT_URL")?;
    let s3 = slatedb::object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(&endpoint)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_virtual_hosted_style_request(false)
        .with_access_key_id(env("AWS_ACCESS_KEY_ID")?)
        .with_secret_access_key(env("AWS_SECRET_ACCESS_KEY")?)
        .with_region(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
        .build()
        .with_context(|| format!("opening s3://{bucket} at {endpoint}"))?;
    Ok((Arc::new(s3), prefix.trim_matches('/').to_string()))
}

struct Slate {
    db: Db,
    durable: bool,
}

fn err(e: slatedb::Error) -> OpError {
    OpError {
        code: format!("{:?}", e.kind()).to_uppercase(),
        message: format!("{e}"),
        retryable: false,
        retry_after: None,
    }
}

impl Slate {
    async fn get(&self, key: &Bytes) -> Result<Outcome, slatedb::Error> {
        let v = self.db.get(key).await?;
        Ok(Outcome {
            items: 1,
            not_found: u64::from(v.is_none()),
            bytes_read: v.map_or(0, |v| (key.len() + v.len()) as u64),
            ..Outcome::default()
        })
    }

    async fn write(&self, batch: WriteBatch, n: u64) -> Result<Outcome, slatedb::Error> {
        let handle = self.db.write(batch).await?;
        if self.durable {
            handle.await_durable().await?;
        }
        Ok(Outcome {
            items: n,
            ..Outcome::default()
        })
    }

    async fn put(&self, k: Bytes, v: Bytes) -> Result<Outcome, slatedb::Error> {
        let mut b = WriteBatch::new();
        b.put_bytes(k, v);
        self.write(b, 1).await
    }

    async fn run(&self, op: Op) -> Result<Outcome, slatedb::Error> {
        match op {
            Op::Get(k) => self.get(&k).await,
            Op::Put(k, v) | Op::Insert(k, v) => self.put(k, v).await,
            Op::ReadModifyWrite(k, v) => {
                let read = self.get(&k).await?;
                self.put(k, v).await?;
                Ok(read)
            }
            Op::BatchGet(keys) => {
                // SlateDB has no multi-get: the keys are read concurrently.
                let found = futures::future::join_all(keys.iter().map(|k| self.db.get(k))).await;
                let mut o = Outcome {
                    items: keys.len() as u64,
                    ..Outcome::default()
                };
                for (k, f) in keys.iter().zip(found) {
                    match f? {
                        Some(v) => o.bytes_read += (k.len() + v.len()) as u64,
                        None => o.not_found += 1,
                    }
                }
                Ok(o)
            }
            Op::BatchWrite(items) => {
                let n = items.len() as u64;
                let mut b = WriteBatch::new();
                for (k, v) in items {
                    b.put_bytes(k, v);
                }
                self.write(b, n).await
            }
            Op::Delete(k) => {
                let mut b = WriteBatch::new();
                b.delete(&k);
                self.write(b, 1).await
            }
            Op::Scan(start, limit) => {
                let mut it = self.db.scan(start..).await?;
                let mut o = Outcome::default();
                while o.items < u64::from(limit) {
                    let Some(kv) = it.next().await? else { break };
                    o.items += 1;
                    o.bytes_read += (kv.key.len() + kv.value.len()) as u64;
                }
                Ok(o)
            }
            Op::Floor(_) => Ok(Outcome::default()),
        }
    }
}

impl Backend for Slate {
    async fn execute(&self, _client: usize, op: Op) -> Result<Outcome, OpError> {
        self.run(op).await.map_err(err)
    }

    async fn settle(&self) -> anyhow::Result<()> {
        self.db
            .flush_with_options(slatedb::config::FlushOptions {
                flush_type: slatedb::config::FlushType::MemTable,
            })
            .await
            .context("flushing SlateDB's memtable")
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.workload.is_floor(),
        "floor workloads run on strata bench, not on a peer"
    );
    anyhow::ensure!(
        matches!(a.distribution.as_str(), "uniform" | "zipfian"),
        "--distribution {}: expected uniform or zipfian",
        a.distribution
    );
    anyhow::ensure!(
        matches!(a.durability.as_str(), "durable" | "buffered"),
        "--durability {}: expected durable or buffered",
        a.durability
    );
    let zipfian = a.distribution == "zipfian" || a.workload.is_ycsb();
    let sizes = a.workload.value_sizes(a.value_size);
    let duration = match (a.duration, a.ops) {
        (Some(d), _) => Some(Duration::from_secs_f64(d)),
        (None, Some(_)) => None,
        (None, None) if a.workload == Workload::Load => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let preload = if a.preload {
        true
    } else if a.no_preload {
        false
    } else {
        a.workload.preloads_by_default()
    };
    let seed = a.seed.unwrap_or_else(|| rand::rng().random());
    let spec = RunSpec {
        workload: a.workload,
        clients: a.clients.max(1),
        duration,
        ops: a.ops,
        keyspace: a.keys,
        keys: KeyFormat::new(a.key_size, a.keys)?,
        chooser: if zipfian {
            KeyChooser::zipfian(a.keys, Zipfian::DEFAULT_THETA)
        } else {
            KeyChooser::uniform(a.keys)
        },
        sizes: sizes.clone(),
        mix: Mix {
            read_fraction: a.read_fraction,
            batch_fraction: a.batch_fraction,
            batch_size: a.batch_size,
            delete_fraction: 0.0,
            scan_length: a.scan_length,
        },
        seed,
        slow: None,
        hide_progress: driver::hide_progress(a.no_progress),
        rss_pid: Some(std::process::id()),
    };
    eprintln!(
        "slatedb: workload={:?} store={} flush={} ms clients={} keys={} values={} seed={seed}",
        a.workload,
        a.store,
        a.flush_ms,
        a.clients,
        a.keys,
        sizes.describe()
    );

    let (store, path) = object_store(&a.store)?;
    let settings = Settings {
        flush_interval: Some(Duration::from_millis(a.flush_ms.max(1))),
        ..Settings::default()
    };
    let cache = slatedb::db_cache::foyer::FoyerCache::new_with_opts(
        slatedb::db_cache::foyer::FoyerCacheOptions {
            max_capacity: a.cache_memory_mb << 20,
            ..Default::default()
        },
    );
    let db = Db::builder(path, store)
        .with_settings(settings)
        .with_db_cache(Arc::new(cache), 0)
        .build()
        .await
        .context("opening SlateDB")?;
    let backend = Arc::new(Slate {
        db,
        durable: a.durability != "buffered",
    });

    let mut pool_rng = SmallRng::seed_from_u64(driver::sub_seed(seed, u64::MAX));
    let pool = Arc::new(ValuePool::new(&mut pool_rng));
    let preload = if preload {
        let s = driver::preload(&backend, &spec, &pool, spec.clients).await?;
        eprintln!("preloaded {} keys in {:.2} s", s.keys, s.elapsed_s);
        Some(s)
    } else {
        None
    };
    let result = driver::measure(&backend, &spec, &pool).await;
    let closed = backend.db.close().await.context("closing SlateDB");
    let run = result?;
    closed?;
    let report = Report {
        config: serde_json::json!({
            "target": format!("slatedb-{}ms", a.flush_ms),
            "store": a.store,
            "flush_ms": a.flush_ms,
            "workload": a.workload,
            "clients": a.clients,
            "duration_s": duration.map(|d| d.as_secs_f64()),
            "keys": a.keys,
            "key_size": a.key_size,
            "value_size": match sizes {
                ValueSizes::Fixed(n) => serde_json::json!(n),
                ValueSizes::Buckets(_) => serde_json::json!("scale-sheet"),
            },
            "distribution": if a.workload == Workload::YcsbD { "latest" } else if zipfian { "zipfian" } else { "uniform" },
            "durability": a.durability,
            "preload": preload.is_some(),
            "seed": seed,
        }),
        preload,
        rss: run.rss,
        timeline: run.timeline,
        store_requests: None,
        summary: run.summary,
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", report.summary.table()).context("writing the table to stdout")?;
    if let Some(r) = &report.rss {
        write!(out, "{}", r.line()).context("writing the table to stdout")?;
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.cmd {
        Cmd::Slatedb(a) => rt.block_on(run(a)),
    }
}
