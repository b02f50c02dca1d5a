//! Size-tiered and time-window planning. Both see the partition as a list of sorted runs,
//! newest first: every L0 file is one run, then every non-empty level is one run. Merges
//! take a contiguous window of runs and write one run, so the age order of runs (which is
//! what readers rely on: a shallower place holds newer versions) never changes.
//!
//! Where the merged run goes: to the level of the oldest run merged; when only L0 files are
//! merged, to the free level just above the next older run. Commits keep the runs packed at
//! the deepest levels (see [`crate::plan::pack`]), so that free level exists unless every
//! level holds a run; then the window also takes the next older run.

use strata_format::{Manifest, SstInfo};

use crate::plan::{build_job, level, Job};
use crate::{CompactionOptions, Strategy};

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

/// Plans the next merge of the size-tiered or time-window strategy, or `None`.
pub(crate) fn plan_tiered(m: &Manifest, opts: &CompactionOptions) -> Option<Job> {
    let runs = runs(m);
    let trigger = opts.run_trigger.max(2);
    let cap = opts.tiered_levels.max(2).max(m.levels.len());
    match opts.strategy {
        Strategy::TimeWindow { window_ms } => plan_time_window(m, &runs, opts, window_ms, cap),
        _ => {
            if runs.len() < trigger {
                return None;
            }
            let (start, end) = pick_size_tiered(&runs, 0, runs.len(), opts, trigger);
            window_job(m, &runs, start, end, cap)
        }
    }
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

/// The expiry window of a run: the largest window any of its files expires in, or
/// `u64::MAX` when a file holds something that never expires (a value without TTL, a
/// tombstone).
fn bucket(run: &Run<'_>, window_ms: u64) -> u64 {
    run.files
        .iter()
        .map(|f| {
            let p = &f.props;
            if p.entries > 0 && p.tombstones == 0 && p.expiring == p.entries {
                p.max_expires_at_ms / window_ms.max(1)
            } else {
                u64::MAX
            }
        })
        .max()
        .unwrap_or(u64::MAX)
}

/// Time windows: adjacent runs of the same expiry window are merged, older windows first
/// (a window no longer receiving writes becomes one run); the newest window is merged under
/// the size-tiered rules once it holds `run_trigger` runs. Runs of different windows are
/// merged only when no level is free for a new run.
fn plan_time_window(
    m: &Manifest,
    runs: &[Run<'_>],
    opts: &CompactionOptions,
    window_ms: u64,
    cap: usize,
) -> Option<Job> {
    let trigger = opts.run_trigger.max(2);
    let buckets: Vec<u64> = runs.iter().map(|r| bucket(r, window_ms)).collect();
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=runs.len() {
        if i == runs.len() || buckets[i] != buckets[start] {
            groups.push((start, i));
            start = i;
        }
    }
    for &(i, j) in groups.iter().rev() {
        let newest = i == 0;
        if !newest && j - i == 1 && runs[i].level == 0 && j == m.l0.len() {
            // A closed window's lone L0 file, the oldest in L0: it moves to a level of its
            // own, unread, so the L0 files above it can be placed too.
            if let Some(job) = promote_oldest_l0(m, runs, cap) {
                return Some(job);
            }
        }
        if newest && j - i < trigger || j - i < 2 {
            continue;
        }
        let (a, b) = if newest {
            pick_size_tiered(runs, i, j, opts, trigger)
        } else {
            (i, j)
        };
        if let Some(job) = window_job_exact(m, runs, a, b, cap) {
            return Some(job);
        }
    }
    // Nothing merges within a window; if the runs have outgrown the levels, merge across.
    if runs.len() >= cap + trigger {
        let (a, b) = pick_size_tiered(runs, 0, runs.len(), opts, trigger);
        return window_job(m, runs, a, b, cap);
    }
    None
}

/// Moves the oldest L0 file, alone, to the free level above the next older run (a trivial
/// move: metadata only). `None` when no level is free there.
fn promote_oldest_l0(m: &Manifest, runs: &[Run<'_>], cap: usize) -> Option<Job> {
    let n_l0 = m.l0.len();
    let file = m.l0.last()?.clone();
    let output_level = match runs.get(n_l0) {
        None => cap,
        Some(next) if next.level >= 2 => next.level - 1,
        Some(_) => return None,
    };
    Some(build_job(
        m,
        0,
        output_level,
        vec![file],
        Vec::new(),
        Vec::new(),
        true,
    ))
}

/// Like [`window_job`], but `None` when the window would have to grow to be placed.
fn window_job_exact(
    m: &Manifest,
    runs: &[Run<'_>],
    start: usize,
    end: usize,
    cap: usize,
) -> Option<Job> {
    let job = window_job(m, runs, start, end, cap)?;
    let taken = job.input_files();
    let asked: usize = runs[start..end].iter().map(|r| r.files.len()).sum();
    (taken == asked).then_some(job)
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
    use super::*;
    use crate::plan::{pack, plan_at, rebase};
    use bytes::Bytes;
    use strata_format::SstProps;

    fn sst(id: u64, lo: &str, hi: &str, size: u64) -> SstInfo {
        SstInfo {
            id,
            level: 0,
            props: SstProps {
                smallest_key: Bytes::copy_from_slice(lo.as_bytes()),
                largest_key: Bytes::copy_from_slice(hi.as_bytes()),
                min_seq: id,
                max_seq: id,
                entries: 10,
                tombstones: 0,
                expiring: 0,
                max_expires_at_ms: 0,
                data_bytes: size,
                file_size: size,
            },
        }
    }

    fn ttl(mut f: SstInfo, expires: u64) -> SstInfo {
        f.props.expiring = f.props.entries;
        f.props.max_expires_at_ms = expires;
        f
    }

    fn tiered() -> CompactionOptions {
        CompactionOptions {
            strategy: Strategy::SizeTiered,
            run_trigger: 4,
            tiered_levels: 6,
            ..CompactionOptions::default()
        }
    }

    fn manifest(l0: Vec<SstInfo>, levels: Vec<Vec<SstInfo>>) -> Manifest {
        let mut m = Manifest {
            version: 5,
            l0,
            levels,
            ..Manifest::default()
        };
        for (i, files) in m.levels.iter_mut().enumerate() {
            for f in files {
                f.level = (i + 1) as u32;
            }
        }
        m
    }

    fn ids(files: &[SstInfo]) -> Vec<u64> {
        files.iter().map(|f| f.id).collect()
    }

    /// Commits `job` with one output per merge (or none for a drop) and returns the result.
    fn apply(m: &Manifest, job: &Job, out_id: u64, now: u64) -> Manifest {
        let outputs = if job.drop_expired {
            vec![]
        } else {
            let mut o = sst(out_id, "", "", job.input_bytes());
            o.props.smallest_key = job.smallest_key.clone();
            o.props.largest_key = job.largest_key.clone();
            o.props.min_seq = job.inputs().map(|f| f.props.min_seq).min().unwrap();
            o.props.max_seq = job.inputs().map(|f| f.props.max_seq).max().unwrap();
            if job.inputs().all(|f| f.props.expiring == f.props.entries) {
                o.props.expiring = o.props.entries;
                o.props.max_expires_at_ms = job
                    .inputs()
                    .map(|f| f.props.max_expires_at_ms)
                    .max()
                    .unwrap();
            }
            vec![o]
        };
        rebase(m, job, &outputs, now).unwrap()
    }

    #[test]
    fn below_the_trigger_nothing_happens() {
        let m = manifest(vec![sst(3, "a", "z", 10), sst(2, "a", "z", 10)], vec![]);
        assert!(plan_at(&m, &tiered(), &[], 0).is_none());
    }

    #[test]
    fn first_merge_of_l0_goes_to_the_deepest_level_and_packs() {
        let m = manifest(
            (1..=4).rev().map(|i| sst(i, "a", "z", 10)).collect(),
            vec![],
        );
        let job = plan_at(&m, &tiered(), &[], 0).unwrap();
        assert_eq!((job.input_level, job.output_level), (0, 6));
        assert_eq!(ids(&job.upper), vec![4, 3, 2, 1]);
        assert!(job.is_bottom());
        let next = apply(&m, &job, 100, 0);
        assert!(next.l0.is_empty());
        assert_eq!(next.levels.len(), 6);
        assert_eq!(ids(&next.levels[5]), vec![100]);
        assert_eq!(next.levels[5][0].level, 6);
    }

    #[test]
    fn similar_sized_new_runs_merge_above_a_big_old_one() {
        // Three small L0 files and a big bottom run: the size-ratio window takes the three
        // L0 files only, and places them in the free level above the bottom run.
        let m = manifest(
            vec![
                sst(13, "a", "z", 10),
                sst(12, "a", "z", 10),
                sst(11, "a", "z", 10),
            ],
            vec![
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![sst(1, "a", "z", 1000)],
            ],
        );
        let job = plan_at(&m, &tiered(), &[], 0).unwrap();
        assert_eq!((job.input_level, job.output_level), (0, 5));
        assert_eq!(ids(&job.upper), vec![13, 12, 11]);
        assert!(job.middle.is_empty() && job.lower.is_empty());
        assert!(!job.is_bottom(), "the bottom run still covers the range");
        let next = apply(&m, &job, 100, 0);
        assert_eq!(ids(&next.levels[4]), vec![100]);
        assert_eq!(ids(&next.levels[5]), vec![1]);
    }

    #[test]
    fn space_amplification_forces_a_full_merge() {
        let m = manifest(
            vec![sst(13, "a", "z", 10), sst(12, "a", "z", 20)],
            vec![
                vec![],
                vec![],
                vec![],
                vec![sst(3, "a", "z", 40)],
                vec![sst(2, "a", "m", 50), sst(4, "n", "z", 50)],
                vec![sst(1, "a", "z", 60)],
            ],
        );
        let job = plan_at(&m, &tiered(), &[], 0).unwrap();
        assert_eq!((job.input_level, job.output_level), (0, 6));
        assert_eq!(ids(&job.upper), vec![13, 12]);
        assert_eq!(ids(&job.middle), vec![3, 2, 4]);
        assert_eq!(ids(&job.lower), vec![1]);
        assert!(job.is_bottom());
        let next = apply(&m, &job, 100, 0);
        assert!(next.l0.is_empty());
        assert_eq!(next.levels.iter().flatten().count(), 1);
        assert_eq!(ids(&next.levels[5]), vec![100]);
    }

    #[test]
    fn without_a_free_level_the_next_run_is_taken_too() {
        let mut o = tiered();
        o.tiered_levels = 2;
        o.max_space_amp_percent = 10_000;
        let m = manifest(
            (11..=14).rev().map(|i| sst(i, "a", "z", 10)).collect(),
            vec![vec![sst(2, "a", "z", 500)], vec![sst(1, "a", "z", 1000)]],
        );
        let job = plan_at(&m, &o, &[], 0).unwrap();
        assert_eq!((job.input_level, job.output_level), (0, 1));
        assert_eq!(ids(&job.lower), vec![2]);
        let next = apply(&m, &job, 100, 0);
        assert_eq!(ids(&next.levels[0]), vec![100]);
        assert_eq!(ids(&next.levels[1]), vec![1]);
    }

    #[test]
    fn runs_keep_their_age_order_through_many_merges() {
        // Simulate flushes and merges; at every step the levels are packed, and every run
        // holds only files newer than every run below it (ids grow with time here).
        let o = tiered();
        let mut m = manifest(vec![], vec![]);
        let mut next_id = 1;
        for _ in 0..200 {
            m.l0.insert(0, sst(next_id, "a", "z", 10));
            next_id += 1;
            while let Some(job) = plan_at(&m, &o, &[], 0) {
                m = apply(&m, &job, next_id, 0);
                next_id += 1;
            }
            let runs = runs(&m);
            assert!(runs.len() < o.run_trigger);
            let seqs: Vec<(u64, u64)> = runs
                .iter()
                .map(|r| {
                    let lo = r.files.iter().map(|f| f.props.min_seq).min().unwrap();
                    let hi = r.files.iter().map(|f| f.props.max_seq).max().unwrap();
                    (lo, hi)
                })
                .collect();
            assert!(seqs.windows(2).all(|w| w[0].0 > w[1].1), "{seqs:?}");
            let used = m.levels.iter().filter(|l| !l.is_empty()).count();
            assert!(m.levels.iter().rev().take(used).all(|l| !l.is_empty()));
        }
    }

    #[test]
    fn time_windows_merge_within_a_window_and_expired_windows_drop_whole() {
        let o = CompactionOptions {
            strategy: Strategy::TimeWindow { window_ms: 100 },
            run_trigger: 4,
            tiered_levels: 8,
            ..CompactionOptions::default()
        };
        // Two L0 files of window 3 (expiring at 3xx), below them a run of window 2 and one
        // of window 1.
        let m = manifest(
            vec![
                ttl(sst(21, "a", "z", 10), 350),
                ttl(sst(20, "a", "z", 10), 310),
            ],
            vec![
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![
                    ttl(sst(11, "a", "m", 10), 250),
                    ttl(sst(12, "n", "z", 10), 260),
                ],
                vec![ttl(sst(10, "a", "z", 10), 290)],
                vec![ttl(sst(1, "a", "z", 10), 150)],
            ],
        );
        // Window 2 is two runs (levels 6 and 7): merged, and nothing else.
        let job = plan_at(&m, &o, &[], 0).unwrap();
        assert_eq!((job.input_level, job.output_level), (6, 7));
        assert_eq!(ids(&job.upper), vec![11, 12]);
        assert_eq!(ids(&job.lower), vec![10]);
        let m = apply(&m, &job, 30, 0);
        // Window 3 has 2 runs < trigger: nothing more to do before expiry.
        assert!(plan_at(&m, &o, &[], 0).is_none());
        // At 200 window 1 has expired: its run is the oldest, dropped unread.
        let job = plan_at(&m, &o, &[], 200).unwrap();
        assert!(job.drop_expired);
        assert_eq!(ids(&job.upper), vec![1]);
        let m = apply(&m, &job, 0, 200);
        assert_eq!(m.levels.iter().flatten().count(), 1);
        assert_eq!(
            ids(&m.levels[7]),
            vec![30],
            "packed to the bottom after the drop"
        );
        // At 300 window 2 goes too, but not the L0 files of window 3.
        let job = plan_at(&m, &o, &[], 300).unwrap();
        assert_eq!(ids(&job.upper), vec![30]);
        let m = apply(&m, &job, 0, 300);
        assert_eq!(ids(&m.l0), vec![21, 20]);
        assert!(plan_at(&m, &o, &[], 300).is_none());
    }

    #[test]
    fn a_closed_windows_lone_l0_file_moves_down_unread() {
        let o = CompactionOptions {
            strategy: Strategy::TimeWindow { window_ms: 100 },
            run_trigger: 4,
            tiered_levels: 8,
            ..CompactionOptions::default()
        };
        // Oldest L0 file: no TTL (window "never"); above it, three files of window 3.
        let m = manifest(
            vec![
                ttl(sst(23, "a", "z", 10), 350),
                ttl(sst(22, "a", "z", 10), 340),
                ttl(sst(21, "a", "z", 10), 330),
                sst(20, "a", "z", 10),
            ],
            vec![],
        );
        let job = plan_at(&m, &o, &[], 0).unwrap();
        assert!(job.trivial_move);
        assert_eq!((job.input_level, job.output_level), (0, 8));
        assert_eq!(ids(&job.upper), vec![20]);
        let m = rebase(&m, &job, &job.upper.clone(), 0).unwrap();
        assert_eq!(ids(&m.l0), vec![23, 22, 21]);
        assert_eq!(ids(&m.levels[7]), vec![20]);
        assert_eq!(m.levels[7][0].level, 8);
        // The three window-3 files are below the trigger and the newest window: they wait.
        assert!(plan_at(&m, &o, &[], 0).is_none());
    }

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

    #[test]
    fn pack_keeps_order_and_never_shrinks_below_the_runs() {
        let mut m = manifest(
            vec![],
            vec![vec![sst(3, "a", "b", 1)], vec![], vec![sst(2, "a", "b", 1)]],
        );
        pack(&mut m, 5);
        assert_eq!(m.levels.len(), 5);
        assert_eq!(ids(&m.levels[3]), vec![3]);
        assert_eq!(ids(&m.levels[4]), vec![2]);
        assert_eq!(m.levels[3][0].level, 4);
        pack(&mut m, 1);
        assert_eq!(m.levels.len(), 2);
    }
}
