//! `strata ctl`: cluster administration through etcd (works while nodes are down).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::Duration;
use strata_manifest::etcd::{ClusterView, Etcd};

#[derive(clap::Args, Debug, Clone)]
pub struct CtlArgs {
    /// etcd client URL(s), comma-separated.
    #[arg(
        long,
        env = "STRATA_ETCD",
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    pub etcd: String,
    /// Key prefix of the cluster in etcd.
    #[arg(
        long,
        default_value = "/strata",
        env = "STRATA_ETCD_PREFIX",
        global = true
    )]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd_auth: crate::etcd_args::EtcdAuthArgs,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// Nodes, partitions per node, epochs and lag.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Move every partition away from NODE (it keeps serving until they have moved).
    Drain { node: String },
    /// Let NODE own partitions again.
    Undrain { node: String },
    /// Bring back a snapshot as a new keyspace at `--to`, reading its SSTs where they are
    /// (nothing copied). Start the new keyspace's server(s) once it finishes.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["snapshot", "at"])))]
    Restore {
        /// Snapshot id (`strata ctl snapshot list`).
        #[arg(long)]
        snapshot: Option<String>,
        /// Point in time instead of a snapshot id: the store as of the newest snapshot taken
        /// at or before it (RFC 3339 like `2026-11-22T14:05:00Z`, Unix milliseconds, or
        /// `10m ago`). With `--snapshot-every-secs N` the result lags it by at most N s.
        #[arg(long)]
        at: Option<String>,
        /// The new keyspace's object store: `file:///NEWDIR/objects` (then `strata serve
        /// --data-dir NEWDIR`) or `s3://BUCKET/NEW_PREFIX`. Must be empty.
        #[arg(long)]
        to: String,
        /// For a cluster's snapshot: the new keyspace's etcd prefix (its nodes join with
        /// `--etcd-prefix` set to it). Must be unused.
        #[arg(long)]
        to_etcd_prefix: Option<String>,
        /// The source: an embedded store's data dir; without it, the cluster named by
        /// `--etcd` and `--object-store`.
        #[arg(long, env = "STRATA_DATA_DIR")]
        data_dir: Option<std::path::PathBuf>,
        /// The source's object store URL (default for `--data-dir`: DATA_DIR/objects).
        #[arg(long, env = "STRATA_OBJECT_STORE")]
        object_store: Option<String>,
        /// Endpoint of an S3-compatible server (source and target).
        #[arg(long, env = "STRATA_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
    },
    /// S3 bucket lifecycle rules of the store (aborting stale multipart uploads, moving the
    /// cold tier to a colder storage class; never expirations). See docs/lifecycle.md.
    Lifecycle {
        #[command(subcommand)]
        action: crate::lifecycle_cmd::LifecycleAction,
        /// The store's object store: `s3://BUCKET/PREFIX`.
        #[arg(long, env = "STRATA_OBJECT_STORE", global = true)]
        object_store: Option<String>,
        /// Endpoint of an S3-compatible server.
        #[arg(long, env = "STRATA_S3_ENDPOINT", global = true)]
        s3_endpoint: Option<String>,
    },
    /// Compaction settings of the whole cluster, kept in etcd: every `strata compactor`
    /// worker applies them over its own flags (and restarts its partitions' compaction when
    /// they change).
    Compaction {
        #[command(subcommand)]
        action: CompactionAction,
    },
    /// Archival snapshots: pinned, consistent manifest sets of the store.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
        /// An embedded store's data dir (as `strata serve --data-dir`); without it, the
        /// cluster named by `--etcd` and `--object-store`.
        #[arg(long, env = "STRATA_DATA_DIR", global = true)]
        data_dir: Option<std::path::PathBuf>,
        /// The store's object store URL (a cluster's bucket; default for `--data-dir`:
        /// DATA_DIR/objects).
        #[arg(long, env = "STRATA_OBJECT_STORE", global = true)]
        object_store: Option<String>,
        /// Endpoint of an S3-compatible server.
        #[arg(long, env = "STRATA_S3_ENDPOINT", global = true)]
        s3_endpoint: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum CompactionAction {
    /// The settings in force (fields not set: each worker's own flags).
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set some settings (the others stay as they are).
    Set {
        /// leveled, size-tiered or time-window.
        #[arg(long, value_parser = crate::compaction_args::parse_name)]
        strategy: Option<String>,
        /// PARTITION=STRATEGY, repeatable.
        #[arg(long = "strategy-for", value_name = "PARTITION=STRATEGY", value_parser = crate::compaction_args::parse_override)]
        strategy_for: Vec<(u32, String)>,
        /// Time-window width, seconds.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        window_secs: Option<u64>,
        /// Parts a large job is cut into (1-64).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
        subcompactions: Option<u64>,
        /// Scheduled snapshots every this many seconds (0: off).
        #[arg(long)]
        snapshot_every_secs: Option<u64>,
        /// Scheduled snapshots are kept this long, seconds.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        snapshot_keep_secs: Option<u64>,
    },
    /// Remove every setting: each worker goes back to its own flags.
    Clear,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SnapshotAction {
    /// Pin the current state of every partition (acknowledged writes still only in the WAL
    /// included); prints the snapshot's id.
    Create,
    /// Snapshots with their time, partitions and pinned bytes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot; SSTs only it referenced are collected by the compactors later.
    Delete {
        id: String,
        /// Delete even though keyspaces were restored from it (they read its SSTs in place
        /// until their compactions rewrite them).
        #[arg(long)]
        force: bool,
    },
}

/// `strata ctl restore`: the snapshot's manifests become the first manifests of a new
/// keyspace whose SSTs stay where they are.
async fn restore(args: &CtlArgs) -> Result<()> {
    let CtlCommand::Restore {
        snapshot: id,
        at,
        to,
        to_etcd_prefix,
        data_dir,
        object_store,
        s3_endpoint,
    } = &args.command
    else {
        anyhow::bail!("not a restore");
    };
    let (id, at, to) = (id.as_deref(), at.as_deref(), to.as_str());
    let (to_etcd_prefix, data_dir) = (to_etcd_prefix.as_deref(), data_dir.as_deref());
    let object_store = object_store.as_deref();
    use strata_compactor::snapshot::{mark_restored, restored_manifest, SnapshotManifests};
    use strata_manifest::ManifestStore as _;
    let started = std::time::Instant::now();
    let etcd_url = data_dir.is_none().then_some(args.etcd.as_str());
    let source = crate::export_cmd::open_source(
        data_dir,
        etcd_url,
        &args.etcd_prefix,
        &args.etcd_auth,
        object_store,
        s3_endpoint,
    )
    .await?;
    let source_store = source.read.store.clone();
    let id = match (id, at) {
        (Some(id), _) => id.to_string(),
        (None, Some(at)) => {
            let at_ms = parse_time(at, strata_manifest::now_ms())?;
            let r = strata_compactor::snapshot::snapshot_at(&*source_store, at_ms).await?;
            println!(
                "restoring snapshot {} taken at {} ({:.1} s before {})",
                r.id,
                format_ms(r.created_ms),
                at_ms.saturating_sub(r.created_ms) as f64 / 1e3,
                format_ms(at_ms)
            );
            r.id
        }
        (None, None) => anyhow::bail!("name what to restore: --snapshot ID or --at TIME"),
    };
    let id = id.as_str();
    let snap = SnapshotManifests::load(&*source_store, id).await?;
    let target = crate::export_cmd::open(to, s3_endpoint)?;
    if to.trim_end_matches('/') == source.url.trim_end_matches('/') {
        anyhow::bail!("--to {to} is the source itself: restore into a new, empty place");
    }
    let existing = target.list("").await.context("listing the target")?;
    if let Some(o) = existing.first() {
        anyhow::bail!(
            "the target {to} is not empty ({} objects, e.g. {}): restore into a new place",
            existing.len(),
            o.path
        );
    }
    // The snapshot's SSTs may also live under other roots (its cold tier, an earlier
    // restore's source): restoring into one of them would let the new keyspace's GC treat
    // them as its own.
    let target_url = to.trim_end_matches('/');
    for p in &snap.record.partitions {
        if let Some(m) = snap.load_latest(p.partition).await? {
            if let Some(r) = m
                .roots
                .iter()
                .find(|r| r.url.trim_end_matches('/') == target_url)
            {
                anyhow::bail!(
                    "--to {to} holds SSTs the snapshot reads ({}): restore elsewhere",
                    r.url
                );
            }
        }
    }
    // Marked first: from now on the snapshot cannot be deleted without --force, so the
    // SSTs the new keyspace is about to reference stay pinned.
    mark_restored(&*source_store, id, to).await?;
    SnapshotManifests::load(&*source_store, id)
        .await
        .context("the snapshot vanished while being restored")?;
    let parts = snap.partitions();
    let uniform = strata_format::PartitionMap::uniform(parts.len() as u32);
    let mut manifests = Vec::with_capacity(parts.len());
    for part in &parts {
        let m = snap.load_latest(part.partition).await?.with_context(|| {
            format!(
                "snapshot {id} lists no manifest for partition {}",
                part.partition
            )
        })?;
        manifests.push((
            part.partition,
            restored_manifest(&m, &source.url, strata_manifest::now_ms()),
        ));
    }
    match to_etcd_prefix {
        None => {
            if parts.len() != 1 || parts[0].partition != 0 || parts[0].hash_range.is_some() {
                anyhow::bail!(
                    "snapshot {id} holds {} partitions: restore it as a cluster with --to-etcd-prefix",
                    parts.len()
                );
            }
            let store = strata_manifest::EmbeddedManifestStore::new(target.clone());
            for (p, m) in &manifests {
                store
                    .commit(*p, m)
                    .await
                    .with_context(|| format!("installing the manifest of partition {p}"))?;
            }
        }
        Some(prefix) => {
            // The new keyspace keeps the snapshot's partitions and their hash ranges: after
            // splits, the partition map is installed with the config (a split partition's
            // SSTs may still hold its moved half, which its ranges hide, as on the source).
            let split = parts
                .iter()
                .any(|p| p.hash_range != uniform.range_of(p.partition));
            let map = if split {
                let ranges: Vec<(u64, u32)> = parts
                    .iter()
                    .map(|p| (p.hash_range.map_or(0, |r| r.0), p.partition))
                    .collect();
                let map = strata_format::PartitionMap::from_ranges(ranges).map_err(|e| {
                    anyhow::anyhow!("snapshot {id}: its partitions' hash ranges are not a map: {e}")
                })?;
                if let Some(p) = parts
                    .iter()
                    .find(|p| map.range_of(p.partition) != p.hash_range)
                {
                    anyhow::bail!(
                        "snapshot {id}: partition {} has hash range {:?}, which its partitions' \
                         ranges do not tile",
                        p.partition,
                        p.hash_range
                    );
                }
                Some(map)
            } else {
                None
            };
            let etcd = strata_manifest::etcd::Etcd::connect(&args.etcd_auth.settings(
                &args.etcd,
                prefix,
                Duration::from_secs(5),
            )?)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.etcd))?;
            let view = etcd.view().await.context("reading the target prefix")?;
            if view.config.is_some() || !view.nodes.is_empty() {
                anyhow::bail!("etcd prefix {prefix} is in use: restore into an unused one");
            }
            match &map {
                None => {
                    etcd.init_config(parts.len() as u32)
                        .await
                        .context("writing the new cluster's config")?;
                }
                Some(map) => {
                    // `partitions` only names the map a node would start from without one.
                    let installed = etcd
                        .init_config_with_map(parts.len() as u32, map.ranges())
                        .await
                        .context("writing the new cluster's config and partition map")?;
                    if !installed {
                        anyhow::bail!("etcd prefix {prefix} is in use: restore into an unused one");
                    }
                }
            }
            // Outcomes of transactions whose intents the snapshot may hold.
            for (tid, rec) in &snap.record.txns {
                if let Err(e) = etcd.txn_begin(tid, rec).await {
                    anyhow::bail!("copying transaction record {tid}: {e}");
                }
            }
            let store = strata_manifest::EtcdManifestStore::new(etcd, target.clone());
            for (p, m) in &manifests {
                if !store
                    .install_restored(*p, m)
                    .await
                    .with_context(|| format!("installing the manifest of partition {p}"))?
                {
                    anyhow::bail!("partition {p} of {prefix} already has a manifest");
                }
            }
        }
    }
    let ssts: usize = manifests
        .iter()
        .map(|(_, m)| m.l0.len() + m.levels.iter().map(Vec::len).sum::<usize>())
        .sum();
    println!(
        "restored snapshot {id} ({} partitions, {ssts} SSTs read in place, {:.1} MB, nothing copied) to {to} in {:.2} s",
        manifests.len(),
        snap.record.bytes() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `strata ctl compaction show|set|clear`.
async fn compaction_settings(etcd: &Etcd, action: &CompactionAction) -> Result<()> {
    use strata_manifest::etcd::CompactionSettings;
    let view = etcd.view().await.context("reading the cluster")?;
    // The settings key's revision as read (0: absent): `set` writes only over exactly that.
    let read_rev = view.compaction_settings.as_ref().map_or(0, |(_, rev)| *rev);
    let current = match &view.compaction_settings {
        None => CompactionSettings::default(),
        Some((Ok(s), _)) => s.clone(),
        Some((Err(e), _)) => {
            if !matches!(action, CompactionAction::Clear) {
                anyhow::bail!("{e}: `strata ctl compaction clear` removes them");
            }
            CompactionSettings::default()
        }
    };
    match action {
        CompactionAction::Show { json } => {
            if *json {
                println!("{}", serde_json::to_string_pretty(&current)?);
            } else if current == CompactionSettings::default() {
                println!("no cluster-wide compaction settings: each worker uses its own flags");
            } else {
                println!("{}", serde_json::to_string_pretty(&current)?);
            }
        }
        CompactionAction::Set {
            strategy,
            strategy_for,
            window_secs,
            subcompactions,
            snapshot_every_secs,
            snapshot_keep_secs,
        } => {
            let mut next = current;
            if strategy.is_some() {
                next.strategy = strategy.clone();
            }
            for (p, name) in strategy_for {
                next.strategy_for.insert(*p, name.clone());
            }
            next.window_secs = window_secs.or(next.window_secs);
            next.subcompactions = subcompactions.or(next.subcompactions);
            next.snapshot_every_secs = snapshot_every_secs.or(next.snapshot_every_secs);
            next.snapshot_keep_secs = snapshot_keep_secs.or(next.snapshot_keep_secs);
            // What the workers will do with them, checked before anything is written.
            strata_compactor::settings::apply_settings(
                &next,
                &strata_compactor::CompactionOptions::default(),
            )
            .map_err(|e| anyhow::anyhow!("compaction settings: {e}"))?;
            if !etcd
                .set_compaction_settings(Some(&next), Some(read_rev))
                .await
                .context("writing the compaction settings")?
            {
                anyhow::bail!(
                    "the compaction settings changed while this command ran (another `ctl \
                     compaction set`?): nothing written; run it again"
                );
            }
            println!(
                "compaction settings set; workers apply them within a second:\n{}",
                serde_json::to_string_pretty(&next)?
            );
        }
        CompactionAction::Clear => {
            etcd.set_compaction_settings(None, None)
                .await
                .context("removing the compaction settings")?;
            println!("compaction settings removed: each worker uses its own flags");
        }
    }
    Ok(())
}

/// Milliseconds since the epoch for `--at`: RFC 3339, Unix milliseconds, or `N{s,m,h,d} ago`
/// (relative to `now_ms`).
fn parse_time(s: &str, now_ms: u64) -> Result<u64> {
    let t = s.trim();
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(ms);
    }
    if let Some(rel) = t.strip_suffix("ago").map(str::trim) {
        let split = rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len());
        let (n, unit) = rel.split_at(split);
        let unit_ms = match unit.trim() {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => 0,
        };
        if let (Ok(n), true) = (n.parse::<u64>(), unit_ms > 0) {
            return Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms)));
        }
    }
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(d) if d.timestamp_millis() >= 0 => Ok(d.timestamp_millis() as u64),
        _ => anyhow::bail!(
            "--at {s:?}: expected RFC 3339 (2026-11-22T14:05:00Z), Unix milliseconds, or \
             `N{{s,m,h,d}} ago`"
        ),
    }
}

