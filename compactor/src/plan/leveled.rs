//! Leveled planning: L0 → L1 when L0 holds `l0_trigger` files or more (all of L0 plus every
//! overlapping L1 file), otherwise the first level over its size target pushes one file
//! (round-robin by key) into the next.

use bytes::Bytes;
use strata_format::Manifest;

use super::{build_job, key_range, level, overlapping, Job};
use crate::CompactionOptions;

/// Size target of level `n` (1 = L1): `l1_target_bytes * level_multiplier^(n-1)`.
pub fn level_target_bytes(opts: &CompactionOptions, n: usize) -> u64 {
    let mut target = opts.l1_target_bytes;
    for _ in 1..n {
        target = target.saturating_mul(opts.level_multiplier.max(1));
    }
    target
}

pub(super) fn plan_leveled(
    m: &Manifest,
    opts: &CompactionOptions,
    cursors: &[Option<Bytes>],
) -> Option<Job> {
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

#[cfg(test)]
mod tests {
    use super::level_target_bytes;
    use crate::plan::test_util::leveled::{job_ids, manifest, opts, sst};
    use crate::plan::{plan, plan_with_cursors};
    use crate::CompactionOptions;
    use bytes::Bytes;
    use strata_format::Manifest;

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
}
