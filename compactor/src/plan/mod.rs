//! Planning, all pure: the [`Job`] every strategy plans, the [`Strategy`] dispatch
//! ([`plan_at`]), and the helpers the strategies share (whole-SST expiry for all, sorted runs
//! for size-tiered and time-window). The strategies are sibling modules that import only from
//! here: leveled in `leveled.rs`, size-tiered in `size_tiered.rs`, time windows in
//! `time_window.rs`, and moving cold SSTs to another root in `tiering.rs`. Rebasing a finished
//! job onto the latest manifest is in `crate::rebase`.
//!
//! Size-tiered and time-window planning (the run helpers below). Both see the partition as a
//! list of sorted runs, newest first: every L0 file is one run, then every non-empty level is
//! one run. Merges take a contiguous window of runs and write one run, so the age order of
//! runs (which is what readers rely on: a shallower place holds newer versions) never changes.
//!
//! Where the merged run goes: to the level of the oldest run merged; when only L0 files are
//! merged, to the free level just above the next older run. Commits keep the runs packed at
//! the deepest levels (see [`crate::rebase::pack`]), so that free level exists unless every
//! level holds a run; then the window also takes the next older run.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use strata_format::{Manifest, SstInfo};

use crate::CompactionOptions;

mod leveled;
mod size_tiered;
#[cfg(test)]
pub(crate) mod test_util;
mod tiering;
mod time_window;

pub use leveled::level_target_bytes;

/// How a partition's SSTs are organised and merged.
///
/// All three keep the same manifest invariants: L0 files newest first, every level a sorted
/// run of non-overlapping files, and for any key, a shallower place holds a newer version
/// than a deeper one. Readers need nothing else, so a partition can switch strategy at any
/// time (the next jobs reshape it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Leveled (the default): each level ~`level_multiplier` times the one above; low space
    /// and read amplification, more rewriting.
    #[default]
    Leveled,
    /// Size-tiered ("universal"): every level is one sorted run, ordered by age; runs of
    /// similar size are merged together. Less rewriting, more space and read amplification.
    SizeTiered,
    /// Time windows for TTL data: runs are grouped by the window their values expire in;
    /// runs of one window are merged together, never with another window, so a window's
    /// SSTs expire together and are dropped whole without being read.
    TimeWindow {
        /// Width of a window, in milliseconds of expiry time.
        window_ms: u64,
    },
}

impl Strategy {
    /// Parses `leveled`, `size-tiered` or `time-window` (the window comes separately).
    pub fn parse(name: &str, window: Duration) -> crate::Result<Strategy> {
        match name {
            "leveled" => Ok(Strategy::Leveled),
            "size-tiered" | "tiered" | "universal" => Ok(Strategy::SizeTiered),
            "time-window" | "twcs" => Ok(Strategy::TimeWindow {
                window_ms: (window.as_millis() as u64).max(1),
            }),
            other => Err(crate::CompactorError::InvalidSettings(format!(
                "unknown compaction strategy {other:?}: expected leveled, size-tiered or time-window"
            ))),
        }
    }

    /// Whether every level is a whole sorted run (size-tiered and time-window).
    pub fn is_tiered(&self) -> bool {
        !matches!(self, Strategy::Leveled)
    }
}

