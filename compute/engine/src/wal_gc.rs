//! Deletes WAL segments that recovery can no longer need.
//!
//! A segment below the latest manifest's `wal_replay_from` holds only seqs that are in SSTs
//! that manifest lists, so recovery never reads it. It is deleted only after the replay point
//! has been past it for a grace period: a writer opening concurrently may have read an older
//! manifest a moment ago and will still replay from that older point.
//!
//! Fencing markers (empty segments) are never deleted: a deposed writer's next segment name is
//! always some newer writer's marker, and a freed marker name would let it create that name
//! and acknowledge writes nobody replays (found by the model check in
//! `compute/tests/fencing_model.rs`).

use crate::db::DbInner;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strata_clock::Instant;
use strata_format::WAL_MARKER_LEN;
use strata_manifest::layout::{parse_wal_path, wal_path, wal_prefix};

/// How long a segment stays after the replay point moved past it. It must outlast an open
/// (docs/write-path.md) and one `Retrying` call of a WAL PUT (`RetryPolicy::total_timeout`,
/// 30 s by default, comes on top of a new writer's open and first flush): the commit loop
/// answers "not applied" after a fence only if no earlier attempt of its own could have landed
/// and been collected meanwhile (`commit.rs`, `fenced`).
pub const WAL_GC_GRACE: Duration = Duration::from_secs(30);

pub(crate) async fn run(inner: Arc<DbInner>) {
    let p = inner.opts.partition;
    // (when observed, replay point) — the oldest entry older than the grace period is safe.
    let mut seen: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut deleted_below = 0u64;
    loop {
        strata_clock::sleep(Duration::from_secs(5)).await;
        if !inner.lifecycle.is_open() {
            return;
        }
        let replay_from = inner.view.read().version.manifest.wal_replay_from;
        if seen.back().is_none_or(|&(_, r)| r != replay_from) {
            seen.push_back((strata_clock::now(), replay_from));
        }
        let mut safe = None;
        while let Some(&(t, r)) = seen.front() {
            if t.elapsed() >= WAL_GC_GRACE {
                safe = Some(r);
                if seen.len() > 1 {
                    seen.pop_front();
                    continue;
                }
            }
            break;
        }
        let Some(safe) = safe else { continue };
        if safe <= deleted_below {
            continue;
        }
        let listed = match inner.store.list(&wal_prefix(p)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "WAL GC listing failed");
                continue;
            }
        };
        let mut n = 0u64;
        for (id, size) in listed
            .iter()
            .filter_map(|o| parse_wal_path(&o.path).map(|id| (id, o.size)))
        {
            if id >= safe {
                break;
            }
            if size == WAL_MARKER_LEN {
                continue;
            }
            if let Err(e) = inner.store.delete(&wal_path(p, id)).await {
                tracing::debug!(error = %e, segment = id, "WAL GC delete failed");
                break;
            }
            n += 1;
        }
        inner
            .metrics
            .wal_segments_deleted
            .fetch_add(n, Ordering::Relaxed);
        deleted_below = safe;
    }
}