/// `ms` since the epoch as RFC 3339 (UTC).
fn format_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

use strata_compactor::fleet_tasks::MAX_PIN_DELAY;

async fn snapshot(
    args: &CtlArgs,
    action: &SnapshotAction,
    data_dir: Option<&std::path::Path>,
    object_store: Option<&str>,
    s3_endpoint: &Option<String>,
) -> Result<()> {
    use strata_compactor::snapshot::{create_snapshot, delete_snapshot, list_snapshots};
    let etcd = data_dir.is_none().then_some(args.etcd.as_str());
    let source = crate::export_cmd::open_source(
        data_dir,
        etcd,
        &args.etcd_prefix,
        &args.etcd_auth,
        object_store,
        s3_endpoint,
    )
    .await?;
    match action {
        SnapshotAction::Create => {
            let started = std::time::Instant::now();
            let src = source.read;
            let rev = src.cluster.as_ref().map_or(0, |c| c.1);
            let r = create_snapshot(
                src.store,
                src.manifests,
                &src.partitions,
                rev,
                // The embedded default's compactor waits a shorter grace (its readers are
                // tracked in process): pin within its bound.
                if data_dir.is_some() {
                    strata_compactor::fleet_tasks::max_pin_delay(
                        strata_compactor::EMBEDDED_GC_GRACE,
                    )
                } else {
                    MAX_PIN_DELAY
                },
                src.cluster.as_ref().map(|c| &c.0),
                false,
            )
            .await?;
            let wal: u64 = r.partitions.iter().map(|p| p.wal_entries).sum();
            println!(
                "created snapshot {} of {} partitions ({:.1} MB of SSTs pinned, {wal} writes from the WAL) in {:.2} s",
                r.id,
                r.partitions.len(),
                r.bytes() as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        SnapshotAction::List { json } => {
            let all = list_snapshots(&*source.read.store).await?;
            if *json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(id, r)| serde_json::json!({"id": id, "complete": r.is_some(), "record": r}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<24} {:<24} {:>10} {:>12}",
                    "SNAPSHOT", "CREATED (UTC ms)", "PARTITIONS", "PINNED MB"
                );
                for (id, r) in &all {
                    match r {
                        Some(r) => println!(
                            "{id:<24} {:<24} {:>10} {:>12.1}",
                            r.created_ms,
                            r.partitions.len(),
                            r.bytes() as f64 / 1e6
                        ),
                        None => println!(
                            "{id:<24} incomplete (a create that did not finish; delete it)"
                        ),
                    }
                }
            }
        }
        SnapshotAction::Delete { id, force } => {
            let n = delete_snapshot(&*source.read.store, id, *force).await?;
            println!("deleted snapshot {id} ({n} partition manifests)");
        }
    }
    Ok(())
}