/// One compaction job, as planned on one manifest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Version of the manifest the job was planned on.
    pub base_version: u64,
    /// Level compacted out of (0 = L0): the newest level holding inputs.
    pub input_level: usize,
    /// Level the outputs go to (`input_level + 1` for leveled; for size-tiered and
    /// time-window merges, the level of the oldest run merged, or a free level above the
    /// next older run when only L0 files are merged).
    pub output_level: usize,
    /// Inputs from `input_level` (for L0: a suffix of L0, newest first). For a drop job:
    /// the expired SSTs dropped, each with its `level`.
    pub upper: Vec<SstInfo>,
    /// Inputs from the levels strictly between `input_level` and `output_level`, newest
    /// first (size-tiered and time-window merges take whole runs; empty for leveled).
    pub middle: Vec<SstInfo>,
    /// Files of `output_level` overlapping the upper inputs, sorted by smallest key.
    pub lower: Vec<SstInfo>,
    /// Smallest key of all inputs.
    pub smallest_key: Bytes,
    /// Largest key of all inputs.
    pub largest_key: Bytes,
    /// For each level deeper than `output_level` (`deeper[0]` is `output_level + 1`), its
    /// files overlapping `smallest_key..=largest_key`, sorted by smallest key. A tombstone
    /// or expired value can only be dropped for a key none of them covers.
    pub deeper: Vec<Vec<SstInfo>>,
    /// The single upper input overlaps nothing in `output_level` and has nothing to drop:
    /// the commit just moves it down a level, without reading or writing data.
    pub trivial_move: bool,
    /// Every SST in `upper` holds only values expired by now, and no older SST that is kept
    /// overlaps it (nothing can resurface): the commit removes them, unread.
    pub drop_expired: bool,
    /// Size-tiered and time-window: after the commit, the non-empty levels are renumbered to
    /// occupy the deepest of this many levels (order kept; metadata only), so that a merge
    /// of L0 files always finds a free level above the newest run.
    pub pack_levels: Option<usize>,
    /// The base manifest's other roots: inputs listed there are read from that root; GC
    /// deletes them there only from an owned root (this keyspace's cold tier), never from
    /// another keyspace's (a restore's source).
    pub roots: Vec<strata_format::SstRoot>,
    /// Tier job: `upper` lists cold SSTs (each with its `level`) that are copied unchanged
    /// to the cold root named here; the commit points the manifest at the copies.
    pub tier_to: Option<String>,
}

impl Job {
    /// Every input: upper level first (newest first for L0), then the middle levels, then
    /// the output level.
    pub fn inputs(&self) -> impl Iterator<Item = &SstInfo> {
        self.upper
            .iter()
            .chain(self.middle.iter())
            .chain(self.lower.iter())
    }

    /// Number of input files.
    pub fn input_files(&self) -> usize {
        self.upper.len() + self.middle.len() + self.lower.len()
    }

    /// Bytes of the input files.
    pub fn input_bytes(&self) -> u64 {
        self.inputs().map(|f| f.props.file_size).sum()
    }

    /// True when no deeper level overlaps the job's key range: every tombstone and expired
    /// value of the inputs can go.
    pub fn is_bottom(&self) -> bool {
        self.deeper.iter().all(Vec::is_empty)
    }

    /// The root an input lives under, `None` for this store's own.
    pub fn root_of(&self, id: u64) -> Option<&str> {
        self.root_entry(id).map(|r| r.url.as_str())
    }

    /// The root entry an input is listed under, `None` for this store's own root.
    pub fn root_entry(&self, id: u64) -> Option<&strata_format::SstRoot> {
        self.roots.iter().find(|r| r.ids.contains(&id))
    }

    /// True when the commit reads and writes no data (trivial moves and drops).
    pub fn metadata_only(&self) -> bool {
        self.trivial_move || self.drop_expired || self.tier_to.is_some()
    }
}

/// Plans the next job on `m`, or `None` when nothing needs compacting. From a level above
/// its target the file picked is the first one (see [`plan_with_cursors`]).
pub fn plan(m: &Manifest, opts: &CompactionOptions) -> Option<Job> {
    plan_with_cursors(m, opts, &[])
}

/// Like [`plan_at`], at the current time.
pub fn plan_with_cursors(
    m: &Manifest,
    opts: &CompactionOptions,
    cursors: &[Option<Bytes>],
) -> Option<Job> {
    plan_at(m, opts, cursors, opts.clock.unix_ms())
}

