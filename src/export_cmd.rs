//! `strata export`: a consistent snapshot of the store as Parquet (see
//! `compactor/src/export.rs`), from an embedded data dir or a cluster, to `file://` or `s3://`.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_compactor::export::{
    export, read_export_manifest, ExportOptions, ExportPartition, Progress,
};
use strata_compactor::snapshot::SnapshotManifests;
use strata_manifest::etcd::Etcd;
use strata_manifest::{EmbeddedManifestStore, EtcdManifestStore, EtcdSettings, ManifestStore};
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
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
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

/// A store to read: its objects, manifests and partitions (with the cluster's etcd and
/// partition map revision for a cluster).
pub(crate) struct Source {
    /// The store's URL, absolute (what a restored keyspace records to read it again).
    pub url: String,
    pub store: Arc<dyn Store>,
    pub manifests: Arc<dyn ManifestStore>,
    pub partitions: Vec<ExportPartition>,
    pub cluster: Option<(Etcd, i64)>,
}

/// Opens an embedded store (`data_dir`, objects under DATA_DIR/objects unless
/// `object_store` names them) or a cluster (`etcd` + `object_store`).
pub(crate) async fn open_source(
    data_dir: Option<&std::path::Path>,
    etcd: Option<&str>,
    etcd_prefix: &str,
    object_store: Option<&str>,
    s3_endpoint: &Option<String>,
) -> Result<Source> {
    match (etcd, data_dir) {
        (Some(etcd_url), _) => {
            let Some(url) = object_store else {
                bail!("--etcd needs --object-store (the cluster's bucket)");
            };
            let store = open(url, s3_endpoint)?;
            let etcd = Etcd::connect(&EtcdSettings {
                endpoints: etcd_url.split(',').map(|s| s.trim().to_string()).collect(),
                prefix: etcd_prefix.to_string(),
                request_timeout: Duration::from_secs(5),
            })
            .await
            .with_context(|| format!("connecting to etcd at {etcd_url}"))?;
            let view = etcd.view().await.context("reading the cluster")?;
            let (map, map_rev) = view
                .partition_map()
                .map_err(|e| anyhow::anyhow!("reading the partition map: {e}"))?;
            let partitions: Vec<ExportPartition> = map
                .ids()
                .into_iter()
                .map(|p| ExportPartition {
                    partition: p,
                    hash_range: map.range_of(p),
                })
                .collect();
            let manifests: Arc<dyn ManifestStore> =
                Arc::new(EtcdManifestStore::new(etcd.clone(), store.clone()));
            Ok(Source {
                url: url.to_string(),
                store,
                manifests,
                partitions,
                cluster: Some((etcd, map_rev)),
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
                store,
                manifests,
                partitions: vec![ExportPartition {
                    partition: 0,
                    hash_range: None,
                }],
                cluster: None,
            })
        }
        (None, None) => {
            bail!("name the store: --data-dir DIR, or --etcd URL --object-store URL")
        }
    }
}

pub async fn run(args: ExportArgs) -> Result<()> {
    let source = open_source(
        args.data_dir.as_deref(),
        args.etcd.as_deref(),
        &args.etcd_prefix,
        args.object_store.as_deref(),
        &args.s3_endpoint,
    )
    .await?;
    let (store, manifests, partitions, cluster) = match &args.snapshot {
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
    let dest = open(&args.to, &args.s3_endpoint)?;
    let since = match &args.since {
        Some(url) => {
            let prev = open(url, &args.s3_endpoint)?;
            Some(read_export_manifest(&*prev, "").await?)
        }
        None => None,
    };
    let opts = ExportOptions {
        target_file_bytes: args.file_mb.max(1) << 20,
        since,
        map_revision: cluster.as_ref().map_or(0, |c| c.1),
        roots: strata_objstore::Roots::new(settings(&args.s3_endpoint), RetryPolicy::default()),
        ..ExportOptions::default()
    };
    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "exporting [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let progress = Bar(bar.clone());
    let started = Instant::now();
    let m = export(
        store,
        manifests,
        &partitions,
        dest.clone(),
        "",
        &opts,
        &progress,
    )
    .await?;
    bar.finish_and_clear();
    // A partition that split during the export moved half its keys to a partition the export
    // did not read (and compaction may drop them from the old one): refuse the result.
    if let Some((etcd, rev)) = &cluster {
        let now = etcd.view().await.context("re-reading the cluster")?;
        let (_, now_rev) = now
            .partition_map()
            .map_err(|e| anyhow::anyhow!("re-reading the partition map: {e}"))?;
        if now_rev != *rev {
            let _ = dest.delete(strata_compactor::export::EXPORT_MANIFEST).await;
            bail!(
                "a partition split during the export (partition map revision {rev} -> \
                 {now_rev}); its result is incomplete and its _manifest.json was removed: \
                 export again into a new place"
            );
        }
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
