//! Time-window planning for TTL data: runs are grouped by the window their values expire
//! in, and runs of one window are merged together, never with another window (unless no
//! level is free for a new run), so a window's SSTs expire together and are dropped whole.

use strata_format::Manifest;

use super::{build_job, pick_size_tiered, window_job, Job, Run};
use crate::CompactionOptions;

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
pub(super) fn plan_time_window(
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

#[cfg(test)]
mod tests {
    use crate::plan::test_util::tiered::{apply, ids, manifest, sst, ttl};
    use crate::plan::{plan_at, Strategy};
    use crate::rebase::rebase;
    use crate::CompactionOptions;

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
}