/// Plans the next job on `m` at time `now_ms`: first dropping whole SSTs whose values have
/// all expired (any strategy), then the strategy's own job. For leveled, `cursors[n - 1]`
/// is the largest key of the last file compacted out of level `n`, and the file picked
/// there is the first one starting after it (wrapping around), so successive jobs sweep the
/// key space round-robin.
pub fn plan_at(
    m: &Manifest,
    opts: &CompactionOptions,
    cursors: &[Option<Bytes>],
    now_ms: u64,
) -> Option<Job> {
    let pack = opts
        .strategy
        .is_tiered()
        .then_some(opts.tiered_levels.max(2));
    let dropped = expired_drops(m, now_ms);
    if !dropped.is_empty() {
        let mut job = metadata_job(m, dropped);
        job.drop_expired = true;
        job.pack_levels = pack;
        return Some(job);
    }
    let job = match opts.strategy {
        Strategy::Leveled => leveled::plan_leveled(m, opts, cursors),
        Strategy::SizeTiered | Strategy::TimeWindow { .. } => {
            plan_tiered(m, opts).map(|mut job| {
                job.pack_levels = pack;
                job
            })
        }
    };
    job.or_else(|| tiering::plan_tier(m, opts, now_ms))
}

/// Plans the next merge of the size-tiered or time-window strategy, or `None`.
fn plan_tiered(m: &Manifest, opts: &CompactionOptions) -> Option<Job> {
    let runs = runs(m);
    let trigger = opts.run_trigger.max(2);
    let cap = opts.tiered_levels.max(2).max(m.levels.len());
    match opts.strategy {
        Strategy::TimeWindow { window_ms } => {
            time_window::plan_time_window(m, &runs, opts, window_ms, cap)
        }
        _ => size_tiered::plan_size_tiered(m, &runs, opts, trigger, cap),
    }
}

/// A job on `files` (each with its `level` set) that reads and writes no data; the caller
/// says what it does (drop, tier).
fn metadata_job(m: &Manifest, files: Vec<SstInfo>) -> Job {
    let (smallest_key, largest_key) = key_range(&files).unwrap_or_default();
    let level = files.iter().map(|f| f.level as usize).min().unwrap_or(0);
    Job {
        base_version: m.version,
        input_level: level,
        output_level: level,
        upper: files,
        middle: Vec::new(),
        lower: Vec::new(),
        smallest_key,
        largest_key,
        deeper: Vec::new(),
        trivial_move: false,
        drop_expired: false,
        pack_levels: None,
        roots: m.roots.clone(),
        tier_to: None,
    }
}

pub(crate) fn build_job(
    m: &Manifest,
    input_level: usize,
    output_level: usize,
    upper: Vec<SstInfo>,
    middle: Vec<SstInfo>,
    lower: Vec<SstInfo>,
    trivial_move: bool,
) -> Job {
    let all: Vec<SstInfo> = upper
        .iter()
        .chain(middle.iter())
        .chain(lower.iter())
        .cloned()
        .collect();
    let (smallest_key, largest_key) = key_range(&all).unwrap_or_default();
    let deeper = deeper_overlaps(m, output_level, &smallest_key, &largest_key);
    Job {
        base_version: m.version,
        input_level,
        output_level,
        upper,
        middle,
        lower,
        smallest_key,
        largest_key,
        deeper,
        trivial_move,
        drop_expired: false,
        pack_levels: None,
        roots: m.roots.clone(),
        tier_to: None,
    }
}

/// Files of level `n` (1 = L1) of `m`; empty if the level does not exist.
pub(crate) fn level(m: &Manifest, n: usize) -> &[SstInfo] {
    n.checked_sub(1)
        .and_then(|i| m.levels.get(i))
        .map(Vec::as_slice)
        .unwrap_or_default()
}

pub(crate) fn overlaps(f: &SstInfo, lo: &[u8], hi: &[u8]) -> bool {
    f.props.smallest_key.as_ref() <= hi && f.props.largest_key.as_ref() >= lo
}

pub(crate) fn overlapping(files: &[SstInfo], lo: &[u8], hi: &[u8]) -> Vec<SstInfo> {
    files
        .iter()
        .filter(|f| overlaps(f, lo, hi))
        .cloned()
        .collect()
}

