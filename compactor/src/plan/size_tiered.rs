//! Size-tiered ("universal") planning: once the partition holds `run_trigger` sorted runs,
//! the window of runs the size-tiered rules pick ([`super::pick_size_tiered`]) is merged
//! into one run.

use strata_format::Manifest;

use super::{pick_size_tiered, window_job, Job, Run};
use crate::CompactionOptions;

/// The next merge of the size-tiered strategy on `runs` (those of `m`), or `None` below
/// `trigger` runs.
pub(super) fn plan_size_tiered(
    m: &Manifest,
    runs: &[Run<'_>],
    opts: &CompactionOptions,
    trigger: usize,
    cap: usize,
) -> Option<Job> {
    if runs.len() < trigger {
        return None;
    }
    let (start, end) = pick_size_tiered(runs, 0, runs.len(), opts, trigger);
    window_job(m, runs, start, end, cap)
}

#[cfg(test)]
mod tests {
    use crate::plan::test_util::tiered::{apply, ids, manifest, sst, tiered};
    use crate::plan::{plan_at, runs};

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
}
