//! Tiering planning: which SSTs move to the cold tier (`CompactionOptions::tier`; whether one
//! SST is cold is `TierOptions::is_cold`), when no strategy has a merge to do. The copy itself
//! is execution (`Compactor::copy_to_tier`).

use strata_format::{Manifest, SstInfo};

use super::{metadata_job, oldest_first, Job};
use crate::CompactionOptions;

/// SSTs moved to the cold tier per job.
const TIER_BATCH: usize = 16;

/// A tier job when nothing needs merging: up to [`TIER_BATCH`] cold SSTs still in this
/// store's own root, deepest first.
pub(super) fn plan_tier(m: &Manifest, opts: &CompactionOptions, now_ms: u64) -> Option<Job> {
    let tier = opts.tier.as_ref()?;
    let elsewhere = m.root_index();
    let mut cold: Vec<SstInfo> = Vec::new();
    for (level, f) in oldest_first(m) {
        if cold.len() >= TIER_BATCH {
            break;
        }
        if !elsewhere.contains_key(&f.id)
            && tier.is_cold(level, strata_manifest::layout::sst_created_ms(f.id), now_ms)
        {
            let mut f = f.clone();
            f.level = level as u32;
            cold.push(f);
        }
    }
    if cold.is_empty() {
        return None;
    }
    let mut job = metadata_job(m, cold);
    job.tier_to = Some(tier.url.clone());
    Some(job)
}
