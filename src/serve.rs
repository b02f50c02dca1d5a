//! `strata serve`: a single node on the embedded default (local directory) or any
//! S3-compatible store.

use crate::metrics_http::StatsSource;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strata_cache::{BlockCache, CacheConfig};
use strata_compactor::{CompactionOptions, Compactor};
use strata_compute::cluster::{ClusterNode, ClusterOptions};
use strata_compute::connections::{self, ConnectionLimits, Incoming};
use strata_compute::server::auth::AuthLayer;
use strata_compute::server::{AdminService, KvService};
use strata_compute::TxnService;
use strata_compute::{Db, DbOptions, DbStats, EngineMetrics};
use strata_manifest::etcd::Etcd;
use strata_manifest::{EmbeddedManifestStore, ManifestStore};
use strata_objstore::{open_store, Metered, RetryPolicy, S3Settings, StoreConfig};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory for local state: the object store on the embedded default, and the cache.
    #[arg(long, default_value = "./strata-data", env = "STRATA_DATA_DIR")]
    pub data_dir: PathBuf,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50051", env = "STRATA_LISTEN")]
    pub listen: SocketAddr,
    /// Object store URL: `file:///DIR`, or `s3://BUCKET/PREFIX` (region and credentials from
    /// the usual AWS environment variables). Default: `DATA_DIR/objects`.
    #[arg(long, env = "STRATA_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Endpoint of an S3-compatible server (default: `AWS_ENDPOINT_URL`). Path-style
    /// addressing is used, and plain HTTP when the URL says `http`.
    #[arg(long, env = "STRATA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Prometheus metrics listen address (text format at `/metrics`); off when absent.
    #[arg(long, env = "STRATA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Memory tier of the block cache, MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_memory_mb: u64,
    /// Disk tier of the block cache under DATA_DIR/cache, MiB (0 = none).
    #[arg(long, default_value_t = 1024)]
    pub cache_disk_mb: u64,
    /// Memtable size before a flush, MiB.
    #[arg(long, default_value_t = 64)]
    pub memtable_mb: u64,
    /// Budget of all memtables together, MiB; writes wait above it.
    #[arg(long, default_value_t = 256)]
    pub write_buffer_mb: u64,
    /// WAL segment PUTs a partition keeps in flight at once (the pipelined group commit,
    /// 1..=4; acknowledgements stay in segment order). 1 puts one segment at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub wal_pipeline_depth: u64,
    /// A further WAL segment is put while others are in flight only once its group holds
    /// this many KiB (a lone segment is always put at once).
    #[arg(long, default_value_t = 32)]
    pub wal_pipeline_min_kb: usize,
    /// A write whose values reach this many KiB is large: a partition keeps at most
    /// --large-in-flight-mb of large writes sequenced and not yet durable, and smaller writes
    /// that arrive meanwhile go first, so they do not wait behind megabytes of WAL (0, the
    /// default: off, writes are sequenced in arrival order; with 64 small writes beside a
    /// large-value flood waited half as long and the flood ran 44% slower, see
    /// docs/write-path.md).
    #[arg(long, default_value_t = 0)]
    pub large_write_kb: usize,
    /// Most MiB of large writes (--large-write-kb) a partition has sequenced and not yet
    /// durable; one is always let through when none is in flight.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub large_in_flight_mb: u64,
    /// Writes slow down (a delay per batch, growing toward the stop limit) once a partition
    /// has this many L0 files awaiting compaction (0: never).
    #[arg(long, default_value_t = 20)]
    pub l0_slowdown_files: usize,
    /// Writes wait for compaction once a partition has this many L0 files, and fail with
    /// RESOURCE_EXHAUSTED "write stall" after --write-stall-max-wait-ms (0: never).
    #[arg(long, default_value_t = 36)]
    pub l0_stop_files: usize,
    /// How long a write waits at the L0 stop limit before RESOURCE_EXHAUSTED, ms.
    #[arg(long, default_value_t = 5000)]
    pub write_stall_max_wait_ms: u64,
    /// Client connections open at once; beyond it new connections are closed as soon as they
    /// are accepted. Capped by what the open-file limit allows (see the start-up log).
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed, seconds (0: never).
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// A connection that has not finished the HTTP/2 handshake this long after it was
    /// accepted is closed, seconds (slow or half-open clients).
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// Run compaction in this process (the embedded default; in a cluster, of the
    /// partitions this node owns).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub compaction: bool,
    #[command(flatten)]
    pub security: crate::security::SecurityArgs,
    #[command(flatten)]
    pub compaction_opts: crate::compaction_args::CompactionArgs,
    /// etcd client URL(s), comma-separated: join a cluster instead of running alone. Needs
    /// `--object-store` shared by every node; `--data-dir` then holds only the cache.
    #[arg(long, env = "STRATA_ETCD")]
    pub etcd: Option<String>,
    /// Key prefix of this cluster in etcd.
    #[arg(long, default_value = "/strata", env = "STRATA_ETCD_PREFIX")]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd_auth: crate::etcd_args::EtcdAuthArgs,
    /// This node's id in the cluster (default: generated).
    #[arg(long, env = "STRATA_NODE_ID")]
    pub node_id: Option<String>,
    /// Address other nodes and clients use to reach this node (default: the listen address).
    #[arg(long, env = "STRATA_ADVERTISE")]
    pub advertise: Option<String>,
    /// Hash-range partitions of a new cluster (an existing cluster keeps its own count).
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// TTL of the node's etcd lease, seconds: a dead node's partitions move after this.
    #[arg(long, default_value_t = 2)]
    pub lease_ttl_secs: u64,
    /// Virtual nodes per node on the consistent-hash ring.
    #[arg(long, default_value_t = 256)]
    pub vnodes: u32,
    /// A partition this node owns splits in two when it writes at least this many ops per
    /// second, and 4x the median partition, for --split-after-secs (0: never split).
    #[arg(long, default_value_t = 2000)]
    pub split_writes_per_sec: u64,
    /// How long a partition must stay hot before it splits, seconds.
    #[arg(long, default_value_t = 30)]
    pub split_after_secs: u64,
    /// No partition splits once the cluster has this many.
    #[arg(long, default_value_t = 1024)]
    pub split_max_partitions: usize,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    // Refuse an insecure listener, or unreadable certificates or tokens, before anything
    // else happens.
    let sec = args.security.load(args.listen, args.etcd.is_some())?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding gRPC listener on {}", args.listen))?;
    let local = listener.local_addr().context("reading bound address")?;

    // Serve health (NOT_SERVING) and reflection while recovering; KV answers UNAVAILABLE.
    let (health, health_svc) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(strata_compute::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building reflection service")?;
    let kv = KvService::new();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(EngineMetrics::default());
    let limits = connection_limits(&args);
    let incoming = Incoming::new(listener, limits, metrics.clone());
    if let Some(a) = &sec.authority {
        kv.set_tenants(true);
        a.spawn_watcher(stop_rx.clone());
        a.spawn_usage_meter(
            kv.clone(),
            Duration::from_secs(args.security.usage_interval_secs.max(1)),
            stop_rx.clone(),
        );
    }
    if let Some(t) = &sec.peer_tls {
        kv.set_peer_tls(t.clone());
    }
    let builder = tonic::transport::Server::builder();
    let auth_layer = AuthLayer::new(sec.authority.clone(), sec.peer_ca_pem.as_deref())
        .map_err(anyhow::Error::msg)
        .context("--peer-tls-ca")?
        .single_node(args.etcd.is_none());
    // Certificates renewed on disk are put in force without a restart (our own acceptor:
    // tonic's TLS configuration is fixed at start).
    if let Some(server) = &sec.server_tls {
        crate::security::TlsReloader {
            args: args.security.clone(),
            server: server.clone(),
            peers: auth_layer.peer_check(),
            kv: kv.clone(),
            seen: sec.tls_digest,
        }
        .spawn(stop_rx.clone());
    }
    tracing::info!(
        "client API on {local}: {}{}",
        sec.summary,
        sec.authority
            .as_ref()
            .map(|a| format!(" ({})", a.path().display()))
            .unwrap_or_default()
    );
    let grpc = {
        let kv = kv.clone();
        let mut stop = stop_rx.clone();
        let tls = sec.server_tls.clone();
        tokio::spawn(async move {
            let router = builder
                .http2_keepalive_interval(Some(connections::KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(connections::KEEPALIVE_TIMEOUT))
                .layer(connections::ActivityLayer)
                .layer(auth_layer)
                .add_service(health_svc)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(AdminService::new(kv.clone()).into_server())
                .add_service(TxnService::new(kv.clone()).into_server())
                .add_service(kv.into_server());
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            match tls {
                Some(tls) => {
                    router
                        .serve_with_incoming_shutdown(tls.incoming(incoming), stopped)
                        .await
                }
                None => router.serve_with_incoming_shutdown(incoming, stopped).await,
            }
        })
    };

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    let url = args.object_store.clone().unwrap_or_else(|| {
        format!(
            "file://{}",
            absolute(&args.data_dir.join("objects")).display()
        )
    });
    args.compaction_opts.check(Some(&url))?;
    let mut s3 = S3Settings::from_env();
    if let Some(ep) = &args.s3_endpoint {
        s3.endpoint = Some(ep.clone());
    }
    let roots = strata_objstore::Roots::new(s3.clone(), RetryPolicy::default());
    let (store, meter) = open_store(&StoreConfig {
        url: url.clone(),
        s3,
        retry: RetryPolicy::default(),
    })
    .with_context(|| format!("opening object store {url}"))?;
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: (args.cache_memory_mb as usize) << 20,
        disk_dir: (args.cache_disk_mb > 0).then(|| args.data_dir.join("cache")),
        disk_bytes: args.cache_disk_mb << 20,
    })
    .await
    .context("opening block cache")?;
    let opts = DbOptions {
        memtable_bytes: args.memtable_mb << 20,
        write_buffer_bytes: args.write_buffer_mb << 20,
        wal_pipeline_depth: args.wal_pipeline_depth as usize,
        wal_pipeline_min_bytes: args.wal_pipeline_min_kb << 10,
        large_write_bytes: args.large_write_kb << 10,
        large_in_flight_bytes: (args.large_in_flight_mb as usize) << 20,
        metrics: Some(metrics.clone()),
        roots: roots.clone(),
        stall: stall_limits(&args),
        ..Default::default()
    };
    if args.etcd.is_some() && args.compaction_opts.snapshot_every_secs > 0 {
        anyhow::bail!(
            "--snapshot-every-secs: in a cluster the snapshot schedule runs on the `strata \
             compactor` workers; pass it to them"
        );
    }
    if let Some(endpoints) = &args.etcd {
        if args.object_store.is_none() {
            anyhow::bail!(
                "--etcd needs --object-store: every node of a cluster must share one bucket"
            );
        }
        let settings =
            args.etcd_auth
                .settings(endpoints, &args.etcd_prefix, Duration::from_secs(2))?;
        let node_id = args.node_id.clone().unwrap_or_else(generated_node_id);
        let advertise = args.advertise.clone().unwrap_or_else(|| local.to_string());
        let mut copts = ClusterOptions::new(node_id, advertise.clone());
        copts.lease_ttl = Duration::from_secs(args.lease_ttl_secs.max(1));
        copts.vnodes = args.vnodes;
        copts.split_writes_per_sec = args.split_writes_per_sec;
        copts.split_after = Duration::from_secs(args.split_after_secs);
        copts.split_max_partitions = args.split_max_partitions;
        copts.partitions = args.partitions.max(1);
        // The node's write-buffer budget is shared out over partitions: a node may own many
        // (all of them, alone), and each engine enforces its own share. Twice the even share,
        // because a node of a cluster owns only some of them.
        let share = ((args.write_buffer_mb << 20) * 2 / u64::from(copts.partitions)).max(16 << 20);
        copts.db = DbOptions {
            write_buffer_bytes: share,
            memtable_bytes: opts.memtable_bytes.min(share / 2),
            ..opts
        };
        // etcd (or S3) being down when a node starts is an outage like any other: keep
        // trying (health says NOT_SERVING, KV answers UNAVAILABLE) until it is back.
        let mut attempt = 0u32;
        let node = loop {
            let joined = async {
                let etcd = Etcd::connect(&settings)
                    .await
                    .with_context(|| format!("connecting to etcd at {endpoints}"))?;
                ClusterNode::start(
                    copts.clone(),
                    etcd,
                    store.clone(),
                    cache.clone(),
                    stop_rx.clone(),
                )
                .await
                .context("joining the cluster")
            };
            let res = tokio::select! {
                r = joined => r,
                _ = &mut shutdown => {
                    let _ = stop_tx.send(true);
                    return Ok(());
                }
            };
            match res {
                Ok(node) => break node,
                Err(e) => {
                    attempt += 1;
                    let wait = Duration::from_millis((250u64 << attempt.min(4)).min(4000));
                    tracing::warn!(
                        error = format!("{e:#}"),
                        attempt,
                        "cannot join the cluster yet; retrying in {wait:?}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut shutdown => {
                            let _ = stop_tx.send(true);
                            return Ok(());
                        }
                    }
                }
            }
        };
        kv.set_cluster(node.clone(), advertise.clone());
        let registry = CompactorRegistry::default();
        let compactor_task = args.compaction.then(|| {
            let opts = args.compaction_opts.options(CompactionOptions {
                roots: roots.clone(),
                deletion_budget: args.compaction_opts.deletion_budget(&url),
                // The node's clock: TTLs and export pins aged by the clock that wrote them.
                clock: node.clock().clone(),
                ..CompactionOptions::default()
            });
            tokio::spawn(compact_owned(
                node.clone(),
                store.clone(),
                opts,
                registry.clone(),
                stop_rx.clone(),
            ))
        });
        let metrics_task = match args.metrics_listen {
            Some(addr) => {
                let n = node.clone();
                let m = metrics.clone();
                let source: StatsSource = Arc::new(move || {
                    (
                        m.clone(),
                        sum_stats(&n.serving()),
                        compaction_stats(&registry),
                    )
                });
                Some(spawn_metrics(addr, source, &meter, &cache, &stop_rx).await?)
            }
            None => None,
        };
        set_health(&health, ServingStatus::Serving).await;
        tracing::info!(
            "strata listening on {local} (node {} advertised as {advertise}, {} partitions, object store {}, etcd {endpoints})",
            node.node_id(),
            node.partitions(),
            store.describe()
        );
        tokio::select! {
            _ = &mut shutdown => {}
            r = stop_rx.changed() => { r.ok(); }
        }
        tracing::info!("shutting down: handing partitions off");
        set_health(&health, ServingStatus::NotServing).await;
        node.shutdown(Duration::from_secs(20)).await;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), grpc).await;
        if let Some(t) = compactor_task {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        if let Some(t) = metrics_task {
            t.abort();
        }
        close_cache(
            &cache,
            tokio::time::Instant::now() + Duration::from_secs(10),
        )
        .await?;
        report_requests(&meter);
        tracing::info!("stopped");
        return Ok(());
    }
    let manifests: Arc<dyn ManifestStore> = Arc::new(EmbeddedManifestStore::new(store.clone()));
    let started = std::time::Instant::now();
    // The engine's clock dates the embedded snapshot schedule's snapshots too.
    let clock = opts.clock.clone();
    let open = Db::open(opts, store.clone(), manifests.clone(), cache.clone());
    let (db, report) = tokio::select! {
        r = open => r.context("recovering the store")?,
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            return Ok(());
        }
    };
    tracing::info!(
        manifest_version = report.manifest_version,
        replayed_segments = report.replayed_segments,
        replayed_entries = report.replayed_entries,
        ms = started.elapsed().as_millis() as u64,
        "recovered"
    );

    let registry = CompactorRegistry::default();
    let compactor_task = if args.compaction {
        let c = embedded_compactor(
            &db,
            store.clone(),
            manifests.clone(),
            &roots,
            &args.compaction_opts,
            &url,
        );
        let rx = stop_rx.clone();
        registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(0, c.clone());
        Some(tokio::spawn(c.run(rx)))
    } else {
        None
    };
    let schedule_task = args.compaction_opts.snapshot_schedule().map(|sched| {
        tokio::spawn(strata_compactor::fleet_tasks::run_embedded_schedule(
            store.clone(),
            manifests.clone(),
            sched,
            strata_compactor::fleet_tasks::max_pin_delay(strata_compactor::EMBEDDED_GC_GRACE),
            clock.clone(),
            stop_rx.clone(),
        ))
    });
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let d = db.clone();
            let source: StatsSource =
                Arc::new(move || (metrics.clone(), d.stats(), compaction_stats(&registry)));
            Some(spawn_metrics(addr, source, &meter, &cache, &stop_rx).await?)
        }
        None => None,
    };

    kv.set_db(db.clone());
    set_health(&health, ServingStatus::Serving).await;
    tracing::info!(
        "strata listening on {local} (object store {}, data dir {})",
        store.describe(),
        args.data_dir.display()
    );

    tokio::select! {
        _ = &mut shutdown => {}
        r = stop_rx.changed() => { r.ok(); }
    }
    tracing::info!("shutting down");
    set_health(&health, ServingStatus::NotServing).await;
    let _ = stop_tx.send(true);
    // One close deadline for everything below, whatever the store or the disk does.
    let deadline = tokio::time::Instant::now() + CLOSE_DEADLINE;
    // Requests in flight finish; then every accepted write becomes durable and memtables flush.
    let _ = tokio::time::timeout(Duration::from_secs(10), grpc).await;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    db.close(left.max(Duration::from_secs(1)))
        .await
        .context("closing the engine")?;
    if let Some(t) = compactor_task {
        let _ = tokio::time::timeout_at(deadline, t).await;
    }
    if let Some(t) = schedule_task {
        // A snapshot cut short stays incomplete; the schedule deletes it later.
        let _ = tokio::time::timeout_at(deadline, t).await;
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    close_cache(&cache, deadline).await?;
    report_requests(&meter);
    tracing::info!("stopped");
    Ok(())
}