pub async fn run(args: CtlArgs) -> Result<()> {
    if let CtlCommand::Restore { .. } = &args.command {
        return restore(&args).await;
    }
    if let CtlCommand::Lifecycle {
        action,
        object_store,
        s3_endpoint,
    } = &args.command
    {
        let Some(url) = object_store else {
            anyhow::bail!("ctl lifecycle needs --object-store s3://BUCKET/PREFIX (the store's)");
        };
        return crate::lifecycle_cmd::run(url, crate::export_cmd::settings(s3_endpoint), action)
            .await;
    }
    if let CtlCommand::Snapshot {
        action,
        data_dir,
        object_store,
        s3_endpoint,
    } = &args.command
    {
        return snapshot(
            &args,
            action,
            data_dir.as_deref(),
            object_store.as_deref(),
            s3_endpoint,
        )
        .await;
    }
    let etcd = Etcd::connect(&args.etcd_auth.settings(
        &args.etcd,
        &args.etcd_prefix,
        Duration::from_secs(3),
    )?)
    .await
    .with_context(|| format!("connecting to etcd at {}", args.etcd))?;
    match args.command {
        CtlCommand::Status { json } => {
            let v = etcd.view().await.context("reading the cluster state")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&v))?);
            } else {
                print!("{}", status_text(&v));
            }
        }
        CtlCommand::Drain { node } => {
            etcd.set_drain(&node, true)
                .await
                .context("marking the node")?;
            println!("draining {node}: its partitions move to the other nodes");
        }
        CtlCommand::Compaction { action } => compaction_settings(&etcd, &action).await?,
        CtlCommand::Snapshot { .. } | CtlCommand::Restore { .. } | CtlCommand::Lifecycle { .. } => {
        } // handled above
        CtlCommand::Undrain { node } => {
            etcd.set_drain(&node, false)
                .await
                .context("unmarking the node")?;
            println!("{node} may own partitions again");
        }
    }
    Ok(())
}

