//! Flush: frozen memtables become L0 SSTs, and the manifest moves the WAL replay point.
//! Also installs manifests committed by others in this process (the compactor).
//!
//! Invariants:
//! - A memtable is flushed only once `durable_seq` covers its largest seq: an SST never holds
//!   a write the WAL might not have.
//! - The replay point moves only past segments whose every seq is in a committed SST.
//! - A manifest commit that loses a race is rebased on the latest manifest; a latest manifest
//!   written by another writer epoch means we were fenced.

use crate::db::{open_version, DbInner};
use crate::error::{EngineError, EngineResult};
use crate::memtable::Memtable;
use crate::sst_reader::SstReader;
use crate::stall::Writer;
use crate::version::View;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strata_format::{Manifest, SstBuilder, SstInfo, SstProps};
use strata_manifest::layout::{new_sst_id, sst_path};
use strata_manifest::ManifestError;
use strata_objstore::{PutMode, StoreError};

pub(crate) async fn run(inner: Arc<DbInner>) {
    loop {
        if inner.lifecycle.is_fenced() {
            return;
        }
        let oldest = inner.view.read().imms.last().cloned();
        match oldest {
            Some(mem) => {
                let res = flush_one(&inner, &mem).await;
                match &res {
                    Ok(()) => inner.disk.ok(Writer::Flush),
                    Err(EngineError::ResourceExhausted { msg, .. }) => {
                        inner.disk.full(Writer::Flush, format!("flush: {msg}"))
                    }
                    Err(_) => {}
                }
                if let Err(e) = res {
                    if inner.lifecycle.is_fenced() {
                        return;
                    }
                    inner.metrics.flush_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, memtable = mem.id, "flush failed; retrying");
                    strata_clock::sleep(Duration::from_millis(500)).await;
                }
            }
            None => {
                let notified = inner.flush_wanted.notified();
                if inner.view.read().imms.is_empty() {
                    let _ = strata_clock::timeout(Duration::from_secs(1), notified).await;
                }
            }
        }
    }
}

