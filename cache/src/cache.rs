//! [`BlockCache`]: the foyer hybrid cache behind Strata's SST reads.

use std::{
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use foyer::{
    HybridCache, HybridCacheBuilder, HybridCachePolicy, HybridCacheProperties, Location,
    PsyncIoEngineConfig, RecoverMode, Source,
};

use crate::{
    config::{memory_shards, CacheConfig, ENTRY_OVERHEAD_BYTES},
    disk::{DirLock, DiskLayout},
    foyer_metrics::{CapturingRegistry, FoyerCounters},
    key::BlockKey,
    stats::{bump, read, CacheStats, Counters},
    value::CachedBlock,
};

type Hybrid = HybridCache<BlockKey, CachedBlock>;

/// Hybrid memory + disk cache of SST blocks (and index / filter blocks), built on foyer.
///
/// Cloning is cheap (one `Arc`); all clones share one cache.
///
/// # What it guarantees, and what it does not
/// * Values are raw block bytes exactly as inserted or fetched. The cache does not
///   checksum them itself: foyer checks its own xxHash64 over every disk entry and compares
///   the stored key, and SST blocks carry a crc32c that the reader verifies after **every**
///   `get`, so a disk tier that returned wrong bytes (bit rot, a bug, a torn write) is
///   caught there: the reader must treat it as a miss, never serve it, and call
///   [`remove`](Self::remove) before re-fetching so the bad copy is not hit again.
/// * The disk tier is only a cache (DESIGN invariant 6): wiping its directory loses
///   nothing. Entries reach disk when inserted (foyer's `WriteOnInsertion` policy), via a
///   bounded queue that drops writes under load ([`CacheStats::disk_write_drops`]); values
///   larger than a disk block stay in memory only ([`CacheStats::disk_oversize_skips`]).
///   After `kill -9`, whatever had been flushed is recovered on the next open.
/// * Disk read errors are logged and reported as misses, so a failing cache disk slows
///   reads down instead of failing them.
#[derive(Clone)]
pub struct BlockCache {
    inner: Arc<Inner>,
}

struct Inner {
    hybrid: Hybrid,
    memory_bytes: usize,
    disk: Option<DiskLayout>,
    /// Held while the disk tier is open; released by `close`.
    dir_lock: Mutex<Option<DirLock>>,
    /// Set at the start of `close`: from then on new values are kept in memory only.
    closing: AtomicBool,
    /// Serializes `close` calls so that a second call returns only once the disk tier is
    /// closed; the flag says whether that has happened.
    closed: tokio::sync::Mutex<bool>,
    counters: Counters,
    foyer_counters: Arc<FoyerCounters>,
}

impl fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockCache")
            .field("memory_bytes", &self.inner.memory_bytes)
            .field("disk", &self.inner.disk)
            .field("closing", &self.inner.closing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The disk tier's capacity: what was asked for, but never more than half of the space the
/// volume has left (counting what the cache's own files already take), rounded down to whole
/// 16 MiB, so the cache never fills the volume the data (and on the embedded default the
/// object store itself) lives on. `None` when there is too little room for a disk tier: the
/// cache then runs in memory only (a warning says so), rather than keep the store from
/// starting on a full disk.
fn fit_to_free_space(dir: &std::path::Path, wanted: u64) -> anyhow::Result<Option<u64>> {
    let available = fs4::available_space(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    let own = dir_usage(dir);
    let allowed = ((available + own) / 2) / (16 << 20) * (16 << 20);
    if wanted <= allowed {
        return Ok(Some(wanted));
    }
    if allowed < crate::disk::MIN_DISK_BYTES {
        tracing::warn!(
            dir = %dir.display(),
            free_mb = available >> 20,
            "no room for the disk cache (it needs {} MiB and takes at most half of the \
             volume's free space): caching in memory only",
            crate::disk::MIN_DISK_BYTES >> 20
        );
        return Ok(None);
    }
    tracing::warn!(
        dir = %dir.display(),
        wanted_mb = wanted >> 20,
        capacity_mb = allowed >> 20,
        free_mb = available >> 20,
        "disk cache shrunk to fit: it takes at most half of the volume's free space"
    );
    Ok(Some(allowed))
}

/// Bytes the files under `dir` occupy on disk (allocated blocks; 0 for what cannot be read).
fn dir_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

impl BlockCache {
    /// Opens a cache. With `disk_dir`, creates the directory if needed, locks it, and
    /// recovers the entries a previous run left there (foyer `RecoverMode::Quiet`: blocks
    /// that fail their checksums are skipped, not fatal), so a restart starts warm.
    pub async fn open(cfg: CacheConfig) -> anyhow::Result<BlockCache> {
        ensure!(cfg.memory_bytes > 0, "memory_bytes must be > 0");
        let started = strata_clock::now();
        let foyer_counters = Arc::new(FoyerCounters::default());

        let builder = HybridCacheBuilder::<BlockKey, CachedBlock>::new()
            .with_name("strata-block-cache")
            .with_metrics_registry(Box::new(CapturingRegistry::new(foyer_counters.clone())))
            // Values go to disk as they are inserted, so nothing is left to flush on close
            // (and with this policy foyer's flush-on-close would only empty the memory tier).
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(false)
            .memory(cfg.memory_bytes)
            .with_shards(memory_shards(cfg.memory_bytes))
            // foyer's default weighter counts entries; the budget is in bytes.
            .with_weighter(|_key: &BlockKey, value: &CachedBlock| {
                value.0.len() + std::mem::size_of::<BlockKey>() + ENTRY_OVERHEAD_BYTES
            })
            .storage();

        let (hybrid, disk, dir_lock) = match &cfg.disk_dir {
            None => (builder.build().await?, None, None),
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating cache directory {}", dir.display()))?;
                let Some(disk_bytes) = fit_to_free_space(dir, cfg.disk_bytes)? else {
                    return Box::pin(Self::open(CacheConfig {
                        disk_dir: None,
                        ..cfg
                    }))
                    .await;
                };
                let layout = DiskLayout::for_capacity(disk_bytes)?;
                let lock = DirLock::acquire(dir)?;
                let hybrid = builder
                    .with_io_engine_config(PsyncIoEngineConfig::new())
                    .with_engine_config(layout.engine_config(dir)?)
                    .with_recover_mode(RecoverMode::Quiet)
                    .build()
                    .await
                    .with_context(|| format!("opening disk cache in {}", dir.display()))?;
                (hybrid, Some(layout), Some(lock))
            }
        };

        tracing::info!(
            memory_bytes = cfg.memory_bytes,
            disk_dir = ?cfg.disk_dir,
            disk_bytes = disk.map(|d| d.capacity_bytes),
            disk_block_bytes = disk.map(|d| d.block_bytes),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "block cache opened"
        );

        Ok(BlockCache {
            inner: Arc::new(Inner {
                hybrid,
                memory_bytes: cfg.memory_bytes,
                disk,
                dir_lock: Mutex::new(dir_lock),
                closing: AtomicBool::new(false),
                closed: tokio::sync::Mutex::new(false),
                counters: Counters::default(),
                foyer_counters,
            }),
        })
    }

    /// Looks `key` up in memory, then on disk (a disk hit is promoted to memory).
    ///
    /// The bytes must be verified by the caller (block crc32c) before use; see the type
    /// docs. Disk read errors are logged and returned as `Ok(None)`.
    pub async fn get(&self, key: &BlockKey) -> anyhow::Result<Option<Bytes>> {
        match self.inner.hybrid.get(key).await {
            Ok(Some(entry)) => {
                self.record_hit(entry.source());
                Ok(Some(entry.value().0.clone()))
            }
            Ok(None) => {
                bump(&self.inner.counters.misses);
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(?key, error = %e, "block cache read failed; treating as a miss");
                bump(&self.inner.counters.misses);
                Ok(None)
            }
        }
    }

    /// Caches `value` under `key` (replacing any previous value; keys name immutable bytes,
    /// so a replacement carries the same bytes).
    ///
    /// `value` is weighed by its length. A `Bytes` that is a slice of a larger buffer keeps
    /// the whole buffer alive, so insert a compact copy (`Bytes::copy_from_slice`) when the
    /// block was cut out of a bigger read.
    pub fn insert(&self, key: BlockKey, value: Bytes) {
        let properties = self.properties_for(value.len());
        drop(
            self.inner
                .hybrid
                .insert_with_properties(key, CachedBlock(value), properties),
        );
        bump(&self.inner.counters.inserts);
    }

    /// Drops `key` from memory and disk, e.g. after the reader found its bytes corrupt
    /// (bad crc32c), so the next lookup misses and re-fetches instead of hitting the bad
    /// copy again. The disk removal is not persisted across a restart (foyer's tombstone
    /// log is off), which is safe because the reader checks every block it gets.
    pub fn remove(&self, key: &BlockKey) {
        if self.inner.closing.load(Ordering::Relaxed) {
            // The disk tier refuses deletes once closed; the memory copy is what matters.
            drop(self.inner.hybrid.memory().remove(key));
        } else {
            self.inner.hybrid.remove(key);
        }
    }

    /// Returns the cached value, or runs `fetch` and caches its result.
    ///
    /// Concurrent calls for the same key share one fetch (foyer's in-flight table), and a
    /// concurrent [`get`](Self::get) waits for it too. The fetch runs in its own task, so
    /// it completes (and fills the cache) even if this call is dropped. An error from
    /// `fetch` is returned unchanged to the caller whose closure ran (so it can be
    /// downcast); callers that shared that fetch get an error wrapping its message.
    /// Errors are never cached: the next call fetches again.
    pub async fn get_or_fetch<F, Fut>(&self, key: BlockKey, fetch: F) -> anyhow::Result<Bytes>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Bytes>> + Send + 'static,
    {
        // Memory hits skip foyer's hybrid `get_or_fetch`: with `WriteOnInsertion` it
        // re-enqueues every entry it returns for a disk write, memory hits included.
        if let Some(entry) = self.inner.hybrid.memory().get(&key) {
            self.record_hit(Source::Memory);
            return Ok(entry.value().0.clone());
        }

        let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
        let failure_slot = failure.clone();
        let this = self.clone();
        let result = self
            .inner
            .hybrid
            .get_or_fetch(&key, move || async move {
                bump(&this.inner.counters.fetches);
                match fetch().await {
                    Ok(value) => {
                        bump(&this.inner.counters.inserts);
                        let properties = this.properties_for(value.len());
                        Ok((CachedBlock(value), properties))
                    }
                    Err(e) => {
                        bump(&this.inner.counters.fetch_errors);
                        let shared = anyhow::anyhow!("block fetch failed: {e:#}");
                        *failure_slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                        Err(shared)
                    }
                }
            })
            .await;

        match result {
            Ok(entry) => {
                match entry.source() {
                    Source::Outer => bump(&self.inner.counters.misses),
                    source => self.record_hit(source),
                }
                Ok(entry.value().0.clone())
            }
            Err(e) => {
                bump(&self.inner.counters.misses);
                let own = failure
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                match own {
                    Some(original) => Err(original),
                    None => Err(anyhow::Error::new(e).context(format!("fetching block {key:?}"))),
                }
            }
        }
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let f = &self.inner.foyer_counters;
        let (disk_write_bytes, disk_read_bytes) = if self.inner.disk.is_some() {
            let s = self.inner.hybrid.statistics();
            (s.disk_write_bytes() as u64, s.disk_read_bytes() as u64)
        } else {
            (0, 0)
        };
        CacheStats {
            hits: read(&c.hits),
            misses: read(&c.misses),
            inserts: read(&c.inserts),
            memory_used_bytes: self.inner.hybrid.memory().usage() as u64,
            disk_hits: read(&c.disk_hits),
            memory_capacity_bytes: self.inner.memory_bytes as u64,
            disk_capacity_bytes: self.inner.disk.map_or(0, |d| d.capacity_bytes as u64),
            fetches: read(&c.fetches),
            fetch_errors: read(&c.fetch_errors),
            disk_write_drops: read(&f.disk_write_drops),
            disk_oversize_skips: read(&c.disk_oversize_skips),
            disk_errors: read(&f.disk_errors),
            disk_write_bytes,
            disk_read_bytes,
        }
    }

    /// Waits until every disk write queued so far has been written (or dropped). For tests,
    /// benchmarks and orderly handovers; `close` does this too.
    pub async fn wait_for_disk_writes(&self) {
        self.inner.hybrid.storage().wait().await;
    }

    /// Largest value (bytes) the disk tier can hold, or `None` without a disk tier.
    pub fn max_disk_value_len(&self) -> Option<usize> {
        self.inner.disk.map(|d| d.max_value_len())
    }

    /// Finishes pending disk writes, closes the disk tier and releases its directory, so
    /// another cache may open it. Idempotent; concurrent calls all wait for the close.
    ///
    /// The memory tier keeps working afterwards (new values are kept in memory only, and
    /// disk reads still work). Call it on shutdown: dropping the last clone without it
    /// closes the disk tier in a background task instead, after the directory lock is gone.
    pub async fn close(&self) -> anyhow::Result<()> {
        let mut closed = self.inner.closed.lock().await;
        if *closed {
            return Ok(());
        }
        self.inner.closing.store(true, Ordering::SeqCst);
        let started = strata_clock::now();
        self.inner
            .hybrid
            .close()
            .await
            .context("closing the block cache's disk tier")?;
        let lock = self
            .inner
            .dir_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(lock);
        *closed = true;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "block cache closed"
        );
        Ok(())
    }

    fn record_hit(&self, source: Source) {
        bump(&self.inner.counters.hits);
        if source == Source::Disk {
            bump(&self.inner.counters.disk_hits);
        }
    }

    /// Where a new value of `len` bytes may live: everywhere, or memory only when there is
    /// no disk tier, it is closing, or the value does not fit a disk block.
    fn properties_for(&self, len: usize) -> HybridCacheProperties {
        let memory_only = match &self.inner.disk {
            // No disk tier: `InMem` spares foyer a pointless enqueue to its no-op store.
            None => true,
            Some(_) if self.inner.closing.load(Ordering::Relaxed) => true,
            Some(layout) if !layout.fits(len) => {
                bump(&self.inner.counters.disk_oversize_skips);
                true
            }
            Some(_) => false,
        };
        let location = if memory_only {
            Location::InMem
        } else {
            Location::Default
        };
        HybridCacheProperties::default().with_location(location)
    }
}
