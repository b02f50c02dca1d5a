//! `strata bench --embedded DIR`: the engine in the bench process (no server, no gRPC), opened
//! the way `strata serve` opens the embedded default: a local-directory store under `DIR`
//! (or `--object-store URL`), the block cache, the engine and its in-process compactor. Also
//! the object-store floor (`--workload store-put|store-get`): raw requests to the same store.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rand::Rng;
use strata_cache::{BlockCache, CacheConfig};
use strata_engine::{Cond, Db, DbOptions, EngineError, Op as EngineOp, WriteOp};
use strata_manifest::{EmbeddedManifestStore, ManifestStore};
use strata_objstore::{open_store, Metered, PutMode, RetryPolicy, S3Settings, Store, StoreConfig};
use tokio::sync::watch;

use super::driver::{Backend, Op, OpError};
use super::stats::Outcome;

/// Flags of the in-process engine (`--embedded`).
#[derive(clap::Args, Debug, Clone)]
pub struct EmbeddedArgs {
    /// Run against Strata's engine opened in this process on a local-directory store under
    /// DIR (no server, no gRPC): the same workloads, table and JSON as `--target`.
    #[arg(long, value_name = "DIR")]
    pub embedded: Option<std::path::PathBuf>,
    /// With --embedded: the object store (`file:///DIR` or `s3://BUCKET/PREFIX`) instead of
    /// DIR/objects.
    #[arg(long)]
    pub object_store: Option<String>,
    /// With --embedded: endpoint of an S3-compatible server (default `AWS_ENDPOINT_URL`).
    #[arg(long, env = "STRATA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// With --embedded: memory tier of the block cache, MiB (as `strata serve`).
    #[arg(long, default_value_t = 256)]
    pub cache_memory_mb: u64,
    /// With --embedded: disk tier of the block cache under DIR/cache, MiB (0 = none).
    #[arg(long, default_value_t = 0)]
    pub cache_disk_mb: u64,
    /// With --embedded: memtable size before a flush, MiB.
    #[arg(long, default_value_t = 64)]
    pub memtable_mb: u64,
    /// With --embedded: budget of all memtables together, MiB.
    #[arg(long, default_value_t = 256)]
    pub write_buffer_mb: u64,
    /// With --embedded: WAL segment PUTs in flight at once (as `strata serve`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub wal_pipeline_depth: u64,
    /// With --embedded: KiB a further WAL segment needs while others are in flight.
    #[arg(long, default_value_t = 32)]
    pub wal_pipeline_min_kb: usize,
    /// With --embedded: open a store that already holds a Strata keyspace (a previous bench
    /// run's). Without it the bench refuses one, so that it never takes over a server's data
    /// (opening fences the running writer) or writes bench keys into a real keyspace.
    #[arg(long)]
    pub embedded_reuse: bool,
    /// With --embedded: run the compactor in this process, as `strata serve` does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub compaction: bool,
    #[command(flatten)]
    pub compaction_opts: crate::compaction_args::CompactionArgs,
}

/// An engine opened in this process, with its compactor.
pub struct EmbeddedEngine {
    pub db: Db,
    /// Request counters of the store (every request the engine and compactor make).
    pub meter: Metered,
    cache: BlockCache,
    stop: watch::Sender<bool>,
    compactor: Option<tokio::task::JoinHandle<()>>,
}

/// The store the flags name, metered.
fn store(args: &EmbeddedArgs, dir: &Path) -> anyhow::Result<(Arc<dyn Store>, Metered, String)> {
    let url = args.object_store.clone().unwrap_or_else(|| {
        format!(
            "file://{}",
            crate::serve::absolute(&dir.join("objects")).display()
        )
    });
    let mut s3 = S3Settings::from_env();
    if let Some(ep) = &args.s3_endpoint {
        s3.endpoint = Some(ep.clone());
    }
    let (store, meter) = open_store(&StoreConfig {
        url: url.clone(),
        s3,
        retry: RetryPolicy::default(),
    })
    .with_context(|| format!("opening object store {url}"))?;
    Ok((store, meter, url))
}