/// Writes an SST of the given entries (already in internal key order) under a fresh id.
pub(crate) async fn write_sst(
    inner: &DbInner,
    entries: Vec<strata_format::Entry>,
) -> EngineResult<(u64, Bytes, SstProps)> {
    let opts = inner.opts.sst.clone();
    // Keys, values and their entry headers, plus room for the index, filter and footer.
    let cap = entries
        .iter()
        .map(|e| e.key.len() + e.value.len() + 32)
        .sum::<usize>()
        + (1 << 20);
    let (data, props) = tokio::task::spawn_blocking(move || {
        let mut b = SstBuilder::with_capacity(opts, cap);
        for e in &entries {
            b.add(e)?;
        }
        b.finish()
    })
    .await
    .map_err(|e| EngineError::Internal(format!("SST build task: {e}")))??;
    loop {
        let id = new_sst_id();
        match inner
            .store
            .put(
                &sst_path(inner.opts.partition, id),
                data.clone(),
                PutMode::Create,
            )
            .await
        {
            Ok(()) => return Ok((id, data, props)),
            Err(StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

async fn flush_one(inner: &Arc<DbInner>, mem: &Arc<Memtable>) -> EngineResult<()> {
    let max_seq = mem.max_seq();
    // Wait until every seq in the memtable is durable in the WAL.
    let mut durable = inner.seqs.watch_durable();
    loop {
        if *durable.borrow_and_update() >= max_seq {
            break;
        }
        if inner.lifecycle.is_fenced() {
            return Err(EngineError::Fenced {
                msg: "fenced".into(),
                applied_nothing: false,
            });
        }
        let _ = strata_clock::timeout(Duration::from_millis(200), durable.changed()).await;
    }
    let entries = mem.all_entries();
    let started = strata_clock::now();
    let sst = if entries.is_empty() {
        None
    } else {
        let (id, data, props) = write_sst(inner, entries).await?;
        let info = SstInfo {
            id,
            level: 0,
            props,
        };
        // Off the async workers: warming the cache copies every block (tens of MB).
        let (src, partition, i, len) = (
            inner.src.clone(),
            inner.opts.partition,
            info.clone(),
            data.len(),
        );
        let reader =
            tokio::task::spawn_blocking(move || SstReader::from_bytes(src, partition, i, &data))
                .await
                .map_err(|e| EngineError::Internal(format!("SST open task: {e}")))??;
        Some((info, Arc::new(reader), len))
    };
    let replay_from = inner.landed.lock().replay_point(max_seq);
    let info = sst.as_ref().map(|(i, _, _)| i.clone());
    let manifest = commit_with_rebase(inner, |base| {
        let mut next = base.clone();
        next.version = base.version + 1;
        next.writer_epoch = inner.writer_epoch;
        if let Some(info) = &info {
            next.l0.insert(0, info.clone());
        }
        next.last_flushed_seq = base.last_flushed_seq.max(max_seq);
        next.wal_replay_from = base.wal_replay_from.max(replay_from);
        next.created_ms = inner.opts.clock.unix_ms();
        Some(next)
    })
    .await?;
    let Some(manifest) = manifest else {
        return Ok(());
    };
    // Install: the new version replaces the memtable in the view.
    let _guard = inner.install_lock.lock().await;
    let current = inner.view.read().clone();
    let mut reuse = current.version.readers();
    if let Some((info, reader, _)) = &sst {
        reuse.insert(info.id, reader.clone());
    }
    let version = if manifest.version > current.version.manifest.version {
        let mut v = open_version(&inner.src, inner.opts.partition, manifest, &reuse).await?;
        v.hold = Some(inner.live.hold(v.manifest.version));
        Some(Arc::new(v))
    } else {
        None
    };
    {
        let mut view = inner.view.write();
        let mut next: View = (**view).clone();
        if let Some(v) = version {
            if v.manifest.version > next.version.manifest.version {
                next.version = v;
            }
        }
        next.imms.retain(|m| !Arc::ptr_eq(m, mem));
        *view = Arc::new(next);
    }
    let m = &inner.metrics;
    m.flushes.fetch_add(1, Ordering::Relaxed);
    metrics::histogram!("strata_flush_duration_seconds").record(started.elapsed().as_secs_f64());
    if let Some((_, _, len)) = &sst {
        m.flush_bytes.fetch_add(*len as u64, Ordering::Relaxed);
    }
    tracing::debug!(
        memtable = mem.id,
        entries = mem.len(),
        ms = started.elapsed().as_millis() as u64,
        "flushed memtable"
    );
    inner.flushed.notify_waiters();
    Ok(())
}

/// Commits `change(latest)` as the next manifest version, re-reading and re-applying on
/// conflict. `change` returning `None` abandons the commit. Returns the committed manifest.
pub(crate) async fn commit_with_rebase<F>(
    inner: &DbInner,
    change: F,
) -> EngineResult<Option<Arc<Manifest>>>
where
    F: Fn(&Manifest) -> Option<Manifest>,
{
    let p = inner.opts.partition;
    let mut base = inner.view.read().version.manifest.clone();
    if let Some(latest) = inner.manifests.subscribe(p).borrow().clone() {
        if latest.version > base.version {
            base = latest;
        }
    }
    for _ in 0..100 {
        if base.writer_epoch != inner.writer_epoch {
            inner.lifecycle.fence();
            return Err(EngineError::Fenced {
                msg: format!(
                    "manifest {} was written by writer {:x}: fenced",
                    base.version, base.writer_epoch
                ),
                applied_nothing: false,
            });
        }
        let Some(next) = change(&base) else {
            return Ok(None);
        };
        match inner.manifests.commit(p, &next).await {
            Ok(()) => return Ok(Some(Arc::new(next))),
            Err(ManifestError::Conflict { .. }) => {
                base = inner.manifests.load_latest(p).await?.ok_or_else(|| {
                    EngineError::Internal("manifest vanished after a conflict".into())
                })?;
            }
            Err(e @ ManifestError::NotOwner { .. }) => {
                inner.lifecycle.fence();
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(EngineError::Unavailable(
        "manifest commit kept conflicting".into(),
    ))
}

/// Installs manifests committed by other components of this process (the compactor).
pub(crate) async fn watch_manifests(inner: Arc<DbInner>) {
    let mut rx = inner.manifests.subscribe(inner.opts.partition);
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        if !inner.lifecycle.is_open() {
            return;
        }
        let Some(m) = rx.borrow_and_update().clone() else {
            continue;
        };
        if let Err(e) = install(&inner, m).await {
            tracing::warn!(error = %e, "installing a new manifest failed");
        }
    }
}

pub(crate) async fn install(inner: &Arc<DbInner>, m: Arc<Manifest>) -> EngineResult<()> {
    let _guard = inner.install_lock.lock().await;
    let current = inner.view.read().clone();
    if m.version <= current.version.manifest.version {
        return Ok(());
    }
    let reuse = current.version.readers();
    let mut version = open_version(&inner.src, inner.opts.partition, m, &reuse).await?;
    version.hold = Some(inner.live.hold(version.manifest.version));
    let version = Arc::new(version);
    let mut view = inner.view.write();
    if version.manifest.version > view.version.manifest.version {
        let mut next: View = (**view).clone();
        next.version = version;
        *view = Arc::new(next);
    }
    Ok(())
}
