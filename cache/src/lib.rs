//! Strata's block cache: a foyer hybrid cache (memory + local disk) of SST blocks, index
//! blocks and filter blocks, keyed by [`BlockKey`].
//!
//! * Memory tier: LRU, bounded in **bytes** (block length plus a per-entry overhead
//!   estimate), sharded so each shard holds at least 16 MiB.
//! * Disk tier (optional): foyer's block engine in one directory, written on insertion,
//!   recovered on open so a restart starts warm. It is only a cache: wiping the directory
//!   loses nothing, and every value read back is verified by the SST reader's crc32c.
//!
//! See [`BlockCache`] for the guarantees and their limits.
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]

mod cache;
mod config;
mod disk;
mod foyer_metrics;
mod key;
mod stats;
mod value;

pub use cache::BlockCache;
pub use config::CacheConfig;
pub use key::BlockKey;
pub use stats::CacheStats;