/// Per partition: (owner, epoch, manifest version, durable seq, flushed seq, memtable bytes).
fn rows(v: &ClusterView) -> BTreeMap<u32, serde_json::Value> {
    let progress: BTreeMap<u32, _> = v
        .stats
        .values()
        .flatten()
        .map(|s| (s.partition, s.clone()))
        .collect();
    let map = v.partition_map_or_uniform();
    let hot = hot_partitions(
        &progress
            .values()
            .map(|s| (s.partition, s.writes_per_sec))
            .collect::<Vec<_>>(),
    );
    map.ids()
        .into_iter()
        .map(|p| {
            let o = v.owners.get(&p);
            let range = map.range_of(p).map(|(a, b)| {
                format!(
                    "{:016x}-{}",
                    a,
                    b.map_or("end".to_string(), |b| format!("{b:016x}"))
                )
            });
            let pr = progress.get(&p);
            let durable = pr.map(|s| s.durable_seq).unwrap_or(0);
            let flushed = pr.map(|s| s.flushed_seq).unwrap_or(0);
            (
                p,
                serde_json::json!({
                    "partition": p,
                    "owner": o.map(|o| o.owner.node.clone()),
                    "epoch": o.and_then(|o| o.epoch).map(|e| format!("{e:x}")),
                    "manifest_version": v.manifests.get(&p).copied().unwrap_or(0),
                    "durable_seq": durable,
                    "flushed_seq": flushed,
                    "unflushed_seqs": durable.saturating_sub(flushed),
                    "memtable_bytes": pr.map(|s| s.memtable_bytes).unwrap_or(0),
                    "writes_per_sec": pr.map(|s| s.writes_per_sec).unwrap_or(0),
                    "hot": hot.contains(&p),
                    "hash_range": range,
                    "l0_files": pr.map(|s| s.l0_files).unwrap_or(0),
                    "level_files": pr.map(|s| s.level_files.clone()).unwrap_or_default(),
                    "sst_bytes": pr.map(|s| s.sst_bytes).unwrap_or(0),
                    "read_amplification": pr.map(|s| s.read_amplification()).unwrap_or(0),
                    "space_amplification": pr.map(|s| s.space_amplification()).unwrap_or(0.0),
                    "write_amplification": v
                        .compaction_claims
                        .get(&p)
                        .and_then(|c| v.compactors.get(&c.0))
                        .and_then(|w| w.partition_write_amplification(p)),
                    "compactor": v.compaction_claims.get(&p).map(|c| c.0.clone()),
                    "corrupt": pr.and_then(|s| s.corrupt.clone()),
                }),
            )
        })
        .collect()
}

