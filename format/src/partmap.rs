//! The partition map: which hash range of the key space each partition serves.
//!
//! A key's position is `xxh3_64(key)`. A new cluster of `n` partitions splits the hash space
//! into `n` equal ranges, partition `i` serving `[ceil(i·2^64/n), ceil((i+1)·2^64/n))`, which is
//! exactly [`crate::partition_of`]. A hot partition splits: it keeps the lower half of its range
//! and a new partition (the next unused id) takes the upper half. Ranges always tile the whole
//! hash space, so every key has exactly one partition.

/// Sorted, tiling hash ranges: `(start, partition)`; a range ends where the next one starts
/// (the last one at 2^64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMap {
    ranges: Vec<(u64, u32)>,
}

/// Why a list of ranges is not a partition map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPartitionMap(pub String);

impl std::fmt::Display for InvalidPartitionMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid partition map: {}", self.0)
    }
}

impl std::error::Error for InvalidPartitionMap {}

impl PartitionMap {
    /// `n` equal ranges, ids `0..n` (what [`crate::partition_of`] computes).
    pub fn uniform(n: u32) -> Self {
        let n = n.max(1);
        let ranges = (0..n)
            .map(|i| {
                // ceil(i * 2^64 / n)
                let num = u128::from(i) << 64;
                let d = u128::from(n);
                (num.div_ceil(d) as u64, i)
            })
            .collect();
        PartitionMap { ranges }
    }

    /// A map from `(start, partition)` pairs; checks that they tile the hash space.
    pub fn from_ranges(mut ranges: Vec<(u64, u32)>) -> Result<Self, InvalidPartitionMap> {
        ranges.sort_unstable();
        if ranges.first().map(|r| r.0) != Some(0) {
            return Err(InvalidPartitionMap(
                "the first range must start at 0".into(),
            ));
        }
        let pairs = || ranges.iter().zip(ranges.iter().skip(1));
        if let Some((a, _)) = pairs().find(|(a, b)| a.0 == b.0) {
            return Err(InvalidPartitionMap(format!(
                "two ranges start at {:#x}",
                a.0
            )));
        }
        let mut ids: Vec<u32> = ranges.iter().map(|r| r.1).collect();
        ids.sort_unstable();
        if ids.iter().zip(ids.iter().skip(1)).any(|(a, b)| a == b) {
            return Err(InvalidPartitionMap("a partition serves two ranges".into()));
        }
        Ok(PartitionMap { ranges })
    }

    /// The `(start, partition)` pairs, in hash order.
    pub fn ranges(&self) -> &[(u64, u32)] {
        &self.ranges
    }

    /// The partition serving the hash `h`.
    pub fn partition_of_hash(&self, h: u64) -> u32 {
        let i = self.ranges.partition_point(|r| r.0 <= h);
        // ranges[0].0 == 0 <= h, so i >= 1.
        self.ranges.get(i.saturating_sub(1)).map_or(0, |r| r.1)
    }

    /// The partition serving `key`.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        self.partition_of_hash(xxhash_rust::xxh3::xxh3_64(key))
    }

    /// The hash range `[start, end)` partition `p` serves (`end` `None` = up to 2^64).
    pub fn range_of(&self, p: u32) -> Option<(u64, Option<u64>)> {
        let i = self.ranges.iter().position(|r| r.1 == p)?;
        Some((self.ranges.get(i)?.0, self.ranges.get(i + 1).map(|r| r.0)))
    }

    /// Every partition id, in id order.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.ranges.iter().map(|r| r.1).collect();
        ids.sort_unstable();
        ids
    }

    /// The map after splitting `p` at the middle of its range: `p` keeps the lower half and
    /// the next unused id takes the upper half. `None` if `p` is unknown or its range is a
    /// single hash. Returns the new map and the new partition's id.
    pub fn split(&self, p: u32) -> Option<(PartitionMap, u32)> {
        let (start, end) = self.range_of(p)?;
        let end = end.map_or(1u128 << 64, u128::from);
        let mid = (u128::from(start) + end) / 2;
        if mid <= u128::from(start) {
            return None;
        }
        let new_id = self.ranges.iter().map(|r| r.1).max().map_or(0, |m| m + 1);
        let mut ranges = self.ranges.clone();
        ranges.push((mid as u64, new_id));
        ranges.sort_unstable();
        Some((PartitionMap { ranges }, new_id))
    }
}

/// A key's position in the hash space (what partition ranges are ranges of).
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Whether the hash `h` is in `[start, end)` (`end` `None` = up to 2^64).
pub fn hash_in_range(h: u64, range: (u64, Option<u64>)) -> bool {
    h >= range.0 && range.1.is_none_or(|e| h < e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_maps_agree_with_partition_of() {
        for n in [1u32, 2, 3, 7, 16, 1000] {
            let m = PartitionMap::uniform(n);
            for i in 0..5000u32 {
                let k = i.to_le_bytes();
                assert_eq!(m.partition_of(&k), crate::partition_of(&k, n), "n={n}");
            }
            // Boundaries: the first hash of each range maps to it, the one before to the previous.
            for w in m.ranges().windows(2) {
                assert_eq!(m.partition_of_hash(w[1].0), w[1].1);
                assert_eq!(m.partition_of_hash(w[1].0 - 1), w[0].1);
            }
        }
    }

    #[test]
    fn a_split_halves_one_range_and_keeps_the_rest() {
        let m = PartitionMap::uniform(4);
        let (s, q) = m.split(2).expect("splits");
        assert_eq!(q, 4);
        let (a, b) = (s.range_of(2).unwrap(), s.range_of(4).unwrap());
        let old = m.range_of(2).unwrap();
        assert_eq!(a.0, old.0);
        assert_eq!(a.1, Some(b.0));
        assert_eq!(b.1, old.1);
        for i in 0..20_000u32 {
            let k = i.to_le_bytes();
            let (before, after) = (m.partition_of(&k), s.partition_of(&k));
            if before == 2 {
                assert!(after == 2 || after == 4);
            } else {
                assert_eq!(before, after);
            }
        }
        // Splitting the last range (which ends at 2^64) works too, and ids keep growing.
        let (s2, q2) = s.split(3).expect("splits");
        assert_eq!(q2, 5);
        assert_eq!(s2.range_of(5).unwrap().1, None);
        assert!(PartitionMap::from_ranges(s2.ranges().to_vec()).is_ok());
        assert!(PartitionMap::from_ranges(vec![(1, 0)]).is_err());
        assert!(PartitionMap::from_ranges(vec![(0, 0), (5, 0)]).is_err());
    }
}
