//! `strata compactor`: a compaction worker of a cluster's fleet (see `compactor/src/fleet.rs`).

use anyhow::{Context, Result};
use std::time::Duration;
use strata_compactor::fleet::{run_worker, WorkerOptions};
use strata_manifest::etcd::Etcd;
use strata_objstore::{open_store, RetryPolicy, S3Settings, StoreConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct CompactorArgs {
    /// etcd client URL(s) of the cluster, comma-separated.
    #[arg(long, env = "STRATA_ETCD")]
    pub etcd: String,
    /// Key prefix of the cluster in etcd.
    #[arg(long, default_value = "/strata", env = "STRATA_ETCD_PREFIX")]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd_auth: crate::etcd_args::EtcdAuthArgs,
    /// The cluster's object store: `s3://BUCKET/PREFIX` (or `file:///DIR` on one machine).
    #[arg(long, env = "STRATA_OBJECT_STORE")]
    pub object_store: String,
    /// Endpoint of an S3-compatible server (default: `AWS_ENDPOINT_URL`).
    #[arg(long, env = "STRATA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// This worker's id among the cluster's compactors (default: generated).
    #[arg(long, env = "STRATA_WORKER_ID")]
    pub worker_id: Option<String>,
    /// TTL of the worker's etcd lease, seconds: a dead worker's partitions move after this.
    #[arg(long, default_value_t = 5)]
    pub lease_ttl_secs: u64,
    #[command(flatten)]
    pub compaction: crate::compaction_args::CompactionArgs,
}

pub async fn run(args: CompactorArgs) -> Result<()> {
    args.compaction.check(Some(&args.object_store))?;
    let mut s3 = S3Settings::from_env();
    if let Some(ep) = &args.s3_endpoint {
        s3.endpoint = Some(ep.clone());
    }
    let roots = strata_objstore::Roots::new(s3.clone(), RetryPolicy::default());
    let (store, _meter) = open_store(&StoreConfig {
        url: args.object_store.clone(),
        s3,
        retry: RetryPolicy::default(),
    })
    .with_context(|| format!("opening object store {}", args.object_store))?;
    let settings =
        args.etcd_auth
            .settings(&args.etcd, &args.etcd_prefix, Duration::from_secs(2))?;
    // With a user, connecting logs in, so an etcd not up yet fails it: a worker started
    // beside its etcd waits for it (a minute), as a node does; a refused login is final.
    let started = std::time::Instant::now();
    let etcd = loop {
        match Etcd::connect(&settings).await {
            Ok(etcd) => break etcd,
            // Only an etcd that does not answer is waited for; a refused login, a TLS
            // mismatch or a bad certificate is final.
            Err(e)
                if started.elapsed() < Duration::from_secs(60) && {
                    let t = e.to_string();
                    [
                        "no answer",
                        "transport error",
                        "Connection refused",
                        "connection",
                    ]
                    .iter()
                    .any(|m| t.contains(m))
                        && !["authentication", "certificate", "https://"]
                            .iter()
                            .any(|m| t.contains(m))
                } =>
            {
                tracing::warn!(error = %e, "etcd not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("connecting to etcd at {}", args.etcd))
            }
        }
    };
    let id = args
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("compactor-{:08x}", rand::random::<u32>()));
    let mut opts = WorkerOptions::new(id.clone());
    opts.lease_ttl = Duration::from_secs(args.lease_ttl_secs.max(1));
    opts.compaction = args.compaction.options(opts.compaction);
    opts.compaction.deletion_budget = args.compaction.deletion_budget(&args.object_store);
    opts.compaction.roots = roots;
    opts.snapshots = args.compaction.snapshot_schedule();
    tracing::info!(
        worker = %id,
        object_store = %store.describe(),
        etcd = %args.etcd,
        "compactor worker starting"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_worker(etcd, store, opts, stop_rx));
    crate::serve::shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    worker.await.context("worker task")??;
    tracing::info!("stopped");
    Ok(())
}
