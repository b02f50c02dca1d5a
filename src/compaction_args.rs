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
}

const NAMES: &str = "leveled, size-tiered or time-window";

fn parse_name(s: &str) -> Result<String, String> {
    Strategy::parse(s, Duration::from_secs(1))
        .map(|_| s.to_string())
        .map_err(|_| format!("unknown strategy {s:?}: expected {NAMES}"))
}

fn parse_override(s: &str) -> Result<(u32, String), String> {
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
    /// The options these flags describe, on top of `base`.
    pub fn options(&self, base: CompactionOptions) -> CompactionOptions {
        let window = Duration::from_secs(self.compaction_window_secs);
        // Both were validated by the parsers above.
        let strategy = Strategy::parse(&self.compaction_strategy, window).unwrap_or_default();
        let overrides = self
            .compaction_strategy_for
            .iter()
            .map(|(p, name)| (*p, Strategy::parse(name, window).unwrap_or_default()))
            .collect();
        CompactionOptions {
            strategy,
            strategy_overrides: overrides,
            subcompactions: self.subcompactions as usize,
            ..base
        }
    }
}
