//! Garbage collection: compacted inputs deleted once their grace period has passed (and the
//! reader floor and snapshot pins allow), and the sweeps of orphaned SSTs and of old manifest
//! bodies that [`Compactor::run`] runs every `ORPHAN_SWEEP_EVERY`.

use std::time::Duration;

use strata_clock::Instant;
use strata_format::Manifest;
use strata_manifest::layout::{
    manifest_prefix, parse_sst_path, sst_created_ms, sst_path, sst_prefix,
};
use tracing::debug;

use crate::error::{Result, ResultExt, WithWhat};
use crate::Compactor;

/// How often `run` sweeps orphaned SSTs.
pub(crate) const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone)]
pub(crate) struct PendingDelete {
    pub(crate) id: u64,
    /// Its size (counted against the deletion budget while queued).
    pub(crate) bytes: u64,
    /// The root it is under (`None`: this store's own; else this keyspace's cold tier).
    pub(crate) root: Option<String>,
    pub(crate) due: Instant,
    /// The manifest version whose commit dropped it: with a reader floor, it goes only once
    /// the partition's owner reads from this version or a newer one.
    pub(crate) version: u64,
}

impl Compactor {
    /// Queues compacted inputs for deletion, counting them against the deletion budget.
    pub(crate) fn queue(&self, items: impl IntoIterator<Item = PendingDelete>) {
        let mut pending = self.inner.pending.lock();
        let before = pending.len();
        pending.extend(items);
        if let Some(b) = &self.inner.opts.deletion_budget {
            b.add(pending[before..].iter().map(|d| d.bytes).sum());
        }
    }