pub(crate) fn key_range(files: &[SstInfo]) -> Option<(Bytes, Bytes)> {
    let lo = files.iter().map(|f| &f.props.smallest_key).min()?.clone();
    let hi = files.iter().map(|f| &f.props.largest_key).max()?.clone();
    Some((lo, hi))
}

/// Per level below `output_level`, the files overlapping `lo..=hi`.
pub(crate) fn deeper_overlaps(
    m: &Manifest,
    output_level: usize,
    lo: &[u8],
    hi: &[u8],
) -> Vec<Vec<SstInfo>> {
    m.levels
        .iter()
        .skip(output_level)
        .map(|files| {
            let mut v = overlapping(files, lo, hi);
            v.sort_by(|a, b| a.props.smallest_key.cmp(&b.props.smallest_key));
            v
        })
        .collect()
}

pub(crate) fn ids(files: &[SstInfo]) -> HashSet<u64> {
    files.iter().map(|f| f.id).collect()
}

/// Whether every entry of the SST is a value that has expired at `now_ms`.
pub(crate) fn fully_expired(f: &SstInfo, now_ms: u64) -> bool {
    f.props.entries > 0
        && f.props.tombstones == 0
        && f.props.expiring == f.props.entries
        && f.props.max_expires_at_ms != 0
        && f.props.max_expires_at_ms <= now_ms
}

/// Every SST of `m` paired with its level (0 = L0), oldest place first: the deepest level
/// first, L0 last and oldest L0 file first. Within a level files do not overlap, so their
/// order there does not matter.
pub(crate) fn oldest_first(m: &Manifest) -> Vec<(usize, &SstInfo)> {
    let mut out = Vec::new();
    for (i, files) in m.levels.iter().enumerate().rev() {
        out.extend(files.iter().map(|f| (i + 1, f)));
    }
    out.extend(m.l0.iter().rev().map(|f| (0, f)));
    out
}

/// SSTs that can be dropped whole: every value in them has expired, and no kept SST in an
/// older place overlaps them, so no older version of any of their keys can resurface (a
/// newer version above them shadows them anyway). Returned with `level` set to where they
/// are.
pub(crate) fn expired_drops(m: &Manifest, now_ms: u64) -> Vec<SstInfo> {
    let mut kept: Vec<&SstInfo> = Vec::new();
    let mut dropped = Vec::new();
    for (level, f) in oldest_first(m) {
        let lo = f.props.smallest_key.as_ref();
        let hi = f.props.largest_key.as_ref();
        if fully_expired(f, now_ms) && !kept.iter().any(|k| overlaps(k, lo, hi)) {
            let mut f = f.clone();
            f.level = level as u32;
            dropped.push(f);
        } else {
            kept.push(f);
        }
    }
    dropped
}

// Sorted runs, shared by size-tiered and time-window (see the module documentation).

/// One sorted run.
#[derive(Debug)]
struct Run<'a> {
    /// 0 for an L0 file, else the level.
    level: usize,
    files: &'a [SstInfo],
    bytes: u64,
}

fn runs(m: &Manifest) -> Vec<Run<'_>> {
    let mut out: Vec<Run<'_>> =
        m.l0.iter()
            .map(|f| Run {
                level: 0,
                files: std::slice::from_ref(f),
                bytes: f.props.file_size,
            })
            .collect();
    for (i, files) in m.levels.iter().enumerate() {
        if !files.is_empty() {
            out.push(Run {
                level: i + 1,
                files,
                bytes: files.iter().map(|f| f.props.file_size).sum(),
            });
        }
    }
    out
}

