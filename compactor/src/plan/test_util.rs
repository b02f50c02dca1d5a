//! Helpers of the planning and rebase unit tests.

/// Manifests and SSTs of the leveled planning and rebase tests.
pub(crate) mod leveled {
    use bytes::Bytes;
    use strata_format::{Manifest, SstInfo, SstProps};

    use crate::CompactionOptions;

    pub(crate) fn sst(id: u64, level: u32, lo: &str, hi: &str, size: u64) -> SstInfo {
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

    pub(crate) fn opts() -> CompactionOptions {
        CompactionOptions {
            l0_trigger: 2,
            l1_target_bytes: 100,
            level_multiplier: 10,
            max_levels: 3,
            ..CompactionOptions::default()
        }
    }

    pub(crate) fn manifest(l0: Vec<SstInfo>, levels: Vec<Vec<SstInfo>>) -> Manifest {
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

    pub(crate) fn job_ids(files: &[SstInfo]) -> Vec<u64> {
        files.iter().map(|f| f.id).collect()
    }
}

/// Manifests and SSTs of the size-tiered, time-window and whole-SST expiry tests.
pub(crate) mod tiered {
    use bytes::Bytes;
    use strata_format::{Manifest, SstInfo, SstProps};

    use crate::plan::{Job, Strategy};
    use crate::rebase::rebase;
    use crate::CompactionOptions;

    pub(crate) fn sst(id: u64, lo: &str, hi: &str, size: u64) -> SstInfo {
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

    pub(crate) fn ttl(mut f: SstInfo, expires: u64) -> SstInfo {
        f.props.expiring = f.props.entries;
        f.props.max_expires_at_ms = expires;
        f
    }

    pub(crate) fn tiered() -> CompactionOptions {
        CompactionOptions {
            strategy: Strategy::SizeTiered,
            run_trigger: 4,
            tiered_levels: 6,
            ..CompactionOptions::default()
        }
    }

    pub(crate) fn manifest(l0: Vec<SstInfo>, levels: Vec<Vec<SstInfo>>) -> Manifest {
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

    pub(crate) fn ids(files: &[SstInfo]) -> Vec<u64> {
        files.iter().map(|f| f.id).collect()
    }

    /// Commits `job` with one output per merge (or none for a drop) and returns the result.
    pub(crate) fn apply(m: &Manifest, job: &Job, out_id: u64, now: u64) -> Manifest {
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
}
