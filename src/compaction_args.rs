//! Compaction flags shared by `strata serve` (in-process compaction) and `strata compactor`.

use std::time::Duration;

use strata_compactor::{CompactionOptions, Strategy};

#[derive(clap::Args, Debug, Clone)]
pub struct CompactionArgs {
    /// Compaction strategy of every partition: `leveled` (default), `size-tiered` (less
    /// rewriting, more space), or `time-window` (TTL data: expired windows dropped unread).
    #[arg(long, default_value = "leveled", value_parser = parse_name)]
    pub compaction_strategy: String,
    /// Strategy of one partition, as `PARTITION=STRATEGY` (repeatable); overrides
    /// `--compaction-strategy` there.
    #[arg(long = "compaction-strategy-for", value_name = "PARTITION=STRATEGY", value_parser = parse_override)]
    pub compaction_strategy_for: Vec<(u32, String)>,
    /// Width of a time window (time-window strategy), seconds of expiry time.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub compaction_window_secs: u64,
    /// Parts a large compaction job is cut into by key range and merged in parallel
    /// (1 = off).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub subcompactions: u64,
    /// Memory one compaction job may use, MiB: 24 MiB per subcompaction for its outputs
    /// (written in 8 MiB parts as they fill), the rest to read ahead in its inputs (they
    /// stream through chunks sized to fit).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..))]
    pub compaction_memory_mb: u64,
    /// Cold tier: SSTs that are cold (`--tier-min-level`, `--tier-min-age-secs`) move to this
    /// root (`s3://BUCKET/PREFIX`, another bucket or prefix; `file:///DIR`). Reads of them
    /// keep working, through the cache.
    #[arg(long)]
    pub tier_url: Option<String>,
    /// S3 storage class of the cold copies (e.g. `STANDARD_IA`, `GLACIER_IR`).
    #[arg(long, requires = "tier_url")]
    pub tier_storage_class: Option<String>,
    /// SSTs in this level or deeper are cold (1 = L1).
    #[arg(long, requires = "tier_url", value_parser = clap::value_parser!(u64).range(1..))]
    pub tier_min_level: Option<u64>,
    /// SSTs at least this old (seconds since written) are cold.
    #[arg(long, requires = "tier_url")]
    pub tier_min_age_secs: Option<u64>,
    /// Compacted inputs wait out a 5-minute grace before deletion; above this many MiB of
    /// them (all partitions of the process together), jobs that write pause until deletions
    /// catch up. Default: 8192 on a local directory store, no limit on S3; 0: no limit.
    #[arg(long)]
    pub gc_pending_budget_mb: Option<u64>,
    /// Snapshot the store every this many seconds (0: no schedule). The interval is the most a
    /// point-in-time restore (`strata ctl restore --at`) can lose; 300 meets a 5-minute RPO.
    /// In a cluster one compactor worker at a time runs the schedule.
    #[arg(long, default_value_t = 0)]
    pub snapshot_every_secs: u64,
    /// Scheduled snapshots are deleted once older than this (how far back a restore can go;
    /// they pin the SSTs they reference until then). Snapshots made by hand are kept.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_keep_secs: u64,
}

const NAMES: &str = "leveled, size-tiered or time-window";

pub(crate) fn parse_name(s: &str) -> Result<String, String> {
    Strategy::parse(s, Duration::from_secs(1))
        .map(|_| s.to_string())
        .map_err(|_| format!("unknown strategy {s:?}: expected {NAMES}"))
}

pub(crate) fn parse_override(s: &str) -> Result<(u32, String), String> {
    let (p, name) = s
        .split_once('=')
        .ok_or_else(|| format!("expected PARTITION=STRATEGY, got {s:?}"))?;
    let p: u32 = p
        .trim()
        .parse()
        .map_err(|_| format!("partition {p:?} is not a number"))?;
    Ok((p, parse_name(name.trim())?))
}

impl CompactionArgs {
    /// Refuses combinations the parser cannot express. `store_url` is the keyspace's own
    /// object store, which the cold tier must not be.
    pub fn check(&self, store_url: Option<&str>) -> anyhow::Result<()> {
        if let Some(url) = &self.tier_url {
            if store_url.is_some_and(|s| s.trim_end_matches('/') == url.trim_end_matches('/')) {
                anyhow::bail!(
                    "--tier-url {url} is the store itself: the cold tier must be another bucket or prefix"
                );
            }
            if self.tier_min_level.is_none() && self.tier_min_age_secs.is_none() {
                anyhow::bail!(
                    "--tier-url {url} needs --tier-min-level or --tier-min-age-secs (which SSTs are cold)"
                );
            }
            if url.starts_with("memory://") {
                anyhow::bail!("--tier-url {url}: the cold tier must be durable (s3:// or file://)");
            }
        }
        Ok(())
    }

    /// The snapshot schedule these flags describe, if any.
    pub fn snapshot_schedule(&self) -> Option<strata_compactor::snapshot::SnapshotSchedule> {
        (self.snapshot_every_secs > 0).then(|| strata_compactor::snapshot::SnapshotSchedule {
            every: Duration::from_secs(self.snapshot_every_secs),
            keep: Duration::from_secs(self.snapshot_keep_secs),
        })
    }

    /// The deletion budget for a store at `store_url` (one per process, shared by its
    /// compactors).
    pub fn deletion_budget(
        &self,
        store_url: &str,
    ) -> Option<std::sync::Arc<strata_compactor::DeletionBudget>> {
        let mb = match self.gc_pending_budget_mb {
            Some(mb) => mb,
            // A local disk fills up; an object store only bills the bytes for minutes.
            None if store_url.starts_with("file://") => 8192,
            None => 0,
        };
        (mb > 0).then(|| strata_compactor::DeletionBudget::new(mb << 20))
    }

    /// The options these flags describe, on top of `base`.
    pub fn options(&self, base: CompactionOptions) -> CompactionOptions {
        // Each merge of a job holds three 8 MiB output parts; the rest is read-ahead.
        let needed = self.subcompactions * 32;
        if self.compaction_memory_mb < needed {
            tracing::warn!(
                compaction_memory_mb = self.compaction_memory_mb,
                subcompactions = self.subcompactions,
                "--compaction-memory-mb is below 32 MiB per subcompaction ({needed} MiB): \
                 outputs take 24 MiB per subcompaction and inputs are read in the smallest \
                 chunks"
            );
        }
        let window = Duration::from_secs(self.compaction_window_secs);
        // Both were validated by the parsers above.
        let strategy = Strategy::parse(&self.compaction_strategy, window).unwrap_or_default();
        let overrides = self
            .compaction_strategy_for
            .iter()
            .map(|(p, name)| (*p, Strategy::parse(name, window).unwrap_or_default()))
            .collect();
        let tier = self
            .tier_url
            .as_ref()
            .map(|url| strata_compactor::TierOptions {
                url: url.trim_end_matches('/').to_string(),
                storage_class: self.tier_storage_class.clone(),
                min_level: self.tier_min_level.map(|l| l as usize),
                min_age: self.tier_min_age_secs.map(Duration::from_secs),
            });
        CompactionOptions {
            strategy,
            strategy_overrides: overrides,
            subcompactions: self.subcompactions as usize,
            memory_bytes: self.compaction_memory_mb << 20,
            tier,
            ..base
        }
    }
}