/// The compactor of the embedded default (partition 0 of a store at `url`), in the process
/// that runs `db` (`strata serve`, `strata bench --embedded`).
pub(crate) fn embedded_compactor(
    db: &Db,
    store: Arc<dyn strata_objstore::Store>,
    manifests: Arc<dyn ManifestStore>,
    roots: &strata_objstore::Roots,
    args: &crate::compaction_args::CompactionArgs,
    url: &str,
) -> Compactor {
    // In this process, the compactor knows which versions the engine's readers hold: an input
    // goes once none does, after the short embedded grace for other processes.
    let floor_db = db.clone();
    Compactor::new(
        store,
        manifests,
        0,
        args.options(CompactionOptions {
            roots: roots.clone(),
            deletion_budget: args.deletion_budget(url),
            gc_grace: strata_compactor::EMBEDDED_GC_GRACE,
            // The engine's clock: TTLs and export pins aged by the clock that wrote them.
            clock: db.clock().clone(),
            ..CompactionOptions::default()
        }),
    )
    .with_reader_floor(Arc::new(move |_| floor_db.oldest_held_version()))
}

/// How long a single node's shutdown may take after the gRPC server stopped: the engine's
/// close, then the compactor and the snapshot schedule, then the cache.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

/// Closes the cache by `deadline` at the latest (a disk tier on a full or stuck disk must not
/// hold the process up: it is only a cache).
async fn close_cache(cache: &BlockCache, deadline: tokio::time::Instant) -> Result<()> {
    let at = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
    match tokio::time::timeout_at(at, cache.close()).await {
        Ok(r) => r.context("closing the cache"),
        Err(_) => {
            tracing::warn!("the block cache did not close before the deadline; leaving it");
            Ok(())
        }
    }
}