    /// Deletes the compacted inputs whose grace period has passed; returns how many were
    /// deleted. Files that fail to delete stay queued and are retried next time.
    pub async fn collect_garbage(&self) -> Result<usize> {
        let now = strata_clock::now();
        let due: Vec<PendingDelete> = {
            let mut pending = self.inner.pending.lock();
            // With a reader floor, the grace counts only once the owner has moved past the
            // version that dropped the file (an owner that cannot adopt keeps it alive).
            let floor = self
                .inner
                .reader_floor
                .lock()
                .as_ref()
                .map(|f| (f.0)(self.inner.partition));
            let (due, keep) = pending.drain(..).partition(|d| {
                d.due <= now
                    && match floor {
                        None => true,
                        Some(v) => v.is_some_and(|v| v >= d.version),
                    }
            });
            *pending = keep;
            if let Some(b) = &self.inner.opts.deletion_budget {
                b.sub(due.iter().map(|d| d.bytes).sum());
            }
            due
        };
        if due.is_empty() {
            return Ok(0);
        }
        let p = self.inner.partition;
        // Inputs an archival snapshot references stay; once it is deleted, the orphan sweep
        // finds them unreferenced. Pins unknown: delete nothing now.
        let now_ms = self.inner.opts.clock.unix_ms();
        let pinned = match crate::snapshot::pinned_ssts(&*self.inner.store, p, now_ms).await {
            Ok(pinned) => pinned,
            Err(e) => {
                self.queue(due);
                return Err(
                    e.with_what("reading snapshot pins before deleting compacted inputs".into())
                );
            }
        };
        let (kept, due): (Vec<PendingDelete>, Vec<PendingDelete>) =
            due.into_iter().partition(|d| pinned.contains(&d.id));
        if !kept.is_empty() {
            debug!(
                partition = p,
                kept = kept.len(),
                "compacted inputs pinned by a snapshot kept"
            );
        }
        let mut deleted = 0;
        let mut failed = Vec::new();
        let mut first_err = None;
        for d in due {
            let path = sst_path(p, d.id);
            let store = match self
                .inner
                .opts
                .roots
                .store_for(&self.inner.store, d.root.as_deref())
            {
                Ok(s) => s,
                Err(e) => {
                    first_err
                        .get_or_insert_with(|| e.with_what(format!("opening the root of {path}")));
                    failed.push(d);
                    continue;
                }
            };
            match store.delete(&path).await {
                Ok(()) => deleted += 1,
                Err(e) => {
                    first_err.get_or_insert_with(|| e.with_what(format!("deleting {path}")));
                    failed.push(d);
                }
            }
        }
        self.queue(failed);
        self.inner.stats.lock().files_deleted += deleted as u64;
        debug!(partition = p, deleted, "deleted compacted inputs");
        match first_err {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }

    /// Deletes SSTs that the latest manifest does not reference and that are older than
    /// `orphan_grace` by the creation time in their id. Returns how many were deleted.
    ///
    /// Why this is safe: an SST becomes referenced only by the commit of the flush or job that
    /// wrote it, which happens within seconds of writing it; one that is unreferenced an hour
    /// after its creation either was never committed (its writer crashed or abandoned it) or
    /// was compacted away long enough ago that no reader still holds a version listing it.
    pub async fn sweep_orphans(&self) -> Result<usize> {
        let p = self.inner.partition;
        let Some(m) = crate::error::load_latest(&*self.inner.manifests, p).await? else {
            return Ok(0);
        };
        // Pins are read after the manifest, so an SST a snapshot took from it is in one or
        // the other. They are by id: a pinned SST keeps its copies in every root.
        let now_ms = self.inner.opts.clock.unix_ms();
        let pinned = crate::snapshot::pinned_ssts(&*self.inner.store, p, now_ms)
            .await
            .context("reading snapshot pins before sweeping orphans")?;
        let mut deleted = self.sweep_root(&m, None, &pinned).await?;
        // The keyspace's own cold tier: copies of a tier job whose worker died before its
        // commit, cold inputs whose queued deletion was lost with a restart, and cold SSTs
        // a deleted snapshot had pinned.
        if let Some(tier) = &self.inner.opts.tier {
            if self.tier_is_ours().await {
                deleted += self.sweep_root(&m, Some(&tier.url), &pinned).await?;
            }
        }
        Ok(deleted)
    }

    /// The orphan sweep of one root (`None`: this store's own) of partition `p`.
    async fn sweep_root(
        &self,
        m: &Manifest,
        root: Option<&str>,
        pinned: &std::collections::HashSet<u64>,
    ) -> Result<usize> {
        let p = self.inner.partition;
        // Referenced in this root: what the manifest reads from it. SSTs the manifest reads
        // from another root do not keep a copy here alive (a tiered SST's hot copy is garbage
        // once moved).
        let elsewhere = m.root_index();
        let mut live: std::collections::HashSet<u64> = m
            .ssts()
            .filter(|f| match (elsewhere.get(&f.id), root) {
                (None, None) => true,
                (Some(r), Some(url)) => r.owned && r.url == url,
                _ => false,
            })
            .map(|f| f.id)
            .collect();
        live.extend(pinned.iter().copied());
        let queued: std::collections::HashSet<u64> = self
            .inner
            .pending
            .lock()
            .iter()
            .filter(|d| d.root.as_deref() == root)
            .map(|d| d.id)
            .collect();
        let grace_ms = self.inner.opts.orphan_grace.as_millis() as u64;
        let now = self.inner.opts.clock.unix_ms();
        let store = self
            .inner
            .opts
            .roots
            .store_for(&self.inner.store, root)
            .with_context(|| format!("opening the root {root:?}"))?;
        let listed = store
            .list(&sst_prefix(p))
            .await
            .with_context(|| format!("listing SSTs under {}", root.unwrap_or("the store")))?;
        let mut deleted = 0;
        // An old SST can become unreferenced at any moment (a compaction replaces it): its age
        // says nothing about how long ago. So an SST is deleted only once it has been seen
        // unreferenced for `gc_grace`, like the inputs this compactor queues itself — also
        // those of a predecessor whose queue was lost with it. (A tier job's copies keep
        // their SST's old id, so in the cold root only this rule protects them until their
        // commit, which comes within seconds.)
        let seen = if root.is_none() {
            &self.inner.orphans
        } else {
            &self.inner.cold_orphans
        };
        let mut candidates = seen.lock().clone();
        let mut seen_now = std::collections::HashMap::new();
        let mut due = Vec::new();
        for id in listed.iter().filter_map(|o| parse_sst_path(&o.path)) {
            let created_ms = sst_created_ms(id);
            if live.contains(&id)
                || queued.contains(&id)
                || now.saturating_sub(created_ms) < grace_ms
            {
                continue;
            }
            let first_seen = candidates.remove(&id).unwrap_or_else(strata_clock::now);
            seen_now.insert(id, first_seen);
            if first_seen.elapsed() >= self.inner.opts.gc_grace {
                due.push(id);
            }
        }
        *seen.lock() = seen_now;
        if root.is_some() && !due.is_empty() {
            // Narrow the window of a tier copy committed meanwhile by another compactor (a
            // hand-over): its copies keep old ids, which the age rule cannot protect.
            if let Some(latest) = self
                .inner
                .manifests
                .load_latest(p)
                .await
                .with_context(|| format!("re-loading the manifest of partition {p}"))?
            {
                let listed: std::collections::HashSet<u64> = latest
                    .roots
                    .iter()
                    .filter(|r| r.owned && Some(r.url.as_str()) == root)
                    .flat_map(|r| r.ids.iter().copied())
                    .collect();
                due.retain(|id| !listed.contains(id));
            }
        }
        for id in due {
            let path = sst_path(p, id);
            store
                .delete(&path)
                .await
                .with_context(|| format!("deleting orphaned {path} under {root:?}"))?;
            deleted += 1;
        }
        self.inner.stats.lock().files_deleted += deleted as u64;
        Ok(deleted)
    }

    /// Deletes manifest bodies more than `MANIFESTS_KEPT` versions behind the latest (and
    /// bodies of commits that lost their race at such versions), once seen so for
    /// `gc_grace`. Returns how many were deleted.
    ///
    /// Why this is safe: recovery, flushes, compactions, replicas and exports only ever load
    /// the latest manifest (through the pointer, or the highest version present); a reader
    /// holding an older version holds it in memory and never reads its body again.
    pub async fn sweep_manifests(&self) -> Result<usize> {
        let p = self.inner.partition;
        let Some(m) = crate::error::load_latest(&*self.inner.manifests, p).await? else {
            return Ok(0);
        };
        let keep_from = m.version.saturating_sub(MANIFESTS_KEPT);
        let listed = self
            .inner
            .store
            .list(&manifest_prefix(p))
            .await
            .context("listing manifests")?;
        let mut seen = self.inner.old_manifests.lock().clone();
        let mut seen_now = std::collections::HashMap::new();
        let mut due = Vec::new();
        for o in &listed {
            let Some(version) = manifest_body_version(&o.path) else {
                continue;
            };
            if version >= keep_from {
                continue;
            }
            let first = seen.remove(&o.path).unwrap_or_else(strata_clock::now);
            if first.elapsed() >= self.inner.opts.gc_grace {
                due.push(o.path.clone());
            }
            seen_now.insert(o.path.clone(), first);
        }
        *self.inner.old_manifests.lock() = seen_now;
        let mut deleted = 0;
        for path in due {
            self.inner
                .store
                .delete(&path)
                .await
                .with_context(|| format!("deleting old manifest {path}"))?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// Manifest versions kept behind the latest (for inspection and point-in-time debugging).
const MANIFESTS_KEPT: u64 = 16;

/// The version in a manifest body's name: `{version:020}.manifest` (embedded store) or
/// `{version:020}-{nonce}.manifest` (etcd store).
fn manifest_body_version(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?.strip_suffix(".manifest")?;
    name.split('-').next()?.parse().ok()
}
