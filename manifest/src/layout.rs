//! Object names. One function per kind of object, so every component agrees.
//!
//! Every partition lives under its own root whose first characters are a hash of the
//! partition number: S3 limits request rates per key prefix, and a hashed prefix spreads a
//! busy node's partitions over many of them. Numbers are zero-padded so that lexicographic
//! listing order is numeric order.

use xxhash_rust::xxh3::xxh3_64;

/// The root prefix of a partition, e.g. `3fa2-p00000`.
pub fn partition_root(partition: u32) -> String {
    let h = xxh3_64(&partition.to_be_bytes()) & 0xffff;
    format!("{h:04x}-p{partition:05}")
}

/// Prefix under which a partition's WAL segments are listed.
pub fn wal_prefix(partition: u32) -> String {
    format!("{}/wal/", partition_root(partition))
}

/// A WAL segment.
pub fn wal_path(partition: u32, segment_id: u64) -> String {
    format!("{}{segment_id:020}.wal", wal_prefix(partition))
}

/// Parses the segment id out of a WAL segment path.
pub fn parse_wal_path(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_suffix(".wal")?.parse().ok()
}

/// Prefix under which a partition's SSTs are listed.
pub fn sst_prefix(partition: u32) -> String {
    format!("{}/sst/", partition_root(partition))
}

/// An SST.
pub fn sst_path(partition: u32, sst_id: u64) -> String {
    format!("{}{sst_id:020}.sst", sst_prefix(partition))
}

/// Parses the SST id out of an SST path.
pub fn parse_sst_path(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_suffix(".sst")?.parse().ok()
}

/// Prefix under which a partition's manifest versions are listed.
pub fn manifest_prefix(partition: u32) -> String {
    format!("{}/manifest/", partition_root(partition))
}

/// A manifest version.
pub fn manifest_path(partition: u32, version: u64) -> String {
    format!("{}{version:020}.manifest", manifest_prefix(partition))
}

/// Parses the version out of a manifest path.
pub fn parse_manifest_path(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_suffix(".manifest")?.parse().ok()
}

/// A fresh SST id: milliseconds since the epoch in the high bits, random low bits. Ids only
/// need to be unique (SSTs are created with create-if-absent, and a clash just draws again);
/// time order makes listings readable.
pub fn new_sst_id() -> u64 {
    (crate::now_ms() << SST_ID_RANDOM_BITS)
        | (strata_clock::unique_u64() & ((1 << SST_ID_RANDOM_BITS) - 1))
}

/// Low bits of an SST id that are random.
const SST_ID_RANDOM_BITS: u32 = 20;

/// When an SST was created, in milliseconds since the Unix epoch, read from its id.
pub fn sst_created_ms(id: u64) -> u64 {
    id >> SST_ID_RANDOM_BITS
}

/// The object that names the store instance (a random id used to key caches).
pub const STORE_ID_PATH: &str = "store-id";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_numerically() {
        assert_eq!(parse_wal_path(&wal_path(3, 42)), Some(42));
        assert_eq!(parse_sst_path(&sst_path(3, 7)), Some(7));
        assert_eq!(parse_manifest_path(&manifest_path(3, 9)), Some(9));
        assert!(wal_path(0, 9) < wal_path(0, 10));
        assert_ne!(partition_root(0)[..4], partition_root(1)[..4]);
        assert!(wal_path(1, 1).starts_with(&wal_prefix(1)));
    }
}