/// The window of runs `[from, to)` to merge under the size-tiered rules, within `[from, to)`
/// (which holds at least `trigger` runs):
/// 1. space amplification: when the runs above the oldest hold more than
///    `max_space_amp_percent` of its bytes, all of them;
/// 2. size ratio: from the newest run on, the longest window in which each next older run is
///    at most `size_ratio_percent` larger than the runs before it together (at least 2 runs);
/// 3. otherwise the newest runs, just enough to bring the count below `trigger`.
fn pick_size_tiered(
    runs: &[Run<'_>],
    from: usize,
    to: usize,
    opts: &CompactionOptions,
    trigger: usize,
) -> (usize, usize) {
    let window = &runs[from..to];
    if let Some((last, above)) = window.split_last() {
        let above: u64 = above.iter().map(|r| r.bytes).sum();
        if window.len() >= 2
            && above.saturating_mul(100)
                >= opts.max_space_amp_percent.saturating_mul(last.bytes.max(1))
        {
            return (from, to);
        }
    }
    for i in from..to {
        let mut acc = runs[i].bytes;
        let mut j = i + 1;
        while j < to
            && runs[j].bytes.saturating_mul(100)
                <= acc.saturating_mul(100 + opts.size_ratio_percent)
        {
            acc = acc.saturating_add(runs[j].bytes);
            j += 1;
        }
        if j - i >= 2 {
            return (i, j);
        }
    }
    let width = (to - from + 2).saturating_sub(trigger).clamp(2, to - from);
    (from, from + width)
}

/// The job merging runs `[start, end)` into one, placed as the module explains. The window
/// grows when it must: a window starting in L0 takes every older L0 file too (an output in
/// L0 would be several runs), and an L0-only window takes the next older run when no level
/// is free above it.
fn window_job(m: &Manifest, runs: &[Run<'_>], start: usize, end: usize, cap: usize) -> Option<Job> {
    let n_l0 = m.l0.len();
    let mut end = end.min(runs.len());
    if start < n_l0 && end < n_l0 {
        end = n_l0;
    }
    let output_level = if end <= n_l0 {
        match runs.get(end) {
            None => cap,
            Some(next) if next.level >= 2 => next.level - 1,
            Some(next) => {
                end += 1;
                next.level
            }
        }
    } else {
        runs.get(end - 1)?.level
    };
    if end.saturating_sub(start) < 2 {
        return None;
    }
    let input_level = runs.get(start)?.level;
    let upper: Vec<SstInfo> = if input_level == 0 {
        m.l0.get(start..n_l0)?.to_vec()
    } else {
        level(m, input_level).to_vec()
    };
    let first_level_run = start.max(n_l0);
    let mut middle = Vec::new();
    for r in runs.get(first_level_run..end)? {
        if r.level != input_level && r.level != output_level {
            middle.extend(r.files.iter().cloned());
        }
    }
    let lower = if output_level != input_level && end > n_l0 {
        level(m, output_level).to_vec()
    } else {
        Vec::new()
    };
    Some(build_job(
        m,
        input_level,
        output_level,
        upper,
        middle,
        lower,
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::plan_at;
    use crate::plan::test_util::tiered::{ids, manifest, sst, ttl};
    use crate::rebase::rebase;
    use crate::CompactionOptions;

    #[test]
    fn an_expired_sst_above_live_older_data_is_not_dropped() {
        // An expired newer version shadows a live older one: dropping it would resurrect.
        let m = manifest(
            vec![ttl(sst(2, "a", "c", 10), 50)],
            vec![vec![sst(1, "b", "d", 10)]],
        );
        let o = CompactionOptions::default();
        assert!(plan_at(&m, &o, &[], 100).is_none());
        // Once the older file is gone (or does not overlap) it can go.
        let m2 = manifest(
            vec![ttl(sst(2, "a", "c", 10), 50)],
            vec![vec![sst(1, "d", "e", 10)]],
        );
        let job = plan_at(&m2, &o, &[], 100).unwrap();
        assert!(job.drop_expired);
        assert_eq!(ids(&job.upper), vec![2]);
        // Not before it expires.
        assert!(plan_at(&m2, &o, &[], 49).is_none());
        // The drop is re-checked at commit: an overlapping older file appearing cancels it.
        let mut latest = m2.clone();
        latest.levels.push(vec![sst(7, "a", "a", 10)]);
        assert!(rebase(&latest, &job, &[], 100).is_err());
    }
}
