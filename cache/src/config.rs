//! Configuration of a [`crate::BlockCache`].

use std::path::PathBuf;

/// Sizing and placement of a [`crate::BlockCache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Memory tier budget in bytes (block bytes plus a small per-entry overhead estimate).
    /// Default 256 MiB. Must be > 0.
    pub memory_bytes: usize,
    /// Directory of the disk tier; `None` = memory only. Created if missing. The cache keeps
    /// a lock file in it and refuses to open a directory another cache has open.
    pub disk_dir: Option<PathBuf>,
    /// Disk tier capacity in bytes (ignored without `disk_dir`). Default 1 GiB; at least
    /// 16 MiB. Files of this total size are created (sparse) up front. Changing it between
    /// restarts may change the block size and lose (never corrupt) the warm contents.
    pub disk_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            disk_dir: None,
            disk_bytes: 1 << 30,
        }
    }
}

/// Memory tier shard count: foyer locks per shard, and each shard evicts against its own
/// share of the budget, so a shard must hold many of the largest (~1 MiB) blocks. We give
/// every shard at least 16 MiB and use at most 64 shards.
pub(crate) fn memory_shards(memory_bytes: usize) -> usize {
    (memory_bytes / (16 << 20)).clamp(1, 64)
}

/// Per-entry memory the weighter adds to the value length: foyer's record (key, value
/// handle, hash, properties, eviction links, refcount), roughly. An estimate, not exact.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_keep_at_least_16_mib_each() {
        assert_eq!(memory_shards(0), 1);
        assert_eq!(memory_shards(1 << 20), 1);
        assert_eq!(memory_shards(256 << 20), 16);
        assert_eq!(memory_shards(64 << 30), 64);
    }
}