/// Partitions whose write rate is far above the others': more than 4x the median and at least
/// 20 writes/s. (Nodes split partitions that stay hot above their own `--split-writes-per-sec`.)
fn hot_partitions(rates: &[(u32, u64)]) -> Vec<u32> {
    let mut sorted: Vec<u64> = rates.iter().map(|r| r.1).collect();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    rates
        .iter()
        .filter(|(_, r)| *r >= 20 && *r > median.saturating_mul(4))
        .map(|(p, _)| *p)
        .collect()
}

/// Compaction throughput: bytes read per second of job time, in MB/s (0 before any job).
fn mb_per_sec(bytes: u64, millis: u64) -> f64 {
    if millis == 0 {
        0.0
    } else {
        bytes as f64 / 1e3 / millis as f64
    }
}

/// Files per level: `3/10/40` for the first levels, or only the non-empty ones as
/// `L27:3 L32:40` when there are many (size-tiered and time-window keep runs deep).
fn format_levels(levels: &[u64]) -> String {
    if levels.iter().all(|&n| n == 0) {
        "-".to_string()
    } else if levels.len() <= 6 {
        levels
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("/")
    } else {
        levels
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, n)| format!("L{}:{n}", i + 1))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn status_json(v: &ClusterView) -> serde_json::Value {
    let nodes: Vec<_> = v
        .nodes
        .values()
        .map(|n| {
            serde_json::json!({
                "id": n.id,
                "addr": n.addr,
                "draining": v.draining.contains(&n.id),
                "partitions": v.owners.values().filter(|o| o.owner.node == n.id).count(),
            })
        })
        .collect();
    let compactors: Vec<_> = v
        .compactors
        .values()
        .map(|c| {
            serde_json::json!({
                "id": c.id,
                "partitions": v.compaction_claims.values().filter(|w| w.0 == c.id).count(),
                "jobs": c.jobs,
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "write_amplification": c.write_amplification(),
                "busy_millis": c.busy_millis,
                "mb_per_sec": mb_per_sec(c.bytes_in, c.busy_millis),
            })
        })
        .collect();
    serde_json::json!({
        "compactors": compactors,
        "revision": v.revision,
        "partitions": v.config.map(|c| c.partitions),
        "partition_count": v.partition_map_or_uniform().ids().len(),
        "partition_map_error": v.partition_map().err(),
        "split": v.partmap.is_some(),
        "nodes": nodes,
        "partition_table": rows(v).into_values().collect::<Vec<_>>(),
    })
}