/// Refuses a store that already holds a keyspace unless `--embedded-reuse`: the bench opens
/// the engine as a writer, which would fence a server running on it.
async fn refuse_existing(
    args: &EmbeddedArgs,
    store: &Arc<dyn Store>,
    url: &str,
) -> anyhow::Result<()> {
    if args.embedded_reuse {
        return Ok(());
    }
    match store.head(strata_manifest::layout::STORE_ID_PATH).await {
        Ok(_) => anyhow::bail!(
            "{url} already holds a Strata keyspace: the bench would fence any server running on \
             it and write its keys into it. Point --embedded at a new directory (or \
             --object-store at a new prefix), or pass --embedded-reuse for a previous bench \
             run's store"
        ),
        Err(strata_objstore::StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking whether {url} is in use")),
    }
}

impl EmbeddedEngine {
    /// Opens (or recovers) the engine under `dir`.
    pub async fn open(args: &EmbeddedArgs, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (store, meter, url) = store(args, dir)?;
        refuse_existing(args, &store, &url).await?;
        args.compaction_opts.check(Some(&url))?;
        let mut s3 = S3Settings::from_env();
        if let Some(ep) = &args.s3_endpoint {
            s3.endpoint = Some(ep.clone());
        }
        let roots = strata_objstore::Roots::new(s3, RetryPolicy::default());
        let cache = BlockCache::open(CacheConfig {
            memory_bytes: (args.cache_memory_mb as usize) << 20,
            disk_dir: (args.cache_disk_mb > 0).then(|| dir.join("cache")),
            disk_bytes: args.cache_disk_mb << 20,
        })
        .await
        .context("opening block cache")?;
        let manifests: Arc<dyn ManifestStore> = Arc::new(EmbeddedManifestStore::new(store.clone()));
        let opts = DbOptions {
            memtable_bytes: args.memtable_mb << 20,
            write_buffer_bytes: args.write_buffer_mb << 20,
            wal_pipeline_depth: args.wal_pipeline_depth as usize,
            wal_pipeline_min_bytes: args.wal_pipeline_min_kb << 10,
            roots: roots.clone(),
            ..Default::default()
        };
        let (db, _report) = Db::open(opts, store.clone(), manifests.clone(), cache.clone())
            .await
            .context("opening the engine")?;
        let (stop, stop_rx) = watch::channel(false);
        let compactor = args.compaction.then(|| {
            let c = crate::serve::embedded_compactor(
                &db,
                store.clone(),
                manifests,
                &roots,
                &args.compaction_opts,
                &url,
            );
            tokio::spawn(c.run(stop_rx))
        });
        Ok(Self {
            db,
            meter,
            cache,
            stop,
            compactor,
        })
    }

    /// Makes every write durable, flushes memtables, stops the compactor and the cache.
    pub async fn close(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.db
            .close(Duration::from_secs(30))
            .await
            .context("closing the engine")?;
        if let Some(t) = self.compactor {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        self.cache
            .close()
            .await
            .context("closing the block cache")?;
        Ok(())
    }
}

/// Engine errors as the gRPC layer would answer them (same code names in the report).
fn op_error(e: EngineError) -> OpError {
    let status = strata_compute::status(e);
    OpError {
        code: crate::client_cli::code_name(status.code()),
        retryable: strata_compute::is_retry_safe(&status)
            || status.code() == tonic::Code::ResourceExhausted,
        retry_after: None,
        message: format!(
            "{}: {}",
            crate::client_cli::code_name(status.code()),
            status.message()
        ),
    }
}

fn put(key: Bytes, value: Bytes) -> WriteOp {
    WriteOp {
        key,
        op: EngineOp::Put { value, ttl_ms: 0 },
        cond: Cond::None,
    }
}

/// The engine as a bench backend.
pub struct EngineBackend {
    pub db: Db,
    pub durable: bool,
}

impl EngineBackend {
    async fn get(&self, key: Bytes) -> Result<Outcome, EngineError> {
        let found = self.db.get(&key).await?;
        Ok(Outcome {
            items: 1,
            not_found: u64::from(found.is_none()),
            bytes_read: found.map_or(0, |(v, _)| (key.len() + v.len()) as u64),
            ..Outcome::default()
        })
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<Outcome, EngineError> {
        let n = ops.len() as u64;
        self.db.write(ops, self.durable).await?;
        Ok(Outcome {
            items: n,
            ..Outcome::default()
        })
    }

    async fn run(&self, op: Op) -> Result<Outcome, EngineError> {
        match op {
            Op::Get(key) => self.get(key).await,
            Op::Put(k, v) | Op::Insert(k, v) => self.write(vec![put(k, v)]).await,
            Op::ReadModifyWrite(k, v) => {
                let read = self.get(k.clone()).await?;
                self.write(vec![put(k, v)]).await?;
                Ok(read)
            }
            Op::BatchGet(keys) => {
                let found = self.db.multi_get(&keys).await?;
                let mut o = Outcome {
                    items: keys.len() as u64,
                    ..Outcome::default()
                };
                for (k, f) in keys.iter().zip(found) {
                    match f {
                        Some((v, _)) => o.bytes_read += (k.len() + v.len()) as u64,
                        None => o.not_found += 1,
                    }
                }
                Ok(o)
            }
            Op::BatchWrite(items) => {
                self.write(items.into_iter().map(|(k, v)| put(k, v)).collect())
                    .await
            }
            Op::Delete(key) => {
                let r = self
                    .db
                    .write(
                        vec![WriteOp {
                            key,
                            op: EngineOp::Delete,
                            cond: Cond::None,
                        }],
                        self.durable,
                    )
                    .await?;
                Ok(Outcome {
                    items: 1,
                    not_found: u64::from(r.first().is_some_and(|o| !o.found)),
                    ..Outcome::default()
                })
            }
            Op::Scan(start, limit) => {
                let mut scanner = self.db.scan_unlocked(start, None).await?;
                let mut o = Outcome::default();
                let mut left = limit as usize;
                while left > 0 && !scanner.is_done() {
                    for (k, v, _) in scanner.next_chunk(left).await? {
                        o.items += 1;
                        o.bytes_read += (k.len() + v.len()) as u64;
                        left = left.saturating_sub(1);
                    }
                }
                Ok(o)
            }
            Op::Floor(_) => Err(EngineError::InvalidArgument(
                "floor requests go to the store backend".into(),
            )),
        }
    }
}

impl Backend for EngineBackend {
    async fn execute(&self, _client: usize, op: Op) -> Result<Outcome, OpError> {
        self.run(op).await.map_err(op_error)
    }

    async fn settle(&self) -> anyhow::Result<()> {
        self.db.flush().await.context("flushing memtables")
    }
}

/// Where the store floors keep their objects.
const FLOOR_PREFIX: &str = "bench-floor";
/// Size of the object the GET floor reads ranges of.
const FLOOR_OBJECT_BYTES: usize = 1 << 20;

/// Raw object-store requests: the floor under every store-backed figure. Objects go under a
/// prefix of their own per run (so runs never collide) and are deleted by [`StoreFloor::clean`].
pub struct StoreFloor {
    store: Arc<dyn Store>,
    get: bool,
    next: AtomicU64,
    payload: Bytes,
    prefix: String,
}

impl StoreFloor {
    /// A PUT floor (`get` false) or a ranged-GET floor over one 1 MiB object written now.
    pub async fn new(store: Arc<dyn Store>, get: bool) -> anyhow::Result<Self> {
        let mut data = vec![0u8; FLOOR_OBJECT_BYTES];
        rand::rng().fill(&mut data[..]);
        let payload = Bytes::from(data);
        let prefix = format!("{FLOOR_PREFIX}/{:016x}", rand::rng().random::<u64>());
        if get {
            store
                .put(
                    &format!("{prefix}/get-object"),
                    payload.clone(),
                    PutMode::Overwrite,
                )
                .await
                .context("writing the object the GET floor reads")?;
        }
        Ok(Self {
            store,
            get,
            next: AtomicU64::new(0),
            payload,
            prefix,
        })
    }

    /// Deletes what the run wrote.
    pub async fn clean(&self) -> anyhow::Result<()> {
        use futures::StreamExt;
        let objects = self
            .store
            .list(&format!("{}/", self.prefix))
            .await
            .context("listing the floor's objects")?;
        let deletes = futures::stream::iter(objects)
            .map(|o| async move { self.store.delete(&o.path).await })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        for d in deletes {
            d.context("deleting a floor object")?;
        }
        Ok(())
    }
}

impl Backend for StoreFloor {
    async fn execute(&self, _client: usize, op: Op) -> Result<Outcome, OpError> {
        let len = match op {
            Op::Floor(len) => len.clamp(1, FLOOR_OBJECT_BYTES),
            other => {
                return Err(OpError {
                    code: "INVALID".into(),
                    message: format!("the store floor runs floor requests only, not {other:?}"),
                    retryable: false,
                    retry_after: None,
                })
            }
        };
        let err = |e: strata_objstore::StoreError| OpError {
            code: "STORE".into(),
            message: format!("{e:#}"),
            retryable: false,
            retry_after: None,
        };
        if self.get {
            let off = rand::rng().random_range(0..=(FLOOR_OBJECT_BYTES - len)) as u64;
            let got = self
                .store
                .get_range(
                    &format!("{}/get-object", self.prefix),
                    off..off + len as u64,
                )
                .await
                .map_err(err)?;
            Ok(Outcome {
                items: 1,
                bytes_read: got.len() as u64,
                ..Outcome::default()
            })
        } else {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            self.store
                .put(
                    &format!("{}/put/{n:012}", self.prefix),
                    self.payload.slice(0..len),
                    PutMode::Create,
                )
                .await
                .map_err(err)?;
            Ok(Outcome {
                items: 1,
                bytes_written: len as u64,
                ..Outcome::default()
            })
        }
    }
}

/// Opens just the store under `dir` (floors need no engine).
pub async fn open_store_only(
    args: &EmbeddedArgs,
    dir: &Path,
) -> anyhow::Result<(Arc<dyn Store>, Metered)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (store, meter, url) = store(args, dir)?;
    refuse_existing(args, &store, &url).await?;
    Ok((store, meter))
}
