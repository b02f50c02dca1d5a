//! Pure on-storage encodings of Strata: WAL segments, SSTables and manifests.
//!
//! No I/O happens here: encoders turn values into bytes and decoders turn bytes back,
//! verifying a crc32c over every byte they hand out. A decoder never panics and never
//! returns data that differs from what was encoded: corrupt or truncated input is an
//! [`FormatError`]. The byte-level layouts are specified in `docs/format.md`.
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

mod codec;
mod entry;
mod error;
mod manifest;
pub mod namespace;
mod partmap;
mod sst;
mod txn;
mod wal;

pub use entry::{internal_cmp, Entry, Kind};
pub use error::{FormatError, Result};
pub use manifest::{
    decode_manifest, encode_manifest, Manifest, SstInfo, SstRoot, MANIFEST_FORMAT_VERSION,
    MANIFEST_MAGIC,
};
pub use partmap::{hash_in_range, key_hash, InvalidPartitionMap, PartitionMap};
pub use sst::{
    decode_props, read_all_entries, BlockHandle, BloomFilter, Compression, DataBlock, SstBuilder,
    SstFooter, SstIndex, SstOptions, SstProps, BLOCK_TRAILER_LEN, SST_FOOTER_LEN,
    SST_FORMAT_VERSION, SST_MAGIC,
};
pub use txn::{
    decode_intent, encode_intent, is_system_key, IntentState, TxnOp, INTENT_PREFIX, SYSTEM_PREFIX,
};
pub use wal::{
    decode_wal_segment, encode_wal_segment, WalEpochFilter, WalSegmentHeader, WAL_FORMAT_VERSION,
    WAL_HEADER_LEN, WAL_MAGIC, WAL_MARKER_LEN, WAL_MAX_IN_FLIGHT, WAL_MIN_FORMAT_VERSION,
    WAL_TRAILER_LEN, WAL_TRAILER_MAGIC,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn public_types_cross_threads() {
        assert_send::<SstBuilder>();
        assert_send_sync::<DataBlock>();
        assert_send_sync::<SstIndex>();
        assert_send_sync::<BloomFilter>();
        assert_send_sync::<SstFooter>();
        assert_send_sync::<Entry>();
        assert_send_sync::<Manifest>();
        assert_send_sync::<FormatError>();
    }
}

/// The partition a key belongs to when the key space is split into `partitions` hash ranges:
/// the xxh3-64 hash of the key, scaled onto `0..partitions`. Every node and every smart
/// client must compute exactly this, so it lives here with the other encodings.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let h = xxhash_rust::xxh3::xxh3_64(key);
    ((u128::from(h) * u128::from(partitions.max(1))) >> 64) as u32
}

#[cfg(test)]
mod partition_tests {
    use super::partition_of;

    #[test]
    fn partitions_are_hash_ranges_and_stable() {
        assert_eq!(partition_of(b"anything", 1), 0);
        let mut counts = [0u32; 16];
        for i in 0..16_000u32 {
            let p = partition_of(&i.to_be_bytes(), 16);
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800 && c < 1200), "{counts:?}");
        // Pinned: clients in other languages must compute exactly this. xxh3_64("key-1") is
        // 0x2d29f1336b0229f9, whose top 4 bits are 2.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"key-1"), 0x2d29_f133_6b02_29f9);
        assert_eq!(partition_of(b"key-1", 16), 2);
        assert_eq!(partition_of(b"user:42", 16), 9);
        assert_eq!(partition_of(b"key-1", 1), 0);
    }
}
