//! Planning (leveled here, size-tiered and time-window in `tiered.rs`, whole-SST expiry for
//! all), and rebasing a finished job onto the latest manifest. All pure.

use std::collections::HashSet;

use bytes::Bytes;
use strata_format::{Manifest, SstInfo};

use crate::{CompactionOptions, Strategy};

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

/// Size target of level `n` (1 = L1): `l1_target_bytes * level_multiplier^(n-1)`.
pub fn level_target_bytes(opts: &CompactionOptions, n: usize) -> u64 {
    let mut target = opts.l1_target_bytes;
    for _ in 1..n {
        target = target.saturating_mul(opts.level_multiplier.max(1));
    }
    target
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
    plan_at(m, opts, cursors, crate::now_ms())
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
        Strategy::Leveled => plan_leveled(m, opts, cursors),
        Strategy::SizeTiered | Strategy::TimeWindow { .. } => crate::tiered::plan_tiered(m, opts)
            .map(|mut job| {
                job.pack_levels = pack;
                job
            }),
    };
    job.or_else(|| plan_tier(m, opts, now_ms))
}

/// SSTs moved to the cold tier per job.
const TIER_BATCH: usize = 16;

/// A tier job when nothing needs merging: up to [`TIER_BATCH`] cold SSTs still in this
/// store's own root, deepest first.
fn plan_tier(m: &Manifest, opts: &CompactionOptions, now_ms: u64) -> Option<Job> {
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

fn plan_leveled(m: &Manifest, opts: &CompactionOptions, cursors: &[Option<Bytes>]) -> Option<Job> {
    if !m.l0.is_empty() && m.l0.len() >= opts.l0_trigger.max(1) {
        let upper = m.l0.clone();
        let (lo, hi) = key_range(&upper)?;
        let lower = overlapping(level(m, 1), &lo, &hi);
        return Some(build_job(m, 0, 1, upper, Vec::new(), lower, false));
    }
    let max_levels = opts.max_levels.max(1);
    for n in 1..max_levels {
        let files = level(m, n);
        if files.is_empty() {
            continue;
        }
        let total: u64 = files.iter().map(|f| f.props.file_size).sum();
        if total <= level_target_bytes(opts, n) {
            continue;
        }
        let cursor = cursors.get(n - 1).and_then(Option::as_ref);
        let picked = cursor
            .and_then(|c| files.iter().find(|f| f.props.smallest_key > *c))
            .or_else(|| files.first())?
            .clone();
        let lower = overlapping(
            level(m, n + 1),
            &picked.props.smallest_key,
            &picked.props.largest_key,
        );
        let trivial =
            lower.is_empty() && picked.props.tombstones == 0 && picked.props.expiring == 0;
        return Some(build_job(
            m,
            n,
            n + 1,
            vec![picked],
            Vec::new(),
            lower,
            trivial,
        ));
    }
    None
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
fn deeper_overlaps(m: &Manifest, output_level: usize, lo: &[u8], hi: &[u8]) -> Vec<Vec<SstInfo>> {
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

fn ids(files: &[SstInfo]) -> HashSet<u64> {
    files.iter().map(|f| f.id).collect()
}

/// Whether every entry of the SST is a value that has expired at `now_ms`.
fn fully_expired(f: &SstInfo, now_ms: u64) -> bool {
    f.props.entries > 0
        && f.props.tombstones == 0
        && f.props.expiring == f.props.entries
        && f.props.max_expires_at_ms != 0
        && f.props.max_expires_at_ms <= now_ms
}

/// Every SST of `m` paired with its level (0 = L0), oldest place first: the deepest level
/// first, L0 last and oldest L0 file first. Within a level files do not overlap, so their
/// order there does not matter.
fn oldest_first(m: &Manifest) -> Vec<(usize, &SstInfo)> {
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

/// The manifest that commits `job` (whose results are `outputs`) on top of `latest`, or the
/// reason the job must be abandoned.
///
/// The successor copies everything of `latest` (writer epoch, WAL replay point, flushed seq,
/// next SST id, L0 files flushed since planning) except that the inputs are replaced by the
/// outputs. The job is abandoned when an input is no longer where it was planned, or when
/// files overlapping the job's key range appeared in a level it writes to or in a deeper
/// level (the keep/drop decisions of the merge would no longer hold).
pub(crate) fn rebase(
    latest: &Manifest,
    job: &Job,
    outputs: &[SstInfo],
    now_ms: u64,
) -> Result<Manifest, String> {
    let mut next = if let Some(url) = &job.tier_to {
        rebase_tier(latest, job, url)?
    } else if job.drop_expired {
        rebase_drop(latest, job, now_ms)?
    } else {
        rebase_merge(latest, job, outputs)?
    };
    next.version = latest.version + 1;
    next.created_ms = now_ms;
    if let Some(n) = job.pack_levels {
        pack(&mut next, n);
    }
    next.prune_roots();
    Ok(next)
}

/// Points the manifest at the cold copies of the job's SSTs that it still lists (where they
/// are, unchanged: the copies are byte-identical). Abandoned if it lists none of them.
fn rebase_tier(latest: &Manifest, job: &Job, url: &str) -> Result<Manifest, String> {
    let elsewhere = latest.root_index();
    let listed: HashSet<u64> = latest
        .ssts()
        .filter(|f| !elsewhere.contains_key(&f.id))
        .map(|f| f.id)
        .collect();
    let moved: Vec<u64> = job
        .upper
        .iter()
        .map(|f| f.id)
        .filter(|id| listed.contains(id))
        .collect();
    if moved.is_empty() {
        return Err("every SST of the tier job was compacted away meanwhile".into());
    }
    let mut next = latest.clone();
    match next.roots.iter_mut().find(|r| r.url == url && r.owned) {
        Some(r) => r.ids.extend(moved),
        None => next.roots.push(strata_format::SstRoot {
            url: url.to_string(),
            ids: moved,
            owned: true,
        }),
    }
    Ok(next)
}

fn rebase_drop(latest: &Manifest, job: &Job, now_ms: u64) -> Result<Manifest, String> {
    let drop_ids = ids(&job.upper);
    for f in &job.upper {
        let place: &[SstInfo] = if f.level == 0 {
            &latest.l0
        } else {
            level(latest, f.level as usize)
        };
        if !place.iter().any(|g| g.id == f.id) {
            return Err(format!("expired SST {} is no longer in L{}", f.id, f.level));
        }
    }
    // Re-check on the latest manifest: every dropped SST must still be droppable with the
    // others gone and everything else kept.
    let mut kept: Vec<&SstInfo> = Vec::new();
    for (_, f) in oldest_first(latest) {
        if drop_ids.contains(&f.id) {
            let (lo, hi) = (f.props.smallest_key.as_ref(), f.props.largest_key.as_ref());
            if !fully_expired(f, now_ms) || kept.iter().any(|k| overlaps(k, lo, hi)) {
                return Err(format!("SST {} can no longer be dropped whole", f.id));
            }
        } else {
            kept.push(f);
        }
    }
    let mut next = latest.clone();
    next.l0.retain(|f| !drop_ids.contains(&f.id));
    for files in &mut next.levels {
        files.retain(|f| !drop_ids.contains(&f.id));
    }
    Ok(next)
}

fn rebase_merge(latest: &Manifest, job: &Job, outputs: &[SstInfo]) -> Result<Manifest, String> {
    let upper_ids = ids(&job.upper);
    let upper_level: &[SstInfo] = if job.input_level == 0 {
        &latest.l0
    } else {
        level(latest, job.input_level)
    };
    let present = ids(upper_level);
    if let Some(id) = upper_ids.iter().find(|id| !present.contains(id)) {
        return Err(format!(
            "input SST {id} is no longer in L{}",
            job.input_level
        ));
    }
    if job.input_level == 0 {
        // L0 files not in the job must all be newer (in front of) every input.
        let first_input = latest.l0.iter().position(|f| upper_ids.contains(&f.id));
        if let Some(first) = first_input {
            if latest
                .l0
                .iter()
                .skip(first)
                .any(|f| !upper_ids.contains(&f.id))
            {
                return Err("an L0 file older than the job's inputs appeared".into());
            }
        }
    }
    // The levels below the input level that the job reads or writes: every input planned
    // there must still be there, and every file there overlapping the job must be an input.
    let below_ids: HashSet<u64> = job
        .middle
        .iter()
        .chain(job.lower.iter())
        .map(|f| f.id)
        .collect();
    let mut present = HashSet::new();
    for n in (job.input_level + 1)..=job.output_level {
        for f in level(latest, n) {
            present.insert(f.id);
            if !below_ids.contains(&f.id) && overlaps(f, &job.smallest_key, &job.largest_key) {
                return Err(format!("SST {} overlapping the job appeared in L{n}", f.id));
            }
        }
    }
    if let Some(id) = below_ids.iter().find(|id| !present.contains(id)) {
        return Err(format!(
            "input SST {id} is no longer in L{}..=L{}",
            job.input_level + 1,
            job.output_level
        ));
    }
    let planned: HashSet<u64> = job.deeper.iter().flatten().map(|f| f.id).collect();
    let now_deeper: HashSet<u64> = deeper_overlaps(
        latest,
        job.output_level,
        &job.smallest_key,
        &job.largest_key,
    )
    .iter()
    .flatten()
    .map(|f| f.id)
    .collect();
    if planned != now_deeper {
        return Err("the levels below the output level changed under the job's key range".into());
    }

    let mut next = latest.clone();
    next.l0.retain(|f| !upper_ids.contains(&f.id));
    for files in &mut next.levels {
        files.retain(|f| !upper_ids.contains(&f.id) && !below_ids.contains(&f.id));
    }
    while next.levels.len() < job.output_level {
        next.levels.push(Vec::new());
    }
    let files = next
        .levels
        .get_mut(job.output_level - 1)
        .ok_or_else(|| "output level missing".to_string())?;
    files.extend(outputs.iter().cloned().map(|mut f| {
        f.level = job.output_level as u32;
        f
    }));
    files.sort_by(|a, b| a.props.smallest_key.cmp(&b.props.smallest_key));
    for pair in files.windows(2) {
        if let [a, b] = pair {
            if a.props.largest_key >= b.props.smallest_key {
                return Err(format!(
                    "SSTs {} and {} would overlap in L{}",
                    a.id, b.id, job.output_level
                ));
            }
        }
    }
    Ok(next)
}

/// Renumbers the non-empty levels of `m` to occupy the deepest of `n` levels, in order
/// (metadata only: every level stays a sorted run and keeps its place relative to the
/// others). Never shrinks below the levels already in use.
pub(crate) fn pack(m: &mut Manifest, n: usize) {
    let runs: Vec<Vec<SstInfo>> = m.levels.drain(..).filter(|l| !l.is_empty()).collect();
    let total = n.max(runs.len());
    m.levels = vec![Vec::new(); total - runs.len()];
    m.levels.extend(runs);
    for (i, files) in m.levels.iter_mut().enumerate() {
        for f in files {
            f.level = (i + 1) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_format::SstProps;

    fn sst(id: u64, level: u32, lo: &str, hi: &str, size: u64) -> SstInfo {
        SstInfo {
            id,
            level,
            props: SstProps {
                smallest_key: Bytes::copy_from_slice(lo.as_bytes()),
                largest_key: Bytes::copy_from_slice(hi.as_bytes()),
                min_seq: 1,
                max_seq: 1,
                entries: 1,
                tombstones: 0,
                expiring: 0,
                max_expires_at_ms: 0,
                data_bytes: size,
                file_size: size,
            },
        }
    }

    fn opts() -> CompactionOptions {
        CompactionOptions {
            l0_trigger: 2,
            l1_target_bytes: 100,
            level_multiplier: 10,
            max_levels: 3,
            ..CompactionOptions::default()
        }
    }

    fn manifest(l0: Vec<SstInfo>, levels: Vec<Vec<SstInfo>>) -> Manifest {
        Manifest {
            version: 9,
            writer_epoch: 3,
            last_flushed_seq: 77,
            wal_replay_from: 12,
            next_sst_id: 500,
            l0,
            levels,
            roots: Vec::new(),
            created_ms: 1,
            dropped_tombstone_seq: 0,
        }
    }

    fn job_ids(files: &[SstInfo]) -> Vec<u64> {
        files.iter().map(|f| f.id).collect()
    }

    #[test]
    fn nothing_to_do() {
        assert!(plan(&Manifest::default(), &opts()).is_none());
        let m = manifest(
            vec![sst(1, 0, "a", "z", 10)],
            vec![
                vec![sst(2, 1, "a", "z", 100)],
                vec![sst(3, 2, "a", "z", 1000)],
            ],
        );
        assert!(plan(&m, &opts()).is_none());
    }

    #[test]
    fn targets_grow_by_the_multiplier() {
        let o = opts();
        assert_eq!(level_target_bytes(&o, 1), 100);
        assert_eq!(level_target_bytes(&o, 2), 1_000);
        assert_eq!(level_target_bytes(&o, 3), 10_000);
        let huge = CompactionOptions {
            l1_target_bytes: u64::MAX / 2,
            ..o
        };
        assert_eq!(level_target_bytes(&huge, 5), u64::MAX);
    }

    #[test]
    fn l0_trigger_takes_all_l0_and_overlapping_l1() {
        let m = manifest(
            vec![sst(11, 0, "d", "f", 10), sst(10, 0, "c", "e", 10)],
            vec![
                vec![
                    sst(1, 1, "a", "b", 10),
                    sst(2, 1, "b1", "cc", 10),
                    sst(3, 1, "e", "g", 10),
                    sst(4, 1, "h", "k", 10),
                ],
                vec![sst(5, 2, "a", "c", 10), sst(6, 2, "i", "j", 10)],
            ],
        );
        let job = plan(&m, &opts()).unwrap();
        assert_eq!((job.input_level, job.output_level), (0, 1));
        assert_eq!(job_ids(&job.upper), vec![11, 10]);
        assert_eq!(job_ids(&job.lower), vec![2, 3]);
        assert_eq!(job.smallest_key, Bytes::from("b1"));
        assert_eq!(job.largest_key, Bytes::from("g"));
        assert_eq!(job.deeper.len(), 1);
        assert_eq!(job_ids(&job.deeper[0]), vec![5]);
        assert!(!job.is_bottom());
        assert!(!job.trivial_move);
        assert_eq!(job.base_version, 9);
        assert_eq!(job.input_files(), 4);
        assert_eq!(job.input_bytes(), 40);
    }

    #[test]
    fn l0_wins_over_oversized_levels() {
        let m = manifest(
            vec![sst(11, 0, "a", "b", 10), sst(10, 0, "a", "b", 10)],
            vec![vec![sst(1, 1, "x", "y", 1_000)]],
        );
        assert_eq!(plan(&m, &opts()).unwrap().input_level, 0);
    }

    #[test]
    fn oversized_level_pushes_one_file_down() {
        let m = manifest(
            vec![],
            vec![
                vec![
                    sst(1, 1, "a", "c", 60),
                    sst(2, 1, "d", "f", 60),
                    sst(3, 1, "g", "i", 60),
                ],
                vec![
                    sst(5, 2, "b", "d", 10),
                    sst(6, 2, "e", "e", 10),
                    sst(7, 2, "h", "z", 10),
                ],
            ],
        );
        let job = plan(&m, &opts()).unwrap();
        assert_eq!((job.input_level, job.output_level), (1, 2));
        assert_eq!(job_ids(&job.upper), vec![1]);
        assert_eq!(job_ids(&job.lower), vec![5]);
        assert_eq!(job.smallest_key, Bytes::from("a"));
        assert_eq!(job.largest_key, Bytes::from("d"));
        assert!(job.is_bottom());
        // Round-robin: after "c" comes the file starting at "d", then "g", then wrap.
        let job = plan_with_cursors(&m, &opts(), &[Some(Bytes::from("c"))]).unwrap();
        assert_eq!(job_ids(&job.upper), vec![2]);
        assert_eq!(job_ids(&job.lower), vec![5, 6]);
        let job = plan_with_cursors(&m, &opts(), &[Some(Bytes::from("f"))]).unwrap();
        assert_eq!(job_ids(&job.upper), vec![3]);
        let job = plan_with_cursors(&m, &opts(), &[Some(Bytes::from("i"))]).unwrap();
        assert_eq!(job_ids(&job.upper), vec![1]);
    }

    #[test]
    fn first_oversized_level_wins_and_the_last_level_is_never_compacted() {
        let m = manifest(
            vec![],
            vec![
                vec![sst(1, 1, "a", "c", 50)],
                vec![sst(2, 2, "a", "c", 5_000)],
                vec![sst(3, 3, "a", "c", 1_000_000)],
            ],
        );
        let job = plan(&m, &opts()).unwrap();
        assert_eq!((job.input_level, job.output_level), (2, 3));
        assert_eq!(job_ids(&job.lower), vec![3]);
        // L3 is the last level of max_levels = 3: over target, but stays.
        let m = manifest(
            vec![],
            vec![vec![], vec![], vec![sst(3, 3, "a", "c", 1_000_000)]],
        );
        assert!(plan(&m, &opts()).is_none());
    }

    #[test]
    fn trivial_move_when_nothing_overlaps_and_nothing_drops() {
        let m = manifest(
            vec![],
            vec![vec![sst(1, 1, "a", "c", 500)], vec![sst(2, 2, "x", "z", 1)]],
        );
        let job = plan(&m, &opts()).unwrap();
        assert!(job.trivial_move);
        assert!(job.lower.is_empty());
        let mut with_tombstones = m.clone();
        with_tombstones.levels[0][0].props.tombstones = 1;
        assert!(!plan(&with_tombstones, &opts()).unwrap().trivial_move);
    }

    #[test]
    fn rebase_keeps_new_l0_files_and_header_fields() {
        let base = manifest(
            vec![sst(11, 0, "d", "f", 10), sst(10, 0, "c", "e", 10)],
            vec![vec![sst(1, 1, "a", "b", 10), sst(3, 1, "e", "g", 10)]],
        );
        let job = plan(&base, &opts()).unwrap();
        let outputs = vec![sst(20, 0, "c", "dz", 10), sst(21, 0, "e", "g", 10)];
        let mut latest = base.clone();
        latest.version = 12;
        latest.writer_epoch = 4;
        latest.last_flushed_seq = 99;
        latest.wal_replay_from = 15;
        latest.l0.insert(0, sst(12, 0, "a", "z", 10));
        let next = rebase(&latest, &job, &outputs, 1234).unwrap();
        assert_eq!(next.version, 13);
        assert_eq!(next.writer_epoch, 4);
        assert_eq!(next.last_flushed_seq, 99);
        assert_eq!(next.wal_replay_from, 15);
        assert_eq!(next.next_sst_id, 500);
        assert_eq!(next.created_ms, 1234);
        assert_eq!(job_ids(&next.l0), vec![12]);
        assert_eq!(job_ids(&next.levels[0]), vec![1, 20, 21]);
        assert!(next.levels[0].iter().all(|f| f.level == 1));
    }

    #[test]
    fn rebase_abandons_when_inputs_or_ranges_changed() {
        let base = manifest(
            vec![sst(11, 0, "d", "f", 10), sst(10, 0, "c", "e", 10)],
            vec![vec![sst(3, 1, "e", "g", 10)], vec![]],
        );
        let job = plan(&base, &opts()).unwrap();
        let outputs = vec![sst(20, 0, "c", "g", 10)];
        // An L0 input was compacted by someone else.
        let mut latest = base.clone();
        latest.l0.pop();
        assert!(rebase(&latest, &job, &outputs, 0).is_err());
        // The L1 input moved down.
        let mut latest = base.clone();
        let moved = latest.levels[0].remove(0);
        latest.levels[1].push(moved);
        assert!(rebase(&latest, &job, &outputs, 0).is_err());
        // A file overlapping the job appeared in L2.
        let mut latest = base.clone();
        latest.levels[1].push(sst(30, 2, "a", "d", 1));
        assert!(rebase(&latest, &job, &outputs, 0).is_err());
        // ... but one outside the job's range does not matter.
        let mut latest = base.clone();
        latest.levels[1].push(sst(30, 2, "x", "y", 1));
        assert!(rebase(&latest, &job, &outputs, 0).is_ok());
        // An L0 file older than the inputs.
        let mut latest = base.clone();
        latest.l0.push(sst(9, 0, "a", "b", 1));
        assert!(rebase(&latest, &job, &outputs, 0).is_err());
    }

    #[test]
    fn rebase_trivial_move_creates_the_level() {
        let base = manifest(vec![], vec![vec![sst(1, 1, "a", "c", 500)]]);
        let job = plan(&base, &opts()).unwrap();
        assert!(job.trivial_move);
        let next = rebase(&base, &job, &job.upper, 0).unwrap();
        assert!(next.levels[0].is_empty());
        assert_eq!(job_ids(&next.levels[1]), vec![1]);
        assert_eq!(next.levels[1][0].level, 2);
    }
}