/// Health of the whole server (`""`) and of `strata.v1.KV` move together.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for service in ["", "strata.v1.KV"] {
        health.set_service_status(service, status).await;
    }
}

fn report_requests(meter: &Metered) {
    let c = meter.counts();
    tracing::info!(
        puts = c.puts,
        gets = c.gets,
        lists = c.lists,
        deletes = c.deletes,
        cost_usd = format!("{:.6}", c.estimated_cost_usd()),
        "object store requests this run"
    );
}

pub(crate) fn absolute(p: &std::path::Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A node id for a node started without `--node-id`.
fn generated_node_id() -> String {
    format!("node-{:08x}", rand::random::<u32>())
}

/// Keeps one compactor running per partition this node owns.
async fn compact_owned(
    node: ClusterNode,
    store: Arc<dyn strata_objstore::Store>,
    compaction: CompactionOptions,
    registry: CompactorRegistry,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut owned = node.owned();
    let mut running: HashMap<
        u32,
        (
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        ),
    > = HashMap::new();
    let mut fleet_seen = false;
    loop {
        // A compactor fleet (`strata compactor` workers registered in etcd) takes over the
        // cluster's compaction: then this node runs none.
        let fleet = node.compactor_fleet_size() > 0;
        if fleet != fleet_seen {
            fleet_seen = fleet;
            tracing::info!(
                fleet,
                "{}",
                if fleet {
                    "compactor workers are registered: leaving compaction to them"
                } else {
                    "no compactor workers: compacting owned partitions here"
                }
            );
        }
        let want = if fleet {
            Default::default()
        } else {
            owned.borrow_and_update().clone()
        };
        running.retain(|p, (tx, _)| {
            let keep = want.contains(p);
            if !keep {
                let _ = tx.send(true);
                registry.lock().unwrap_or_else(|e| e.into_inner()).remove(p);
            }
            keep
        });
        for p in want {
            running.entry(p).or_insert_with(|| {
                let (tx, rx) = tokio::sync::watch::channel(false);
                let manifests: Arc<dyn ManifestStore> = node.manifests();
                // The range as of now: a later split of p reopens it, and this compactor
                // with it; until then a stale (wider) range only keeps more than needed.
                let opts = CompactionOptions {
                    hash_range: node.map().range_of(p),
                    ..compaction.clone()
                };
                let c = Compactor::new(store.clone(), manifests, p, opts);
                registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(p, c.clone());
                (tx, tokio::spawn(c.run(rx)))
            });
        }
        tokio::select! {
            r = owned.changed() => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    for (_, (tx, t)) in running {
        let _ = tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
}

/// The write stall's limits. Alone with `--compaction false` nothing compacts L0, so writes
/// will stop at `--l0-stop-files` flushes: say so at start (pass `--l0-stop-files 0
/// --l0-slowdown-files 0` to let L0 grow instead).
fn stall_limits(args: &ServeArgs) -> strata_compute::StallLimits {
    if args.etcd.is_none() && !args.compaction && args.l0_stop_files > 0 {
        tracing::warn!(
            "--compaction false on the embedded default: nothing compacts L0, so writes will \
             fail with RESOURCE_EXHAUSTED \"write stall\" once a partition has {} L0 files \
             (--l0-stop-files 0 --l0-slowdown-files 0 turns the stall off)",
            args.l0_stop_files
        );
    }
    strata_compute::StallLimits {
        slowdown_l0: args.l0_slowdown_files,
        stop_l0: args.l0_stop_files,
        max_wait: Duration::from_millis(args.write_stall_max_wait_ms),
    }
}

/// Raises the open-file limit and derives the connection limits from the flags and what that
/// limit leaves room for, saying so in the log.
fn connection_limits(args: &ServeArgs) -> ConnectionLimits {
    let mut max = args.max_connections;
    match connections::raise_fd_limit() {
        Ok(fd) => {
            let allowed = connections::connections_allowed_by(fd.now);
            if (max as u64) > allowed {
                tracing::warn!(
                    "the open-file limit ({}) allows {allowed} connections, below \
                     --max-connections {max}: accepting at most {allowed} (raise the hard \
                     limit, e.g. `ulimit -Hn` or LimitNOFILE=, to allow more)",
                    fd.now
                );
                max = allowed as usize;
            }
            let raised = if fd.now > fd.before {
                format!("soft limit raised from {}", fd.before)
            } else {
                "the hard limit".to_string()
            };
            tracing::info!(
                "open-file limit {} ({raised}): room for {allowed} connections after {} \
                 kept for the engine; accepting up to {max}",
                fd.now,
                connections::fd_reserve(fd.now),
            );
        }
        Err(e) => tracing::warn!(error = %e, "reading or raising the open-file limit failed"),
    }
    ConnectionLimits {
        max_connections: max,
        handshake_timeout: Duration::from_secs(args.handshake_timeout_secs),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
    }
}

async fn spawn_metrics(
    addr: SocketAddr,
    source: StatsSource,
    meter: &Metered,
    cache: &BlockCache,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics listener on {addr}"))?;
    let bound = l.local_addr().context("metrics address")?;
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(tokio::spawn(crate::metrics_http::serve(
        l,
        source,
        meter.clone(),
        cache.clone(),
        crate::metrics_http::install_recorder(),
        stop.clone(),
    )))
}

/// The compactors running in this process, by partition (for metrics).
type CompactorRegistry = Arc<std::sync::Mutex<std::collections::BTreeMap<u32, Compactor>>>;

fn compaction_stats(r: &CompactorRegistry) -> Vec<(u32, strata_compactor::CompactorStats)> {
    r.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, c)| (*p, c.stats()))
        .collect()
}

/// One summary of several engines (a node's partitions).
fn sum_stats(dbs: &[Db]) -> DbStats {
    let mut t = DbStats::default();
    for db in dbs {
        let s = db.stats();
        t.visible_seq = t.visible_seq.max(s.visible_seq);
        t.memtable_bytes += s.memtable_bytes;
        t.immutable_memtables += s.immutable_memtables;
        t.manifest_version = t.manifest_version.max(s.manifest_version);
        t.l0_files += s.l0_files;
        t.sst_bytes += s.sst_bytes;
        t.last_level_bytes += s.last_level_bytes;
        for (i, n) in s.level_files.iter().enumerate() {
            if t.level_files.len() <= i {
                t.level_files.resize(i + 1, 0);
            }
            t.level_files[i] += n;
        }
    }
    t
}
