//! Knobs of the SST writer.

/// How data blocks are compressed. Index, filter and props blocks are stored uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4 block format (fast; the default).
    Lz4,
    /// Zstandard at the given level (0 means zstd's default level).
    Zstd(i32),
}

/// Options of [`SstBuilder`](crate::SstBuilder).
#[derive(Debug, Clone)]
pub struct SstOptions {
    /// Target uncompressed size of a data block in bytes (default 4096). A block is cut
    /// before an entry that would push it past this size; an entry bigger than this gets a
    /// block of its own.
    pub block_size: usize,
    /// Every this many entries a block stores a full key (a restart point) instead of a
    /// prefix-compressed one (default 16). 0 is treated as 1.
    pub restart_interval: usize,
    /// Compression of data blocks (default LZ4).
    pub compression: Compression,
    /// Bloom filter bits per distinct user key (default 10, about 1% false positives).
    /// 0 writes an empty filter that matches every key.
    pub bloom_bits_per_key: usize,
}

impl Default for SstOptions {
    fn default() -> Self {
        SstOptions {
            block_size: 4096,
            restart_interval: 16,
            compression: Compression::Lz4,
            bloom_bits_per_key: 10,
        }
    }
}