fn status_text(v: &ClusterView) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let Some(cfg) = v.config else {
        return "no cluster here yet (no node has joined)\n".into();
    };
    let owned = v.owners.len();
    if let Err(e) = v.partition_map() {
        let _ = writeln!(s, "WARNING: {e}; showing the uniform map");
    }
    let count = v.partition_map_or_uniform().ids().len();
    let _ = writeln!(
        s,
        "cluster: {} nodes, {} partitions ({} owned, {} without an owner{}), etcd revision {}",
        v.nodes.len(),
        count,
        owned,
        count - owned.min(count),
        if count as u32 != cfg.partitions {
            format!(
                "; created with {}, the rest split off hot ones",
                cfg.partitions
            )
        } else {
            String::new()
        },
        v.revision
    );
    match &v.compaction_settings {
        None => {}
        Some((Ok(c), _)) => {
            let _ = writeln!(
                s,
                "compaction settings (ctl compaction set, over the workers' flags): {}",
                serde_json::to_string(c).unwrap_or_default()
            );
        }
        Some((Err(e), _)) => {
            let _ = writeln!(s, "WARNING: {e}; workers use their flags");
        }
    }
    let _ = writeln!(
        s,
        "\n{:<20} {:<24} {:>10}  state",
        "NODE", "ADDRESS", "PARTITIONS"
    );
    for n in v.nodes.values() {
        let count = v.owners.values().filter(|o| o.owner.node == n.id).count();
        let state = if v.draining.contains(&n.id) {
            "draining"
        } else {
            "up"
        };
        let _ = writeln!(s, "{:<20} {:<24} {:>10}  {state}", n.id, n.addr, count);
    }
    for d in &v.draining {
        if !v.nodes.contains_key(d) {
            let _ = writeln!(s, "{d:<20} {:<24} {:>10}  draining (not running)", "-", 0);
        }
    }
    if v.compactors.is_empty() {
        let _ = writeln!(
            s,
            "\nno compactor workers: nodes compact the partitions they own"
        );
    } else {
        let _ = writeln!(
            s,
            "\n{:<20} {:>10} {:>8} {:>12} {:>12} {:>6} {:>7}",
            "COMPACTOR", "PARTITIONS", "JOBS", "MB READ", "MB WRITTEN", "W-AMP", "MB/S"
        );
        for c in v.compactors.values() {
            let claimed = v.compaction_claims.values().filter(|w| w.0 == c.id).count();
            let _ = writeln!(
                s,
                "{:<20} {:>10} {:>8} {:>12.1} {:>12.1} {:>6.2} {:>7.1}",
                c.id,
                claimed,
                c.jobs,
                c.bytes_in as f64 / 1e6,
                c.bytes_out as f64 / 1e6,
                c.write_amplification(),
                mb_per_sec(c.bytes_in, c.busy_millis)
            );
        }
    }
    let _ = writeln!(
        s,
        "\n{:>9}  {:<20} {:>16} {:>8} {:>12} {:>12} {:>10} {:>9} {:>4} {:>9} {:>9} {:>5} {:>5} {:>5}",
        "PARTITION",
        "OWNER",
        "EPOCH",
        "MANIFEST",
        "DURABLE SEQ",
        "FLUSHED SEQ",
        "LAG",
        "WRITES/S",
        "L0",
        "LEVELS",
        "SST MB",
        "R-AMP",
        "S-AMP",
        "W-AMP"
    );
    let mut corrupt = Vec::new();
    for (p, r) in rows(v) {
        let get = |k: &str| r.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let hot = if let Some(why) = r.get("corrupt").and_then(|x| x.as_str()) {
            corrupt.push(format!("  partition {p}: {why}"));
            "  CORRUPT"
        } else if r.get("hot").and_then(|x| x.as_bool()) == Some(true) {
            "  HOT"
        } else {
            ""
        };
        let levels: Vec<u64> = r
            .get("level_files")
            .and_then(|x| x.as_array())
            .map(|a| a.iter().map(|n| n.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default();
        let levels = format_levels(&levels);
        let amp = |k: &str| match r.get(k).and_then(|x| x.as_f64()) {
            Some(a) if a > 0.0 => format!("{a:.2}"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            s,
            "{p:>9}  {:<20} {:>16} {:>8} {:>12} {:>12} {:>10} {:>9} {:>4} {:>9} {:>9.1} {:>5} {:>5} {:>5}{hot}",
            r.get("owner").and_then(|x| x.as_str()).unwrap_or("-"),
            r.get("epoch").and_then(|x| x.as_str()).unwrap_or("-"),
            get("manifest_version"),
            get("durable_seq"),
            get("flushed_seq"),
            get("unflushed_seqs"),
            get("writes_per_sec"),
            get("l0_files"),
            levels,
            get("sst_bytes") as f64 / 1e6,
            get("read_amplification"),
            amp("space_amplification"),
            amp("write_amplification"),
        );
    }
    if !corrupt.is_empty() {
        let _ = writeln!(
            s,
            "\nCORRUPT: held by their owner but not served (requests get DATA_LOSS; the owner \
             tries again after a minute, then at doubling intervals):\n{}",
            corrupt.join("\n")
        );
    }
    let _ = writeln!(
        s,
        "\nLAG: writes durable in the WAL but not yet in an SST (what a failover replays).\n\
         LEVELS: files in L1/L2/...; R-AMP: SSTs a point read may consult (L0 files + levels).\n\
         S-AMP: SST bytes / bytes of the deepest level; W-AMP: bytes flushed + compacted /\n\
         bytes flushed, from the partition's compactor worker (- when unknown).\n\
         HOT: more than 4x the median write rate (at least 20/s); a partition that stays hot\n\
         above the nodes' --split-writes-per-sec splits its hash range in two."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::{hot_partitions, parse_time};

    #[test]
    fn restore_times_parse_in_three_forms() {
        let now = 1_795_357_908_483;
        assert_eq!(parse_time("1795357900000", now).unwrap(), 1_795_357_900_000);
        assert_eq!(parse_time("10m ago", now).unwrap(), now - 600_000);
        assert_eq!(parse_time("2d ago", now).unwrap(), now - 2 * 86_400_000);
        assert_eq!(
            parse_time("2026-11-22T14:31:48.483Z", now).unwrap(),
            1_795_357_908_483
        );
        assert_eq!(
            parse_time("2026-11-22T15:31:48.483+01:00", now).unwrap(),
            1_795_357_908_483
        );
        for bad in ["yesterday", "10 parsecs ago", "2026-11-22", "-5"] {
            let e = parse_time(bad, now).unwrap_err().to_string();
            assert!(e.contains("--at") && e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn flags_partitions_far_above_the_median() {
        let rates = [(0, 50), (1, 60), (2, 55), (3, 900), (4, 58)];
        assert_eq!(hot_partitions(&rates), vec![3]);
        // Idle clusters have no hot partitions, however skewed.
        assert!(hot_partitions(&[(0, 0), (1, 0), (2, 15)]).is_empty());
        assert!(hot_partitions(&[]).is_empty());
    }
}
