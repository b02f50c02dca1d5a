//! `strata export`: a consistent snapshot of the store as Parquet (see
//! `compactor/src/export.rs`), from an embedded data dir or a cluster, to `file://` or `s3://`.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_compactor::export::{ExportManifest, ExportPartition, Progress};
use strata_compactor::fleet_tasks::{run_export, ExportRequest, ExportSource};
use strata_manifest::etcd::Etcd;
use strata_manifest::{EmbeddedManifestStore, EtcdManifestStore, ManifestStore};
use strata_objstore::{open_store, RetryPolicy, S3Settings, Store, StoreConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// Destination: `file:///DIR` or `s3://BUCKET/PREFIX`.
    #[arg(long)]
    pub to: String,
    /// Export an archival snapshot (`strata ctl snapshot create`) instead of the latest state.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Only what changed since the export at this URL (its `_manifest.json`); rows carry a
    /// `deleted` flag for deletions.
    #[arg(long)]
    pub since: Option<String>,
    /// The embedded store's data dir (as `strata serve --data-dir`).
    #[arg(long, env = "STRATA_DATA_DIR", conflicts_with = "etcd")]
    pub data_dir: Option<PathBuf>,
    /// A cluster's etcd URL(s), comma-separated (with `--object-store`).
    #[arg(long, env = "STRATA_ETCD")]
    pub etcd: Option<String>,
    /// Key prefix of the cluster in etcd.
    #[arg(long, default_value = "/strata", env = "STRATA_ETCD_PREFIX")]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd_auth: crate::etcd_args::EtcdAuthArgs,
    /// The store's object store URL (a cluster's bucket; default for `--data-dir`:
    /// DATA_DIR/objects).
    #[arg(long, env = "STRATA_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Endpoint of an S3-compatible server, for source and destination.
    #[arg(long, env = "STRATA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Target size of each Parquet file, MiB (of keys and values).
    #[arg(long, default_value_t = 128)]
    pub file_mb: u64,
    /// Export one tenant's namespace (`strata serve --tokens`), keys as its tenant sees them.
    /// Without it every key is exported, each row's `namespace` column naming its tenant.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Run the export on the cluster's compactor workers (`strata compactor`) instead of in
    /// this process; this command follows its progress (interrupting it leaves the job
    /// running). Needs `--etcd`.
    #[arg(long, requires = "etcd")]
    pub fleet: bool,
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
    }
    fn add(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// S3 settings from the environment, with `endpoint` if given.
pub(crate) fn settings(endpoint: &Option<String>) -> S3Settings {
    let mut s3 = S3Settings::from_env();
    if let Some(ep) = endpoint {
        s3.endpoint = Some(ep.clone());
    }
    s3
}

pub(crate) fn open(url: &str, endpoint: &Option<String>) -> Result<Arc<dyn Store>> {
    let s3 = settings(endpoint);
    let (store, _) = open_store(&StoreConfig {
        url: url.to_string(),
        s3,
        retry: RetryPolicy::default(),
    })
    .with_context(|| format!("opening object store {url}"))?;
    Ok(store)
}

/// A store to read: its URL (absolute: what a restored keyspace records to read it again)
/// and what an export reads of it.
pub(crate) struct Source {
    pub url: String,
    pub read: ExportSource,
}

/// Opens an embedded store (`data_dir`, objects under DATA_DIR/objects unless
/// `object_store` names them) or a cluster (`etcd` + `object_store`).
pub(crate) async fn open_source(
    data_dir: Option<&std::path::Path>,
    etcd: Option<&str>,
    etcd_prefix: &str,
    etcd_auth: &crate::etcd_args::EtcdAuthArgs,
    object_store: Option<&str>,
    s3_endpoint: &Option<String>,
) -> Result<Source> {
    match (etcd, data_dir) {
        (Some(etcd_url), _) => {
            let Some(url) = object_store else {
                bail!("--etcd needs --object-store (the cluster's bucket)");
            };
            let store = open(url, s3_endpoint)?;
            let etcd = connect_etcd(etcd_url, etcd_prefix, etcd_auth).await?;
            let manifests: Arc<dyn ManifestStore> =
                Arc::new(EtcdManifestStore::new(etcd.clone(), store.clone()));
            Ok(Source {
                url: url.to_string(),
                read: ExportSource::cluster(etcd, store, manifests).await?,
            })
        }
        (None, Some(dir)) => {
            let url = object_store.map(str::to_string).unwrap_or_else(|| {
                format!(
                    "file://{}",
                    crate::serve::absolute(&dir.join("objects")).display()
                )
            });
            let store = open(&url, s3_endpoint)?;
            let manifests: Arc<dyn ManifestStore> =
                Arc::new(EmbeddedManifestStore::new(store.clone()));
            Ok(Source {
                url,
                read: ExportSource {
                    store,
                    manifests,
                    partitions: vec![ExportPartition {
                        partition: 0,
                        hash_range: None,
                    }],
                    cluster: None,
                },
            })
        }
        (None, None) => {
            bail!("name the store: --data-dir DIR, or --etcd URL --object-store URL")
        }
    }
}

async fn connect_etcd(
    etcd_url: &str,
    prefix: &str,
    auth: &crate::etcd_args::EtcdAuthArgs,
) -> Result<Etcd> {
    Etcd::connect(&auth.settings(etcd_url, prefix, Duration::from_secs(5))?)
        .await
        .with_context(|| format!("connecting to etcd at {etcd_url}"))
}

fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template(
            "exporting [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

pub async fn run(args: ExportArgs) -> Result<()> {
    let request = ExportRequest {
        to: args.to.clone(),
        snapshot: args.snapshot.clone(),
        since: args.since.clone(),
        file_mb: args.file_mb,
        namespace: args.namespace.clone(),
    };
    let bar = progress_bar(args.no_progress);
    let started = Instant::now();
    let m = if args.fleet {
        run_in_fleet(&args, request, &bar).await?
    } else {
        let source = open_source(
            args.data_dir.as_deref(),
            args.etcd.as_deref(),
            &args.etcd_prefix,
            &args.etcd_auth,
            args.object_store.as_deref(),
            &args.s3_endpoint,
        )
        .await?;
        let roots =
            strata_objstore::Roots::new(settings(&args.s3_endpoint), RetryPolicy::default());
        let progress = Bar(bar.clone());
        run_export(
            source.read,
            &roots,
            &request,
            &progress,
            &strata_clock::Clock::system(),
        )
        .await?
    };
    bar.finish_and_clear();
    if let Some(why) = &m.full_reason {
        println!(
            "note: exported in full instead of incrementally ({why}); readers replace what they \
             have with it (its _manifest.json says kind \"full\")"
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let read: u64 = bar.position();
    println!(
        "exported {} rows in {} files ({:.1} MB of Parquet) from {} partitions to {} in {:.2} s \
         ({:.1} MB/s of SSTs and WAL read); manifest: {}/_manifest.json",
        m.rows,
        m.files.len(),
        m.bytes as f64 / 1e6,
        m.partitions.len(),
        args.to,
        secs,
        read as f64 / 1e6 / secs.max(1e-9),
        args.to.trim_end_matches('/'),
    );
    Ok(())
}

/// `--fleet`: asks the cluster's compactor workers to run the export and follows its progress.
/// Interrupting this command leaves the job running in the fleet.
async fn run_in_fleet(
    args: &ExportArgs,
    request: ExportRequest,
    bar: &ProgressBar,
) -> Result<ExportManifest> {
    use strata_compactor::fleet_tasks::{ExportJob, JobState, EXPORT_JOBS};
    use strata_manifest::now_ms;
    let Some(etcd_url) = &args.etcd else {
        bail!("--fleet needs the cluster's --etcd (its compactor workers run the export)");
    };
    let etcd = connect_etcd(etcd_url, &args.etcd_prefix, &args.etcd_auth).await?;
    let view = etcd.view().await.context("reading the cluster")?;
    if view.compactors.is_empty() {
        bail!(
            "--fleet: no `strata compactor` worker is registered under {}: start one, or export \
             without --fleet",
            args.etcd_prefix
        );
    }
    // The workers open the destination with their own settings; checking it here as well
    // gives a clear error before anything is queued.
    let dest = open(&request.to, &args.s3_endpoint)?;
    let existing = dest
        .list("")
        .await
        .with_context(|| format!("listing the destination {}", request.to))?;
    if let Some(o) = existing.first() {
        bail!(
            "the destination {} is not empty ({} objects, e.g. {}): an export goes into a place \
             of its own",
            request.to,
            existing.len(),
            o.path
        );
    }
    let job = ExportJob::new(request);
    etcd.job_create(EXPORT_JOBS, &job.id, job.encode()?)
        .await
        .context("queueing the export job")?;
    tracing::info!(job = %job.id, "export queued for the compactor fleet");
    // A job nobody can take (every worker gone) fails here rather than waiting for ever.
    let mut unattended_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(body) = etcd
            .job_get(EXPORT_JOBS, &job.id)
            .await
            .context("reading the export job")?
        else {
            bail!("export job {} vanished", job.id);
        };
        let now = ExportJob::decode(&body)?;
        bar.set_length(now.total_bytes);
        bar.set_position(now.read_bytes);
        match now.state {
            JobState::Pending | JobState::Running => {
                // Progress is written every 500 ms while a worker runs it.
                let stale = now_ms().saturating_sub(now.updated_ms) > 10_000;
                if now.state == JobState::Pending || stale {
                    let workers = etcd.view().await.map(|v| v.compactors.len()).unwrap_or(1);
                    if workers > 0 {
                        unattended_since = None;
                    } else if unattended_since.get_or_insert_with(Instant::now).elapsed()
                        > Duration::from_secs(30)
                    {
                        let _ = etcd.job_delete(EXPORT_JOBS, &job.id).await;
                        bail!(
                            "no `strata compactor` worker has been registered for 30 s: the \
                             export job {} was withdrawn; start a worker and export again",
                            job.id
                        );
                    }
                }
            }
            JobState::Done => {
                let _ = etcd.job_delete(EXPORT_JOBS, &job.id).await;
                return now
                    .result
                    .context("the export job finished without its manifest");
            }
            JobState::Failed => {
                let _ = etcd.job_delete(EXPORT_JOBS, &job.id).await;
                bail!(
                    "the export failed on worker {}: {}",
                    now.worker.as_deref().unwrap_or("?"),
                    now.error.as_deref().unwrap_or("no reason recorded")
                );
            }
        }
    }
}
