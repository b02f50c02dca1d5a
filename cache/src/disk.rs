//! The disk tier: its sizing, the lock on its directory, and the foyer engine config.
//!
//! foyer's block engine splits the device into fixed-size blocks (one file each, named by
//! foyer, inside the cache directory), appends entries to a block, and evicts whole blocks
//! (by invalid ratio, then FIFO). An entry larger than a block minus its blob index is
//! dropped without an error, so the block size bounds the largest block we can keep on
//! disk; [`DiskLayout::fits`] answers that question up front so such entries are kept in
//! memory only and counted instead of silently vanishing.

use std::{
    fs::{File, OpenOptions, TryLockError},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use foyer::{BlockEngineConfig, DeviceBuilder as _, FsDeviceBuilder, HybridCacheProperties};

use crate::{key::BlockKey, value::CachedBlock};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Block size when the disk tier is large enough for it: 16 MiB (foyer's default).
///
/// SST data blocks hold one value of up to 1 MiB plus a key of up to 4 KiB and framing,
/// so they need at least ~1.1 MiB; index and filter blocks of big SSTs can be several MiB.
/// 16 MiB leaves room for both and wastes at most ~1 MiB of tail space per block.
const LARGE_BLOCK_BYTES: usize = 16 * MIB;
/// Block size for small disk tiers (below [`LARGE_BLOCK_MIN_DISK_BYTES`]), so they still
/// have enough blocks to evict one at a time: 4 MiB, still > 3x the largest data block.
const SMALL_BLOCK_BYTES: usize = 4 * MIB;
/// Smallest disk tier that gets [`LARGE_BLOCK_BYTES`] blocks (32 blocks of 16 MiB).
const LARGE_BLOCK_MIN_DISK_BYTES: u64 = 512 * MIB as u64;
/// Smallest disk tier accepted: four small blocks.
pub(crate) const MIN_DISK_BYTES: u64 = 4 * SMALL_BLOCK_BYTES as u64;

/// Size of the index at the head of each blob in a block (foyer's default, set explicitly
/// because the largest storable entry depends on it).
const BLOB_INDEX_BYTES: usize = 4 * KIB;
/// foyer aligns every entry on disk to this.
const PAGE_BYTES: usize = 4 * KIB;
/// foyer's per-entry header is 32 bytes (`EntryHeader::serialized_len`, private to foyer);
/// we assume 64 so a future foyer growing it a little cannot make us admit entries that
/// it then drops.
const ENTRY_HEADER_BYTES: usize = 64;

/// The flush buffer: entries are serialized into it and written a buffer at a time; one
/// is filling while the previous one is being written, so the flusher holds two (32 MiB of
/// RAM outside the memory budget). It must hold the largest entry a block can hold.
const FLUSH_BUFFER_BYTES: usize = 16 * MIB;
/// Bytes of entries waiting for the flusher above which foyer drops new disk writes.
/// foyer documents "2 x buffer" as the default but its code uses 16 MiB; we use 2 x.
const SUBMIT_QUEUE_BYTES: usize = 2 * FLUSH_BUFFER_BYTES;

/// Name of the lock file we keep in the cache directory while a cache has it open.
const LOCK_FILE: &str = "strata-cache.lock";

/// Derived geometry of a disk tier.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskLayout {
    pub(crate) capacity_bytes: usize,
    pub(crate) block_bytes: usize,
}

impl DiskLayout {
    pub(crate) fn for_capacity(disk_bytes: u64) -> anyhow::Result<Self> {
        if disk_bytes < MIN_DISK_BYTES {
            bail!(
                "disk cache of {disk_bytes} bytes is too small: at least {MIN_DISK_BYTES} bytes \
                 (four {SMALL_BLOCK_BYTES}-byte blocks) are needed"
            );
        }
        let capacity_bytes = usize::try_from(disk_bytes)
            .context("disk cache capacity does not fit in this platform's usize")?;
        let block_bytes = if disk_bytes >= LARGE_BLOCK_MIN_DISK_BYTES {
            LARGE_BLOCK_BYTES
        } else {
            SMALL_BLOCK_BYTES
        };
        Ok(Self {
            capacity_bytes,
            block_bytes,
        })
    }

    /// Largest block value (in bytes) the disk tier stores; larger ones stay in memory only.
    pub(crate) fn max_value_len(&self) -> usize {
        let max_entry = self.block_bytes.min(FLUSH_BUFFER_BYTES) - BLOB_INDEX_BYTES;
        // Entries are page-aligned on disk, and `max_entry` is page-aligned, so the
        // unaligned encoding may use all of it.
        max_entry - ENTRY_HEADER_BYTES - BlockKey::ENCODED_LEN - CachedBlock::LEN_PREFIX
    }

    /// Whether a value of `len` bytes fits in one disk block.
    pub(crate) fn fits(&self, len: usize) -> bool {
        len <= self.max_value_len()
    }

    /// foyer block engine config for a directory laid out like this.
    pub(crate) fn engine_config(
        &self,
        dir: &Path,
    ) -> anyhow::Result<BlockEngineConfig<BlockKey, CachedBlock, HybridCacheProperties>> {
        debug_assert_eq!(self.block_bytes % PAGE_BYTES, 0);
        let device = FsDeviceBuilder::new(dir)
            .with_capacity(self.capacity_bytes)
            .build()
            .with_context(|| format!("opening disk cache device in {}", dir.display()))?;
        Ok(BlockEngineConfig::new(device)
            .with_block_size(self.block_bytes)
            .with_blob_index_size(BLOB_INDEX_BYTES)
            .with_buffer_pool_size(FLUSH_BUFFER_BYTES)
            .with_submit_queue_size_threshold(SUBMIT_QUEUE_BYTES))
    }
}

/// Exclusive lock on a cache directory, held while a [`crate::BlockCache`] has it open.
///
/// Two caches writing the same directory would overwrite each other's blocks; foyer's
/// checksums would turn that into misses, but it would also wreck both caches' contents.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(TryLockError::WouldBlock) => bail!(
                "cache directory {} is in use by another cache (lock {} is held)",
                dir.display(),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        tracing::debug!(path = %self.path.display(), "releasing cache directory lock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_picks_block_size_by_capacity() {
        assert!(DiskLayout::for_capacity(MIN_DISK_BYTES - 1).is_err());
        let small = DiskLayout::for_capacity(MIN_DISK_BYTES).unwrap();
        assert_eq!(small.block_bytes, SMALL_BLOCK_BYTES);
        let default = DiskLayout::for_capacity(1 << 30).unwrap();
        assert_eq!(default.block_bytes, LARGE_BLOCK_BYTES);
    }

    #[test]
    fn largest_sst_block_fits_even_in_small_blocks() {
        // 1 MiB value + 4 KiB key + generous SST block framing.
        let largest_data_block = MIB + 4 * KIB + 4 * KIB;
        let small = DiskLayout::for_capacity(MIN_DISK_BYTES).unwrap();
        assert!(small.fits(largest_data_block));
        assert!(!small.fits(SMALL_BLOCK_BYTES));
        assert!(small.max_value_len() < SMALL_BLOCK_BYTES - BLOB_INDEX_BYTES);
    }

    #[test]
    fn dir_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        assert!(DirLock::acquire(dir.path()).is_err());
        drop(lock);
        DirLock::acquire(dir.path()).unwrap();
    }
}
