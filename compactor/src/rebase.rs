//! Rebasing a finished job onto the latest manifest (pure): the manifest that commits the
//! job's result on top of whatever was committed since it was planned, or the reason the job
//! must be abandoned.

use std::collections::HashSet;

use strata_format::{Manifest, SstInfo};

use crate::plan::{deeper_overlaps, fully_expired, ids, level, oldest_first, overlaps, Job};

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
    use crate::plan::plan;
    use crate::plan::test_util::leveled::{job_ids, manifest, opts, sst};
    use crate::plan::test_util::tiered;

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

    #[test]
    fn pack_keeps_order_and_never_shrinks_below_the_runs() {
        let mut m = tiered::manifest(
            vec![],
            vec![
                vec![tiered::sst(3, "a", "b", 1)],
                vec![],
                vec![tiered::sst(2, "a", "b", 1)],
            ],
        );
        pack(&mut m, 5);
        assert_eq!(m.levels.len(), 5);
        assert_eq!(tiered::ids(&m.levels[3]), vec![3]);
        assert_eq!(tiered::ids(&m.levels[4]), vec![2]);
        assert_eq!(m.levels[3][0].level, 4);
        pack(&mut m, 1);
        assert_eq!(m.levels.len(), 2);
    }
}
